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
use crate::store::StoreError;
use crate::store::record::{self, RequestRecord};

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
        let mut core = self.lock_core();
        self.check_open()?;
        core.unsynced
            .prune(self.inner.appended_len.load(Ordering::Acquire));

        // Recorded before?
        let prior = match core.unsynced.by_id.get(&key) {
            Some((h, receipt)) => {
                Some((h.clone(), receipt.ledger_seq, receipt.evidence_hash.clone()))
            }
            None => match self.inner.store.request(&key)? {
                Some(rec) => {
                    let entry = self.stored_entry(rec.seq)?;
                    Some((rec.content_hash, rec.seq, entry.entry_hash))
                }
                None => None,
            },
        };
        if let Some((prior_hash, seq, entry_hash)) = prior {
            if prior_hash != hash {
                return Err(RecordOutcomeError::Conflict(report.request_id.clone()));
            }
            let durable = self.durable_after_locked(seq);
            return Ok((
                RecordedOutcome {
                    ledger_seq: seq,
                    entry_hash,
                    new: false,
                },
                durable,
            ));
        }

        // The decision.
        if core.unsynced.by_id.contains_key(&report.request_id) {
            // Decided but not yet in the store: its receipt was not given
            // out yet, so no caller can know its outcome. Retryable.
            return Err(LedgerError::Unavailable(
                "the request's decision is not stored yet; retry".into(),
            )
            .into());
        }
        let decision = match self.inner.store.request(&report.request_id)? {
            Some(rec) => self.stored_entry(rec.seq)?,
            None => return Err(RecordOutcomeError::Unknown(report.request_id.clone())),
        };
        if !may_report(&decision) {
            return Err(RecordOutcomeError::Forbidden(decision.actor.to_string()));
        }
        let now = self.now(&core);
        let body = core.state.outcome_event(now, &decision, reporter, report)?;
        let entry = core.state.seal(body);
        let seq = entry.ledger_seq;
        let recorded = RecordedOutcome {
            ledger_seq: seq,
            entry_hash: entry.entry_hash.clone(),
            new: true,
        };
        core.unsynced.insert(
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
        let durable = self.enqueue_locked(&mut core, entry, Some(record));
        drop(core);
        self.inner.metrics.events.inc();
        Ok((recorded, durable))
    }

    /// The stored entry at `seq` (named by a request record).
    fn stored_entry(&self, seq: u64) -> Result<Entry, StoreError> {
        let bytes = self
            .inner
            .store
            .get(seq)?
            .ok_or_else(|| StoreError::Corrupt {
                seq,
                message: "request record points to a missing entry".into(),
            })?;
        record::decode_entry(&bytes).map_err(|e| StoreError::Corrupt {
            seq,
            message: e.to_string(),
        })
    }
}
