//! Recording an outcome (`kernel.outcome`) once per decided request.
//!
//! Under the core lock, like a submission: the decision is found through the
//! request index, the outcome is looked up under its own index key
//! (`kernel.outcome/<request_id>`, which no agent can submit: `kernel.*`
//! ids are refused), and a new outcome entry is queued for the next group
//! commit with a request record under that key. The same report again gets
//! the recorded entry back; a different one is a conflict. The index key,
//! not the kernel state, remembers which requests have an outcome, so the
//! state does not grow with them.

use std::sync::atomic::Ordering;

use super::{Durable, Ledger, LedgerError};
use crate::entry::Entry;
use crate::kernel::outcome::{OUTCOME, OutcomeError, OutcomeReport};
use crate::kernel::{Receipt, Status};
use crate::store::request_records::RequestRecord;
use crate::store::{LedgerStore, StoreError, record};

/// Why an outcome was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum RecordOutcomeError {
    /// No request of that id was decided (HTTP 404).
    #[error("no request {0:?} was decided")]
    Unknown(String),
    /// The report is malformed or the request was not ALLOWed (400 / 409).
    #[error(transparent)]
    Outcome(#[from] OutcomeError),
    /// The request already has a different outcome (HTTP 409).
    #[error("request {0:?} already has a different outcome")]
    Conflict(String),
    /// The caller may not report for the request's actor (HTTP 403).
    #[error("this token may not report outcomes for actor '{0}'")]
    Forbidden(String),
    /// The ledger cannot record now (as for submissions).
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl From<StoreError> for RecordOutcomeError {
    fn from(e: StoreError) -> Self {
        RecordOutcomeError::Ledger(e.into())
    }
}

/// A recorded outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedOutcome {
    /// Seq of the outcome entry.
    pub ledger_seq: u64,
    /// Its hash.
    pub entry_hash: String,
    /// False when the same outcome had been recorded before.
    pub new: bool,
}

/// The request index key of `request_id`'s outcome.
fn index_key(request_id: &str) -> String {
    format!("{OUTCOME}/{request_id}")
}

impl Ledger {
    /// Records `report` for the request it names, as `reporter`, unless
    /// `may_report(decision entry)` says no; returns once queued, with the
    /// wait for its durability.
    pub fn outcome_begin(
        &self,
        reporter: &str,
        report: &OutcomeReport,
        may_report: impl FnOnce(&Entry) -> bool,
    ) -> Result<(RecordedOutcome, Durable), RecordOutcomeError> {
        let key = index_key(&report.request_id);
        let hash = report.hash();
        let mut guard = self.lock_core();
        self.check_open()?;
        let core = &mut *guard;
        let store = self.inner.store.as_ref();
        // Both lookups run under the core lock (the locked core's
        // `Unappended`), so that a second report cannot overtake the first.
        let appended = self.inner.appended_len.load(Ordering::Acquire);

        // Recorded before?
        let prior = self
            .inner
            .requests
            .lookup(&mut core.unappended, appended, store, &key)?;
        if let Some((prior_hash, receipt)) = prior {
            if prior_hash != hash {
                return Err(RecordOutcomeError::Conflict(report.request_id.clone()));
            }
            let durable = self.durable_after_locked(receipt.ledger_seq);
            return Ok((
                RecordedOutcome {
                    ledger_seq: receipt.ledger_seq,
                    entry_hash: receipt.evidence_hash,
                    new: false,
                },
                durable,
            ));
        }

        // The decision.
        let Some((_, decided)) = self.inner.requests.lookup(
            &mut core.unappended,
            appended,
            store,
            &report.request_id,
        )?
        else {
            return Err(RecordOutcomeError::Unknown(report.request_id.clone()));
        };
        let Some(decision) = stored_entry(store, decided.ledger_seq)? else {
            // Decided but not yet handed to the store: its receipt was not
            // given out yet, so no caller can know its outcome. Retryable.
            return Err(LedgerError::Unavailable(
                "the request's decision is not stored yet; retry".into(),
            )
            .into());
        };
        if !may_report(&decision) {
            return Err(RecordOutcomeError::Forbidden(decision.actor.to_string()));
        }
        let now = self.now(core);
        let body = core.state.outcome_event(now, &decision, reporter, report)?;
        let entry = core.state.seal(body);
        let seq = entry.ledger_seq;
        let recorded = RecordedOutcome {
            ledger_seq: seq,
            entry_hash: entry.entry_hash.clone(),
            new: true,
        };
        core.unappended.insert(
            seq,
            key.clone(),
            hash.clone(),
            Receipt::new(&entry, Status::Accepted, None),
        );
        let record = RequestRecord {
            request_id: key,
            seq,
            content_hash: hash,
            status: Status::Accepted,
            tool_result: None,
        };
        let durable = self.enqueue_locked(core, entry, Some(record));
        drop(guard);
        self.inner.metrics.events.inc();
        Ok((recorded, durable))
    }
}

/// The entry at `seq` if the store has it (`None`: not appended yet).
fn stored_entry(store: &dyn LedgerStore, seq: u64) -> Result<Option<Entry>, StoreError> {
    let Some(bytes) = store.get(seq)? else {
        return Ok(None);
    };
    record::decode_entry(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            seq,
            message: e.to_string(),
        })
}
