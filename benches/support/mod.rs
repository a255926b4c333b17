//! Shared helpers of the bench binaries: argument parsing, peak-memory
//! readings from `/proc`, realistic entries and ledgers.
//!
//! Each bench binary includes this with `mod support;` and uses what it needs.

#![allow(dead_code, unreachable_pub, missing_docs)]

/// File helpers: the integration tests' own (`tests/support/fs.rs`), one
/// definition for both.
#[path = "../../tests/support/fs.rs"]
pub mod fs;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kernels::entry::{EntryBody, GENESIS_HASH};
use kernels::kernel::{Policy, RawRequest, Variant};
use kernels::ledger::{Ledger, LedgerOptions, SystemClock};
use kernels::metrics::Metrics;

/// The value after `--name` on the command line.
pub fn arg_str(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// A numeric argument (accepts `1_000_000`).
pub fn arg_u64(name: &str, default: u64) -> u64 {
    arg_str(name)
        .map(|v| {
            v.replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("{name} {v}: not a number"))
        })
        .unwrap_or(default)
}

/// A comma-separated list of numbers.
pub fn arg_list(name: &str, default: &[u64]) -> Vec<u64> {
    match arg_str(name) {
        None => default.to_vec(),
        Some(v) => v
            .split(',')
            .map(|p| {
                p.trim()
                    .replace('_', "")
                    .parse()
                    .unwrap_or_else(|_| panic!("{name} {v}: not a list of numbers"))
            })
            .collect(),
    }
}

/// Whether `--name` is on the command line.
pub fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// A field of `/proc/<pid>/status` in kB (`pid` may be `"self"`).
pub fn status_kb(pid: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Peak resident set size (VmHWM) in MiB.
pub fn hwm_mib(pid: &str) -> f64 {
    status_kb(pid, "VmHWM").unwrap_or(0) as f64 / 1024.0
}

/// Current resident set size (VmRSS) in MiB.
pub fn rss_mib(pid: &str) -> f64 {
    status_kb(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0
}

/// Resets the peak RSS of `pid` to its current RSS (Linux ≥ 4.0:
/// `echo 5 > /proc/PID/clear_refs`); false when the kernel refuses.
pub fn reset_peak(pid: &str) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), b"5").is_ok()
}

/// The release `kernels` binary cargo built beside this bench.
pub fn kernels_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kernels"))
}

/// A small deterministic PRNG (splitmix64): realistic variety without a seed dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// 64 lowercase hex characters (a SHA-256 look-alike).
    pub fn hex64(&mut self) -> String {
        let mut s = String::with_capacity(64);
        for _ in 0..4 {
            s.push_str(&format!("{:016x}", self.next()));
        }
        s
    }
}

/// Intents of about 40 characters, as agents write them.
pub const INTENTS: [&str; 8] = [
    "search the internal docs for the Q3 report",
    "read the customer ticket and summarise it",
    "write the summary to the shared notes file",
    "look up the current price of the product",
    "fetch the latest build log for the service",
    "list the open incidents assigned to team A",
    "compute the monthly totals for the invoice",
    "send the weekly status update to the team",
];

/// Tool names of a typical deployment.
pub const TOOLS: [&str; 6] = [
    "search",
    "read_file",
    "write_file",
    "http_get",
    "sql_query",
    "send_email",
];

/// A UUID-shaped request id.
pub fn request_id(rng: &mut Rng) -> String {
    let a = rng.next();
    let b = rng.next();
    format!(
        "req-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// The body of the `i`-th entry of a realistic decision ledger: 90 % ALLOW,
/// 10 % DENY with a jurisdiction error; params and evidence hashes.
pub fn realistic_body(i: u64, rng: &mut Rng) -> EntryBody {
    let deny = rng.below(10) == 0;
    let tool = TOOLS[rng.below(TOOLS.len() as u64) as usize];
    EntryBody {
        ts_ms: 1_760_000_000_000 + i * 3,
        request_id: request_id(rng).into(),
        actor: format!("agent-{:03}", 1 + rng.below(64)).into(),
        intent: INTENTS[rng.below(INTENTS.len() as u64) as usize].into(),
        decision: if deny { "DENY" } else { "ALLOW" }.into(),
        state_from: "IDLE".into(),
        state_to: "IDLE".into(),
        tool_name: Some(tool.into()),
        params_hash: Some(rng.hex64()),
        evidence_hash: (rng.below(2) == 0).then(|| rng.hex64()),
        error: deny.then(|| format!("Jurisdiction violation: tool '{tool}' is not allowed")),
        ..EntryBody::default()
    }
}

/// Writes a valid `n`-entry evidence bundle of realistic entries to `path`
/// (streamed: flat memory). Returns (root hash, bytes written).
pub fn write_bundle(path: &Path, n: u64) -> (String, u64) {
    use kernels::bundle::{BundleWriter, ExportHeader};
    use std::io::BufWriter;
    let mut rng = Rng::new(0x5eed);
    // The root hash goes in the header, which comes first: build the chain
    // once to learn it (cheap next to writing), then again to write it.
    let mut prev = GENESIS_HASH.to_owned();
    for i in 0..n {
        prev = realistic_body(i, &mut rng).seal(i, &prev).entry_hash;
    }
    let root = prev;
    let header = ExportHeader {
        kernel_id: "bench-001",
        variant: "strict",
        exported_at_ms: 1_760_000_000_000 + n * 3,
        from_seq: None,
        anchor_hash: None,
        root_hash: &root,
    };
    let file = std::fs::File::create(path).unwrap();
    let mut w = BundleWriter::start(BufWriter::with_capacity(1 << 20, file), &header).unwrap();
    let mut rng = Rng::new(0x5eed);
    let mut prev = GENESIS_HASH.to_owned();
    for i in 0..n {
        let e = realistic_body(i, &mut rng).seal(i, &prev);
        w.entry(&e).unwrap();
        prev = e.entry_hash;
    }
    w.finish().unwrap();
    (root, std::fs::metadata(path).unwrap().len())
}

/// The policy the ledger benches run with.
pub fn bench_policy() -> Policy {
    Policy::from_yaml(
        "allowed_actors: ['*']\nallowed_tools: [search, read_file, write_file, http_get, sql_query, send_email]\nmax_intent_length: 1000\n",
    )
    .unwrap()
}

/// A realistic request (external tools are authorised but not run).
pub fn realistic_request(task: u64, i: u64, rng: &mut Rng) -> serde_json::Value {
    let tool = TOOLS[rng.below(TOOLS.len() as u64) as usize];
    serde_json::json!({
        "request_id": format!("t{task:03}-{i:08}-{}", request_id(rng)),
        "actor": format!("agent-{:03}", 1 + rng.below(64)),
        "intent": INTENTS[rng.below(INTENTS.len() as u64) as usize],
        "tool_call": {"name": tool, "params": {"path": format!("/data/{}.txt", rng.below(10_000)), "limit": 20}},
        "params": {"path": format!("/data/{}.txt", rng.below(10_000)), "limit": 20},
        "evidence": format!("ticket #{} opened by the user", rng.below(1_000_000)),
    })
}

/// Opens (or creates) the benches' ledger in `dir`, as the service would.
fn open_bench_ledger(dir: &Path, kernel_id: &str, checkpoint_every: Option<u64>) -> Ledger {
    let mut options = LedgerOptions::service(kernel_id, Variant::Strict, bench_policy());
    options.external_tools = TOOLS.iter().map(|t| t.to_string()).collect();
    if let Some(every) = checkpoint_every {
        options.checkpoint_every = every;
    }
    Ledger::open(
        dir,
        options,
        Arc::new(SystemClock),
        Arc::new(Metrics::new()),
    )
    .expect("open the ledger to build")
}

/// The address a spawned `kernels serve` prints ("serving on ADDR") on its
/// stderr; the rest of its stderr is echoed, indented.
pub fn serve_address(child: &mut std::process::Child, limit: Duration) -> String {
    use std::io::BufRead;
    let stderr = child
        .stderr
        .take()
        .expect("kernels serve with piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.split("serving on ").nth(1) {
                let _ = tx.send(rest.trim().to_owned());
            } else if !line.is_empty() {
                eprintln!("  [serve] {line}");
            }
        }
    });
    rx.recv_timeout(limit)
        .expect("kernels serve did not print its address")
}

/// Builds (or extends) a ledger in `dir` to at least `n` entries through the
/// real submit path, from `tasks` concurrent tokio tasks. Prints progress.
pub fn build_ledger(dir: &Path, kernel_id: &str, n: u64, tasks: u64) -> Duration {
    let ledger = open_bench_ledger(dir, kernel_id, None);
    let have = ledger.durable_len();
    let started = Instant::now();
    if have < n {
        let want = n - have;
        let per_task = want.div_ceil(tasks);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let base = have; // distinct request ids across extensions
        rt.block_on(async {
            let mut handles = Vec::new();
            for t in 0..tasks {
                let ledger = ledger.clone();
                handles.push(tokio::spawn(async move {
                    let mut rng = Rng::new(base ^ (t << 40) ^ 0xb111d);
                    for i in 0..per_task {
                        let raw = RawRequest::from_value(realistic_request(t, base + i, &mut rng))
                            .unwrap();
                        ledger.submit(&raw).await.unwrap();
                        if t == 0 && i % (per_task / 10).max(1) == 0 && i > 0 {
                            eprintln!(
                                "  build: {} entries, {:.0}/s",
                                ledger.durable_len(),
                                (ledger.durable_len() - base) as f64
                                    / started.elapsed().as_secs_f64()
                            );
                        }
                    }
                }));
            }
            for h in handles {
                h.await.unwrap();
            }
        });
    }
    ledger.close().unwrap();
    started.elapsed()
}

/// Total size of the files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                total += dir_bytes(&e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

/// A snapshot of the machine's CPU counters (`/proc/stat`, all cores), to
/// tell how busy the machine was during a measurement (other sessions may
/// share it).
#[derive(Debug, Clone, Copy)]
pub struct CpuSnap {
    busy: u64,
    total: u64,
    at: Instant,
}

/// Clock ticks per second of `/proc/stat` and `/proc/PID/stat` (USER_HZ).
pub const TICKS: f64 = 100.0;

pub fn cpu_snap() -> CpuSnap {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let nums: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = nums.iter().take(8).sum();
    let idle = nums.get(3).copied().unwrap_or(0) + nums.get(4).copied().unwrap_or(0);
    CpuSnap {
        busy: total - idle,
        total,
        at: Instant::now(),
    }
}

impl CpuSnap {
    /// CPU-seconds the whole machine spent busy since `self`.
    pub fn busy_since(&self) -> f64 {
        let now = cpu_snap();
        (now.busy - self.busy) as f64 / TICKS
    }

    /// Wall seconds since `self`.
    pub fn wall_since(&self) -> f64 {
        self.at.elapsed().as_secs_f64()
    }
}

/// CPU-seconds (user + system) used so far by `pid` (`"self"` allowed),
/// all threads, from `/proc/PID/stat`.
pub fn proc_cpu(pid: &str) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = text.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime is field 14 and stime 15 of the whole line; here shifted by 3.
    (ticks(11) + ticks(12)) as f64 / TICKS
}

/// What one timed child run measured.
#[derive(Debug, Clone)]
pub struct Timed {
    pub code: i32,
    pub stdout: String,
    pub wall: f64,
    pub max_rss_mib: f64,
    /// user + system CPU-seconds of the child.
    pub cpu: f64,
    /// CPU-seconds the rest of the machine used meanwhile (noise).
    pub others_cpu: f64,
}

/// Runs `cmd` under `/usr/bin/time -v`: exit code, stdout, wall seconds,
/// maximum RSS, CPU time, and how much CPU the rest of the machine used.
pub fn run_timed(cmd: &mut std::process::Command) -> Timed {
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let snap = cpu_snap();
    let out = std::process::Command::new("/usr/bin/time")
        .arg("-v")
        .arg(program)
        .args(args)
        .output()
        .expect("run /usr/bin/time");
    let wall = snap.wall_since();
    let busy = snap.busy_since();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let field = |name: &str| -> f64 {
        stderr
            .lines()
            .find(|l| l.contains(name))
            .and_then(|l| l.rsplit(':').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    let cpu = field("User time (seconds)") + field("System time (seconds)");
    Timed {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        wall,
        max_rss_mib: field("Maximum resident set size") / 1024.0,
        cpu,
        others_cpu: (busy - cpu).max(0.0),
    }
}

/// One receipt as a submitter saw it.
#[derive(Debug, Clone)]
pub struct SeenReceipt {
    pub task: u64,
    pub i: u64,
    pub request_id: String,
    pub ledger_seq: u64,
    pub evidence_hash: String,
}

/// Like [`build_ledger`] on a fresh dir, but every receipt is kept and
/// checked against the stored entries afterwards (same request id at the same
/// seq with the same hash), and a watchdog reports (and exits 3) when no
/// submission completes for `stall_secs`. Returns the number of problems.
pub fn build_ledger_checked(
    dir: &Path,
    kernel_id: &str,
    n: u64,
    tasks: u64,
    stall_secs: u64,
    checkpoint_every: Option<u64>,
) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    let ledger = open_bench_ledger(dir, kernel_id, checkpoint_every);
    let per_task = n.div_ceil(tasks);
    let progress: Arc<Vec<AtomicU64>> = Arc::new((0..tasks).map(|_| AtomicU64::new(0)).collect());
    let in_flight: Arc<Vec<std::sync::Mutex<String>>> = Arc::new(
        (0..tasks)
            .map(|_| std::sync::Mutex::new(String::new()))
            .collect(),
    );
    {
        let progress = progress.clone();
        let in_flight = in_flight.clone();
        let ledger = ledger.clone();
        let watch_dir = dir.to_owned();
        std::thread::spawn(move || {
            let mut last = u64::MAX;
            let mut still = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(500));
                let total: u64 = progress.iter().map(|p| p.load(Ordering::Relaxed)).sum();
                if total == tasks * per_task {
                    return;
                }
                if total != last {
                    last = total;
                    still = Instant::now();
                } else if still.elapsed().as_secs() >= stall_secs {
                    eprintln!(
                        "WATCHDOG: no submission completed for {stall_secs}s; done {total}/{}; durable_len {}; state head len {}; ledger ready (not poisoned/closed) {}",
                        tasks * per_task,
                        ledger.durable_len(),
                        ledger.state().head.len,
                        ledger.is_ready()
                    );
                    for l in ledger
                        .metrics()
                        .render()
                        .lines()
                        .filter(|l| l.starts_with("kernels_commit") && !l.contains("bucket"))
                    {
                        eprintln!("WATCHDOG: metric {l}");
                    }
                    for (t, p) in progress.iter().enumerate() {
                        let p = p.load(Ordering::Relaxed);
                        if p < per_task {
                            eprintln!(
                                "WATCHDOG: task {t} stuck at submission {p}: {}",
                                in_flight[t].lock().unwrap()
                            );
                        }
                    }
                    let committed_cp = ledger
                        .store()
                        .meta(kernels::store::meta::CHECKPOINT)
                        .ok()
                        .flatten()
                        .and_then(|b| {
                            serde_json::from_slice::<kernels::ledger::Checkpoint>(&b).ok()
                        })
                        .map(|c| c.len);
                    eprintln!(
                        "WATCHDOG: last committed state checkpoint covers len {committed_cp:?}; stuck entry's len {}",
                        ledger.state().head.len
                    );
                    // Nudge: one more submission. If the stuck entry sits in the
                    // pending batch, this one finds the batch non-empty and does
                    // not wake the flusher either; if the flusher just never saw
                    // a wake-up, this one wakes it and both complete.
                    let (tx, rx) = std::sync::mpsc::channel();
                    let nudger = ledger.clone();
                    std::thread::spawn(move || {
                        let raw = RawRequest::from_value(serde_json::json!({
                            "request_id": "watchdog-nudge", "actor": "agent-001",
                            "intent": "nudge", "tool_call": {"name": "search", "params": {}}
                        }))
                        .unwrap();
                        let r = nudger
                            .submit_begin(&raw)
                            .map(|(rc, d)| (rc.ledger_seq, d.wait_blocking()));
                        let _ = tx.send(format!("{r:?}"));
                    });
                    let nudge = rx.recv_timeout(Duration::from_secs(5));
                    std::thread::sleep(Duration::from_millis(500));
                    let total: u64 = progress.iter().map(|p| p.load(Ordering::Relaxed)).sum();
                    eprintln!(
                        "WATCHDOG: nudge -> {nudge:?}; afterwards done {total}; durable_len {}; head len {}",
                        ledger.durable_len(),
                        ledger.state().head.len
                    );
                    // exit() skips destructors: remove the temp data dir here.
                    let _ = std::fs::remove_dir_all(&watch_dir);
                    if let Some(parent) = watch_dir.parent() {
                        let _ = std::fs::remove_dir(parent);
                    }
                    std::process::exit(3);
                }
            }
        });
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let receipts: Vec<SeenReceipt> = rt.block_on(async {
        let mut handles = Vec::new();
        for t in 0..tasks {
            let ledger = ledger.clone();
            let progress = progress.clone();
            let in_flight = in_flight.clone();
            handles.push(tokio::spawn(async move {
                let mut rng = Rng::new(0xc4ec ^ (t << 40));
                let mut seen = Vec::with_capacity(per_task as usize);
                for i in 0..per_task {
                    let value = realistic_request(t, i, &mut rng);
                    let id = value["request_id"].as_str().unwrap().to_owned();
                    *in_flight[t as usize].lock().unwrap() = id.clone();
                    let raw = RawRequest::from_value(value).unwrap();
                    let receipt = ledger.submit(&raw).await.unwrap();
                    seen.push(SeenReceipt {
                        task: t,
                        i,
                        request_id: id,
                        ledger_seq: receipt.ledger_seq,
                        evidence_hash: receipt.evidence_hash.clone(),
                    });
                    progress[t as usize].fetch_add(1, Ordering::Relaxed);
                }
                seen
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.unwrap());
        }
        all
    });
    ledger.close().unwrap();
    let len = ledger.durable_len();
    let mut by_id = std::collections::HashMap::new();
    for e in ledger.entries(0, len) {
        let e = e.unwrap();
        by_id.insert(
            e.request_id.as_str().to_owned(),
            (e.ledger_seq, e.entry_hash),
        );
    }
    let mut problems = 0;
    for r in &receipts {
        match by_id.get(&r.request_id) {
            Some((seq, hash)) if *seq == r.ledger_seq && *hash == r.evidence_hash => {}
            other => {
                problems += 1;
                if problems <= 5 {
                    eprintln!(
                        "RECEIPT PROBLEM: task {} i {} {} receipt seq {} hash {}: ledger has {other:?}",
                        r.task, r.i, r.request_id, r.ledger_seq, r.evidence_hash
                    );
                }
            }
        }
    }
    let report = ledger.verify_stored();
    println!(
        "checked build: {} receipts, {} entries stored, {problems} receipt problems, chain valid {}",
        receipts.len(),
        len,
        report.valid
    );
    problems + u64::from(!report.valid)
}
