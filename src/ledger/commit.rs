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
//! point: write + fdatasync of the write-ahead log); then it publishes the
//! tree head, wakes every waiter of the batch and notes the head beside the store. While it writes, the next batch fills, so a busy
//! kernel makes few, large commits. When the last batch was not small, the
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
use std::sync::atomic::Ordering;
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
                // The head checkpoints sign covers the batch before anyone
                // of it hears of its entry.
                inner.tree.publish();
                if let Some(last) = entries.last() {
                    inner
                        .durable_len
                        .fetch_max(last.ledger_seq + 1, Ordering::AcqRel);
                    inner
                        .metrics
                        .ledger_length
                        .set((last.ledger_seq + 1) as i64);
                }
                inner.metrics.commits.inc();
                inner.metrics.batch_size.observe(entries.len() as f64);
                for w in waiters {
                    let _ = w.send(Ok(()));
                }
                if let (Some(dir), Some(last)) = (&inner.datadir, entries.last())
                    && let Err(e) = dir.note_commit(last.ledger_seq + 1, &last.entry_hash)
                {
                    tracing::warn!(error = %e, "could not note the last commit beside the store");
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
