//! Making sled durable, and trimming the write-ahead log behind it.
//!
//! sled makes data durable only by flushing its whole log, through
//! `sync_file_range`, which flushes neither the disk's write cache nor
//! metadata (sled issues #1351, #1452), and it never fsyncs blob files. So
//! about once a second ([`SLED_SYNC_INTERVAL`]) a background thread rotates
//! the write-ahead log, waits until the applier has put everything queued
//! before the rotation into sled, and makes sled durable: sled's `flush`,
//! then `fdatasync` of sled's log file and `fsync` of any new blob file.
//! Only then are the log generations it covers deleted.

use std::collections::HashSet;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::StoreError;
use super::applier::Applier;
use super::fs::sync_dir;
use super::sled_errors::engine;
use super::wal::{Wal, WalRotator};

/// How often sled is made durable (and the write-ahead log trimmed).
pub(super) const SLED_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// What making sled durable needs.
pub(super) struct SledSync {
    pub(super) db: sled::Db,
    pub(super) tree: sled::Tree,
    /// The sled database directory.
    pub(super) path: PathBuf,
    /// sled's log file, fdatasync'ed after each flush.
    pub(super) log_file: File,
    synced_blobs: Mutex<BlobSync>,
    pub(super) wal: Arc<Wal>,
    pub(super) applier: Arc<Applier>,
    /// The log's only rotator (taken by the sync thread and the final sync).
    rotator: Mutex<WalRotator>,
}

/// Which blob files are known to be synced, and the blob dir's mtime then.
#[derive(Default)]
struct BlobSync {
    synced: HashSet<std::ffi::OsString>,
    dir_mtime: Option<std::time::SystemTime>,
}

/// A stop signal for the sync thread.
pub(super) type StopSignal = Arc<(Mutex<bool>, Condvar)>;

impl SledSync {
    /// The syncer of a just opened database.
    pub(super) fn new(
        db: sled::Db,
        tree: sled::Tree,
        path: PathBuf,
        wal: Arc<Wal>,
        rotator: WalRotator,
        applier: Arc<Applier>,
    ) -> Result<SledSync, StoreError> {
        let log_file = File::open(path.join("db"))?;
        Ok(SledSync {
            db,
            tree,
            path,
            log_file,
            synced_blobs: Mutex::new(BlobSync::default()),
            wal,
            applier,
            rotator: Mutex::new(rotator),
        })
    }

    /// Deletes every log generation older than the current one (their
    /// batches were made durable in sled by the caller).
    pub(super) fn remove_older_generations(&self) -> Result<(), StoreError> {
        self.rotator
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove_older_generations(&self.wal)
    }

    /// Makes everything applied to sled so far durable in sled, then drops
    /// the write-ahead log generations that are no longer needed.
    pub(super) fn make_sled_durable(&self) -> Result<(), StoreError> {
        let mut rotator = self.rotator.lock().unwrap_or_else(|p| p.into_inner());
        // The new log file is created before the applier's staging lock is
        // taken: appends (and so commits) wait only for the swap.
        let Some(next) = rotator.prepare_rotation(&self.wal)? else {
            return Ok(());
        };
        let (closed, queued) = self
            .applier
            .between_batches(|| rotator.rotate(&self.wal, next));
        // Every batch of generation `closed` was queued before the rotation,
        // so once the applier reaches `queued` this flush covers it.
        self.applier.wait_applied(&self.tree, queued)?;
        self.sync_sled()?;
        rotator.remove_through(closed)
    }

    /// Makes everything applied to sled so far durable: sled's flush, then
    /// `fdatasync` of its log and `fsync` of new blob files.
    pub(super) fn sync_sled(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(engine)?;
        self.log_file.sync_data()?;
        self.sync_blobs()
    }

    /// fsyncs blob files sled wrote since the last call (sled never does).
    /// Values stay far below sled's blob threshold, so this is normally a
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
            sync_dir(&dir)?;
        }
        // A coarse filesystem clock could give a blob created a moment from
        // now this same mtime: only trust an mtime that is not recent.
        let settled = mtime
            .elapsed()
            .is_ok_and(|age| age > Duration::from_millis(100));
        state.dir_mtime = settled.then_some(mtime);
        Ok(())
    }

    /// The sync thread: makes sled durable every [`SLED_SYNC_INTERVAL`]
    /// until stopped.
    pub(super) fn run(&self, stop: &(Mutex<bool>, Condvar)) {
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
            if let Err(e) = self.make_sled_durable() {
                // The write-ahead log keeps everything: retry next time.
                tracing::error!(error = %e, "making sled durable failed; the write-ahead log is kept");
            }
            stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
        }
    }
}
