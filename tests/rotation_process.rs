//! The rotator inside the real `kernels serve` process, against a real
//! S3-compatible server: scheduled runs, a crash between upload and record,
//! and the forensic commands of the real binary.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::http;
use support::process::{AGENT, OPERATOR, Output, ServeConfig, Server, command, run, run_with};
use support::s3::{self, S3Server};

fn serve_config(dir: &Path) -> ServeConfig {
    std::fs::write(
        dir.join("policy.yaml"),
        "allowed_actors: ['*']\nallowed_tools: [echo]\n",
    )
    .unwrap();
    ServeConfig {
        cwd: dir.to_owned(),
        data_dir: "data".into(),
        policy: "policy.yaml".into(),
        kernel_id: "proc-1".into(),
    }
}

fn start(dir: &Path, server: &S3Server, interval: &str, abort_after_upload: bool) -> Server {
    let mut env = server.env();
    env.push(("KERNELS_ROTATION_INTERVAL".into(), interval.into()));
    if abort_after_upload {
        env.push((kernels::rotator::run::ABORT_AFTER_UPLOAD.into(), "1".into()));
    }
    Server::start_env(&serve_config(dir), &env)
}

async fn submit(service: &Server, prefix: &str, n: usize) {
    let client = http::client();
    for i in 0..n {
        let (code, r) = http::post(
            &client,
            &service.url("/v1/requests"),
            AGENT,
            &json!({"request_id": format!("{prefix}-{i}"), "actor": "agent-001", "intent": "echo",
                    "tool_call": {"name": "echo", "params": {"text": "x"}}}),
        )
        .await;
        assert_eq!(code, 200, "{r}");
    }
}

async fn status(service: &Server) -> Value {
    let (code, s) = http::get(&http::client(), &service.url("/v1/status"), OPERATOR).await;
    assert_eq!(code, 200, "{s}");
    s
}

async fn rotate(service: &Server) -> (u16, Value) {
    http::post(
        &http::client(),
        &service.url("/v1/rotations"),
        OPERATOR,
        &json!({}),
    )
    .await
}

fn stop(service: Server) {
    let (code, stderr) = service.terminate();
    assert_eq!(
        code,
        Some(0),
        "the service must exit cleanly on SIGTERM: {stderr}"
    );
}

/// `kernels archive ARGS` with the S3 location given as flags (only the AWS
/// credentials come from the environment).
fn archive_cmd(server: &S3Server, args: &[&str]) -> Output {
    let mut cmd = command(&std::env::temp_dir());
    cmd.envs(
        server
            .env()
            .into_iter()
            .filter(|(k, _)| k.starts_with("AWS_")),
    );
    let mut all = vec!["archive"];
    all.extend_from_slice(args);
    let endpoint = server.endpoint();
    all.extend_from_slice(&[
        "--bucket",
        s3::BUCKET,
        "--endpoint",
        &endpoint,
        "--force-path-style",
        "--kernel-id",
        "proc-1",
    ]);
    run_with(cmd, &all, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_runs_a_crash_after_upload_and_forensics_from_the_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start().await;

    // Scheduled rotation every 2 s.
    let service = start(tmp.path(), &server, "2s", false);
    submit(&service, "a", 12).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(&service).await;
        if !s["last_rotation"].is_null() {
            assert_eq!(s["rotation"]["enabled"], true);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled rotation happened: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop(service);

    // A process that dies after uploading, before recording.
    let service = start(tmp.path(), &server, "7d", true);
    submit(&service, "b", 7).await;
    // The process dies while answering: the request itself fails.
    let _ = http::client()
        .post(service.url("/v1/rotations"))
        .bearer_auth(OPERATOR)
        .send()
        .await;
    let exit = service.wait_exit(Duration::from_secs(60));
    assert!(!exit.success(), "the fault injection must kill the process");

    // Restart: the next run records the uploaded range instead of uploading again.
    let service = start(tmp.path(), &server, "7d", false);
    let before = status(&service).await;
    let (code, outcome) = rotate(&service).await;
    assert_eq!(code, 200, "{outcome}");
    assert_eq!(outcome["archived"], true);
    assert_eq!(outcome["repaired"], true, "{outcome}");
    assert_eq!(
        outcome["manifest"]["from_seq"].as_u64().unwrap(),
        before["last_rotation"]["to_seq"].as_u64().unwrap() + 1
    );
    submit(&service, "c", 3).await;
    let (code, outcome) = rotate(&service).await;
    assert_eq!(code, 200);
    assert_eq!(outcome["repaired"], false);
    let last_to = outcome["manifest"]["to_seq"].as_u64().unwrap();
    stop(service);

    // Forensics with the real binary, from the archive alone.
    let out = archive_cmd(&server, &["verify", "--json"]);
    out.expect_code(0, "archive verify");
    let report = out.json();
    assert_eq!(report["manifests"], 3, "no duplicate range: {report}");
    assert_eq!(report["last_seq"].as_u64(), Some(last_to));

    let until = last_to.to_string();
    let from_archive = archive_cmd(&server, &["replay", "--json", "--until-seq", &until]);
    from_archive.expect_code(0, "archive replay");
    let live = run(
        tmp.path(),
        &[
            "replay",
            "--data-dir",
            "data",
            "--json",
            "--until-seq",
            &until,
        ],
        None,
    );
    live.expect_code(0, "replay --data-dir");
    assert_eq!(
        from_archive.json(),
        live.json(),
        "archive replay must equal data-dir replay at the same seq"
    );

    // Tampering is reported by the binary with the object's name and exit 1.
    let seg = report_segment(&server);
    let mut bytes = std::fs::read(server.object_path(&seg)).unwrap();
    let n = bytes.len() - 100;
    bytes[n] ^= 0x01;
    std::fs::write(server.object_path(&seg), bytes).unwrap();
    let out = archive_cmd(&server, &["verify"]);
    out.expect_code(1, "archive verify of a tampered segment");
    assert!(out.stdout.contains(&seg), "{}", out.stdout);
    // An unreachable store is exit 2.
    let mut cmd = command(&std::env::temp_dir());
    cmd.envs(
        server
            .env()
            .into_iter()
            .filter(|(k, _)| k.starts_with("AWS_")),
    );
    run_with(
        cmd,
        &[
            "archive",
            "verify",
            "--bucket",
            "b",
            "--endpoint",
            "http://127.0.0.1:9",
            "--force-path-style",
            "--kernel-id",
            "proc-1",
        ],
        None,
    )
    .expect_unusable("archive verify against an unreachable store");
}

fn report_segment(server: &S3Server) -> String {
    let dir = server.bucket_dir().join("kernels-archive/proc-1/segments");
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    format!("kernels-archive/proc-1/segments/{}", names[0])
}

/// `GET /v1/rotations`.
async fn rotations(service: &Server) -> Value {
    let (code, r) = http::get(&http::client(), &service.url("/v1/rotations"), OPERATOR).await;
    assert_eq!(code, 200, "{r}");
    r
}

/// Polls `GET /v1/rotations` until `done` holds (at most `limit`).
async fn wait_rotations(
    service: &Server,
    limit: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let r = rotations(service).await;
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{what} within {limit:?}: {r:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_rotated_ledger_rotates_although_the_service_restarts_every_half_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start().await;
    let interval = Duration::from_secs(4);
    let mut rotated_in = None;
    for cycle in 0..8 {
        let service = start(tmp.path(), &server, "4s", false);
        if cycle == 0 {
            submit(&service, "a", 5).await;
        }
        tokio::time::sleep(interval / 2).await;
        let s = status(&service).await;
        stop(service);
        if !s["last_rotation"].is_null() {
            rotated_in = Some(cycle);
            break;
        }
    }
    let cycle = rotated_in.expect(
        "a service restarted every half interval must still rotate a ledger that never rotated",
    );
    // Due one interval after the first entry: in the second or third run.
    assert!(cycle >= 1, "rotated before an interval had passed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_run_outlives_its_request_and_is_retried_when_the_store_hangs() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start().await;
    let gate = support::gate::Gate::start(server.addr, true).await;
    std::fs::write(
        tmp.path().join("kernels.yaml"),
        "limits:\n  request_timeout: 1s\nrotation:\n  attempt_timeout: 3s\n",
    )
    .unwrap();
    let mut env = server.env();
    env.retain(|(k, _)| k != "KERNELS_ROTATION_ENDPOINT");
    env.push(("KERNELS_ROTATION_ENDPOINT".into(), gate.endpoint()));
    env.push(("KERNELS_ROTATION_INTERVAL".into(), "7d".into()));
    env.push(("KERNELS_CONFIG".into(), "kernels.yaml".into()));
    let service = Server::start_env(&serve_config(tmp.path()), &env);
    submit(&service, "a", 5).await;

    // The store hangs: the call answers 202 with the run's id before the
    // request's 1 s limit, and the run goes on in the worker.
    let asked = Instant::now();
    let (code, answer) = rotate(&service).await;
    assert_eq!(code, 202, "{answer}");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    let run_id = answer["run_id"].as_str().expect("a run id").to_owned();
    assert!(!answer.to_string().contains("request_id"), "{answer}");
    let r = rotations(&service).await;
    assert_eq!(r["running"], true, "{r:#}");
    assert_eq!(r["current_run"]["id"], run_id.as_str(), "{r:#}");
    assert_eq!(r["current_run"]["manual"], true);
    // Asking again joins the same run.
    let (code, again) = rotate(&service).await;
    assert_eq!(
        (code, again["run_id"].as_str()),
        (202, Some(run_id.as_str()))
    );

    // After the attempt time the run counts as failed: no `running` left set.
    let r = wait_rotations(
        &service,
        Duration::from_secs(15),
        "the hung run fails",
        |r| {
            r["history"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["id"] == run_id.as_str())
        },
    )
    .await;
    assert!(
        asked.elapsed() < Duration::from_secs(3 + 5),
        "{:?}",
        asked.elapsed()
    );
    let failed = r["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == run_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(failed["ok"], false, "{failed}");
    assert_eq!(failed["error_code"], "attempt_timeout", "{failed}");
    assert!(failed["retry_at_ms"].is_u64(), "{failed}");
    assert_eq!(r["failing"], true);
    assert_ne!(r["current_run"]["id"], run_id.as_str(), "{r:#}");
    assert_eq!(service.metric("kernels_rotation_failing").await, 1.0);
    assert!(service.metric("kernels_rotation_failures_total").await >= 1.0);

    // The store comes back: the worker retries the manual run by itself,
    // on behalf of the operator who asked, with no further call.
    gate.open();
    let r = wait_rotations(&service, Duration::from_secs(60), "a retry archives", |r| {
        r["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["ok"] == true)
    })
    .await;
    let retried = r["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["ok"] == true)
        .unwrap()
        .clone();
    assert_eq!(retried["manual"], false, "{retried}");
    assert_eq!(retried["actor"], failed["actor"], "{retried}");
    assert_eq!(retried["outcome"]["archived"], true, "{retried}");
    assert_eq!(r["failing"], false);
    assert_eq!(service.metric("kernels_rotation_failing").await, 0.0);

    // The pending-entries gauge agrees with the status.
    submit(&service, "b", 7).await;
    let s = status(&service).await;
    let pending = s["rotation"]["pending_entries"].as_u64().unwrap();
    assert_eq!(pending, 8, "{s:#}");
    assert_eq!(
        service.metric("kernels_rotation_pending_entries").await,
        pending as f64
    );
    stop(service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_newest_archive_object_is_reported_and_never_chained_onto() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start().await;
    let (webhook, hook_addr) = support::webhook::Receiver::start(0).await;
    let mut env = server.env();
    env.push(("KERNELS_ROTATION_INTERVAL".into(), "7d".into()));
    env.push((
        "KERNELS_ALERTS_WEBHOOK_URL".into(),
        format!("http://{hook_addr}{}", support::webhook::PATH),
    ));
    let service = Server::start_env(&serve_config(tmp.path()), &env);
    let mut last_to = 0;
    for round in 0..2 {
        submit(&service, &format!("r{round}"), 4).await;
        let (code, outcome) = rotate(&service).await;
        assert_eq!(
            (code, &outcome["archived"]),
            (200, &json!(true)),
            "{outcome}"
        );
        last_to = outcome["manifest"]["to_seq"].as_u64().unwrap();
    }
    let r = rotations(&service).await;
    assert_eq!(r["archive_head"]["state"], "ok", "{r:#}");
    let manifest_key = r["archive_head"]["manifest_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let segment_key = r["archive_head"]["segment_key"]
        .as_str()
        .unwrap()
        .to_owned();

    // Someone deletes the newest manifest and segment.
    std::fs::remove_file(server.object_path(&manifest_key)).unwrap();
    std::fs::remove_file(server.object_path(&segment_key)).unwrap();

    // The archive alone still chains; told where it must end, it fails.
    archive_cmd(&server, &["verify"]).expect_code(0, "the gap is invisible from the archive alone");
    let out = archive_cmd(&server, &["verify", "--expect-seq", &last_to.to_string()]);
    out.expect_code(1, "archive verify --expect-seq");
    assert!(out.stdout.contains("ends early"), "{}", out.stdout);
    // The same, asking the running service.
    let mut cmd = command(&std::env::temp_dir());
    cmd.envs(
        server
            .env()
            .into_iter()
            .filter(|(k, _)| k.starts_with("AWS_")),
    )
    .env("KERNELS_TOKEN", OPERATOR);
    let endpoint = server.endpoint();
    let url = service.url("");
    let out = run_with(
        cmd,
        &[
            "archive",
            "verify",
            "--json",
            "--service",
            &url,
            "--bucket",
            s3::BUCKET,
            "--endpoint",
            &endpoint,
            "--force-path-style",
            "--kernel-id",
            "proc-1",
        ],
        None,
    );
    out.expect_code(1, "archive verify --service");
    assert_eq!(out.json()["valid"], false);

    // The next rotation refuses to chain onto the missing manifest, says so,
    // and records nothing.
    submit(&service, "after", 3).await;
    let before = status(&service).await["ledger_length"].as_u64().unwrap();
    let (code, refused) = rotate(&service).await;
    assert_eq!(code, 502, "{refused}");
    let text = refused["error"].as_str().unwrap();
    assert!(
        text.contains("archive_head_missing") && text.contains(&manifest_key),
        "{text}"
    );
    let s = status(&service).await;
    assert_eq!(
        s["ledger_length"].as_u64().unwrap(),
        before,
        "nothing may be recorded"
    );
    assert_eq!(s["last_rotation"]["to_seq"].as_u64(), Some(last_to));
    assert_eq!(s["rotation"]["archive_head"]["state"], "missing", "{s:#}");
    assert_eq!(s["rotation"]["last_error_code"], "archive_head_missing");
    // On-call hears of both: the archive lost its head, rotation fails.
    let alert = webhook.wait_for("integrity_failure").await;
    assert_eq!(alert["detail"]["source"], "archive", "{alert}");
    assert_eq!(
        alert["detail"]["manifest_key"],
        manifest_key.as_str(),
        "{alert}"
    );
    let alert = webhook.wait_for("rotation_failing").await;
    assert_eq!(alert["detail"]["code"], "archive_head_missing", "{alert}");
    stop(service);
}
