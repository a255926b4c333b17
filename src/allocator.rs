//! Tuning of glibc's allocator for a long-running service with a bounded
//! footprint.
//!
//! sled allocates and frees 512 KiB IO buffers as it writes. glibc serves an
//! allocation that large with `mmap` only until the first one is freed: then
//! it raises its mmap threshold and keeps later ones in the heap, where freed
//! buffers stay resident. Fixing the threshold at 128 KiB hands them back to
//! the system at once, and at most 8 arenas (glibc's default is 8 per core)
//! keep per-thread heaps from multiplying the effect. Measured on a
//! 1,000,000-entry sled ledger, 20,000 writes after opening: peak RSS
//! 88.7 MiB with the defaults, 53.3 MiB with this (2 arenas then) and a
//! 1 MiB sled cache. Two arenas cost throughput, though: request threads
//! queue on arena locks and fragment them. With `scripts/load.sh` (64 HTTP
//! connections, 15 s, 2 alternating runs each): 2 arenas 20.6–22.3k
//! decisions/s at 56–63 µs of server CPU each; 4 arenas 21.0–22.5k/s,
//! 55–60 µs; 8 arenas 23.7–24.6k/s, 50–53 µs. Serving 100,000 requests on a
//! 1,000,000-entry ledger peaks at 52.3 MiB with 2 arenas, 53.1 with 4 and
//! 55.1 with 8 (`benches/ledger_scale.rs -- --serve-only`).

/// Applies the tuning; call first thing in `main`, before threads start.
/// A no-op where the allocator is not glibc's.
#[allow(unsafe_code)]
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets allocator parameters (glibc takes its own
    // locks); it touches no memory of ours and is called before any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 8);
    }
}
