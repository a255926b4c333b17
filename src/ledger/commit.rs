//! The group-commit flusher: one thread that turns decided entries into
//! durable ones, a batch at a time.
//!
//! Deciding threads only queue their entry (and a waiter) in the `queue`,
//! inside the core lock. The flusher takes only the queue's lock (never the
//! core's, which deciders contend for): it swaps the whole pending batch out,
//! indexes its request records and adds its entries to the Merkle tree,
//! hands it to the store in one atomic append (entries, request records,
//! the tree's tiles, and with a checkpoint the state and the request-id
//! fingerprints not stored yet), and commits (the store's commit
//! point: write + fdatasync of the write-ahead log); then it notes the head
//! beside the store (`LAST_COMMIT`), publishes the tree head, and only then
//! wakes every waiter of the batch, so every acknowledged entry is covered
//! by that trace and by the tree head checkpoints sign. While it
//! writes, the next batch fills, so a busy kernel makes few, large commits.
//! When the last batch was not small, the
//! flusher also lingers [`COMMIT_LINGER`] before it takes the next one:
//! every commit costs the machine a `write` + `fdatasync` (about 100 µs of
//! CPU in the kernel here), so fewer, larger commits leave more CPU for
//! deciding. Measured with `scripts/load.sh` (64 HTTP connections, 3
//! alternating runs each): 300 µs gave 23.3–24.5k decisions/s, p99
//! 6.0–6.4 ms, 54–56 µs of server CPU per decision, against 18.9–21.8k/s,
//! p99 6.9–7.9 ms, 62–71 µs without; in-process, 64 submitters, batches of
//! 55 instead of 33 and the same or a higher rate. (Splitting append and
//! commit over two threads was measured: the extra hand-offs cost more than
//! the overlap gained on a 2-core machine.)
//!
//! A failed append or commit fails every waiter of its batch and closes the
//! ledger: an ALLOW is never answered for an entry that is not stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::core::{Inner, Pending, Waiter};
use crate::store::{Append, meta};

fn fail(waiters: Vec<Waiter>, reason: &str) {
    for w in waiters {
        let _ = w.send(Err(reason.to_owned()));
    }
}

/// How long a busy flusher lets a batch grow before it commits it.
const COMMIT_LINGER: std::time::Duration = std::time::Duration::from_micros(300);
/// The flusher lingers when the last batch had at least this many entries
/// (several submitters are waiting); a lone submitter waits for it at most
/// once, right after a burst.
const LINGER_FROM: usize = 4;

/// Runs until the ledger shuts down (after committing what is pending).
pub(crate) fn run(inner: Arc<Inner>) {
    let inner = &inner;
    let mut last_batch = 0usize;
    loop {
        let batch: Pending = {
            let mut queue = inner.lock_queue();
            while queue.pending.is_empty() && !queue.shutdown {
                queue = queue.wait(&inner.work);
            }
            if queue.pending.is_empty() && queue.shutdown {
                return;
            }
            if last_batch >= LINGER_FROM && !queue.shutdown {
                // Busy: let the batch grow (nothing notifies a non-empty
                // batch, so this sleeps the whole linger unless shut down).
                queue = queue.wait_timeout(&inner.work, COMMIT_LINGER);
            }
            last_batch = queue.pending.entries.len();
            std::mem::take(&mut queue.pending)
        };
        let Pending {
            entries,
            requests,
            checkpoint,
            side: carried,
            meta,
            waiters,
        } = batch;
        if let Some(reason) = inner
            .poisoned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            fail(waiters, &reason);
            continue;
        }
        let started = Instant::now();
        // The index answers for the batch's ids from here on (and until the
        // append below, the deciders' `Unappended` does too).
        let end = entries.last().map(|e| e.ledger_seq + 1);
        let (side, fingerprints_to) =
            inner
                .requests
                .side_records(&requests, end, checkpoint.is_some());
        // The tree's tiles go into the same append as the entries they cover.
        let tiles = match inner.tree.stage(&entries) {
            Ok(tiles) => tiles,
            Err(e) => {
                let reason = format!("commit failed: the Merkle tree: {e}");
                inner.poison(reason.clone());
                fail(waiters, &reason);
                continue;
            }
        };
        // Carried records first: a later value for the same key wins.
        let mut all_side = carried;
        all_side.extend(side);
        all_side.extend(tiles);
        let mut all_meta = meta;
        all_meta.extend(checkpoint.map(|cp| (meta::CHECKPOINT, cp)));
        let append = Append {
            entries: &entries,
            side: all_side,
            meta: all_meta,
        };
        let result = inner.store.append(append).and_then(|()| {
            if let Some(to) = fingerprints_to {
                inner.requests.stored_through(to);
            }
            // The store answers for these ids now: deciders may forget them.
            if let Some(last) = entries.last() {
                inner
                    .appended_len
                    .fetch_max(last.ledger_seq + 1, Ordering::AcqRel);
            }
            inner.store.commit()
        });
        inner
            .metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                inner.metrics.commits.inc();
                inner.metrics.batch_size.observe(entries.len() as f64);
                let end = entries
                    .last()
                    .map(|last| (last.ledger_seq + 1, &last.entry_hash));
                acknowledge(
                    &inner.durable_len,
                    end.map(|(len, _)| len),
                    || {
                        if let (Some(dir), Some((len, hash))) = (&inner.datadir, end)
                            && let Err(e) = dir.note_commit(len, hash)
                        {
                            tracing::warn!(error = %e, "could not note the last commit beside the store");
                        }
                        // The head checkpoints sign covers the batch before
                        // anyone of it hears of its entry.
                        inner.tree.publish();
                    },
                    waiters,
                );
                if let Some((len, _)) = end {
                    inner.metrics.ledger_length.set(len as i64);
                }
                refresh_durable_head(inner, inner.durable_len.load(Ordering::Acquire));
            }
            Err(e) => {
                inner.metrics.commit_failures.inc();
                let reason = format!("commit failed: {e}");
                inner.poison(reason.clone());
                fail(waiters, &reason);
            }
        }
    }
}

/// What follows a batch's successful commit (its `fdatasync`), in the order
/// that keeps the traces ahead of what anyone is told: `note` (writes
/// `LAST_COMMIT` and publishes the tree head), then `durable_len` (what reads and `/v1/status` report),
/// then the waiters (the acknowledgements). A process killed anywhere in
/// between leaves `LAST_COMMIT` at or above every length acknowledged or
/// reported, so a store that later comes back shorter is refused with the
/// whole count missing.
fn acknowledge(
    durable_len: &AtomicU64,
    end: Option<u64>,
    note: impl FnOnce(),
    waiters: Vec<Waiter>,
) {
    note();
    if let Some(end) = end {
        durable_len.fetch_max(end, Ordering::AcqRel);
    }
    for w in waiters {
        let _ = w.send(Ok(()));
    }
}

/// Every `checkpoint_every` entries, records the durable head beside the
/// store, so that a store that later comes back shorter is caught on open.
fn refresh_durable_head(inner: &Inner, len: u64) {
    let last = inner.durable_head_file_len.load(Ordering::Acquire);
    if len == 0 || len < last + inner.checkpoint_every {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::sync::oneshot;

    use super::acknowledge;

    /// A SIGKILL between an acknowledgement and the `LAST_COMMIT` note
    /// would leave the trace below what was acknowledged (a store that
    /// then came back shorter was refused with too small a count): the
    /// note must come before the waiters are woken and before the length
    /// is published.
    #[test]
    fn the_last_commit_is_noted_before_any_waiter_is_woken_or_the_length_published() {
        let durable_len = AtomicU64::new(3);
        let (senders, mut receivers): (Vec<_>, Vec<_>) = (0..3).map(|_| oneshot::channel()).unzip();
        let mut noted = false;
        acknowledge(
            &durable_len,
            Some(6),
            || {
                noted = true;
                for rx in &mut receivers {
                    assert_eq!(
                        rx.try_recv(),
                        Err(oneshot::error::TryRecvError::Empty),
                        "a waiter was acknowledged before LAST_COMMIT was noted"
                    );
                }
                assert_eq!(durable_len.load(Ordering::Acquire), 3);
            },
            senders,
        );
        assert!(noted);
        assert_eq!(durable_len.load(Ordering::Acquire), 6);
        for mut rx in receivers {
            assert_eq!(rx.try_recv(), Ok(Ok(())));
        }
    }
}
