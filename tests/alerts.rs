//! Alerts from the real `kernels serve` to a real HTTP receiver on
//! 127.0.0.1:0: halts, recoveries and policy updates reach the webhook (also
//! when it fails at first), and a dead webhook never slows a decision.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::http;
use support::process::{AGENT, OPERATOR, ServeConfig, Server};
use support::webhook::Receiver;

fn serve_config(dir: &Path, config: &str) -> (ServeConfig, Vec<(String, String)>) {
    std::fs::write(
        dir.join("policy.yaml"),
        "allowed_actors: ['*']\nallowed_tools: [echo]\n",
    )
    .unwrap();
    std::fs::write(dir.join("kernels.yaml"), config).unwrap();
    (
        ServeConfig {
            cwd: dir.to_owned(),
            data_dir: "data".into(),
            policy: "policy.yaml".into(),
            kernel_id: "alerting-1".into(),
        },
        vec![("KERNELS_CONFIG".into(), "kernels.yaml".into())],
    )
}

async fn submit(client: &reqwest::Client, server: &Server, id: &str) -> Duration {
    let started = Instant::now();
    let (code, r) = http::post(
        client,
        &server.url("/v1/requests"),
        AGENT,
        &json!({"request_id": id, "actor": "agent-001", "intent": "echo",
                "tool_call": {"name": "echo", "params": {"text": "x"}}}),
    )
    .await;
    assert_eq!(code, 200, "{r}");
    started.elapsed()
}

async fn operate(client: &reqwest::Client, server: &Server, path: &str, body: Value) -> Value {
    let (code, r) = http::post(client, &server.url(path), OPERATOR, &body).await;
    assert_eq!(code, 200, "{path}: {r}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halt_reaches_the_webhook_and_so_do_recover_and_policy_updates() {
    let tmp = tempfile::tempdir().unwrap();
    // The webhook refuses the first two deliveries: retries must get through.
    let (receiver, addr) = Receiver::start(2).await;
    let (config, mut env) = serve_config(tmp.path(), "alerts:\n  timeout: 2s\n");
    env.push((
        "KERNELS_ALERTS_WEBHOOK_URL".into(),
        format!("http://{addr}{}", support::webhook::PATH),
    ));
    let server = Server::start_env(&config, &env);
    let client = http::client();
    submit(&client, &server, "before-halt").await;

    let halted = operate(
        &client,
        &server,
        "/v1/halt",
        json!({"reason": "runaway agent"}),
    )
    .await;
    let alert = receiver.wait_for("halt").await;
    assert_eq!(alert["kernel_id"], "alerting-1", "{alert}");
    assert!(alert["ts_ms"].is_u64(), "{alert}");
    assert_eq!(alert["detail"]["intent"], "runaway agent", "{alert}");
    assert_eq!(
        alert["detail"]["seq"], halted["receipt"]["ledger_seq"],
        "{alert} vs {halted}"
    );
    let mut keys: Vec<_> = alert.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["detail", "event", "kernel_id", "ts_ms"], "{alert}");
    assert!(
        *receiver.tried.lock().unwrap() >= 3,
        "the refused attempts were retried"
    );

    operate(
        &client,
        &server,
        "/v1/recover",
        json!({"reason": "agent fixed"}),
    )
    .await;
    let alert = receiver.wait_for("recover").await;
    assert_eq!(alert["detail"]["payload"]["new_session"], 2, "{alert}");

    let (code, r) = http::put(
        &client,
        &server.url("/v1/policy"),
        OPERATOR,
        &json!({"reason": "tighter", "policy": {"allowed_actors": ["agent-001"], "allowed_tools": ["echo"]}}),
    )
    .await;
    assert_eq!(code, 200, "{r}");
    let alert = receiver.wait_for("policy_update").await;
    assert_eq!(alert["detail"]["payload"]["reason"], "tighter", "{alert}");

    // Exactly one alert each, in order; every delivery is counted.
    let events: Vec<Value> = receiver
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|a| a["event"].clone())
        .collect();
    assert_eq!(events, ["halt", "recover", "policy_update"]);
    assert_eq!(server.metric("kernels_alerts_sent_total").await, 3.0);
    assert_eq!(server.metric("kernels_alerts_failed_total").await, 0.0);
    let (code, stderr) = server.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !stderr.contains("secret-path"),
        "the webhook URL may hold a secret and must not be logged: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_webhook_never_blocks_a_decision() {
    let tmp = tempfile::tempdir().unwrap();
    // A webhook that accepts connections and never answers.
    let unused = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gate = support::gate::Gate::start(unused.local_addr().unwrap(), true).await;
    let (config, mut env) = serve_config(
        tmp.path(),
        "alerts:\n  timeout: 1s\n  max_attempts: 2\n  queue: 2\n",
    );
    env.push((
        "KERNELS_ALERTS_WEBHOOK_URL".into(),
        format!("{}/hook", gate.endpoint()),
    ));
    let server = Server::start_env(&config, &env);
    let client = http::client();

    // Halts and recoveries raise alerts faster than a dead webhook takes them.
    for round in 0..4 {
        for (path, reason) in [("/v1/halt", "drill"), ("/v1/recover", "drill over")] {
            let started = Instant::now();
            operate(&client, &server, path, json!({"reason": reason})).await;
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "round {round}: {path} took {:?}",
                started.elapsed()
            );
        }
        // Let the watcher pick them up (it looks every 200 ms).
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Decisions go on at full speed while alerts wait and fail.
    let mut slowest = Duration::ZERO;
    for i in 0..100 {
        slowest = slowest.max(submit(&client, &server, &format!("during-{i}")).await);
    }
    assert!(
        slowest < Duration::from_millis(500),
        "a decision waited {slowest:?}"
    );
    // Failures and drops are counted.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let failed = server.metric("kernels_alerts_failed_total").await;
        let dropped = server.metric("kernels_alerts_dropped_total").await;
        if failed >= 1.0 && dropped >= 1.0 {
            assert_eq!(server.metric("kernels_alerts_sent_total").await, 0.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "failed {failed}, dropped {dropped}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A clean stop is not held up by the dead webhook for long.
    let stopping = Instant::now();
    let (code, stderr) = server.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "{:?}",
        stopping.elapsed()
    );
}
