//! `POST /v1/outcomes` against a real server on 127.0.0.1:0 over real sled:
//! one `kernel.outcome` entry per ALLOWed request, idempotent for the same
//! outcome (also across a restart), 409 for a different one, 404 for an
//! unknown request.

mod support;

use serde_json::{Value, json};
use support::server::*;

fn external(id: &str, actor: &str, tool: &str) -> Value {
    json!({"request_id": id, "actor": actor, "intent": "run an MCP tool",
           "tool_call": {"name": tool, "params": {"q": id}}, "params": {"q": id}, "external_tool": true})
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
    let e = entry_at(&server, first["ledger_seq"].as_u64().unwrap()).await;
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
        entry_at(&server, deny["ledger_seq"].as_u64().unwrap()).await["tool_name"],
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

/// `kernels investigate` (the real binary) with `args`, as the auditor.
async fn investigate(cwd: &std::path::Path, args: Vec<String>) -> String {
    let cwd = cwd.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut cmd = support::process::command(&cwd);
        cmd.env("KERNELS_TOKEN", AUDITOR);
        let args: Vec<&str> = std::iter::once("investigate")
            .chain(args.iter().map(String::as_str))
            .collect();
        let out = support::process::run_with(cmd, &args, None);
        out.expect_code(0, "investigate");
        out.stdout
    })
    .await
    .unwrap()
}

/// `(seq, tool_name)` of JSON-lines output.
fn listed(json_lines: &str) -> Vec<(u64, String)> {
    json_lines
        .lines()
        .map(|l| {
            let e: Value = serde_json::from_str(l).unwrap();
            (
                e["ledger_seq"].as_u64().unwrap(),
                e["tool_name"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn investigations_show_decision_and_outcome_together() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(tmp.path()).await;
    let submit = |body: Value| {
        let url = server.url("/v1/requests");
        async move { post(&url, Some(AGENT), &body).await }
    };
    let outcome = |body: Value| {
        let url = server.url("/v1/outcomes");
        async move {
            let (code, v) = post(&url, Some(AGENT), &body).await;
            assert_eq!(code, 200, "{v}");
            v
        }
    };
    // Decisions 1 and 2, then their outcomes in the other order, a denial between.
    let (_, m1) = submit(external("m1", "agent-001", "search")).await;
    let (_, m2) = submit(external("m2", "agent-002", "search")).await;
    let o2 =
        outcome(json!({"request_id": "m2", "ok": true, "result_sha256": "ab".repeat(32)})).await;
    let (_, m3) = submit(external("m3", "agent-001", "rm")).await;
    let o1 = outcome(json!({"request_id": "m1", "ok": false, "error": "boom"})).await;
    assert_eq!(
        (m1["decision"].as_str(), m3["decision"].as_str()),
        (Some("ALLOW"), Some("DENY"))
    );
    let seq = |v: &Value| v["ledger_seq"].as_u64().unwrap();
    let (s1, s2, s3, so1, so2) = (seq(&m1), seq(&m2), seq(&m3), seq(&o1), seq(&o2));
    assert!(s1 < s2 && s2 < so2 && so2 < s3 && s3 < so1);

    // GET /v1/entries?request_id= finds both.
    let (code, page) = get(&server.url("/v1/entries?request_id=m1"), Some(AUDITOR)).await;
    assert_eq!(code, 200, "{page}");
    let found: Vec<(u64, &str)> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (seq(e), e["tool_name"].as_str().unwrap()))
        .collect();
    assert_eq!(found, vec![(s1, "search"), (so1, "kernel.outcome")]);

    // Outcomes are not decisions: the state counts them as events.
    let (_, status) = get(&server.url("/v1/status"), Some(AUDITOR)).await;
    let counters = &status["counters"];
    assert_eq!(
        counters["by_decision"],
        json!({"ALLOW": 2, "DENY": 1}),
        "{counters}"
    );
    assert_eq!(counters["by_event"]["kernel.outcome"], 2, "{counters}");
    assert!(
        counters["by_tool"].get("kernel.outcome").is_none(),
        "{counters}"
    );

    // kernels investigate --server: each outcome right after its decision.
    let to = (status["last_entry_ts_ms"].as_u64().unwrap()).to_string();
    let range = |extra: &[&str]| -> Vec<String> {
        let mut args = vec![
            "--from-ms".to_owned(),
            "0".into(),
            "--to-ms".into(),
            to.clone(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let url = server.url("");
    let served = investigate(tmp.path(), range(&["--server", &url, "--json"])).await;
    let expected = [
        (s1, "search".to_owned()),
        (so1, "kernel.outcome".to_owned()),
        (s2, "search".to_owned()),
        (so2, "kernel.outcome".to_owned()),
        (s3, "rm".to_owned()),
    ];
    let all = listed(&served);
    assert_eq!(all[all.len() - 5..], expected[..], "{served}");
    assert_eq!(
        all.len(),
        seq(&o1) as usize + 1,
        "every entry once: {served}"
    );
    // Filtered by tool: the decisions of the tool, still with their outcomes.
    let by_tool = investigate(
        tmp.path(),
        range(&["--server", &url, "--tool", "search", "--json"]),
    )
    .await;
    assert_eq!(listed(&by_tool), expected[..4], "{by_tool}");
    // The table: the outcome under its decision, with what it says.
    let table = investigate(
        tmp.path(),
        range(&["--server", &url, "--actor", "agent-001"]),
    )
    .await;
    let rows: Vec<&str> = table.lines().collect();
    let at = rows
        .iter()
        .position(|r| r.trim_start().starts_with(&format!("{s1} ")))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        rows[at + 1]
            .trim_start()
            .starts_with(&format!("\u{21b3} {so1} "))
            && rows[at + 1].ends_with("outcome: failed: boom"),
        "{table}"
    );
    assert!(
        table.contains(
            "3 entries in range: 1 ALLOW, 1 DENY, 0 HALT, 1 outcomes, 0 operational events"
        ),
        "{table}"
    );

    // The same from the data dir, offline.
    drop(server.stop().await);
    let data = tmp.path().to_str().unwrap().to_owned();
    let offline = investigate(tmp.path(), range(&["--data-dir", &data, "--json"])).await;
    assert_eq!(offline, served);
}
