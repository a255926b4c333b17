//! The durable ledger on a real sled data dir: restarts, halts, idempotency,
//! checkpoints, tampering, concurrency.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kernels::kernel::{Policy, RawRequest, Status, Variant};
use kernels::ledger::open::VerifyOnOpen;
use kernels::ledger::{Clock, Ledger, LedgerError, LedgerOptions};
use kernels::metrics::Metrics;
use serde_json::{Value, json};

struct StepClock(AtomicU64);

impl Clock for StepClock {
    fn now_ms(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst)
    }
}

fn policy() -> Policy {
    Policy::from_yaml("allowed_actors: [alice, bob]\nallowed_tools: [echo, add]\n").unwrap()
}

fn options() -> LedgerOptions {
    let mut o = LedgerOptions::service("k-test", Variant::Strict, policy());
    o.checkpoint_every = 10;
    o
}

fn open_with(dir: &Path, options: LedgerOptions) -> Result<Ledger, LedgerError> {
    Ledger::open(
        dir,
        options,
        Arc::new(StepClock(AtomicU64::new(1_700_000_000_000))),
        Arc::new(Metrics::new()),
    )
}

fn open(dir: &Path) -> Ledger {
    open_with(dir, options()).unwrap()
}

fn request(id: &str, actor: &str) -> RawRequest {
    RawRequest::from_value(json!({
        "request_id": id, "actor": actor, "intent": "say something",
        "tool_call": {"name": "echo", "params": {"text": id}}
    }))
    .unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn decisions_survive_a_restart_and_retries_get_the_original_receipt() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = rt();
    let (allow, deny) = rt.block_on(async {
        let ledger = open(tmp.path());
        let allow = ledger.submit(&request("r1", "alice")).await.unwrap();
        let deny = ledger.submit(&request("r2", "mallory")).await.unwrap();
        ledger.close().unwrap();
        (allow, deny)
    });
    assert_eq!(allow.status, Status::Accepted);
    assert_eq!(allow.tool_result, Some(json!("r1")));
    assert_eq!(deny.status, Status::Rejected);

    let ledger = open(tmp.path());
    let state = ledger.state();
    // create, r1, r2, start
    assert_eq!(state.head.len, 4);
    assert_eq!(state.starts, 1);
    rt.block_on(async {
        let again = ledger.submit(&request("r1", "alice")).await.unwrap();
        assert_eq!(again, allow, "a retry returns the original receipt");
        assert_eq!(ledger.state().head.len, 4, "and records nothing");
        let err = ledger.submit(&request("r1", "bob")).await.unwrap_err();
        assert!(matches!(err, LedgerError::Conflict(_)), "{err}");
    });
    assert!(ledger.verify_stored().valid);
    ledger.close().unwrap();
}

#[test]
fn retries_racing_their_own_commit_get_the_original_receipt_and_record_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = rt();
    let ledger = open(tmp.path());
    let before = ledger.state().head.len;
    rt.block_on(async {
        // 16 tasks, each submitting ids 0..400 in a different order, so that
        // every id is retried while its first entry is queued, being
        // committed, appended, or durable.
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let ledger = ledger.clone();
            tasks.push(tokio::spawn(async move {
                let mut receipts = Vec::new();
                for k in 0..400u64 {
                    let i = (k * (2 * t + 1) + t) % 400;
                    let raw = request(&format!("race-{i}"), "alice");
                    receipts.push((i, ledger.submit(&raw).await.unwrap()));
                }
                receipts
            }));
        }
        let mut first: std::collections::HashMap<u64, _> = Default::default();
        for task in tasks {
            for (i, receipt) in task.await.unwrap() {
                let seen = first.entry(i).or_insert_with(|| receipt.clone());
                assert_eq!(*seen, receipt, "race-{i} got two different receipts");
            }
        }
        assert_eq!(first.len(), 400);
    });
    assert_eq!(ledger.state().head.len, before + 400, "one entry per id");
    ledger.close().unwrap();
    drop(ledger);
    let ledger = open(tmp.path());
    let err = rt
        .block_on(ledger.submit(&request("race-7", "bob")))
        .unwrap_err();
    assert!(matches!(err, LedgerError::Conflict(_)), "{err}");
    ledger.close().unwrap();
}

#[test]
fn a_halt_survives_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = rt();
    rt.block_on(async {
        let ledger = open(tmp.path());
        let (entry, root_before) = ledger.halt("ops", "incident 7").await.unwrap();
        assert_eq!(entry.prev_hash, root_before);
        ledger.close().unwrap();
    });
    for _ in 0..2 {
        let ledger = open(tmp.path());
        assert!(ledger.state().is_halted());
        let err = rt
            .block_on(ledger.submit(&request("r9", "alice")))
            .unwrap_err();
        assert!(matches!(err, LedgerError::Refused(_)), "{err}");
        ledger.close().unwrap();
    }
    let ledger = open(tmp.path());
    rt.block_on(async {
        ledger.recover("ops", "root cause fixed").await.unwrap();
        let r = ledger.submit(&request("r10", "alice")).await.unwrap();
        assert_eq!(r.decision, "ALLOW");
    });
    ledger.close().unwrap();
    drop(ledger);
    assert!(!open(tmp.path()).state().is_halted());
}

#[test]
fn reopening_from_a_checkpoint_gives_the_same_state_as_a_full_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = rt();
    let ledger = open(tmp.path());
    rt.block_on(async {
        for i in 0..37 {
            let actor = if i % 3 == 0 { "mallory" } else { "alice" };
            ledger
                .submit(&request(&format!("r{i}"), actor))
                .await
                .unwrap();
        }
        let mut p = policy();
        p.allowed_actors.insert("carol".into());
        ledger.update_policy("ops", &p, "add carol").await.unwrap();
    });
    let live = ledger.state();
    ledger.close().unwrap();
    drop(ledger);

    // Reopen with the configured policy unchanged: the operator's update stands.
    let mut o = options();
    o.record_start = false;
    o.verify = VerifyOnOpen::FromCheckpoint;
    o.policy = Some(policy());
    let reopened = open_with(tmp.path(), o).unwrap();
    assert_eq!(reopened.state(), live);
    assert!(reopened.state().policy.unwrap().allows_actor("carol"));
    let full = kernels::kernel::KernelState::replay(
        &reopened
            .entries(0, u64::MAX)
            .collect::<Result<Vec<_>, _>>()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(full, live);
    reopened.close().unwrap();
}

/// Flips one bit of entry `seq`'s stored record, `offset` bytes into it,
/// with sled directly (the chunk layout is documented in `sled_store`).
fn flip_stored_byte(dir: &Path, seq: u64, offset: usize) {
    let db = sled::open(dir.join("ledger")).unwrap();
    let tree = db.open_tree("ledger").unwrap();
    let mut from = vec![b'c'];
    from.extend_from_slice(&0u64.to_be_bytes());
    let mut to = vec![b'c'];
    to.extend_from_slice(&seq.to_be_bytes());
    let (key, value) = tree.range(from..=to).next_back().unwrap().unwrap();
    let first = u64::from_be_bytes(key[1..9].try_into().unwrap());
    let mut value = value.to_vec();
    let mut at = 5;
    for _ in first..seq {
        let len = u32::from_be_bytes(value[at..at + 4].try_into().unwrap()) as usize;
        at += 4 + len;
    }
    let len = u32::from_be_bytes(value[at..at + 4].try_into().unwrap()) as usize;
    value[at + 4 + offset.min(len - 1)] ^= 0x20;
    tree.insert(key, value).unwrap();
    db.flush().unwrap();
}

#[test]
fn a_flipped_byte_stops_the_open_and_names_the_entry() {
    for (seq, offset) in [(3u64, 120usize), (5, 20), (7, 60), (2, 10_000)] {
        let tmp = tempfile::tempdir().unwrap();
        let rt = rt();
        let ledger = open(tmp.path());
        rt.block_on(async {
            for i in 0..8 {
                ledger
                    .submit(&request(&format!("r{i}"), "alice"))
                    .await
                    .unwrap();
            }
        });
        ledger.close().unwrap();
        drop(ledger);
        flip_stored_byte(tmp.path(), seq, offset);
        let err = open_with(tmp.path(), options()).unwrap_err();
        match err {
            LedgerError::Corrupt {
                seq: bad,
                ref message,
            } => {
                assert_eq!(bad, seq, "{message}");
            }
            other => panic!("expected corruption at {seq}, got {other}"),
        }
    }
}

#[test]
fn a_data_dir_of_another_kernel_or_variant_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    open(tmp.path()).close().unwrap();
    let mut o = options();
    o.kernel_id = Some("other".into());
    let err = open_with(tmp.path(), o).unwrap_err();
    assert!(
        err.to_string().contains("belongs to kernel 'k-test'"),
        "{err}"
    );
    let mut o = options();
    o.variant = Some(Variant::Permissive);
    let err = open_with(tmp.path(), o).unwrap_err();
    assert!(err.to_string().contains("strict kernel"), "{err}");
}

#[test]
fn concurrent_submitters_share_commits_and_all_entries_are_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = rt();
    let ledger = open(tmp.path());
    let receipts: Vec<Value> = rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..32 {
            let ledger = ledger.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..25 {
                    let r = ledger
                        .submit(&request(&format!("t{t}-{i}"), "alice"))
                        .await
                        .unwrap();
                    out.push(serde_json::to_value(r).unwrap());
                }
                out
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    assert_eq!(receipts.len(), 800);
    let text = ledger.metrics().render();
    let commits: f64 = text
        .lines()
        .find(|l| l.starts_with("kernels_commits_total"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        commits < 800.0,
        "group commit should batch: {commits} commits for 800 decisions"
    );
    ledger.close().unwrap();
    drop(ledger);
    let reopened = open(tmp.path());
    for r in receipts {
        let seq = r["ledger_seq"].as_u64().unwrap();
        let entry = reopened.entries(seq, seq + 1).next().unwrap().unwrap();
        assert_eq!(entry.entry_hash, r["evidence_hash"].as_str().unwrap());
    }
    assert!(reopened.verify_stored().valid);
    reopened.close().unwrap();
}

#[test]
fn a_store_shorter_than_its_durable_head_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = open(tmp.path());
    ledger.close().unwrap();
    drop(ledger);
    // Claim more entries were durable than the store has.
    std::fs::write(
        tmp.path().join("DURABLE_HEAD"),
        format!("50 {}\n", "a".repeat(64)),
    )
    .unwrap();
    let err = open_with(tmp.path(), options()).unwrap_err();
    assert!(err.to_string().contains("are missing"), "{err}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for item in std::fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        let dest = to.join(item.file_name());
        if item.file_type().unwrap().is_dir() {
            copy_dir(&item.path(), &dest);
        } else {
            std::fs::copy(item.path(), dest).unwrap();
        }
    }
}

#[test]
fn a_format_1_data_dir_written_by_0_1_0_opens_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/datadir-v1"),
        &dir,
    );
    let report = kernels::ledger::open::verify_data_dir(&dir).unwrap();
    assert!(report.valid, "{:?}", report.errors);
    assert_eq!(report.entries_verified, 6);
    let mut o = LedgerOptions::read_only();
    o.kernel_id = Some("fixture-v1".into());
    let ledger = open_with(&dir, o).unwrap();
    let state = ledger.state();
    assert_eq!(state.kernel_id.as_deref(), Some("fixture-v1"));
    assert!(state.is_halted());
    assert_eq!(state.policy_version, 2);
    assert_eq!(state.head.len, 6);
    assert_eq!(state.counters.by_decision["ALLOW"], 2);
    // Its request records were migrated (format 2 -> 3): every decision's
    // request id still finds its entry.
    let mut decisions = 0;
    for entry in ledger.entries(0, 6) {
        let entry = entry.unwrap();
        let id = entry.request_id.as_str().to_owned();
        if entry
            .tool_name
            .as_deref()
            .is_some_and(|t| t.starts_with("kernel."))
            || id == "HALT"
            || id.is_empty()
        {
            continue;
        }
        let record = ledger
            .store()
            .request(&id)
            .unwrap()
            .expect("migrated record");
        assert_eq!(record.seq, entry.ledger_seq);
        decisions += 1;
    }
    assert!(decisions >= 2, "the fixture holds decisions");
    assert!(
        std::fs::read_to_string(dir.join("KERNELS_FORMAT"))
            .unwrap()
            .contains(&format!(
                "format_version={}",
                kernels::STORAGE_FORMAT_VERSION
            ))
    );
    ledger.close().unwrap();
}

#[test]
fn an_entry_that_triggers_a_checkpoint_is_committed() {
    // Regression: the entry that adds a checkpoint to an empty batch must
    // still wake the flusher (it once did not, and commits stopped).
    let tmp = tempfile::tempdir().unwrap();
    let mut o = options();
    o.checkpoint_every = 1;
    let ledger = open_with(tmp.path(), o).unwrap();
    let rt = rt();
    rt.block_on(async {
        for i in 0..50 {
            let r = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                ledger.submit(&request(&format!("c{i}"), "alice")),
            )
            .await
            .expect("a decision must be committed, not left waiting");
            r.unwrap();
            // Let the flusher go back to sleep before the next one.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    });
    assert_eq!(ledger.durable_len(), 51);
    ledger.close().unwrap();
}
