//! The background applier: writes that are committed in the write-ahead log
//! go into sled later, in large batches, and are read from an overlay until
//! then.
//!
//! Every sled write costs microseconds and wakes sled's IO threads, so the
//! commit path does not write sled at all: an append is staged in the
//! write-ahead log (durable at the next commit) and queued here, and a
//! background thread writes the queue into sled, lingering up to
//! [`APPLY_LINGER`] for a batch to build up, in steps of [`APPLY_STEP`]
//! writes (sled's `apply_batch` holds a lock that stalls every read while it
//! runs). Until a key is in sled, reads take it from the [`Overlay`]; a key
//! leaves the overlay only with an [`InSled`] receipt of the sled write that
//! stored its latest value. If sled refuses a write, the applier stops,
//! appends fail (the ledger closes) and the write-ahead log keeps everything
//! for the next open.
//!
//! Locks: `staging` (taken by appends and by a log rotation, so that a
//! rotation falls between two batches) before `queue`, never the other way.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sled::IVec;

use super::StoreError;
use super::keys::{key_seq, seq_key};
use super::sled_cache::{WRITE_NUDGES, nudge};
use super::sled_errors::engine;
use super::wal::Wal;

/// The applier waits this long for a batch to build up.
const APPLY_LINGER: Duration = Duration::from_millis(20);
/// The applier writes at once when this many writes wait.
const APPLY_BATCH: usize = 4096;
/// Writes per sled batch.
const APPLY_STEP: usize = 256;
/// Appends wait for the applier when this many writes are not yet applied.
const APPLY_BACKLOG: usize = 256 * 1024;

/// Writes staged in the write-ahead log and not yet applied to sled.
#[derive(Default)]
pub(super) struct Applier {
    /// Held while a batch is staged in the log and queued here, and while
    /// the log rotates: a rotation falls between two batches. Counts the
    /// writes ever queued.
    staging: Mutex<Staging>,
    queue: Mutex<ApplyQueue>,
    /// Signals the applier (new work) and waiters (progress).
    cv: Condvar,
}

#[derive(Default)]
struct Staging {
    /// Writes ever queued.
    queued: u64,
}

#[derive(Default)]
struct ApplyQueue {
    /// Writes not yet handed to sled, in order.
    pending: Vec<(IVec, IVec)>,
    overlay: Overlay,
    /// Writes put in sled so far.
    applied: u64,
    /// Why sled refused a write: the applier stops, appends fail (the
    /// ledger closes), and the write-ahead log keeps everything for replay.
    failed: Option<String>,
    stop: bool,
}

/// The latest value of every key written but maybe not yet in sled.
#[derive(Default)]
pub(super) struct Overlay(BTreeMap<IVec, IVec>);

/// A batch that sled has stored: only [`write_to_sled`] makes one, and only
/// with one can a key leave the [`Overlay`].
pub(super) struct InSled(Vec<(IVec, IVec)>);

/// Writes `batch` into sled; the receipt on success.
pub(super) fn write_to_sled(
    tree: &sled::Tree,
    batch: Vec<(IVec, IVec)>,
) -> Result<InSled, (Vec<(IVec, IVec)>, sled::Error)> {
    let mut sled_batch = sled::Batch::default();
    for (k, v) in &batch {
        sled_batch.insert(k.clone(), v.clone());
    }
    match tree.apply_batch(sled_batch) {
        Ok(()) => Ok(InSled(batch)),
        Err(e) => Err((batch, e)),
    }
}

impl Overlay {
    fn insert(&mut self, key: IVec, value: IVec) {
        self.0.insert(key, value);
    }

    /// Drops the keys whose latest value `written` put in sled (a key
    /// written again since stays, with its newer value).
    pub(super) fn forget(&mut self, written: &InSled) {
        for (k, v) in &written.0 {
            if self.0.get(k) == Some(v) {
                self.0.remove(k);
            }
        }
    }

    fn get(&self, key: &[u8]) -> Option<&IVec> {
        self.0.get(key)
    }

    /// The entries with `low <= key < high` (`high` inclusive when `inclusive`).
    fn range<'a>(
        &'a self,
        low: &'a [u8],
        high: &'a [u8],
        inclusive: bool,
    ) -> impl DoubleEndedIterator<Item = (&'a IVec, &'a IVec)> + 'a {
        let end = if inclusive {
            Bound::Included(high)
        } else {
            Bound::Excluded(high)
        };
        self.0.range::<[u8], _>((Bound::Included(low), end))
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn relock<T>(r: Result<T, std::sync::PoisonError<T>>) -> T {
    r.unwrap_or_else(|p| p.into_inner())
}

impl Applier {
    fn queue(&self) -> MutexGuard<'_, ApplyQueue> {
        relock(self.queue.lock())
    }

    /// Queues a batch for the applier and stages it in the write-ahead log,
    /// atomically with respect to a rotation.
    pub(super) fn queue_and_stage(
        &self,
        wal: &Wal,
        kvs: Vec<(IVec, IVec)>,
    ) -> Result<(), StoreError> {
        let mut staging = relock(self.staging.lock());
        if let Some(e) = &self.queue().failed {
            return Err(StoreError::Engine(e.clone()));
        }
        let frame: Vec<(&[u8], &[u8])> = kvs.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        wal.stage(&frame);
        drop(frame);
        let mut q = self.queue();
        // Back-pressure: never let the overlay grow without bound.
        while q.pending.len() >= APPLY_BACKLOG && !q.stop && q.failed.is_none() {
            q = relock(self.cv.wait(q));
        }
        let was_empty = q.pending.is_empty();
        staging.queued += kvs.len() as u64;
        for (k, v) in kvs {
            q.overlay.insert(k.clone(), v.clone());
            q.pending.push((k, v));
        }
        drop(q);
        drop(staging);
        if was_empty {
            self.cv.notify_all();
        }
        Ok(())
    }

    /// Runs `rotate` between two staged batches; returns its result and the
    /// number of writes queued before it.
    pub(super) fn between_batches<R>(&self, rotate: impl FnOnce() -> R) -> (R, u64) {
        let staging = relock(self.staging.lock());
        (rotate(), staging.queued)
    }

    /// Number of writes ever queued.
    #[cfg(test)]
    pub(super) fn queued(&self) -> u64 {
        relock(self.staging.lock()).queued
    }

    /// The applier thread: puts queued writes into sled until stopped.
    pub(super) fn run(&self, tree: &sled::Tree) {
        // Whether the last step left work queued (then no lingering).
        let mut behind = false;
        loop {
            let batch = {
                let mut q = self.queue();
                while (q.pending.is_empty() || q.failed.is_some()) && !q.stop {
                    q = relock(self.cv.wait(q));
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
                    q = relock(self.cv.wait_timeout(q, deadline - now)).0;
                }
                let n = q.pending.len().min(APPLY_STEP);
                behind = q.pending.len() > n;
                q.pending.drain(..n).collect::<Vec<_>>()
            };
            if let Err(e) = self.apply(tree, batch) {
                // The writes stay in the overlay and in the write-ahead log;
                // appends now fail, which closes the ledger.
                tracing::error!(error = %e, "applying writes to sled failed; the ledger closes, the write-ahead log keeps every committed write");
            }
        }
    }

    /// Writes `batch` into sled and drops from the overlay every key whose
    /// latest value is now in sled. On error the batch is queued again and
    /// the failure recorded.
    fn apply(&self, tree: &sled::Tree, batch: Vec<(IVec, IVec)>) -> Result<(), StoreError> {
        let written = write_to_sled(tree, batch);
        if let Ok(in_sled) = &written {
            // Written pages enter sled's cache like read ones: keep its
            // accounting current so that they are evicted (see `sled_cache`).
            for (k, _) in &in_sled.0 {
                nudge(tree, k, WRITE_NUDGES);
            }
        }
        let mut q = self.queue();
        let result = match written {
            Ok(in_sled) => {
                q.overlay.forget(&in_sled);
                q.applied += in_sled.0.len() as u64;
                Ok(())
            }
            Err((mut retry, e)) => {
                retry.append(&mut q.pending);
                q.pending = retry;
                let e = format!("writing to sled failed: {e}");
                q.failed = Some(e.clone());
                Err(StoreError::Engine(e))
            }
        };
        drop(q);
        self.cv.notify_all();
        result
    }

    /// Waits until the applier has put `count` writes in sled (once stopped,
    /// applies the rest here).
    pub(super) fn wait_applied(&self, tree: &sled::Tree, count: u64) -> Result<(), StoreError> {
        let mut q = self.queue();
        while q.applied < count {
            if let Some(e) = &q.failed {
                return Err(StoreError::Engine(e.clone()));
            }
            if q.stop && !q.pending.is_empty() {
                // Shutting down (the applier has stopped): apply the rest here.
                let rest = std::mem::take(&mut q.pending);
                drop(q);
                self.apply(tree, rest)?;
                q = self.queue();
                continue;
            }
            q = relock(self.cv.wait_timeout(q, Duration::from_millis(100))).0;
        }
        Ok(())
    }

    /// Tells the applier thread to stop (after the step it is on).
    pub(super) fn stop(&self) {
        self.queue().stop = true;
        self.cv.notify_all();
    }

    /// The value of the last `prefix` key at or before `seq`, from the
    /// overlay or sled.
    pub(super) fn newest_at_or_before(
        &self,
        tree: &sled::Tree,
        prefix: u8,
        seq: u64,
    ) -> Result<Option<(u64, IVec)>, StoreError> {
        let (low, high) = (seq_key(prefix, 0), seq_key(prefix, seq));
        // The overlay first: a key leaves it only once it is in sled.
        let queued = self
            .queue()
            .overlay
            .range(&low, &high, true)
            .next_back()
            .map(|(k, v)| (k.clone(), v.clone()));
        let stored = tree
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

    /// The overlay's `prefix` keys with `from <= seq < to`, in order.
    pub(super) fn queued_range(&self, prefix: u8, from: u64, to: u64) -> Vec<(u64, IVec)> {
        let (low, high) = (seq_key(prefix, from), seq_key(prefix, to));
        self.queue()
            .overlay
            .range(&low, &high, false)
            .filter_map(|(k, v)| key_seq(k).ok().map(|s| (s, v.clone())))
            .collect()
    }

    /// The latest value of `key`, from the overlay or sled.
    pub(super) fn value(&self, tree: &sled::Tree, key: &[u8]) -> Result<Option<IVec>, StoreError> {
        let queued = self.queue().overlay.get(key).cloned();
        match queued {
            Some(v) => Ok(Some(v)),
            None => tree.get(key).map_err(engine),
        }
    }

    /// Whether every queued write is in sled.
    #[cfg(test)]
    pub(super) fn overlay_is_empty(&self) -> bool {
        self.queue().overlay.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_leaves_the_overlay_only_with_its_latest_value_in_sled() {
        let tmp = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(tmp.path()).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let mut overlay = Overlay::default();
        overlay.insert(IVec::from(&b"k"[..]), IVec::from(&b"1"[..]));
        let first = write_to_sled(&tree, vec![(IVec::from(&b"k"[..]), IVec::from(&b"1"[..]))])
            .map_err(|(_, e)| e)
            .unwrap();
        // Written again before the first write's receipt came back.
        overlay.insert(IVec::from(&b"k"[..]), IVec::from(&b"2"[..]));
        overlay.forget(&first);
        assert_eq!(overlay.get(b"k").map(|v| v.to_vec()), Some(b"2".to_vec()));
        let second = write_to_sled(&tree, vec![(IVec::from(&b"k"[..]), IVec::from(&b"2"[..]))])
            .map_err(|(_, e)| e)
            .unwrap();
        overlay.forget(&second);
        assert!(overlay.is_empty());
        assert_eq!(tree.get(b"k").unwrap().unwrap().to_vec(), b"2".to_vec());
    }
}
