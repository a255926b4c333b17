//! The configuration file as written: `config/kernels.yaml`, key for key,
//! with unknown keys refused (naming them), and where it is read from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::{ConfigError, err};

/// `config/kernels.yaml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `kernel:` section.
    pub kernel: Option<RawKernel>,
    /// `data_dir:`.
    pub data_dir: Option<PathBuf>,
    /// `listen:`.
    pub listen: Option<String>,
    /// `policy_file:`.
    pub policy_file: Option<PathBuf>,
    /// `tokens:`.
    #[serde(default)]
    pub tokens: Vec<RawToken>,
    /// `rotation:`.
    pub rotation: Option<RawRotation>,
    /// `permits:` (ours): the permit keyring.
    pub permits: Option<RawPermits>,
    /// `limits:` (ours): HTTP limits.
    pub limits: Option<RawLimits>,
    /// `storage:` (ours): engine tuning.
    pub storage: Option<RawStorage>,
    /// `external_tools:` (ours): tools the kernel authorises but does not
    /// run — the agent runs them after an ALLOW.
    #[serde(default)]
    pub external_tools: Vec<String>,
    /// `alerts:` (ours): the webhook that hears about halts, failures, …
    pub alerts: Option<crate::alerts::RawAlerts>,
    /// `cluster:`: membership of a cluster of kernels (`cluster.rs`).
    pub cluster: Option<super::cluster::RawCluster>,
    /// `mcp:` (ours): MCP servers fronted at `/mcp/{name}`.
    pub mcp: Option<RawMcp>,
    /// `signing:`: the key that signs checkpoints, and the log's origin.
    pub signing: Option<RawSigning>,
}

/// `signing:` section.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSigning {
    /// The private key file (`kernels keygen`); default: `<data_dir>/signing.key`,
    /// created at first start.
    pub key_file: Option<PathBuf>,
    /// The log's origin, which names the key (default `kernels/<kernel id>`).
    pub origin: Option<String>,
}

/// `kernel:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKernel {
    /// Kernel id.
    pub id: Option<String>,
    /// Variant name.
    pub variant: Option<String>,
}

/// One entry of `tokens:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    /// Read the secret from this environment variable.
    pub token_env: Option<String>,
    /// Read the secret from this file.
    pub token_file: Option<PathBuf>,
    /// `agent`, `auditor` or `operator`.
    pub role: String,
    /// Actors an agent token may submit as (`"*"` = any).
    pub actors: Option<Vec<String>>,
    /// A name for the principal (shown in logs and records; never the secret).
    pub name: Option<String>,
}

/// `rotation:` section.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRotation {
    /// Interval between rotations (`7d`, `12h`, `30m`, `10s`).
    pub interval: Option<String>,
    /// Bucket; rotation is off without one.
    pub bucket: Option<String>,
    /// Key prefix.
    pub prefix: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Endpoint of an S3-compatible store.
    pub endpoint: Option<String>,
    /// Path-style addressing.
    pub force_path_style: Option<bool>,
    /// Object Lock retention for uploaded objects.
    pub object_lock: Option<RawObjectLock>,
    /// Longest time one run's archive work may take (default `10m`).
    pub attempt_timeout: Option<String>,
}

/// `rotation.object_lock:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawObjectLock {
    /// `GOVERNANCE` or `COMPLIANCE`.
    pub mode: String,
    /// Retention in days.
    pub days: u32,
}

/// `permits:` section.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPermits {
    /// Key id → environment variable holding the hex secret.
    #[serde(default)]
    pub keys_env: BTreeMap<String, String>,
    /// Key id → file holding the hex secret.
    #[serde(default)]
    pub keys_file: BTreeMap<String, PathBuf>,
    /// Jurisdiction permits must name (default `default`).
    pub jurisdiction: Option<String>,
}

/// `limits:` section.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest request body in bytes (default 1 MiB).
    pub max_body_bytes: Option<usize>,
    /// Request timeout (default `10s`).
    pub request_timeout: Option<String>,
    /// How long a connection may take to send a request's headers, and how
    /// long it may stay idle between requests (default `10s`).
    pub header_timeout: Option<String>,
    /// Most connections served at once (default: the open-file limit less
    /// what the service needs for itself).
    pub max_connections: Option<usize>,
}

/// `storage:` section.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// sled page cache in MiB (default 1: sled holds several times this).
    pub cache_mb: Option<u64>,
    /// Entries between state checkpoints (default 10000).
    pub checkpoint_every: Option<u64>,
    /// How much of the stored chain `serve` verifies before it starts:
    /// `full` (default) or `checkpoint` (from the last state checkpoint).
    pub verify_on_start: Option<String>,
}

/// `mcp:` section.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcp {
    /// The fronted servers.
    #[serde(default)]
    pub servers: Vec<RawMcpServer>,
    /// Time limit for an upstream to start answering (default `5m`).
    pub timeout: Option<String>,
    /// `Origin` values accepted (requests with any other `Origin` are 403).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

/// One entry of `mcp.servers`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcpServer {
    /// The name in `/mcp/{name}`.
    pub name: String,
    /// The upstream's Streamable HTTP endpoint.
    pub url: String,
    /// Prefix of the kernel's tool names for this server (default none).
    #[serde(default)]
    pub tool_prefix: String,
}

/// Reads the raw config file, if any: `--config`, else `KERNELS_CONFIG`,
/// else `config/kernels.yaml` when it exists.
pub fn read_raw(
    explicit: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(RawConfig, Option<PathBuf>), ConfigError> {
    let path = match explicit {
        Some(p) => Some(p.to_owned()),
        None => match env("KERNELS_CONFIG") {
            Some(p) => Some(PathBuf::from(p)),
            None => {
                let default = PathBuf::from("config/kernels.yaml");
                default.exists().then_some(default)
            }
        },
    };
    let Some(path) = path else {
        return Ok((RawConfig::default(), None));
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    let raw: RawConfig = if text.trim().is_empty() {
        RawConfig::default()
    } else {
        serde_norway::from_str(&text).map_err(|e| err(format!("{}: {e}", path.display())))?
    };
    Ok((raw, Some(path)))
}
