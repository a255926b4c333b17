//! Signed archives: every rotation manifest carries the ledger's signed
//! checkpoint at its last entry, and `kernels archive verify --key` (the
//! real binary) checks each against the archived entries, with the
//! consistency of consecutive ones; `--expect-checkpoint` catches a deleted
//! newest segment. Against moto's S3 server with Object Lock (the objects
//! carry their retention, yet a delete marker still hides the newest ones),
//! and s3s-fs for a whole archive rewritten by someone without the key.

mod support;

use std::path::Path;
use std::sync::Arc;

use kernels::checkpoint::{SignedCheckpoint, Witnesses};
use kernels::config::ObjectLock;
use kernels::kernel::{Policy, RawRequest, Variant};
use kernels::ledger::{Ledger, LedgerOptions, SystemClock};
use kernels::metrics::Metrics;
use kernels::note::{KeyKind, SignerKey};
use kernels::rotator::archive::{self, TreeChecks};
use kernels::rotator::manifest::{Manifest, manifest_key};
use kernels::rotator::objects::Objects;
use kernels::rotator::run::{Outcome, Target, rotate_once};
use serde_json::json;
use support::moto::Moto;
use support::process::{Output, command, run_with};
use support::s3::S3Server;

fn open(dir: &Path, kernel_id: &str, key: Option<SignerKey>) -> Ledger {
    let policy = Policy::from_yaml("allowed_actors: ['*']\nallowed_tools: [echo]\n").unwrap();
    let mut options = LedgerOptions::service(kernel_id, Variant::Strict, policy);
    options.signing = key.map(Arc::new);
    Ledger::open(
        dir,
        options,
        Arc::new(SystemClock),
        Arc::new(Metrics::new()),
    )
    .unwrap()
}

async fn submit_n(ledger: &Ledger, tag: &str, n: usize) {
    for i in 0..n {
        let raw = RawRequest::from_value(json!({"request_id": format!("{tag}-{i}"),
            "actor": "agent-001", "intent": format!("echo {tag}"),
            "tool_call": {"name": "echo", "params": {"text": format!("{tag}{i}")}}}))
        .unwrap();
        ledger.submit(&raw).await.unwrap();
    }
}

/// Three rounds of decisions, each archived; answers the manifests.
async fn rotate_three(ledger: &Ledger, target: &Target, tag: &str) -> Vec<Manifest> {
    let mut manifests = Vec::new();
    for round in 0..3 {
        submit_n(ledger, &format!("{tag}{round}"), 4 + round).await;
        match rotate_once(ledger, target, "SYSTEM").await.unwrap() {
            Outcome::Archived { manifest, .. } => manifests.push(*manifest),
            other => panic!("{other:?}"),
        }
    }
    manifests
}

/// `kernels archive verify` with `args`, off the runtime's threads.
async fn archive_verify(cwd: &Path, env: Vec<(String, String)>, args: Vec<String>) -> Output {
    let cwd = cwd.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut cmd = command(&cwd);
        cmd.envs(env);
        let mut all = vec!["archive".to_owned(), "verify".to_owned()];
        all.extend(args);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        run_with(cmd, &refs, None)
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_archives_carry_checkpoints_and_a_deleted_newest_segment_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start();
    moto.create_bucket("locked", true).await;
    let key = SignerKey::generate("kernels/k-arc", KeyKind::Ed25519).unwrap();
    let vkey = key.verifier();
    let ledger = open(&tmp.path().join("data"), "k-arc", Some(key));
    let lock = ObjectLock {
        mode: "GOVERNANCE".into(),
        days: 1,
    };
    let target = Target {
        objects: moto.objects("locked", Some(lock)).await,
        prefix: "arc".into(),
        work_dir: tmp.path().join("work"),
    };
    let manifests = rotate_three(&ledger, &target, "a").await;
    // Each manifest carries the signed checkpoint of the tree up to its last entry.
    for m in &manifests {
        let cp = SignedCheckpoint::parse(m.checkpoint.as_deref().expect("a checkpoint")).unwrap();
        cp.verify(&vkey, &Witnesses::none()).unwrap();
        assert_eq!(cp.checkpoint.size, m.to_seq + 1);
        assert_eq!(
            cp.checkpoint.root,
            ledger.tree_root_at(m.to_seq + 1).unwrap()
        );
    }
    // And each object carries its retention.
    let client = moto.client().await;
    for m in &manifests {
        for object in [
            m.segment_key.clone(),
            manifest_key("arc", "k-arc", m.from_seq, m.to_seq),
        ] {
            let head = client
                .head_object()
                .bucket("locked")
                .key(&object)
                .send()
                .await
                .unwrap();
            assert_eq!(
                head.object_lock_mode().map(|m| m.as_str()),
                Some("GOVERNANCE"),
                "{object}"
            );
        }
    }
    ledger.close().unwrap();

    let env = moto.env("locked");
    let vkey_text = vkey.to_string();
    let base = args(&["--kernel-id", "k-arc", "--prefix", "arc", "--json"]);
    let with = |more: &[&str]| {
        let mut a = base.clone();
        a.extend(args(more));
        a
    };
    let out = archive_verify(tmp.path(), env.clone(), with(&["--key", &vkey_text])).await;
    out.expect_code(0, "archive verify --key");
    assert_eq!(out.json()["manifests"], 3);
    let newest = tmp.path().join("newest.txt");
    std::fs::write(&newest, manifests[2].checkpoint.as_deref().unwrap()).unwrap();
    let newest = newest.to_str().unwrap().to_owned();
    archive_verify(
        tmp.path(),
        env.clone(),
        with(&["--key", &vkey_text, "--expect-checkpoint", &newest]),
    )
    .await
    .expect_code(0, "archive verify --expect-checkpoint");
    // Another key: every checkpoint is refused.
    let other = SignerKey::generate("kernels/k-arc", KeyKind::Ed25519)
        .unwrap()
        .verifier()
        .to_string();
    let out = archive_verify(tmp.path(), env.clone(), with(&["--key", &other])).await;
    out.expect_code(1, "archive verify with another key");
    assert!(out.stdout.contains("does not verify"), "{}", out.stdout);
    // --expect-checkpoint needs --key: unusable.
    archive_verify(
        tmp.path(),
        env.clone(),
        with(&["--expect-checkpoint", &newest]),
    )
    .await
    .expect_code(2, "--expect-checkpoint without --key");

    // Object Lock keeps every version, but a delete marker hides the newest
    // segment and manifest from readers: the archive still chains...
    for object in [
        manifests[2].segment_key.clone(),
        manifest_key("arc", "k-arc", manifests[2].from_seq, manifests[2].to_seq),
    ] {
        client
            .delete_object()
            .bucket("locked")
            .key(&object)
            .send()
            .await
            .unwrap();
    }
    archive_verify(tmp.path(), env.clone(), with(&["--key", &vkey_text]))
        .await
        .expect_code(0, "the shortened archive still chains");
    // ...but it does not reach the checkpoint it should.
    let out = archive_verify(
        tmp.path(),
        env.clone(),
        with(&["--key", &vkey_text, "--expect-checkpoint", &newest]),
    )
    .await;
    out.expect_code(1, "a deleted newest segment");
    assert!(out.stdout.contains("ends early"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_rewritten_without_the_key_or_changed_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SignerKey::generate("kernels/k-arc", KeyKind::Ed25519).unwrap();
    let vkey = key.verifier();
    let checks = TreeChecks {
        key: Some(vkey.clone()),
        expected: None,
    };

    // The genuine archive.
    let mut genuine = S3Server::start().await;
    let ledger = open(&tmp.path().join("a"), "k-arc", Some(key));
    let target = Target {
        objects: genuine.objects().await,
        prefix: "arc".into(),
        work_dir: tmp.path().join("work-a"),
    };
    let manifests = rotate_three(&ledger, &target, "a").await;
    ledger.close().unwrap();
    let dir = Objects::Dir(genuine.bucket_dir());
    let report = archive::verify_with(&dir, "arc", "k-arc", &checks)
        .await
        .unwrap();
    assert!(report.valid, "{:?}", report.errors);

    // A whole history rewritten by someone who holds the bucket but not the
    // key (another ledger with the same kernel id, archived the same way):
    // its chain and manifests are flawless, its checkpoints are not ours.
    for (name, forger_key) in [
        (
            "b",
            Some(SignerKey::generate("kernels/k-arc", KeyKind::Ed25519).unwrap()),
        ),
        ("c", None),
    ] {
        let mut forged = S3Server::start().await;
        let ledger = open(&tmp.path().join(name), "k-arc", forger_key);
        let target = Target {
            objects: forged.objects().await,
            prefix: "arc".into(),
            work_dir: tmp.path().join(format!("work-{name}")),
        };
        rotate_three(&ledger, &target, name).await;
        ledger.close().unwrap();
        let dir = Objects::Dir(forged.bucket_dir());
        let plain = archive::verify(&dir, "arc", "k-arc").await.unwrap();
        assert!(
            plain.valid,
            "{name}: the chain alone cannot tell: {:?}",
            plain.errors
        );
        let keyed = archive::verify_with(&dir, "arc", "k-arc", &checks)
            .await
            .unwrap();
        assert!(!keyed.valid, "{name}: a forged archive passed --key");
        forged.stop().await;
    }

    // A manifest's checkpoint with a flipped signature byte: refused (the
    // manifest chain breaks too, but the checkpoint is named).
    let key_path = genuine.object_path(&manifest_key(
        "arc",
        "k-arc",
        manifests[1].from_seq,
        manifests[1].to_seq,
    ));
    let text = std::fs::read_to_string(&key_path).unwrap();
    let mut manifest: Manifest = serde_json::from_str(&text).unwrap();
    let cp = manifest.checkpoint.take().unwrap();
    let flipped = {
        let body = cp.trim_end_matches('\n');
        let last = body.chars().last().unwrap();
        format!(
            "{}{}\n",
            &body[..body.len() - 1],
            if last == 'A' { 'B' } else { 'A' }
        )
    };
    manifest.checkpoint = Some(flipped);
    std::fs::write(&key_path, manifest.to_bytes()).unwrap();
    let report = archive::verify_with(&dir, "arc", "k-arc", &checks)
        .await
        .unwrap();
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.message.contains("checkpoint does not verify")),
        "{:?}",
        report.errors
    );
    genuine.stop().await;
}
