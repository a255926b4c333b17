//! Storage format upgrades: the registry of steps ([`MIGRATIONS`]) and the
//! steps themselves, each documented by a file in `migrations/`.
//!
//! [`upgrade`] runs the steps from a data dir's format up to this build's,
//! one version at a time; the data dir rewrites its marker after each, so
//! an interrupted upgrade resumes at the step it was in (each step can be
//! run again).

use std::fs;
use std::path::{Path, PathBuf};

use sled::IVec;

use super::keys::{CHUNK, FORMAT2_REQUEST, chunk_key, key_seq, meta_key, side_key};
use super::request_records::{
    self, FINGERPRINT_BLOCK, RequestRecord, encode_fingerprints, fingerprint,
};
use super::sled_cache::{SCAN_NUDGES, WRITE_NUDGES, nudge};
use super::sled_errors::engine;
use super::sled_store::{SledOptions, SledStore};
use super::tiles::{HALF_WIDTH, TileWriter};
use super::{Family, LedgerStore, StoreError, VALUE_BYTES, chunk, meta, record};
use crate::STORAGE_FORMAT_VERSION;

/// One upgrade step: from format `from` to `from + 1`, applied to the data dir.
pub type Migration = fn(&Path) -> Result<(), StoreError>;

/// Upgrade steps, indexed by the version they upgrade from; `migrations/`
/// documents each version.
pub const MIGRATIONS: &[(u32, Migration)] = &[
    (1, migrate_1_to_2),
    (2, migrate_2_to_3),
    (3, migrate_3_to_4),
    (4, migrate_4_to_5),
];

/// The sled database, inside the data dir.
const LEDGER: &str = "ledger";

/// Upgrades the data dir at `dir` from format `from` to
/// [`STORAGE_FORMAT_VERSION`], calling `done(version)` after each step.
pub fn upgrade(
    dir: &Path,
    from: u32,
    mut done: impl FnMut(u32) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut current = from;
    while current < STORAGE_FORMAT_VERSION {
        let step = MIGRATIONS
            .iter()
            .find(|(from, _)| *from == current)
            .ok_or_else(|| {
                StoreError::DataDir(format!("no migration from storage format {current}"))
            })?;
        (step.1)(dir)?;
        current += 1;
        done(current)?;
    }
    Ok(())
}

/// Format 2 adds the write-ahead log beside the sled database
/// (`ledger.wal/`). A format 1 dir has none, and every commit of format 1
/// was already durable in sled: nothing to convert; the log is created on
/// open. The step only checks that no stray log is there.
fn migrate_1_to_2(dir: &Path) -> Result<(), StoreError> {
    let wal = dir.join("ledger.wal");
    if wal.exists() && fs::read_dir(&wal)?.next().is_some() {
        return Err(StoreError::DataDir(format!(
            "{} is a format 1 data dir but already has a write-ahead log; refusing to guess",
            dir.display()
        )));
    }
    Ok(())
}

/// Format 3 replaces the one sled key per request id (`r <request_id>`)
/// by request records keyed by seq and request-id fingerprints in blocks
/// (see [`request_records`]): each `r` record becomes a one-record `s` block
/// keyed by its entry's seq (in the same sled batch as the removal of the
/// old key, so an interrupted run can be run again), then every fingerprint
/// is written as `f` blocks and sled is made durable; then the database is
/// rewritten compactly, which also merges the one-record blocks
/// ([`rewrite_compacted`]).
fn migrate_2_to_3(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join(LEDGER);
    finish_rewrite(&path)?;
    convert_request_records(&path)?;
    rewrite_compacted(&path)
}

fn convert_request_records(path: &Path) -> Result<(), StoreError> {
    let store = SledStore::open(path, &SledOptions::default())?;
    let tree = store.tree();
    loop {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in tree.scan_prefix([FORMAT2_REQUEST]).take(1024) {
            let (k, v) = item.map_err(engine)?;
            let request_id = String::from_utf8(k[1..].to_vec())
                .map_err(|_| StoreError::Engine("a format 2 request key is not UTF-8".into()))?;
            let mut record: RequestRecord = serde_json::from_slice(&v).map_err(|e| {
                StoreError::Engine(format!("format 2 request record of {request_id:?}: {e}"))
            })?;
            record.request_id = request_id;
            let (_, block) = request_records::encode_blocks(std::slice::from_ref(&record))
                .pop()
                .expect("one record makes one block");
            batch.insert(&side_key(Family::REQUESTS, record.seq)[..], block);
            batch.remove(k);
            n += 1;
        }
        if n == 0 {
            break;
        }
        tree.apply_batch(batch).map_err(engine)?;
    }
    // The fingerprint of every entry that decided a request.
    let len = store.len()?;
    let mut fps = vec![0u32; len as usize];
    for item in store.side_range(Family::REQUESTS, 0, u64::MAX) {
        let (first, block) = item?;
        for r in request_records::decode_block(first, &block)? {
            if r.seq < len {
                fps[r.seq as usize] = fingerprint(&r.request_id);
            }
        }
    }
    let mut batch = sled::Batch::default();
    for start in (0..len).step_by(FINGERPRINT_BLOCK as usize) {
        let end = (start + FINGERPRINT_BLOCK).min(len);
        batch.insert(
            &side_key(Family::REQUEST_FINGERPRINTS, start)[..],
            encode_fingerprints(&fps[start as usize..end as usize]),
        );
    }
    batch.insert(meta_key(meta::FORMAT), &b"3"[..]);
    tree.apply_batch(batch).map_err(engine)?;
    store.sync_sled()
}

/// Format 4 adds the Merkle tree's tiles (`t` side records, see
/// [`super::tiles`]): the stored entries are read in seq order, their
/// stored `entry_hash`es appended to a [`TileWriter`] a few thousand at a
/// time, and the halves it gives written to sled as they come (memory stays
/// flat: the writer holds at most one partial half per level; this build's
/// writer gives only full halves, the layout of format 5); then the
/// format metadata is set to 4 and sled made durable. A second run writes
/// the same halves again.
fn migrate_3_to_4(dir: &Path) -> Result<(), StoreError> {
    /// Leaves appended per sled batch.
    const STEP: usize = 4096;
    let store = SledStore::open(&dir.join(LEDGER), &SledOptions::default())?;
    let tree = store.tree();
    let len = store.len()?;
    let mut writer = TileWriter::new();
    let mut hashes: Vec<[u8; 32]> = Vec::with_capacity(STEP);
    let write = |writer: &mut TileWriter, hashes: &mut Vec<[u8; 32]>| {
        let mut batch = sled::Batch::default();
        let mut keys = Vec::new();
        for (family, key, value) in writer.append(hashes.drain(..)) {
            let k = side_key(family, key);
            batch.insert(&k[..], value);
            keys.push(k);
        }
        tree.apply_batch(batch).map_err(engine)?;
        writer.settle();
        for k in keys {
            nudge(tree, &k, WRITE_NUDGES);
        }
        Ok::<(), StoreError>(())
    };
    for item in store.scan(0, len) {
        let (seq, bytes) = item?;
        let parts = record::split(&bytes).map_err(|e| StoreError::Corrupt {
            seq,
            message: e.to_string(),
        })?;
        if seq != writer.size() + hashes.len() as u64 {
            return Err(StoreError::Corrupt {
                seq,
                message: format!(
                    "entries {}..{seq} are missing: the tree cannot be built",
                    writer.size() + hashes.len() as u64
                ),
            });
        }
        hashes.push(*parts.entry_hash);
        if hashes.len() == STEP {
            write(&mut writer, &mut hashes)?;
        }
    }
    write(&mut writer, &mut hashes)?;
    tree.insert(meta_key(meta::FORMAT), &b"4"[..])
        .map_err(engine)?;
    store.sync_sled()
}

/// Format 5 stores only full tile halves: the partial half at the right
/// edge of each level, which format 4 rewrote whole with every commit (up
/// to 4 KiB a level in each synced write), is kept in memory and rebuilt on
/// open from the last entries and the full halves ([`super::tiles`]). The
/// step removes the partial halves format 4 left (every `t` record shorter
/// than a full half), sets the format metadata to 5 in the same sled batch,
/// and makes sled durable. Run again, it finds none to remove.
fn migrate_4_to_5(dir: &Path) -> Result<(), StoreError> {
    let store = SledStore::open(&dir.join(LEDGER), &SledOptions::default())?;
    let mut batch = sled::Batch::default();
    for item in store.side_range(Family::TILES, 0, u64::MAX) {
        let (key, value) = item?;
        if value.len() < HALF_WIDTH * crate::merkle::HASH_SIZE {
            batch.remove(&side_key(Family::TILES, key)[..]);
        }
    }
    batch.insert(meta_key(meta::FORMAT), &b"5"[..]);
    store.tree().apply_batch(batch).map_err(engine)?;
    store.sync_sled()
}

/// Where [`rewrite_compacted`] builds the new database, and where it puts
/// the old one while it swaps them.
fn rewrite_paths(path: &Path) -> (PathBuf, PathBuf) {
    (
        path.with_extension("rewrite"),
        path.with_extension("replaced"),
    )
}

/// Finishes or undoes an interrupted [`rewrite_compacted`]: the new
/// database is complete (durable) before the old one is moved aside, so a
/// missing `path` with a rewrite beside it is finished, and a rewrite beside
/// a present `path` is an unfinished copy.
fn finish_rewrite(path: &Path) -> Result<(), StoreError> {
    let (fresh, old) = rewrite_paths(path);
    if !path.exists() && old.exists() {
        // Moved aside: the rewrite was complete if it is there; if not
        // (which the order of the steps rules out), put the old one back.
        fs::rename(if fresh.exists() { &fresh } else { &old }, path)?;
        super::fs::sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    }
    if fresh.exists() {
        fs::remove_dir_all(&fresh)?;
    }
    if old.exists() && path.exists() {
        fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// Copies every key of the database at `path`, in order, into a new one and
/// swaps them (splitting chunks bigger than [`VALUE_BYTES`] and regrouping
/// request records into blocks as appends write them). sled 0.34 never
/// merges emptied pages, and keeps a record of every page in memory: a
/// million removed format 2 request keys left about 30 MiB that every later
/// open paid. The copy holds only live keys, in full pages. It is made
/// durable before the old database is moved aside (see [`finish_rewrite`]);
/// the write-ahead log beside it is empty.
fn rewrite_compacted(path: &Path) -> Result<(), StoreError> {
    let (fresh, old) = rewrite_paths(path);
    {
        let source = SledStore::open(path, &SledOptions::default())?;
        let source_tree = source.tree();
        let target = sled::Config::new()
            .path(&fresh)
            .cache_capacity(SledOptions::default().cache_capacity)
            .flush_every_ms(None)
            .open()
            .map_err(engine)?;
        let tree = target.open_tree("ledger").map_err(engine)?;
        let mut batch = sled::Batch::default();
        let mut n = 0;
        // Request records, regrouped into full blocks as appends write them
        // (the conversion wrote one block per record).
        let mut requests: Vec<RequestRecord> = Vec::new();
        let request_kvs = |requests: &mut Vec<RequestRecord>| -> Vec<(IVec, IVec)> {
            request_records::encode_blocks(&std::mem::take(requests))
                .into_iter()
                .map(|(first, block)| {
                    (
                        IVec::from(&side_key(Family::REQUESTS, first)[..]),
                        block.into(),
                    )
                })
                .collect()
        };
        for item in source_tree.iter() {
            let (k, v) = item.map_err(engine)?;
            nudge(source_tree, &k, SCAN_NUDGES);
            let kvs = match k.first() {
                Some(&tag) if tag == Family::REQUESTS.tag() => {
                    requests.extend(request_records::decode_block(key_seq(&k)?, &v)?);
                    if requests.len() >= 4096 {
                        request_kvs(&mut requests)
                    } else {
                        Vec::new()
                    }
                }
                // Chunks of older builds (up to 48 KiB) are split; the
                // stored records themselves are copied byte for byte.
                Some(&CHUNK) if v.len() > VALUE_BYTES => {
                    chunk::group(chunk::records(key_seq(&k)?, &v)?.into_iter())
                        .into_iter()
                        .map(|(seq, c)| (IVec::from(&chunk_key(seq)[..]), c.into()))
                        .collect()
                }
                _ => {
                    let mut kvs = request_kvs(&mut requests);
                    kvs.push((k, v));
                    kvs
                }
            };
            for (k, v) in kvs {
                batch.insert(k, v);
                n += 1;
            }
            if n >= 1024 {
                tree.apply_batch(std::mem::take(&mut batch))
                    .map_err(engine)?;
                n = 0;
            }
        }
        for (k, v) in request_kvs(&mut requests) {
            batch.insert(k, v);
        }
        tree.apply_batch(batch).map_err(engine)?;
        target.flush().map_err(engine)?;
        super::fs::sync_tree(&fresh)?;
    }
    fs::rename(path, &old)?;
    fs::rename(&fresh, path)?;
    super::fs::sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    fs::remove_dir_all(&old)?;
    Ok(())
}

/// The integration tests' file helpers, one definition for both.
#[cfg(test)]
#[allow(unreachable_pub)]
#[path = "../../tests/support/fs.rs"]
mod test_fs;

#[cfg(test)]
mod tests {
    use super::test_fs::copy_dir;
    use super::*;
    use crate::entry::{Entry, GENESIS_HASH};
    use crate::store::request_records::decode_fingerprints;
    use crate::store::request_records::test_record as record;
    use crate::store::{Append, keys::prefixed, record};

    /// A sled store at `path` holding `n` test entries (no tiles, as
    /// format 3 had), appended `batch` at a time.
    fn store_of_entries(path: &Path, n: u64, batch: usize) -> Vec<Entry> {
        let entries = crate::entry::test_chain(n, 0, GENESIS_HASH);
        let store = SledStore::open(path, &SledOptions::default()).unwrap();
        for part in entries.chunks(batch) {
            store
                .append(Append {
                    entries: part,
                    ..Append::default()
                })
                .unwrap();
        }
        store.commit().unwrap();
        entries
    }

    /// The tree of `entries`, kept in memory: what the stored one must give.
    fn reference_tree(entries: &[Entry]) -> crate::merkle::tiles::MemoryTiles {
        let mut tree = crate::merkle::tiles::MemoryTiles::new();
        for e in entries {
            let raw = crate::chain::decode_hex(e.entry_hash.as_bytes()).unwrap();
            tree.append(crate::merkle::entry_leaf_hash(&raw));
        }
        tree
    }

    #[test]
    fn a_format_4_store_loses_its_partial_halves_and_keeps_its_tree() {
        use crate::store::tiles::{half_key, key_half};
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(LEDGER);
        let reference = reference_tree(&store_of_entries(&path, 1_000, 1_000));
        migrate_3_to_4(tmp.path()).unwrap();
        {
            // The right edge as format 4 kept it: leaves 896..1000 and the
            // three level-8 nodes, in partial halves.
            let store = SledStore::open(&path, &SledOptions::default()).unwrap();
            store
                .append(Append {
                    side: vec![
                        (Family::TILES, half_key(0, 7), vec![1u8; 32 * 104]),
                        (Family::TILES, half_key(1, 0), vec![2u8; 32 * 3]),
                    ],
                    ..Append::default()
                })
                .unwrap();
            store.commit().unwrap();
        }
        for _ in 0..2 {
            migrate_4_to_5(tmp.path()).unwrap();
            let store = SledStore::open(&path, &SledOptions::default()).unwrap();
            let halves: Vec<((u8, u64), usize)> = store
                .side_range(Family::TILES, 0, u64::MAX)
                .map(|item| {
                    let (key, value) = item.unwrap();
                    (key_half(key), value.len())
                })
                .collect();
            let full: Vec<_> = (0..7).map(|h| ((0u8, h), VALUE_BYTES)).collect();
            assert_eq!(halves, full);
            assert_eq!(
                TileWriter::resume(&store, 1_000).unwrap().root(),
                reference.root()
            );
            assert_eq!(
                store.meta(meta::FORMAT).unwrap().as_deref(),
                Some(&b"5"[..])
            );
        }
    }

    #[test]
    fn a_format_3_store_gets_the_tree_of_its_entries_and_a_second_run_changes_nothing() {
        use crate::merkle::{inclusion_proof, tree_root};
        use crate::store::tiles::EdgeTiles;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(LEDGER);
        let reference = reference_tree(&store_of_entries(&path, 9_000, 333));
        for _ in 0..2 {
            migrate_3_to_4(tmp.path()).unwrap();
            let store = SledStore::open(&path, &SledOptions::default()).unwrap();
            let edges = TileWriter::resume(&store, 9_000).unwrap().edges();
            let nodes = EdgeTiles::new(&store, edges).nodes();
            assert_eq!(tree_root(9_000, &nodes).unwrap(), reference.root());
            assert_eq!(
                inclusion_proof(4_321, 7_000, &nodes).unwrap(),
                inclusion_proof(4_321, 7_000, &crate::merkle::tiles::TiledNodes(&reference))
                    .unwrap()
            );
            assert_eq!(
                TileWriter::resume(&store, 9_000).unwrap().root(),
                reference.root()
            );
            let report = crate::ledger::open::verify_store(&store, 0, 9_000, GENESIS_HASH);
            assert!(report.valid, "{:?}", report.errors.first());
            assert_eq!(
                store.meta(meta::FORMAT).unwrap().as_deref(),
                Some(&b"4"[..])
            );
        }
    }

    #[test]
    fn a_format_2_store_is_migrated_and_a_second_run_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(LEDGER);
        let entries = crate::entry::test_chain(500, 0, GENESIS_HASH);
        {
            let store = SledStore::open(&path, &SledOptions::default()).unwrap();
            store
                .append(Append {
                    entries: &entries,
                    ..Append::default()
                })
                .unwrap();
            store.commit().unwrap();
            store.wait_applied().unwrap();
            let tree = store.tree();
            // Older builds wrote chunks of up to 48 KiB: the chunks from the
            // first at or after entry 100 to the first at or after 400, as one.
            let starts: Vec<u64> = tree
                .scan_prefix([CHUNK])
                .keys()
                .map(|k| key_seq(&k.unwrap()).unwrap())
                .collect();
            let from = *starts.iter().find(|s| **s >= 100).unwrap();
            let to = *starts.iter().find(|s| **s >= 400).unwrap();
            let big = chunk::group(
                entries[from as usize..to as usize]
                    .iter()
                    .map(|e| (e.ledger_seq, record::encode_entry(e))),
            );
            // (group() closes at 4 KiB; glue them into one older chunk.)
            let mut one = vec![1u8];
            one.extend_from_slice(&((to - from) as u32).to_be_bytes());
            for (first, c) in &big {
                for (_, rec) in chunk::records(*first, c).unwrap() {
                    one.extend_from_slice(&(rec.len() as u32).to_be_bytes());
                    one.extend_from_slice(rec);
                }
            }
            assert!(one.len() > 8 * VALUE_BYTES);
            for s in starts.iter().filter(|s| (from..to).contains(*s)) {
                tree.remove(&chunk_key(*s)[..]).unwrap();
            }
            tree.insert(&chunk_key(from)[..], one).unwrap();
            // Format 2's records: one `r <request_id>` key each, no id inside.
            for seq in (0..500).step_by(3) {
                let mut json = serde_json::to_value(record("", seq)).unwrap();
                json.as_object_mut().unwrap().remove("request_id");
                tree.insert(
                    prefixed(FORMAT2_REQUEST, format!("req-{seq}").as_bytes()),
                    serde_json::to_vec(&json).unwrap(),
                )
                .unwrap();
            }
        }
        for round in 0..3 {
            if round == 2 {
                // A crash in the middle of the swap: the complete rewrite
                // beside the old database, which was moved aside.
                let (fresh, old) = rewrite_paths(&path);
                copy_dir(&path, &fresh);
                fs::rename(&path, &old).unwrap();
            }
            migrate_2_to_3(tmp.path()).unwrap();
            let (fresh, old) = rewrite_paths(&path);
            assert!(!fresh.exists() && !old.exists());
            let store = SledStore::open(&path, &SledOptions::default()).unwrap();
            let tree = store.tree();
            assert_eq!(tree.scan_prefix([FORMAT2_REQUEST]).count(), 0);
            // Every entry is there, byte for byte, in chunks of at most 4 KiB.
            let back: Vec<Entry> = super::super::read_entries(&store, 0, 500)
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(back == entries, "entries changed");
            for v in tree.scan_prefix([CHUNK]).values() {
                assert!(v.unwrap().len() <= VALUE_BYTES);
            }
            // The 167 one-record blocks the conversion wrote were merged by
            // the rewrite, and every record is there.
            let blocks: Vec<(u64, Vec<u8>)> = store
                .side_range(Family::REQUESTS, 0, u64::MAX)
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(
                (3..20).contains(&blocks.len()),
                "{} request blocks",
                blocks.len()
            );
            let records: Vec<RequestRecord> = blocks
                .iter()
                .flat_map(|(first, b)| request_records::decode_block(*first, b).unwrap())
                .collect();
            let want: Vec<RequestRecord> = (0..500)
                .step_by(3)
                .map(|seq| record(&format!("req-{seq}"), seq))
                .collect();
            assert_eq!(records, want);
            // Fingerprints of all 500 entries, in 4 KiB blocks.
            let mut fps = Vec::new();
            for item in store.side_range(Family::REQUEST_FINGERPRINTS, 0, u64::MAX) {
                let (first, block) = item.unwrap();
                assert_eq!(first, fps.len() as u64);
                assert!(block.len() <= VALUE_BYTES);
                fps.extend(decode_fingerprints(&block).unwrap());
            }
            assert_eq!(fps.len(), 500);
            for (seq, fp) in fps.iter().enumerate() {
                let want = if seq % 3 == 0 {
                    fingerprint(&format!("req-{seq}"))
                } else {
                    0
                };
                assert_eq!(*fp, want, "fingerprint of entry {seq}");
            }
            assert_eq!(
                store.meta(meta::FORMAT).unwrap().as_deref(),
                Some(&b"3"[..])
            );
        }
    }
}
