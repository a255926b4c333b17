//! The HTTP API against a real server on 127.0.0.1:0 over real sled.

mod support;

use kernels::rotator::run::{RotationError, RunAnswer, RunFailure};
use kernels::service::RotationControl;
use serde_json::{Value, json};
use support::server::*;

fn req(id: &str, actor: &str, tool: &str) -> Value {
    json!({"request_id": id, "actor": actor, "intent": "do a thing",
           "tool_call": {"name": tool, "params": {"text": id}}, "params": {"text": id}})
}

#[tokio::test]
async fn submit_status_evidence_policy_halt_recover() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(tmp.path()).await;

    let (code, allow) = post(
        &server.url("/v1/requests"),
        Some(AGENT),
        &req("r1", "agent-001", "echo"),
    )
    .await;
    assert_eq!(code, 200, "{allow}");
    assert_eq!(allow["decision"], "ALLOW");
    assert_eq!(allow["tool_result"], "r1");
    let (code, deny) = post(
        &server.url("/v1/requests"),
        Some(AGENT),
        &req("r2", "agent-009", "echo"),
    )
    .await;
    assert_eq!(code, 200, "a DENY is a normal answer");
    assert_eq!(deny["status"], "REJECTED");

    // The same request again: the original receipt, nothing new recorded.
    let before = length(&server).await;
    let (code, again) = post(
        &server.url("/v1/requests"),
        Some(AGENT),
        &req("r1", "agent-001", "echo"),
    )
    .await;
    assert_eq!((code, &again), (200, &allow));
    let (code, conflict) = post(
        &server.url("/v1/requests"),
        Some(AGENT),
        &req("r1", "agent-002", "echo"),
    )
    .await;
    assert_eq!(code, 409);
    assert_eq!(conflict["code"], "request_id_conflict");
    assert_eq!(length(&server).await, before);

    // Entries and evidence.
    let (code, entries) = get(&server.url("/v1/entries?from_seq=1&limit=1"), Some(AUDITOR)).await;
    assert_eq!(code, 200);
    assert_eq!(entries["entries"][0]["entry_hash"], allow["evidence_hash"]);
    assert_eq!(entries["next_seq"], 2);
    let bundle = client()
        .get(server.url("/v1/evidence"))
        .bearer_auth(AUDITOR)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let report = kernels::verify::verify_bundle(&bundle[..], &Default::default()).unwrap();
    assert!(report.valid, "{report:?}");
    assert_eq!(report.entries_verified, before);
    let range = client()
        .get(server.url("/v1/evidence?from_seq=1&to_seq=2"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let report = kernels::verify::verify_bundle(&range[..], &Default::default()).unwrap();
    assert!(report.valid && report.entries_verified == 2, "{report:?}");

    // Policy: read, refuse a bad one, update with a reason.
    let (code, policy) = get(&server.url("/v1/policy"), Some(AUDITOR)).await;
    assert_eq!((code, policy["version"].as_u64()), (200, Some(1)));
    let (code, bad) = call(
        reqwest::Method::PUT,
        &server.url("/v1/policy"),
        Some(OPERATOR),
        Some(br#"{"policy": {"allowed_actorz": []}, "reason": "x"}"#.to_vec()),
    )
    .await;
    assert_eq!(code, 400, "{bad}");
    assert!(bad["error"].as_str().unwrap().contains("allowed_actorz"));
    let mut p = policy["policy"].clone();
    p["allowed_actors"] = json!(["agent-001", "agent-002", "agent-009"]);
    let (code, updated) = call(
        reqwest::Method::PUT,
        &server.url("/v1/policy"),
        Some(OPERATOR),
        Some(serde_json::to_vec(&json!({"policy": p, "reason": "onboard agent-009"})).unwrap()),
    )
    .await;
    assert_eq!(code, 200, "{updated}");
    assert_eq!(updated["version"], 2);
    let (_, r3) = post(
        &server.url("/v1/requests"),
        Some(AGENT),
        &req("r3", "agent-009", "echo"),
    )
    .await;
    assert_eq!(r3["decision"], "ALLOW");

    // Halt: recorded, returns the root before it; then submissions get 409.
    let root_before = get(&server.url("/v1/status"), Some(AUDITOR)).await.1["root_hash"].clone();
    let (code, halted) = post(
        &server.url("/v1/halt"),
        Some(OPERATOR),
        &json!({"reason": "incident 12"}),
    )
    .await;
    assert_eq!(code, 200, "{halted}");
    assert_eq!(halted["root_hash_before_halt"], root_before);
    assert_eq!(halted["receipt"]["decision"], "HALT");
    let n = length(&server).await;
    let (code, refused) = post(
        &server.url("/v1/requests"),
        Some(AGENT),
        &req("r4", "agent-001", "echo"),
    )
    .await;
    assert_eq!(code, 409);
    assert_eq!(refused["code"], "halted");
    assert_eq!(length(&server).await, n);
    let (code, _) = post(
        &server.url("/v1/halt"),
        Some(OPERATOR),
        &json!({"reason": "again"}),
    )
    .await;
    assert_eq!(code, 409);

    // Recover: a new session.
    let (code, rec) = post(
        &server.url("/v1/recover"),
        Some(OPERATOR),
        &json!({"reason": "fixed"}),
    )
    .await;
    assert_eq!(code, 200, "{rec}");
    assert_eq!(rec["session"], 2);
    let (_, r5) = post(
        &server.url("/v1/requests"),
        Some(AGENT),
        &req("r5", "agent-001", "echo"),
    )
    .await;
    assert_eq!(r5["decision"], "ALLOW");

    let (code, verified) = post(&server.url("/v1/verify"), Some(AUDITOR), &json!({})).await;
    assert_eq!(code, 200);
    assert_eq!(verified["valid"], true);

    let (code, doc) = get(&server.url("/v1/openapi.json"), Some(AUDITOR)).await;
    assert_eq!(code, 200);
    assert!(doc["paths"]["/v1/requests"]["post"].is_object());
    let (code, metrics) = get(&server.url("/metrics"), None).await;
    assert_eq!(code, 200);
    let metrics = metrics.as_str().unwrap();
    assert!(metrics.contains("kernels_commits_total"));
    assert!(
        metrics.contains(r#"kernels_http_requests_total{route="/v1/requests",code="200"}"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"kernels_decisions_total{decision="ALLOW",status="ACCEPTED"}"#));
    server.stop().await;
}

#[tokio::test]
async fn roles_and_tokens_are_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(tmp.path()).await;
    let paths = [
        ("POST", "/v1/requests"),
        ("GET", "/v1/status"),
        ("GET", "/v1/evidence"),
        ("GET", "/v1/entries"),
        ("GET", "/v1/policy"),
        ("PUT", "/v1/policy"),
        ("POST", "/v1/halt"),
        ("POST", "/v1/recover"),
        ("POST", "/v1/preserve"),
        ("GET", "/v1/rotations"),
        ("POST", "/v1/rotations"),
        ("POST", "/v1/verify"),
        ("GET", "/v1/openapi.json"),
    ];
    for (method, path) in paths {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        for token in [None, Some("wrong-token-123"), Some("")] {
            let (code, body) =
                call(m.clone(), &server.url(path), token, Some(b"{}".to_vec())).await;
            assert_eq!(code, 401, "{method} {path} with {token:?}: {body}");
            assert_eq!(body["code"], "unauthorized");
        }
    }
    // An agent cannot halt, update policy, read evidence or status.
    for (method, path, body) in [
        ("POST", "/v1/halt", json!({"reason": "x"})),
        ("PUT", "/v1/policy", json!({"policy": {}, "reason": "x"})),
        ("GET", "/v1/evidence", json!(null)),
        ("GET", "/v1/status", json!(null)),
        ("POST", "/v1/rotations", json!(null)),
        ("POST", "/v1/recover", json!({"reason": "x"})),
    ] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let (code, answer) = call(
            m,
            &server.url(path),
            Some(AGENT),
            Some(serde_json::to_vec(&body).unwrap()),
        )
        .await;
        assert_eq!(code, 403, "{method} {path}: {answer}");
    }
    // An auditor cannot submit or halt.
    let (code, _) = post(
        &server.url("/v1/requests"),
        Some(AUDITOR),
        &req("a1", "agent-001", "echo"),
    )
    .await;
    assert_eq!(code, 403);
    // A token limited to agent-001 cannot pose as agent-002.
    let n = length(&server).await;
    let (code, answer) = post(
        &server.url("/v1/requests"),
        Some(AGENT_LIMITED),
        &req("a2", "agent-002", "echo"),
    )
    .await;
    assert_eq!(code, 403, "{answer}");
    let (code, _) = post(
        &server.url("/v1/requests"),
        Some(AGENT_LIMITED),
        &req("a3", "agent-001", "echo"),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(length(&server).await, n + 1);
    // Open endpoints.
    assert_eq!(get(&server.url("/health"), None).await.0, 200);
    assert_eq!(get(&server.url("/ready"), None).await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn bad_input_gets_4xx_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(tmp.path(), 16 * 1024, None).await;
    let n = length(&server).await;
    let url = server.url("/v1/requests");
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let huge_string =
        json!({"request_id": "h", "actor": "agent-001", "intent": "x".repeat(20_000)}).to_string();
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        br#"{"request_id": "t1", "actor": "agent-001", "intent": "x""#.to_vec(),
        b"null".to_vec(),
        b"[1,2,3]".to_vec(),
        b"\"string\"".to_vec(),
        br#"{"request_id": 5, "actor": "agent-001", "intent": "x"}"#.to_vec(),
        br#"{"request_id": "t2", "actor": ["agent-001"], "intent": "x"}"#.to_vec(),
        br#"{"request_id": "t3", "actor": "agent-001", "intent": "x", "params": "nope"}"#.to_vec(),
        br#"{"request_id": "t4", "actor": "agent-001", "intent": "x", "tool_call": {"name": 7}}"#
            .to_vec(),
        br#"{"request_id": "t5", "actor": "agent-001", "intent": "x", "tool_call": "echo"}"#
            .to_vec(),
        br#"{"request_id": "t6", "actor": "agent-001", "intent": "x", "unknown_field": 1}"#
            .to_vec(),
        br#"{"request_id": "t7", "actor": "agent-001", "intent": "x", "ts_ms": -1}"#.to_vec(),
        br#"{"request_id": "t8", "actor": "agent-001", "intent": "x", "params": {"n": 1e400}}"#
            .to_vec(),
        br#"{"request_id": "HALT", "actor": "agent-001", "intent": "x"}"#.to_vec(),
        br#"{"request_id": "kernel.rotate", "actor": "agent-001", "intent": "x"}"#.to_vec(),
        vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'],
        b"\xef\xbb\xbf{\"request_id\": \"bom\"}".to_vec(),
        deep.into_bytes(),
        huge_string.into_bytes(),
        vec![b'a'; 100_000],
    ];
    for body in bodies {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).to_string();
        let (code, answer) = call(reqwest::Method::POST, &url, Some(AGENT), Some(body)).await;
        assert!((400..500).contains(&code), "{shown}: {code} {answer}");
        assert!(
            answer["error"].is_string() && answer["code"].is_string(),
            "{shown}: {answer}"
        );
    }
    let (code, answer) = call(
        reqwest::Method::POST,
        &url,
        Some(AGENT),
        Some(vec![b' '; 17 * 1024]),
    )
    .await;
    assert_eq!(code, 413, "{answer}");
    assert_eq!(get(&server.url("/v1/nope"), Some(AUDITOR)).await.0, 404);
    assert_eq!(
        call(
            reqwest::Method::DELETE,
            &server.url("/v1/status"),
            Some(AUDITOR),
            None
        )
        .await
        .0,
        405
    );
    assert_eq!(
        get(&server.url("/v1/entries?limit=0"), Some(AUDITOR))
            .await
            .0,
        400
    );
    assert_eq!(
        get(&server.url("/v1/entries?from_seq=abc"), Some(AUDITOR))
            .await
            .0,
        400
    );
    assert_eq!(
        length(&server).await,
        n,
        "nothing may be recorded for refused calls"
    );
    server.stop().await;
}

#[tokio::test]
async fn receipts_survive_a_restart_of_the_service() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(tmp.path()).await;
    let submit = |id: &'static str, tool: &'static str| {
        let url = server.url("/v1/requests");
        async move { post(&url, Some(AGENT), &req(id, "agent-001", tool)).await }
    };
    let (code, failed) = submit("p1", "add").await;
    assert_eq!(
        (code, &failed["status"]),
        (200, &json!("FAILED")),
        "add without a, b fails: {failed}"
    );
    let (code, allowed) = submit("p2", "echo").await;
    assert_eq!(
        (code, &allowed["decision"]),
        (200, &json!("ALLOW")),
        "{allowed}"
    );
    drop(server.stop().await);

    // After a restart: each receipt is its stored entry, and a retry (same
    // session) answers it unchanged without recording anything.
    let server = TestServer::start(tmp.path()).await;
    for receipt in [&failed, &allowed] {
        let entry = entry_at(&server, receipt["ledger_seq"].as_u64().unwrap()).await;
        assert_eq!(entry["request_id"], receipt["request_id"], "{entry}");
        assert_eq!(entry["entry_hash"], receipt["evidence_hash"], "{entry}");
        assert_eq!(entry["decision"], receipt["decision"], "{entry}");
    }
    let n = length(&server).await;
    let (code, again) = post(
        &server.url("/v1/requests"),
        Some(AGENT),
        &req("p2", "agent-001", "echo"),
    )
    .await;
    assert_eq!(
        (code, &again),
        (200, &allowed),
        "a retry answers the original receipt"
    );
    assert_eq!(length(&server).await, n, "and records nothing");

    let (_, halted) = post(
        &server.url("/v1/halt"),
        Some(OPERATOR),
        &json!({"reason": "stop"}),
    )
    .await;
    assert_eq!(halted["receipt"]["decision"], "HALT");
    drop(server.stop().await);
    let server = TestServer::start(tmp.path()).await;
    let (code, status) = get(&server.url("/v1/status"), Some(AUDITOR)).await;
    assert_eq!(code, 200);
    assert_eq!(status["state"], "HALTED", "a halt survives a restart");
    let (code, again) = post(
        &server.url("/v1/requests"),
        Some(AGENT),
        &req("p1", "agent-001", "add"),
    )
    .await;
    assert_eq!(code, 409, "halted: {again}");
    assert_eq!(again["code"], "halted", "{again}");
    server.stop().await;
}

/// After halt -> policy change -> recover, a retry of a request decided
/// before the halt is not answered with its old ALLOW (the new policy may
/// deny it): 409 `decided_in_earlier_session`, the old receipt in the body.
#[tokio::test]
async fn a_retry_from_an_earlier_session_is_not_replayed_after_a_recovery() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(tmp.path()).await;
    let (code, allowed) = post(
        &server.url("/v1/requests"),
        Some(AGENT),
        &req("old-1", "agent-002", "echo"),
    )
    .await;
    assert_eq!(
        (code, &allowed["decision"]),
        (200, &json!("ALLOW")),
        "{allowed}"
    );
    let (code, _) = post(
        &server.url("/v1/halt"),
        Some(OPERATOR),
        &json!({"reason": "incident"}),
    )
    .await;
    assert_eq!(code, 200);
    // agent-002 is no longer allowed.
    let (_, policy) = get(&server.url("/v1/policy"), Some(AUDITOR)).await;
    let mut p = policy["policy"].clone();
    p["allowed_actors"] = json!(["agent-001"]);
    let (code, updated) = call(
        reqwest::Method::PUT,
        &server.url("/v1/policy"),
        Some(OPERATOR),
        Some(serde_json::to_vec(&json!({"policy": p, "reason": "drop agent-002"})).unwrap()),
    )
    .await;
    assert_eq!(code, 200, "{updated}");
    let (code, _) = post(
        &server.url("/v1/recover"),
        Some(OPERATOR),
        &json!({"reason": "fixed"}),
    )
    .await;
    assert_eq!(code, 200);
    // Also across a restart.
    drop(server.stop().await);
    let server = TestServer::start(tmp.path()).await;
    let n = length(&server).await;
    let (code, answer) = post(
        &server.url("/v1/requests"),
        Some(AGENT),
        &req("old-1", "agent-002", "echo"),
    )
    .await;
    assert_eq!(code, 409, "{answer}");
    assert_eq!(answer["code"], "decided_in_earlier_session", "{answer}");
    assert_eq!(
        answer["receipt"], allowed,
        "the old receipt, for the record"
    );
    assert_eq!(length(&server).await, n, "nothing recorded");
    // Submitted again under a new id, it is judged by the current policy.
    let (code, fresh) = post(
        &server.url("/v1/requests"),
        Some(AGENT),
        &req("old-1-again", "agent-002", "echo"),
    )
    .await;
    assert_eq!((code, &fresh["decision"]), (200, &json!("DENY")), "{fresh}");
    // A request of the current session is still answered as before.
    let (_, again) = post(
        &server.url("/v1/requests"),
        Some(AGENT),
        &req("old-1-again", "agent-002", "echo"),
    )
    .await;
    assert_eq!(again, fresh);
    server.stop().await;
}

#[tokio::test]
async fn routes_are_the_routers_and_the_openapi_documents() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(tmp.path()).await;
    let (code, doc) = get(&server.url("/v1/openapi.json"), Some(AUDITOR)).await;
    assert_eq!(code, 200);
    let documented: std::collections::BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let labelled: std::collections::BTreeSet<&str> =
        kernels::service::ROUTES.iter().copied().collect();
    assert_eq!(
        labelled, documented,
        "ROUTES must list every documented path"
    );
    // Every documented method of every path is routed (never the 404/405
    // fallbacks), and nothing else is.
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (code, body) = call(m, &server.url(path), None, None).await;
            assert!(
                code != 404 && code != 405,
                "{method} {path} is documented but not routed: {code} {body}"
            );
        }
    }
    assert_eq!(get(&server.url("/v1/requests/x"), None).await.0, 404);
    assert_eq!(get(&server.url("/v2/status"), None).await.0, 404);
    server.stop().await;
}

/// A rotator that answers what it is told to (beside the real rotator's
/// tests in `tests/rotation.rs`): how each outcome reaches the client.
struct ScriptedRotation {
    answers: std::sync::Mutex<Vec<Result<RunAnswer, RotationError>>>,
    waits: std::sync::Mutex<Vec<std::time::Duration>>,
}

type Boxed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

impl RotationControl for ScriptedRotation {
    fn rotate_now(
        &self,
        _actor: String,
        wait: std::time::Duration,
    ) -> Boxed<'_, Result<RunAnswer, RunFailure>> {
        self.waits.lock().unwrap().push(wait);
        let answer = self.answers.lock().unwrap().remove(0);
        Box::pin(async move {
            answer.map_err(|error| RunFailure {
                run_id: "run-9".into(),
                error: std::sync::Arc::new(error),
                retry_at_ms: Some(1_700_000_000_000),
            })
        })
    }

    fn status(&self) -> Value {
        json!({"enabled": true, "scripted": true})
    }

    fn upload_preserved(
        &self,
        _path: std::path::PathBuf,
        _sha256: String,
    ) -> Boxed<'_, Result<Value, RotationError>> {
        Box::pin(async { Err(RotationError::Internal("not scripted".into())) })
    }
}

#[tokio::test]
async fn rotation_outcomes_keep_their_kind_over_http() {
    let tmp = tempfile::tempdir().unwrap();
    let rotation = std::sync::Arc::new(ScriptedRotation {
        answers: std::sync::Mutex::new(vec![
            Ok(RunAnswer::Finished {
                run_id: "run-6".into(),
                outcome: json!({"archived": false}),
            }),
            Ok(RunAnswer::Running {
                run_id: "run-7".into(),
            }),
            Err(RotationError::Check("the segment read back differs".into())),
            Err(RotationError::TimedOut(std::time::Duration::from_secs(600))),
            Err(RotationError::Internal("a bug".into())),
            Err(RotationError::Ledger(
                kernels::ledger::LedgerError::Unavailable("disk".into()),
            )),
        ]),
        waits: std::sync::Mutex::new(Vec::new()),
    });
    let server = TestServer::start_with(tmp.path(), 64 * 1024, Some(rotation.clone())).await;
    let url = server.url("/v1/rotations");
    let expected = [
        (200, None),
        (202, None),
        (502, Some("rotation_failed")),
        (504, Some("rotation_timeout")),
        (500, Some("internal")),
        (503, Some("unavailable")),
    ];
    let mut answers = Vec::new();
    for (status, code) in expected {
        let (got, body) = post(&url, Some(OPERATOR), &json!(null)).await;
        assert_eq!(got, status, "{body}");
        if let Some(code) = code {
            assert_eq!(body["code"], code, "{body}");
            assert!(body["error"].is_string(), "{body}");
        }
        answers.push(body);
    }
    assert_eq!(answers[0], json!({"archived": false, "run_id": "run-6"}));
    assert_eq!(answers[1]["run_id"], "run-7");
    assert_eq!(answers[1]["running"], true);
    let failed = answers[2]["error"].as_str().unwrap();
    assert!(
        failed.contains("read back differs") && failed.contains("run-9"),
        "{failed}"
    );
    assert!(failed.contains("retries at 1700000000000"), "{failed}");
    assert!(
        !answers[4].to_string().contains("a bug"),
        "internals stay in the log"
    );
    // Every call was told to answer before the request timeout (10 s).
    for wait in rotation.waits.lock().unwrap().iter() {
        assert!(*wait < std::time::Duration::from_secs(10), "{wait:?}");
    }
    let (code, status) = get(&url, Some(AUDITOR)).await;
    assert_eq!((code, &status["scripted"]), (200, &json!(true)));
    server.stop().await;
}

#[tokio::test]
async fn concurrent_policy_updates_and_recoveries_answer_with_their_own_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let server = std::sync::Arc::new(TestServer::start(tmp.path()).await);
    let (_, current) = get(&server.url("/v1/policy"), Some(AUDITOR)).await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let server = server.clone();
        let mut p = current["policy"].clone();
        p["allowed_actors"] = json!([format!("agent-{i:03}")]);
        tasks.push(tokio::spawn(async move {
            let (code, answer) = call(
                reqwest::Method::PUT,
                &server.url("/v1/policy"),
                Some(OPERATOR),
                Some(
                    serde_json::to_vec(&json!({"policy": p, "reason": format!("update {i}")}))
                        .unwrap(),
                ),
            )
            .await;
            assert_eq!(code, 200, "{answer}");
            (i, answer)
        }));
    }
    let mut versions = std::collections::BTreeSet::new();
    for task in tasks {
        let (i, answer) = task.await.unwrap();
        let entry = entry_at(&server, answer["ledger_seq"].as_u64().unwrap()).await;
        let payload = &entry["payload"];
        assert_eq!(payload["reason"], format!("update {i}"), "{answer}");
        assert_eq!(
            answer["version"], payload["version"],
            "update {i}: {answer}"
        );
        let policy = kernels::kernel::Policy::from_json(&payload["policy"]).unwrap();
        assert_eq!(answer["hash"], policy.hash(), "update {i}: {answer}");
        assert_eq!(answer["previous_hash"], payload["previous_policy_hash"]);
        assert_eq!(answer["entry_hash"], entry["entry_hash"]);
        // Its diff is against the policy it replaced: its own actor is new.
        let actors = answer["changes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["field"] == "allowed_actors")
            .unwrap_or_else(|| panic!("update {i}: {answer}"));
        assert_eq!(
            actors["added"],
            json!([format!("agent-{i:03}")]),
            "{answer}"
        );
        versions.insert(answer["version"].as_u64().unwrap());
    }
    assert_eq!(
        versions,
        (2..=17).collect(),
        "every update has its own version"
    );

    // Halts and recoveries from many tasks at once, over kept-alive
    // connections, so that several land in one group commit.
    let http = client();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let server = server.clone();
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            let send = |path: &'static str, reason: String| {
                http.post(server.url(path))
                    .bearer_auth(OPERATOR)
                    .json(&json!({"reason": reason}))
                    .send()
            };
            let mut recovered = Vec::new();
            for round in 0..15 {
                let _ = send("/v1/halt", format!("task {t} round {round}"))
                    .await
                    .unwrap();
                let response = send("/v1/recover", format!("task {t} round {round}"))
                    .await
                    .unwrap();
                let code = response.status().as_u16();
                let answer: Value = response.json().await.unwrap();
                match code {
                    200 => recovered.push(answer),
                    409 => assert_eq!(answer["code"], "not_halted", "{answer}"),
                    other => panic!("recover answered {other}: {answer}"),
                }
            }
            recovered
        }));
    }
    let mut sessions = std::collections::BTreeSet::new();
    for task in tasks {
        for answer in task.await.unwrap() {
            let entry = entry_at(&server, answer["ledger_seq"].as_u64().unwrap()).await;
            assert_eq!(entry["tool_name"], "kernel.recover");
            assert_eq!(
                answer["session"], entry["payload"]["new_session"],
                "{answer}"
            );
            assert!(
                sessions.insert(answer["session"].as_u64().unwrap()),
                "{answer}"
            );
        }
    }
    assert!(!sessions.is_empty());
    std::sync::Arc::into_inner(server).unwrap().stop().await;
}

#[tokio::test]
async fn a_policy_update_shows_what_it_changes_and_a_dry_run_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(tmp.path()).await;
    let (_, before) = get(&server.url("/v1/policy"), Some(AUDITOR)).await;
    let n = length(&server).await;
    // Shaped like a partial example: the fields left out fall to defaults.
    let partial = json!({"policy": {"allowed_actors": ["agent-001"], "allowed_tools": ["echo"]}});
    let (code, dry) = call(
        reqwest::Method::PUT,
        &server.url("/v1/policy?dry_run=true"),
        Some(OPERATOR),
        Some(serde_json::to_vec(&partial).unwrap()),
    )
    .await;
    assert_eq!(code, 200, "{dry}");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["version"], 1);
    assert_eq!(
        dry["defaulted"],
        json!([
            "require_tool_call",
            "max_intent_length",
            "max_param_bytes",
            "required_fields"
        ])
    );
    let fields: Vec<&str> = dry["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["allowed_actors", "allowed_tools", "max_intent_length"],
        "{dry}"
    );
    assert_eq!(dry["changes"][0]["removed"], json!(["agent-002"]));
    assert_eq!(dry["changes"][2]["old"], 1000);
    assert_eq!(dry["changes"][2]["new"], 4096);
    assert_eq!(length(&server).await, n, "a dry run records nothing");
    assert_eq!(
        get(&server.url("/v1/policy"), Some(AUDITOR)).await.1,
        before
    );
    // The same, applied: the answer says the same.
    let mut applied = partial.clone();
    applied["reason"] = json!("narrow");
    let (code, answer) = call(
        reqwest::Method::PUT,
        &server.url("/v1/policy"),
        Some(OPERATOR),
        Some(serde_json::to_vec(&applied).unwrap()),
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["changes"], dry["changes"]);
    assert_eq!(answer["defaulted"], dry["defaulted"]);
    assert_eq!(answer["hash"], dry["new_hash"]);
    // An unknown query key, or an unknown body key, is refused.
    let (code, _) = call(
        reqwest::Method::PUT,
        &server.url("/v1/policy?dryrun=1"),
        Some(OPERATOR),
        Some(serde_json::to_vec(&applied).unwrap()),
    )
    .await;
    assert_eq!(code, 400);
    server.stop().await;
}

#[tokio::test]
async fn entries_filter_by_actor_tool_decision_and_request_id() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(tmp.path()).await;
    for (id, actor, tool) in [
        ("f1", "agent-001", "echo"),
        ("f2", "agent-009", "echo"),
        ("f3", "agent-001", "rm"),
        ("f4", "agent-002", "add"),
        ("f5", "agent-009", "rm"),
    ] {
        let (code, r) = post(
            &server.url("/v1/requests"),
            Some(AGENT),
            &req(id, actor, tool),
        )
        .await;
        assert_eq!(code, 200, "{r}");
    }
    let ids = |page: &Value| -> Vec<String> {
        page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["request_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let query = |q: &'static str| {
        let url = server.url(&format!("/v1/entries?{q}"));
        async move {
            let (code, page) = get(&url, Some(AUDITOR)).await;
            assert_eq!(code, 200, "{q}: {page}");
            page
        }
    };
    assert_eq!(ids(&query("actor=agent-009").await), ["f2", "f5"]);
    // A denied request names the tool it asked for.
    let rm = query("tool=rm").await;
    assert_eq!(ids(&rm), ["f3", "f5"]);
    assert!(
        rm["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["decision"] == "DENY")
    );
    // f4: `add` without numbers fails (a FAILED denial).
    assert_eq!(ids(&query("decision=DENY").await), ["f2", "f3", "f4", "f5"]);
    assert_eq!(ids(&query("decision=ALLOW&tool=echo").await), ["f1"]);
    assert_eq!(ids(&query("request_id=f4").await), ["f4"]);
    assert_eq!(ids(&query("tool=kernel.create").await), ["kernel.create"]);
    let page = query("actor=agent-009&limit=1").await;
    assert_eq!(ids(&page), ["f2"]);
    let next = page["next_seq"].as_u64().unwrap();
    let url = server.url(&format!("/v1/entries?actor=agent-009&from_seq={next}"));
    assert_eq!(ids(&get(&url, Some(AUDITOR)).await.1), ["f5"]);
    assert!(
        query("actor=nobody").await["entries"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let (code, bad) = get(&server.url("/v1/entries?decision=MAYBE"), Some(AUDITOR)).await;
    assert_eq!((code, bad["code"].as_str()), (400, Some("invalid_query")));
    server.stop().await;
}
