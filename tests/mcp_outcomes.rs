//! `POST /v1/outcomes` against a real server on 127.0.0.1:0 over real sled:
//! one `kernel.outcome` entry per ALLOWed request, idempotent for the same
//! outcome (also across a restart), 409 for a different one, 404 for an
//! unknown request.

mod common;

use common::*;
use serde_json::{Value, json};

fn external(id: &str, actor: &str, tool: &str) -> Value {
    json!({"request_id": id, "actor": actor, "intent": "run an MCP tool",
           "tool_call": {"name": tool, "params": {"q": id}}, "params": {"q": id}, "external_tool": true})
}

async fn length(server: &TestServer) -> u64 {
    let (code, status) = get(&server.url("/v1/status"), Some(AUDITOR)).await;
    assert_eq!(code, 200);
    status["ledger_length"].as_u64().unwrap()
}

async fn entry(server: &TestServer, seq: u64) -> Value {
    let (code, v) = get(
        &server.url(&format!("/v1/entries?from_seq={seq}&limit=1")),
        Some(AUDITOR),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    v["entries"][0].clone()
}

#[tokio::test]
async fn one_outcome_per_allowed_request() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(tmp.path()).await;
    let outcomes = server.url("/v1/outcomes");

    let (code, allow) = post(
        &server.url("/v1/requests"),
        Some(AGENT),
        &external("m1", "agent-001", "search"),
    )
    .await;
    assert_eq!(
        (code, allow["decision"].as_str()),
        (200, Some("ALLOW")),
        "{allow}"
    );
    let digest = "c0ffee".repeat(10) + "abcd";
    let body = json!({"request_id": "m1", "ok": true, "result_sha256": digest});

    let before = length(&server).await;
    let (code, first) = post(&outcomes, Some(AGENT_LIMITED), &body).await;
    assert_eq!(code, 200, "{first}");
    assert_eq!(first["recorded"], true);
    assert_eq!(length(&server).await, before + 1);
    let e = entry(&server, first["ledger_seq"].as_u64().unwrap()).await;
    assert_eq!(e["tool_name"], "kernel.outcome");
    assert_eq!(
        e["request_id"], "m1",
        "decision and outcome share the request id"
    );
    assert_eq!(e["actor"], "agent-001");
    assert_eq!(e["entry_hash"], first["entry_hash"]);
    assert_eq!(
        e["payload"],
        json!({"request_id": "m1", "ok": true, "result_sha256": digest, "error": null})
    );

    // The same outcome again: the recorded one, nothing new.
    let (code, again) = post(&outcomes, Some(AGENT), &body).await;
    assert_eq!((code, &again["recorded"]), (200, &json!(false)), "{again}");
    assert_eq!(again["ledger_seq"], first["ledger_seq"]);
    assert_eq!(length(&server).await, before + 1);
    // A different one: refused.
    let (code, v) = post(
        &outcomes,
        Some(AGENT),
        &json!({"request_id": "m1", "ok": false, "error": "x"}),
    )
    .await;
    assert_eq!(
        (code, v["code"].as_str()),
        (409, Some("outcome_conflict")),
        "{v}"
    );

    // Unknown, denied, someone else's, wrong role, malformed: nothing recorded.
    let (code, v) = post(
        &outcomes,
        Some(AGENT),
        &json!({"request_id": "nope", "ok": true}),
    )
    .await;
    assert_eq!(
        (code, v["code"].as_str()),
        (404, Some("unknown_request")),
        "{v}"
    );
    let (_, deny) = post(
        &server.url("/v1/requests"),
        Some(AGENT),
        &external("m2", "agent-001", "rm"),
    )
    .await;
    assert_eq!(deny["decision"], "DENY");
    assert_eq!(
        entry(&server, deny["ledger_seq"].as_u64().unwrap()).await["tool_name"],
        "rm"
    );
    let (code, v) = post(
        &outcomes,
        Some(AGENT),
        &json!({"request_id": "m2", "ok": true}),
    )
    .await;
    assert_eq!(
        (code, v["code"].as_str()),
        (409, Some("not_allowed")),
        "{v}"
    );
    let (_, other) = post(
        &server.url("/v1/requests"),
        Some(AGENT),
        &external("m3", "agent-002", "search"),
    )
    .await;
    assert_eq!(other["decision"], "ALLOW");
    let (code, v) = post(
        &outcomes,
        Some(AGENT_LIMITED),
        &json!({"request_id": "m3", "ok": true}),
    )
    .await;
    assert_eq!((code, v["code"].as_str()), (403, Some("forbidden")), "{v}");
    let (code, _) = post(
        &outcomes,
        Some(AUDITOR),
        &json!({"request_id": "m3", "ok": true}),
    )
    .await;
    assert_eq!(code, 403);
    let (code, v) = post(
        &outcomes,
        Some(AGENT),
        &json!({"request_id": "m3", "ok": true, "result": "secret"}),
    )
    .await;
    assert_eq!(
        (code, v["code"].as_str()),
        (400, Some("invalid_outcome")),
        "{v}"
    );
    let n = length(&server).await;

    // A halted kernel still takes the outcome of a call allowed before the halt.
    let (code, _) = post(
        &server.url("/v1/halt"),
        Some(OPERATOR),
        &json!({"reason": "incident"}),
    )
    .await;
    assert_eq!(code, 200);
    let (code, v) = post(
        &outcomes,
        Some(OPERATOR),
        &json!({"request_id": "m3", "ok": false, "error": "timeout"}),
    )
    .await;
    assert_eq!((code, &v["recorded"]), (200, &json!(true)), "{v}");
    assert_eq!(length(&server).await, n + 2);

    // After a restart the index still knows both outcomes.
    let ledger = server.stop().await;
    drop(ledger);
    let server = TestServer::start(tmp.path()).await;
    let outcomes = server.url("/v1/outcomes");
    let (code, v) = post(&outcomes, Some(AGENT), &body).await;
    assert_eq!(
        (code, &v["recorded"], &v["ledger_seq"]),
        (200, &json!(false), &first["ledger_seq"]),
        "{v}"
    );
    let (code, v) = post(
        &outcomes,
        Some(AGENT),
        &json!({"request_id": "m3", "ok": true}),
    )
    .await;
    assert_eq!(
        (code, v["code"].as_str()),
        (409, Some("outcome_conflict")),
        "{v}"
    );
    let (code, report) = post(&server.url("/v1/verify"), Some(AUDITOR), &json!({})).await;
    assert_eq!((code, &report["valid"]), (200, &json!(true)), "{report}");
    server.stop().await;
}
