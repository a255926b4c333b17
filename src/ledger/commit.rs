//! The group-commit flusher: one thread that turns appended entries into
//! durable ones, a batch at a time.
//!
//! Callers append under the core lock, then register a waiter. The flusher
//! takes every waiter registered so far, notes how many entries have been
//! appended, and commits (the store's commit point: flush + fdatasync). Every
//! waiter it took had appended before registering, so the commit covers it;
//! a waiter that registers during a commit is covered by the next one. When
//! a commit fails, every waiter of the batch gets the error and the ledger
//! is closed: an ALLOW is never answered for an entry that is not stored.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Inner;

/// Runs until the ledger shuts down.
pub(crate) fn run(inner: Arc<Inner>) {
    loop {
        let waiters = {
            let mut q = inner.queue.lock().unwrap_or_else(|p| p.into_inner());
            while q.waiters.is_empty() && !q.shutdown {
                q = inner.queue_cv.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            if q.waiters.is_empty() && q.shutdown {
                return;
            }
            std::mem::take(&mut q.waiters)
        };
        let target = inner.written_len.load(Ordering::Acquire);
        let before = inner.durable_len.load(Ordering::Acquire);
        let started = Instant::now();
        let result = inner.store.commit();
        inner
            .metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                inner.durable_len.fetch_max(target, Ordering::AcqRel);
                inner.metrics.commits.inc();
                inner
                    .metrics
                    .batch_size
                    .observe(target.saturating_sub(before) as f64);
                inner.metrics.ledger_length.set(target as i64);
                for w in waiters {
                    let _ = w.send(Ok(()));
                }
                refresh_durable_head(&inner, target);
            }
            Err(e) => {
                inner.metrics.commit_failures.inc();
                let reason = format!("commit failed: {e}");
                tracing::error!(%reason, "ledger closed: no further entries will be accepted until restart");
                {
                    let mut p = inner.poisoned.lock().unwrap_or_else(|p| p.into_inner());
                    if p.is_none() {
                        *p = Some(reason.clone());
                    }
                }
                for w in waiters {
                    let _ = w.send(Err(reason.clone()));
                }
            }
        }
    }
}

/// Every `checkpoint_every` entries, records the durable head beside the
/// store, so that a store that later comes back shorter is caught on open.
fn refresh_durable_head(inner: &Inner, len: u64) {
    let last = inner.durable_head_file_len.load(Ordering::Acquire);
    if len < last + inner.checkpoint_every {
        return;
    }
    let Some(dir) = &inner.datadir else { return };
    let Ok(Some(bytes)) = inner.store.get(len - 1) else {
        return;
    };
    let Ok(parts) = crate::store::record::split(&bytes) else {
        return;
    };
    match dir.set_durable_head(len, &hex::encode(parts.entry_hash)) {
        Ok(()) => inner.durable_head_file_len.store(len, Ordering::Release),
        Err(e) => tracing::warn!(error = %e, "could not record the durable head"),
    }
}
