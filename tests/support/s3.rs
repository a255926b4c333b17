//! A real S3-compatible server (s3s-fs, in-process) on 127.0.0.1, over a
//! temp directory; it can be stopped and restarted on the same port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use kernels::rotator::objects::{Objects, S3Settings};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

pub const ACCESS_KEY: &str = "kernels-test-access";
pub const SECRET_KEY: &str = "kernels-test-secret-key";
pub const BUCKET: &str = "archive";

pub struct S3Server {
    pub addr: SocketAddr,
    root: PathBuf,
    _dir: Option<tempfile::TempDir>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

async fn run(
    listener: tokio::net::TcpListener,
    root: PathBuf,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let fs = s3s_fs::FileSystem::new(&root).expect("s3s-fs root");
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let http = ConnBuilder::new(TokioExecutor::new());
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((socket, _)) = accepted else { continue };
                let conn = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
                let mut stop_conn = stop.clone();
                conns.spawn(async move {
                    tokio::select! {
                        _ = conn => {},
                        _ = stop_conn.changed() => {},
                    }
                });
            }
            _ = stop.changed() => break,
        }
    }
    conns.abort_all();
}

impl S3Server {
    /// Starts a server with an empty bucket.
    pub async fn start() -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(BUCKET)).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let root = dir.path().to_owned();
        let mut server = S3Server {
            addr,
            root,
            _dir: Some(dir),
            stop: None,
            task: None,
        };
        server.spawn(listener);
        server
    }

    fn spawn(&mut self, listener: tokio::net::TcpListener) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        self.stop = Some(tx);
        self.task = Some(tokio::spawn(run(listener, self.root.clone(), rx)));
    }

    /// Stops serving (connections are dropped; the data stays).
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Serves again on the same address.
    pub async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.spawn(listener);
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where the object `key` of the bucket is stored on disk.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.join(BUCKET).join(key)
    }

    pub fn bucket_dir(&self) -> PathBuf {
        self.root.join(BUCKET)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn settings(&self) -> S3Settings {
        S3Settings {
            bucket: BUCKET.into(),
            region: "us-east-1".into(),
            endpoint: Some(self.endpoint()),
            force_path_style: true,
            credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
            object_lock: None,
        }
    }

    pub async fn objects(&self) -> Objects {
        Objects::s3(&self.settings()).await
    }

    /// Environment for a `kernels` child process that uses this server
    /// (credentials, endpoint, bucket), with no way to reach a real AWS
    /// account or a metadata endpoint.
    pub fn env(&self) -> Vec<(String, String)> {
        aws_env(ACCESS_KEY, SECRET_KEY, &self.endpoint(), BUCKET)
    }
}

/// The AWS and rotation variables of a child process using the S3-compatible
/// server at `endpoint`.
pub fn aws_env(access: &str, secret: &str, endpoint: &str, bucket: &str) -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", access),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        ("KERNELS_ROTATION_BUCKET", bucket),
        ("KERNELS_ROTATION_ENDPOINT", endpoint),
        ("KERNELS_ROTATION_FORCE_PATH_STYLE", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}
