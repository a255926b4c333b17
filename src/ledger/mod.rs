//! The durable kernel: the pure kernel's state, a store, and group commit.
//!
//! A [`Ledger`] owns the data dir. Every decision and operational event goes
//! the same way: under one short lock, the kernel decides (or builds the
//! event), the entry is sealed onto the chain, appended to the store (not yet
//! durable) and folded into the state; then, outside the lock, the caller
//! waits until a commit covers its entry ([`commit`]). Concurrent callers
//! share commits: one flush + fdatasync makes a whole batch durable. Nobody
//! gets a receipt for an entry that is not on stable storage, and a failed
//! commit fails every caller of its batch and closes the ledger (fail
//! closed) until the service is restarted and the stored chain re-verified.
//!
//! * [`open`] — opening a data dir: checks, checkpoint, verification, replay
//! * [`commit`] — the group-commit flusher
//! * [`outcome`] — recording a `kernel.outcome` once per request

mod commit;
pub mod open;
pub mod outcome;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::chain::{ChainError, VerifyReport};
use crate::entry::{Entry, EntryBody, GENESIS_HASH};
use crate::kernel::permit::Keyring;
use crate::kernel::state::{Counters, HaltMark, RotationMark};
use crate::kernel::{DecideContext, EventError, KernelState, Policy, RawRequest, Receipt, Refusal};
use crate::metrics::{DecisionLabels, Metrics};
use crate::store::datadir::DataDir;
use crate::store::record::{self, RequestRecord};
use crate::store::{LedgerStore, StoreError};

pub use open::LedgerOptions;

/// Errors of the durable ledger, each with how it is answered.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The kernel refused to decide (halted: HTTP 409; not initialised: 503).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// An operational event is not possible now (HTTP 409 / 400).
    #[error(transparent)]
    Event(#[from] EventError),
    /// A request id was reused with different content (HTTP 409).
    #[error("request_id {0:?} was already used for a different request")]
    Conflict(String),
    /// A commit failed or the ledger is closed: nothing more is accepted
    /// until restart (HTTP 503).
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
    /// The stored chain is broken at `seq` (the service refuses to start).
    #[error("stored ledger is corrupt at entry {seq}: {message}")]
    Corrupt {
        /// Seq of the first bad entry found.
        seq: u64,
        /// What is wrong.
        message: String,
    },
    /// The data dir belongs to another kernel, or the configuration does not fit it.
    #[error("{0}")]
    Mismatch(String),
    /// Storage failed (HTTP 500).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A source of wall-clock time; tests use a fixed or stepped clock.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// What `GET /v1/status` and `kernels info --data-dir` report.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerStatus {
    /// Kernel id.
    pub kernel_id: String,
    /// Variant.
    pub variant: String,
    /// IDLE or HALTED.
    pub state: String,
    /// Durable entries.
    pub ledger_length: u64,
    /// Hash of the last durable entry.
    pub root_hash: String,
    /// Active policy version.
    pub policy_version: u64,
    /// Hash of the active policy.
    pub policy_hash: Option<String>,
    /// Session number (1 + recoveries).
    pub session: u64,
    /// Last rotation recorded.
    pub last_rotation: Option<RotationMark>,
    /// Last halt.
    pub last_halt: Option<HaltMark>,
    /// Time of the last entry.
    pub last_entry_ts_ms: Option<u64>,
    /// Decision counters.
    pub counters: Counters,
    /// Service starts recorded.
    pub starts: u64,
}

pub(crate) type Waiter = oneshot::Sender<Result<(), String>>;

/// Entries decided but not yet handed to the store, and who waits for them.
#[derive(Default)]
pub(crate) struct Pending {
    entries: Vec<Entry>,
    requests: Vec<RequestRecord>,
    checkpoint: Option<Vec<u8>>,
    waiters: Vec<Waiter>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.waiters.is_empty() && self.checkpoint.is_none()
    }
}

pub(crate) struct Core {
    state: KernelState,
    last_checkpoint_len: u64,
    /// Request ids decided but maybe not yet in the store: for idempotent
    /// retries that arrive before their record is stored.
    unsynced: Unsynced,
}

/// The next group commit's work, under its own lock: deciders take it
/// (inside the core lock, which keeps entries in seq order) only to push,
/// and the flusher takes only this one.
#[derive(Default)]
pub(crate) struct Queue {
    pending: Pending,
    shutdown: bool,
}

/// Receipts of request ids the store may not answer for yet. The flusher
/// never touches this (it would contend for the core lock on every commit):
/// deciders drop the ids the store has taken, oldest first, as they pass.
#[derive(Default)]
pub(crate) struct Unsynced {
    by_id: HashMap<String, (String, Receipt)>,
    /// `(seq, id)` in seq order.
    order: std::collections::VecDeque<(u64, String)>,
}

impl Unsynced {
    fn insert(&mut self, seq: u64, id: String, content_hash: String, receipt: Receipt) {
        self.order.push_back((seq, id.clone()));
        self.by_id.insert(id, (content_hash, receipt));
    }

    /// Forgets the ids of entries the store holds (`seq < appended`).
    fn prune(&mut self, appended: u64) {
        while let Some((seq, _)) = self.order.front() {
            if *seq >= appended {
                break;
            }
            let (_, id) = self.order.pop_front().expect("checked");
            self.by_id.remove(&id);
        }
    }
}

pub(crate) struct Inner {
    store: Arc<dyn LedgerStore>,
    datadir: Option<DataDir>,
    core: Mutex<Core>,
    queue: Mutex<Queue>,
    /// Signals the flusher that `queue` has work (or shutdown).
    work: Condvar,
    /// Entries handed to the store (appended, maybe not yet durable).
    appended_len: AtomicU64,
    durable_len: AtomicU64,
    durable_head_file_len: AtomicU64,
    poisoned: Mutex<Option<String>>,
    closed: AtomicBool,
    clock: Arc<dyn Clock>,
    keyring: Keyring,
    jurisdiction: String,
    external_tools: std::collections::BTreeSet<String>,
    checkpoint_every: u64,
    metrics: Arc<Metrics>,
    flusher: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// A cheap, cloneable handle on the durable kernel.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field(
                "durable_len",
                &self.inner.durable_len.load(Ordering::Relaxed),
            )
            .finish()
    }
}

/// A pending durability wait.
pub struct Durable(Option<oneshot::Receiver<Result<(), String>>>);

impl Durable {
    /// Waits until the entry is on stable storage.
    pub async fn wait(self) -> Result<(), LedgerError> {
        match self.0 {
            None => Ok(()),
            Some(rx) => commit_outcome(rx.await),
        }
    }

    /// Blocking version of [`Durable::wait`] (not for async contexts).
    pub fn wait_blocking(self) -> Result<(), LedgerError> {
        match self.0 {
            None => Ok(()),
            Some(rx) => commit_outcome(rx.blocking_recv()),
        }
    }
}

/// What a waiter learns from the flusher.
fn commit_outcome(
    received: Result<Result<(), String>, oneshot::error::RecvError>,
) -> Result<(), LedgerError> {
    match received {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(LedgerError::Unavailable(e)),
        Err(_) => Err(LedgerError::Unavailable(
            "the ledger was closed before the commit".into(),
        )),
    }
}

impl Ledger {
    fn lock_core(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock would be a bug; the state is then
        // still consistent (entries are applied after they are appended).
        self.inner.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.inner.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_open(&self) -> Result<(), LedgerError> {
        if let Some(reason) = self
            .inner
            .poisoned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Err(LedgerError::Unavailable(reason.clone()));
        }
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(LedgerError::Unavailable("the ledger is closed".into()));
        }
        Ok(())
    }

    fn now(&self, core: &Core) -> u64 {
        // Entry times never go backwards, even if the wall clock does.
        self.inner
            .clock
            .now_ms()
            .max(core.state.last_ts_ms.unwrap_or(0))
    }

    /// Queues one sealed entry (and its request record) for the next group
    /// commit, applies it to the state and returns the wait for its
    /// durability. The store sees it when the flusher takes the batch.
    fn enqueue_locked(
        &self,
        core: &mut Core,
        entry: Entry,
        request: Option<RequestRecord>,
    ) -> Durable {
        core.state
            .apply(&entry)
            .expect("a sealed entry continues the chain");
        let len = entry.ledger_seq + 1;
        let checkpoint =
            (len - core.last_checkpoint_len >= self.inner.checkpoint_every).then(|| {
                core.last_checkpoint_len = len;
                open::encode_checkpoint(&core.state)
            });
        let (tx, rx) = oneshot::channel();
        let mut queue = self.lock_queue();
        // Whether the flusher may be asleep on an empty batch — decided before
        // anything (entry or checkpoint) is added to the batch.
        let was_empty = queue.pending.is_empty();
        if checkpoint.is_some() {
            queue.pending.checkpoint = checkpoint;
        }
        queue.pending.entries.push(entry);
        queue.pending.requests.extend(request);
        queue.pending.waiters.push(tx);
        drop(queue);
        // The flusher only sleeps on an empty batch: one wake-up per batch.
        if was_empty {
            self.inner.work.notify_one();
        }
        Durable(Some(rx))
    }

    pub(crate) fn poison(&self, reason: String) {
        tracing::error!(%reason, "ledger closed: no further entries will be accepted until restart");
        let mut p = self
            .inner
            .poisoned
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if p.is_none() {
            *p = Some(reason);
        }
    }

    /// A wait for durability of entry `seq`, which is already queued or
    /// stored (the caller holds the core lock, so it cannot overtake it).
    fn durable_after_locked(&self, seq: u64) -> Durable {
        if self.inner.durable_len.load(Ordering::Acquire) > seq {
            return Durable(None);
        }
        let (tx, rx) = oneshot::channel();
        let mut queue = self.lock_queue();
        let was_empty = queue.pending.is_empty();
        queue.pending.waiters.push(tx);
        drop(queue);
        if was_empty {
            self.inner.work.notify_one();
        }
        Durable(Some(rx))
    }

    /// Decides `raw` and records the decision; the receipt is returned once
    /// its entry is durable. A retried request id with the same content gets
    /// the original receipt (no new entry); with other content, a conflict.
    pub fn submit_begin(&self, raw: &RawRequest) -> Result<(Receipt, Durable), LedgerError> {
        let content_hash = raw.content_hash();
        let request_id = raw
            .request_id()
            .filter(|id| !id.is_empty())
            .map(str::to_owned);
        let mut core = self.lock_core();
        self.check_open()?;
        // A halted kernel refuses every submission, retries included: an
        // agent must not learn of an ALLOW (and act on it) after a halt.
        if core.state.is_halted() {
            let reason = core
                .state
                .last_halt
                .as_ref()
                .map(|h| h.reason.clone())
                .unwrap_or_default();
            return Err(Refusal::Halted(reason).into());
        }
        if let Some(id) = &request_id {
            // Ids not yet handed to the store, then the store's index (in
            // memory; it reads only to confirm a match).
            core.unsynced
                .prune(self.inner.appended_len.load(Ordering::Acquire));
            let prior =
                match core.unsynced.by_id.get(id) {
                    Some((hash, receipt)) => Some((hash.clone(), receipt.clone())),
                    None => match self.inner.store.request(id)? {
                        Some(rec) => {
                            let bytes = self.inner.store.get(rec.seq)?.ok_or_else(|| {
                                StoreError::Corrupt {
                                    seq: rec.seq,
                                    message: "request record points to a missing entry".into(),
                                }
                            })?;
                            let entry =
                                record::decode_entry(&bytes).map_err(|e| StoreError::Corrupt {
                                    seq: rec.seq,
                                    message: e.to_string(),
                                })?;
                            Some((
                                rec.content_hash,
                                Receipt::new(&entry, rec.status, rec.tool_result),
                            ))
                        }
                        None => None,
                    },
                };
            if let Some((hash, receipt)) = prior {
                if hash != content_hash {
                    return Err(LedgerError::Conflict(id.clone()));
                }
                let durable = self.durable_after_locked(receipt.ledger_seq);
                return Ok((receipt, durable));
            }
        }
        let now = self.now(&core);
        let decided = core.state.decide(
            raw,
            &DecideContext {
                now_ms: now,
                keyring: &self.inner.keyring,
                jurisdiction: &self.inner.jurisdiction,
                external_tools: &self.inner.external_tools,
            },
        )?;
        let status = decided.status;
        let entry = core.state.seal(decided.body);
        let receipt = Receipt::new(&entry, status, decided.tool_result.clone());
        let record = request_id.map(|id| {
            core.unsynced.insert(
                entry.ledger_seq,
                id.clone(),
                content_hash.clone(),
                receipt.clone(),
            );
            RequestRecord {
                request_id: id,
                seq: entry.ledger_seq,
                content_hash,
                status,
                tool_result: decided.tool_result,
            }
        });
        let decision = entry.decision.clone();
        tracing::debug!(
            seq = entry.ledger_seq,
            request_id = %entry.request_id,
            actor = %entry.actor,
            decision = %entry.decision,
            status = status.as_str(),
            "decision"
        );
        let durable = self.enqueue_locked(&mut core, entry, record);
        drop(core);
        self.inner
            .metrics
            .decisions
            .get_or_create(&DecisionLabels {
                decision,
                status: status.as_str().to_owned(),
            })
            .inc();
        Ok((receipt, durable))
    }

    /// [`Ledger::submit_begin`], then wait for durability.
    pub async fn submit(&self, raw: &RawRequest) -> Result<Receipt, LedgerError> {
        let (receipt, durable) = self.submit_begin(raw)?;
        durable.wait().await?;
        Ok(receipt)
    }

    /// Builds an operational event from the current state and records it.
    pub fn event_begin(
        &self,
        build: impl FnOnce(&KernelState, u64) -> Result<EntryBody, EventError>,
    ) -> Result<(Entry, Durable), LedgerError> {
        let mut core = self.lock_core();
        self.check_open()?;
        let now = self.now(&core);
        let body = build(&core.state, now)?;
        let entry = core.state.seal(body);
        let durable = self.enqueue_locked(&mut core, entry.clone(), None);
        self.inner
            .metrics
            .halted
            .set(i64::from(core.state.is_halted()));
        drop(core);
        self.inner.metrics.events.inc();
        tracing::info!(seq = entry.ledger_seq, event = entry.tool_name.as_deref().unwrap_or("HALT"), actor = %entry.actor, "operational event");
        Ok((entry, durable))
    }

    /// Records an operational event and waits until it is durable.
    pub async fn event(
        &self,
        build: impl FnOnce(&KernelState, u64) -> Result<EntryBody, EventError>,
    ) -> Result<Entry, LedgerError> {
        let (entry, durable) = self.event_begin(build)?;
        durable.wait().await?;
        Ok(entry)
    }

    /// Halts the kernel. Returns the HALT entry and the root hash of the
    /// ledger just before it (the evidence the operator halted on).
    pub async fn halt(&self, actor: &str, reason: &str) -> Result<(Entry, String), LedgerError> {
        let mut root_before = GENESIS_HASH.to_owned();
        let entry = self
            .event(|state, now| {
                root_before = state.head.hash.clone();
                state.halt_event(now, actor, reason)
            })
            .await?;
        Ok((entry, root_before))
    }

    /// Replaces the active policy.
    pub async fn update_policy(
        &self,
        actor: &str,
        policy: &Policy,
        reason: &str,
    ) -> Result<Entry, LedgerError> {
        self.event(|state, now| {
            state.policy_update_event(
                now,
                actor,
                policy,
                reason,
                crate::kernel::events::POLICY_FROM_API,
            )
        })
        .await
    }

    /// Recovers a halted kernel into a new session.
    pub async fn recover(&self, actor: &str, reason: &str) -> Result<Entry, LedgerError> {
        self.event(|state, now| state.recover_event(now, actor, reason))
            .await
    }

    /// A copy of the kernel state (including entries not yet durable).
    pub fn state(&self) -> KernelState {
        self.lock_core().state.clone()
    }

    /// Number of durable entries.
    pub fn durable_len(&self) -> u64 {
        self.inner.durable_len.load(Ordering::Acquire)
    }

    /// The store (for reads: export, entries, rotation).
    pub fn store(&self) -> &Arc<dyn LedgerStore> {
        &self.inner.store
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Whether the ledger accepts entries (open, verified, not failed).
    pub fn is_ready(&self) -> bool {
        self.check_open().is_ok()
    }

    /// Status as of the last durable entry (counters may include in-flight ones).
    pub fn status(&self) -> LedgerStatus {
        let state = self.state();
        let durable = self.durable_len();
        let root_hash = if durable == state.head.len {
            state.head.hash.clone()
        } else {
            self.entry_hash_at(durable)
                .unwrap_or_else(|| state.head.hash.clone())
        };
        LedgerStatus {
            kernel_id: state.kernel_id.clone().unwrap_or_default(),
            variant: state
                .variant
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default(),
            state: state.state.as_str().to_owned(),
            ledger_length: durable.min(state.head.len),
            root_hash,
            policy_version: state.policy_version,
            policy_hash: state.policy_hash.clone(),
            session: state.session,
            last_rotation: state.last_rotation.clone(),
            last_halt: state.last_halt.clone(),
            last_entry_ts_ms: state.last_ts_ms,
            counters: state.counters.clone(),
            starts: state.starts,
        }
    }

    /// The hash of the entry before position `len` (genesis for 0).
    pub fn entry_hash_at(&self, len: u64) -> Option<String> {
        if len == 0 {
            return Some(GENESIS_HASH.to_owned());
        }
        let bytes = self.inner.store.get(len - 1).ok()??;
        record::split(&bytes)
            .ok()
            .map(|p| hex::encode(p.entry_hash))
    }

    /// Durable entries `from..to` (clamped to the durable length).
    pub fn entries(
        &self,
        from: u64,
        to: u64,
    ) -> impl Iterator<Item = Result<Entry, StoreError>> + '_ {
        let to = to.min(self.durable_len());
        crate::store::read_entries(self.inner.store.as_ref(), from, to)
    }

    /// Verifies the whole stored chain (every hash and link), reporting every error.
    pub fn verify_stored(&self) -> VerifyReport {
        let len = self.durable_len();
        open::verify_store(self.inner.store.as_ref(), 0, len, GENESIS_HASH)
    }

    /// Finishes: a last checkpoint and commit, then the flusher stops.
    /// Safe to call more than once. The data dir (its lock and the sled
    /// database) is released when the last handle is dropped.
    pub fn close(&self) -> Result<(), LedgerError> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        {
            let mut core = self.lock_core();
            let mut queue = self.lock_queue();
            if core.state.head.len > core.last_checkpoint_len {
                queue.pending.checkpoint = Some(open::encode_checkpoint(&core.state));
                core.last_checkpoint_len = core.state.head.len;
            }
            queue.shutdown = true;
        }
        self.inner.work.notify_all();
        // The flusher commits what is pending, then stops.
        let handles =
            std::mem::take(&mut *self.inner.flusher.lock().unwrap_or_else(|p| p.into_inner()));
        for handle in handles {
            let _ = handle.join();
        }
        if self
            .inner
            .poisoned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            let len = self.inner.durable_len.load(Ordering::Acquire);
            if let (Some(dir), Some(hash)) = (&self.inner.datadir, self.entry_hash_at(len)) {
                dir.set_durable_head(len, &hash)?;
            }
        }
        Ok(())
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

/// Version of the checkpoint's state layout; a checkpoint of another
/// version is ignored (the state is then replayed from genesis).
pub const CHECKPOINT_VERSION: u32 = 2;

/// What a stored state checkpoint holds.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// [`CHECKPOINT_VERSION`] when written.
    #[serde(default)]
    pub version: u32,
    /// Entries folded into `state`.
    pub len: u64,
    /// Hash of entry `len - 1`.
    pub hash: String,
    /// The folded state.
    pub state: KernelState,
}

/// A state summary for `kernels replay` and `kernels archive replay`.
pub fn replay_summary(state: &KernelState) -> Value {
    serde_json::json!({
        "kernel_id": state.kernel_id,
        "variant": state.variant.map(|v| v.as_str()),
        "state": state.state.as_str(),
        "session": state.session,
        "ledger_length": state.head.len,
        "head_hash": state.head.hash,
        "last_entry_ts_ms": state.last_ts_ms,
        "policy_version": state.policy_version,
        "policy_hash": state.policy_hash,
        "policy": state.policy.as_ref().map(Policy::to_json),
        "counters": state.counters,
        "permit_nonces_tracked": state.nonce_counts.len(),
        "last_rotation": state.last_rotation,
        "last_halt": state.last_halt,
        "starts": state.starts,
    })
}

/// Collects errors of a stored-chain check into a report.
pub(crate) fn report(entries: u64, root: String, errors: Vec<ChainError>) -> VerifyReport {
    VerifyReport {
        valid: errors.is_empty(),
        entries_verified: entries,
        computed_root_hash: root,
        errors,
    }
}
