//! The cluster worker: one task that polls the control plane every
//! `cluster.poll_interval` and runs the cluster's jobs in turn, until the
//! shutdown signal.
//!
//! A job is an async function of the [`Cluster`] handle that reads the
//! control plane and records what it learns through the ledger; it keeps
//! what it saw (for the status) in its own state beside the others in the
//! handle. The jobs run in the order of [`JOBS`]: a member claim still
//! pending from the start, then the halt flag (safety first), then the
//! shared policy, then witnessing peers' checkpoints.
//!
//! Whether the control plane is reachable is decided here, from the jobs'
//! answers: any job that could not reach it makes the poll a failure
//! (status `control_plane.reachable: false`, metric
//! `kernels_cluster_control_plane_up 0`). Decisions never wait for a poll.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use super::error::ClusterError;
use super::objects::ControlPlane;
use super::{Cluster, halt, join, policy, witness};
use crate::ledger::{Clock, SystemClock};

/// One job of a poll.
pub type JobFn =
    for<'a> fn(&'a Cluster) -> Pin<Box<dyn Future<Output = Result<(), ClusterError>> + Send + 'a>>;

/// The jobs of every poll, in order (see the module doc).
pub const JOBS: &[(&str, JobFn)] = &[
    ("member", |c| Box::pin(join::claim_pending(c))),
    ("halt", |c| Box::pin(halt::poll(c))),
    ("policy", |c| Box::pin(policy::poll(c))),
    ("witness", |c| Box::pin(witness::poll(c))),
];

/// What the worker knows about the control plane.
#[derive(Debug, Default)]
pub(super) struct WorkerState {
    reachable: Option<bool>,
    last_ok_ms: Option<u64>,
    last_error: Option<String>,
    last_error_ms: Option<u64>,
    consecutive_failures: u64,
    polls: u64,
}

impl WorkerState {
    pub(super) fn to_value(&self, plane: &ControlPlane) -> Value {
        json!({
            "location": plane.describe(),
            "reachable": self.reachable,
            "last_ok_ms": self.last_ok_ms,
            "last_error": self.last_error,
            "last_error_ms": self.last_error_ms,
            "consecutive_failures": self.consecutive_failures,
            "polls": self.polls,
        })
    }
}

impl Cluster {
    /// Runs every job once (a poll). Answers the first control-plane
    /// failure, if any, after all jobs had their turn; other failures (the
    /// ledger refusing an entry) are logged and do not make the control
    /// plane unreachable.
    pub async fn poll_once(&self) -> Result<(), ClusterError> {
        let mut unreachable = None;
        for (name, job) in JOBS {
            match job(self).await {
                Ok(()) => {}
                Err(ClusterError::ControlPlane(e)) => {
                    tracing::warn!(cluster = %self.id(), job = name, error = %e, "control plane unreachable");
                    unreachable.get_or_insert(ClusterError::ControlPlane(e));
                }
                Err(e) => {
                    tracing::error!(cluster = %self.id(), job = name, error = %e, "cluster job failed")
                }
            }
        }
        self.record_poll(unreachable)
    }

    /// Records the outcome of a poll: `unreachable` is the control-plane
    /// failure it met, if any (answered back).
    pub(super) fn record_poll(
        &self,
        unreachable: Option<ClusterError>,
    ) -> Result<(), ClusterError> {
        let now = SystemClock.now_ms();
        let metrics = self.ledger().metrics().clone();
        let mut state = Self::lock(&self.inner.worker);
        state.polls += 1;
        match unreachable {
            None => {
                if state.reachable == Some(false) {
                    tracing::info!(cluster = %self.id(), "control plane reachable again");
                }
                state.reachable = Some(true);
                state.last_ok_ms = Some(now);
                state.consecutive_failures = 0;
                metrics.cluster_control_plane_up.set(1);
                Ok(())
            }
            Some(e) => {
                state.reachable = Some(false);
                state.last_error = Some(e.to_string());
                state.last_error_ms = Some(now);
                state.consecutive_failures += 1;
                metrics.cluster_control_plane_up.set(0);
                Err(e)
            }
        }
    }

    /// Starts the worker: a poll every `cluster.poll_interval` (or at once
    /// when woken), until `shutdown` becomes true. A poll in progress at
    /// shutdown is abandoned: every poll can be repeated.
    pub fn start(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let cluster = self.clone();
        let interval = self.config().poll_interval;
        tokio::spawn(async move {
            loop {
                if *shutdown.borrow() {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = cluster.inner.wake.notified() => {}
                    changed = shutdown.changed() => {
                        if changed.is_err() { break }
                        continue
                    }
                }
                if !cluster.is_member() {
                    continue;
                }
                tokio::select! {
                    _ = cluster.poll_once() => {}
                    changed = shutdown.changed() => {
                        if changed.is_err() { break }
                    }
                }
            }
            cluster.inner.done.store(true, Ordering::Release);
            cluster.inner.stopped.notify_waiters();
            tracing::info!(cluster = %cluster.id(), "cluster worker stopped");
        });
    }

    /// Asks the worker for a poll now (it does not wait for it).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }
}
