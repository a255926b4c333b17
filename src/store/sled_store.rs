//! [`LedgerStore`] on sled.
//!
//! One sled tree holds everything, with one-byte key prefixes, so that an
//! append (entries, request records, head, checkpoint) is a single atomic
//! `apply_batch`:
//!
//! ```text
//! c <first seq: 8 bytes BE>   a chunk of consecutive entries
//! r <request_id bytes>        request record (JSON)
//! m <name>                    metadata (format version, kernel id, head, checkpoint)
//! ```
//!
//! Entries are stored in chunks of up to [`CHUNK_ENTRIES`] consecutive
//! entries (one group commit's worth), because a sled insert costs several
//! microseconds whatever its size: one insert per chunk instead of per entry
//! is what lets a busy kernel commit tens of thousands of decisions a second.
//! A chunk is `[version 1][count: u32 BE]` then, per entry, `[len: u32 BE]`
//! and the entry's stored record (see `record`).
//!
//! Durability: every batch applied to sled is also staged in the write-ahead
//! log ([`super::wal`]), and [`SledStore::commit`] is one write + `fdatasync`
//! of that log — the commit point. sled itself is made durable in the
//! background about once a second: sled's `flush` (which writes its log with
//! `sync_file_range`, flushing neither the disk's write cache nor metadata —
//! sled issues #1351, #1452 — and never fsyncs blob files), then `fdatasync`
//! of sled's log file and `fsync` of any new blob file; only then are the
//! write-ahead log generations it covers deleted. Opening applies whatever
//! the write-ahead log still holds.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::record::{self, RequestRecord};
use super::wal::Wal;
use super::{LedgerStore, Scan, StoreError, meta};
use crate::entry::Entry;

const CHUNK: u8 = b'c';
const CHUNK_VERSION: u8 = 1;

/// Most entries in one chunk.
pub const CHUNK_ENTRIES: usize = 64;
/// Chunks are closed once they reach this many bytes (well below sled's blob threshold).
pub const CHUNK_BYTES: usize = 48 * 1024;
const REQUEST: u8 = b'r';
const META: u8 = b'm';

/// Tuning of the sled engine.
#[derive(Debug, Clone)]
pub struct SledOptions {
    /// Page cache size in bytes (the main lever on memory use).
    pub cache_capacity: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions {
            cache_capacity: 16 * 1024 * 1024,
        }
    }
}

/// How often sled is made durable (and the write-ahead log trimmed).
pub const SLED_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// What the background sled sync needs.
struct Durability {
    db: sled::Db,
    tree: sled::Tree,
    path: PathBuf,
    log_file: File,
    synced_blobs: Mutex<BlobSync>,
    wal: Wal,
    index: Index,
}

/// Request records waiting to be written into sled's index.
///
/// A group commit writes its entries into sled at once, but its request
/// records (one sled insert each, several microseconds apiece) are written
/// by a background indexer: they are durable in the write-ahead log from the
/// commit on, and visible to lookups from this queue until the indexer has
/// put them in sled. Before a write-ahead log generation is dropped, the
/// indexer has caught up with every record queued before it was closed.
#[derive(Default)]
struct Index {
    /// Guards queueing + staging against rotation; holds the number of
    /// records ever queued.
    gate: Mutex<u64>,
    queue: Mutex<IndexQueue>,
    /// Signals the indexer (new work) and waiters (progress).
    cv: Condvar,
}

#[derive(Default)]
struct IndexQueue {
    pending: Vec<(Vec<u8>, Vec<u8>)>,
    lookup: std::collections::HashMap<Vec<u8>, Vec<u8>>,
    /// Records put in sled so far.
    applied: u64,
    stop: bool,
}

type Syncer = (std::thread::JoinHandle<()>, Arc<(Mutex<bool>, Condvar)>);

/// The sled-backed store.
pub struct SledStore {
    tree: sled::Tree,
    path: PathBuf,
    durability: Arc<Durability>,
    syncer: Option<Syncer>,
    indexer: Option<std::thread::JoinHandle<()>>,
}

/// Which blob files are known to be synced, and the blob dir's mtime then.
#[derive(Default)]
struct BlobSync {
    synced: HashSet<std::ffi::OsString>,
    dir_mtime: Option<std::time::SystemTime>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .finish()
    }
}

fn engine(e: sled::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

fn chunk_key(first_seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = CHUNK;
    k[1..].copy_from_slice(&first_seq.to_be_bytes());
    k
}

fn key_seq(key: &[u8]) -> Result<u64, StoreError> {
    if key.len() != 9 {
        return Err(StoreError::Engine("malformed chunk key".into()));
    }
    Ok(u64::from_be_bytes(key[1..9].try_into().expect("8 bytes")))
}

/// Splits a chunk into its entries' stored records.
pub fn chunk_records(first_seq: u64, chunk: &[u8]) -> Result<Vec<(u64, &[u8])>, StoreError> {
    let bad = |what: &str| StoreError::Corrupt {
        seq: first_seq,
        message: format!("chunk starting at entry {first_seq} is unreadable: {what}"),
    };
    if chunk.len() < 5 || chunk[0] != CHUNK_VERSION {
        return Err(bad("bad header"));
    }
    let count = u32::from_be_bytes(chunk[1..5].try_into().expect("4 bytes")) as usize;
    let mut out = Vec::with_capacity(count);
    let mut at = 5;
    for i in 0..count {
        if chunk.len() < at + 4 {
            return Err(bad("truncated"));
        }
        let len = u32::from_be_bytes(chunk[at..at + 4].try_into().expect("4 bytes")) as usize;
        at += 4;
        if chunk.len() < at + len {
            return Err(bad("truncated"));
        }
        out.push((first_seq + i as u64, &chunk[at..at + len]));
        at += len;
    }
    if at != chunk.len() {
        return Err(bad("trailing bytes"));
    }
    Ok(out)
}

fn chunk_count(chunk: &[u8]) -> u64 {
    if chunk.len() < 5 {
        return 0;
    }
    u64::from(u32::from_be_bytes(chunk[1..5].try_into().expect("4 bytes")))
}

fn encode_chunks(entries: &[Entry]) -> Vec<(u64, Vec<u8>)> {
    let mut chunks = Vec::new();
    let mut current: Option<(u64, Vec<u8>, u32)> = None;
    for e in entries {
        let record = record::encode_entry(e);
        let full = current.as_ref().is_some_and(|(_, bytes, n)| {
            *n as usize >= CHUNK_ENTRIES || bytes.len() + record.len() > CHUNK_BYTES
        });
        if full {
            chunks.push(finish_chunk(current.take().expect("checked")));
        }
        let (_, bytes, n) =
            current.get_or_insert_with(|| (e.ledger_seq, vec![CHUNK_VERSION, 0, 0, 0, 0], 0));
        bytes.extend_from_slice(&(record.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&record);
        *n += 1;
    }
    chunks.extend(current.map(finish_chunk));
    chunks
}

fn finish_chunk((first, mut bytes, n): (u64, Vec<u8>, u32)) -> (u64, Vec<u8>) {
    bytes[1..5].copy_from_slice(&n.to_be_bytes());
    (first, bytes)
}

fn prefixed(prefix: u8, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(prefix);
    k.extend_from_slice(name);
    k
}

impl SledStore {
    /// Opens (or creates) the sled database at `path`.
    pub fn open(path: &Path, options: &SledOptions) -> Result<SledStore, StoreError> {
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(options.cache_capacity)
            // Our commits flush explicitly; sled's timer would only add I/O.
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput);
        // sled can panic on some kinds of on-disk corruption instead of
        // returning an error; a corrupt data dir must be a clear error.
        let db = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()))
            .map_err(|_| {
                StoreError::Engine(format!(
                    "sled could not open {} (corrupt database)",
                    path.display()
                ))
            })?
            .map_err(engine)?;
        let tree = db.open_tree("ledger").map_err(engine)?;
        let log_file = File::open(path.join("db"))?;
        super::datadir::sync_dir(path)?;

        // Batches committed to the write-ahead log but maybe not to sled.
        let (wal, batches) = Wal::open(&wal_dir(path))?;
        let replayed = !batches.is_empty();
        for kvs in batches {
            let mut batch = sled::Batch::default();
            for (k, v) in kvs {
                batch.insert(k, v);
            }
            tree.apply_batch(batch).map_err(engine)?;
        }
        let durability = Arc::new(Durability {
            db: db.clone(),
            tree: tree.clone(),
            path: path.to_owned(),
            log_file,
            synced_blobs: Mutex::new(BlobSync::default()),
            wal,
            index: Index::default(),
        });
        if replayed {
            durability.make_sled_durable()?;
        }
        durability.wal.remove_older_generations()?;

        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let handle = {
            let (durability, stop) = (durability.clone(), stop.clone());
            std::thread::Builder::new()
                .name("kernels-sled-sync".into())
                .spawn(move || sync_loop(&durability, &stop))?
        };
        let indexer = {
            let durability = durability.clone();
            std::thread::Builder::new()
                .name("kernels-indexer".into())
                .spawn(move || durability.index_loop())?
        };
        Ok(SledStore {
            tree,
            path: path.to_owned(),
            durability,
            syncer: Some((handle, stop)),
            indexer: Some(indexer),
        })
    }
}

/// Where the write-ahead log of the sled database at `path` lives.
pub fn wal_dir(path: &Path) -> PathBuf {
    path.with_extension("wal")
}

fn sync_loop(durability: &Durability, stop: &(Mutex<bool>, Condvar)) {
    let (lock, cv) = stop;
    let mut stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
    while !*stopped {
        stopped = cv
            .wait_timeout(stopped, SLED_SYNC_INTERVAL)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        if *stopped {
            break;
        }
        drop(stopped);
        if let Err(e) = durability.make_sled_durable() {
            // The write-ahead log keeps everything: retry next time.
            tracing::error!(error = %e, "making sled durable failed; the write-ahead log is kept");
        }
        stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        if let Some((handle, stop)) = self.syncer.take() {
            *stop.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
            stop.1.notify_all();
            let _ = handle.join();
        }
        {
            let index = &self.durability.index;
            index.queue.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
            index.cv.notify_all();
        }
        if let Some(handle) = self.indexer.take() {
            let _ = handle.join();
        }
        if let Err(e) = self.durability.make_sled_durable() {
            tracing::error!(error = %e, "final sled sync failed; the write-ahead log is kept");
        }
    }
}

impl Durability {
    /// Makes everything applied to sled so far durable in sled, then drops
    /// the write-ahead log generations that are no longer needed.
    fn make_sled_durable(&self) -> Result<(), StoreError> {
        let (closed, queued) = {
            let gate = self.index.gate.lock().unwrap_or_else(|p| p.into_inner());
            (self.wal.rotate()?, *gate)
        };
        let Some(closed) = closed else {
            return Ok(());
        };
        // Every batch of generation `closed` was applied to sled before the
        // rotation (its request records once the indexer reaches `queued`),
        // so this flush covers it.
        self.wait_indexed(queued)?;
        self.db.flush().map_err(engine)?;
        self.log_file.sync_data()?;
        self.sync_blobs()?;
        self.wal.remove_through(closed)
    }

    /// Queues request records for the indexer and stages the whole batch in
    /// the write-ahead log, atomically with respect to a rotation.
    fn queue_and_stage(&self, index_kvs: Vec<(Vec<u8>, Vec<u8>)>, frame: &[(&[u8], &[u8])]) {
        let mut gate = self.index.gate.lock().unwrap_or_else(|p| p.into_inner());
        if !index_kvs.is_empty() {
            let mut q = self.index.queue.lock().unwrap_or_else(|p| p.into_inner());
            *gate += index_kvs.len() as u64;
            for (k, v) in index_kvs {
                q.lookup.insert(k.clone(), v.clone());
                q.pending.push((k, v));
            }
            drop(q);
            self.index.cv.notify_all();
        }
        self.wal.stage(frame);
        drop(gate);
    }

    /// The indexer: puts queued request records into sled, in batches.
    fn index_loop(&self) {
        loop {
            let batch = {
                let mut q = self.index.queue.lock().unwrap_or_else(|p| p.into_inner());
                while q.pending.is_empty() && !q.stop {
                    q = self.index.cv.wait(q).unwrap_or_else(|p| p.into_inner());
                }
                if q.pending.is_empty() {
                    return;
                }
                std::mem::take(&mut q.pending)
            };
            let mut sled_batch = sled::Batch::default();
            for (k, v) in &batch {
                sled_batch.insert(&k[..], &v[..]);
            }
            if let Err(e) = self.tree.apply_batch(sled_batch) {
                // The records stay in the lookup map and in the write-ahead
                // log; the next sled sync waits for them and reports.
                tracing::error!(error = %e, "indexing request records failed");
                let mut q = self.index.queue.lock().unwrap_or_else(|p| p.into_inner());
                let mut retry = batch;
                retry.append(&mut q.pending);
                q.pending = retry;
                drop(q);
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            let mut q = self.index.queue.lock().unwrap_or_else(|p| p.into_inner());
            for (k, _) in &batch {
                q.lookup.remove(k);
            }
            q.applied += batch.len() as u64;
            drop(q);
            self.index.cv.notify_all();
        }
    }

    /// Waits until the indexer has put `count` records in sled.
    fn wait_indexed(&self, count: u64) -> Result<(), StoreError> {
        let mut q = self.index.queue.lock().unwrap_or_else(|p| p.into_inner());
        while q.applied < count {
            if q.stop {
                // Shutting down: index what is left here.
                let rest = std::mem::take(&mut q.pending);
                let mut sled_batch = sled::Batch::default();
                for (k, v) in &rest {
                    sled_batch.insert(&k[..], &v[..]);
                }
                self.tree.apply_batch(sled_batch).map_err(engine)?;
                for (k, _) in &rest {
                    q.lookup.remove(k);
                }
                q.applied += rest.len() as u64;
                break;
            }
            let (guard, _) = self
                .index
                .cv
                .wait_timeout(q, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner());
            q = guard;
        }
        Ok(())
    }

    /// fsyncs blob files sled wrote since the last call (sled never does).
    /// Chunks stay far below sled's blob threshold, so this is normally a
    /// single `stat` of the blob dir that finds its mtime unchanged.
    fn sync_blobs(&self) -> Result<(), StoreError> {
        let dir = self.path.join("blobs");
        let Ok(mtime) = std::fs::metadata(&dir).and_then(|m| m.modified()) else {
            return Ok(());
        };
        let mut state = self
            .synced_blobs
            .lock()
            .expect("blob set lock is never poisoned");
        if state.dir_mtime == Some(mtime) {
            return Ok(());
        }
        let mut new = false;
        for item in std::fs::read_dir(&dir)?.flatten() {
            let name = item.file_name();
            if !state.synced.contains(&name) {
                File::open(item.path())?.sync_all()?;
                state.synced.insert(name);
                new = true;
            }
        }
        if new {
            super::datadir::sync_dir(&dir)?;
        }
        // A coarse filesystem clock could give a blob created a moment from
        // now this same mtime: only trust an mtime that is not recent.
        let settled = mtime
            .elapsed()
            .is_ok_and(|age| age > std::time::Duration::from_millis(100));
        state.dir_mtime = settled.then_some(mtime);
        Ok(())
    }
}

impl SledStore {
    /// Applies one atomic batch to sled and stages it in the write-ahead log
    /// (durable at the next commit).
    fn apply(&self, kvs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), StoreError> {
        // Request records go to the indexer; everything else into sled now.
        let mut batch = sled::Batch::default();
        let mut index_kvs = Vec::new();
        for (k, v) in &kvs {
            if k.first() == Some(&REQUEST) {
                index_kvs.push((k.clone(), v.clone()));
            } else {
                batch.insert(&k[..], &v[..]);
            }
        }
        self.tree.apply_batch(batch).map_err(engine)?;
        let refs: Vec<(&[u8], &[u8])> = kvs.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        self.durability.queue_and_stage(index_kvs, &refs);
        Ok(())
    }
}

impl LedgerStore for SledStore {
    fn append(
        &self,
        entries: &[Entry],
        requests: &[(String, RequestRecord)],
        checkpoint: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let mut kvs: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(requests.len() + 3);
        for (first, chunk) in encode_chunks(entries) {
            kvs.push((chunk_key(first).to_vec(), chunk));
        }
        for (id, rec) in requests {
            let value = serde_json::to_vec(rec).expect("request records serialize");
            kvs.push((prefixed(REQUEST, id.as_bytes()), value));
        }
        if let Some(last) = entries.last() {
            let mut head = Vec::with_capacity(40);
            head.extend_from_slice(&(last.ledger_seq + 1).to_be_bytes());
            let mut raw = [0u8; 32];
            hex::decode_to_slice(&last.entry_hash, &mut raw)
                .expect("sealed entries have hex hashes");
            head.extend_from_slice(&raw);
            kvs.push((prefixed(META, meta::HEAD.as_bytes()), head));
        }
        if let Some(cp) = checkpoint {
            kvs.push((prefixed(META, meta::CHECKPOINT.as_bytes()), cp));
        }
        self.apply(kvs)
    }

    fn commit(&self) -> Result<(), StoreError> {
        // THE COMMIT POINT: when this returns Ok, every batch appended before
        // is in the fdatasync'ed write-ahead log.
        self.durability.wal.commit()
    }

    fn scan(&self, from: u64, to: u64) -> Scan<'_> {
        if from >= to {
            return Box::new(std::iter::empty());
        }
        // Start at the chunk holding `from` (the last chunk starting at or before it).
        let start = match self.tree.range(chunk_key(0)..=chunk_key(from)).next_back() {
            Some(Ok((k, _))) => match key_seq(&k) {
                Ok(s) => s,
                Err(e) => return Box::new(std::iter::once(Err(e))),
            },
            Some(Err(e)) => return Box::new(std::iter::once(Err(engine(e)))),
            None => from,
        };
        let chunks = self.tree.range(chunk_key(start)..chunk_key(to));
        let iter = chunks.flat_map(move |item| {
            let records: Vec<Result<(u64, Vec<u8>), StoreError>> = match item {
                Err(e) => vec![Err(engine(e))],
                Ok((k, v)) => match key_seq(&k)
                    .and_then(|first| chunk_records(first, &v).map(|r| (first, r)))
                {
                    Err(e) => vec![Err(e)],
                    Ok((_, records)) => records
                        .into_iter()
                        .filter(|(seq, _)| *seq >= from && *seq < to)
                        .map(|(seq, bytes)| Ok((seq, bytes.to_vec())))
                        .collect(),
                },
            };
            records
        });
        Box::new(iter)
    }

    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(item) = self.tree.range(chunk_key(0)..=chunk_key(seq)).next_back() else {
            return Ok(None);
        };
        let (k, v) = item.map_err(engine)?;
        let first = key_seq(&k)?;
        Ok(chunk_records(first, &v)?
            .into_iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, bytes)| bytes.to_vec()))
    }

    fn len(&self) -> Result<u64, StoreError> {
        let last = self
            .tree
            .range(chunk_key(0)..=chunk_key(u64::MAX))
            .next_back()
            .transpose()
            .map_err(engine)?;
        Ok(match last {
            Some((k, v)) => key_seq(&k)? + chunk_count(&v),
            None => 0,
        })
    }

    fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let key = prefixed(REQUEST, request_id.as_bytes());
        let queued = {
            let q = self
                .durability
                .index
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            q.lookup.get(&key).cloned()
        };
        let found = match queued {
            Some(v) => Some(v),
            None => self.tree.get(&key).map_err(engine)?.map(|v| v.to_vec()),
        };
        match found {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| StoreError::Engine(format!("request record of {request_id:?}: {e}"))),
        }
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree
            .get(prefixed(META, key.as_bytes()))
            .map_err(engine)?
            .map(|v| v.to_vec()))
    }

    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.apply(vec![(prefixed(META, key.as_bytes()), value.to_vec())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::GENESIS_HASH;

    fn chain(n: u64) -> Vec<Entry> {
        crate::entry::test_chain(n, 0, GENESIS_HASH)
    }

    #[test]
    fn chunks_are_bounded_and_cover_every_entry() {
        let entries = chain(200);
        let chunks = encode_chunks(&entries);
        assert_eq!(chunks.len(), 4);
        let mut seqs = Vec::new();
        for (first, bytes) in &chunks {
            assert!(bytes.len() <= CHUNK_BYTES + 4096);
            for (seq, rec) in chunk_records(*first, bytes).unwrap() {
                assert_eq!(record::decode_entry(rec).unwrap(), entries[seq as usize]);
                seqs.push(seq);
            }
        }
        assert_eq!(seqs, (0..200).collect::<Vec<_>>());
    }

    #[test]
    fn appended_entries_survive_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let entries = chain(300);
        {
            let store = SledStore::open(tmp.path(), &SledOptions::default()).unwrap();
            assert_eq!(store.len().unwrap(), 0);
            store
                .append(
                    &entries[..200],
                    &[(
                        "r1".into(),
                        RequestRecord {
                            seq: 1,
                            content_hash: "h".into(),
                            status: crate::kernel::Status::Accepted,
                            tool_result: None,
                        },
                    )],
                    None,
                )
                .unwrap();
            store
                .append(&entries[200..], &[], Some(b"cp".to_vec()))
                .unwrap();
            store.commit().unwrap();
        }
        let store = SledStore::open(tmp.path(), &SledOptions::default()).unwrap();
        assert_eq!(store.len().unwrap(), 300);
        let back: Vec<Entry> = super::super::read_entries(&store, 100, 110)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, entries[100..110]);
        assert_eq!(store.request("r1").unwrap().unwrap().seq, 1);
        assert_eq!(store.request("nope").unwrap(), None);
        assert_eq!(
            store.meta(meta::CHECKPOINT).unwrap().as_deref(),
            Some(&b"cp"[..])
        );
        let head = store.meta(meta::HEAD).unwrap().unwrap();
        assert_eq!(u64::from_be_bytes(head[..8].try_into().unwrap()), 300);
    }
}
