//! Verifying large evidence bundles: throughput and peak memory.
//!
//! `cargo bench --bench verify_bundle [-- --entries 1000000,100000 --runs 2 --keep DIR --bin PATH]`
//!
//! For each size N: writes a valid N-entry bundle of realistic entries (with
//! `EntryBody::seal` and `BundleWriter`) in a temp dir (or reuses it in
//! `--keep DIR`), then measures
//! 1. the bundle scanner alone (`bundle::read_bundle_blocks`: reading and
//!    framing, no parsing or hashing),
//! 2. `kernels::verify::verify_bundle_file` in-process (entries/s, and the
//!    growth of this process's peak RSS, reset before each run through
//!    `/proc/self/clear_refs`),
//! 3. the real binary, `kernels verify FILE --json`, as a child under
//!    `/usr/bin/time -v` (wall time, entries/s, maximum RSS); `--bin PATH`
//!    runs another build of it (the target dir may be shared),
//! 4. the CPU cost per entry on one thread: framing, and the workers'
//!    parsing and hashing (`verify::EntryChecker`).
//!
//! The bundle is read from the page cache (it was just written): these are
//! CPU numbers, not disk numbers. "others" is the CPU time the rest of the
//! machine used meanwhile: on a shared 2-core machine it explains most of the
//! spread. Target: ≥ 500,000 entries/s, flat memory.

mod support;

use std::fs::File;
use std::time::Instant;

use support::*;

fn main() {
    let sizes = arg_list("--entries", &[1_000_000, 100_000]);
    let runs = arg_u64("--runs", 2);
    let keep = arg_str("--keep");
    let tmp = tempfile::tempdir().unwrap();
    let dir = keep
        .as_ref()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir).unwrap();
    let bin = arg_str("--bin").map_or_else(kernels_bin, std::path::PathBuf::from);
    println!(
        "verify_bundle: cores={} kernels binary={}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        bin.display()
    );
    let mut summary = Vec::new();
    let mut files = Vec::new();
    for &n in &sizes {
        let path = dir.join(format!("bundle-{n}.json"));
        let started = Instant::now();
        let (root, bytes) = if path.exists() && keep.is_some() {
            (
                String::from("(reused)"),
                std::fs::metadata(&path).unwrap().len(),
            )
        } else {
            write_bundle(&path, n)
        };
        println!(
            "\n== {n} entries: {} ({:.1} MiB, {:.0} B/entry) written in {:.2}s, root {}",
            path.display(),
            bytes as f64 / 1048576.0,
            bytes as f64 / n as f64,
            started.elapsed().as_secs_f64(),
            &root[..root.len().min(16)]
        );

        // 1. The scanner alone: the ceiling set by reading and framing.
        let started = Instant::now();
        let mut count = 0u64;
        kernels::bundle::read_bundle_blocks(File::open(&path).unwrap(), |mut block| {
            count += block.entries.len() as u64;
            block.entries.clear();
            block
        })
        .unwrap();
        let secs = started.elapsed().as_secs_f64();
        let scan_us = secs / n as f64 * 1e6;
        assert_eq!(count, n);
        println!(
            "scan only (read_bundle_blocks): {secs:.3}s {:>10.0} entries/s  {:.0} MiB/s",
            n as f64 / secs,
            bytes as f64 / 1048576.0 / secs
        );

        // 2. In-process verification.
        for run in 1..=runs {
            let reset = reset_peak("self");
            let rss_before = rss_mib("self");
            let snap = cpu_snap();
            let cpu_before = proc_cpu("self");
            let started = Instant::now();
            let report = kernels::verify::verify_bundle_file(&path).unwrap();
            let secs = started.elapsed().as_secs_f64();
            let cpu = proc_cpu("self") - cpu_before;
            let others = (snap.busy_since() - cpu).max(0.0);
            let peak = hwm_mib("self");
            assert!(report.valid, "{:?}", report.errors.first());
            assert_eq!(report.entries_verified, n);
            println!(
                "in-process verify  run {run}    : {secs:.3}s  {:>10.0} entries/s  cpu {cpu:.2}s ({:.0}%), others {others:.2} cpu-s; rss before {rss_before:.1} MiB, peak {peak:.1} MiB (+{:.1}){}",
                n as f64 / secs,
                cpu / secs * 100.0,
                peak - rss_before,
                if reset { "" } else { " [peak not reset]" }
            );
            summary.push((n, "in-process", n as f64 / secs, peak - rss_before, others));
        }

        // 3. The real binary as a child.
        for run in 1..=runs {
            let t = run_timed(
                std::process::Command::new(&bin)
                    .arg("verify")
                    .arg(&path)
                    .arg("--json"),
            );
            let (code, stdout, wall, max_rss) = (t.code, t.stdout, t.wall, t.max_rss_mib);
            let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
                panic!("kernels verify printed no JSON (exit {code}): {e}: {stdout}")
            });
            assert_eq!(code, 0, "kernels verify exit code: {stdout}");
            assert_eq!(v["valid"], true);
            assert_eq!(v["entries_verified"].as_u64(), Some(n));
            println!(
                "kernels verify --json run {run} : {wall:.3}s  {:>10.0} entries/s  cpu {:.2}s ({:.0}%), others {:.2} cpu-s; max RSS {max_rss:.1} MiB (exit {code})",
                n as f64 / wall,
                t.cpu,
                t.cpu / wall * 100.0,
                t.others_cpu
            );
            summary.push((n, "binary", n as f64 / wall, max_rss, t.others_cpu));
        }

        files.push((n, path, scan_us));
    }
    // After every memory measurement: this holds up to 100k entries in memory.
    for (n, path, scan_us) in &files {
        let (n, scan_us) = (*n, *scan_us);
        // 4. Where the CPU goes: one thread, the two halves of the work.
        let sample = n.min(100_000);
        let mut blocks = Vec::new();
        let mut taken = 0u64;
        kernels::bundle::read_bundle_blocks(File::open(path).unwrap(), |block| {
            if taken < sample {
                taken += block.entries.len() as u64;
                blocks.push(block);
            }
            kernels::bundle::EntryBlock::default()
        })
        .unwrap();
        let started = Instant::now();
        let mut checker = kernels::verify::EntryChecker::default();
        let mut verifier = kernels::chain::ChainVerifier::new();
        for block in &blocks {
            for raw in block.raw_entries() {
                verifier.push_hashed(checker.check(raw));
            }
        }
        let check = started.elapsed().as_secs_f64() / taken as f64;
        assert!(verifier.finish(None).valid);
        // The general (serde) path, which the fast one falls back to.
        let started = Instant::now();
        let mut general = 0u64;
        for raw in blocks.iter().flat_map(|b| b.raw_entries()).take(20_000) {
            let e: kernels::entry::Entry = serde_json::from_slice(raw).unwrap();
            let checked = kernels::chain::CheckedEntry::check(e);
            general += checked.computed_hash.len() as u64;
        }
        let general_us = started.elapsed().as_secs_f64() / taken.min(20_000) as f64 * 1e6;
        assert!(general > 0);
        drop(blocks);
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let total_us = scan_us + check * 1e6;
        println!(
            "{n} entries: CPU per entry, one thread: scan {scan_us:.2} us + parse/hash/check {:.2} us = {total_us:.2} us (ceiling on {cores} cores ~ {:.0} entries/s; general serde path alone {general_us:.2} us)",
            check * 1e6,
            cores as f64 / (total_us / 1e6)
        );
        if keep.is_none() {
            std::fs::remove_file(path).unwrap();
        }
    }
    println!("\nsummary (target >= 500000 entries/s, flat memory):");
    for (n, what, rate, mem, others) in summary {
        println!(
            "  {n:>9} entries  {what:<10}  {rate:>10.0} entries/s  (others used {others:.1} cpu-s)  {}",
            if what == "binary" {
                format!("max RSS {mem:.1} MiB")
            } else {
                format!("peak RSS growth {mem:.1} MiB")
            }
        );
    }
}
