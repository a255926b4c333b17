//! The rotator's worker: the one task that runs rotations, scheduled or
//! asked for by hand, and keeps their record.
//!
//! It sleeps until the next run is due (see [`super::schedule`]), a manual
//! request arrives, the next archive head check is due (at start, then every
//! [`HEAD_CHECK_EVERY`]; a run's own findings count as a check), or shutdown. Every
//! run — scheduled, manual, or a retry — is an attempt of this worker: a
//! manual request only queues a run (or joins the one in progress) and waits
//! for its result for as long as its caller can, so an HTTP timeout can never
//! leave a run half-owned. An attempt runs in its own task (a panic fails the
//! attempt, not the worker) with its archive work bounded by
//! `rotation.attempt_timeout`; a failed attempt, manual or not, is retried
//! after the backoff. On shutdown a run in progress gets a short grace
//! period, then is abandoned (every run can be repeated).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::Rotator;
use super::head::HeadCheck;
use super::run::{self, Outcome, RotationError, RunAnswer, RunFailure};
use super::schedule;
use crate::alerts::AlertEvent;
use crate::ledger::{Clock, SystemClock};

/// How long a run in progress may finish after shutdown is signalled.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often the archive head is checked between runs.
pub const HEAD_CHECK_EVERY: Duration = Duration::from_secs(300);
/// How many finished attempts the status keeps.
const HISTORY: usize = 20;

/// The attempt in progress.
#[derive(Debug, Clone)]
pub(super) struct Attempt {
    pub(super) id: String,
    pub(super) actor: String,
    pub(super) manual: bool,
    pub(super) started_ms: u64,
}

/// A manual request the worker has not picked up yet.
#[derive(Debug, Clone)]
struct Request {
    id: String,
    actor: String,
}

/// A finished attempt.
#[derive(Debug, Clone)]
pub(super) struct Finished {
    pub(super) attempt: Attempt,
    pub(super) finished_ms: u64,
    pub(super) result: Result<Value, Arc<RotationError>>,
    pub(super) retry_at_ms: Option<u64>,
}

impl Finished {
    pub(super) fn to_value(&self) -> Value {
        let mut v = json!({
            "id": self.attempt.id,
            "actor": self.attempt.actor,
            "manual": self.attempt.manual,
            "started_ms": self.attempt.started_ms,
            "finished_ms": self.finished_ms,
            "ok": self.result.is_ok(),
        });
        match &self.result {
            Ok(outcome) => v["outcome"] = outcome.clone(),
            Err(e) => {
                v["error"] = json!(e.to_string());
                v["error_code"] = json!(e.code());
                v["retry_at_ms"] = json!(self.retry_at_ms);
            }
        }
        v
    }
}

/// What the worker knows, behind the rotator's status lock.
#[derive(Debug, Default)]
pub(super) struct Status {
    pub(super) current: Option<Attempt>,
    requested: Option<Request>,
    /// Who asked for the run that failed last (its retries run on their behalf).
    retry_actor: Option<String>,
    pub(super) last_success_ms: Option<u64>,
    pub(super) last_error: Option<Arc<RotationError>>,
    pub(super) last_error_ms: Option<u64>,
    pub(super) consecutive_failures: u32,
    pub(super) next_run_ms: Option<u64>,
    pub(super) head: Option<Result<HeadCheck, String>>,
    pub(super) head_checked_ms: Option<u64>,
    pub(super) history: VecDeque<Finished>,
    ids: u64,
}

impl Status {
    fn new_id(&mut self, now_ms: u64) -> String {
        self.ids += 1;
        format!("run-{now_ms}-{}", self.ids)
    }

    /// Keeps a new head check; answers the `integrity_failure` alert's
    /// detail when the head has just become missing or changed.
    fn set_head(&mut self, head: Result<HeadCheck, String>, now_ms: u64) -> Option<Value> {
        let broken = |h: &Option<Result<HeadCheck, String>>| match h {
            Some(Ok(c)) if c.refusal().is_some() => Some((c.state, c.manifest_key.clone())),
            _ => None,
        };
        let before = broken(&self.head);
        self.head = Some(head);
        self.head_checked_ms = Some(now_ms);
        let after = broken(&self.head);
        match (&self.head, after) {
            (Some(Ok(check)), Some(now)) if before.as_ref() != Some(&now) => Some(json!({
                "source": "archive",
                "state": check.state,
                "problem": check.problem,
                "manifest_key": check.manifest_key,
                "segment_key": check.segment_key,
                "entry_seq": check.entry_seq,
            })),
            _ => None,
        }
    }
}

/// Clears the running attempt however the attempt ends.
struct ClearCurrent<'a>(&'a Rotator);

impl Drop for ClearCurrent<'_> {
    fn drop(&mut self) {
        self.0.status_lock().current = None;
    }
}

impl Rotator {
    /// Queues a run on behalf of `actor` (or joins the run in progress or
    /// already queued) and waits at most `wait` for its result.
    pub async fn request_run(&self, actor: &str, wait: Duration) -> Result<RunAnswer, RunFailure> {
        // Subscribe before the run can finish, so its end is not missed.
        let mut finished = self.inner.finished.subscribe();
        let id = {
            let mut s = self.status_lock();
            if let Some(a) = &s.current {
                a.id.clone()
            } else if let Some(r) = &s.requested {
                r.id.clone()
            } else {
                let id = s.new_id(SystemClock.now_ms());
                s.requested = Some(Request {
                    id: id.clone(),
                    actor: actor.to_owned(),
                });
                id
            }
        };
        self.inner.wake.notify_one();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(done) = self.finished(&id) {
                return match done.result {
                    Ok(outcome) => Ok(RunAnswer::Finished {
                        run_id: id,
                        outcome,
                    }),
                    Err(error) => Err(RunFailure {
                        run_id: id,
                        error,
                        retry_at_ms: done.retry_at_ms,
                    }),
                };
            }
            match tokio::time::timeout_at(deadline, finished.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Ok(RunAnswer::Running { run_id: id }),
            }
        }
    }

    fn finished(&self, id: &str) -> Option<Finished> {
        self.status_lock()
            .history
            .iter()
            .rev()
            .find(|f| f.attempt.id == id)
            .cloned()
    }

    /// The worker's loop (see the module doc).
    pub(super) async fn work(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        self.check_head().await;
        let mut head_due = SystemClock.now_ms() + HEAD_CHECK_EVERY.as_millis() as u64;
        let mut due = self.scheduled_due().await;
        loop {
            self.status_lock().next_run_ms = Some(due);
            let now = SystemClock.now_ms();
            if self.status_lock().requested.is_none() && now < due {
                let wait = Duration::from_millis(due.min(head_due).saturating_sub(now));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {},
                    _ = self.inner.wake.notified() => {},
                    _ = shutdown.changed() => break,
                }
            }
            if *shutdown.borrow() {
                break;
            }
            let now = SystemClock.now_ms();
            let request = self.status_lock().requested.take();
            if request.is_none() && now < due {
                if now >= head_due {
                    self.check_head().await;
                    head_due = SystemClock.now_ms() + HEAD_CHECK_EVERY.as_millis() as u64;
                }
                continue;
            }
            let attempt = {
                let mut s = self.status_lock();
                let attempt = match request {
                    Some(r) => Attempt {
                        id: r.id,
                        actor: r.actor,
                        manual: true,
                        started_ms: now,
                    },
                    None => Attempt {
                        id: s.new_id(now),
                        actor: s.retry_actor.clone().unwrap_or_else(|| "SYSTEM".into()),
                        manual: false,
                        started_ms: now,
                    },
                };
                s.current = Some(attempt.clone());
                attempt
            };
            let Some(next) = self.attempt(attempt, &mut shutdown).await else {
                break;
            };
            due = next;
            if *shutdown.borrow() {
                break;
            }
        }
        self.inner
            .done
            .store(true, std::sync::atomic::Ordering::Release);
        self.inner.stopped.notify_waiters();
    }

    /// The next scheduled run, from the ledger (see [`schedule::next_due_ms`]).
    async fn scheduled_due(&self) -> u64 {
        let ledger = self.inner.ledger.clone();
        let last = ledger.state().last_rotation.map(|r| r.ts_ms);
        let first = match last {
            Some(_) => None,
            None => tokio::task::spawn_blocking(move || {
                ledger
                    .entries(0, 1)
                    .next()
                    .and_then(Result::ok)
                    .map(|e| e.ts_ms)
            })
            .await
            .ok()
            .flatten(),
        };
        schedule::next_due_ms(
            last,
            first,
            self.inner.config.interval,
            SystemClock.now_ms(),
        )
    }

    /// Runs one attempt in its own task; answers when the next run is due,
    /// or `None` when it was abandoned at shutdown.
    async fn attempt(
        &self,
        attempt: Attempt,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Option<u64> {
        let _clear = ClearCurrent(self);
        let task = {
            let ledger = self.inner.ledger.clone();
            let target = self.inner.target.clone();
            let actor = attempt.actor.clone();
            let limit = self.inner.config.attempt_timeout;
            tokio::spawn(
                async move { run::rotate_within(&ledger, &target, &actor, Some(limit)).await },
            )
        };
        let abort = task.abort_handle();
        tokio::pin!(task);
        let joined = tokio::select! {
            r = &mut task => r,
            _ = shutdown.changed() => match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
                Ok(r) => r,
                Err(_) => {
                    abort.abort();
                    tracing::warn!(run = %attempt.id, "rotation abandoned at shutdown; the next run repeats it");
                    return None;
                }
            },
        };
        let result = joined.unwrap_or_else(|e| {
            Err(RotationError::Internal(format!(
                "the run's task failed: {e}"
            )))
        });
        Some(self.record(attempt, result).await)
    }

    /// Records a finished attempt in the status, history and metrics;
    /// answers when the next run is due.
    async fn record(&self, attempt: Attempt, result: Result<Outcome, RotationError>) -> u64 {
        let now = SystemClock.now_ms();
        let metrics = self.inner.ledger.metrics().clone();
        let next = match &result {
            Ok(Outcome::Archived { .. }) => self.scheduled_due().await.max(now + 1000),
            Ok(Outcome::Nothing { .. }) => {
                let interval = self.inner.config.interval.as_millis() as u64;
                self.scheduled_due().await.max(now.saturating_add(interval))
            }
            Err(_) => {
                let failures = self.status_lock().consecutive_failures + 1;
                now + schedule::backoff(failures).as_millis() as u64
            }
        };
        let mut s = self.status_lock();
        // What a run learnt about the archive head is the newest check.
        let head = match &result {
            Ok(Outcome::Archived {
                manifest,
                entry_seq,
                ..
            }) => Some(super::head::archived(
                &self.inner.target,
                manifest,
                *entry_seq,
            )),
            Err(RotationError::ArchiveHead(check)) => Some((**check).clone()),
            _ => None,
        };
        let head_alert = head.and_then(|head| s.set_head(Ok(head), now));
        let mut failing_alert = None;
        let finished = match result {
            Ok(outcome) => {
                s.last_success_ms = Some(now);
                s.consecutive_failures = 0;
                s.last_error = None;
                s.retry_actor = None;
                metrics.rotation_success.inc();
                metrics.rotation_last_success.set((now / 1000) as i64);
                metrics.rotation_failing.set(0);
                let value = outcome.to_value();
                tracing::info!(run = %attempt.id, outcome = %value, "rotation run finished");
                Finished {
                    attempt,
                    finished_ms: now,
                    result: Ok(value),
                    retry_at_ms: None,
                }
            }
            Err(e) => {
                s.consecutive_failures += 1;
                s.last_error_ms = Some(now);
                metrics.rotation_failures.inc();
                metrics.rotation_failing.set(1);
                tracing::warn!(run = %attempt.id, error = %e, code = e.code(), failures = s.consecutive_failures, retry_in_ms = next - now, "rotation run failed; will retry");
                if attempt.manual {
                    s.retry_actor = Some(attempt.actor.clone());
                }
                let e = Arc::new(e);
                s.last_error = Some(e.clone());
                if s.consecutive_failures == 1 {
                    failing_alert = Some(json!({
                        "run_id": attempt.id,
                        "code": e.code(),
                        "error": e.to_string(),
                        "retry_at_ms": next,
                    }));
                }
                Finished {
                    attempt,
                    finished_ms: now,
                    result: Err(e),
                    retry_at_ms: Some(next),
                }
            }
        };
        s.history.push_back(finished);
        while s.history.len() > HISTORY {
            s.history.pop_front();
        }
        s.next_run_ms = Some(next);
        drop(s);
        if let Some(detail) = failing_alert {
            self.alert(AlertEvent::RotationFailing, detail);
        }
        if let Some(detail) = head_alert {
            self.alert(AlertEvent::IntegrityFailure, detail);
        }
        self.inner.finished.send_modify(|n| *n += 1);
        next
    }

    /// Checks the archive head (bounded by the attempt time) and keeps the
    /// result for the status.
    async fn check_head(&self) {
        let limit = self.inner.config.attempt_timeout;
        let checked = tokio::time::timeout(
            limit,
            super::head::check(&self.inner.ledger, &self.inner.target),
        )
        .await
        .unwrap_or(Err(RotationError::TimedOut(limit)));
        if let Ok(head) = &checked
            && let Some(problem) = &head.problem
        {
            tracing::error!(%problem, "archive head check failed");
        }
        let alert = self
            .status_lock()
            .set_head(checked.map_err(|e| e.to_string()), SystemClock.now_ms());
        if let Some(detail) = alert {
            self.alert(AlertEvent::IntegrityFailure, detail);
        }
    }
}
