//! A cluster of real `kernels serve` processes on 127.0.0.1 that share a
//! control plane in moto's S3 server: the fixture of `tests/cluster.rs`
//! and `tests/cluster_witness.rs`.
//!
//! Every member gets its own data dir under one temp dir, the cluster
//! settings through `KERNELS_CLUSTER_*` (a short poll interval), and the
//! agent tokens of [`AGENT_TOKENS`] from a config file besides the
//! quick-start tokens of the three roles. The operator's commands
//! (`kernels cluster …`) run with the same settings and no instance number.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::moto::{self, Moto};
use super::process::{self, Output, ServeConfig, Server};
use super::{AUDITOR, OPERATOR};

/// The cluster id.
pub const CLUSTER: &str = "prod";
/// The control plane's bucket.
pub const BUCKET: &str = "control-plane";
/// The key prefix.
pub const PREFIX: &str = "kernels";
/// The members' poll interval.
pub const POLL: Duration = Duration::from_millis(300);
/// Agent tokens besides the quick-start one (each may act as any actor),
/// so that the load balancer has several tokens to spread.
pub const AGENT_TOKENS: [&str; 8] = [
    "agent-token-alpha",
    "agent-token-bravo",
    "agent-token-charlie",
    "agent-token-delta",
    "agent-token-echo",
    "agent-token-foxtrot",
    "agent-token-golf",
    "agent-token-hotel",
];

/// The policy every member starts with (its own file).
pub const START_POLICY: &str = "allowed_actors: [agent-001, agent-002]\nallowed_tools: [echo, add, search]\nmax_intent_length: 1000\n";

/// moto, a bucket, and a temp dir for the members.
pub struct Fleet {
    moto: Option<Moto>,
    endpoint: String,
    pub dir: tempfile::TempDir,
}

impl Fleet {
    /// Starts moto and creates the bucket.
    pub async fn start() -> Fleet {
        let moto = Moto::start();
        moto.create_bucket(BUCKET, false).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.yaml"), START_POLICY).unwrap();
        let mut tokens = String::from("tokens:\n");
        for (i, _) in AGENT_TOKENS.iter().enumerate() {
            tokens.push_str(&format!(
                "  - {{token_env: TEST_AGENT_TOKEN_{i}, role: agent, actors: ['*']}}\n"
            ));
        }
        std::fs::write(dir.path().join("kernels.yaml"), tokens).unwrap();
        Fleet {
            endpoint: moto.endpoint(),
            moto: Some(moto),
            dir,
        }
    }

    /// Stops the S3 server: the control plane is down from now on (its
    /// address stays in the members' settings).
    pub fn stop_s3(&mut self) {
        self.moto = None;
    }

    /// The temp dir.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The environment of a `kernels` process of this cluster (S3
    /// credentials and the `cluster:` settings; no instance number).
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("AWS_ACCESS_KEY_ID".into(), moto::ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), moto::SECRET_KEY.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ("AWS_CONFIG_FILE".into(), "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE".into(), "/dev/null".into()),
            ("KERNELS_CLUSTER_ID".into(), CLUSTER.into()),
            ("KERNELS_CLUSTER_BUCKET".into(), BUCKET.into()),
            ("KERNELS_CLUSTER_PREFIX".into(), PREFIX.into()),
            ("KERNELS_CLUSTER_ENDPOINT".into(), self.endpoint.clone()),
            ("KERNELS_CLUSTER_FORCE_PATH_STYLE".into(), "true".into()),
            (
                "KERNELS_CLUSTER_POLL_INTERVAL".into(),
                format!("{}ms", POLL.as_millis()),
            ),
            (
                "KERNELS_CONFIG".into(),
                self.path().join("kernels.yaml").display().to_string(),
            ),
        ];
        for (i, t) in AGENT_TOKENS.iter().enumerate() {
            env.push((format!("TEST_AGENT_TOKEN_{i}"), (*t).into()));
        }
        env
    }

    /// The kernel id of instance `n`.
    pub fn kernel_id(n: u32) -> String {
        format!("{CLUSTER}-{n:03}")
    }

    /// `kernels serve` settings of instance `n` (data dir `prod-00N/`).
    pub fn serve_config(&self, n: u32) -> ServeConfig {
        ServeConfig {
            cwd: self.path().to_owned(),
            data_dir: PathBuf::from(Self::kernel_id(n)),
            policy: "policy.yaml".into(),
            kernel_id: Self::kernel_id(n),
        }
    }

    /// Starts instance `n` on `listen` (`127.0.0.1:0` for any port) with
    /// `extra` environment; answers how the start went.
    pub fn try_member(
        &self,
        n: u32,
        listen: &str,
        extra: &[(&str, &str)],
    ) -> Result<Server, process::StartFailure> {
        let mut env = self.env();
        env.push(("KERNELS_CLUSTER_INSTANCE".into(), n.to_string()));
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Server::try_start_on(&self.serve_config(n), listen, &env)
    }

    /// Starts instance `n` (see [`Fleet::try_member`]); panics when it does not serve.
    pub fn member(&self, n: u32, listen: &str, extra: &[(&str, &str)]) -> Server {
        self.try_member(n, listen, extra).unwrap_or_else(|f| {
            panic!(
                "{} exited with {:?} instead of serving:\n{}",
                Self::kernel_id(n),
                f.code,
                f.stderr
            )
        })
    }

    /// Runs `kernels ARGS` as the operator (this cluster's settings,
    /// `KERNELS_TOKEN` = `token`).
    pub fn cli(&self, args: &[&str], token: Option<&str>) -> Output {
        let mut cmd = process::command(self.path());
        cmd.envs(self.env());
        if let Some(t) = token {
            cmd.env("KERNELS_TOKEN", t);
        }
        process::run_with(cmd, args, None)
    }

    /// `kernels cluster status --json` with the auditor's token: the report
    /// and the exit code.
    pub fn status(&self) -> (Option<i32>, Value) {
        let out = self.cli(&["cluster", "status", "--json"], Some(AUDITOR));
        let code = out.code;
        assert!(matches!(code, Some(0) | Some(1)), "cluster status: {out:?}");
        (code, out.json())
    }

    /// A plain S3 client of the control plane (to act behind the CLI's back).
    pub async fn s3(&self) -> aws_sdk_s3::Client {
        self.moto.as_ref().expect("S3 is up").client().await
    }

    /// The control plane's key of `name` (`policy.yaml`, `halt.json`, `members/…`).
    pub fn key(name: &str) -> String {
        format!("{PREFIX}/clusters/{CLUSTER}/{name}")
    }
}

/// Every entry (with payloads) of the member at `base`.
pub async fn entries(client: &reqwest::Client, base: &str) -> Vec<Value> {
    let (code, bundle) = super::http::get(client, &format!("{base}/v1/evidence"), AUDITOR).await;
    assert_eq!(code, 200, "{base}/v1/evidence: {bundle}");
    bundle["ledger_entries"].as_array().unwrap().clone()
}

/// `GET /v1/status` of the member at `base`.
pub async fn status(client: &reqwest::Client, base: &str) -> Value {
    let (code, s) = super::http::get(client, &format!("{base}/v1/status"), OPERATOR).await;
    assert_eq!(code, 200, "{base}/v1/status: {s}");
    s
}

/// Polls `check` every 20 ms until it answers `Some`, for at most `limit`;
/// answers the value and how long it took.
pub async fn within<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return (v, started.elapsed());
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
