//! [`LedgerStore`] on sled, with the write-ahead log as the commit point.
//!
//! An append becomes one set of sled writes (see `keys` for the layout):
//! its entries packed into chunks (`chunk`), its side records and metadata
//! values. It is staged in the write-ahead log ([`super::wal`]) and queued
//! for the background applier (`applier`), whose overlay serves reads until
//! the writes are in sled; [`SledStore::commit`] is one write + `fdatasync`
//! of the log — the commit point. sled itself is made durable in the
//! background about once a second (`sled_sync`), after which the log
//! generations it covers are deleted; opening applies whatever the log
//! still holds.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sled::IVec;

use super::applier::Applier;
use super::keys::{CHUNK, chunk_key, key_seq, meta_key, side_key};
use super::sled_cache::{SCAN_NUDGES, nudge};
use super::sled_errors::{contain, corrupt_database, engine};
use super::sled_sync::{SledSync, StopSignal};
use super::wal::Wal;
use super::{Append, Family, LedgerStore, Scan, SideScan, StoreError, chunk};

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

/// The sled-backed store.
pub struct SledStore {
    tree: sled::Tree,
    path: PathBuf,
    sync: Arc<SledSync>,
    applier: Arc<Applier>,
    wal: Arc<Wal>,
    syncer: Option<(std::thread::JoinHandle<()>, StopSignal)>,
    applier_thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .finish()
    }
}

/// Where the write-ahead log of the sled database at `path` lives.
pub fn wal_dir(path: &Path) -> PathBuf {
    path.with_extension("wal")
}

/// Opens sled at `path` (and its tree): a corrupt database is an error,
/// not a panic, and sled's own file lock, held a moment by an instance this
/// process just dropped, is waited for.
pub(super) fn open_sled(
    path: &Path,
    config: sled::Config,
) -> Result<(sled::Db, sled::Tree), StoreError> {
    // Another process is kept out by the data dir's LOCK file, so sled's
    // own file lock can only be held by an instance this process just
    // dropped, whose last IO-thread job may still hold it a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    let opened = loop {
        let attempt = contain(|| {
            config
                .open()
                .and_then(|db| Ok((db.open_tree("ledger")?, db)))
        })
        .map_err(|panic| corrupt_database(path, &format!("sled panicked: {panic}")))?;
        match attempt {
            // sled reports it as an `Other` error with this text.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => break other,
        }
    };
    match opened {
        Ok((tree, db)) => Ok((db, tree)),
        Err(e @ (sled::Error::Corruption { .. } | sled::Error::Unsupported(_))) => {
            Err(corrupt_database(path, &e.to_string()))
        }
        Err(sled::Error::Io(e))
            if e.kind() == std::io::ErrorKind::UnexpectedEof
                || e.kind() == std::io::ErrorKind::InvalidData =>
        {
            Err(corrupt_database(path, &e.to_string()))
        }
        Err(e) => Err(engine(e)),
    }
}

impl SledStore {
    /// Opens (or creates) the sled database at `path`, and applies what its
    /// write-ahead log still holds.
    pub fn open(path: &Path, options: &SledOptions) -> Result<SledStore, StoreError> {
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(options.cache_capacity)
            // Our commits flush explicitly; sled's timer would only add I/O.
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput);
        let (db, tree) = open_sled(path, config)?;
        super::fs::sync_dir(path)?;

        // Batches committed to the write-ahead log but maybe not to sled.
        let (wal, rotator, batches) = Wal::open(&wal_dir(path))?;
        let replayed = !batches.is_empty();
        for kvs in batches {
            let mut batch = sled::Batch::default();
            for (k, v) in kvs {
                batch.insert(k, v);
            }
            tree.apply_batch(batch).map_err(engine)?;
        }
        let wal = Arc::new(wal);
        let applier = Arc::new(Applier::default());
        let sync = Arc::new(SledSync::new(
            db,
            tree.clone(),
            path.to_owned(),
            wal.clone(),
            rotator,
            applier.clone(),
        )?);
        if replayed {
            // The replayed batches must be durable in sled before the log
            // generations holding them go.
            sync.sync_sled()?;
        }
        sync.remove_older_generations()?;
        // Fault injection for the crash tests: die right after an open
        // (which may have replayed and dropped log generations).
        if std::env::var_os(ABORT_AFTER_OPEN).is_some() {
            tracing::error!("{ABORT_AFTER_OPEN} is set: aborting right after opening the store");
            std::process::abort();
        }

        let stop: StopSignal = Arc::new((Mutex::new(false), Condvar::new()));
        let syncer = {
            let (sync, stop) = (sync.clone(), stop.clone());
            std::thread::Builder::new()
                .name("kernels-sled-sync".into())
                .spawn(move || sync.run(&stop))?
        };
        let applier_thread = {
            let (applier, tree) = (applier.clone(), tree.clone());
            std::thread::Builder::new()
                .name("kernels-sled-apply".into())
                .spawn(move || applier.run(&tree))?
        };
        Ok(SledStore {
            tree,
            path: path.to_owned(),
            sync,
            applier,
            wal,
            syncer: Some((syncer, stop)),
            applier_thread: Some(applier_thread),
        })
    }

    /// The sled tree (for the migrations).
    pub(super) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// Makes what is in sled durable (for the migrations).
    pub(super) fn sync_sled(&self) -> Result<(), StoreError> {
        self.sync.sync_sled()
    }

    /// Waits until every write appended so far is in sled.
    #[cfg(test)]
    pub(super) fn wait_applied(&self) -> Result<(), StoreError> {
        self.applier.wait_applied(&self.tree, self.applier.queued())
    }

    /// The newest chunk starting at or before `seq`, from the overlay or sled.
    fn chunk_at_or_before(&self, seq: u64) -> Result<Option<(u64, IVec)>, StoreError> {
        self.applier.newest_at_or_before(&self.tree, CHUNK, seq)
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        if let Some((handle, stop)) = self.syncer.take() {
            *stop.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
            stop.1.notify_all();
            let _ = handle.join();
        }
        self.applier.stop();
        if let Some(handle) = self.applier_thread.take() {
            let _ = handle.join();
        }
        if let Err(e) = self.sync.make_sled_durable() {
            tracing::error!(error = %e, "final sled sync failed; the write-ahead log is kept");
        }
    }
}

/// Merges sled's `(key, value)` items with the overlay's newer ones (which
/// win on equal keys), in key order.
fn merge_newest<'a>(
    stored: impl Iterator<Item = Result<(u64, IVec), StoreError>> + Send + 'a,
    queued: Vec<(u64, IVec)>,
) -> impl Iterator<Item = Result<(u64, IVec), StoreError>> + Send + 'a {
    let mut stored = stored.peekable();
    let mut queued = queued.into_iter().peekable();
    std::iter::from_fn(move || {
        let next_stored = match stored.peek() {
            Some(Err(_)) => return stored.next(),
            Some(Ok((k, _))) => Some(*k),
            None => None,
        };
        match (next_stored, queued.peek().map(|(k, _)| *k)) {
            (Some(s), Some(q)) if s < q => stored.next(),
            (Some(s), Some(q)) => {
                if s == q {
                    stored.next();
                }
                queued.next().map(Ok)
            }
            (Some(_), None) => stored.next(),
            (None, _) => queued.next().map(Ok),
        }
    })
}

impl LedgerStore for SledStore {
    fn append(&self, append: Append<'_>) -> Result<(), StoreError> {
        let mut kvs: Vec<(IVec, IVec)> =
            Vec::with_capacity(2 + append.side.len() + append.meta.len());
        for (first, chunk) in chunk::encode(append.entries) {
            kvs.push((IVec::from(&chunk_key(first)[..]), IVec::from(chunk)));
        }
        for (family, key, value) in append.side {
            kvs.push((IVec::from(&side_key(family, key)[..]), value.into()));
        }
        for (name, value) in append.meta {
            kvs.push((meta_key(name).into(), value.into()));
        }
        self.applier.queue_and_stage(&self.wal, kvs)
    }

    fn commit(&self) -> Result<(), StoreError> {
        // THE COMMIT POINT: when this returns Ok, every batch appended before
        // is in the fdatasync'ed write-ahead log.
        self.wal.commit()
    }

    fn scan(&self, from: u64, to: u64) -> Scan<'_> {
        if from >= to {
            return Box::new(std::iter::empty());
        }
        // Start at the chunk holding `from` (the last chunk starting at or before it).
        let start = match self.chunk_at_or_before(from) {
            Ok(Some((first, _))) => first,
            Ok(None) => from,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        // The chunks not yet in sled come from the overlay (a chunk leaves
        // it only once it is in sled, so nothing falls between the two).
        let queued = self.applier.queued_range(CHUNK, start, to);
        let tree = self.tree.clone();
        let stored = self
            .tree
            .range(chunk_key(start)..chunk_key(to))
            .map(move |item| {
                let (k, v) = item.map_err(engine)?;
                nudge(&tree, &k, SCAN_NUDGES);
                Ok((key_seq(&k)?, v))
            });
        Box::new(
            merge_newest(stored, queued).flat_map(move |item| match item {
                Err(e) => vec![Err(e)],
                Ok((first, chunk)) => chunk::items_within(first, &chunk, from, to),
            }),
        )
    }

    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let Some((first, chunk)) = self.chunk_at_or_before(seq)? else {
            return Ok(None);
        };
        Ok(chunk::records(first, &chunk)?
            .into_iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, bytes)| bytes.to_vec()))
    }

    fn len(&self) -> Result<u64, StoreError> {
        Ok(match self.chunk_at_or_before(u64::MAX)? {
            Some((first, c)) => first + chunk::count(&c),
            None => 0,
        })
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .applier
            .value(&self.tree, &meta_key(key))?
            .map(|v| v.to_vec()))
    }

    fn side_at_or_before(
        &self,
        family: Family,
        key: u64,
    ) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        Ok(self
            .applier
            .newest_at_or_before(&self.tree, family.tag(), key)?
            .map(|(k, v)| (k, v.to_vec())))
    }

    fn side_range(&self, family: Family, from: u64, to: u64) -> SideScan<'_> {
        if from >= to {
            return Box::new(std::iter::empty());
        }
        let queued = self.applier.queued_range(family.tag(), from, to);
        let tree = self.tree.clone();
        let stored = self
            .tree
            .range(side_key(family, from)..side_key(family, to))
            .map(move |item| {
                let (k, v) = item.map_err(engine)?;
                nudge(&tree, &k, SCAN_NUDGES);
                Ok((key_seq(&k)?, v))
            });
        Box::new(merge_newest(stored, queued).map(|item| item.map(|(k, v)| (k, v.to_vec()))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Entry, GENESIS_HASH};
    use crate::store::meta;

    fn chain(n: u64) -> Vec<Entry> {
        crate::entry::test_chain(n, 0, GENESIS_HASH)
    }

    fn side(key: u64) -> (Family, u64, Vec<u8>) {
        (Family::REQUESTS, key, format!("side-{key}").into_bytes())
    }

    fn side_keys(store: &SledStore, from: u64, to: u64) -> Vec<u64> {
        store
            .side_range(Family::REQUESTS, from, to)
            .map(|r| r.unwrap().0)
            .collect()
    }

    #[test]
    fn side_records_are_read_before_and_after_they_reach_sled_and_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let entries = chain(900);
        let check = |store: &SledStore| {
            assert_eq!(store.len().unwrap(), 900);
            assert_eq!(
                side_keys(store, 0, 1000),
                (0..900).step_by(3).collect::<Vec<_>>()
            );
            assert_eq!(side_keys(store, 10, 20), vec![12, 15, 18]);
            assert_eq!(
                store.side_at_or_before(Family::REQUESTS, 100).unwrap(),
                Some((99, b"side-99".to_vec()))
            );
            assert_eq!(
                store
                    .side_at_or_before(Family::REQUEST_FINGERPRINTS, 100)
                    .unwrap(),
                None
            );
        };
        {
            let store = SledStore::open(tmp.path(), &SledOptions::default()).unwrap();
            for part in entries.chunks(37) {
                let records = part
                    .iter()
                    .filter(|e| e.ledger_seq % 3 == 0)
                    .map(|e| side(e.ledger_seq))
                    .collect();
                store
                    .append(Append {
                        entries: part,
                        side: records,
                        meta: vec![],
                    })
                    .unwrap();
            }
            store.commit().unwrap();
            // From the overlay and sled, mixed…
            check(&store);
            store.wait_applied().unwrap();
            assert!(store.applier.overlay_is_empty());
            // …from sled alone…
            check(&store);
            // …and a newer value in the overlay wins over sled's.
            store
                .append(Append {
                    side: vec![(Family::REQUESTS, 12, b"newer".to_vec())],
                    ..Append::default()
                })
                .unwrap();
            let got: Vec<_> = store
                .side_range(Family::REQUESTS, 12, 13)
                .map(|r| r.unwrap())
                .collect();
            assert_eq!(got, vec![(12, b"newer".to_vec())]);
            store.commit().unwrap();
        }
        let store = SledStore::open(tmp.path(), &SledOptions::default()).unwrap();
        assert_eq!(
            store.side_at_or_before(Family::REQUESTS, 12).unwrap(),
            Some((12, b"newer".to_vec()))
        );
    }

    #[test]
    fn appended_entries_survive_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let entries = chain(300);
        {
            let store = SledStore::open(tmp.path(), &SledOptions::default()).unwrap();
            assert_eq!(store.len().unwrap(), 0);
            store
                .append(Append {
                    entries: &entries[..200],
                    side: vec![side(1)],
                    meta: vec![],
                })
                .unwrap();
            store
                .append(Append {
                    entries: &entries[200..],
                    side: vec![],
                    meta: vec![(meta::CHECKPOINT, b"cp".to_vec())],
                })
                .unwrap();
            store.commit().unwrap();
        }
        let store = SledStore::open(tmp.path(), &SledOptions::default()).unwrap();
        assert_eq!(store.len().unwrap(), 300);
        let back: Vec<Entry> = super::super::read_entries(&store, 100, 110)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, entries[100..110]);
        assert_eq!(side_keys(&store, 0, 10), vec![1]);
        assert_eq!(
            store.meta(meta::CHECKPOINT).unwrap().as_deref(),
            Some(&b"cp"[..])
        );
    }
}
