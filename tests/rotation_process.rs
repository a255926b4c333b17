//! The rotator inside the real `kernels serve` process, against a real
//! S3-compatible server: scheduled runs, a crash between upload and record,
//! and the forensic commands of the real binary.

mod common;
#[path = "common/s3.rs"]
mod s3;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{get, post};
use s3::S3Server;
use serde_json::{Value, json};

const OPERATOR: &str = "operator-token-proc";
const AGENT: &str = "agent-token-proc";

struct Service {
    child: Child,
    url: String,
}

fn kernels() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kernels"))
}

fn s3_env(cmd: &mut Command, server: &S3Server) {
    cmd.env("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("KERNELS_ROTATION_ENDPOINT", server.endpoint())
        .env("KERNELS_ROTATION_FORCE_PATH_STYLE", "true");
}

fn start(dir: &Path, server: &S3Server, interval: &str, abort_after_upload: bool) -> Service {
    std::fs::write(
        dir.join("policy.yaml"),
        "allowed_actors: ['*']\nallowed_tools: [echo]\n",
    )
    .unwrap();
    let mut cmd = kernels();
    cmd.current_dir(dir)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "data",
            "--policy",
            "policy.yaml",
            "--kernel-id",
            "proc-1",
        ])
        .env("KERNELS_OPERATOR_TOKEN", OPERATOR)
        .env("KERNELS_AUDITOR_TOKEN", "auditor-token-proc")
        .env("KERNELS_AGENT_TOKEN", AGENT)
        .env("KERNELS_ROTATION_BUCKET", s3::BUCKET)
        .env("KERNELS_ROTATION_INTERVAL", interval)
        .env("KERNELS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    s3_env(&mut cmd, server);
    if abort_after_upload {
        cmd.env(kernels::rotator::run::ABORT_AFTER_UPLOAD, "1");
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("kernels: serving on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the service did not start");
    Service { child, url }
}

async fn submit(service: &Service, prefix: &str, n: usize) {
    for i in 0..n {
        let (code, r) = post(
            &format!("{}/v1/requests", service.url),
            Some(AGENT),
            &json!({"request_id": format!("{prefix}-{i}"), "actor": "agent-001", "intent": "echo",
                    "tool_call": {"name": "echo", "params": {"text": "x"}}}),
        )
        .await;
        assert_eq!(code, 200, "{r}");
    }
}

async fn status(service: &Service) -> Value {
    let (code, s) = get(&format!("{}/v1/status", service.url), Some(OPERATOR)).await;
    assert_eq!(code, 200, "{s}");
    s
}

fn stop(mut service: Service) {
    let _ = Command::new("kill")
        .args(["-TERM", &service.child.id().to_string()])
        .status();
    let status = service.child.wait().unwrap();
    assert!(
        status.success(),
        "the service must exit cleanly on SIGTERM: {status}"
    );
}

fn archive_cmd(server: &S3Server, args: &[&str]) -> (i32, String) {
    let mut cmd = kernels();
    cmd.arg("archive").args(args).args([
        "--bucket",
        s3::BUCKET,
        "--endpoint",
        &server.endpoint(),
        "--force-path-style",
        "--kernel-id",
        "proc-1",
    ]);
    s3_env(&mut cmd, server);
    cmd.env_remove("KERNELS_ROTATION_ENDPOINT")
        .current_dir(std::env::temp_dir());
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
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
    let _ = common::client()
        .post(format!("{}/v1/rotations", service.url))
        .bearer_auth(OPERATOR)
        .send()
        .await;
    let mut service = service;
    let exit = service.child.wait().unwrap();
    assert!(!exit.success(), "the fault injection must kill the process");

    // Restart: the next run records the uploaded range instead of uploading again.
    let service = start(tmp.path(), &server, "7d", false);
    let before = status(&service).await;
    let (code, outcome) = post(
        &format!("{}/v1/rotations", service.url),
        Some(OPERATOR),
        &json!({}),
    )
    .await;
    assert_eq!(code, 200, "{outcome}");
    assert_eq!(outcome["archived"], true);
    assert_eq!(outcome["repaired"], true, "{outcome}");
    assert_eq!(
        outcome["manifest"]["from_seq"].as_u64().unwrap(),
        before["last_rotation"]["to_seq"].as_u64().unwrap() + 1
    );
    submit(&service, "c", 3).await;
    let (code, outcome) = post(
        &format!("{}/v1/rotations", service.url),
        Some(OPERATOR),
        &json!({}),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(outcome["repaired"], false);
    let last_to = outcome["manifest"]["to_seq"].as_u64().unwrap();
    stop(service);

    // Forensics with the real binary, from the archive alone.
    let (code, out) = archive_cmd(&server, &["verify", "--json"]);
    assert_eq!(code, 0, "{out}");
    let report: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(report["manifests"], 3, "no duplicate range: {report}");
    assert_eq!(report["last_seq"].as_u64(), Some(last_to));

    let (code, from_archive) = archive_cmd(
        &server,
        &["replay", "--json", "--until-seq", &last_to.to_string()],
    );
    assert_eq!(code, 0, "{from_archive}");
    let live = kernels()
        .current_dir(tmp.path())
        .args([
            "replay",
            "--data-dir",
            "data",
            "--json",
            "--until-seq",
            &last_to.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        live.status.success(),
        "{}",
        String::from_utf8_lossy(&live.stderr)
    );
    let a: Value = serde_json::from_str(from_archive.lines().next().unwrap()).unwrap();
    let b: Value = serde_json::from_slice(&live.stdout).unwrap();
    assert_eq!(
        a, b,
        "archive replay must equal data-dir replay at the same seq"
    );

    // Tampering is reported by the binary with the object's name and exit 1.
    let seg = report_segment(&server);
    let mut bytes = std::fs::read(server.object_path(&seg)).unwrap();
    let n = bytes.len() - 100;
    bytes[n] ^= 0x01;
    std::fs::write(server.object_path(&seg), bytes).unwrap();
    let (code, out) = archive_cmd(&server, &["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&seg), "{out}");
    // An unreachable store is exit 2.
    let mut cmd = kernels();
    cmd.args([
        "archive",
        "verify",
        "--bucket",
        "b",
        "--endpoint",
        "http://127.0.0.1:9",
        "--force-path-style",
        "--kernel-id",
        "proc-1",
    ]);
    s3_env(&mut cmd, &server);
    let out = cmd
        .env_remove("KERNELS_ROTATION_ENDPOINT")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
