//! The background rotator: weekly (configurable) archives of the ledger to
//! S3, and the forensic path back from the archive.
//!
//! One worker task owns every run: scheduled runs (one interval after the
//! last recorded rotation, so the schedule survives restarts), manual runs
//! (`POST /v1/rotations` queues one or joins the one in progress) and
//! retries with exponential backoff and jitter. Decisions never wait for it
//! (a run only reads the store and, at its very end, appends one
//! `kernel.rotate` entry). Its state — the run in progress, last success,
//! last error with its code, consecutive failures, the archive head check,
//! entries not yet archived — is in `GET /v1/rotations`, the status and the
//! metrics.
//!
//! * [`schedule`] — when runs are due; the retry backoff (pure)
//! * [`worker`] — the worker loop, manual requests and the run history
//! * [`run`] — one rotation run
//! * [`head`] — is the newest recorded rotation still in the archive?
//! * [`objects`] — S3 or a local directory of downloaded objects (reads)
//! * [`upload`] — writes that never overwrite, with Object Lock retention
//! * [`preserved`] — preserved evidence uploaded to the archive
//! * [`manifest`] — manifests and the key layout
//! * [`segment`] — streamed verification of an archived segment
//! * [`archive`] — `kernels archive verify` / `replay`
//! * [`archive_tree`] — the archive's Merkle tree and its signed checkpoints
//! * [`archive_report`] — the problems `archive verify` finds, and its report

pub mod archive;
pub mod archive_report;
pub mod archive_tree;
pub mod head;
pub mod manifest;
pub mod objects;
pub mod preserved;
pub mod run;
pub mod schedule;
pub mod segment;
pub mod upload;
pub mod worker;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::RotationConfig;
use crate::ledger::Ledger;
use crate::service::RotationControl;
use objects::{Objects, S3Settings};
use run::{RotationError, RunAnswer, RunFailure, Target};

struct Inner {
    ledger: Ledger,
    config: RotationConfig,
    target: Target,
    status: Mutex<worker::Status>,
    /// A manual request is waiting.
    wake: tokio::sync::Notify,
    /// Bumped each time an attempt finishes.
    finished: tokio::sync::watch::Sender<u64>,
    stopped: tokio::sync::Notify,
    done: std::sync::atomic::AtomicBool,
    /// Where failing runs and a broken archive head are reported.
    alerts: Option<crate::alerts::Alerts>,
}

/// Handle on the running rotator.
#[derive(Clone)]
pub struct Rotator {
    inner: Arc<Inner>,
}

impl Rotator {
    /// Starts the worker for `ledger` with S3 settings from `config`;
    /// failing runs and a broken archive head are reported to `alerts`.
    pub async fn start(
        ledger: Ledger,
        config: RotationConfig,
        work_dir: std::path::PathBuf,
        shutdown: tokio::sync::watch::Receiver<bool>,
        alerts: Option<crate::alerts::Alerts>,
    ) -> Rotator {
        let objects = Objects::s3(&S3Settings {
            bucket: config.bucket.clone(),
            region: config.region.clone(),
            endpoint: config.endpoint.clone(),
            force_path_style: config.force_path_style,
            credentials: None,
            object_lock: config.object_lock.clone(),
        })
        .await;
        Self::launch(ledger, config, objects, work_dir, shutdown, alerts)
    }

    /// Starts the worker over an explicit object store (tests, custom clients).
    pub fn start_with(
        ledger: Ledger,
        config: RotationConfig,
        objects: Objects,
        work_dir: std::path::PathBuf,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Rotator {
        Self::launch(ledger, config, objects, work_dir, shutdown, None)
    }

    fn launch(
        ledger: Ledger,
        config: RotationConfig,
        objects: Objects,
        work_dir: std::path::PathBuf,
        shutdown: tokio::sync::watch::Receiver<bool>,
        alerts: Option<crate::alerts::Alerts>,
    ) -> Rotator {
        let target = Target {
            objects,
            prefix: config.prefix.clone(),
            work_dir,
        };
        let rotator = Rotator {
            inner: Arc::new(Inner {
                ledger,
                config,
                target,
                status: Mutex::new(worker::Status::default()),
                wake: tokio::sync::Notify::new(),
                finished: tokio::sync::watch::Sender::new(0),
                stopped: tokio::sync::Notify::new(),
                done: std::sync::atomic::AtomicBool::new(false),
                alerts,
            }),
        };
        // The pending-entries gauge is computed when the metrics are read,
        // so it always agrees with the status.
        let weak = Arc::downgrade(&rotator.inner);
        rotator.inner.ledger.metrics().on_render(move |m| {
            if let Some(inner) = weak.upgrade() {
                m.rotation_pending_entries
                    .set(pending_entries(&inner.ledger) as i64);
            }
        });
        let worker = rotator.clone();
        tokio::spawn(async move { worker.work(shutdown).await });
        rotator
    }

    fn alert(&self, event: crate::alerts::AlertEvent, detail: Value) {
        if let Some(alerts) = &self.inner.alerts {
            alerts.raise(event, detail);
        }
    }

    fn status_lock(&self) -> std::sync::MutexGuard<'_, worker::Status> {
        self.inner.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the worker has stopped (after shutdown was signalled).
    pub async fn stopped(&self) {
        loop {
            let notified = self.inner.stopped.notified();
            if self.inner.done.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// The rotator's state and recent history as JSON (`GET /v1/rotations`).
    pub fn status_value(&self) -> Value {
        let state = self.inner.ledger.state();
        let s = self.status_lock();
        let config = &self.inner.config;
        let head = match &s.head {
            None => Value::Null,
            Some(Ok(check)) => {
                let mut v = serde_json::to_value(check).unwrap_or(Value::Null);
                v["checked_ms"] = json!(s.head_checked_ms);
                v
            }
            Some(Err(error)) => {
                json!({"state": "unknown", "error": error, "checked_ms": s.head_checked_ms})
            }
        };
        json!({
            "enabled": true,
            "bucket": config.bucket,
            "prefix": config.prefix,
            "endpoint": config.endpoint,
            "interval_secs": config.interval.as_secs(),
            "attempt_timeout_secs": config.attempt_timeout.as_secs_f64(),
            "object_lock": config.object_lock.as_ref().map(|l| json!({"mode": l.mode, "days": l.days})),
            "running": s.current.is_some(),
            "current_run": s.current.as_ref().map(|a| json!({
                "id": a.id, "actor": a.actor, "manual": a.manual, "started_ms": a.started_ms,
            })),
            "failing": s.consecutive_failures > 0,
            "consecutive_failures": s.consecutive_failures,
            "last_success_ms": s.last_success_ms,
            "last_error": s.last_error.as_ref().map(|e| e.to_string()),
            "last_error_code": s.last_error.as_ref().map(|e| e.code()),
            "last_error_ms": s.last_error_ms,
            "next_run_ms": s.next_run_ms,
            "pending_entries": pending_entries(&self.inner.ledger),
            "last_rotation": state.last_rotation,
            "archive_head": head,
            "history": s.history.iter().map(worker::Finished::to_value).collect::<Vec<_>>(),
        })
    }
}

/// Durable entries not yet covered by an archived segment.
fn pending_entries(ledger: &Ledger) -> u64 {
    let archived = ledger
        .state()
        .last_rotation
        .as_ref()
        .map_or(0, |r| r.to_seq + 1);
    ledger.durable_len().saturating_sub(archived)
}

impl RotationControl for Rotator {
    fn rotate_now(
        &self,
        actor: String,
        wait: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<RunAnswer, RunFailure>> + Send + '_>> {
        Box::pin(async move { self.request_run(&actor, wait).await })
    }

    fn status(&self) -> Value {
        self.status_value()
    }

    fn upload_preserved(
        &self,
        path: std::path::PathBuf,
        sha256: String,
    ) -> Pin<Box<dyn Future<Output = Result<Value, RotationError>> + Send + '_>> {
        Box::pin(async move {
            let kernel_id = self.inner.ledger.state().kernel_id.unwrap_or_default();
            let limit = self.inner.config.attempt_timeout;
            let upload = preserved::upload(
                &self.inner.target,
                &kernel_id,
                &path,
                &sha256,
                self.inner.config.object_lock.as_ref(),
            );
            tokio::time::timeout(limit, upload)
                .await
                .unwrap_or(Err(RotationError::TimedOut(limit)))
        })
    }
}
