//! Support for the MCP tests that drive the real binaries: the test venv's
//! Python (it runs the SDK fixture servers), a `kernels serve` child, and
//! `kernels mcp-proxy` as a child that speaks raw JSON-RPC lines.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use super::process::{self, ServeConfig, Server};

/// How long a test waits for one frame.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(30);

/// The Python of the test venv (`KERNELS_TEST_VENV`, else `.venv-test`).
/// Fails, never skips, when it is missing.
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("KERNELS_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-test"));
    let python = venv.join("bin").join("python");
    assert!(
        python.exists(),
        "the MCP tests need the test venv (the official MCP SDK) at {}: run scripts/test-env.sh, or scripts/test.sh",
        venv.display()
    );
    python
}

/// A file of `tests/python/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("python")
        .join(name)
}

/// A `kernels serve` over `dir` with `policy` (quick-start tokens of
/// `support::process`; the agent token may act as any actor).
pub fn kernel(dir: &Path, policy: &str) -> Server {
    let policy_file = dir.join("policy.yaml");
    std::fs::write(&policy_file, policy).unwrap();
    Server::start(&ServeConfig {
        cwd: dir.to_owned(),
        data_dir: dir.join("data"),
        policy: policy_file,
        kernel_id: "mcp-raw".into(),
    })
}

/// Every entry of a running kernel.
pub fn entries(server: &Server) -> Vec<Value> {
    let body = http_get(server, "/v1/entries?limit=1000", process::AUDITOR);
    body["entries"].as_array().cloned().unwrap_or_default()
}

/// `GET path` with `token` (blocking; a tiny HTTP/1.1 client).
pub fn http_get(server: &Server, path: &str, token: &str) -> Value {
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(FRAME_DEADLINE)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n",
        server.addr
    )
    .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stream, &mut text).unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

/// `kernels mcp-proxy` as a child process.
pub struct Proxy {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Proxy {
    /// Starts `kernels mcp-proxy --server URL FLAGS -- COMMAND…` in `cwd`
    /// with `KERNELS_TOKEN=token`.
    pub fn start(cwd: &Path, server: &str, token: &str, flags: &[&str], command: &[&str]) -> Proxy {
        let mut cmd = process::command(cwd);
        cmd.arg("mcp-proxy")
            .arg("--server")
            .arg(server)
            .args(flags)
            .arg("--")
            .args(command)
            .env("KERNELS_TOKEN", token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("kernels mcp-proxy starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proxy {
            stdin: child.stdin.take(),
            child,
            lines,
        }
    }

    /// Writes one frame (a line) to the proxy.
    pub fn send(&mut self, frame: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(frame.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    /// The next line the proxy writes, as written.
    pub fn recv_raw(&self) -> String {
        self.lines
            .recv_timeout(FRAME_DEADLINE)
            .unwrap_or_else(|e| panic!("no frame from the proxy within {FRAME_DEADLINE:?}: {e}"))
    }

    /// The next frame the proxy writes, parsed.
    pub fn recv(&self) -> Value {
        let line = self.recv_raw();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Whether nothing more is written within `wait`.
    pub fn silent_for(&self, wait: Duration) -> bool {
        match self.lines.recv_timeout(wait) {
            Ok(line) => panic!("unexpected frame: {line}"),
            Err(_) => true,
        }
    }

    /// Closes the proxy's stdin (the client leaves).
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Waits for the proxy to exit; answers its exit code.
    pub fn wait(mut self) -> Option<i32> {
        let status = process::wait_deadline(&mut self.child, Duration::from_secs(60))
            .expect("the proxy exits");
        status.code()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
