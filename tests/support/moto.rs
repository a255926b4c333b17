//! moto's S3 server (the Python `moto_server` of the test venv) as a child
//! process on 127.0.0.1, for what s3s-fs does not implement: Object Lock
//! (buckets created with it, retention on objects, `GetObjectRetention`).
//!
//! The server binds port 0 and prints the port it got (`Running on
//! http://127.0.0.1:PORT`), so no fixed port and no race for a free one. The
//! process is killed when the [`Moto`] handle is dropped, also when a test
//! fails.
//!
//! The venv is `KERNELS_TEST_VENV`, else `<repo>/.venv-test`; it is made by
//! `scripts/test-env.sh` from `tests/requirements.txt`. Without it the test
//! fails and says so: it never skips.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use kernels::config::ObjectLock;
use kernels::rotator::objects::{Objects, S3Settings};

/// moto accepts any credentials; these are what the tests send.
pub const ACCESS_KEY: &str = "moto-test-access";
/// Secret of [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "moto-test-secret";

/// How long moto may take to start.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// The test venv (see the module doc); panics with what to do when it is
/// missing.
pub fn venv() -> PathBuf {
    let venv = std::env::var_os("KERNELS_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-test"));
    assert!(
        venv.join("bin/moto_server").is_file(),
        "moto_server is not in the test venv {}: run scripts/test-env.sh (it makes .venv-test from tests/requirements.txt), or set KERNELS_TEST_VENV to a venv that has moto[s3]",
        venv.display()
    );
    venv
}

/// A running moto S3 server.
pub struct Moto {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Moto {
    /// Starts `moto_server` on 127.0.0.1 with a port of its own choosing.
    pub fn start() -> Moto {
        let venv = venv();
        let mut child = Command::new(venv.join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", "0"])
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run moto_server from {}: {e}", venv.display()));
        let pipe = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        // Drains stderr for the life of the process (moto logs every request).
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("Running on http://").nth(1)
                    && let Ok(addr) = rest.trim().parse::<SocketAddr>()
                {
                    let _ = tx.send(addr);
                }
                let mut all = sink.lock().unwrap();
                if all.len() < 64 * 1024 {
                    all.push_str(&line);
                    all.push('\n');
                }
            }
        });
        let addr = match rx.recv_timeout(START_DEADLINE) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "moto_server did not say where it listens within {START_DEADLINE:?}: {}",
                    log.lock().unwrap()
                );
            }
        };
        let deadline = Instant::now() + START_DEADLINE;
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server on {addr} does not accept connections"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Moto { child, addr, log }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What moto logged so far (for failure messages).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// S3 settings for `bucket` on this server.
    pub fn settings(&self, bucket: &str, object_lock: Option<ObjectLock>) -> S3Settings {
        S3Settings {
            bucket: bucket.into(),
            region: "us-east-1".into(),
            endpoint: Some(self.endpoint()),
            force_path_style: true,
            credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
            object_lock,
        }
    }

    /// The rotator's object store for `bucket`.
    pub async fn objects(&self, bucket: &str, object_lock: Option<ObjectLock>) -> Objects {
        Objects::s3(&self.settings(bucket, object_lock)).await
    }

    /// A plain SDK client (for what the tests check behind the rotator's back).
    pub async fn client(&self) -> Client {
        match self.objects("unused", None).await {
            Objects::S3 { client, .. } => client,
            Objects::Dir(_) => unreachable!("Objects::s3 answers S3"),
        }
    }

    /// Creates `bucket`, with Object Lock enabled or not.
    pub async fn create_bucket(&self, bucket: &str, object_lock: bool) {
        self.client()
            .await
            .create_bucket()
            .bucket(bucket)
            .object_lock_enabled_for_bucket(object_lock)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create bucket {bucket}: {e:?}"));
    }

    /// Environment for a `kernels` child process that archives to `bucket`
    /// on this server.
    pub fn env(&self, bucket: &str) -> Vec<(String, String)> {
        super::s3::aws_env(ACCESS_KEY, SECRET_KEY, &self.endpoint(), bucket)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
