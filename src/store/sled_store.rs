//! [`LedgerStore`] on sled.
//!
//! One sled tree holds everything, with one-byte key prefixes, so that an
//! append (entries, request records, head, checkpoint) is a single atomic
//! `apply_batch`:
//!
//! ```text
//! c <first seq: 8 bytes BE>   a chunk of consecutive entries
//! s <first seq: 8 bytes BE>   the request records of one append (in seq order)
//! f <first seq: 8 bytes BE>   request-id fingerprints of up to 1024 entries
//! m <name>                    metadata (format version, kernel id, head, checkpoint)
//! ```
//!
//! Every key is written in seq order, so sled's pages fill up and stay few.
//! Request ids are found through an in-memory [`RequestIndex`], persisted as
//! `f` blocks with each state checkpoint; opening loads the blocks and adds
//! the records appended since from the `s` keys. (Format 2 kept one
//! `r <request_id>` key per request; [`migrate_request_records`] converts them.)
//!
//! Entries are stored in chunks of up to [`CHUNK_ENTRIES`] consecutive
//! entries (one group commit's worth), because a sled insert costs several
//! microseconds whatever its size: one insert per chunk instead of per entry
//! is what lets a busy kernel commit tens of thousands of decisions a second.
//! A chunk is `[version 1][count: u32 BE]` then, per entry, `[len: u32 BE]`
//! and the entry's stored record (see `record`).
//!
//! Durability: an append is staged in the write-ahead log ([`super::wal`]),
//! and [`SledStore::commit`] is one write + `fdatasync` of that log — the
//! commit point. A background applier then puts the appended batches into
//! sled, many commits at a time (see [`Applier`]): until it has, reads are
//! served from its overlay, so every read sees every append. sled itself is
//! made durable in the background about once a second: sled's `flush` (which writes its log with
//! `sync_file_range`, flushing neither the disk's write cache nor metadata —
//! sled issues #1351, #1452 — and never fsyncs blob files), then `fdatasync`
//! of sled's log file and `fsync` of any new blob file; only then are the
//! write-ahead log generations it covers deleted. Opening applies whatever
//! the write-ahead log still holds.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::record::{self, RequestRecord};
use super::request_index::{RequestIndex, fingerprint};
use sled::IVec;

use super::wal::Wal;
use super::{LedgerStore, Scan, StoreError, meta};
use crate::entry::Entry;

const CHUNK: u8 = b'c';
const CHUNK_VERSION: u8 = 1;

/// Most entries in one chunk.
pub const CHUNK_ENTRIES: usize = 64;
/// Chunks are closed once they reach this many bytes. sled splits a leaf
/// above 16 keys and writes a leaf above ~128 KiB (a quarter of its 512 KiB
/// segment) to a blob file, which its cache then counts as a few bytes and
/// never evicts; 4 KiB chunks keep every leaf well below that.
pub const CHUNK_BYTES: usize = 4 * 1024;
/// Format 2's per-request keys (read only by the migration to format 3).
const REQUEST: u8 = b'r';
const REQUESTS: u8 = b's';
const REQUESTS_VERSION: u8 = 1;
const FINGERPRINTS: u8 = b'f';
/// Entries per `f` block: 4 KiB of fingerprints, like a chunk (a sled leaf
/// of bigger values passes its blob threshold and is never evicted).
const FINGERPRINT_BLOCK: u64 = 1024;
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
            cache_capacity: 1024 * 1024,
        }
    }
}

/// When this environment variable is set, the process aborts right after
/// opening a store: the crash that must not lose what the open replayed.
/// Used by the crash tests; never set it in production.
pub const ABORT_AFTER_OPEN: &str = "KERNELS_FAULT_ABORT_AFTER_STORE_OPEN";

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
    applier: Applier,
}

/// Writes staged in the write-ahead log and not yet applied to sled.
///
/// Every sled write costs microseconds and wakes sled's IO threads, so the
/// commit path does not write sled at all: an append is staged in the
/// write-ahead log (durable at the next commit) and queued here, and a
/// background applier writes the queue into sled in large batches, lingering
/// up to [`APPLY_LINGER`] for one to build up. Until a key is in sled, reads
/// take it from `overlay`. Before a write-ahead log generation is dropped,
/// the applier has applied every write queued before it was closed.
#[derive(Default)]
struct Applier {
    /// Guards queueing + staging against rotation; holds the number of
    /// writes ever queued.
    gate: Mutex<u64>,
    queue: Mutex<ApplyQueue>,
    /// Signals the applier (new work) and waiters (progress).
    cv: Condvar,
}

#[derive(Default)]
struct ApplyQueue {
    /// Writes not yet handed to sled, in order.
    pending: Vec<(IVec, IVec)>,
    /// The latest value of every key written but maybe not yet in sled.
    overlay: BTreeMap<IVec, IVec>,
    /// Writes put in sled so far.
    applied: u64,
    /// Why sled refused a write: the applier stops, appends fail (the
    /// ledger closes), and the write-ahead log keeps everything for replay.
    failed: Option<String>,
    stop: bool,
}

/// The applier waits this long for a batch to build up.
const APPLY_LINGER: Duration = Duration::from_millis(20);
/// The applier writes at once when this many writes wait.
const APPLY_BATCH: usize = 4096;
/// Writes per sled batch: sled's `apply_batch` holds a lock that stalls
/// every read (request lookups of deciding threads too) while it runs.
const APPLY_STEP: usize = 256;
/// Appends wait for the applier when this many writes are not yet applied.
const APPLY_BACKLOG: usize = 256 * 1024;

type Syncer = (std::thread::JoinHandle<()>, Arc<(Mutex<bool>, Condvar)>);

/// The request index and how much of it `f` blocks hold.
struct Index {
    index: RequestIndex,
    /// Entries whose fingerprints are in `f` blocks.
    persisted: u64,
}

/// The sled-backed store.
pub struct SledStore {
    tree: sled::Tree,
    path: PathBuf,
    durability: Arc<Durability>,
    index: Mutex<Index>,
    syncer: Option<Syncer>,
    applier: Option<std::thread::JoinHandle<()>>,
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

fn seq_key(prefix: u8, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn chunk_key(first_seq: u64) -> [u8; 9] {
    seq_key(CHUNK, first_seq)
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
    chunks_of(
        entries
            .iter()
            .map(|e| (e.ledger_seq, record::encode_entry(e))),
    )
}

/// Groups consecutive stored records `(seq, bytes)` into chunks of at most
/// [`CHUNK_ENTRIES`] records and [`CHUNK_BYTES`] (unless one is bigger).
fn chunks_of<R: AsRef<[u8]>>(records: impl Iterator<Item = (u64, R)>) -> Vec<(u64, Vec<u8>)> {
    let mut chunks = Vec::new();
    let mut current: Option<(u64, Vec<u8>, u32)> = None;
    for (seq, record) in records {
        let record = record.as_ref();
        let full = current.as_ref().is_some_and(|(_, bytes, n)| {
            *n as usize >= CHUNK_ENTRIES || bytes.len() + record.len() > CHUNK_BYTES
        });
        if full {
            chunks.push(finish_chunk(current.take().expect("checked")));
        }
        let (_, bytes, n) =
            current.get_or_insert_with(|| (seq, vec![CHUNK_VERSION, 0, 0, 0, 0], 0));
        bytes.extend_from_slice(&(record.len() as u32).to_be_bytes());
        bytes.extend_from_slice(record);
        *n += 1;
    }
    chunks.extend(current.map(finish_chunk));
    chunks
}

fn finish_chunk((first, mut bytes, n): (u64, Vec<u8>, u32)) -> (u64, Vec<u8>) {
    bytes[1..5].copy_from_slice(&n.to_be_bytes());
    (first, bytes)
}

/// The request records of one append: `[version 1][count: u32 BE]`, then
/// per record `[len: u32 BE]` and its JSON.
fn encode_requests(requests: &[RequestRecord]) -> Vec<u8> {
    let json: Vec<Vec<u8>> = requests.iter().map(request_json).collect();
    encode_request_block(&json)
}

fn request_json(r: &RequestRecord) -> Vec<u8> {
    serde_json::to_vec(r).expect("request records serialize")
}

fn encode_request_block(json: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + json.iter().map(|j| 4 + j.len()).sum::<usize>());
    out.push(REQUESTS_VERSION);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    for j in json {
        out.extend_from_slice(&(j.len() as u32).to_be_bytes());
        out.extend_from_slice(j);
    }
    out
}

/// The request records of one append as blocks of at most [`CHUNK_ENTRIES`]
/// records and [`CHUNK_BYTES`] (unless one record is bigger), like chunks,
/// to keep sled leaves out of blob files; each keyed by its first seq.
fn request_blocks(requests: &[RequestRecord]) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut block: Vec<Vec<u8>> = Vec::new();
    let mut first = 0;
    let mut bytes = 5;
    for r in requests {
        let json = request_json(r);
        if !block.is_empty()
            && (block.len() >= CHUNK_ENTRIES || bytes + 4 + json.len() > CHUNK_BYTES)
        {
            out.push((first, encode_request_block(&block)));
            block.clear();
            bytes = 5;
        }
        if block.is_empty() {
            first = r.seq;
        }
        bytes += 4 + json.len();
        block.push(json);
    }
    if !block.is_empty() {
        out.push((first, encode_request_block(&block)));
    }
    out
}

/// The records of a request block (see [`encode_requests`]).
fn decode_requests(first_seq: u64, bytes: &[u8]) -> Result<Vec<RequestRecord>, StoreError> {
    let bad = |what: String| {
        StoreError::Engine(format!(
            "request records stored at entry {first_seq} are unreadable: {what}"
        ))
    };
    if bytes.len() < 5 || bytes[0] != REQUESTS_VERSION {
        return Err(bad("bad header".into()));
    }
    let count = u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes")) as usize;
    let mut out = Vec::with_capacity(count.min(bytes.len()));
    let mut at = 5;
    for _ in 0..count {
        let len = bytes
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| bad("truncated".into()))?;
        at += 4;
        let json = bytes
            .get(at..at + len)
            .ok_or_else(|| bad("truncated".into()))?;
        out.push(serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?);
        at += len;
    }
    if at != bytes.len() {
        return Err(bad("trailing bytes".into()));
    }
    Ok(out)
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
        let open = || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())).map_err(|_| {
                StoreError::Engine(format!(
                    "sled could not open {} (corrupt database)",
                    path.display()
                ))
            })
        };
        // Another process is kept out by the data dir's LOCK file, so sled's
        // own file lock can only be held by an instance this process just
        // dropped, whose last IO-thread job may still hold it a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        let db = loop {
            match open()? {
                // sled reports it as an `Other` error with this text.
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other.map_err(engine)?,
            }
        };
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
            applier: Applier::default(),
        });
        if replayed {
            // The replayed batches must be durable in sled before the log
            // generations holding them go.
            durability.sync_sled()?;
        }
        durability.wal.remove_older_generations()?;
        let index = load_index(&durability)?;
        // Fault injection for the crash tests: die right after an open
        // (which may have replayed and dropped log generations).
        if std::env::var_os(ABORT_AFTER_OPEN).is_some() {
            tracing::error!("{ABORT_AFTER_OPEN} is set: aborting right after opening the store");
            std::process::abort();
        }

        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let handle = {
            let (durability, stop) = (durability.clone(), stop.clone());
            std::thread::Builder::new()
                .name("kernels-sled-sync".into())
                .spawn(move || sync_loop(&durability, &stop))?
        };
        let applier = {
            let durability = durability.clone();
            std::thread::Builder::new()
                .name("kernels-sled-apply".into())
                .spawn(move || durability.apply_loop())?
        };
        Ok(SledStore {
            tree,
            path: path.to_owned(),
            durability,
            index: Mutex::new(index),
            syncer: Some((handle, stop)),
            applier: Some(applier),
        })
    }

    /// The request index, for reading or updating.
    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Builds the request index of a just opened store (nothing appended yet,
/// so sled holds everything): the persisted `f` blocks, then the request
/// records appended after them.
fn load_index(durability: &Durability) -> Result<Index, StoreError> {
    let tree = &durability.tree;
    let len = durability.len()?;
    let mut index = RequestIndex::default();
    let mut starts = Vec::new();
    for item in tree.range(seq_key(FINGERPRINTS, 0)..=seq_key(FINGERPRINTS, u64::MAX)) {
        let (k, v) = item.map_err(engine)?;
        // A gap (or a block of the wrong shape) ends what the blocks can
        // say; the records give the rest.
        let start = key_seq(&k)?;
        if index.load_range(start, &v).is_none() {
            break;
        }
        starts.push(start);
    }
    // Blocks reaching past the stored entries cannot be trusted (they
    // cannot happen: entries are written first, in the same batch), nor can
    // any after a gap: drop them, and take those entries from the records.
    let cut = if index.len() > len {
        starts.into_iter().filter(|s| *s <= len).max().unwrap_or(0)
    } else {
        index.len()
    };
    let stale: Vec<IVec> = tree
        .range(seq_key(FINGERPRINTS, cut)..=seq_key(FINGERPRINTS, u64::MAX))
        .keys()
        .collect::<Result<_, _>>()
        .map_err(engine)?;
    for key in stale {
        tree.remove(key).map_err(engine)?;
    }
    index.truncate(cut);
    let persisted = index.len();
    let from = index.len();
    let start = tree
        .range(seq_key(REQUESTS, 0)..=seq_key(REQUESTS, from))
        .next_back()
        .transpose()
        .map_err(engine)?
        .map(|(k, _)| key_seq(&k))
        .transpose()?
        .unwrap_or(from);
    for item in tree.range(seq_key(REQUESTS, start)..=seq_key(REQUESTS, u64::MAX)) {
        let (k, v) = item.map_err(engine)?;
        nudge_cache(tree, &k, SCAN_NUDGES);
        for r in decode_requests(key_seq(&k)?, &v)? {
            if r.seq >= index.len() && r.seq < len {
                index.insert(r.seq, fingerprint(&r.request_id));
            }
        }
    }
    index.extend_to(len);
    Ok(Index { index, persisted })
}

/// Upgrades the sled database at `path` from storage format 2 to 3: each
/// `r <request_id>` record becomes a one-record `s` block keyed by its
/// entry's seq (in the same sled batch as the removal of the old key, so an
/// interrupted run can be run again), then every fingerprint is written as
/// `f` blocks and sled is made durable; then the database is rewritten
/// compactly, which also merges the one-record blocks ([`rewrite_compacted`]).
pub fn migrate_request_records(path: &Path) -> Result<(), StoreError> {
    finish_rewrite(path)?;
    convert_request_records(path)?;
    rewrite_compacted(path)
}

fn convert_request_records(path: &Path) -> Result<(), StoreError> {
    let store = SledStore::open(path, &SledOptions::default())?;
    let tree = &store.tree;
    loop {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in tree.scan_prefix([REQUEST]).take(1024) {
            let (k, v) = item.map_err(engine)?;
            let request_id = String::from_utf8(k[1..].to_vec())
                .map_err(|_| StoreError::Engine("a format 2 request key is not UTF-8".into()))?;
            let mut record: RequestRecord = serde_json::from_slice(&v).map_err(|e| {
                StoreError::Engine(format!("format 2 request record of {request_id:?}: {e}"))
            })?;
            record.request_id = request_id;
            batch.insert(
                &seq_key(REQUESTS, record.seq)[..],
                encode_requests(std::slice::from_ref(&record)),
            );
            batch.remove(k);
            n += 1;
        }
        if n == 0 {
            break;
        }
        tree.apply_batch(batch).map_err(engine)?;
    }
    let Index { index, .. } = load_index(&store.durability)?;
    let mut batch = sled::Batch::default();
    for start in (0..index.len()).step_by(FINGERPRINT_BLOCK as usize) {
        batch.insert(
            &seq_key(FINGERPRINTS, start)[..],
            index.encode_range(start, start + FINGERPRINT_BLOCK),
        );
    }
    batch.insert(prefixed(META, meta::FORMAT.as_bytes()), &b"3"[..]);
    tree.apply_batch(batch).map_err(engine)?;
    store.durability.sync_sled()
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
        std::fs::rename(if fresh.exists() { &fresh } else { &old }, path)?;
        super::datadir::sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    }
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh)?;
    }
    if old.exists() && path.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// Copies every key of the database at `path`, in order, into a new one and
/// swaps them (splitting chunks bigger than [`CHUNK_BYTES`] and regrouping
/// request records into blocks as appends write them). sled 0.34 never merges emptied pages, and keeps a record of
/// every page in memory: a million removed format 2 request keys left about
/// 30 MiB that every later open paid. The copy holds only live keys, in
/// full pages. It is made durable before the old database is moved aside
/// (see [`finish_rewrite`]); the write-ahead log beside it is empty.
fn rewrite_compacted(path: &Path) -> Result<(), StoreError> {
    let (fresh, old) = rewrite_paths(path);
    {
        let source = SledStore::open(path, &SledOptions::default())?;
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
            request_blocks(&std::mem::take(requests))
                .into_iter()
                .map(|(first, block)| (IVec::from(&seq_key(REQUESTS, first)[..]), block.into()))
                .collect()
        };
        for item in source.tree.iter() {
            let (k, v) = item.map_err(engine)?;
            nudge_cache(&source.tree, &k, SCAN_NUDGES);
            let kvs = match k.first() {
                Some(&REQUESTS) => {
                    requests.extend(decode_requests(key_seq(&k)?, &v)?);
                    if requests.len() >= 4096 {
                        request_kvs(&mut requests)
                    } else {
                        Vec::new()
                    }
                }
                // Chunks of older builds (up to 48 KiB) are split; the
                // stored records themselves are copied byte for byte.
                Some(&CHUNK) if v.len() > CHUNK_BYTES => {
                    chunks_of(chunk_records(key_seq(&k)?, &v)?.into_iter())
                        .into_iter()
                        .map(|(seq, chunk)| (IVec::from(&chunk_key(seq)[..]), chunk.into()))
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
        sync_tree_files(&fresh)?;
    }
    std::fs::rename(path, &old)?;
    std::fs::rename(&fresh, path)?;
    super::datadir::sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    std::fs::remove_dir_all(&old)?;
    Ok(())
}

/// fsyncs every file of a sled database directory, and the directories.
fn sync_tree_files(dir: &Path) -> Result<(), StoreError> {
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        if item.file_type()?.is_dir() {
            sync_tree_files(&item.path())?;
        } else {
            File::open(item.path())?.sync_all()?;
        }
    }
    super::datadir::sync_dir(dir)
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
            let applier = &self.durability.applier;
            applier.queue.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
            applier.cv.notify_all();
        }
        if let Some(handle) = self.applier.take() {
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
        // The new log file is created before the gate is taken: appends
        // (and so commits) wait only for the swap.
        let Some(next) = self.wal.prepare_rotation()? else {
            return Ok(());
        };
        let (closed, queued) = {
            let gate = self.applier.gate.lock().unwrap_or_else(|p| p.into_inner());
            (self.wal.rotate(next), *gate)
        };
        // Every batch of generation `closed` was queued before the rotation,
        // so once the applier reaches `queued` this flush covers it.
        self.wait_applied(queued)?;
        self.sync_sled()?;
        self.wal.remove_through(closed)
    }

    /// Makes everything applied to sled so far durable: sled's flush, then
    /// `fdatasync` of its log and `fsync` of new blob files.
    fn sync_sled(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(engine)?;
        self.log_file.sync_data()?;
        self.sync_blobs()
    }

    /// Queues a batch for the applier and stages it in the write-ahead log,
    /// atomically with respect to a rotation.
    fn queue_and_stage(&self, kvs: Vec<(IVec, IVec)>) -> Result<(), StoreError> {
        let mut gate = self.applier.gate.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = &self
            .applier
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failed
        {
            return Err(StoreError::Engine(e.clone()));
        }
        let frame: Vec<(&[u8], &[u8])> = kvs.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        self.wal.stage(&frame);
        drop(frame);
        let mut q = self.applier.queue.lock().unwrap_or_else(|p| p.into_inner());
        // Back-pressure: never let the overlay grow without bound.
        while q.pending.len() >= APPLY_BACKLOG && !q.stop && q.failed.is_none() {
            q = self.applier.cv.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        let was_empty = q.pending.is_empty();
        *gate += kvs.len() as u64;
        for (k, v) in kvs {
            q.overlay.insert(k.clone(), v.clone());
            q.pending.push((k, v));
        }
        drop(q);
        drop(gate);
        if was_empty {
            self.applier.cv.notify_all();
        }
        Ok(())
    }

    /// The applier: puts queued writes into sled, in large batches.
    fn apply_loop(&self) {
        // Whether the last step left work queued (then no lingering).
        let mut behind = false;
        loop {
            let batch = {
                let mut q = self.applier.queue.lock().unwrap_or_else(|p| p.into_inner());
                while (q.pending.is_empty() || q.failed.is_some()) && !q.stop {
                    q = self.applier.cv.wait(q).unwrap_or_else(|p| p.into_inner());
                }
                if q.pending.is_empty() || q.failed.is_some() {
                    // Stopping; after a failure the write-ahead log keeps the rest.
                    return;
                }
                // Coming from idle, let a batch build up: fewer sled writes.
                let deadline = Instant::now() + APPLY_LINGER;
                while !behind && q.pending.len() < APPLY_BATCH && !q.stop {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    q = self
                        .applier
                        .cv
                        .wait_timeout(q, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                let n = q.pending.len().min(APPLY_STEP);
                behind = q.pending.len() > n;
                q.pending.drain(..n).collect::<Vec<_>>()
            };
            if let Err(e) = self.apply_to_sled(batch) {
                // The writes stay in the overlay and in the write-ahead log;
                // appends now fail, which closes the ledger.
                tracing::error!(error = %e, "applying writes to sled failed; the ledger closes, the write-ahead log keeps every committed write");
            }
        }
    }

    /// Writes `batch` into sled and drops from the overlay every key whose
    /// latest value is now in sled. On error the batch is queued again and
    /// the failure recorded.
    fn apply_to_sled(&self, batch: Vec<(IVec, IVec)>) -> Result<(), StoreError> {
        let mut sled_batch = sled::Batch::default();
        for (k, v) in &batch {
            sled_batch.insert(k.clone(), v.clone());
        }
        let result = self.tree.apply_batch(sled_batch).map_err(engine);
        if result.is_ok() {
            // Written pages enter sled's cache like read ones: keep its
            // accounting current so that they are evicted (see `nudge_cache`).
            for (k, _) in &batch {
                nudge_cache(&self.tree, k, WRITE_NUDGES);
            }
        }
        let mut q = self.applier.queue.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(()) => {
                for (k, v) in &batch {
                    if q.overlay.get(k) == Some(v) {
                        q.overlay.remove(k);
                    }
                }
                q.applied += batch.len() as u64;
            }
            Err(e) => {
                let mut retry = batch;
                retry.append(&mut q.pending);
                q.pending = retry;
                q.failed = Some(format!("writing to sled failed: {e}"));
            }
        }
        drop(q);
        self.applier.cv.notify_all();
        result
    }

    /// Waits until the applier has put `count` writes in sled.
    fn wait_applied(&self, count: u64) -> Result<(), StoreError> {
        let mut q = self.applier.queue.lock().unwrap_or_else(|p| p.into_inner());
        while q.applied < count {
            if let Some(e) = &q.failed {
                return Err(StoreError::Engine(e.clone()));
            }
            if q.stop && !q.pending.is_empty() {
                // Shutting down (the applier has stopped): apply the rest here.
                let rest = std::mem::take(&mut q.pending);
                drop(q);
                self.apply_to_sled(rest)?;
                q = self.applier.queue.lock().unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let (guard, _) = self
                .applier
                .cv
                .wait_timeout(q, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner());
            q = guard;
        }
        Ok(())
    }

    /// Number of stored entries (the seq the next entry gets).
    fn len(&self) -> Result<u64, StoreError> {
        Ok(match self.chunk_at_or_before(u64::MAX)? {
            Some((first, chunk)) => first + chunk_count(&chunk),
            None => 0,
        })
    }

    /// The newest chunk starting at or before `seq`, from the overlay or sled.
    fn chunk_at_or_before(&self, seq: u64) -> Result<Option<(u64, IVec)>, StoreError> {
        self.newest_at_or_before(CHUNK, seq)
    }

    /// The value of the last `prefix` key at or before `seq`, from the
    /// overlay or sled.
    fn newest_at_or_before(&self, prefix: u8, seq: u64) -> Result<Option<(u64, IVec)>, StoreError> {
        let (low, high) = (seq_key(prefix, 0), seq_key(prefix, seq));
        // The overlay first: a key leaves it only once it is in sled.
        let queued = {
            let q = self.applier.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.overlay
                .range::<[u8], _>((Bound::Included(&low[..]), Bound::Included(&high[..])))
                .next_back()
                .map(|(k, v)| (k.clone(), v.clone()))
        };
        let stored = self
            .tree
            .range(low..=high)
            .next_back()
            .transpose()
            .map_err(engine)?;
        let newest = match (queued, stored) {
            (Some(q), Some(s)) => Some(if s.0 > q.0 { s } else { q }),
            (q, s) => q.or(s),
        };
        newest.map(|(k, v)| Ok((key_seq(&k)?, v))).transpose()
    }

    /// The overlay's chunks that start before `to`, in order.
    fn queued_chunks_before(&self, to: u64) -> Vec<(u64, IVec)> {
        let (low, high) = (chunk_key(0), chunk_key(to));
        let q = self.applier.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.overlay
            .range::<[u8], _>((Bound::Included(&low[..]), Bound::Excluded(&high[..])))
            .filter_map(|(k, v)| key_seq(k).ok().map(|s| (s, v.clone())))
            .collect()
    }

    /// The latest value of a non-chunk key, from the overlay or sled.
    fn value(&self, key: &[u8]) -> Result<Option<IVec>, StoreError> {
        let queued = {
            let q = self.applier.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.overlay.get(key).cloned()
        };
        match queued {
            Some(v) => Ok(Some(v)),
            None => self.tree.get(key).map_err(engine),
        }
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

/// Keeps sled's cache bounded while a scan (or the applier's writes)
/// touches each leaf about once.
///
/// sled 0.34.7 (`lru.rs`) spreads cache accounting over 256 groups and
/// applies a group's recorded reads, evicting what is over capacity, only
/// once it holds 64 of them. A scan reads each leaf about once, so without
/// help nothing is evicted until some 16k leaves are resident: a full scan
/// of a million entries kept ~600 MiB. Reading the chunk's key a few more
/// times (cache hits) fills its group's record and lets eviction run; with
/// it the scan stays flat. Measured with `kernels verify --data-dir` over
/// 1.08M entries (peak RSS, time): 2 re-reads 82 MiB, 0.8 s; 4 re-reads
/// 74 MiB, 0.9 s; 8 re-reads 70 MiB, 1.2 s; none ~640 MiB. This leans
/// on sled's internals, so sled is pinned to 0.34.7 and
/// `benches/ledger_scale.rs` and `benches/rotation_scale.rs` guard the peak.
fn nudge_cache(tree: &sled::Tree, key: &[u8], times: usize) {
    for _ in 0..times {
        let _ = tree.get(key);
    }
}

/// Extra reads of each chunk key during a scan (see [`nudge_cache`]).
const SCAN_NUDGES: usize = 4;
/// Extra reads of each key the applier writes (see [`nudge_cache`]).
const WRITE_NUDGES: usize = 16;

/// Splits one chunk into `(seq, record)` items within `from..to`.
fn chunk_items(
    first: u64,
    chunk: &[u8],
    from: u64,
    to: u64,
) -> Vec<Result<(u64, Vec<u8>), StoreError>> {
    match chunk_records(first, chunk) {
        Err(e) => vec![Err(e)],
        Ok(records) => records
            .into_iter()
            .filter(|(seq, _)| *seq >= from && *seq < to)
            .map(|(seq, bytes)| Ok((seq, bytes.to_vec())))
            .collect(),
    }
}

impl LedgerStore for SledStore {
    fn append(
        &self,
        entries: &[Entry],
        requests: &[RequestRecord],
        checkpoint: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let mut kvs: Vec<(IVec, IVec)> = Vec::with_capacity(8);
        for (first, chunk) in encode_chunks(entries) {
            kvs.push((IVec::from(&chunk_key(first)[..]), IVec::from(chunk)));
        }
        for (first, block) in request_blocks(requests) {
            kvs.push((IVec::from(&seq_key(REQUESTS, first)[..]), block.into()));
        }
        // The index answers for these ids as soon as the overlay holds them.
        let mut persist_to = None;
        let fingerprints: Vec<(u64, u32)> = requests
            .iter()
            .map(|r| (r.seq, fingerprint(&r.request_id)))
            .collect();
        {
            let mut index = self.index();
            for (seq, fp) in fingerprints {
                index.index.insert(seq, fp);
            }
            if let Some(last) = entries.last() {
                index.index.extend_to(last.ledger_seq + 1);
            }
            // With each checkpoint, the fingerprints not yet in `f` blocks.
            if checkpoint.is_some() {
                let to = index.index.len();
                let from = index.persisted / FINGERPRINT_BLOCK * FINGERPRINT_BLOCK;
                for start in (from..to).step_by(FINGERPRINT_BLOCK as usize) {
                    kvs.push((
                        IVec::from(&seq_key(FINGERPRINTS, start)[..]),
                        index
                            .index
                            .encode_range(start, start + FINGERPRINT_BLOCK)
                            .into(),
                    ));
                }
                persist_to = Some(to);
            }
        }
        if let Some(last) = entries.last() {
            let mut head = Vec::with_capacity(40);
            head.extend_from_slice(&(last.ledger_seq + 1).to_be_bytes());
            let mut raw = [0u8; 32];
            hex::decode_to_slice(&last.entry_hash, &mut raw)
                .expect("sealed entries have hex hashes");
            head.extend_from_slice(&raw);
            kvs.push((prefixed(META, meta::HEAD.as_bytes()).into(), head.into()));
        }
        if let Some(cp) = checkpoint {
            kvs.push((
                prefixed(META, meta::CHECKPOINT.as_bytes()).into(),
                cp.into(),
            ));
        }
        self.durability.queue_and_stage(kvs)?;
        if let Some(to) = persist_to {
            let mut index = self.index();
            index.persisted = index.persisted.max(to);
        }
        Ok(())
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
        // The chunks not yet in sled are the newest: take them first, then
        // read sled up to the first of them. (A chunk leaves the overlay only
        // once it is in sled, so nothing falls between the two.)
        let queued = self.durability.queued_chunks_before(to);
        // Start at the chunk holding `from` (the last chunk starting at or before it).
        let start = match self.durability.chunk_at_or_before(from) {
            Ok(Some((first, _))) => first,
            Ok(None) => from,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        let sled_end = queued.first().map_or(to, |(first, _)| (*first).min(to));
        let stored: Box<dyn Iterator<Item = _> + Send> = if start < sled_end {
            let tree = self.tree.clone();
            Box::new(
                self.tree
                    .range(chunk_key(start)..chunk_key(sled_end))
                    .map(move |item| {
                        let (k, v) = item.map_err(engine)?;
                        nudge_cache(&tree, &k, SCAN_NUDGES);
                        Ok((key_seq(&k)?, v))
                    }),
            )
        } else {
            Box::new(std::iter::empty())
        };
        let queued = queued
            .into_iter()
            .filter(move |(first, _)| *first >= start)
            .map(Ok);
        Box::new(
            stored.chain(queued).flat_map(
                move |item: Result<(u64, IVec), StoreError>| match item {
                    Err(e) => vec![Err(e)],
                    Ok((first, chunk)) => chunk_items(first, &chunk, from, to),
                },
            ),
        )
    }

    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let Some((first, chunk)) = self.durability.chunk_at_or_before(seq)? else {
            return Ok(None);
        };
        Ok(chunk_records(first, &chunk)?
            .into_iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, bytes)| bytes.to_vec()))
    }

    fn len(&self) -> Result<u64, StoreError> {
        self.durability.len()
    }

    fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let candidates = self.index().index.candidates(request_id);
        for seq in candidates {
            let Some((first, block)) = self.durability.newest_at_or_before(REQUESTS, seq)? else {
                continue;
            };
            let found = decode_requests(first, &block)?
                .into_iter()
                .find(|r| r.seq == seq && r.request_id == request_id);
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .durability
            .value(&prefixed(META, key.as_bytes()))?
            .map(|v| v.to_vec()))
    }

    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.durability
            .queue_and_stage(vec![(prefixed(META, key.as_bytes()).into(), value.into())])
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
        let total: usize = chunks.iter().map(|(_, b)| b.len()).sum();
        // Chunks close at CHUNK_BYTES or CHUNK_ENTRIES, so they are few and full.
        assert!(
            chunks.len() >= 200 / CHUNK_ENTRIES && chunks.len() <= total / (CHUNK_BYTES / 2) + 4
        );
        let mut seqs = Vec::new();
        for (first, bytes) in &chunks {
            // A chunk exceeds CHUNK_BYTES only when a single entry does.
            let records = chunk_records(*first, bytes).unwrap();
            assert!(bytes.len() <= CHUNK_BYTES || records.len() == 1);
            for (seq, rec) in chunk_records(*first, bytes).unwrap() {
                assert_eq!(record::decode_entry(rec).unwrap(), entries[seq as usize]);
                seqs.push(seq);
            }
        }
        assert_eq!(seqs, (0..200).collect::<Vec<_>>());
    }

    fn record(id: &str, seq: u64) -> RequestRecord {
        RequestRecord {
            request_id: id.into(),
            seq,
            content_hash: format!("h{seq}"),
            status: crate::kernel::Status::Accepted,
            tool_result: None,
        }
    }

    /// Appends `entries` in batches of `batch`, every third entry a request
    /// `req-<seq>`, with a checkpoint at each seq listed.
    fn append_with_requests(store: &SledStore, entries: &[Entry], batch: usize, cps: &[u64]) {
        for part in entries.chunks(batch) {
            let requests: Vec<RequestRecord> = part
                .iter()
                .filter(|e| e.ledger_seq % 3 == 0)
                .map(|e| record(&format!("req-{}", e.ledger_seq), e.ledger_seq))
                .collect();
            let last = part.last().unwrap().ledger_seq;
            let cp = cps
                .iter()
                .any(|c| part[0].ledger_seq <= *c && *c <= last)
                .then(|| b"cp".to_vec());
            store.append(part, &requests, cp).unwrap();
        }
        store.commit().unwrap();
    }

    fn assert_requests(store: &SledStore, n: u64) {
        for seq in 0..n {
            let found = store.request(&format!("req-{seq}")).unwrap();
            if seq % 3 == 0 {
                assert_eq!(found, Some(record(&format!("req-{seq}"), seq)));
            } else {
                assert_eq!(found, None, "req-{seq} was never submitted");
            }
        }
    }

    #[test]
    fn requests_are_found_before_and_after_they_reach_sled_and_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let entries = chain(9_000);
        {
            let store = SledStore::open(tmp.path(), &SledOptions::default()).unwrap();
            // Checkpoints (and so `f` blocks) at 5000 and 8200; the rest of
            // the records must come from the `s` keys on reopen.
            append_with_requests(&store, &entries, 37, &[5_000, 8_200]);
            assert_requests(&store, 9_000);
            let applied = *store.durability.applier.gate.lock().unwrap();
            store.durability.wait_applied(applied).unwrap();
            assert!(
                store
                    .durability
                    .applier
                    .queue
                    .lock()
                    .unwrap()
                    .overlay
                    .is_empty()
            );
            assert_requests(&store, 9_000);
            assert_eq!(store.index().persisted, 8_214);
        }
        let store = SledStore::open(tmp.path(), &SledOptions::default()).unwrap();
        assert_eq!(store.index().persisted, 8_214);
        // `f` blocks are 4 KiB, like chunks.
        for v in store.tree.scan_prefix([FINGERPRINTS]).values() {
            assert!(v.unwrap().len() <= CHUNK_BYTES);
        }
        assert_eq!(store.index().index.len(), 9_000);
        assert_requests(&store, 9_000);
        // A fingerprint match alone is not a hit: the id is compared.
        store.index().index.insert(9_000, fingerprint("req-1"));
        assert_eq!(store.request("req-1").unwrap(), None);
    }

    #[test]
    fn request_blocks_are_bounded_and_keep_every_record_in_order() {
        let mut records: Vec<RequestRecord> = (0..300)
            .map(|seq| record(&format!("req-{seq}"), seq))
            .collect();
        // One record bigger than a block on its own.
        records[150].tool_result = Some(serde_json::json!("x".repeat(2 * CHUNK_BYTES)));
        let blocks = request_blocks(&records);
        let mut back = Vec::new();
        for (first, block) in &blocks {
            let decoded = decode_requests(*first, block).unwrap();
            assert_eq!(decoded[0].seq, *first);
            assert!(block.len() <= CHUNK_BYTES || decoded.len() == 1);
            assert!(decoded.len() <= CHUNK_ENTRIES);
            back.extend(decoded);
        }
        assert_eq!(back, records);
        assert!(blocks.len() > 300 / CHUNK_ENTRIES);
    }

    #[test]
    fn fingerprint_blocks_past_the_stored_entries_are_dropped_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        let entries = chain(3_000);
        {
            let store = SledStore::open(tmp.path(), &SledOptions::default()).unwrap();
            append_with_requests(&store, &entries, 50, &[2_500]);
            let queued = *store.durability.applier.gate.lock().unwrap();
            store.durability.wait_applied(queued).unwrap();
            // A block claiming entries 3072.. that do not exist (and, when
            // they do, would hide their records): wrong fingerprints.
            store
                .tree
                .insert(&seq_key(FINGERPRINTS, 3_072)[..], vec![7u8; 4096])
                .unwrap();
            store
                .tree
                .insert(&seq_key(FINGERPRINTS, 2_048)[..], vec![7u8; 4096])
                .unwrap();
        }
        let store = SledStore::open(tmp.path(), &SledOptions::default()).unwrap();
        // Blocks 0 and 1024 stand; 2048 reached past the end: it and
        // everything after it are gone, and the records filled in.
        assert_eq!(store.index().persisted, 2_048);
        assert_eq!(
            store
                .tree
                .range(seq_key(FINGERPRINTS, 2_048)..=seq_key(FINGERPRINTS, u64::MAX))
                .count(),
            0
        );
        assert_requests(&store, 3_000);
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for item in std::fs::read_dir(from).unwrap() {
            let item = item.unwrap();
            if item.file_type().unwrap().is_dir() {
                copy_dir(&item.path(), &to.join(item.file_name()));
            } else {
                std::fs::copy(item.path(), to.join(item.file_name())).unwrap();
            }
        }
    }

    #[test]
    fn a_format_2_store_is_migrated_and_a_second_run_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let entries = chain(500);
        {
            let store = SledStore::open(tmp.path(), &SledOptions::default()).unwrap();
            store.append(&entries, &[], None).unwrap();
            store.commit().unwrap();
            let queued = *store.durability.applier.gate.lock().unwrap();
            store.durability.wait_applied(queued).unwrap();
            // Older builds wrote chunks of up to 48 KiB: the chunks from the
            // first at or after entry 100 to the first at or after 400, as one.
            let starts: Vec<u64> = store
                .tree
                .scan_prefix([CHUNK])
                .keys()
                .map(|k| key_seq(&k.unwrap()).unwrap())
                .collect();
            let from = *starts.iter().find(|s| **s >= 100).unwrap();
            let to = *starts.iter().find(|s| **s >= 400).unwrap();
            let mut big = vec![CHUNK_VERSION];
            big.extend_from_slice(&((to - from) as u32).to_be_bytes());
            for e in &entries[from as usize..to as usize] {
                let rec = record::encode_entry(e);
                big.extend_from_slice(&(rec.len() as u32).to_be_bytes());
                big.extend_from_slice(&rec);
            }
            assert!(big.len() > 8 * CHUNK_BYTES);
            for s in starts.iter().filter(|s| (from..to).contains(*s)) {
                store.tree.remove(&chunk_key(*s)[..]).unwrap();
            }
            store.tree.insert(&chunk_key(from)[..], big).unwrap();
            // Format 2's records: one `r <request_id>` key each, no id inside.
            for seq in (0..500).step_by(3) {
                let mut json = serde_json::to_value(record("", seq)).unwrap();
                json.as_object_mut().unwrap().remove("request_id");
                store
                    .tree
                    .insert(
                        prefixed(REQUEST, format!("req-{seq}").as_bytes()),
                        serde_json::to_vec(&json).unwrap(),
                    )
                    .unwrap();
            }
        }
        for round in 0..3 {
            if round == 2 {
                // A crash in the middle of the swap: the complete rewrite
                // beside the old database, which was moved aside.
                let (fresh, old) = rewrite_paths(tmp.path());
                copy_dir(tmp.path(), &fresh);
                std::fs::rename(tmp.path(), &old).unwrap();
            }
            migrate_request_records(tmp.path()).unwrap();
            let (fresh, old) = rewrite_paths(tmp.path());
            assert!(!fresh.exists() && !old.exists());
            let store = SledStore::open(tmp.path(), &SledOptions::default()).unwrap();
            assert_eq!(store.tree.scan_prefix([REQUEST]).count(), 0);
            // Every entry is there, byte for byte, in chunks of at most 4 KiB.
            let back: Vec<Entry> = super::super::read_entries(&store, 0, 500)
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(back == entries, "entries changed");
            for v in store.tree.scan_prefix([CHUNK]).values() {
                assert!(v.unwrap().len() <= CHUNK_BYTES);
            }
            // The 167 one-record blocks the conversion wrote were merged by
            // the rewrite.
            let blocks = store.tree.scan_prefix([REQUESTS]).count();
            assert!((3..20).contains(&blocks), "{blocks} request blocks");
            assert_eq!(store.index().persisted, 500);
            assert_requests(&store, 500);
            assert_eq!(
                store.meta(meta::FORMAT).unwrap().as_deref(),
                Some(&b"3"[..])
            );
        }
    }

    #[test]
    fn appended_entries_survive_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let entries = chain(300);
        {
            let store = SledStore::open(tmp.path(), &SledOptions::default()).unwrap();
            assert_eq!(store.len().unwrap(), 0);
            store
                .append(&entries[..200], &[record("r1", 1)], None)
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
