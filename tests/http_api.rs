//! The HTTP API against a real server on 127.0.0.1:0 over real sled.

mod common;

use common::*;
use serde_json::{Value, json};

fn req(id: &str, actor: &str, tool: &str) -> Value {
    json!({"request_id": id, "actor": actor, "intent": "do a thing",
           "tool_call": {"name": tool, "params": {"text": id}}, "params": {"text": id}})
}

async fn length(server: &TestServer) -> u64 {
    let (code, status) = get(&server.url("/v1/status"), Some(AUDITOR)).await;
    assert_eq!(code, 200);
    status["ledger_length"].as_u64().unwrap()
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

/// The entry at `seq`, read back over HTTP.
async fn entry_at(server: &TestServer, seq: u64) -> Value {
    let (code, page) = get(
        &server.url(&format!("/v1/entries?from_seq={seq}&limit=1")),
        Some(AUDITOR),
    )
    .await;
    assert_eq!(code, 200, "{page}");
    page["entries"][0].clone()
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
