//! The background rotator: weekly (configurable) archives of the ledger to
//! S3, and the forensic path back from the archive.
//!
//! The worker sleeps until the next rotation is due, a manual trigger
//! (`POST /v1/rotations`), or shutdown. A run that fails is retried with
//! exponential backoff and jitter; decisions never wait for it (a run only
//! reads the store and, at its very end, appends one `kernel.rotate` entry).
//! Its state — running or not, last success, last error, consecutive
//! failures, entries not yet archived — is in `GET /v1/rotations`, the
//! status and the metrics. On shutdown a run in progress is given a short
//! grace period, then abandoned; that is safe, because every run can be
//! repeated (see [`run`]).
//!
//! * [`objects`] — S3 or a local directory of downloaded objects
//! * [`manifest`] — manifests and the key layout
//! * [`segment`] — streamed verification of an archived segment
//! * [`run`] — one rotation run
//! * [`archive`] — `kernels archive verify` / `replay`

pub mod archive;
pub mod manifest;
pub mod objects;
pub mod run;
pub mod segment;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde_json::{Value, json};

use crate::config::RotationConfig;
use crate::ledger::{Clock, Ledger, SystemClock};
use crate::service::rotation::{
    RotationControl, RotationError as ServiceRotationError, RotationFuture, RotationRun,
};
use objects::{Objects, S3Settings};
use run::{Outcome, Target};

/// Longest wait between retries of a failing run.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// First wait after a failure.
pub const BASE_BACKOFF: Duration = Duration::from_secs(2);
/// How long a run in progress may finish after shutdown is signalled.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Clone)]
struct Status {
    running: bool,
    last_success_ms: Option<u64>,
    last_error: Option<String>,
    last_error_ms: Option<u64>,
    consecutive_failures: u32,
    next_run_ms: Option<u64>,
    history: VecDeque<Value>,
}

struct Inner {
    ledger: Ledger,
    config: RotationConfig,
    target: Target,
    status: Mutex<Status>,
    run_lock: tokio::sync::Mutex<()>,
    trigger: tokio::sync::Notify,
    stopped: tokio::sync::Notify,
    done: std::sync::atomic::AtomicBool,
}

/// Handle on the running rotator.
#[derive(Clone)]
pub struct Rotator {
    inner: Arc<Inner>,
}

impl Rotator {
    /// Starts the worker for `ledger` with S3 settings from `config`.
    pub async fn start(
        ledger: Ledger,
        config: RotationConfig,
        work_dir: std::path::PathBuf,
        shutdown: tokio::sync::watch::Receiver<bool>,
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
        Self::start_with(ledger, config, objects, work_dir, shutdown)
    }

    /// Starts the worker over an explicit object store (tests, custom clients).
    pub fn start_with(
        ledger: Ledger,
        config: RotationConfig,
        objects: Objects,
        work_dir: std::path::PathBuf,
        shutdown: tokio::sync::watch::Receiver<bool>,
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
                status: Mutex::new(Status::default()),
                run_lock: tokio::sync::Mutex::new(()),
                trigger: tokio::sync::Notify::new(),
                stopped: tokio::sync::Notify::new(),
                done: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        let worker = rotator.clone();
        tokio::spawn(async move { worker.work(shutdown).await });
        rotator
    }

    fn status_lock(&self) -> std::sync::MutexGuard<'_, Status> {
        self.inner.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the next scheduled rotation is due (ms), from the ledger's last
    /// rotation, so the schedule survives restarts.
    fn next_due_ms(&self, now: u64) -> u64 {
        let interval = self.inner.config.interval.as_millis() as u64;
        match self.inner.ledger.state().last_rotation {
            Some(r) => r.ts_ms.saturating_add(interval),
            None => now.saturating_add(interval),
        }
    }

    async fn work(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut due = self.next_due_ms(SystemClock.now_ms());
        loop {
            self.status_lock().next_run_ms = Some(due);
            self.update_gauges();
            let wait = Duration::from_millis(due.saturating_sub(SystemClock.now_ms()));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {},
                _ = self.inner.trigger.notified() => {},
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
            let run = self.run_logged("SYSTEM");
            tokio::pin!(run);
            let result = tokio::select! {
                r = &mut run => r,
                _ = shutdown.changed() => {
                    match tokio::time::timeout(SHUTDOWN_GRACE, &mut run).await {
                        Ok(r) => r,
                        Err(_) => {
                            tracing::warn!("rotation abandoned at shutdown; the next run repeats it");
                            break;
                        }
                    }
                }
            };
            let now = SystemClock.now_ms();
            due = match result {
                Ok(_) => self.next_due_ms(now).max(now + 1000),
                Err(_) => {
                    let failures = self.status_lock().consecutive_failures;
                    now + backoff(failures).as_millis() as u64
                }
            };
            if *shutdown.borrow() {
                break;
            }
        }
        self.inner
            .done
            .store(true, std::sync::atomic::Ordering::Release);
        self.inner.stopped.notify_waiters();
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

    /// Runs one rotation now (serialised with the background runs).
    pub async fn run_logged(&self, actor: &str) -> Result<Outcome, String> {
        let _guard = self.inner.run_lock.lock().await;
        self.status_lock().running = true;
        let started = SystemClock.now_ms();
        let result = run::rotate_once(&self.inner.ledger, &self.inner.target, actor).await;
        let now = SystemClock.now_ms();
        let metrics = self.inner.ledger.metrics();
        let mut status = self.status_lock();
        status.running = false;
        let record = match &result {
            Ok(outcome) => {
                status.last_success_ms = Some(now);
                status.consecutive_failures = 0;
                status.last_error = None;
                metrics.rotation_success.inc();
                metrics.rotation_last_success.set((now / 1000) as i64);
                metrics.rotation_failing.set(0);
                tracing::info!(outcome = %outcome.to_value(), "rotation run finished");
                json!({"started_ms": started, "finished_ms": now, "ok": true, "outcome": outcome.to_value()})
            }
            Err(e) => {
                status.consecutive_failures += 1;
                status.last_error = Some(e.to_string());
                status.last_error_ms = Some(now);
                metrics.rotation_failures.inc();
                metrics.rotation_failing.set(1);
                tracing::warn!(error = %e, failures = status.consecutive_failures, "rotation run failed; will retry");
                json!({"started_ms": started, "finished_ms": now, "ok": false, "error": e.to_string()})
            }
        };
        status.history.push_back(record);
        while status.history.len() > 20 {
            status.history.pop_front();
        }
        drop(status);
        self.update_gauges();
        result.map_err(|e| e.to_string())
    }

    fn update_gauges(&self) {
        let state = self.inner.ledger.state();
        let archived = state.last_rotation.as_ref().map_or(0, |r| r.to_seq + 1);
        let pending = self.inner.ledger.durable_len().saturating_sub(archived);
        self.inner
            .ledger
            .metrics()
            .rotation_pending_entries
            .set(pending as i64);
    }
}

/// Exponential backoff with full jitter, capped.
pub fn backoff(failures: u32) -> Duration {
    let exp = BASE_BACKOFF.saturating_mul(1u32 << failures.min(16).saturating_sub(1));
    let cap = exp.min(MAX_BACKOFF);
    let jitter = rand::rng().random_range(0.5..=1.0);
    cap.mul_f64(jitter)
}

impl RotationControl for Rotator {
    fn rotate_now(&self, actor: String, _wait: Duration) -> RotationFuture<'_> {
        Box::pin(async move {
            self.run_logged(&actor)
                .await
                .map(|o| RotationRun::Finished(o.to_value()))
                .map_err(ServiceRotationError::Failed)
        })
    }

    fn status(&self) -> Value {
        let state = self.inner.ledger.state();
        let archived = state.last_rotation.as_ref().map_or(0, |r| r.to_seq + 1);
        let s = self.status_lock().clone();
        json!({
            "enabled": true,
            "bucket": self.inner.config.bucket,
            "prefix": self.inner.config.prefix,
            "endpoint": self.inner.config.endpoint,
            "interval_secs": self.inner.config.interval.as_secs(),
            "running": s.running,
            "failing": s.consecutive_failures > 0,
            "consecutive_failures": s.consecutive_failures,
            "last_success_ms": s.last_success_ms,
            "last_error": s.last_error,
            "last_error_ms": s.last_error_ms,
            "next_run_ms": s.next_run_ms,
            "pending_entries": self.inner.ledger.durable_len().saturating_sub(archived),
            "last_rotation": state.last_rotation,
            "history": s.history,
        })
    }
}

impl Rotator {
    /// Wakes the worker for a run now (without waiting for it).
    pub fn trigger(&self) {
        self.inner.trigger.notify_one();
    }
}
