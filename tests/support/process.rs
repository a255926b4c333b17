//! The real `kernels` binary as a child process: one-shot commands with a
//! deadline, and `kernels serve` on `127.0.0.1:0` with its address read from
//! stderr.
//!
//! Every child runs with its working directory set to the test's temp dir and
//! with every inherited `KERNELS_*` variable removed, so neither the repo's
//! `config/` nor the developer's environment can leak into a test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_kernels");

/// Tokens of the three roles, passed through the quick-start variables.
pub use super::{AGENT, AUDITOR, OPERATOR};

/// How long a one-shot command may take before the test fails.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

/// A `kernels` command with a clean environment, run in `cwd`.
pub fn command(cwd: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(cwd);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KERNELS_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("KERNELS_LOG", "warn");
    cmd.env("RUST_BACKTRACE", "0");
    cmd
}

/// What a finished command left behind.
#[derive(Debug)]
pub struct Output {
    /// Exit code (None when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Wall-clock time the command took.
    pub elapsed: Duration,
}

impl Output {
    /// Asserts the exit code, showing both streams when it differs.
    pub fn expect_code(&self, code: i32, what: &str) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "{what}: exit code\n--- stdout ---\n{}\n--- stderr ---\n{}",
            truncate(&self.stdout),
            truncate(&self.stderr)
        );
        self
    }

    /// Asserts a clean refusal: exit 2, exactly one non-empty line on
    /// stderr, starting with `kernels:`, and no panic.
    pub fn expect_unusable(&self, what: &str) -> &Self {
        self.expect_code(2, what);
        assert!(
            !self.stderr.contains("panicked"),
            "{what}: panicked: {}",
            self.stderr
        );
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "{what}: want one line on stderr, got {:?}",
            self.stderr
        );
        assert!(
            lines[0].starts_with("kernels: ") && lines[0].len() > "kernels: ".len() + 5,
            "{what}: {:?}",
            lines[0]
        );
        self
    }

    /// Stdout parsed as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", truncate(&self.stdout)))
    }
}

fn truncate(s: &str) -> String {
    if s.len() > 4000 {
        let mut end = 4000;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} bytes)", &s[..end], s.len())
    } else {
        s.to_owned()
    }
}

/// Runs `kernels ARGS` in `cwd` (stdin from `stdin`, or empty), waiting at
/// most [`COMMAND_DEADLINE`].
pub fn run(cwd: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    run_with(command(cwd), args, stdin)
}

/// Runs a prepared command with `args` (see [`run`]).
pub fn run_with(mut cmd: Command, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let started = Instant::now();
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the kernels binary runs");
    let input = stdin.map(<[u8]>::to_vec).unwrap_or_default();
    let mut pipe_in = child.stdin.take().expect("piped stdin");
    let writer = std::thread::spawn(move || {
        // The command may exit without reading everything; that is its answer.
        let _ = pipe_in.write_all(&input);
    });
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let status = wait_deadline(&mut child, COMMAND_DEADLINE).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("kernels {args:?} did not finish within {COMMAND_DEADLINE:?}");
    });
    let _ = writer.join();
    Output {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout.join().expect("reader")).into_owned(),
        stderr: String::from_utf8_lossy(&stderr.join().expect("reader")).into_owned(),
        elapsed: started.elapsed(),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Waits for `child` to exit, polling, for at most `limit`.
pub fn wait_deadline(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `signal` (e.g. `TERM`, `KILL`) to `pid` with the `kill` command
/// (the crate forbids `unsafe`, so no `libc::kill`).
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("the kill command runs");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// A `kernels serve` child process.
pub struct Server {
    child: Child,
    /// The address it serves on.
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// A `kernels serve` that exited instead of serving.
#[derive(Debug)]
pub struct StartFailure {
    /// Its exit code.
    pub code: Option<i32>,
    /// Everything it wrote on stderr.
    pub stderr: String,
}

/// Where a test server keeps its data and policy.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Working directory of the process.
    pub cwd: PathBuf,
    /// `--data-dir` (as given: may be relative to `cwd`).
    pub data_dir: PathBuf,
    /// `--policy`.
    pub policy: PathBuf,
    /// `--kernel-id`.
    pub kernel_id: String,
}

impl ServeConfig {
    /// The arguments of `kernels serve`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "serve".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--policy".into(),
            self.policy.display().to_string(),
            "--kernel-id".into(),
            self.kernel_id.clone(),
            "--variant".into(),
            "strict".into(),
        ]
    }
}

/// How long a server may take to say where it serves, or to become ready.
pub const START_DEADLINE: Duration = Duration::from_secs(60);

impl Server {
    /// Starts `kernels serve` and waits until it serves and `/ready` is 200;
    /// if it exits instead, answers its exit code and stderr.
    pub fn try_start(config: &ServeConfig) -> Result<Server, StartFailure> {
        Self::try_start_env(config, &[])
    }

    /// [`Server::try_start`] with extra environment variables (rotation
    /// settings, S3 credentials, fault injection).
    pub fn try_start_env(
        config: &ServeConfig,
        env: &[(String, String)],
    ) -> Result<Server, StartFailure> {
        Self::try_start_on(config, "127.0.0.1:0", env)
    }

    /// [`Server::try_start_env`] listening on `listen` (a fixed port, for
    /// a restart on the same address).
    pub fn try_start_on(
        config: &ServeConfig,
        listen: &str,
        env: &[(String, String)],
    ) -> Result<Server, StartFailure> {
        let mut args = config.args();
        if let Some(slot) = args.iter().position(|a| a == "--listen") {
            args[slot + 1] = listen.to_owned();
        }
        let mut cmd = command(&config.cwd);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        cmd.args(args)
            .env("KERNELS_OPERATOR_TOKEN", OPERATOR)
            .env("KERNELS_AUDITOR_TOKEN", AUDITOR)
            .env("KERNELS_AGENT_TOKEN", AGENT)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kernels serve starts");
        let pipe = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let sink = stderr.clone();
        // Keeps draining stderr for the life of the process, so that it can
        // never block on a full pipe, and keeps everything for the asserts.
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                {
                    let mut all = sink.lock().unwrap();
                    all.push_str(&line);
                    all.push('\n');
                }
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + START_DEADLINE;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("kernels: serving on http://") {
                        break rest
                            .trim()
                            .parse::<SocketAddr>()
                            .unwrap_or_else(|e| panic!("unparseable serving line {line:?}: {e}"));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stderr closed: the process is exiting.
                    let status = wait_deadline(&mut child, START_DEADLINE)
                        .expect("a server that closed stderr exits");
                    let _ = reader.join();
                    let stderr = stderr.lock().unwrap().clone();
                    return Err(StartFailure {
                        code: status.code(),
                        stderr,
                    });
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "kernels serve did not print its address within {START_DEADLINE:?}: {}",
                        stderr.lock().unwrap()
                    );
                }
            }
        };
        let server = Server {
            child,
            addr,
            stderr,
            reader: Some(reader),
        };
        server.wait_ready();
        Ok(server)
    }

    /// Starts `kernels serve`; panics when it does not come up.
    pub fn start(config: &ServeConfig) -> Server {
        Self::start_env(config, &[])
    }

    /// [`Server::start`] with extra environment variables.
    pub fn start_env(config: &ServeConfig, env: &[(String, String)]) -> Server {
        Self::try_start_env(config, env).unwrap_or_else(|f| {
            panic!(
                "kernels serve exited with {:?} instead of serving:\n{}",
                f.code, f.stderr
            )
        })
    }

    /// Polls `GET /ready` (open, no token) until it answers 200.
    fn wait_ready(&self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if http_status(self.addr, "/ready") == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kernels serve on {} never became ready: {}",
                self.addr,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The base URL plus `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The value of the metric line `name N` in `GET /metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = super::http::client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in {text}"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGTERM, then waits for the exit; answers the exit code and stderr.
    pub fn terminate(mut self) -> (Option<i32>, String) {
        signal(self.child.id(), "TERM");
        let status = wait_deadline(&mut self.child, Duration::from_secs(30)).unwrap_or_else(|| {
            panic!(
                "kernels serve did not stop within 30 s of SIGTERM: {}",
                self.stderr()
            )
        });
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status.code(), self.stderr())
    }

    /// Waits at most `limit` for the process to exit by itself (e.g. a fault
    /// injection that aborts it); answers its exit status.
    pub fn wait_exit(mut self, limit: Duration) -> ExitStatus {
        let status = wait_deadline(&mut self.child, limit).unwrap_or_else(|| {
            panic!(
                "kernels serve did not exit within {limit:?}: {}",
                self.stderr()
            )
        });
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        status
    }

    /// SIGKILL, then reaps the process.
    pub fn kill(mut self) {
        signal(self.child.id(), "KILL");
        let status = wait_deadline(&mut self.child, Duration::from_secs(30))
            .expect("a SIGKILLed process exits");
        assert!(!status.success(), "SIGKILL must not look like a clean exit");
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `GET path` over a plain TCP connection; answers the HTTP status, if any.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = String::new();
    BufReader::new(stream).read_line(&mut head).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}
