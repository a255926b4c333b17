//! Opening and serving a large ledger: time to ready and peak memory.
//!
//! `cargo bench --bench ledger_scale [-- --entries 1000000 --dir DIR --runs 2 --requests 20000 --serve-only]`
//!
//! 1. Builds a ledger of `--entries` entries in `--dir` (default: a temp dir,
//!    removed at the end; an existing dir is reused and extended) through the
//!    real path: `Ledger::open(LedgerOptions::service(..))` and `submit` from
//!    64 concurrent tokio tasks, then `close`.
//! 2. In child processes (this binary again, `--child-open DIR --verify
//!    full|checkpoint`): `Ledger::open` as the service does, with the default
//!    full verification and with verification from the checkpoint only; then
//!    `verify_stored` (a full verification on its own). Each child reports its
//!    timings and VmHWM; the parent reports process start → open.
//! 3. In a child (`--child-breakdown DIR`): the pieces of an open, measured
//!    one by one with the public store API — sled open, checkpoint read and
//!    decode, full chain verification, replay after the checkpoint.
//! 4. The real service: `kernels serve --config C` (listen 127.0.0.1:0),
//!    polling `GET /ready` every 2 ms; reports spawn → ready and the server's
//!    VmHWM at ready, then after `--requests` HTTP submissions (32 at a time),
//!    with an RSS profile sampled every 20 ms; then SIGTERM (exit code and
//!    shutdown time).
//!
//! `--check-build [--entries N --rounds R]` instead builds fresh ledgers with
//! every receipt checked against the stored entries, and a watchdog that
//! reports and exits 3 when submissions stall.
//!
//! Targets: peak RSS < 64 MB opening and serving 1,000,000 entries; ready in ≤ 1 s.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kernels::ledger::open::VerifyOnOpen;
use kernels::ledger::{Ledger, LedgerOptions, SystemClock};
use kernels::metrics::Metrics;
use kernels::store::LedgerStore;
use serde_json::json;
use support::*;

const KERNEL_ID: &str = "bench-scale";
const AGENT_TOKEN: &str = "bench-agent-token-0001";
const POLICY_YAML: &str = "allowed_actors: ['*']\nallowed_tools: [search, read_file, write_file, http_get, sql_query, send_email]\nmax_intent_length: 1000\n";

fn service_options(verify: VerifyOnOpen) -> LedgerOptions {
    let mut options =
        LedgerOptions::service(KERNEL_ID, kernels::kernel::Variant::Strict, bench_policy());
    options.external_tools = TOOLS.iter().map(|t| t.to_string()).collect();
    options.verify = verify;
    options
}

/// Child: open as the service does, then a full verification on its own.
fn child_open(dir: &Path, verify: VerifyOnOpen) {
    let start_hwm = hwm_mib("self");
    let started = Instant::now();
    let ledger = Ledger::open(
        dir,
        service_options(verify),
        Arc::new(SystemClock),
        Arc::new(Metrics::new()),
    )
    .expect("open");
    let open_s = started.elapsed().as_secs_f64();
    let since_spawn_s = since_spawn();
    let open_hwm = hwm_mib("self");
    let open_rss = rss_mib("self");
    let len = ledger.durable_len();
    let started = Instant::now();
    let report = ledger.verify_stored();
    let verify_s = started.elapsed().as_secs_f64();
    assert!(report.valid, "{:?}", report.errors.first());
    let verify_hwm = hwm_mib("self");
    let started = Instant::now();
    ledger.close().unwrap();
    let close_s = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"len": len, "open_s": open_s, "since_spawn_s": since_spawn_s, "hwm_at_start_mib": start_hwm, "hwm_after_open_mib": open_hwm,
               "rss_after_open_mib": open_rss, "verify_stored_s": verify_s,
               "hwm_after_verify_mib": verify_hwm, "close_s": close_s})
    );
}

/// Child: the pieces of an open, one by one.
fn child_breakdown(dir: &Path) {
    use kernels::store::datadir::DataDir;
    use kernels::store::meta;
    use kernels::store::sled_store::{SledOptions, SledStore};
    let mut out = serde_json::Map::new();
    let mut step = |name: &str, secs: f64, extra: serde_json::Value| {
        out.insert(
            name.to_owned(),
            json!({"s": secs, "hwm_mib": hwm_mib("self"), "rss_mib": rss_mib("self"), "extra": extra}),
        );
    };
    let t = Instant::now();
    let datadir = DataDir::open(dir, false).unwrap();
    let store = SledStore::open(&datadir.ledger_path(), &SledOptions::default()).unwrap();
    step("sled_open", t.elapsed().as_secs_f64(), json!(null));
    let t = Instant::now();
    let len = store.len().unwrap();
    step("len", t.elapsed().as_secs_f64(), json!(len));
    let t = Instant::now();
    let cp_bytes = store.meta(meta::CHECKPOINT).unwrap().unwrap_or_default();
    let cp: kernels::ledger::Checkpoint = serde_json::from_slice(&cp_bytes).unwrap();
    step(
        "checkpoint_read_decode",
        t.elapsed().as_secs_f64(),
        json!({"bytes": cp_bytes.len(), "checkpoint_len": cp.len,
               "nonces": cp.state.nonce_counts.len()}),
    );
    let t = Instant::now();
    let report = kernels::ledger::open::verify_store(&store, 0, len, kernels::entry::GENESIS_HASH);
    assert!(report.valid);
    step(
        "verify_full",
        t.elapsed().as_secs_f64(),
        json!(report.entries_verified),
    );
    let t = Instant::now();
    let report = kernels::ledger::open::verify_store(&store, cp.len, len, &cp.hash);
    assert!(report.valid);
    step(
        "verify_from_checkpoint",
        t.elapsed().as_secs_f64(),
        json!(report.entries_verified),
    );
    let t = Instant::now();
    let mut state = cp.state.clone();
    let mut n = 0;
    for e in kernels::store::read_entries(&store, cp.len, len) {
        state.apply(&e.unwrap()).unwrap();
        n += 1;
    }
    step(
        "replay_after_checkpoint",
        t.elapsed().as_secs_f64(),
        json!(n),
    );
    let t = Instant::now();
    let mut count = 0u64;
    for item in store.scan(0, len) {
        item.unwrap();
        count += 1;
    }
    step("scan_all_no_hash", t.elapsed().as_secs_f64(), json!(count));
    println!("{}", serde_json::Value::Object(out));
}

const SPAWN_NS: &str = "BENCH_SPAWN_UNIX_NS";

fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Seconds since the parent spawned this process (it passes the time).
fn since_spawn() -> f64 {
    let spawned: u128 = std::env::var(SPAWN_NS)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (unix_ns().saturating_sub(spawned)) as f64 / 1e9
}

/// Child: a plain scan of every stored chunk through sled (no hashing, no
/// decoding), then drop the store and do it again: does reading the ledger
/// grow memory, and is it given back when the store is dropped?
fn child_sled_scan(dir: &Path) {
    use kernels::store::datadir::DataDir;
    use kernels::store::sled_store::{SledOptions, SledStore};
    let mut out = Vec::new();
    let datadir = DataDir::open(dir, false).unwrap();
    for round in 1..=2 {
        let t = Instant::now();
        let store = SledStore::open(&datadir.ledger_path(), &SledOptions::default()).unwrap();
        out.push(json!({"step": format!("open {round}"), "s": t.elapsed().as_secs_f64(), "rss_mib": rss_mib("self"), "hwm_mib": hwm_mib("self")}));
        let len = store.len().unwrap();
        let t = Instant::now();
        let mut bytes = 0u64;
        for item in store.scan(0, len) {
            bytes += item.unwrap().1.len() as u64;
        }
        out.push(json!({"step": format!("scan {round}"), "s": t.elapsed().as_secs_f64(), "entries": len, "record_mib": bytes as f64 / 1048576.0, "rss_mib": rss_mib("self"), "hwm_mib": hwm_mib("self")}));
        drop(store);
        std::thread::sleep(Duration::from_millis(500));
        out.push(json!({"step": format!("dropped {round}"), "rss_mib": rss_mib("self"), "hwm_mib": hwm_mib("self")}));
    }
    println!("{}", serde_json::Value::Array(out));
}

fn spawn_child(args: &[&str]) -> (serde_json::Value, f64) {
    let started = Instant::now();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(args)
        .env(SPAWN_NS, unix_ns().to_string())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let wall = started.elapsed().as_secs_f64();
    assert!(out.status.success(), "child {args:?} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("");
    (serde_json::from_str(line).unwrap(), wall)
}

/// Samples the RSS of `pid` every 20 ms until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<(f64, f64)>>>,
}

impl Sampler {
    fn start(pid: u32, t0: Instant) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut v = Vec::new();
            let pid = pid.to_string();
            while !s.load(Ordering::Relaxed) {
                if let Some(kb) = status_kb(&pid, "VmRSS") {
                    v.push((t0.elapsed().as_secs_f64(), kb as f64 / 1024.0));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            v
        });
        Sampler {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Vec<(f64, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

fn profile_line(samples: &[(f64, f64)], every: f64) -> String {
    let mut out = String::new();
    let mut next = 0.0;
    for &(t, mib) in samples {
        if t >= next {
            out.push_str(&format!("{t:.2}s:{mib:.0} "));
            next = t + every;
        }
    }
    if let Some(&(t, mib)) = samples.last() {
        out.push_str(&format!("(last {t:.2}s:{mib:.0})"));
    }
    out
}

/// The real service: spawn → ready, memory, some traffic, SIGTERM.
fn real_serve(dir: &Path, work: &Path, requests: u64) {
    let policy = work.join("policy.yaml");
    std::fs::write(&policy, POLICY_YAML).unwrap();
    let config = work.join("kernels.yaml");
    std::fs::write(
        &config,
        format!(
            "kernel:\n  id: {KERNEL_ID}\n  variant: strict\ndata_dir: {}\nlisten: 127.0.0.1:0\npolicy_file: {}\ntokens:\n  - token_env: BENCH_AGENT_TOKEN\n    role: agent\n    actors: ['*']\nexternal_tools: [{}]\n",
            dir.display(),
            policy.display(),
            TOOLS.join(", ")
        ),
    )
    .unwrap();
    let t0 = Instant::now();
    let snap = cpu_snap();
    let mut child = Command::new(kernels_bin())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .current_dir(work)
        .env("BENCH_AGENT_TOKEN", AGENT_TOKEN)
        .env("KERNELS_LOG", "warn")
        .env_remove("KERNELS_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kernels serve");
    let pid = child.id();
    let sampler = Sampler::start(pid, t0);
    let base = serve_address(&mut child, Duration::from_secs(120));
    let listening_s = t0.elapsed().as_secs_f64();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let ready_s = rt.block_on(async {
        loop {
            if let Ok(r) = client.get(format!("{base}/ready")).send().await
                && r.status() == 200
            {
                return t0.elapsed().as_secs_f64();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let pid_s = pid.to_string();
    let hwm_ready = hwm_mib(&pid_s);
    let rss_ready = rss_mib(&pid_s);
    let cpu_ready = proc_cpu(&pid_s);
    let others_ready = (snap.busy_since() - cpu_ready).max(0.0);
    println!(
        "real serve: spawn -> listening {listening_s:.3}s, -> /ready 200 {ready_s:.3}s; server cpu {cpu_ready:.2}s, others {others_ready:.2} cpu-s; VmHWM at ready {hwm_ready:.1} MiB (RSS {rss_ready:.1} MiB)"
    );
    // Traffic.
    let started = Instant::now();
    let concurrency = 32u64;
    let (ok, other, mut lat) = rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..concurrency {
            let client = client.clone();
            let base = base.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng::new(unix_ns() as u64 ^ (t << 48));
                let (mut ok, mut other, mut lat) = (0u64, 0u64, Vec::new());
                for i in 0..requests / concurrency {
                    let body = realistic_request(1000 + t, i, &mut rng);
                    let sent = Instant::now();
                    let r = client
                        .post(format!("{base}/v1/requests"))
                        .bearer_auth(AGENT_TOKEN)
                        .json(&body)
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.bytes().await;
                            ok += 1
                        }
                        _ => other += 1,
                    }
                    lat.push(sent.elapsed().as_secs_f64() * 1000.0);
                }
                (ok, other, lat)
            }));
        }
        let mut sum = (0, 0, Vec::new());
        for t in tasks {
            let (a, b, l) = t.await.unwrap();
            sum.0 += a;
            sum.1 += b;
            sum.2.extend(l);
        }
        sum
    });
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let slow = lat.iter().filter(|l| **l > 100.0).count();
    let traffic_s = started.elapsed().as_secs_f64();
    let hwm_served = hwm_mib(&pid_s);
    let rss_served = rss_mib(&pid_s);
    println!(
        "real serve: {ok} requests 200 ({other} other) in {traffic_s:.2}s ({:.0}/s, 32 concurrent, keep-alive); latency p50 {:.1} ms p99 {:.1} ms max {:.1} ms, {slow} over 100 ms; VmHWM after serving {hwm_served:.1} MiB (RSS {rss_served:.1} MiB)",
        ok as f64 / traffic_s,
        pct(0.5),
        pct(0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    if let Ok(r) = rt.block_on(client.get(format!("{base}/metrics")).send())
        && let Ok(text) = rt.block_on(r.text())
    {
        for l in text.lines().filter(|l| {
            l.starts_with("kernels_commit_seconds_bucket")
                || l.starts_with("kernels_commit_seconds_count")
                || l.starts_with("kernels_commit_seconds_sum")
        }) {
            println!("    metric {l}");
        }
    }
    let started = Instant::now();
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(&pid_s)
        .status()
        .unwrap();
    assert!(status.success());
    let hwm_final = hwm_mib(&pid_s);
    let exit = child.wait().unwrap();
    let samples = sampler.finish();
    println!(
        "real serve: SIGTERM -> exit {:?} in {:.3}s; VmHWM just before exit >= {hwm_final:.1} MiB",
        exit.code(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "real serve: RSS profile (s:MiB) {}",
        profile_line(&samples, 0.1)
    );
}

fn main() {
    // As the `kernels` binary does.
    kernels::allocator::tune();
    if let Some(dir) = arg_str("--child-open") {
        let verify = match arg_str("--verify").as_deref() {
            Some("checkpoint") => VerifyOnOpen::FromCheckpoint,
            _ => VerifyOnOpen::Full,
        };
        child_open(Path::new(&dir), verify);
        return;
    }
    if let Some(dir) = arg_str("--child-sled-scan") {
        child_sled_scan(Path::new(&dir));
        return;
    }
    if let Some(dir) = arg_str("--child-breakdown") {
        child_breakdown(Path::new(&dir));
        return;
    }
    let n = arg_u64("--entries", 1_000_000);
    if flag("--check-build") {
        // Builds fresh ledgers with every receipt checked; a watchdog exits 3 on a stall.
        let rounds = arg_u64("--rounds", 1);
        let mut problems = 0;
        for r in 1..=rounds {
            let tmp = tempfile::tempdir().unwrap();
            let t = Instant::now();
            problems += build_ledger_checked(
                &tmp.path().join("data"),
                KERNEL_ID,
                n,
                arg_u64("--tasks", 64),
                arg_u64("--stall-secs", 20),
                arg_str("--checkpoint-every").map(|v| v.parse().unwrap()),
            );
            println!("check-build round {r}: {:.1}s", t.elapsed().as_secs_f64());
        }
        if problems > 0 {
            std::process::exit(1);
        }
        return;
    }
    let runs = arg_u64("--runs", 2);
    let requests = arg_u64("--requests", 20_000);
    let tasks = arg_u64("--tasks", 64);
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = arg_str("--dir")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("data"));
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();

    println!("ledger_scale: {n} entries in {}", dir.display());
    let snap = cpu_snap();
    let cpu0 = proc_cpu("self");
    let built = build_ledger(&dir, KERNEL_ID, n, tasks);
    let cpu = proc_cpu("self") - cpu0;
    println!(
        "build: {:.1}s (cpu {cpu:.1}s, others {:.1} cpu-s), data dir {:.1} MiB, builder VmHWM {:.1} MiB",
        built.as_secs_f64(),
        (snap.busy_since() - cpu).max(0.0),
        dir_bytes(&dir) as f64 / 1048576.0,
        hwm_mib("self")
    );

    let dir_s = dir.to_str().unwrap();
    // `--serve-only`: skip the in-process open measurements.
    let open_runs = if flag("--serve-only") { 0 } else { runs };
    for run in 1..=open_runs {
        for mode in ["full", "checkpoint"] {
            let snap = cpu_snap();
            let (v, wall) = spawn_child(&["--child-open", dir_s, "--verify", mode]);
            println!(
                "open (in-process child, verify={mode:<10}) run {run}: spawn -> open done {:.3}s (Ledger::open {:.3}s) len {} | VmHWM after open {:.1} MiB (RSS {:.1}) | verify_stored alone {:.3}s, VmHWM after {:.1} MiB | close {:.3}s | child wall {wall:.2}s, machine busy {:.1} cpu-s",
                v["since_spawn_s"].as_f64().unwrap(),
                v["open_s"].as_f64().unwrap(),
                v["len"],
                v["hwm_after_open_mib"].as_f64().unwrap(),
                v["rss_after_open_mib"].as_f64().unwrap(),
                v["verify_stored_s"].as_f64().unwrap(),
                v["hwm_after_verify_mib"].as_f64().unwrap(),
                v["close_s"].as_f64().unwrap(),
                snap.busy_since()
            );
        }
    }
    for run in 1..=open_runs {
        let (v, _) = spawn_child(&["--child-breakdown", dir_s]);
        let mut line = format!("open pieces run {run}:");
        for key in [
            "sled_open",
            "len",
            "checkpoint_read_decode",
            "verify_full",
            "verify_from_checkpoint",
            "replay_after_checkpoint",
            "scan_all_no_hash",
        ] {
            let s = &v[key];
            line.push_str(&format!(
                "\n    {key:<24} {:>7.3}s  VmHWM {:>6.1} MiB  RSS {:>6.1} MiB  {}",
                s["s"].as_f64().unwrap(),
                s["hwm_mib"].as_f64().unwrap(),
                s["rss_mib"].as_f64().unwrap(),
                s["extra"]
            ));
        }
        println!("{line}");
    }
    let scans: &[(&str, Option<&str>)] = if open_runs == 0 {
        &[]
    } else {
        &[("default malloc", None), ("MALLOC_ARENA_MAX=1", Some("1"))]
    };
    for &(label, env) in scans {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--child-sled-scan", dir_s]);
        if let Some(v) = env {
            cmd.env("MALLOC_ARENA_MAX", v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        let v: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap())
                .unwrap();
        let mut line = format!("sled scan alone ({label}):");
        for s in v.as_array().unwrap() {
            line.push_str(&format!("\n    {s}"));
        }
        println!("{line}");
    }
    if flag("--no-serve") {
        return;
    }
    for run in 1..=runs {
        println!("-- real service, run {run}");
        real_serve(&dir, &work, requests);
    }
}
