//! Archived objects against real S3-compatible servers: a multipart upload
//! never replaces another writer's object (s3s-fs and moto), and with
//! `rotation.object_lock` every archived object carries its retention while a
//! bucket without Object Lock is refused (moto, which implements Object Lock).

mod support;

use std::path::Path;
use std::sync::Arc;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use kernels::config::ObjectLock;
use kernels::ledger::{Clock, Ledger, SystemClock};
use kernels::rotator::objects::{ObjectError, Objects, Written};
use kernels::rotator::run::{Outcome, RotationError, Target, rotate_once};
use serde_json::json;
use sha2::{Digest, Sha256};
use support::ledger::submit_n;
use support::moto::Moto;
use support::s3::S3Server;

const PART: usize = 5 * 1024 * 1024;

fn open(dir: &Path) -> Ledger {
    support::ledger::open(dir, "k-obj")
}

/// A file of `len` pseudo-random bytes; answers its SHA-256.
fn big_file(path: &Path, len: usize, seed: u8) -> String {
    let mut bytes = vec![0u8; len];
    let mut x = u32::from(seed) + 1;
    for b in bytes.iter_mut() {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        *b = (x >> 24) as u8;
    }
    std::fs::write(path, &bytes).unwrap();
    hex::encode(Sha256::digest(&bytes))
}

fn client_of(objects: &Objects) -> Client {
    match objects {
        Objects::S3 { client, .. } => client.clone(),
        Objects::Dir(_) => unreachable!(),
    }
}

async fn body_of(client: &Client, bucket: &str, key: &str) -> Vec<u8> {
    client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .to_vec()
}

/// Another writer puts its object (`If-None-Match: *`) while our multipart
/// upload of the same key is under way: our completion must fail and leave
/// its object in place (and, where the store lists uploads, the upload is
/// aborted).
async fn completion_keeps_the_other_writers_object(
    objects: &Objects,
    bucket: &str,
    work: &Path,
    lists_uploads: bool,
) {
    let client = client_of(objects);
    let path = work.join("segment.json");
    let sha = big_file(&path, 2 * PART + 1000, 1);
    let key = "kernels-archive/k/segments/00000000000000000000-00000000000000000009.json";
    let mut upload = objects.start_multipart(key).await.unwrap();
    upload.upload_file(&path, PART).await.unwrap();

    let theirs = b"another writer's object".to_vec();
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .if_none_match("*")
        .body(ByteStream::from(theirs.clone()))
        .send()
        .await
        .expect("the other writer's put (the key is free)");

    match upload.complete(&sha).await {
        Err(ObjectError::Conflict(k)) => assert_eq!(k, key),
        other => panic!("the completion must refuse to replace the object: {other:?}"),
    }
    assert_eq!(
        body_of(&client, bucket, key).await,
        theirs,
        "the other writer's object was replaced"
    );
    if !lists_uploads {
        return;
    }
    let pending = client
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    assert!(
        pending.uploads().is_empty(),
        "the refused upload must be aborted: {:?}",
        pending.uploads()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_completion_never_replaces_another_writers_object_s3s_fs() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start().await;
    let objects = server.objects().await;
    // s3s-fs does not implement ListMultipartUploads.
    completion_keeps_the_other_writers_object(&objects, support::s3::BUCKET, tmp.path(), false)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_completion_never_replaces_another_writers_object_moto() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start();
    moto.create_bucket("plain", false).await;
    let objects = moto.objects("plain", None).await;
    completion_keeps_the_other_writers_object(&objects, "plain", tmp.path(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_in_parts_is_written_once_and_never_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start().await;
    let objects = server.objects().await;
    let key = "kernels-archive/k/segments/big.json";
    let first = tmp.path().join("first");
    let sha = big_file(&first, kernels::rotator::upload::PART_BYTES + PART + 17, 2);
    assert_eq!(
        objects.put_new_file(key, &first, &sha).await.unwrap(),
        Written::Created
    );
    assert_eq!(objects.digest(key).await.unwrap().0, sha);
    // A repeated run writes the same bytes: recognised, nothing replaced.
    assert_eq!(
        objects.put_new_file(key, &first, &sha).await.unwrap(),
        Written::AlreadyThere
    );
    // Other bytes under the key: a conflict, the archived object stays.
    let second = tmp.path().join("second");
    let other = big_file(&second, kernels::rotator::upload::PART_BYTES + 1, 3);
    assert!(matches!(
        objects.put_new_file(key, &second, &other).await,
        Err(ObjectError::Conflict(_))
    ));
    assert_eq!(objects.digest(key).await.unwrap().0, sha);
}

/// `(mode, retain-until seconds)` of an object, read with HeadObject.
async fn retention(client: &Client, bucket: &str, key: &str) -> Option<(String, i64)> {
    let head = client
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    Some((
        head.object_lock_mode()?.as_str().to_owned(),
        head.object_lock_retain_until_date()?.secs(),
    ))
}

fn now_s() -> i64 {
    (SystemClock.now_ms() / 1000) as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_archived_object_carries_the_configured_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start();
    moto.create_bucket("locked", true).await;
    let client = moto.client().await;
    for (mode, days) in [("GOVERNANCE", 3u32), ("COMPLIANCE", 1u32)] {
        let lock = ObjectLock {
            mode: mode.into(),
            days,
        };
        let objects = moto.objects("locked", Some(lock)).await;
        let data = tmp.path().join(format!("data-{mode}"));
        let ledger = open(&data);
        let target = Target {
            objects: objects.clone(),
            prefix: format!("archive-{mode}"),
            work_dir: tmp.path().join("work"),
        };
        let mut keys = Vec::new();
        for round in 0..2 {
            submit_n(&ledger, &format!("r{round}"), 5).await;
            match rotate_once(&ledger, &target, "SYSTEM").await.unwrap() {
                Outcome::Archived { manifest, .. } => {
                    keys.push(manifest.segment_key.clone());
                    keys.push(kernels::rotator::manifest::manifest_key(
                        &target.prefix,
                        "k-obj",
                        manifest.from_seq,
                        manifest.to_seq,
                    ));
                }
                other => panic!("{other:?}"),
            }
        }
        // A file large enough for the multipart path (moto drops retention
        // headers on multipart uploads: the write must put it afterwards).
        let big = tmp.path().join(format!("big-{mode}"));
        let sha = big_file(&big, kernels::rotator::upload::PART_BYTES + PART, 4);
        let big_key = format!("archive-{mode}/k-obj/preserved/big.json");
        objects.put_new_file(&big_key, &big, &sha).await.unwrap();
        keys.push(big_key);

        let expected = now_s() + i64::from(days) * 86_400;
        for key in &keys {
            let (got_mode, until) = retention(&client, "locked", key)
                .await
                .unwrap_or_else(|| panic!("{key} has no Object Lock retention"));
            assert_eq!(got_mode, mode, "{key}");
            assert!(
                (until - expected).abs() < 600,
                "{key}: retained until {until}, expected about {expected}"
            );
        }
        ledger.close().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_without_object_lock_is_refused_and_nothing_is_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start();
    moto.create_bucket("unlocked", false).await;
    let lock = ObjectLock {
        mode: "GOVERNANCE".into(),
        days: 7,
    };
    let objects = moto.objects("unlocked", Some(lock)).await;
    let ledger = open(&tmp.path().join("data"));
    submit_n(&ledger, "x", 5).await;
    let before = ledger.durable_len();
    let target = Target {
        objects: objects.clone(),
        prefix: "kernels-archive".into(),
        work_dir: tmp.path().join("work"),
    };
    let err = rotate_once(&ledger, &target, "SYSTEM").await.unwrap_err();
    assert!(
        matches!(
            err,
            RotationError::Objects(ObjectError::ObjectLockMissing(ref b)) if b == "unlocked"
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), "object_lock_missing");
    assert!(err.to_string().contains("Object Lock"), "{err}");
    assert_eq!(ledger.durable_len(), before, "nothing may be recorded");
    assert!(ledger.state().last_rotation.is_none());
    let listed = moto
        .client()
        .await
        .list_objects_v2()
        .bucket("unlocked")
        .send()
        .await
        .unwrap();
    assert!(listed.contents().is_empty(), "nothing may be uploaded");
    ledger.close().unwrap();
}

/// A rotator over `objects` (not scheduled to run on its own) for a server.
fn rotator(
    ledger: &Ledger,
    objects: Objects,
    bucket: &str,
    object_lock: Option<ObjectLock>,
    work: &Path,
    stop: tokio::sync::watch::Receiver<bool>,
) -> kernels::rotator::Rotator {
    let config = kernels::config::RotationConfig {
        interval: std::time::Duration::from_secs(7 * 86_400),
        bucket: bucket.into(),
        prefix: "kernels-archive".into(),
        region: "us-east-1".into(),
        endpoint: None,
        force_path_style: true,
        object_lock,
        attempt_timeout: std::time::Duration::from_secs(30),
    };
    kernels::rotator::Rotator::start_with(ledger.clone(), config, objects, work.to_owned(), stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preserved_evidence_goes_off_the_box_with_its_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start();
    moto.create_bucket("evidence", true).await;
    let lock = ObjectLock {
        mode: "COMPLIANCE".into(),
        days: 30,
    };
    let objects = moto.objects("evidence", Some(lock.clone())).await;
    let ledger = open(&tmp.path().join("data"));
    submit_n(&ledger, "p", 6).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let rot = rotator(
        &ledger,
        objects,
        "evidence",
        Some(lock),
        &tmp.path().join("work"),
        stop_rx,
    );
    let server = support::server::TestServer::serve_in(
        ledger.clone(),
        64 * 1024,
        Some(Arc::new(rot.clone())),
        &tmp.path().join("data"),
    )
    .await;
    let (code, record) = support::server::post(
        &server.url("/v1/preserve"),
        Some(support::OPERATOR),
        &json!({"reason": "legal hold", "incident": "INC-7", "from_seq": 1, "to_seq": 4}),
    )
    .await;
    assert_eq!(code, 200, "{record}");

    // The file name's range is the record's inclusive range; the copy is read-only.
    assert_eq!(
        (record["from_seq"].as_u64(), record["to_seq"].as_u64()),
        (Some(1), Some(4))
    );
    let path = std::path::PathBuf::from(record["path"].as_str().unwrap());
    let name = path.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(name.ends_with("-INC-7-1-4.json"), "{name}");
    assert!(
        std::fs::metadata(&path).unwrap().permissions().readonly(),
        "{name}"
    );

    // Uploaded, byte for byte, with the retention, and recorded where.
    let key = record["archive"]["key"]
        .as_str()
        .unwrap_or_else(|| panic!("{record}"));
    assert_eq!(key, format!("kernels-archive/k-obj/preserved/{name}"));
    let client = moto.client().await;
    let body = body_of(&client, "evidence", key).await;
    assert_eq!(
        hex::encode(Sha256::digest(&body)),
        record["bundle_sha256"].as_str().unwrap()
    );
    assert_eq!(body, std::fs::read(&path).unwrap());
    let (mode, until) = retention(&client, "evidence", key)
        .await
        .expect("retention");
    assert_eq!(mode, "COMPLIANCE");
    assert!((until - (now_s() + 30 * 86_400)).abs() < 600, "{until}");
    let seq = record["ledger_seq"].as_u64().unwrap();
    let entry = ledger.entries(seq, seq + 1).next().unwrap().unwrap();
    assert_eq!(entry.tool_name.as_deref(), Some("kernel.preserve"));
    assert_eq!(entry.payload.unwrap()["archive"]["key"], key);

    server.stop().await;
    let _ = stop_tx.send(true);
    rot.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preserved_evidence_is_kept_and_recorded_when_the_upload_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s3 = S3Server::start().await;
    let objects = s3.objects().await;
    s3.stop().await;
    let ledger = open(&tmp.path().join("data"));
    submit_n(&ledger, "q", 3).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let rot = rotator(
        &ledger,
        objects,
        support::s3::BUCKET,
        None,
        &tmp.path().join("work"),
        stop_rx,
    );
    let server = support::server::TestServer::serve_in(
        ledger.clone(),
        64 * 1024,
        Some(Arc::new(rot.clone())),
        &tmp.path().join("data"),
    )
    .await;
    let (code, record) = support::server::post(
        &server.url("/v1/preserve"),
        Some(support::OPERATOR),
        &json!({"reason": "incident", "incident": "INC-8"}),
    )
    .await;
    assert_eq!(code, 200, "{record}");
    assert_eq!(record["archive"]["code"], "store_unreachable", "{record}");
    let path = std::path::PathBuf::from(record["path"].as_str().unwrap());
    assert!(path.is_file());
    let last = record["to_seq"].as_u64().unwrap();
    assert!(
        path.to_str()
            .unwrap()
            .ends_with(&format!("-INC-8-0-{last}.json")),
        "{record}"
    );
    server.stop().await;
    let _ = stop_tx.send(true);
    rot.stopped().await;
}
