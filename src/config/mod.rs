//! Configuration: the file, then `KERNELS_*` environment variables, then
//! command-line flags — validated into one typed [`Config`] in one place.
//!
//! The raw layer (`raw.rs`) mirrors `config/kernels.yaml` (every key is
//! described there and in README.md, "Configuration") with
//! `deny_unknown_fields`, so a misspelt key is an error that names it. The
//! typed layer here has every default filled, every duration parsed
//! (`duration.rs`), every token secret read, and the policy file loaded;
//! the `mcp:` section is checked in `mcp.rs`.

mod cluster;
mod duration;
mod error;
mod mcp;
mod raw;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use cluster::{ClusterConfig, MAX_INSTANCE, RawCluster};
pub use duration::{MAX_DURATION, parse_duration};
use duration::{count_setting, duration_setting};
pub use error::ConfigError;
use error::err;
pub use mcp::{McpConfig, McpServer};
pub use raw::{
    RawConfig, RawKernel, RawLimits, RawMcp, RawMcpServer, RawObjectLock, RawPermits, RawRotation,
    RawSigning, RawStorage, RawToken, read_raw,
};

use crate::kernel::permit::{Keyring, keyring_from_hex};
use crate::kernel::{Policy, Variant};

/// The policy used when no policy file exists: the playbook's example.
pub const EMBEDDED_POLICY: &str = "allowed_actors: [agent-001, agent-002]\nallowed_tools: [read_file, write_file, search]\nrequire_tool_call: true\nmax_intent_length: 1000\n";

/// Token roles, from least to most powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Submits requests.
    Agent,
    /// Reads and verifies.
    Auditor,
    /// Everything.
    Operator,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        match s {
            "agent" => Some(Role::Agent),
            "auditor" => Some(Role::Auditor),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Auditor => "auditor",
            Role::Operator => "operator",
        }
    }
}

/// A bearer token the service accepts.
#[derive(Clone)]
pub struct TokenSpec {
    /// The secret.
    pub secret: String,
    /// What it may do.
    pub role: Role,
    /// Actors it may submit as (agents); `None` = any.
    pub actors: Option<Vec<String>>,
    /// Principal name (never the secret).
    pub name: String,
}

impl std::fmt::Debug for TokenSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSpec")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("actors", &self.actors)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Object Lock settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectLock {
    /// `GOVERNANCE` or `COMPLIANCE`.
    pub mode: String,
    /// Retention in days.
    pub days: u32,
}

/// Rotation settings (present only when a bucket is set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationConfig {
    /// How often to rotate.
    pub interval: Duration,
    /// Bucket.
    pub bucket: String,
    /// Key prefix (no trailing slash).
    pub prefix: String,
    /// Region.
    pub region: String,
    /// Custom endpoint.
    pub endpoint: Option<String>,
    /// Path-style addressing.
    pub force_path_style: bool,
    /// Object Lock retention.
    pub object_lock: Option<ObjectLock>,
    /// Longest time one run's archive work may take before it counts as failed.
    pub attempt_timeout: Duration,
}

/// Checkpoint signing settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningConfig {
    /// The private key file; `None`: `<data_dir>/signing.key`, created at
    /// first start.
    pub key_file: Option<PathBuf>,
    /// The log's origin (the key's name).
    pub origin: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Kernel id.
    pub kernel_id: String,
    /// Variant.
    pub variant: Variant,
    /// Data dir.
    pub data_dir: PathBuf,
    /// Listen address.
    pub listen: SocketAddr,
    /// The policy file used, if any (else the embedded example policy).
    pub policy_file: Option<PathBuf>,
    /// The policy.
    pub policy: Policy,
    /// Accepted tokens.
    pub tokens: Vec<TokenSpec>,
    /// Rotation, when a bucket is set.
    pub rotation: Option<RotationConfig>,
    /// Rotation settings as given, even without a bucket (for archive commands).
    pub rotation_raw: RawRotation,
    /// Permit keyring.
    pub keyring: Keyring,
    /// Permit jurisdiction.
    pub jurisdiction: String,
    /// Tools authorised but not run by the kernel.
    pub external_tools: std::collections::BTreeSet<String>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Request timeout.
    pub request_timeout: Duration,
    /// Header-read (and keep-alive idle) timeout of a connection.
    pub header_timeout: Duration,
    /// Most connections served at once, as configured (`None`: as many as
    /// the open-file limit allows; see `service::conn`).
    pub max_connections: Option<usize>,
    /// sled cache in bytes.
    pub cache_bytes: u64,
    /// Entries between checkpoints.
    pub checkpoint_every: u64,
    /// Whether `serve` verifies every stored entry before it starts.
    pub verify_full_on_start: bool,
    /// Alerts, when a webhook is set.
    pub alerts: Option<crate::alerts::AlertsConfig>,
    /// Cluster membership, when a cluster id is set.
    pub cluster: Option<ClusterConfig>,
    /// The MCP servers fronted at `/mcp/{name}`.
    pub mcp: McpConfig,
    /// Checkpoint signing.
    pub signing: SigningConfig,
}

/// Values from the command line (they override everything).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<String>,
    /// `--policy`.
    pub policy: Option<PathBuf>,
    /// `--kernel-id`.
    pub kernel_id: Option<String>,
    /// `--variant`.
    pub variant: Option<String>,
}

impl Config {
    /// Loads the configuration from the process environment.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::load_with(overrides, &|k| std::env::var(k).ok())
    }

    /// Loads the configuration with `env` as the environment (tests).
    pub fn load_with(
        overrides: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let (raw, _path) = read_raw(overrides.config.as_deref(), env)?;
        Self::from_raw(raw, overrides, env)
    }

    /// Validates `raw` with env and flag overrides applied.
    pub fn from_raw(
        raw: RawConfig,
        overrides: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let kernel = raw.kernel.unwrap_or_default();
        let explicit_kernel_id = overrides
            .kernel_id
            .clone()
            .or_else(|| env("KERNELS_KERNEL_ID"))
            .or(kernel.id);
        let variant_name = overrides
            .variant
            .clone()
            .or_else(|| env("KERNELS_VARIANT"))
            .or_else(|| env("KERNELS_KERNEL_VARIANT"))
            .or(kernel.variant)
            .unwrap_or_else(|| "strict".into());
        let variant = Variant::parse(&variant_name).ok_or_else(|| {
            err(format!(
                "kernel.variant '{variant_name}' is not one of strict, permissive, evidence_first, dual_channel"
            ))
        })?;
        let data_dir = overrides
            .data_dir
            .clone()
            .or_else(|| env("KERNELS_DATA_DIR").map(PathBuf::from))
            .or(raw.data_dir)
            .unwrap_or_else(|| PathBuf::from("./data"));
        let listen_text = overrides
            .listen
            .clone()
            .or_else(|| env("KERNELS_LISTEN"))
            .or(raw.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            err(format!(
                "listen '{listen_text}' is not an address like 127.0.0.1:8080"
            ))
        })?;

        let policy_file = overrides
            .policy
            .clone()
            .or_else(|| env("KERNELS_POLICY").map(PathBuf::from))
            .or_else(|| env("KERNELS_POLICY_FILE").map(PathBuf::from))
            .or(raw.policy_file);
        let (policy_file, policy) = match policy_file {
            Some(p) => {
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| err(format!("policy_file {}: {e}", p.display())))?;
                let policy = Policy::from_yaml(&text)
                    .map_err(|e| err(format!("policy_file {}: {e}", p.display())))?;
                (Some(p), policy)
            }
            None => {
                let default = PathBuf::from("config/policy.yaml");
                if default.exists() {
                    let text = std::fs::read_to_string(&default)
                        .map_err(|e| err(format!("policy_file {}: {e}", default.display())))?;
                    let policy = Policy::from_yaml(&text)
                        .map_err(|e| err(format!("policy_file {}: {e}", default.display())))?;
                    (Some(default), policy)
                } else {
                    (
                        None,
                        Policy::from_yaml(EMBEDDED_POLICY).expect("the embedded policy is valid"),
                    )
                }
            }
        };

        let mut tokens = Vec::new();
        for (i, t) in raw.tokens.iter().enumerate() {
            let role = Role::parse(&t.role).ok_or_else(|| {
                err(format!(
                    "tokens[{i}].role '{}' is not agent, auditor or operator",
                    t.role
                ))
            })?;
            let secret = match (&t.token_env, &t.token_file) {
                (Some(var), None) => env(var).ok_or_else(|| {
                    err(format!("tokens[{i}].token_env: variable {var} is not set"))
                })?,
                (None, Some(file)) => std::fs::read_to_string(file)
                    .map_err(|e| err(format!("tokens[{i}].token_file {}: {e}", file.display())))?
                    .trim()
                    .to_owned(),
                _ => {
                    return Err(err(format!(
                        "tokens[{i}] needs exactly one of token_env or token_file"
                    )));
                }
            };
            if secret.len() < 8 {
                return Err(err(format!(
                    "tokens[{i}]: the secret must be at least 8 characters"
                )));
            }
            let actors = match (role, &t.actors) {
                (Role::Agent, None) => {
                    return Err(err(format!(
                        "tokens[{i}]: an agent token needs actors (use ['*'] for any actor)"
                    )));
                }
                (Role::Agent, Some(a)) if a.iter().any(|x| x == "*") => None,
                (Role::Agent, Some(a)) => Some(a.clone()),
                (_, Some(_)) => {
                    return Err(err(format!(
                        "tokens[{i}]: actors apply to agent tokens only"
                    )));
                }
                (_, None) => None,
            };
            let name = t
                .name
                .clone()
                .unwrap_or_else(|| format!("{}#{}", role.as_str(), i + 1));
            tokens.push(TokenSpec {
                secret,
                role,
                actors,
                name,
            });
        }
        for (var, role) in [
            ("KERNELS_OPERATOR_TOKEN", Role::Operator),
            ("KERNELS_AUDITOR_TOKEN", Role::Auditor),
            ("KERNELS_AGENT_TOKEN", Role::Agent),
        ] {
            if let Some(secret) = env(var).filter(|s| !s.is_empty()) {
                if secret.len() < 8 {
                    return Err(err(format!(
                        "{var}: the secret must be at least 8 characters"
                    )));
                }
                tokens.push(TokenSpec {
                    secret,
                    role,
                    actors: None,
                    name: format!("env:{var}"),
                });
            }
        }
        for (i, a) in tokens.iter().enumerate() {
            if tokens[..i].iter().any(|b| b.secret == a.secret) {
                return Err(err(format!(
                    "token '{}' reuses the secret of another token",
                    a.name
                )));
            }
        }

        let mut rotation_raw = raw.rotation.unwrap_or_default();
        for (var, slot) in [
            ("KERNELS_ROTATION_BUCKET", &mut rotation_raw.bucket),
            ("KERNELS_ROTATION_PREFIX", &mut rotation_raw.prefix),
            ("KERNELS_ROTATION_REGION", &mut rotation_raw.region),
            ("KERNELS_ROTATION_ENDPOINT", &mut rotation_raw.endpoint),
        ] {
            if let Some(v) = env(var) {
                *slot = Some(v);
            }
        }
        if let Some(v) = env("KERNELS_ROTATION_FORCE_PATH_STYLE") {
            rotation_raw.force_path_style = Some(matches!(v.as_str(), "1" | "true" | "yes"));
        }
        let interval = duration_setting(
            "rotation.interval",
            "KERNELS_ROTATION_INTERVAL",
            rotation_raw.interval.as_deref(),
            "7d",
            env,
        )?;
        if env("KERNELS_ROTATION_INTERVAL").is_some() {
            rotation_raw.interval = env("KERNELS_ROTATION_INTERVAL");
        }
        let attempt_timeout = duration_setting(
            "rotation.attempt_timeout",
            "KERNELS_ROTATION_ATTEMPT_TIMEOUT",
            rotation_raw.attempt_timeout.as_deref(),
            "10m",
            env,
        )?;
        if env("KERNELS_ROTATION_ATTEMPT_TIMEOUT").is_some() {
            rotation_raw.attempt_timeout = env("KERNELS_ROTATION_ATTEMPT_TIMEOUT");
        }
        let object_lock = match &rotation_raw.object_lock {
            Some(l) => {
                let mode = l.mode.to_ascii_uppercase();
                if mode != "GOVERNANCE" && mode != "COMPLIANCE" {
                    return Err(err(format!(
                        "rotation.object_lock.mode '{}' is not GOVERNANCE or COMPLIANCE",
                        l.mode
                    )));
                }
                if l.days == 0 {
                    return Err(err("rotation.object_lock.days must be at least 1"));
                }
                Some(ObjectLock { mode, days: l.days })
            }
            None => None,
        };
        let prefix = rotation_raw
            .prefix
            .clone()
            .unwrap_or_else(|| "kernels-archive".into())
            .trim_matches('/')
            .to_owned();
        let cluster = cluster::from_raw(raw.cluster, &rotation_raw, &prefix, env)?;
        let kernel_id = cluster::kernel_id(explicit_kernel_id, cluster.as_ref())?;
        if kernel_id.trim().is_empty() || kernel_id.contains('/') || kernel_id.len() > 128 {
            return Err(err(format!(
                "kernel.id '{kernel_id}' must be 1-128 characters without '/'"
            )));
        }
        let rotation = rotation_raw
            .bucket
            .clone()
            .filter(|b| !b.is_empty())
            .map(|bucket| RotationConfig {
                interval,
                bucket,
                prefix: prefix.clone(),
                region: rotation_raw
                    .region
                    .clone()
                    .unwrap_or_else(|| "us-east-1".into()),
                endpoint: rotation_raw.endpoint.clone().filter(|e| !e.is_empty()),
                force_path_style: rotation_raw.force_path_style.unwrap_or(false),
                object_lock: object_lock.clone(),
                attempt_timeout,
            });

        let permits = raw.permits.unwrap_or_default();
        let mut hex_keys = BTreeMap::new();
        for (id, var) in &permits.keys_env {
            let v = env(var)
                .ok_or_else(|| err(format!("permits.keys_env.{id}: variable {var} is not set")))?;
            hex_keys.insert(id.clone(), v);
        }
        for (id, file) in &permits.keys_file {
            let v = std::fs::read_to_string(file)
                .map_err(|e| err(format!("permits.keys_file.{id} {}: {e}", file.display())))?;
            hex_keys.insert(id.clone(), v.trim().to_owned());
        }
        let keyring = keyring_from_hex(&hex_keys).map_err(|e| err(format!("permits: {e}")))?;

        let limits = raw.limits.unwrap_or_default();
        let max_body_bytes = env("KERNELS_MAX_BODY_BYTES")
            .map(|v| {
                v.parse()
                    .map_err(|_| err(format!("KERNELS_MAX_BODY_BYTES '{v}' is not a number")))
            })
            .transpose()?
            .or(limits.max_body_bytes)
            .unwrap_or(1024 * 1024);
        if max_body_bytes < 1024 {
            return Err(err("limits.max_body_bytes must be at least 1024"));
        }
        let request_timeout = duration_setting(
            "limits.request_timeout",
            "KERNELS_REQUEST_TIMEOUT",
            limits.request_timeout.as_deref(),
            "10s",
            env,
        )?;
        let header_timeout = duration_setting(
            "limits.header_timeout",
            "KERNELS_HEADER_TIMEOUT",
            limits.header_timeout.as_deref(),
            "10s",
            env,
        )?;
        let max_connections = count_setting(
            "limits.max_connections",
            "KERNELS_MAX_CONNECTIONS",
            limits.max_connections,
            env,
        )?;
        if max_connections == Some(0) {
            return Err(err("limits.max_connections must be at least 1"));
        }
        let storage = raw.storage.unwrap_or_default();
        let verify_full_on_start = match storage.verify_on_start.as_deref() {
            None | Some("full") => true,
            Some("checkpoint") => false,
            Some(other) => {
                return Err(err(format!(
                    "storage.verify_on_start '{other}' is not full or checkpoint"
                )));
            }
        };

        let alerts =
            crate::alerts::AlertsConfig::from_raw(raw.alerts, env, parse_duration).map_err(err)?;
        let mcp = McpConfig::from_raw(raw.mcp.unwrap_or_default(), env)?;

        let signing = raw.signing.unwrap_or_default();
        let origin = env("KERNELS_SIGNING_ORIGIN")
            .or(signing.origin)
            .unwrap_or_else(|| format!("kernels/{kernel_id}"));
        if !crate::note::keys::is_valid_name(&origin) || origin == "cosignature/v1" {
            return Err(err(format!(
                "signing.origin {origin:?} cannot name a key (no spaces, '+' or control characters)"
            )));
        }
        let signing = SigningConfig {
            key_file: env("KERNELS_SIGNING_KEY_FILE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or(signing.key_file),
            origin,
        };

        Ok(Config {
            kernel_id,
            variant,
            data_dir,
            listen,
            policy_file,
            policy,
            tokens,
            rotation,
            rotation_raw: RawRotation {
                prefix: Some(prefix),
                ..rotation_raw
            },
            keyring,
            jurisdiction: permits.jurisdiction.unwrap_or_else(|| "default".into()),
            external_tools: raw.external_tools.into_iter().collect(),
            max_body_bytes,
            request_timeout,
            header_timeout,
            max_connections,
            cache_bytes: storage.cache_mb.unwrap_or(1) * 1024 * 1024,
            checkpoint_every: storage.checkpoint_every.unwrap_or(10_000).max(1),
            verify_full_on_start,
            alerts,
            cluster,
            mcp,
            signing,
        })
    }
}

#[cfg(test)]
mod tests;
