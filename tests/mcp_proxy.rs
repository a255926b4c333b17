//! `kernels mcp-proxy` frame by frame: the real binary between raw JSON-RPC
//! lines written by the test and a real child (the SDK fixture server, or a
//! recorder that logs every byte it receives), deciding through a real
//! `kernels serve`. What the official SDK client sees is tested in
//! tests/python/test_mcp_proxy.py; this file checks what no SDK would send:
//! exact bytes, reused ids, calls without ids, bad frames, exit statuses.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use support::mcp::{Proxy, entries, fixture, kernel, venv_python};
use support::process::{AGENT, Server};

const POLICY: &str = "allowed_actors: [agent-001]\nallowed_tools: [echo, add, exit_now]\n";

/// The recorder child: logs what it receives to `log`; answers per `script`.
fn recorder(dir: &Path, script: Value) -> (Vec<String>, std::path::PathBuf) {
    let log = dir.join("received.log");
    let script_file = dir.join("script.json");
    std::fs::write(&script_file, script.to_string()).unwrap();
    let command = vec![
        venv_python().display().to_string(),
        fixture("mcp_recorder_server.py").display().to_string(),
        log.display().to_string(),
        script_file.display().to_string(),
    ];
    (command, log)
}

fn received(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `kernels mcp-proxy --actor agent-001 -- COMMAND…` in `dir`, deciding
/// through `server` with the agent token.
fn for_agent_001(dir: &Path, server: &Server, command: &[&str]) -> Proxy {
    Proxy::start(
        dir,
        &server.url(""),
        AGENT,
        &["--actor", "agent-001"],
        command,
    )
}

fn args(command: &[String]) -> Vec<&str> {
    command.iter().map(String::as_str).collect()
}

#[test]
fn frames_other_than_the_two_methods_pass_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let server = kernel(tmp.path(), POLICY);
    // Server-to-client request, progress and an unknown notification, with
    // odd spacing and key order that a re-serialization would change.
    let (command, log) = recorder(
        tmp.path(),
        json!({"custom/ask": [
            r#"{"method": "sampling/createMessage", "id":"s-1" ,"jsonrpc":"2.0","params":{"z":1,"a":[1.50,2e3]}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t","progress":0.50}}"#,
            r#"{"jsonrpc":"2.0","id":$ID,"result":{"b":2,"a":1}}"#
        ]}),
    );
    let mut proxy = for_agent_001(tmp.path(), &server, &args(&command));
    let frames = [
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#,
        r#"{"method":"notifications/initialized","jsonrpc":"2.0"}"#,
        r#"{ "jsonrpc" : "2.0", "id" : "c-7", "method" : "custom/ask", "params" : { "y" : 1.0 } }"#,
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"nothing-in-flight","reason":"x"}}"#,
    ];
    for f in &frames {
        proxy.send(f);
    }
    assert_eq!(
        proxy.recv_raw(),
        r#"{"method": "sampling/createMessage", "id":"s-1" ,"jsonrpc":"2.0","params":{"z":1,"a":[1.50,2e3]}}"#
    );
    assert_eq!(
        proxy.recv_raw(),
        r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t","progress":0.50}}"#
    );
    assert_eq!(
        proxy.recv_raw(),
        r#"{"jsonrpc":"2.0","id":"c-7","result":{"b":2,"a":1}}"#
    );
    // The client's answer to the server's request goes back as written.
    let answer = r#"{"jsonrpc":"2.0","id":"s-1","result":{"role":"assistant","content":{"type":"text","text":"hi"}}}"#;
    proxy.send(answer);
    wait_until("the recorder got every frame", || received(&log).len() == 5);
    let mut sent: Vec<&str> = frames.to_vec();
    sent.push(answer);
    assert_eq!(received(&log), sent);
    // Nothing of this was a tool call: nothing was decided.
    assert!(entries(&server).iter().all(|e| e["tool_name"] != "echo"));
    proxy.close_stdin();
    assert_eq!(
        proxy.wait(),
        Some(0),
        "the recorder exits 0 at end of input"
    );
}

#[test]
fn what_could_slip_past_the_interception_is_refused_and_never_forwarded() {
    let tmp = tempfile::tempdir().unwrap();
    let server = kernel(tmp.path(), POLICY);
    let (command, log) = recorder(tmp.path(), json!({}));
    let mut proxy = for_agent_001(tmp.path(), &server, &args(&command));

    // Not JSON; a batch; a tools/call without an id (a notification could run
    // unanswered); a null id.
    proxy.send("{not json");
    assert_eq!(proxy.recv()["error"]["code"], -32700);
    proxy.send(
        r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_file"}}]"#,
    );
    assert_eq!(proxy.recv()["error"]["code"], -32600);
    proxy.send(r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}"#);
    proxy.send(r#"{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"echo"}}"#);
    let v = proxy.recv();
    assert_eq!(
        (v["id"].clone(), v["error"]["code"].clone()),
        (Value::Null, json!(-32600))
    );
    // A duplicated key: the last one wins, as in the SDKs, so this is a call.
    proxy.send(r#"{"jsonrpc":"2.0","id":5,"method":"tools/list","method":"tools/call","params":{"name":"delete_file","arguments":{}}}"#);
    let denied = proxy.recv();
    assert_eq!(denied["id"], 5);
    assert_eq!(denied["result"]["isError"], true, "{denied}");
    // Invalid params of a call.
    proxy.send(r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"echo","arguments":[1]}}"#);
    assert_eq!(proxy.recv()["error"]["code"], -32602);
    assert!(proxy.silent_for(Duration::from_millis(300)));
    assert_eq!(
        received(&log),
        Vec::<String>::new(),
        "nothing reached the server"
    );
    proxy.close_stdin();
    assert_eq!(proxy.wait(), Some(0));
}

#[test]
fn a_request_reusing_the_id_of_a_list_in_flight_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = kernel(tmp.path(), POLICY);
    // The recorder never answers tools/list, so the list stays in flight.
    let (command, log) = recorder(tmp.path(), json!({}));
    let mut proxy = for_agent_001(tmp.path(), &server, &args(&command));
    proxy.send(r#"{"jsonrpc":"2.0","id":9,"method":"tools/list"}"#);
    wait_until("the list is forwarded", || received(&log).len() == 1);
    // Had this gone through, the server's answer to it would have been taken
    // for the list's, and the real list relayed unfiltered.
    proxy.send(r#"{"jsonrpc":"2.0","id":9,"method":"tools/list"}"#);
    let v = proxy.recv();
    assert_eq!(
        (v["id"].clone(), v["error"]["code"].clone()),
        (json!(9), json!(-32600))
    );
    assert_eq!(received(&log).len(), 1);
    proxy.close_stdin();
    assert_eq!(proxy.wait(), Some(0));
}

fn initialize(proxy: &mut Proxy) {
    proxy.send(r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#);
    assert_eq!(proxy.recv()["id"], 0);
    proxy.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
}

#[test]
fn json_rpc_ids_that_restart_with_each_session_are_never_the_request_id() {
    let tmp = tempfile::tempdir().unwrap();
    let server = kernel(tmp.path(), POLICY);
    let python = venv_python().display().to_string();
    let server_script = fixture("mcp_fixture_server.py").display().to_string();
    for text in ["first session", "second session"] {
        let mut proxy = for_agent_001(tmp.path(), &server, &[&python, &server_script]);
        initialize(&mut proxy);
        proxy.send(&format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{text}"}}}}}}"#
        ));
        let v = proxy.recv();
        assert_eq!(v["result"]["structuredContent"]["result"], text, "{v}");
        proxy.close_stdin();
        assert_eq!(proxy.wait(), Some(0));
    }
    let calls: Vec<Value> = entries(&server)
        .into_iter()
        .filter(|e| e["tool_name"] == "echo")
        .collect();
    assert_eq!(
        calls.len(),
        2,
        "both sessions' id 1 were decided, neither taken for the other"
    );
    assert_ne!(calls[0]["request_id"], calls[1]["request_id"]);
    assert!(
        calls
            .iter()
            .all(|c| c["request_id"].as_str().unwrap().starts_with("mcp-"))
    );
}

#[test]
fn the_childs_exit_status_is_the_proxys() {
    let tmp = tempfile::tempdir().unwrap();
    let nowhere = "http://127.0.0.1:9"; // no kernel is needed to start and stop
    let python = venv_python().display().to_string();
    let proxy = Proxy::start(
        tmp.path(),
        nowhere,
        AGENT,
        &[],
        &[&python, "-c", "import sys; sys.exit(7)"],
    );
    assert_eq!(proxy.wait(), Some(7));
    let proxy = Proxy::start(
        tmp.path(),
        nowhere,
        AGENT,
        &[],
        &["sh", "-c", "kill -TERM $$"],
    );
    assert_eq!(proxy.wait(), Some(128 + 15), "killed by SIGTERM: 128 + 15");
    let proxy = Proxy::start(
        tmp.path(),
        nowhere,
        AGENT,
        &[],
        &["/nonexistent/mcp-server"],
    );
    assert_eq!(proxy.wait(), Some(2), "a command that cannot start");
}

#[test]
fn a_server_that_exits_mid_call_ends_the_proxy_and_the_call_has_an_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let server = kernel(tmp.path(), POLICY);
    let python = venv_python().display().to_string();
    let server_script = fixture("mcp_fixture_server.py").display().to_string();
    let mut proxy = for_agent_001(tmp.path(), &server, &[&python, &server_script]);
    initialize(&mut proxy);
    proxy.send(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"exit_now","arguments":{"code":5}}}"#);
    assert_eq!(proxy.wait(), Some(5));
    let all = entries(&server);
    let call = all
        .iter()
        .find(|e| e["tool_name"] == "exit_now")
        .expect("the call was decided");
    assert_eq!(call["decision"], "ALLOW");
    let outcome = all
        .iter()
        .find(|e| e["tool_name"] == "kernel.outcome" && e["request_id"] == call["request_id"])
        .expect("the proxy recorded the outcome before it exited");
    assert_eq!(outcome["payload"]["ok"], false);
    assert_eq!(
        outcome["payload"]["error"],
        "no answer: the MCP server exited"
    );
}

#[test]
fn a_permit_file_is_attached_to_every_call() {
    use kernels::kernel::permit::PermitToken;
    let tmp = tempfile::tempdir().unwrap();
    let key = [7u8; 32];
    std::fs::create_dir_all(tmp.path().join("config")).unwrap();
    std::fs::write(tmp.path().join("permit.key"), hex(&key)).unwrap();
    std::fs::write(
        tmp.path().join("config").join("kernels.yaml"),
        "permits:\n  keys_file: {k1: permit.key}\n",
    )
    .unwrap();
    let server = kernel(tmp.path(), POLICY);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let permit = PermitToken {
        permit_id: String::new(),
        issuer: "ops".into(),
        subject: "agent-001".into(),
        jurisdiction: "default".into(),
        action: "echo".into(),
        params: json!({"text": "p"}).as_object().unwrap().clone(),
        constraints: serde_json::Map::new(),
        max_executions: 5,
        valid_from_ms: now - 60_000,
        valid_until_ms: now + 600_000,
        evidence_hash: String::new(),
        proposal_hash: "p".repeat(64),
        nonce: "n".repeat(32),
        signature: String::new(),
        key_id: String::new(),
    }
    .sign("k1", &key);
    let permit_file = tmp.path().join("permit.json");
    std::fs::write(&permit_file, permit.to_value().to_string()).unwrap();
    let python = venv_python().display().to_string();
    let server_script = fixture("mcp_fixture_server.py").display().to_string();
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"p"}}}"#;

    // Without the permit: denied (MISSING_PERMIT).
    let mut proxy = for_agent_001(tmp.path(), &server, &[&python, &server_script]);
    initialize(&mut proxy);
    proxy.send(call);
    let v = proxy.recv();
    assert_eq!(v["result"]["isError"], true, "{v}");
    assert!(
        v["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("MISSING_PERMIT"),
        "{v}"
    );
    proxy.close_stdin();
    proxy.wait();

    // With it: allowed, and the entry carries the permit.
    let permit_arg = permit_file.display().to_string();
    let mut proxy = Proxy::start(
        tmp.path(),
        &server.url(""),
        AGENT,
        &["--actor", "agent-001", "--permit", &permit_arg],
        &[&python, &server_script],
    );
    initialize(&mut proxy);
    proxy.send(call);
    let v = proxy.recv();
    assert_eq!(v["result"]["structuredContent"]["result"], "p", "{v}");
    proxy.close_stdin();
    proxy.wait();
    let allowed: Vec<Value> = entries(&server)
        .into_iter()
        .filter(|e| e["tool_name"] == "echo" && e["decision"] == "ALLOW")
        .collect();
    assert_eq!(allowed.len(), 1);
    assert_eq!(allowed[0]["permit_digest"], permit.permit_id.as_str());

    // A permit file that is not a permit: refused at start.
    std::fs::write(&permit_file, "[]").unwrap();
    let proxy = Proxy::start(
        tmp.path(),
        &server.url(""),
        AGENT,
        &["--permit", &permit_arg],
        &[&python, &server_script],
    );
    assert_eq!(proxy.wait(), Some(2));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
