//! `GET /v1/policy/allowed` (what `kernels mcp-proxy` filters `tools/list`
//! with) against a real server on 127.0.0.1:0 over real sled.

mod support;

use serde_json::json;
use support::server::*;

#[tokio::test]
async fn agents_read_their_own_actors_and_readers_read_anyone() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(tmp.path()).await;
    let url = |q: &str| server.url(&format!("/v1/policy/allowed{q}"));

    // The limited agent token is bound to agent-001: no actor needed.
    let (code, v) = get(&url(""), Some(AGENT_LIMITED)).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        v,
        json!({"actor": "agent-001", "allowed": true, "tools": ["add", "echo", "search"], "policy_version": 1})
    );
    let (code, v) = get(&url("?actor=agent-001"), Some(AGENT_LIMITED)).await;
    assert_eq!(
        (code, &v["tools"]),
        (200, &json!(["add", "echo", "search"]))
    );
    // ... but it may not ask about another actor.
    let (code, v) = get(&url("?actor=agent-002"), Some(AGENT_LIMITED)).await;
    assert_eq!((code, v["code"].as_str()), (403, Some("forbidden")), "{v}");

    // A token for any actor must name one; an actor the policy does not know
    // is not allowed anything.
    let (code, v) = get(&url(""), Some(AGENT)).await;
    assert_eq!(
        (code, v["code"].as_str()),
        (400, Some("actor_required")),
        "{v}"
    );
    let (code, v) = get(&url("?actor=agent-009"), Some(AGENT)).await;
    assert_eq!(code, 200);
    assert_eq!(v["allowed"], false);
    assert_eq!(v["tools"], json!([]));

    // Auditors and operators may ask about anyone.
    for token in [AUDITOR, OPERATOR] {
        let (code, v) = get(&url("?actor=agent-002"), Some(token)).await;
        assert_eq!((code, &v["allowed"]), (200, &json!(true)), "{v}");
    }
    let (code, _) = get(&url("?actor=agent-001"), None).await;
    assert_eq!(code, 401);
    let (code, v) = get(&url("?actor="), Some(AGENT)).await;
    assert_eq!(code, 400, "{v}");
    let (code, v) = get(&url("?who=agent-001"), Some(AGENT)).await;
    assert_eq!(
        (code, v["code"].as_str()),
        (400, Some("invalid_query")),
        "{v}"
    );

    // A policy with "*" answers "*", and follows policy updates at once.
    let (code, v) = call(
        reqwest::Method::PUT,
        &server.url("/v1/policy"),
        Some(OPERATOR),
        Some(
            serde_json::to_vec(&json!({"policy": {"allowed_actors": ["*"], "allowed_tools": ["*"]}, "reason": "open up"}))
                .unwrap(),
        ),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let (code, v) = get(&url("?actor=agent-009"), Some(AGENT)).await;
    assert_eq!(code, 200);
    assert_eq!(
        v,
        json!({"actor": "agent-009", "allowed": true, "tools": "*", "policy_version": 2})
    );
    server.stop().await;
}
