//! Keeping sled's page cache bounded while a scan (or the applier's writes)
//! touches each leaf about once.
//!
//! sled 0.34.7 (`lru.rs`) spreads cache accounting over 256 groups and
//! applies a group's recorded reads, evicting what is over capacity, only
//! once it holds 64 of them. A scan reads each leaf about once, so without
//! help nothing is evicted until some 16k leaves are resident: a full scan
//! of a million entries kept ~600 MiB. Reading the chunk's key a few more
//! times (cache hits) fills its group's record and lets eviction run; with
//! it the scan stays flat. Measured with `kernels verify --data-dir` over
//! 1.08M entries (peak RSS, time): 2 re-reads 82 MiB, 0.8 s; 4 re-reads
//! 74 MiB, 0.9 s; 8 re-reads 70 MiB, 1.2 s; none ~640 MiB. This leans
//! on sled's internals, so sled is pinned to 0.34.7 and
//! `benches/ledger_scale.rs` and `benches/rotation_scale.rs` guard the peak.
//!
//! The nudges bound the cache during a scan; they do not make the process
//! give back what the scan allocated (sled's page bookkeeping, the
//! allocator's retained memory): a bare scan of 400,000 entries grew a
//! process from 9.7 to 23 MiB resident, and it still held 23 MiB after the
//! store was dropped. That is why `serve` runs its full verification in a
//! child process (`cli/serve.rs`, `verify_in_child`).

/// Extra reads of each chunk key during a scan.
pub(super) const SCAN_NUDGES: usize = 4;
/// Extra reads of each key the applier writes.
pub(super) const WRITE_NUDGES: usize = 16;

/// Reads `key` `times` more times, so that sled's cache accounting runs.
pub(super) fn nudge(tree: &sled::Tree, key: &[u8], times: usize) {
    for _ in 0..times {
        let _ = tree.get(key);
    }
}
