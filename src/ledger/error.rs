//! The durable ledger's errors, each with how the service answers it.

use crate::kernel::{EventError, Receipt, Refusal};
use crate::store::StoreError;

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
    /// A retry of a request decided in an earlier session (before a halt
    /// and recovery): its old receipt is not replayed, since the policy may
    /// have changed since; the agent submits again under a new id (HTTP 409
    /// `decided_in_earlier_session`, with the old receipt for the record).
    #[error(
        "request_id {} was decided in an earlier session (entry {}); submit it again under a new request_id",
        .0.request_id,
        .0.ledger_seq
    )]
    DecidedInEarlierSession(Box<Receipt>),
    /// A commit failed or the ledger is closed: nothing more is accepted
    /// until restart (HTTP 503).
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
    /// The stored chain is broken at `seq`, or shorter than a trace of it
    /// shows (the service refuses to start).
    #[error("stored ledger is corrupt at entry {seq}: {message}")]
    Corrupt {
        /// Seq of the first bad (or missing) entry found.
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
