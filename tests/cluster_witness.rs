//! Peer witnessing in a cluster, run for real: three `kernels serve`
//! members sharing a control plane in moto's S3 server cosign each other's
//! checkpoints (README.md, "A cluster of kernels"; docs/proofs.md).
//!
//! * after a few decisions, a member's `GET /v1/checkpoint` carries the
//!   cosignatures of both peers, and `kernels checkpoint verify --witness
//!   K2 --witness K3 --quorum 2` accepts it
//! * a member whose history is rewritten (its member record pointing at a
//!   server that serves a checkpoint signed with its key but not extending
//!   what its peers cosigned) is refused by both peers — never cosigned,
//!   reported in their status, metrics and `kernels cluster status` — and
//!   still refused after a peer restarts (what it cosigned is durable)
//! * a cosignature offered by a key that is no member's witness key is
//!   refused (403)

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kernels::checkpoint::{Checkpoint, SignedCheckpoint, Witnesses};
use kernels::merkle::Hash;
use kernels::note::{KeyKind, SignerKey, VerifierKey};
use serde_json::{Value, json};
use support::AUDITOR;
use support::cluster::{self, Fleet, POLL, within};
use support::http;
use support::process::{AGENT, Server};

/// A few polls, with room for a loaded CI machine.
const POLLS: Duration = Duration::from_millis(POLL.as_millis() as u64 * 6 + 4000);

async fn text(client: &reqwest::Client, url: &str) -> String {
    let r = client.get(url).bearer_auth(AUDITOR).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.text().await.unwrap()
}

async fn record(fleet: &Fleet, n: u32) -> Value {
    let object = fleet
        .s3()
        .await
        .get_object()
        .bucket(cluster::BUCKET)
        .key(Fleet::key(&format!("members/{}.json", Fleet::kernel_id(n))))
        .send()
        .await
        .unwrap();
    serde_json::from_slice(&object.body.collect().await.unwrap().into_bytes()).unwrap()
}

fn key(v: &Value, field: &str) -> VerifierKey {
    VerifierKey::parse(v[field].as_str().unwrap_or_else(|| panic!("{field}: {v}"))).unwrap()
}

async fn witness_view(client: &reqwest::Client, base: &str, peer: &str) -> Value {
    cluster::status(client, base).await["cluster"]["witness"]["peers"][peer].clone()
}

async fn metric(client: &reqwest::Client, base: &str, name: &str) -> Option<f64> {
    let body = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A server that pretends to be `prod-003` with a rewritten history: its
/// checkpoint is signed with prod-003's real key but is of another tree;
/// its consistency proofs are made up. Counts the cosignatures delivered.
async fn forger(key: SignerKey, size: u64) -> (String, Arc<AtomicUsize>) {
    use axum::routing::{get, post};
    let forged = Checkpoint::new(key.name(), size, Hash([0x5a; 32]))
        .sign(&key)
        .unwrap()
        .to_string();
    let delivered = Arc::new(AtomicUsize::new(0));
    let counter = delivered.clone();
    let proof_checkpoint = forged.clone();
    let app = axum::Router::new()
        .route("/ready", get(|| async { "ready" }))
        .route("/v1/checkpoint", get(move || async move { forged }))
        .route(
            "/v1/proofs/consistency",
            get(
                move |q: axum::extract::Query<std::collections::HashMap<String, u64>>| async move {
                    axum::Json(json!({
                        "from_size": q.0["from_size"], "to_size": q.0["to_size"],
                        "proof": [Hash([1; 32]), Hash([2; 32]), Hash([3; 32])],
                        "checkpoint": proof_checkpoint,
                    }))
                },
            ),
        )
        .route(
            "/v1/checkpoint/cosignatures",
            post(move || async move {
                counter.fetch_add(1, Ordering::SeqCst);
                "{}"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, delivered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_cosign_each_others_checkpoints_and_refuse_a_rewritten_history() {
    let fleet = Fleet::start().await;
    let client = http::client();
    // prod-003 signs with a key file the test holds: the forger uses it.
    fleet
        .cli(
            &["keygen", "--kernel-id", "prod-003", "--out", "prod-003.key"],
            None,
        )
        .expect_code(0, "keygen");
    let key_file = fleet.path().join("prod-003.key");
    let key_path = key_file.display().to_string();
    let start = |n: u32| {
        let mut extra = vec![("KERNELS_CLUSTER_PEER_TOKEN", AUDITOR)];
        if n == 3 {
            extra.push(("KERNELS_SIGNING_KEY_FILE", key_path.as_str()));
        }
        fleet.member(n, "127.0.0.1:0", &extra)
    };
    let mut members: Vec<Option<Server>> = (1..=3).map(|n| Some(start(n))).collect();
    let bases: Vec<String> = members
        .iter()
        .map(|m| m.as_ref().unwrap().url(""))
        .collect();

    for i in 0..4 {
        let body = json!({"request_id": format!("w-{i}"), "actor": "agent-001",
            "intent": "echo a word", "tool_call": {"name": "echo", "params": {"text": "x"}}});
        let (code, r) =
            http::post(&client, &format!("{}/v1/requests", bases[0]), AGENT, &body).await;
        assert_eq!(code, 200, "{r}");
    }
    let records = [
        record(&fleet, 1).await,
        record(&fleet, 2).await,
        record(&fleet, 3).await,
    ];
    let log_key = key(&records[0], "verifier_key");
    let (k2, k3) = (
        key(&records[1], "witness_key"),
        key(&records[2], "witness_key"),
    );
    assert_eq!(k3.kind(), KeyKind::CosignatureV1);

    // prod-001's checkpoint of every decision, cosigned by both peers.
    let size = cluster::status(&client, &bases[0]).await["ledger_length"]
        .as_u64()
        .unwrap();
    let both = Witnesses::new(vec![k2.clone(), k3.clone()], Some(2)).unwrap();
    let (cosigned, _) = within(
        POLLS,
        "prod-001 cosigned by prod-002 and prod-003",
        || async {
            let t = text(&client, &format!("{}/v1/checkpoint", bases[0])).await;
            let cp = SignedCheckpoint::parse(&t).unwrap();
            (cp.checkpoint.size == size && cp.verify(&log_key, &both).is_ok()).then_some(t)
        },
    )
    .await;
    std::fs::write(fleet.path().join("prod-001.checkpoint"), &cosigned).unwrap();
    let stranger = SignerKey::generate("kernels/stranger", KeyKind::CosignatureV1).unwrap();
    let (log, k2s, k3s) = (log_key.to_string(), k2.to_string(), k3.to_string());
    let strangers = stranger.verifier().to_string();
    let verify = |w1: &str, w2: &str| {
        fleet.cli(
            &[
                "checkpoint",
                "verify",
                "--key",
                &log,
                "--witness",
                w1,
                "--witness",
                w2,
                "--quorum",
                "2",
                "prod-001.checkpoint",
            ],
            None,
        )
    };
    verify(&k2s, &k3s).expect_code(0, "checkpoint verify with both peers");
    // The check can fail: a stranger's witness key does not make a quorum.
    verify(&k2s, &strangers).expect_code(1, "checkpoint verify with a stranger");
    let (code, refused) = http::post(
        &client,
        &format!("{}/v1/checkpoint/cosignatures", bases[0]),
        AUDITOR,
        &json!({"witness_key": stranger.verifier().to_string(), "checkpoint": cosigned}),
    )
    .await;
    assert_eq!(code, 403, "{refused}");

    // Both peers cosigned prod-003's current checkpoint; then its history
    // is rewritten: its member record points at a server that serves
    // another tree, signed with its key.
    let size3 = cluster::status(&client, &bases[2]).await["ledger_length"]
        .as_u64()
        .unwrap();
    for base in &bases[..2] {
        within(POLLS, "prod-003 cosigned", || async {
            (witness_view(&client, base, "prod-003").await["cosigned_size"] == size3).then_some(())
        })
        .await;
    }
    members[2].take().unwrap().terminate();
    let signer = SignerKey::parse(std::fs::read_to_string(&key_file).unwrap().trim()).unwrap();
    let (forged_url, delivered) = forger(signer, size3 + 3).await;
    let mut forged = records[2].clone();
    forged["advertise_url"] = json!(forged_url);
    fleet
        .s3()
        .await
        .put_object()
        .bucket(cluster::BUCKET)
        .key(Fleet::key("members/prod-003.json"))
        .body(serde_json::to_vec(&forged).unwrap().into())
        .send()
        .await
        .unwrap();
    for base in &bases[..2] {
        let (view, _) = within(POLLS, "the rewritten prod-003 refused", || async {
            let v = witness_view(&client, base, "prod-003").await;
            v["refused"].is_string().then_some(v)
        })
        .await;
        assert!(
            view["refused"]
                .as_str()
                .unwrap()
                .contains("does not extend"),
            "{view}"
        );
        assert_eq!(view["cosigned_size"], size3, "{view}");
        assert_eq!(
            metric(&client, base, "kernels_cluster_witness_refused").await,
            Some(1.0)
        );
    }
    let out = fleet.cli(&["cluster", "status"], Some(AUDITOR));
    out.expect_code(1, "cluster status with a refused member");
    assert!(
        out.stdout
            .contains("refuses to cosign prod-003's checkpoint"),
        "{}",
        out.stdout
    );

    // A restarted witness still refuses it: what it cosigned is durable.
    members[0].take().unwrap().terminate();
    let again = start(1);
    let base = again.url("");
    let (view, _) = within(POLLS, "prod-003 refused after a restart", || async {
        let v = witness_view(&client, &base, "prod-003").await;
        v["refused"].is_string().then_some(v)
    })
    .await;
    assert_eq!(view["cosigned_size"], size3, "{view}");
    assert_eq!(
        delivered.load(Ordering::SeqCst),
        0,
        "the forged history was never cosigned"
    );
    drop(again);
}
