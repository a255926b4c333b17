//! What the HTTP layer asks of the rotator, and how a rotation can fail.
//!
//! The service does not know how archives are made: it holds a
//! [`RotationControl`] (the rotator implements it) and maps a
//! [`RotationError`] to a status in `ApiError`, so a failure keeps its kind
//! (not configured, already running, failed upstream, timed out) all the way
//! to the client.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::Value;

use crate::ledger::LedgerError;

/// Why a rotation asked for over HTTP did not (yet) succeed.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// No bucket is configured (HTTP 409 `rotation_disabled`).
    #[error("rotation is off: no bucket is configured")]
    NotConfigured,
    /// Another run is in progress and this call may not join it (HTTP 409
    /// `rotation_running`).
    #[error("a rotation run is already in progress")]
    AlreadyRunning,
    /// The run failed at the archive (upload, read-back or repair check);
    /// the ledger is unchanged and the worker retries (HTTP 502
    /// `rotation_failed`). The text is safe to show.
    #[error("{0}")]
    Failed(String),
    /// The archive did not answer within the run's bounded attempt time
    /// (HTTP 504 `rotation_timeout`).
    #[error("{0}")]
    TimedOut(String),
    /// Recording the rotation failed (mapped like any ledger error).
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Where a rotation asked for over HTTP stands when the call answers.
#[derive(Debug, Clone, PartialEq)]
pub enum RotationRun {
    /// The run finished within the wait: its outcome (HTTP 200).
    Finished(Value),
    /// The run goes on in the worker after the wait (HTTP 202); it shows
    /// in `GET /v1/rotations` under this id.
    Running {
        /// The run's id.
        run_id: String,
    },
}

/// A boxed future of a rotation call.
pub type RotationFuture<'a> =
    Pin<Box<dyn Future<Output = Result<RotationRun, RotationError>> + Send + 'a>>;

/// What the rotator offers the HTTP layer.
pub trait RotationControl: Send + Sync + 'static {
    /// Starts a rotation run on behalf of `actor`, or joins the one in
    /// progress, and waits at most `wait` for it: its outcome if it finishes,
    /// else its id (the run goes on in the worker, never owned by the call).
    fn rotate_now(&self, actor: String, wait: Duration) -> RotationFuture<'_>;
    /// The rotator's state and recent history as JSON.
    fn status(&self) -> Value;
}
