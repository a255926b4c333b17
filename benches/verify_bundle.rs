//! Verifying large evidence bundles: throughput and peak memory.
//!
//! `cargo bench --bench verify_bundle [-- --entries 1000000,100000 --runs 2 --keep DIR]`
//!
//! For each size N: writes a valid N-entry bundle of realistic entries (with
//! `EntryBody::seal` and `BundleWriter`) in a temp dir, then measures
//! 1. the bundle scanner alone (`bundle::read_bundle`, no parsing or hashing),
//! 2. `kernels::verify::verify_bundle_file` in-process (entries/s, and the
//!    growth of this process's peak RSS, reset before each run through
//!    `/proc/self/clear_refs`),
//! 3. the real binary, `kernels verify FILE --json`, as a child under
//!    `/usr/bin/time -v` (wall time, entries/s, maximum RSS).
//!
//! The bundle is read from the page cache (it was just written): these are
//! CPU numbers, not disk numbers. Target: ≥ 500,000 entries/s, flat memory.

mod support;

use std::fs::File;
use std::io::BufReader;
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
    let bin = kernels_bin();
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
        let file = BufReader::with_capacity(1 << 20, File::open(&path).unwrap());
        kernels::bundle::read_bundle(file, |_raw| count += 1).unwrap();
        let secs = started.elapsed().as_secs_f64();
        let scan_us = secs / n as f64 * 1e6;
        assert_eq!(count, n);
        println!(
            "scan only (read_bundle)      : {secs:.3}s  {:>10.0} entries/s  {:.0} MiB/s",
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
        let mut raws = Vec::with_capacity(sample as usize);
        let file = BufReader::with_capacity(1 << 20, File::open(path).unwrap());
        kernels::bundle::read_bundle(file, |raw| {
            if (raws.len() as u64) < sample {
                raws.push(raw)
            }
        })
        .unwrap();
        let started = Instant::now();
        let mut parsed = Vec::with_capacity(raws.len());
        for raw in &raws {
            parsed.push(serde_json::from_slice::<kernels::entry::Entry>(raw).unwrap());
        }
        let parse = started.elapsed().as_secs_f64() / sample as f64;
        let started = Instant::now();
        let mut verifier = kernels::chain::ChainVerifier::new();
        for e in parsed {
            verifier.push_checked(kernels::chain::CheckedEntry::check(e));
        }
        let hash = started.elapsed().as_secs_f64() / sample as f64;
        assert!(verifier.finish(None).valid);
        drop(raws);
        println!(
            "{n} entries: cost per entry, one thread: scan {:.2} us + parse {:.2} us + hash/check {:.2} us = {:.2} us of CPU (ceiling on {} cores ~ {:.0} entries/s)",
            scan_us,
            parse * 1e6,
            hash * 1e6,
            scan_us + (parse + hash) * 1e6,
            std::thread::available_parallelism().map_or(1, |c| c.get()),
            std::thread::available_parallelism().map_or(1, |c| c.get()) as f64
                / ((scan_us + (parse + hash) * 1e6) / 1e6)
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
