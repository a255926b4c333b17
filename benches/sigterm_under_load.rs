//! SIGTERM under load: no receipt without its entry.
//!
//! `cargo bench --bench sigterm_under_load [-- --tasks 64 --load-ms 3000 --rounds 3]`
//!
//! Each round starts the real service (`kernels serve`, release build, fresh
//! temp data dir, 127.0.0.1:0), drives it with `--tasks` concurrent tokio
//! tasks submitting `POST /v1/requests` with unique request ids, recording
//! every 200 receipt (request_id, evidence_hash, ledger_seq), and after
//! `--load-ms` sends SIGTERM (`kill -TERM`) while the load goes on. The
//! server must exit 0. Then, offline:
//! * `kernels verify --data-dir` must pass;
//! * `kernels export --data-dir` is parsed and every receipt must be there:
//!   same request_id at the same ledger_seq with entry_hash == evidence_hash;
//! * the service is restarted on the same dir and a sample of the receipted
//!   requests is submitted again: the kernel must answer the original receipt
//!   (idempotent retry), not decide again.
//!
//! Exits non-zero when any check fails.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

const AGENT_TOKEN: &str = "sigterm-agent-token-0001";

#[derive(Debug, Clone)]
struct Receipt {
    request_id: String,
    evidence_hash: String,
    ledger_seq: u64,
    decision: String,
    body: Value,
}

#[derive(Debug, Default)]
struct TaskOutcome {
    receipts: Vec<Receipt>,
    /// Non-200 answers by status (before and after the SIGTERM).
    statuses: HashMap<u16, u64>,
    /// Transport errors (refused, reset, closed) after the SIGTERM.
    errors_after_term: u64,
    /// Transport errors before the SIGTERM (should be 0).
    errors_before_term: u64,
    last_ok_after_term_ms: Option<f64>,
}

fn start_server(work: &Path, data: &Path) -> (Child, String) {
    let policy = work.join("policy.yaml");
    std::fs::write(
        &policy,
        "allowed_actors: [agent-001]\nallowed_tools: [echo]\nmax_intent_length: 1000\n",
    )
    .unwrap();
    let mut child = Command::new(kernels_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(data)
        .arg("--policy")
        .arg(&policy)
        .arg("--kernel-id")
        .arg("sigterm-001")
        .arg("--variant")
        .arg("strict")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .current_dir(work)
        .env_remove("KERNELS_CONFIG")
        .env("KERNELS_AGENT_TOKEN", AGENT_TOKEN)
        .env("KERNELS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kernels serve");
    let base = serve_address(&mut child, Duration::from_secs(60));
    (child, base)
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    for _ in 0..5000 {
        if let Ok(r) = client.get(format!("{base}/ready")).send().await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("{base} never became ready");
}

fn request_body(run: u64, task: u64, i: u64) -> Value {
    json!({
        "request_id": format!("st-{run}-{task}-{i}"),
        "actor": "agent-001",
        "intent": "echo a value back to the calling agent",
        "tool_call": {"name": "echo", "params": {"text": format!("hello {i}")}},
        "params": {"text": format!("hello {i}")},
    })
}

async fn submit(client: &reqwest::Client, base: &str, body: &Value) -> Result<(u16, Value), ()> {
    let r = client
        .post(format!("{base}/v1/requests"))
        .bearer_auth(AGENT_TOKEN)
        .json(body)
        .send()
        .await
        .map_err(|_| ())?;
    let status = r.status().as_u16();
    let bytes = r.bytes().await.map_err(|_| ())?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

fn round(run: u64, tasks: u64, load_ms: u64) -> bool {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().to_owned();
    let data = work.join("data");
    let (mut child, base) = start_server(&work, &data);
    let pid = child.id();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(tasks as usize * 2)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    rt.block_on(wait_ready(&client, &base));

    let termed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let term_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let (outcomes, exit, shutdown_s, term_elapsed) = rt.block_on(async {
        let mut handles = Vec::new();
        for t in 0..tasks {
            let client = client.clone();
            let base = base.clone();
            let termed = termed.clone();
            let stop = stop.clone();
            let sent = sent.clone();
            let term_at = term_at.clone();
            handles.push(tokio::spawn(async move {
                let mut out = TaskOutcome::default();
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let body = request_body(run, t, i);
                    i += 1;
                    let was_termed = termed.load(Ordering::Acquire);
                    sent.fetch_add(1, Ordering::Relaxed);
                    match submit(&client, &base, &body).await {
                        Ok((200, receipt)) => {
                            if was_termed || termed.load(Ordering::Acquire) {
                                let at = *term_at.lock().unwrap();
                                if let Some(at) = at {
                                    out.last_ok_after_term_ms =
                                        Some(at.elapsed().as_secs_f64() * 1000.0);
                                }
                            }
                            out.receipts.push(Receipt {
                                request_id: receipt["request_id"].as_str().unwrap_or("").into(),
                                evidence_hash: receipt["evidence_hash"]
                                    .as_str()
                                    .unwrap_or("")
                                    .into(),
                                ledger_seq: receipt["ledger_seq"].as_u64().unwrap_or(u64::MAX),
                                decision: receipt["decision"].as_str().unwrap_or("").into(),
                                body,
                            });
                        }
                        Ok((status, _)) => *out.statuses.entry(status).or_default() += 1,
                        Err(()) => {
                            if termed.load(Ordering::Acquire) {
                                out.errors_after_term += 1;
                                // The server is going away: back off a little.
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            } else {
                                out.errors_before_term += 1;
                            }
                        }
                    }
                }
                out
            }));
        }
        tokio::time::sleep(Duration::from_millis(load_ms)).await;
        let before_term = sent.load(Ordering::Relaxed);
        *term_at.lock().unwrap() = Some(Instant::now());
        termed.store(true, Ordering::Release);
        let term_elapsed = t0.elapsed().as_secs_f64();
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        let started = Instant::now();
        // Wait for the exit without blocking the runtime.
        let exit = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                break child.wait().unwrap();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let shutdown_s = started.elapsed().as_secs_f64();
        // Keep the load on a little after the exit (connections refused), then stop.
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.store(true, Ordering::Release);
        let mut outcomes = Vec::new();
        for h in handles {
            outcomes.push(h.await.unwrap());
        }
        eprintln!("  sent {before_term} requests before SIGTERM");
        (outcomes, exit, shutdown_s, term_elapsed)
    });

    let receipts: Vec<Receipt> = outcomes.iter().flat_map(|o| o.receipts.clone()).collect();
    let mut statuses: HashMap<u16, u64> = HashMap::new();
    for o in &outcomes {
        for (s, n) in &o.statuses {
            *statuses.entry(*s).or_default() += n;
        }
    }
    let errors_after: u64 = outcomes.iter().map(|o| o.errors_after_term).sum();
    let errors_before: u64 = outcomes.iter().map(|o| o.errors_before_term).sum();
    let last_ok_after_term = outcomes
        .iter()
        .filter_map(|o| o.last_ok_after_term_ms)
        .fold(None::<f64>, |a, b| Some(a.map_or(b, |a| a.max(b))));
    println!(
        "round {run}: SIGTERM after {term_elapsed:.2}s of load; server exit {:?} {shutdown_s:.3}s after SIGTERM; {} receipts (200), non-200 {:?}, transport errors before/after SIGTERM {errors_before}/{errors_after}; last 200 received {:.1} ms after SIGTERM",
        exit.code(),
        receipts.len(),
        statuses,
        last_ok_after_term.unwrap_or(f64::NAN)
    );
    let mut ok = true;
    if exit.code() != Some(0) {
        println!("  FAIL: exit code {:?}", exit.code());
        ok = false;
    }
    if errors_before > 0 {
        println!("  FAIL: {errors_before} transport errors before the SIGTERM");
        ok = false;
    }
    if let Some(r) = receipts.iter().find(|r| r.decision != "ALLOW") {
        println!("  FAIL: a receipt is not an ALLOW: {r:?}");
        ok = false;
    }

    // Offline: verify, then export and look up every receipt.
    let bin = kernels_bin();
    let verify = Command::new(&bin)
        .args(["verify", "--json", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&verify.stdout).unwrap_or(Value::Null);
    if !verify.status.success() || report["valid"] != true {
        println!(
            "  FAIL: kernels verify --data-dir: exit {:?} {}",
            verify.status.code(),
            String::from_utf8_lossy(&verify.stdout)
        );
        ok = false;
    }
    let bundle_path = work.join("export.json");
    let export = Command::new(&bin)
        .arg("export")
        .arg("--data-dir")
        .arg(&data)
        .arg("--out")
        .arg(&bundle_path)
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "kernels export failed: {}",
        String::from_utf8_lossy(&export.stderr)
    );
    let mut by_id: HashMap<String, (u64, String)> = HashMap::new();
    let file = std::io::BufReader::new(std::fs::File::open(&bundle_path).unwrap());
    kernels::bundle::read_bundle(file, |raw| {
        let e: kernels::entry::Entry = serde_json::from_slice(&raw).unwrap();
        by_id.insert(
            e.request_id.as_str().to_owned(),
            (e.ledger_seq, e.entry_hash),
        );
    })
    .unwrap();
    let entries = report["entries_verified"].as_u64().unwrap_or(0);
    let (mut missing, mut mismatched) = (0u64, 0u64);
    for r in &receipts {
        match by_id.get(&r.request_id) {
            None => {
                missing += 1;
                if missing <= 3 {
                    println!("  FAIL: receipt {} not in the ledger", r.request_id);
                }
            }
            Some((seq, hash)) if *seq != r.ledger_seq || *hash != r.evidence_hash => {
                mismatched += 1;
                if mismatched <= 3 {
                    println!(
                        "  FAIL: receipt {} says seq {} hash {}, ledger has seq {seq} hash {hash}",
                        r.request_id, r.ledger_seq, r.evidence_hash
                    );
                }
            }
            Some(_) => {}
        }
    }
    let load_entries = by_id.keys().filter(|k| k.starts_with("st-")).count() as u64;
    println!(
        "  ledger: {entries} entries, chain valid: {}; receipts found {}/{} (missing {missing}, mismatched {mismatched}); load entries without a receipt (answered after the client gave up, or in flight): {}",
        report["valid"],
        receipts.len() as u64 - missing - mismatched,
        receipts.len(),
        load_entries.saturating_sub(receipts.len() as u64 - missing)
    );
    if missing > 0 || mismatched > 0 {
        ok = false;
    }

    // Restart: retried requests get their original receipts.
    let (mut child, base) = start_server(&work, &data);
    let sample: Vec<&Receipt> = receipts
        .iter()
        .step_by((receipts.len() / 200).max(1))
        .collect();
    let (same, different) = rt.block_on(async {
        wait_ready(&client, &base).await;
        let (mut same, mut different) = (0u64, 0u64);
        for r in &sample {
            match submit(&client, &base, &r.body).await {
                Ok((200, v))
                    if v["evidence_hash"].as_str() == Some(&r.evidence_hash)
                        && v["ledger_seq"].as_u64() == Some(r.ledger_seq) =>
                {
                    same += 1
                }
                other => {
                    different += 1;
                    if different <= 3 {
                        println!("  FAIL: retry of {} after restart: {other:?}", r.request_id);
                    }
                }
            }
        }
        (same, different)
    });
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let exit2 = child.wait().unwrap();
    println!(
        "  restart: {same}/{} retried receipts identical after restart ({different} different); second exit {:?}",
        sample.len(),
        exit2.code()
    );
    if different > 0 || exit2.code() != Some(0) {
        ok = false;
    }
    println!("  round {run}: {}", if ok { "OK" } else { "FAILED" });
    ok
}

fn main() {
    // As the `kernels` binary does.
    kernels::allocator::tune();
    let tasks = arg_u64("--tasks", 64);
    let load_ms = arg_u64("--load-ms", 3000);
    let rounds = arg_u64("--rounds", 3);
    let run0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    println!(
        "sigterm_under_load: {tasks} tasks, SIGTERM after {load_ms} ms, {rounds} rounds, binary {}",
        kernels_bin().display()
    );
    let mut all_ok = true;
    for r in 0..rounds {
        all_ok &= round(run0 * 100 + r, tasks, load_ms);
    }
    println!(
        "sigterm_under_load: {}",
        if all_ok { "ALL ROUNDS OK" } else { "FAILURES" }
    );
    if !all_ok {
        std::process::exit(1);
    }
}
