//! The ledger handle: deciding, recording events, reading, closing.
//!
//! Every decision and operational event goes the same way: under the core
//! lock, the kernel decides (or builds the event), the entry is sealed onto
//! the chain, folded into the state and queued for the next group commit;
//! then, outside the lock, the caller waits until a commit covers its entry
//! ([`Durable`]). Nobody gets a receipt for an entry that is not on stable
//! storage.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use tokio::sync::oneshot;

use super::checkpoint;
use super::core::{Core, Inner};
use super::error::LedgerError;
use super::status::LedgerStatus;
use super::verify::verify_store;
use crate::chain::VerifyReport;
use crate::entry::{Entry, EntryBody, GENESIS_HASH};
use crate::kernel::{Compat, DecideContext, EventError, KernelState, Policy, Receipt, Submission};
use crate::metrics::{DecisionLabels, Metrics};
use crate::store::request_records::RequestRecord;
use crate::store::{LedgerStore, StoreError, read_entries, record};

/// A cheap, cloneable handle on the durable kernel.
#[derive(Clone)]
pub struct Ledger {
    pub(crate) inner: Arc<Inner>,
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
    /// The wait for a waiter queued with the flusher.
    pub(crate) fn from_receiver(rx: oneshot::Receiver<Result<(), String>>) -> Durable {
        Durable(Some(rx))
    }

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
    pub(super) fn lock_core(&self) -> MutexGuard<'_, Core> {
        self.inner.lock_core()
    }

    pub(super) fn check_open(&self) -> Result<(), LedgerError> {
        self.inner.check_open()
    }

    pub(super) fn now(&self, core: &Core) -> u64 {
        // Entry times never go backwards, even if the wall clock does.
        self.inner
            .clock
            .now_ms()
            .max(core.state.last_ts_ms.unwrap_or(0))
    }

    /// Queues one sealed entry (and its request record) for the next group
    /// commit, applies it to the state and returns the wait for its
    /// durability. The store sees it when the flusher takes the batch.
    pub(super) fn enqueue_locked(
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
            checkpoint::due(len, core.last_checkpoint_len, self.inner.checkpoint_every).then(
                || {
                    core.last_checkpoint_len = len;
                    checkpoint::encode(&core.state)
                },
            );
        let (tx, rx) = oneshot::channel();
        let wake = self
            .inner
            .lock_queue()
            .push(Some(entry), request, checkpoint, tx);
        // The flusher only sleeps on an empty batch: one wake-up per batch.
        if wake {
            self.inner.work.notify_one();
        }
        Durable(Some(rx))
    }

    /// A wait for durability of entry `seq`, which is already queued or
    /// stored (the caller holds the core lock, so it cannot overtake it).
    pub(super) fn durable_after_locked(&self, seq: u64) -> Durable {
        if self.inner.durable_len.load(Ordering::Acquire) > seq {
            return Durable(None);
        }
        let (tx, rx) = oneshot::channel();
        let wake = self.inner.lock_queue().push(None, None, None, tx);
        if wake {
            self.inner.work.notify_one();
        }
        Durable(Some(rx))
    }

    /// Decides `raw` and records the decision; the receipt is returned once
    /// its entry is durable. A retried request id with the same content gets
    /// the original receipt (no new entry); with other content, a conflict.
    pub fn submit_begin<'a>(
        &self,
        submission: impl Into<Submission<'a>>,
    ) -> Result<(Receipt, Durable), LedgerError> {
        let submission = submission.into();
        let raw = submission.raw();
        let content_hash = raw.content_hash();
        let request_id = raw
            .request_id()
            .filter(|id| !id.is_empty())
            .map(str::to_owned);
        let mut guard = self.lock_core();
        self.check_open()?;
        let core = &mut *guard;
        // The one halt check, before the retry lookup: a halted kernel
        // refuses every submission, retries included, so that an agent
        // never learns of an ALLOW (and acts on it) after a halt.
        let admitted = core.state.admit()?;
        if let Some(id) = &request_id {
            // Under the core lock (the `Unappended` of the locked core), so
            // that a retry cannot overtake the decision it retries.
            let appended = self.inner.appended_len.load(Ordering::Acquire);
            let prior = self.inner.requests.lookup(
                &mut core.unappended,
                appended,
                self.inner.store.as_ref(),
                id,
            )?;
            if let Some((hash, receipt)) = prior {
                if hash != content_hash {
                    return Err(LedgerError::Conflict(id.clone()));
                }
                // Not halted here, so a halt after the receipt's entry was
                // followed by a recovery: a new session, maybe a new policy.
                if core
                    .state
                    .last_halt
                    .as_ref()
                    .is_some_and(|halt| receipt.ledger_seq < halt.seq)
                {
                    return Err(LedgerError::DecidedInEarlierSession(Box::new(receipt)));
                }
                let durable = self.durable_after_locked(receipt.ledger_seq);
                return Ok((receipt, durable));
            }
        }
        let now = self.now(core);
        let decided = admitted.decide(
            &submission,
            &DecideContext {
                now_ms: now,
                keyring: &self.inner.keyring,
                jurisdiction: &self.inner.jurisdiction,
                external_tools: &self.inner.external_tools,
                compat: Compat::Native,
            },
        )?;
        let status = decided.status;
        let entry = core.state.seal(decided.body);
        let receipt = Receipt::new(&entry, status, decided.tool_result.clone());
        let record = request_id.map(|id| {
            core.unappended.insert(
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
        let durable = self.enqueue_locked(core, entry, record);
        drop(guard);
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
    pub async fn submit<'a>(
        &self,
        submission: impl Into<Submission<'a>>,
    ) -> Result<Receipt, LedgerError> {
        let (receipt, durable) = self.submit_begin(submission)?;
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

    /// Records a clean stop of the service (`kernel.stop`), halted or not:
    /// an operational event, so that a stop can be told from a crash.
    /// Called after the last request was answered, before [`Ledger::close`].
    pub async fn record_stop(&self, reason: &str) -> Result<Entry, LedgerError> {
        self.event(|state, now| state.stop_event(now, reason)).await
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

    /// The store (for reads). Borrowed, not shared: the store must not
    /// outlive the ledger, which releases the data dir's lock after it.
    pub fn store(&self) -> &dyn LedgerStore {
        self.inner.store.as_ref()
    }

    /// The stored record of a submitted request id (appended, maybe not
    /// yet durable), found through the request index.
    pub fn request_record(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        self.inner
            .requests
            .find(self.inner.store.as_ref(), request_id)
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
        read_entries(self.inner.store.as_ref(), from, to)
    }

    /// Verifies the whole stored chain (every hash and link), reporting every error.
    pub fn verify_stored(&self) -> VerifyReport {
        let len = self.durable_len();
        verify_store(self.inner.store.as_ref(), 0, len, GENESIS_HASH)
    }

    /// Finishes: a last checkpoint (when the stored one is behind) and
    /// commit, then the flusher stops, and the durable head is recorded
    /// beside the store. Safe to call more than once. When the last handle
    /// is dropped, the store is closed (sled made durable) and only then the
    /// data dir's lock released.
    pub fn close(&self) -> Result<(), LedgerError> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        {
            let mut core = self.lock_core();
            let mut queue = self.inner.lock_queue();
            if core.state.head.len > core.last_checkpoint_len {
                queue.pending.checkpoint = Some(checkpoint::encode(&core.state));
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
