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
