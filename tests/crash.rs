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
use support::process::{AGENT, AUDITOR, OPERATOR, ServeConfig, Server, command, run, run_with};

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

    // The clean stop added its `kernel.stop` entry.
    assert_eq!(verify_data_dir(tmp.path(), &data), length + 1);
    let out = run(tmp.path(), &["export", "--data-dir", &data], None);
    out.expect_code(0, "export");
    let bundle = out.json();
    let entries = bundle["ledger_entries"].as_array().unwrap();
    assert_eq!(entries.len() as u64, length + 1);

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
    // The clean stop at the end is the only `kernel.stop`: the 20 kills left none.
    assert_eq!(
        events,
        BTreeMap::from([
            ("kernel.create", 1),
            ("kernel.start", CYCLES),
            ("kernel.stop", 1)
        ])
    );
    assert_eq!(
        entries.last().unwrap()["tool_name"],
        "kernel.stop",
        "the stop is the last entry"
    );
    assert_eq!(entries.len(), 1 + CYCLES + 1 + decided.len());
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

/// Submits `n` requests one after the other (each acknowledged) and
/// answers the ledger length after them.
fn submit_acknowledged(
    rt: &tokio::runtime::Runtime,
    server: &Server,
    prefix: &str,
    n: usize,
) -> u64 {
    let client = http::client();
    rt.block_on(async {
        for i in 0..n {
            let (code, receipt) = http::post(
                &client,
                &server.url("/v1/requests"),
                AGENT,
                &json!({"request_id": format!("{prefix}-{i}"), "actor": "agent-001",
                        "intent": "echo", "tool_call": {"name": "echo", "params": {"text": "x"}}}),
            )
            .await;
            assert_eq!(code, 200, "{receipt}");
        }
        let (_, status) = http::get(&client, &server.url("/v1/status"), AUDITOR).await;
        status["ledger_length"].as_u64().expect("ledger_length")
    })
}

/// Where each whole frame of a write-ahead-log file starts
/// (`[len u32 BE][crc32 u32 BE][payload]`, see `src/store/wal.rs`).
fn frame_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if at + 8 + len > bytes.len() {
            break;
        }
        starts.push(at);
        at += 8 + len;
    }
    starts
}

/// The newest write-ahead-log generation that holds data.
fn newest_generation(data: &Path) -> std::path::PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(data.join("ledger.wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .collect();
    files.sort();
    files.pop().expect("a generation holding data")
}

/// A data dir whose service was SIGKILLed right after acknowledging a run
/// of commits that are still in the newest write-ahead-log generation
/// (at least three frames of it), and how many entries were acknowledged.
fn killed_with_commits_in_the_log(tmp: &Path) -> (ServeConfig, u64) {
    let cfg = serve_config(
        tmp,
        "damage-kernel",
        "allowed_actors: [agent-001]\nallowed_tools: [echo]\n",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    for attempt in 0..10 {
        let server = Server::start(&cfg);
        let length = submit_acknowledged(&rt, &server, &format!("a{attempt}"), 30);
        server.kill();
        // sled is synced (and the log trimmed) about once a second: a kill
        // right after such a rotation may leave too few frames; try again.
        let newest = std::fs::read(newest_generation(&cfg.data_dir)).unwrap();
        if frame_starts(&newest).len() >= 3 {
            return (cfg, length);
        }
    }
    panic!("no kill left three frames in the newest log generation");
}

/// What `verify --data-dir` and `serve` say of a damaged data dir: both
/// refuse, and the service does not start.
fn both_refuse(cfg: &ServeConfig) -> (support::process::Output, String) {
    let data = cfg.data_dir.to_str().unwrap();
    let verify = run(&cfg.cwd, &["verify", "--data-dir", data, "--json"], None);
    assert_ne!(
        verify.code,
        Some(0),
        "verify must not say valid: {}",
        verify.stdout
    );
    assert!(!verify.stderr.contains("panicked"), "{}", verify.stderr);
    let failure = match Server::try_start(cfg) {
        Ok(_) => panic!("kernels serve must refuse a damaged data dir"),
        Err(f) => f,
    };
    assert_eq!(failure.code, Some(2), "{}", failure.stderr);
    assert!(!failure.stderr.contains("panicked"), "{}", failure.stderr);
    (verify, failure.stderr)
}

/// The adversarial run's case: after a SIGKILL, the high byte of the
/// length of the second frame of the newest log generation is flipped. The
/// frame now claims to run past the end of the file, but intact frames
/// follow it: damage, not a torn tail. Refused, naming the file and offset.
#[test]
fn a_flipped_length_in_the_newest_log_generation_is_refused_not_taken_for_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, _) = killed_with_commits_in_the_log(tmp.path());
    let newest = newest_generation(&cfg.data_dir);
    let mut bytes = std::fs::read(&newest).unwrap();
    let second = frame_starts(&bytes)[1];
    bytes[second] ^= 0x80;
    std::fs::write(&newest, &bytes).unwrap();
    let (verify, serve) = both_refuse(&cfg);
    let name = newest.file_name().unwrap().to_str().unwrap();
    for said in [&verify.stderr, &serve] {
        assert!(
            said.contains(name) && said.contains(&format!("byte {second}")),
            "the refusal names the file and the offset: {said}"
        );
    }
}

/// After a SIGKILL the newest log generation is deleted, or cut in half:
/// the acknowledged entries it held are gone, and the last commit noted
/// beside the store shows it. Refused, with how many entries are missing.
#[test]
fn a_deleted_or_truncated_newest_log_generation_is_refused_with_the_count() {
    for cut in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let (cfg, length) = killed_with_commits_in_the_log(tmp.path());
        let newest = newest_generation(&cfg.data_dir);
        if cut {
            let bytes = std::fs::read(&newest).unwrap();
            std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
        } else {
            std::fs::remove_file(&newest).unwrap();
        }
        let (verify, serve) = both_refuse(&cfg);
        verify.expect_code(1, "verify --data-dir finds entries missing");
        let report = verify.json();
        let first = report["errors"][0]["message"].as_str().unwrap().to_owned();
        assert!(
            first.contains("entries are missing") && first.contains(&format!("shows {length}")),
            "{report}"
        );
        assert!(serve.contains("entries are missing"), "{serve}");
    }
}

/// SIGTERM records `kernel.stop` (after the last answer, before the ledger
/// closes), halted or not; a restart after it is a normal start.
#[test]
fn a_clean_stop_is_recorded_and_a_restart_after_it_is_correct() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = serve_config(
        tmp.path(),
        "stop-kernel",
        "allowed_actors: [agent-001]\nallowed_tools: [echo]\n",
    );
    let data = cfg.data_dir.to_str().unwrap().to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = http::client();
    let mut lengths = Vec::new();
    for halted in [false, true] {
        let server = Server::start(&cfg);
        let length = submit_acknowledged(&rt, &server, &format!("s{halted}"), 5);
        let length = if halted {
            rt.block_on(async {
                let (code, out) = http::post(
                    &client,
                    &server.url("/v1/halt"),
                    OPERATOR,
                    &json!({"reason": "incident"}),
                )
                .await;
                assert_eq!(code, 200, "{out}");
            });
            length + 1
        } else {
            length
        };
        let (code, stderr) = server.terminate();
        assert_eq!(code, Some(0), "{stderr}");
        lengths.push(length);
        // The stop is the last entry, and verify agrees with the length.
        assert_eq!(verify_data_dir(tmp.path(), &data), length + 1);
        let out = run(tmp.path(), &["export", "--data-dir", &data], None);
        out.expect_code(0, "export");
        let bundle = out.json();
        let last = bundle["ledger_entries"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(last["tool_name"], "kernel.stop", "{last}");
        assert_eq!(last["actor"], "SYSTEM");
        assert_eq!(last["ledger_seq"], length);
        let state = if halted { "HALTED" } else { "IDLE" };
        assert_eq!(
            (&last["state_from"], &last["state_to"]),
            (&json!(state), &json!(state))
        );
    }
    // A restart after the stops: started twice before, halted, serving reads.
    let server = Server::start(&cfg);
    rt.block_on(async {
        let (code, status) = http::get(&client, &server.url("/v1/status"), AUDITOR).await;
        assert_eq!(code, 200);
        assert_eq!(status["state"], "HALTED", "{status}");
        assert_eq!(status["starts"], 2, "{status}");
        assert_eq!(status["counters"]["by_event"]["kernel.stop"], 2, "{status}");
        assert_eq!(
            status["ledger_length"],
            lengths[1] + 2,
            "the stop and this start"
        );
    });
    server.kill();
}

/// A sled database that is damaged on disk: a clear refusal naming the data
/// dir and what to do, never a panic.
#[test]
fn a_corrupt_sled_file_is_a_clear_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = serve_config(
        tmp.path(),
        "sled-kernel",
        "allowed_actors: [agent-001]\nallowed_tools: [echo]\n",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = Server::start(&cfg);
    submit_acknowledged(&rt, &server, "c", 20);
    let (code, stderr) = server.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    // Cut sled's log file to a few bytes, or damage its config file.
    let clean = tmp.path().join("clean");
    support::datadir::copy_dir(&cfg.data_dir, &clean);
    let data = cfg.data_dir.to_str().unwrap().to_owned();
    for damage in ["truncated log", "damaged config"] {
        std::fs::remove_dir_all(&cfg.data_dir).unwrap();
        support::datadir::copy_dir(&clean, &cfg.data_dir);
        let file = cfg
            .data_dir
            .join("ledger")
            .join(if damage == "truncated log" {
                "db"
            } else {
                "conf"
            });
        let mut bytes = std::fs::read(&file).unwrap();
        assert!(bytes.len() > 20, "sled wrote {}", file.display());
        if damage == "truncated log" {
            bytes.truncate(10);
        } else {
            bytes[10] ^= 0xff;
        }
        std::fs::write(&file, &bytes).unwrap();
        // sled either reports the damage (we say the database is corrupt)
        // or silently opens an empty database (then the traces of the
        // ledger's length say entries are missing): never a panic, always
        // what to do.
        let out = run(tmp.path(), &["verify", "--data-dir", &data], None);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
        match out.code {
            Some(2) => {
                let said = out.stderr.lines().last().unwrap_or("");
                assert!(
                    said.starts_with("kernels:")
                        && said.contains("corrupt")
                        && said.contains(&data)
                        && said.contains("backup"),
                    "{damage}: {}",
                    out.stderr
                );
            }
            Some(1) => assert!(
                out.stdout.contains("entries are missing") && out.stdout.contains("backup"),
                "{damage}: {}",
                out.stdout
            ),
            other => panic!("{damage}: verify exited {other:?}: {}", out.stdout),
        }
        let failure = match Server::try_start(&cfg) {
            Ok(_) => panic!("kernels serve must refuse a corrupt sled file ({damage})"),
            Err(f) => f,
        };
        assert_eq!(failure.code, Some(2), "{}", failure.stderr);
        assert!(!failure.stderr.contains("panicked"), "{}", failure.stderr);
        assert!(
            failure.stderr.contains("backup"),
            "{damage}: {}",
            failure.stderr
        );
        if damage == "damaged config" {
            // sled reports this one: the clear message, naming the data dir.
            assert_eq!(out.code, Some(2), "{}", out.stdout);
            assert!(failure.stderr.contains("corrupt"), "{}", failure.stderr);
        }
    }
}
