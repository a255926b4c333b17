//! The rotator against a real S3-compatible server (s3s-fs) on 127.0.0.1:
//! segments, manifests, read-back, repair, outages, tampering, forensics.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kernels::kernel::{KernelState, Policy, Variant};
use kernels::ledger::{Ledger, LedgerOptions, SystemClock, replay_summary};
use kernels::metrics::Metrics;
use kernels::rotator::archive;
use kernels::rotator::head::HeadState;
use kernels::rotator::manifest::{Manifest, kernel_prefix};
use kernels::rotator::run::{Outcome, RunAnswer, Target, rotate_once};
use kernels::service::RotationControl;
use support::fs::copy_dir;
use support::ledger::submit_n;
use support::process;
use support::s3::{self, S3Server};

fn open(dir: &std::path::Path) -> Ledger {
    support::ledger::open(dir, "k-rot")
}

fn target(objects: kernels::rotator::objects::Objects, work: &std::path::Path) -> Target {
    Target {
        objects,
        prefix: "kernels-archive".into(),
        work_dir: work.to_owned(),
    }
}

fn state_at(ledger: &Ledger, seq: u64) -> KernelState {
    let entries: Vec<_> = ledger
        .entries(0, seq + 1)
        .collect::<Result<_, _>>()
        .unwrap();
    KernelState::replay(&entries).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_rotations_verify_and_replay_from_the_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start().await;
    let ledger = open(&tmp.path().join("data"));
    let t = target(server.objects().await, &tmp.path().join("work"));

    let mut manifests = Vec::new();
    for round in 0..3 {
        submit_n(&ledger, &format!("round{round}"), 10 + round * 5).await;
        match rotate_once(&ledger, &t, "SYSTEM").await.unwrap() {
            Outcome::Archived {
                manifest,
                repaired,
                entry_seq,
            } => {
                assert!(!repaired);
                assert_eq!(entry_seq, ledger.durable_len() - 1);
                manifests.push(*manifest);
            }
            other => panic!("expected an archive, got {other:?}"),
        }
    }
    // Nothing new (only the last kernel.rotate): no upload, no entry.
    let before = ledger.durable_len();
    assert!(matches!(
        rotate_once(&ledger, &t, "SYSTEM").await.unwrap(),
        Outcome::Nothing { .. }
    ));
    assert_eq!(ledger.durable_len(), before);

    // Ranges chain with no gap; each manifest links to the previous one.
    assert_eq!(manifests[0].from_seq, 0);
    for w in manifests.windows(2) {
        assert_eq!(w[1].from_seq, w[0].to_seq + 1);
        assert_eq!(w[1].anchor_hash, w[0].root_hash);
        assert_eq!(
            w[1].prev_manifest_sha256.as_deref(),
            Some(w[0].sha256().as_str())
        );
    }
    let state = ledger.state();
    assert_eq!(state.counters.by_event["kernel.rotate"], 3);
    assert_eq!(
        state.last_rotation.as_ref().unwrap().to_seq,
        manifests[2].to_seq
    );

    let listing = t
        .objects
        .list(&kernel_prefix("kernels-archive", "k-rot"))
        .await
        .unwrap();
    assert_eq!(listing.len(), 6, "{listing:?}");

    let report = archive::verify(&t.objects, "kernels-archive", "k-rot")
        .await
        .unwrap();
    assert!(report.valid, "{:?}", report.errors);
    assert_eq!(report.manifests, 3);
    assert_eq!(report.last_seq, Some(manifests[2].to_seq));

    // Replay from the archive alone equals replay of the live ledger at the same seq.
    for seq in [
        manifests[0].to_seq,
        manifests[1].from_seq + 3,
        manifests[2].to_seq,
    ] {
        let from_archive = archive::replay(&t.objects, "kernels-archive", "k-rot", Some(seq), None)
            .await
            .unwrap();
        assert_eq!(
            replay_summary(&from_archive),
            replay_summary(&state_at(&ledger, seq)),
            "seq {seq}"
        );
    }
    // The same from a directory of downloaded objects.
    let offline = kernels::rotator::objects::Objects::Dir(server.bucket_dir());
    assert!(
        archive::verify(&offline, "kernels-archive", "k-rot")
            .await
            .unwrap()
            .valid
    );
    ledger.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_any_archived_object_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start().await;
    let ledger = open(&tmp.path().join("data"));
    let t = target(server.objects().await, &tmp.path().join("work"));
    let mut manifests: Vec<Manifest> = Vec::new();
    for round in 0..3 {
        submit_n(&ledger, &format!("t{round}"), 8).await;
        if let Outcome::Archived { manifest, .. } =
            rotate_once(&ledger, &t, "SYSTEM").await.unwrap()
        {
            manifests.push(*manifest);
        }
    }
    ledger.close().unwrap();
    let dir = |server: &S3Server| kernels::rotator::objects::Objects::Dir(server.bucket_dir());
    assert!(
        archive::verify(&dir(&server), "kernels-archive", "k-rot")
            .await
            .unwrap()
            .valid
    );

    let check = |report: &archive::ArchiveReport, key: &str| {
        assert!(!report.valid);
        assert!(
            report
                .errors
                .iter()
                .any(|e| e.object.as_deref() == Some(key)),
            "{key} not named in {:?}",
            report.errors
        );
    };

    // 1. One byte of a segment.
    let seg = server.object_path(&manifests[1].segment_key);
    let original = std::fs::read(&seg).unwrap();
    let mut bytes = original.clone();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
    std::fs::write(&seg, &bytes).unwrap();
    let report = archive::verify(&dir(&server), "kernels-archive", "k-rot")
        .await
        .unwrap();
    check(&report, &manifests[1].segment_key);
    // Through S3 too.
    let report = archive::verify(&t.objects, "kernels-archive", "k-rot")
        .await
        .unwrap();
    check(&report, &manifests[1].segment_key);
    std::fs::write(&seg, &original).unwrap();

    // 2. A deleted segment.
    std::fs::remove_file(&seg).unwrap();
    let report = archive::verify(&dir(&server), "kernels-archive", "k-rot")
        .await
        .unwrap();
    check(&report, &manifests[1].segment_key);
    std::fs::write(&seg, &original).unwrap();

    // 3. An edited manifest.
    let key = kernels::rotator::manifest::manifest_key(
        "kernels-archive",
        "k-rot",
        manifests[0].from_seq,
        manifests[0].to_seq,
    );
    let path = server.object_path(&key);
    let original = std::fs::read(&path).unwrap();
    let mut edited = manifests[0].clone();
    edited.created_at_ms += 1;
    std::fs::write(&path, edited.to_bytes()).unwrap();
    let report = archive::verify(&dir(&server), "kernels-archive", "k-rot")
        .await
        .unwrap();
    check(&report, &key);
    std::fs::write(&path, &original).unwrap();
    assert!(
        archive::verify(&dir(&server), "kernels-archive", "k-rot")
            .await
            .unwrap()
            .valid
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_does_not_slow_decisions_and_the_next_run_catches_up() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = S3Server::start().await;
    let ledger = open(&tmp.path().join("data"));
    let t = target(server.objects().await, &tmp.path().join("work"));
    submit_n(&ledger, "a", 20).await;
    assert!(matches!(
        rotate_once(&ledger, &t, "SYSTEM").await.unwrap(),
        Outcome::Archived { .. }
    ));

    server.stop().await;
    // A background rotator sees the outage…
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let config = kernels::config::RotationConfig {
        interval: Duration::from_secs(3600),
        bucket: s3::BUCKET.into(),
        prefix: "kernels-archive".into(),
        region: "us-east-1".into(),
        endpoint: Some(server.endpoint()),
        force_path_style: true,
        object_lock: None,
        attempt_timeout: Duration::from_secs(60),
    };
    let rotator = kernels::rotator::Rotator::start_with(
        ledger.clone(),
        config,
        t.objects.clone(),
        tmp.path().join("work"),
        stop_rx,
    );
    submit_n(&ledger, "b", 10).await;
    let failure = rotator
        .rotate_now("ops".into(), Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(failure.error.code(), "store_unreachable", "{failure}");
    let status = rotator.status();
    assert_eq!(status["failing"], true, "{status}");
    assert!(status["last_error"].is_string());
    assert!(status["pending_entries"].as_u64().unwrap() >= 10);
    assert!(
        ledger
            .metrics()
            .render()
            .contains("kernels_rotation_failing 1")
    );

    // …while decisions go on at full speed.
    let started = Instant::now();
    submit_n(&ledger, "c", 200).await;
    let per_decision = started.elapsed() / 200;
    assert!(
        per_decision < Duration::from_millis(50),
        "decisions slowed down: {per_decision:?}"
    );

    server.restart().await;
    let outcome = match rotator
        .rotate_now("ops".into(), Duration::from_secs(30))
        .await
        .unwrap()
    {
        RunAnswer::Finished { outcome, .. } => outcome,
        other => panic!("the run must finish within 30 s: {other:?}"),
    };
    assert_eq!(outcome["archived"], true, "{outcome}");
    let report = archive::verify(&t.objects, "kernels-archive", "k-rot")
        .await
        .unwrap();
    assert!(report.valid, "{:?}", report.errors);
    assert_eq!(report.manifests, 2);
    // Everything up to the new rotate entry is archived: no gap, no duplicate.
    assert_eq!(report.last_seq, Some(ledger.durable_len() - 2));
    assert_eq!(rotator.status()["failing"], false);
    let _ = stop_tx.send(true);
    rotator.stopped().await;
    ledger.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_without_its_record_is_repaired_without_duplicates() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start().await;
    let data = tmp.path().join("data");
    let work = tmp.path().join("work");
    let ledger = open(&data);
    submit_n(&ledger, "x", 15).await;
    // Another process with the same ledger content uploads, then "dies"
    // before recording: simulate by rotating a copy of the data dir.
    ledger.close().unwrap();
    drop(ledger);
    let copy = tmp.path().join("copy");
    copy_dir(&data, &copy);
    {
        // The twin must not add its own kernel.start: it stands for the same
        // process, before it died.
        let policy = Policy::from_yaml("allowed_actors: ['*']\nallowed_tools: [echo]\n").unwrap();
        let mut options = LedgerOptions::service("k-rot", Variant::Strict, policy);
        options.record_start = false;
        let twin = Ledger::open(
            &copy,
            options,
            Arc::new(SystemClock),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let t = target(server.objects().await, &work);
        assert!(matches!(
            rotate_once(&twin, &t, "SYSTEM").await.unwrap(),
            Outcome::Archived { .. }
        ));
        twin.close().unwrap();
    }
    // The original never recorded that rotation; more decisions happen.
    let ledger = open(&data);
    assert!(ledger.state().last_rotation.is_none());
    submit_n(&ledger, "y", 5).await;
    let t = target(server.objects().await, &work);
    match rotate_once(&ledger, &t, "SYSTEM").await.unwrap() {
        Outcome::Archived { repaired, .. } => assert!(
            repaired,
            "the uploaded range must be recorded, not uploaded again"
        ),
        other => panic!("{other:?}"),
    }
    match rotate_once(&ledger, &t, "SYSTEM").await.unwrap() {
        Outcome::Archived {
            repaired, manifest, ..
        } => {
            assert!(!repaired);
            assert_eq!(manifest.to_seq, ledger.durable_len() - 2);
        }
        other => panic!("{other:?}"),
    }
    let report = archive::verify(&t.objects, "kernels-archive", "k-rot")
        .await
        .unwrap();
    assert!(report.valid, "{:?}", report.errors);
    assert_eq!(report.manifests, 2);
    ledger.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_newest_manifest_is_named_and_not_chained_onto() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start().await;
    let ledger = open(&tmp.path().join("data"));
    let t = target(server.objects().await, &tmp.path().join("work"));
    let mut newest = None;
    for round in 0..2 {
        submit_n(&ledger, &format!("h{round}"), 6).await;
        if let Outcome::Archived { manifest, .. } =
            rotate_once(&ledger, &t, "SYSTEM").await.unwrap()
        {
            newest = Some(*manifest);
        }
    }
    let newest = newest.unwrap();
    let head = kernels::rotator::head::check(&ledger, &t).await.unwrap();
    assert_eq!(head.state, HeadState::Ok, "{head:?}");

    // The newest manifest is replaced by an edited one.
    let key = kernels::rotator::manifest::manifest_key(
        "kernels-archive",
        "k-rot",
        newest.from_seq,
        newest.to_seq,
    );
    let original = std::fs::read(server.object_path(&key)).unwrap();
    let mut edited = newest.clone();
    edited.created_at_ms += 1;
    replace_object(&t.objects, &key, edited.to_bytes()).await;
    let head = kernels::rotator::head::check(&ledger, &t).await.unwrap();
    assert_eq!(head.state, HeadState::Changed, "{head:?}");
    assert!(head.problem.as_deref().unwrap().contains(&key), "{head:?}");

    submit_n(&ledger, "h-after", 3).await;
    let before = ledger.durable_len();
    let err = rotate_once(&ledger, &t, "SYSTEM").await.unwrap_err();
    assert_eq!(err.code(), "archive_head_changed", "{err}");
    assert!(err.to_string().contains(&key), "{err}");
    assert_eq!(ledger.durable_len(), before, "nothing may be recorded");

    // Restored, the next run chains on as usual.
    replace_object(&t.objects, &key, original).await;
    assert!(matches!(
        rotate_once(&ledger, &t, "SYSTEM").await.unwrap(),
        Outcome::Archived { .. }
    ));
    let report = archive::verify(&t.objects, "kernels-archive", "k-rot")
        .await
        .unwrap();
    assert!(report.valid, "{:?}", report.errors);
    ledger.close().unwrap();
}

/// Replaces an object through the S3 API (delete, then put), as someone with
/// write access to the bucket could.
async fn replace_object(objects: &kernels::rotator::objects::Objects, key: &str, body: Vec<u8>) {
    let kernels::rotator::objects::Objects::S3 { client, bucket, .. } = objects else {
        unreachable!()
    };
    client
        .delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(body.into())
        .send()
        .await
        .unwrap();
}

/// `kernels archive verify` lists the first problems of a tampered archive
/// and counts the rest; `--json` lists every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tamper_listing_shows_the_first_problems_and_counts_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start().await;
    let ledger = open(&tmp.path().join("data"));
    let t = target(server.objects().await, &tmp.path().join("work"));
    submit_n(&ledger, "t", 40).await;
    let Outcome::Archived { manifest, .. } = rotate_once(&ledger, &t, "SYSTEM").await.unwrap()
    else {
        panic!("expected an archive");
    };
    // Every request's intent changes (same length): each entry's hash fails.
    let seg = server.object_path(&manifest.segment_key);
    let text = std::fs::read_to_string(&seg).unwrap();
    let tampered = text.replace(r#""intent":"echo""#, r#""intent":"ecHo""#);
    assert_ne!(tampered, text, "{text}");
    std::fs::write(&seg, tampered).unwrap();

    let bucket = server.bucket_dir();
    let args = [
        "archive",
        "verify",
        "--dir",
        bucket.to_str().unwrap(),
        "--kernel-id",
        "k-rot",
    ];
    let json = process::run(tmp.path(), &[&args[..], &["--json"]].concat(), None);
    json.expect_code(1, "archive verify --json of a tampered archive");
    let total = json.json()["errors"].as_array().unwrap().len();
    assert!(total > 30, "{}", json.stdout);

    let text = process::run(tmp.path(), &args, None);
    text.expect_code(1, "archive verify of a tampered archive");
    let listed = text
        .stdout
        .lines()
        .filter(|l| l.starts_with("  error: "))
        .count();
    assert_eq!(listed, 20, "{}", text.stdout);
    let more = format!(
        "  … and {} more ({total} in all; --json lists every one)",
        total - 20
    );
    assert!(
        text.stdout.lines().any(|l| l == more),
        "no {more:?} in {}",
        text.stdout
    );
}
