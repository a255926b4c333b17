//! The ledger's shared state and its two locks.
//!
//! `core` holds the kernel state: deciding, sealing an entry and folding it
//! in happen under it, which keeps entries in seq order. `queue` holds the
//! next group commit's work; deciders push to it inside the core lock, the
//! flusher takes only the queue lock. The order is always core → queue:
//! taking the core lock while holding the queue lock is a bug (it could
//! deadlock against a decider), and debug builds assert it.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

use super::clock::Clock;
use super::error::LedgerError;
use super::requests::{Requests, Unappended};
use super::signing::Signing;
use super::tree::DurableTree;
use crate::entry::Entry;
use crate::kernel::KernelState;
use crate::kernel::permit::Keyring;
use crate::metrics::Metrics;
use crate::store::datadir::DataDir;
use crate::store::request_records::RequestRecord;
use crate::store::{LedgerStore, SideRecord};

pub(crate) type Waiter = oneshot::Sender<Result<(), String>>;

/// Entries decided but not yet handed to the store, and who waits for them.
#[derive(Default)]
pub(crate) struct Pending {
    pub(crate) entries: Vec<Entry>,
    pub(crate) requests: Vec<RequestRecord>,
    pub(crate) checkpoint: Option<Vec<u8>>,
    /// Side records to store with the next entries (e.g. what opening
    /// found stale); never a reason to commit on their own.
    pub(crate) side: Vec<SideRecord>,
    /// Metadata values to store with the next commit (the signed tree
    /// head); they come with a waiter.
    pub(crate) meta: Vec<(&'static str, Vec<u8>)>,
    pub(crate) waiters: Vec<Waiter>,
}

impl Pending {
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.waiters.is_empty() && self.checkpoint.is_none()
    }
}

/// The next group commit's work.
#[derive(Default)]
pub(crate) struct Queue {
    pub(crate) pending: Pending,
    pub(crate) shutdown: bool,
}

impl Queue {
    /// Adds an entry (with its request record and a checkpoint, if any)
    /// and its waiter to the next batch. Returns whether the flusher must be
    /// woken: it sleeps only on an empty batch, so the first addition to an
    /// empty batch wakes it — decided before anything is added (a checkpoint
    /// alone makes the batch non-empty).
    pub(crate) fn push(
        &mut self,
        entry: Option<Entry>,
        request: Option<RequestRecord>,
        checkpoint: Option<Vec<u8>>,
        waiter: Waiter,
    ) -> bool {
        let wake = self.pending.is_empty();
        if checkpoint.is_some() {
            self.pending.checkpoint = checkpoint;
        }
        self.pending.entries.extend(entry);
        self.pending.requests.extend(request);
        self.pending.waiters.push(waiter);
        wake
    }

    /// Adds a metadata value to the next commit and a waiter for it (a
    /// later value for the same key in the same batch replaces the earlier).
    /// Returns whether the flusher must be woken.
    pub(crate) fn push_meta(&mut self, key: &'static str, value: Vec<u8>, waiter: Waiter) -> bool {
        let wake = self.pending.is_empty();
        self.pending.meta.retain(|(k, _)| *k != key);
        self.pending.meta.push((key, value));
        self.pending.waiters.push(waiter);
        wake
    }
}

/// What the core lock guards.
pub(crate) struct Core {
    pub(crate) state: KernelState,
    pub(crate) last_checkpoint_len: u64,
    /// Request ids decided but not yet appended to the store: for
    /// idempotent retries that arrive before their record is stored.
    pub(crate) unappended: Unappended,
}

/// Everything a ledger handle shares.
pub(crate) struct Inner {
    /// Declared (so dropped) before `datadir`: the store is closed before
    /// the data dir's lock is released. Never handed out as an `Arc`.
    pub(crate) store: Arc<dyn LedgerStore>,
    pub(crate) datadir: Option<DataDir>,
    pub(crate) core: Mutex<Core>,
    pub(crate) queue: Mutex<Queue>,
    /// Signals the flusher that `queue` has work (or shutdown).
    pub(crate) work: Condvar,
    /// The request index (its own lock, after core's).
    pub(crate) requests: Requests,
    /// The Merkle tree: the flusher's writer and the published head.
    pub(crate) tree: DurableTree,
    /// Who signs checkpoints, and what was signed (when a key is configured).
    pub(crate) signing: Option<Signing>,
    /// Entries handed to the store (appended, maybe not yet durable).
    pub(crate) appended_len: AtomicU64,
    pub(crate) durable_len: AtomicU64,
    pub(crate) durable_head_file_len: AtomicU64,
    pub(crate) poisoned: Mutex<Option<String>>,
    pub(crate) closed: AtomicBool,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) keyring: Keyring,
    pub(crate) jurisdiction: String,
    pub(crate) external_tools: BTreeSet<String>,
    pub(crate) checkpoint_every: u64,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) flusher: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

thread_local! {
    /// Queue locks this thread holds (debug builds check the lock order).
    static QUEUE_LOCKS_HELD: Cell<u32> = const { Cell::new(0) };
}

/// The queue lock, counted per thread so that [`Inner::lock_core`] can
/// assert the lock order.
pub(crate) struct QueueGuard<'a>(Option<MutexGuard<'a, Queue>>);

impl<'a> QueueGuard<'a> {
    fn new(guard: MutexGuard<'a, Queue>) -> QueueGuard<'a> {
        QUEUE_LOCKS_HELD.with(|n| n.set(n.get() + 1));
        QueueGuard(Some(guard))
    }

    fn take(&mut self) -> MutexGuard<'a, Queue> {
        QUEUE_LOCKS_HELD.with(|n| n.set(n.get() - 1));
        self.0.take().expect("a live guard")
    }

    /// Waits on `cv`, releasing the lock meanwhile.
    pub(crate) fn wait(mut self, cv: &Condvar) -> QueueGuard<'a> {
        let guard = self.take();
        QueueGuard::new(cv.wait(guard).unwrap_or_else(|p| p.into_inner()))
    }

    /// Waits on `cv` at most `timeout`, releasing the lock meanwhile.
    pub(crate) fn wait_timeout(mut self, cv: &Condvar, timeout: Duration) -> QueueGuard<'a> {
        let guard = self.take();
        QueueGuard::new(
            cv.wait_timeout(guard, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0,
        )
    }
}

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        if self.0.is_some() {
            QUEUE_LOCKS_HELD.with(|n| n.set(n.get() - 1));
        }
    }
}

impl std::ops::Deref for QueueGuard<'_> {
    type Target = Queue;
    fn deref(&self) -> &Queue {
        self.0.as_ref().expect("a live guard")
    }
}

impl std::ops::DerefMut for QueueGuard<'_> {
    fn deref_mut(&mut self) -> &mut Queue {
        self.0.as_mut().expect("a live guard")
    }
}

/// Debug builds: panics when this thread holds the queue lock.
fn assert_lock_order() {
    debug_assert_eq!(
        QUEUE_LOCKS_HELD.with(Cell::get),
        0,
        "lock order: the core lock is never taken while holding the queue lock"
    );
}

impl Inner {
    /// The core lock. Never taken while this thread holds the queue lock.
    pub(crate) fn lock_core(&self) -> MutexGuard<'_, Core> {
        assert_lock_order();
        // A panic while holding the lock would be a bug; the state is then
        // still consistent (entries are applied after they are appended).
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The queue lock.
    pub(crate) fn lock_queue(&self) -> QueueGuard<'_> {
        QueueGuard::new(self.queue.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Fails when the ledger is closed or a commit failed.
    pub(crate) fn check_open(&self) -> Result<(), LedgerError> {
        if let Some(reason) = self
            .poisoned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Err(LedgerError::Unavailable(reason.clone()));
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(LedgerError::Unavailable("the ledger is closed".into()));
        }
        Ok(())
    }

    /// Closes the ledger for good after a failed commit.
    pub(crate) fn poison(&self, reason: String) {
        tracing::error!(%reason, "ledger closed: no further entries will be accepted until restart");
        let mut p = self.poisoned.lock().unwrap_or_else(|p| p.into_inner());
        if p.is_none() {
            *p = Some(reason);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.shutdown = true;
        }
        self.work.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::GENESIS_HASH;

    #[test]
    fn the_first_addition_to_an_empty_batch_wakes_the_flusher_even_with_a_checkpoint() {
        // Regression: an entry that brings a checkpoint to an empty batch
        // once computed "was empty" after adding the checkpoint, did not
        // wake the flusher, and commits stopped.
        let entries = crate::entry::test_chain(2, 0, GENESIS_HASH);
        let mut queue = Queue::default();
        let (tx, _rx) = oneshot::channel();
        assert!(queue.push(Some(entries[0].clone()), None, Some(b"cp".to_vec()), tx));
        let (tx, _rx) = oneshot::channel();
        assert!(!queue.push(Some(entries[1].clone()), None, None, tx));
        assert_eq!(queue.pending.entries.len(), 2);
        assert!(queue.pending.checkpoint.is_some());
    }

    #[test]
    #[cfg(debug_assertions)]
    fn taking_the_core_lock_under_the_queue_lock_is_caught() {
        let lock = Mutex::new(Queue::default());
        let guard = QueueGuard::new(lock.lock().unwrap());
        assert_eq!(QUEUE_LOCKS_HELD.with(Cell::get), 1);
        assert!(std::panic::catch_unwind(assert_lock_order).is_err());
        drop(guard);
        assert_eq!(QUEUE_LOCKS_HELD.with(Cell::get), 0);
        assert_lock_order();
    }
}
