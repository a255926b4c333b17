//! A cluster of kernels, run for real: three (or four) `kernels serve`
//! processes on 127.0.0.1 sharing a control plane in moto's S3 server, the
//! operator's `kernels cluster …` commands of the real binary, and HAProxy
//! in front of the members (README.md, "A cluster of kernels").
//!
//! * shared policy: a put reaches every member within one poll and is
//!   recorded there; an invalid object is refused and reported; a member
//!   given another policy by hand is reported as drift; the control plane
//!   down leaves every member deciding under its last policy, reported;
//!   a second instance with a taken number is refused; leaving is recorded
//! * cluster halt and recover: every member obeys the flag, also the one
//!   the direct call cannot reach, a member starting under the flag starts
//!   halted, a member halted by its own operator stays halted
//! * play 6.1: a member added to a running cluster, registered with HAProxy
//!   through its runtime API, checked, given traffic, logged; then removed
//! * HAProxy: one token's requests stay on one member; SIGKILL moves them
//!   to another at once, no acknowledged decision is lost, and the
//!   restarted member rejoins and gets its agents back

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::cluster::{self, AGENT_TOKENS, Fleet, POLL, entries, within};
use support::haproxy::{self, Haproxy};
use support::http;
use support::process::{AGENT, OPERATOR, ServeConfig, Server};

/// One poll interval and what a poll itself may take (moto on a loaded
/// CI machine): "within one poll".
const ONE_POLL: Duration = Duration::from_millis(POLL.as_millis() as u64 + 1200);

fn request(id: &str, actor: &str) -> Value {
    json!({"request_id": id, "actor": actor, "intent": "echo a word",
           "tool_call": {"name": "echo", "params": {"text": "x"}}})
}

async fn submit(client: &reqwest::Client, base: &str, token: &str, body: &Value) -> (u16, Value) {
    http::post(client, &format!("{base}/v1/requests"), token, body).await
}

fn events<'a>(all: &'a [Value], tool: &str) -> Vec<&'a Value> {
    all.iter().filter(|e| e["tool_name"] == tool).collect()
}

/// The member's whole stored chain verifies on its own.
async fn verifies_alone(client: &reqwest::Client, base: &str) {
    let (code, v) = http::post(client, &format!("{base}/v1/verify"), OPERATOR, &json!({})).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["valid"], true, "{base}: {v}");
    assert!(v["entries_verified"].as_u64().unwrap() > 3, "{v}");
}

/// The text body of an auditor's `GET url` (a checkpoint or a key).
async fn checkpoint_text(client: &reqwest::Client, url: &str) -> String {
    let r = client
        .get(url)
        .bearer_auth(support::AUDITOR)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.text().await.unwrap()
}

async fn metrics(client: &reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_policy_reaches_every_member_and_drift_and_refusals_are_reported() {
    let fleet = Fleet::start().await;
    let client = http::client();
    // prod-003 signs with a configured key file, the others with the key
    // their data dirs create.
    fleet
        .cli(
            &["keygen", "--kernel-id", "prod-003", "--out", "prod-003.key"],
            None,
        )
        .expect_code(0, "keygen");
    let key_file = fleet.path().join("prod-003.key").display().to_string();
    let members: Vec<Server> = (1..=3)
        .map(|n| {
            let extra: &[(&str, &str)] = if n == 3 {
                &[("KERNELS_SIGNING_KEY_FILE", &key_file)]
            } else {
                &[]
            };
            fleet.member(n, "127.0.0.1:0", extra)
        })
        .collect();
    let bases: Vec<String> = members.iter().map(|m| m.url("")).collect();

    // Each member object names the key its checkpoints verify with.
    let s3 = fleet.s3().await;
    for (i, base) in bases.iter().enumerate() {
        let key = Fleet::kernel_id(i as u32 + 1);
        let object = s3
            .get_object()
            .bucket(cluster::BUCKET)
            .key(Fleet::key(&format!("members/{key}.json")))
            .send()
            .await
            .unwrap();
        let record: Value =
            serde_json::from_slice(&object.body.collect().await.unwrap().into_bytes()).unwrap();
        let served = checkpoint_text(&client, &format!("{base}/v1/checkpoint/key")).await;
        assert_eq!(record["verifier_key"], served.trim(), "{key}: {record}");
    }
    let configured = std::fs::read_to_string(&key_file).unwrap();
    let configured = kernels::note::SignerKey::parse(configured.trim()).unwrap();
    assert_eq!(
        checkpoint_text(&client, &format!("{}/v1/checkpoint/key", bases[2]))
            .await
            .trim(),
        configured.verifier().to_string(),
        "prod-003 signs with its configured key file"
    );

    // Each member recorded its join with the members it saw (itself included).
    for (i, base) in bases.iter().enumerate() {
        let all = entries(&client, base).await;
        let joins = events(&all, "kernel.cluster_join");
        assert_eq!(joins.len(), 1, "{base}: {joins:?}");
        let p = &joins[0]["payload"];
        assert_eq!(p["cluster_id"], "prod");
        assert_eq!(p["kernel_id"], Fleet::kernel_id(i as u32 + 1));
        assert_eq!(p["advertise_url"], base.as_str());
        assert_eq!(p["members"].as_array().unwrap().len(), i + 1, "{p}");
    }
    let (code, report) = fleet.status();
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["members"].as_array().unwrap().len(), 3);
    assert!(
        report["healthy"] == true && report["one_policy"] == true,
        "{report:#}"
    );
    // Nothing is decided meanwhile: each member's checkpoint size is the
    // size of its signed checkpoint.
    for (i, base) in bases.iter().enumerate() {
        let checkpoint = checkpoint_text(&client, &format!("{base}/v1/checkpoint")).await;
        let size: u64 = checkpoint.lines().nth(1).unwrap().parse().unwrap();
        assert_eq!(report["members"][i]["checkpoint_size"], size, "{report:#}");
    }

    // A second instance with a taken number is refused, and changes nothing.
    let dup = ServeConfig {
        data_dir: "prod-002-again".into(),
        ..fleet.serve_config(2)
    };
    let mut env = fleet.env();
    env.push(("KERNELS_CLUSTER_INSTANCE".into(), "2".into()));
    let refused = Server::try_start_on(&dup, "127.0.0.1:0", &env)
        .err()
        .expect("a second prod-002 must not serve");
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("already claimed by another instance"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        fleet.status().1["members"][1]["advertise_url"],
        bases[1].as_str()
    );

    // An invalid policy file is refused by the CLI: nothing is written.
    std::fs::write(
        fleet.path().join("bad.yaml"),
        "allowed_actors: [a]\nallowed_toolz: [x]\n",
    )
    .unwrap();
    let out = fleet.cli(
        &["cluster", "policy", "put", "bad.yaml", "--reason", "typo"],
        None,
    );
    out.expect_code(1, "policy put of an invalid file");
    assert!(out.stderr.contains("allowed_toolz"), "{}", out.stderr);
    fleet
        .cli(&["cluster", "policy", "show"], None)
        .expect_code(1, "no shared policy yet");

    // A put reaches all three within one poll, recorded on each.
    let text = "allowed_actors: [agent-001, agent-002, agent-003]\nallowed_tools: [echo, add, search]\nmax_intent_length: 1000\n";
    std::fs::write(fleet.path().join("new.yaml"), text).unwrap();
    let out = fleet.cli(
        &[
            "cluster",
            "policy",
            "put",
            "new.yaml",
            "--reason",
            "CHG-118: add agent-003",
            "--json",
        ],
        None,
    );
    out.expect_code(0, "policy put");
    let put_at = Instant::now();
    let put = out.json();
    let hash = put["policy_hash"].as_str().unwrap().to_owned();
    let mut slowest = Duration::ZERO;
    for base in &bases {
        // Recorded (durable, in the evidence), not only in the state.
        let ((), took) = within(ONE_POLL * 2, "the shared policy", || async {
            let all = entries(&client, base).await;
            events(&all, "kernel.policy_update")
                .iter()
                .any(|u| u["actor"] == "cluster:prod")
                .then_some(())
        })
        .await;
        assert_eq!(
            cluster::status(&client, base).await["policy_hash"],
            hash.as_str()
        );
        slowest = slowest.max(took);
    }
    let elapsed = put_at.elapsed();
    eprintln!("shared policy on all three {elapsed:?} after the put (poll {POLL:?})");
    assert!(elapsed <= ONE_POLL, "not within one poll: {elapsed:?}");
    let sha = hex::encode(Sha256::digest(text.as_bytes()));
    for base in &bases {
        let all = entries(&client, base).await;
        let updates = events(&all, "kernel.policy_update");
        let last = updates.last().unwrap();
        assert_eq!(last["actor"], "cluster:prod", "{last}");
        assert!(
            last["intent"]
                .as_str()
                .unwrap()
                .contains("CHG-118: add agent-003"),
            "{last}"
        );
        let c = &last["payload"]["cluster"];
        assert_eq!(c["id"], "prod");
        assert_eq!(c["object_sha256"], sha.as_str());
        assert_eq!(c["revision"], put["revision"]);
        assert!(c["etag"].is_string(), "{c}");
        assert_eq!(last["payload"]["source"], "cluster");
        assert_eq!(
            updates
                .iter()
                .filter(|u| u["actor"] == "cluster:prod")
                .count(),
            1,
            "applied once"
        );
        let (code, r) = submit(
            &client,
            base,
            AGENT,
            &request(&format!("a3-{}", base.len()), "agent-003"),
        )
        .await;
        assert_eq!((code, r["decision"].as_str()), (200, Some("ALLOW")), "{r}");
    }
    // Polls after that are conditional GETs answered 304.
    tokio::time::sleep(POLL * 2).await;
    for base in &bases {
        let text = metrics(&client, base).await;
        let not_modified = text
            .lines()
            .find(|l| {
                l.starts_with("kernels_cluster_reads_total")
                    && l.contains("object=\"policy\"")
                    && l.contains("result=\"not_modified\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(not_modified >= 1, "no 304 for the policy object:\n{text}");
    }
    let shown = fleet.cli(&["cluster", "policy", "show", "--json"], None);
    shown.expect_code(0, "policy show");
    assert_eq!(shown.json()["object_sha256"], sha.as_str());

    // prod-002 is given another policy by hand: status reports the drift.
    let (code, r) = http::put(
        &client,
        &format!("{}/v1/policy", bases[1]),
        OPERATOR,
        &json!({"policy": {"allowed_actors": ["agent-001"], "allowed_tools": ["echo"]}, "reason": "by hand"}),
    )
    .await;
    assert_eq!(code, 200, "{r}");
    let (code, report) = fleet.status();
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["reference_policy_hash"], hash.as_str());
    let drift: Vec<bool> = report["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["drift"].as_bool().unwrap())
        .collect();
    assert_eq!(drift, [false, true, false], "{report:#}");
    assert!(report["healthy"] == true && report["one_policy"] == false);
    let words = fleet.cli(&["cluster", "status"], Some(support::AUDITOR));
    words.expect_code(1, "status in words");
    assert!(
        words.stdout.starts_with("cluster prod: POLICY DRIFT"),
        "{}",
        words.stdout
    );
    assert!(
        words.stdout.contains("prod-002: policy drift"),
        "{}",
        words.stdout
    );
    // The hand-made policy stays until the next put (it is not reapplied).
    tokio::time::sleep(POLL * 2).await;
    assert_ne!(
        cluster::status(&client, &bases[1]).await["policy_hash"],
        hash.as_str()
    );

    // An invalid object written behind the CLI's back is refused by every
    // member, reported, and the running policy kept.
    let s3 = fleet.s3().await;
    s3.put_object()
        .bucket(cluster::BUCKET)
        .key(Fleet::key("policy.yaml"))
        .body(b"allowed_actors: [everyone\n".to_vec().into())
        .send()
        .await
        .unwrap();
    for base in &bases {
        within(ONE_POLL * 2, "the refusal", || async {
            let s = cluster::status(&client, base).await;
            (!s["cluster"]["policy"]["rejected"].is_null()).then_some(())
        })
        .await;
        assert!(
            metrics(&client, base)
                .await
                .contains("kernels_cluster_policy_rejected 1")
        );
    }
    assert_eq!(
        cluster::status(&client, &bases[0]).await["policy_hash"],
        hash.as_str()
    );
    let (code, report) = fleet.status();
    assert_eq!(code, Some(1));
    assert_eq!(report["healthy"], false, "{report:#}");
    assert!(
        report["problems"]
            .to_string()
            .contains("refuses the shared policy object"),
        "{report:#}"
    );

    // Leaving removes the member object and is recorded.
    let out = fleet.cli(
        &[
            "cluster",
            "leave",
            "--server",
            &bases[2],
            "--reason",
            "decommission",
            "--json",
        ],
        Some(OPERATOR),
    );
    out.expect_code(0, "leave");
    let left = &entries(&client, &bases[2]).await;
    let leave = events(left, "kernel.cluster_leave");
    assert_eq!(leave.len(), 1);
    assert_eq!(leave[0]["actor"], "env:KERNELS_OPERATOR_TOKEN");
    assert!(
        leave[0]["intent"]
            .as_str()
            .unwrap()
            .contains("decommission")
    );
    let gone = s3
        .head_object()
        .bucket(cluster::BUCKET)
        .key(Fleet::key("members/prod-003.json"))
        .send()
        .await;
    assert!(gone.is_err(), "the member object is removed");
    assert_eq!(fleet.status().1["members"].as_array().unwrap().len(), 2);

    // The control plane down: members keep deciding under their last
    // recorded policy and report it unreachable.
    let mut fleet = fleet;
    fleet.stop_s3();
    let out = fleet.cli(&["cluster", "halt", "--reason", "s3 down"], Some(OPERATOR));
    out.expect_unusable("cluster halt without the control plane");
    assert!(
        out.stderr.contains("kernels halt --server URL"),
        "{}",
        out.stderr
    );
    fleet
        .cli(&["cluster", "status"], Some(support::AUDITOR))
        .expect_unusable("cluster status without the control plane");
    for base in &bases[..2] {
        within(
            ONE_POLL * 3,
            "control plane reported unreachable",
            || async {
                let s = cluster::status(&client, base).await;
                (s["cluster"]["control_plane"]["reachable"] == false).then_some(())
            },
        )
        .await;
        assert!(
            metrics(&client, base)
                .await
                .contains("kernels_cluster_control_plane_up 0")
        );
    }
    let (code, r) = submit(
        &client,
        &bases[0],
        AGENT,
        &request("while-s3-down", "agent-003"),
    )
    .await;
    assert_eq!((code, r["decision"].as_str()), (200, Some("ALLOW")), "{r}");
    let (code, r) = submit(
        &client,
        &bases[1],
        AGENT,
        &request("while-s3-down", "agent-003"),
    )
    .await;
    assert_eq!(
        (code, r["decision"].as_str()),
        (200, Some("DENY")),
        "prod-002 keeps its own: {r}"
    );
    // A restart while it is down: the member serves under its last recorded
    // policy, says so, and claims its member object at a later poll; a new
    // instance, which has never seen the cluster, is refused.
    let mut members = members.into_iter();
    let first = members.next().unwrap();
    let (code, stderr) = first.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    let first = fleet.member(1, "127.0.0.1:0", &[]);
    let s = cluster::status(&client, &first.url("")).await;
    assert_eq!(s["policy_hash"], hash.as_str(), "{s}");
    assert_eq!(s["cluster"]["control_plane"]["reachable"], false, "{s}");
    assert_eq!(s["cluster"]["member_object_pending"], true, "{s}");
    let (code, r) = submit(
        &client,
        &first.url(""),
        AGENT,
        &request("restarted-s3-down", "agent-003"),
    )
    .await;
    assert_eq!((code, r["decision"].as_str()), (200, Some("ALLOW")), "{r}");
    let fresh = fleet
        .try_member(5, "127.0.0.1:0", &[])
        .err()
        .expect("a first join needs the control plane");
    assert_eq!(fresh.code, Some(2), "{}", fresh.stderr);
    assert!(
        fresh
            .stderr
            .contains("a first join needs the control plane"),
        "{}",
        fresh.stderr
    );
    for m in members.chain([first]) {
        let (code, stderr) = m.terminate();
        assert_eq!(code, Some(0), "{stderr}");
    }
    drop(fleet);
}

async fn state_of(client: &reqwest::Client, base: &str) -> Value {
    cluster::status(client, base).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_halt_reaches_every_member_even_one_the_direct_call_misses() {
    let fleet = Fleet::start().await;
    let client = http::client();
    // prod-003 advertises an address nobody listens on: the operator's
    // direct call cannot reach it, only the flag can.
    let nowhere = format!("http://127.0.0.1:{}", haproxy::free_port());
    let members = [
        fleet.member(1, "127.0.0.1:0", &[]),
        fleet.member(2, "127.0.0.1:0", &[]),
        fleet.member(
            3,
            "127.0.0.1:0",
            &[("KERNELS_CLUSTER_ADVERTISE_URL", &nowhere)],
        ),
    ];
    let bases: Vec<String> = members.iter().map(|m| m.url("")).collect();

    let out = fleet.cli(
        &[
            "cluster",
            "halt",
            "--reason",
            "incident 7: runaway agent",
            "--json",
        ],
        Some(OPERATOR),
    );
    out.expect_code(1, "cluster halt with one member unreachable");
    let halted_at = Instant::now();
    let answer = out.json();
    // A member whose own poll saw the flag first answers already_halted.
    let outcomes: Vec<(&str, &str)> = answer["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let outcome = m["outcome"].as_str().unwrap();
            let reached = if outcome == "already_halted" {
                "halted"
            } else {
                outcome
            };
            (m["member"].as_str().unwrap(), reached)
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("prod-001", "halted"),
            ("prod-002", "halted"),
            ("prod-003", "not reached")
        ],
        "{answer:#}"
    );
    // prod-003 halts on its own, within one poll, recorded as the cluster's.
    within(
        ONE_POLL,
        "prod-003 halts by the flag (recorded)",
        || async {
            let all = entries(&client, &bases[2]).await;
            all.iter().any(|e| e["decision"] == "HALT").then_some(())
        },
    )
    .await;
    eprintln!(
        "prod-003 halted by the flag {:?} after the command",
        halted_at.elapsed()
    );
    for base in &bases {
        let s = state_of(&client, base).await;
        assert_eq!(s["state"], "HALTED", "{s}");
        assert_eq!(s["last_halt"]["actor"], "cluster:prod", "{s}");
        assert_eq!(s["last_halt"]["reason"], "incident 7: runaway agent");
        let (code, r) = submit(&client, base, AGENT, &request("after-halt", "agent-001")).await;
        assert_eq!(code, 409, "{r}");
        let all = entries(&client, base).await;
        assert_eq!(
            all.iter().filter(|e| e["decision"] == "HALT").count(),
            1,
            "halted once"
        );
    }

    // A member that starts while the flag is set starts halted.
    let fourth = fleet.member(4, "127.0.0.1:0", &[]);
    let s = state_of(&client, &fourth.url("")).await;
    assert_eq!(s["state"], "HALTED", "{s}");
    assert_eq!(s["last_halt"]["actor"], "cluster:prod");

    // Recovery: the flag is cleared, every member the cluster halted recovers.
    let out = fleet.cli(
        &[
            "cluster",
            "recover",
            "--reason",
            "root cause fixed",
            "--json",
        ],
        Some(OPERATOR),
    );
    out.expect_code(1, "cluster recover with one member unreachable");
    let all_bases: Vec<String> = bases.iter().cloned().chain([fourth.url("")]).collect();
    for base in &all_bases {
        within(ONE_POLL, "recovered", || async {
            (state_of(&client, base).await["state"] == "IDLE").then_some(())
        })
        .await;
        let (code, r) = submit(&client, base, AGENT, &request("after-recover", "agent-001")).await;
        assert_eq!((code, r["decision"].as_str()), (200, Some("ALLOW")), "{r}");
        let all = entries(&client, base).await;
        let recovers = events(&all, "kernel.recover");
        assert_eq!(recovers.len(), 1, "{base}: recovered once");
        assert_eq!(recovers[0]["actor"], "cluster:prod");
    }

    // A member halted by its own operator is not the cluster's to recover.
    let (code, r) = http::post(
        &client,
        &format!("{}/v1/halt", bases[0]),
        OPERATOR,
        &json!({"reason": "local investigation"}),
    )
    .await;
    assert_eq!(code, 200, "{r}");
    fleet
        .cli(&["cluster", "halt", "--reason", "drill"], Some(OPERATOR))
        .expect_code(1, "drill halt");
    let out = fleet.cli(
        &["cluster", "recover", "--reason", "drill over", "--json"],
        Some(OPERATOR),
    );
    let answer = out.json();
    assert_eq!(answer["members"][0]["outcome"], "refused", "{answer:#}");
    assert!(
        answer["members"][0]["error"]
            .as_str()
            .unwrap()
            .contains("not_cluster_halt")
            || answer["members"][0]["error"]
                .as_str()
                .unwrap()
                .contains("not by the cluster"),
        "{answer:#}"
    );
    within(ONE_POLL, "prod-002 recovered from the drill", || async {
        (state_of(&client, &bases[1]).await["state"] == "IDLE").then_some(())
    })
    .await;
    tokio::time::sleep(POLL * 2).await;
    let s = state_of(&client, &bases[0]).await;
    assert_eq!(s["state"], "HALTED", "{s}");
    assert_eq!(s["last_halt"]["reason"], "local investigation");
    for base in &all_bases {
        verifies_alone(&client, base).await;
    }
    // forget: refused for a member that still answers, done for one gone.
    let out = fleet.cli(&["cluster", "forget", "prod-004"], None);
    out.expect_code(1, "forget a member that answers");
    assert!(out.stderr.contains("still answers"), "{}", out.stderr);
    let (code, stderr) = fourth.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    fleet
        .cli(&["cluster", "forget", "prod-004"], None)
        .expect_code(0, "forget a member that is gone");
    let listed: Vec<String> = fleet.status().1["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["kernel_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ["prod-001", "prod-002", "prod-003"]);
    fleet
        .cli(&["cluster", "forget", "prod-004"], None)
        .expect_code(1, "forget twice");
    for m in members {
        let (code, stderr) = m.terminate();
        assert_eq!(code, Some(0), "{stderr}");
    }
}

/// Health-check interval HAProxy is configured with (`fall 2 rise 2`).
const CHECK: Duration = Duration::from_millis(200);

/// Which members recorded each request id (more than one only for a
/// request retried on another member after its first member died with the
/// answer in flight: cross-instance idempotency holds only while the
/// actor's member is up, README.md "A cluster of kernels").
async fn owners(
    client: &reqwest::Client,
    bases: &[String],
) -> std::collections::BTreeMap<String, Vec<(usize, Value)>> {
    let mut map: std::collections::BTreeMap<String, Vec<(usize, Value)>> = Default::default();
    for (i, base) in bases.iter().enumerate() {
        for e in entries(client, base).await {
            if let Some(id) = e["request_id"].as_str()
                && !e["tool_name"].as_str().unwrap_or("").starts_with("kernel.")
                && e["decision"] != "HALT"
            {
                map.entry(id.to_owned()).or_default().push((i, e.clone()));
            }
        }
    }
    map
}

/// The member whose entry `receipt` acknowledges.
fn decided_by(
    owner: &std::collections::BTreeMap<String, Vec<(usize, Value)>>,
    receipt: &Value,
) -> usize {
    owner[receipt["request_id"].as_str().unwrap()]
        .iter()
        .find(|(_, e)| e["entry_hash"] == receipt["evidence_hash"])
        .expect("an acknowledged decision is recorded")
        .0
}

/// The one member that recorded `id`.
fn single(owner: &std::collections::BTreeMap<String, Vec<(usize, Value)>>, id: &str) -> usize {
    let on = &owner[id];
    assert_eq!(
        on.len(),
        1,
        "{id} is recorded by members {:?}",
        on.iter().map(|o| o.0).collect::<Vec<_>>()
    );
    on[0].0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_keeps_a_token_on_one_member_and_fails_over_without_losing_decisions() {
    let fleet = Fleet::start().await;
    let client = http::client();
    let listens: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", haproxy::free_port()))
        .collect();
    let mut members: Vec<Option<Server>> = (1..=3)
        .map(|n| Some(fleet.member(n, &listens[n as usize - 1], &[])))
        .collect();
    let bases: Vec<String> = listens.iter().map(|l| format!("http://{l}")).collect();

    // The load balancer's configuration comes from the member objects.
    let front: std::net::SocketAddr = format!("127.0.0.1:{}", haproxy::free_port())
        .parse()
        .unwrap();
    let out = fleet.cli(
        &[
            "cluster",
            "haproxy-config",
            "--bind",
            &front.to_string(),
            "--check-interval",
            "200ms",
        ],
        None,
    );
    out.expect_code(0, "haproxy-config");
    let config = out.stdout.clone();
    for (n, listen) in listens.iter().enumerate() {
        let line = format!("server prod-00{} {listen} check inter 200ms", n + 1);
        assert!(config.contains(&line), "{line}\n{config}");
    }
    let lb = Haproxy::start(fleet.path(), &config, front);
    let through = lb.url("");

    // One token's requests all land on one member; the tokens spread.
    for (t, token) in AGENT_TOKENS.iter().enumerate() {
        for j in 0..4 {
            let (code, r) = submit(
                &client,
                &through,
                token,
                &request(&format!("t{t}-r{j}"), "agent-001"),
            )
            .await;
            assert_eq!(
                (code, r["decision"].as_str()),
                (200, Some("ALLOW")),
                "{r}\n{}",
                lb.log()
            );
        }
    }
    let owner = owners(&client, &bases).await;
    let mut member_of = Vec::new();
    for t in 0..AGENT_TOKENS.len() {
        let on: std::collections::BTreeSet<usize> = (0..4)
            .map(|j| single(&owner, &format!("t{t}-r{j}")))
            .collect();
        assert_eq!(on.len(), 1, "token {t} spread over members {on:?}");
        member_of.push(*on.first().unwrap());
    }
    let used: std::collections::BTreeSet<usize> = member_of.iter().copied().collect();
    assert!(used.len() >= 2, "8 tokens all on one member: {member_of:?}");

    // SIGKILL the member of token 0 while its agent keeps submitting (a
    // failed attempt is retried with the same request id, as the client does).
    let victim = member_of[0];
    let token = AGENT_TOKENS[0];
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let agent = {
        let client = client.clone();
        let through = through.clone();
        tokio::spawn(async move {
            let mut acked: Vec<(Instant, Value)> = Vec::new();
            let mut failures = 0u32;
            let mut i = 0;
            while !*stop_rx.borrow() {
                let id = format!("fail-{i}");
                let sent = client
                    .post(format!("{through}/v1/requests"))
                    .bearer_auth(token)
                    .json(&request(&id, "agent-001"))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => {
                        acked.push((Instant::now(), r.json().await.unwrap()));
                        i += 1;
                    }
                    _ => {
                        failures += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (acked, failures)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    members[victim].take().unwrap().kill();
    // Every answer from here on comes from another member (the victim is reaped).
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_tx.send(true).unwrap();
    let (acked, failures) = agent.await.unwrap();
    let before = acked.iter().filter(|(t, _)| *t < killed_at).count();
    let first_after = acked
        .iter()
        .find(|(t, _)| *t > killed_at)
        .map(|(t, _)| *t - killed_at)
        .expect("the agent was answered after the kill");
    eprintln!(
        "failover: {before} acknowledged before the kill, first answer {first_after:?} after it, {failures} failed attempt(s), {} acknowledged in all",
        acked.len()
    );
    assert!(before >= 3, "the agent was not running before the kill");
    assert!(
        first_after <= CHECK * 2 + Duration::from_millis(500),
        "failover took {first_after:?} (checks every {CHECK:?}, fall 2)"
    );

    // The killed member restarts on its address and rejoins: its record is
    // refreshed, its join is not recorded again, its start is.
    let (code, before_restart) = fleet.status();
    assert_eq!(code, Some(1), "a member is down: {before_restart:#}");
    assert_eq!(before_restart["members"][victim]["reachable"], false);
    assert_eq!(before_restart["healthy"], false);
    let n = victim as u32 + 1;
    members[victim] = Some(fleet.member(n, &listens[victim], &[]));
    let all = entries(&client, &bases[victim]).await;
    let joins = events(&all, "kernel.cluster_join");
    assert_eq!(joins.len(), 1, "a restart is not a second join");
    let joined = joins[0]["ledger_seq"].as_u64().unwrap();
    assert!(
        events(&all, "kernel.start")
            .iter()
            .any(|e| e["ledger_seq"].as_u64().unwrap() > joined),
        "the restart records kernel.start"
    );
    let after_restart = fleet.status().1;
    assert!(
        after_restart["members"][victim]["started_at"].as_u64()
            > before_restart["members"][victim]["started_at"].as_u64(),
        "the member object is refreshed"
    );

    // No acknowledged decision is lost: each is in the ledger of the member
    // that decided it, with the hash its receipt gave.
    let owner = owners(&client, &bases).await;
    for (_, receipt) in &acked {
        let id = receipt["request_id"].as_str().unwrap();
        let found = owner.get(id).into_iter().flatten().any(|(_, e)| {
            e["entry_hash"] == receipt["evidence_hash"] && e["ledger_seq"] == receipt["ledger_seq"]
        });
        assert!(found, "acknowledged {id} ({receipt}) is in no ledger");
    }
    let twice = owner.values().filter(|on| on.len() > 1).count();
    assert!(
        twice as u32 <= failures,
        "only a retried request can be recorded twice"
    );
    eprintln!("{twice} request id(s) recorded by two members (retried after the kill)");
    let moved: std::collections::BTreeSet<usize> = acked
        .iter()
        .filter(|(t, _)| *t > killed_at)
        .map(|(_, r)| decided_by(&owner, r))
        .collect();
    let seq: Vec<(u128, usize)> = acked
        .iter()
        .filter(|(t, _)| *t > killed_at)
        .map(|(t, r)| ((*t - killed_at).as_millis(), decided_by(&owner, r)))
        .collect();
    let mut runs: Vec<(u128, usize, usize)> = Vec::new();
    for (t, m) in seq {
        match runs.last_mut() {
            Some(l) if l.1 == m => l.2 += 1,
            _ => runs.push((t, m, 1)),
        }
    }
    eprintln!("after kill: {runs:?}");
    assert!(!moved.contains(&victim) && moved.len() == 1, "{moved:?}");

    // Once its checks pass again, the token goes back to its member.
    within(
        Duration::from_secs(10),
        "the token back on its member",
        || async {
            let id = format!("back-{}", rand_id());
            let (code, r) = submit(&client, &through, token, &request(&id, "agent-001")).await;
            assert_eq!(code, 200, "{r}");
            let mine = entries(&client, &bases[victim]).await;
            mine.iter()
                .any(|e| e["request_id"] == id.as_str())
                .then_some(())
        },
    )
    .await;
    drop(lb);
    for base in &bases {
        verifies_alone(&client, base).await;
    }
    for m in members.into_iter().flatten() {
        let (code, stderr) = m.terminate();
        assert_eq!(code, Some(0), "{stderr}");
    }
}

fn rand_id() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// deploy/haproxy/haproxy.cfg is what `kernels cluster haproxy-config`
/// prints for three members, and HAProxy accepts it; the StatefulSet checks
/// readiness on /ready, gives each member its own volume, and sets only
/// settings the service knows.
#[test]
fn the_deploy_examples_are_what_the_commands_make_and_are_valid() {
    use kernels::cluster::haproxy::{HaproxyOptions, Target, config};
    use kernels::cluster::member::MemberRecord;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let example = std::fs::read_to_string(root.join("haproxy/haproxy.cfg")).unwrap();
    let targets: Vec<Target> = (1..=3)
        .map(|n| {
            Target::of(&MemberRecord {
                cluster_id: "prod".into(),
                kernel_id: format!("prod-00{n}"),
                instance: n,
                advertise_url: format!("http://10.0.0.{n}:8080"),
                verifier_key: None,
                witness_key: None,
                started_at: 0,
                ledger_genesis: String::new(),
                software_version: String::new(),
            })
            .unwrap()
        })
        .collect();
    let made = config(
        "prod",
        "s3://my-archive-bucket/kernels-archive/clusters/prod/",
        &targets,
        &HaproxyOptions {
            bind: "*:8080".into(),
            check_interval: Duration::from_secs(2),
            stats_socket: Some("/run/haproxy/admin.sock".into()),
        },
    );
    let body = |text: &str| -> String {
        text.lines()
            .skip_while(|l| l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        body(&example),
        body(&made),
        "regenerate deploy/haproxy/haproxy.cfg"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("haproxy.cfg");
    std::fs::write(&file, &example).unwrap();
    let check = std::process::Command::new(haproxy::binary())
        .arg("-c")
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let text = std::fs::read_to_string(root.join("kubernetes/statefulset.yaml")).unwrap();
    let docs: Vec<Value> = text
        .split("\n---\n")
        .map(|d| serde_norway::from_str(d).unwrap())
        .collect();
    let set = docs.iter().find(|d| d["kind"] == "StatefulSet").unwrap();
    let container = &set["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(
        set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "data"
    );
    let sources = [
        include_str!("../src/config/mod.rs"),
        include_str!("../src/config/cluster.rs"),
        include_str!("../src/config/duration.rs"),
    ]
    .concat();
    let mut names: Vec<String> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    names.push("KERNELS_CLUSTER_INSTANCE".into());
    for name in names.iter().filter(|n| n.starts_with("KERNELS_")) {
        let needle = format!("\"{name}\"");
        assert!(
            sources.contains(&needle),
            "{name} is not a setting of the service"
        );
    }
    assert!(
        container["args"][0]
            .as_str()
            .unwrap()
            .contains("KERNELS_CLUSTER_INSTANCE=$(( ${POD_NAME##*-} + 1 ))")
    );
}

/// The playbook's play 6.1, end to end: a third instance is added to a
/// running cluster behind HAProxy — it decides under the shared policy, is
/// registered with the load balancer without a reload, its health checks
/// pass, it gets traffic, and its addition is logged; then it leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_6_1_add_kernel_instance() {
    let fleet = Fleet::start().await;
    let client = http::client();
    let listens: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", haproxy::free_port()))
        .collect();
    let first = [
        fleet.member(1, &listens[0], &[]),
        fleet.member(2, &listens[1], &[]),
    ];
    let text = "allowed_actors: [agent-001, agent-009]\nallowed_tools: [echo]\n";
    std::fs::write(fleet.path().join("cluster-policy.yaml"), text).unwrap();
    let put = fleet.cli(
        &[
            "cluster",
            "policy",
            "put",
            "cluster-policy.yaml",
            "--reason",
            "CHG-200",
            "--json",
        ],
        None,
    );
    put.expect_code(0, "policy put");
    let shared = put.json()["policy_hash"].as_str().unwrap().to_owned();
    let socket = fleet.path().join("admin.sock");
    let front: std::net::SocketAddr = format!("127.0.0.1:{}", haproxy::free_port())
        .parse()
        .unwrap();
    let out = fleet.cli(
        &[
            "cluster",
            "haproxy-config",
            "--bind",
            &front.to_string(),
            "--check-interval",
            "200ms",
            "--stats-socket",
            &socket.display().to_string(),
        ],
        None,
    );
    out.expect_code(0, "haproxy-config");
    let lb = Haproxy::start(fleet.path(), &out.stdout, front);

    // Steps 1-3: the new kernel, under the shared policy, IDLE.
    let third = fleet.member(3, &listens[2], &[]);
    let base = third.url("");
    let s = cluster::status(&client, &base).await;
    assert_eq!(s["kernel_id"], "prod-003");
    assert_eq!(s["state"], "IDLE");
    assert_eq!(
        s["policy_hash"],
        shared.as_str(),
        "decides under the shared policy from the start"
    );

    // Steps 4-5: registered with the load balancer, health checks passing.
    assert_eq!(Haproxy::server_status(&socket, "kernels", "prod-003"), None);
    let add = fleet.cli(
        &[
            "cluster",
            "haproxy-config",
            "--add-server",
            "prod-003",
            "--check-interval",
            "200ms",
        ],
        None,
    );
    add.expect_code(0, "--add-server");
    let reply = Haproxy::runtime(&socket, &add.stdout);
    assert!(reply.contains("New server registered"), "{reply}");
    let ((), took) = within(Duration::from_secs(10), "prod-003 UP", || async {
        (Haproxy::server_status(&socket, "kernels", "prod-003").as_deref() == Some("UP"))
            .then_some(())
    })
    .await;
    eprintln!("prod-003 UP in HAProxy {took:?} after its registration");
    let tokens: Vec<&str> = AGENT_TOKENS.iter().copied().chain([AGENT]).collect();
    for (t, token) in tokens.iter().enumerate() {
        let (code, r) = submit(
            &client,
            &lb.url(""),
            token,
            &request(&format!("p61-{t}"), "agent-009"),
        )
        .await;
        assert_eq!((code, r["decision"].as_str()), (200, Some("ALLOW")), "{r}");
    }
    let mine = entries(&client, &base).await;
    let served = mine
        .iter()
        .filter(|e| {
            e["request_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("p61-"))
        })
        .count();
    assert!(served > 0, "no token reached the new member:\n{}", lb.log());

    // Step 6: the addition is logged, and the cluster is one.
    let joins = events(&mine, "kernel.cluster_join");
    assert_eq!(joins.len(), 1);
    let seen: Vec<&str> = joins[0]["payload"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["kernel_id"].as_str().unwrap())
        .collect();
    assert_eq!(seen, ["prod-001", "prod-002", "prod-003"]);
    let (code, report) = fleet.status();
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["members"].as_array().unwrap().len(), 3);

    // And out again: leave (recorded), then off the load balancer.
    fleet
        .cli(
            &[
                "cluster", "leave", "--server", &base, "--reason", "scale in",
            ],
            Some(OPERATOR),
        )
        .expect_code(0, "leave");
    let del = fleet.cli(
        &["cluster", "haproxy-config", "--del-server", "prod-003"],
        None,
    );
    del.expect_code(0, "--del-server");
    let reply = Haproxy::runtime(&socket, &del.stdout);
    assert!(reply.contains("Server deleted"), "{reply}");
    assert_eq!(Haproxy::server_status(&socket, "kernels", "prod-003"), None);
    let (code, r) = submit(
        &client,
        &lb.url(""),
        tokens[0],
        &request("after-scale-in", "agent-009"),
    )
    .await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(fleet.status().1["members"].as_array().unwrap().len(), 2);
    drop(lb);
    for m in first.into_iter().chain([third]) {
        let (code, stderr) = m.terminate();
        assert_eq!(code, Some(0), "{stderr}");
    }
}
