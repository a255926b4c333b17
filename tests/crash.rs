//! Crash safety of the real binary: `kernels serve` is SIGKILLed at random
//! moments under concurrent load, again and again on the same data dir, and
//! every receipt a client received before the kill must be in the ledger
//! afterwards, with the same hash and seq, and be answered again unchanged.
//!
//! Run with `cargo test --test crash -- --nocapture` to see the summary.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::Rng;
use serde_json::{Value, json};
use support::http;
use support::process::{AGENT, AUDITOR, ServeConfig, Server, command, run, run_with};

/// Kill-and-restart cycles.
const CYCLES: usize = 20;
/// Concurrent clients during each cycle's load.
const CLIENTS: usize = 16;
/// The kill comes this many ms (uniformly random) after the load starts.
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 20..=400;

/// One request the clients sent, and the receipt if one came back.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    body: Value,
    receipt: Option<Value>,
}

/// The request with id `id`; every fourth one is from an actor the policy
/// does not know, so DENY decisions are exercised too.
fn body(id: &str, n: u64) -> Value {
    let actor = if n % 4 == 3 { "agent-009" } else { "agent-001" };
    json!({"request_id": id, "actor": actor, "intent": "crash test",
           "tool_call": {"name": "echo", "params": {"text": id}}})
}

/// One client: submits as fast as it can until told to stop or until the
/// server is gone; answers everything it sent.
async fn client_loop(
    client: reqwest::Client,
    url: String,
    cycle: usize,
    task: usize,
    stop: Arc<AtomicBool>,
) -> Vec<Sent> {
    let mut sent = Vec::new();
    for n in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let id = format!("c{cycle}-t{task}-{n}");
        let body = body(&id, n);
        // Recorded as attempted before it leaves: it may be decided even if
        // no answer ever comes back.
        sent.push(Sent {
            id: id.clone(),
            body: body.clone(),
            receipt: None,
        });
        let answer = client
            .post(&url)
            .bearer_auth(AGENT)
            .json(&body)
            .send()
            .await;
        let resp = match answer {
            Ok(resp) => resp,
            Err(_) => break, // the server is gone
        };
        let status = resp.status().as_u16();
        let Ok(text) = resp.text().await else { break };
        assert_eq!(
            status, 200,
            "{id}: every answered submission is a receipt: {text}"
        );
        let receipt: Value = serde_json::from_str(&text).expect("a receipt is JSON");
        assert_eq!(receipt["request_id"], id.as_str(), "{receipt}");
        let want = if n % 4 == 3 { "DENY" } else { "ALLOW" };
        assert_eq!(receipt["decision"], want, "{receipt}");
        assert_eq!(receipt["evidence_hash"].as_str().unwrap().len(), 64);
        assert!(receipt["ledger_seq"].is_u64(), "{receipt}");
        sent.last_mut().expect("just pushed").receipt = Some(receipt);
    }
    sent
}

/// Checks, on a freshly restarted server, that every acknowledged receipt is
/// in the ledger with its hash and seq, and that a retry answers it unchanged.
async fn check_survivors(client: &reqwest::Client, server: &Server, acked: &[&Sent]) {
    if acked.is_empty() {
        return;
    }
    let seqs: BTreeMap<u64, &Sent> = acked
        .iter()
        .map(|s| {
            (
                s.receipt.as_ref().unwrap()["ledger_seq"].as_u64().unwrap(),
                *s,
            )
        })
        .collect();
    assert_eq!(seqs.len(), acked.len(), "two receipts share a ledger_seq");
    let (first, last) = (
        *seqs.keys().next().unwrap(),
        *seqs.keys().next_back().unwrap(),
    );
    let (code, status) = http::get(client, &server.url("/v1/status"), AUDITOR).await;
    assert_eq!(code, 200, "{status}");
    assert!(
        status["ledger_length"].as_u64().unwrap() > last,
        "acknowledged entry {last} is missing after the restart: {status}"
    );

    // The entries of the acknowledged range, a page at a time.
    let mut found: BTreeMap<u64, Value> = BTreeMap::new();
    let mut from = first;
    while from <= last {
        let (code, page) = http::get(
            client,
            &server.url(&format!("/v1/entries?from_seq={from}&limit=1000")),
            AUDITOR,
        )
        .await;
        assert_eq!(code, 200, "{page}");
        let entries = page["entries"].as_array().unwrap();
        assert!(!entries.is_empty(), "no entries from {from}: {page}");
        for e in entries {
            found.insert(e["ledger_seq"].as_u64().unwrap(), e.clone());
        }
        from = entries.last().unwrap()["ledger_seq"].as_u64().unwrap() + 1;
    }
    for (seq, sent) in &seqs {
        let receipt = sent.receipt.as_ref().unwrap();
        let entry = found
            .get(seq)
            .unwrap_or_else(|| panic!("acknowledged entry {seq} ({}) is gone", sent.id));
        assert_eq!(entry["request_id"], sent.id.as_str(), "entry {seq}");
        assert_eq!(
            entry["entry_hash"], receipt["evidence_hash"],
            "entry {seq} ({}) changed after the crash",
            sent.id
        );
        assert_eq!(entry["decision"], receipt["decision"], "entry {seq}");
    }

    // Retrying an acknowledged request answers the original receipt.
    let url = server.url("/v1/requests");
    let retries: Vec<(&Sent, u16, Value)> = futures::stream::iter(acked.iter().copied())
        .map(|sent| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let (code, again) = http::post(&client, &url, AGENT, &sent.body).await;
                (sent, code, again)
            }
        })
        .buffer_unordered(CLIENTS)
        .collect()
        .await;
    for (sent, code, again) in retries {
        assert_eq!(code, 200, "retry of {}: {again}", sent.id);
        assert_eq!(
            &again,
            sent.receipt.as_ref().unwrap(),
            "a retry of {} must answer the original receipt",
            sent.id
        );
    }
    let (_, after) = http::get(client, &server.url("/v1/status"), AUDITOR).await;
    assert_eq!(
        after["ledger_length"], status["ledger_length"],
        "retries record nothing new"
    );
}

/// A service in `dir` (data in `dir/data`) with the policy `policy_yaml`.
fn serve_config(dir: &Path, kernel_id: &str, policy_yaml: &str) -> ServeConfig {
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, policy_yaml).unwrap();
    ServeConfig {
        cwd: dir.to_owned(),
        data_dir: dir.join("data"),
        policy,
        kernel_id: kernel_id.into(),
    }
}

fn verify_data_dir(cwd: &Path, data: &str) -> u64 {
    let out = run(cwd, &["verify", "--data-dir", data, "--json"], None);
    out.expect_code(0, "verify --data-dir");
    let report = out.json();
    assert_eq!(report["valid"], true, "{report}");
    report["entries_verified"].as_u64().unwrap()
}

#[test]
fn acknowledged_receipts_survive_sigkill_at_random_moments() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = serve_config(
        tmp.path(),
        "crash-kernel",
        "allowed_actors: [agent-001, agent-002]\nallowed_tools: [echo, add]\n",
    );
    let data = cfg.data_dir.to_str().unwrap().to_owned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let mut rng = rand::rng();
    let mut all: Vec<Sent> = Vec::new();
    let mut previous: Vec<Sent> = Vec::new();
    let mut delays = Vec::new();

    for cycle in 0..CYCLES {
        let server = Server::start(&cfg);
        let client = http::client();
        rt.block_on(async {
            let acked: Vec<&Sent> = previous.iter().filter(|s| s.receipt.is_some()).collect();
            check_survivors(&client, &server, &acked).await;
            let (code, status) = http::get(&client, &server.url("/v1/status"), AUDITOR).await;
            assert_eq!(code, 200);
            assert_eq!(status["starts"], cycle, "{status}");
            assert_eq!(status["state"], "IDLE", "{status}");
        });

        // Load, then a SIGKILL at a random moment.
        let stop = Arc::new(AtomicBool::new(false));
        let url = server.url("/v1/requests");
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|task| {
                rt.spawn(client_loop(
                    client.clone(),
                    url.clone(),
                    cycle,
                    task,
                    stop.clone(),
                ))
            })
            .collect();
        let delay = rng.random_range(KILL_AFTER_MS);
        delays.push(delay);
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(delay)).await });
        server.kill();
        stop.store(true, Ordering::Relaxed);
        previous = rt.block_on(async {
            let mut sent = Vec::new();
            for t in tasks {
                sent.extend(t.await.expect("a client task"));
            }
            sent
        });
        all.extend(previous.iter().cloned());

        // What a SIGKILL left on disk verifies on its own.
        verify_data_dir(tmp.path(), &data);
    }

    // A last start checks the last cycle, and stops cleanly.
    let server = Server::start(&cfg);
    let client = http::client();
    let length = rt.block_on(async {
        let acked: Vec<&Sent> = previous.iter().filter(|s| s.receipt.is_some()).collect();
        check_survivors(&client, &server, &acked).await;
        let (_, status) = http::get(&client, &server.url("/v1/status"), AUDITOR).await;
        assert_eq!(status["starts"], CYCLES, "{status}");
        status["ledger_length"].as_u64().unwrap()
    });
    let (code, stderr) = server.terminate();
    assert_eq!(code, Some(0), "{stderr}");

    assert_eq!(verify_data_dir(tmp.path(), &data), length);
    let out = run(tmp.path(), &["export", "--data-dir", &data], None);
    out.expect_code(0, "export");
    let bundle = out.json();
    let entries = bundle["ledger_entries"].as_array().unwrap();
    assert_eq!(entries.len() as u64, length);

    // Every acknowledged receipt, from every cycle, is in the final export.
    let acked: Vec<&Sent> = all.iter().filter(|s| s.receipt.is_some()).collect();
    assert!(
        acked.len() >= CYCLES,
        "the load must get receipts before the kills: only {}",
        acked.len()
    );
    for sent in &acked {
        let r = sent.receipt.as_ref().unwrap();
        let e = &entries[r["ledger_seq"].as_u64().unwrap() as usize];
        assert_eq!(e["request_id"], sent.id.as_str());
        assert_eq!(e["entry_hash"], r["evidence_hash"], "{}", sent.id);
    }

    // The entry count adds up: one create, one start per restart, and one
    // decision per request that was decided — each at most once, and only
    // for requests that were actually sent.
    let attempted: BTreeSet<&str> = all.iter().map(|s| s.id.as_str()).collect();
    let mut events: BTreeMap<&str, usize> = BTreeMap::new();
    let mut decided: BTreeSet<&str> = BTreeSet::new();
    for e in entries {
        let id = e["request_id"].as_str().unwrap();
        match e["tool_name"].as_str() {
            Some(t) if t.starts_with("kernel.") => *events.entry(t).or_default() += 1,
            _ => {
                assert!(
                    attempted.contains(id),
                    "entry for a request never sent: {e}"
                );
                assert!(decided.insert(id), "request {id} was decided twice");
            }
        }
    }
    assert_eq!(
        events,
        BTreeMap::from([("kernel.create", 1), ("kernel.start", CYCLES)])
    );
    assert_eq!(entries.len(), 1 + CYCLES + decided.len());
    let acked_ids: BTreeSet<&str> = acked.iter().map(|s| s.id.as_str()).collect();
    assert!(acked_ids.is_subset(&decided));

    println!(
        "crash: {CYCLES} cycles, kills after {}..{} ms, {} requests sent, {} acknowledged receipts, \
         {} decided ({} without an acknowledgement), {} entries, {:.1} s",
        delays.iter().min().unwrap(),
        delays.iter().max().unwrap(),
        attempted.len(),
        acked.len(),
        decided.len(),
        decided.len() - acked_ids.len(),
        entries.len(),
        started.elapsed().as_secs_f64()
    );
}

/// An open that replays the write-ahead log must make the replayed entries
/// durable in sled before it drops the log generations holding them: here
/// the service is SIGKILLed right after its commits (sled is synced about
/// once a second, so they are in the log only), an offline command opens the
/// data dir and aborts at once, and every acknowledged entry must still be
/// there.
#[test]
fn entries_replayed_on_open_survive_a_crash_right_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = serve_config(
        tmp.path(),
        "replay-kernel",
        "allowed_actors: [agent-001]\nallowed_tools: [echo]\n",
    );
    let data = cfg.data_dir.to_str().unwrap().to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = Server::start(&cfg);
    let client = http::client();
    let length = rt.block_on(async {
        for i in 0..40 {
            let (code, receipt) = http::post(
                &client,
                &server.url("/v1/requests"),
                AGENT,
                &json!({"request_id": format!("r-{i}"), "actor": "agent-001",
                        "intent": "echo", "tool_call": {"name": "echo", "params": {"text": "x"}}}),
            )
            .await;
            assert_eq!(code, 200, "{receipt}");
        }
        let (_, status) = http::get(&client, &server.url("/v1/status"), AUDITOR).await;
        status["ledger_length"].as_u64().expect("ledger_length")
    });
    server.kill();

    let mut crashing = command(tmp.path());
    crashing.env(kernels::store::sled_store::ABORT_AFTER_OPEN, "1");
    let out = run_with(crashing, &["info", "--data-dir", &data], None);
    assert_ne!(out.code, Some(0), "the fault hook must abort the open");

    assert_eq!(verify_data_dir(tmp.path(), &data), length);
}
