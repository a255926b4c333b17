//! Configuration: the file, then `KERNELS_*` environment variables, then
//! command-line flags — validated into one typed [`Config`] in one place.
//!
//! The raw layer mirrors `config/kernels.yaml` (CONTRACT §7) with
//! `deny_unknown_fields`, so a misspelt key is an error that names it. The
//! typed layer has every default filled, every duration parsed, every token
//! secret read, and the policy file loaded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::kernel::permit::{Keyring, keyring_from_hex};
use crate::kernel::{Policy, Variant};

/// The policy used when no policy file exists: the playbook's example.
pub const EMBEDDED_POLICY: &str = "allowed_actors: [agent-001, agent-002]\nallowed_tools: [read_file, write_file, search]\nrequire_tool_call: true\nmax_intent_length: 1000\n";

/// A configuration problem, with the key or file it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

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
    /// `mcp:` (ours): MCP servers fronted at `/mcp/{name}`.
    pub mcp: Option<crate::mcp::config::RawMcp>,
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
    /// sled cache in bytes.
    pub cache_bytes: u64,
    /// Entries between checkpoints.
    pub checkpoint_every: u64,
    /// Whether `serve` verifies every stored entry before it starts.
    pub verify_full_on_start: bool,
    /// The MCP servers fronted at `/mcp/{name}`.
    pub mcp: crate::mcp::config::McpConfig,
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

/// Parses a duration like `7d`, `12h`, `30m`, `10s`, `250ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (use s, m, h or d units, e.g. 7d)"))?;
    let secs = match unit.trim() {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        other => {
            return Err(format!(
                "'{text}': unknown unit '{other}' (use s, m, h or d)"
            ));
        }
    };
    if n == 0 {
        return Err(format!("'{text}': a duration must be positive"));
    }
    Ok(Duration::from_secs(secs))
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
        let kernel_id = overrides
            .kernel_id
            .clone()
            .or_else(|| env("KERNELS_KERNEL_ID"))
            .or(kernel.id)
            .unwrap_or_else(|| "kernel-001".into());
        if kernel_id.trim().is_empty() || kernel_id.contains('/') || kernel_id.len() > 128 {
            return Err(err(format!(
                "kernel.id '{kernel_id}' must be 1-128 characters without '/'"
            )));
        }
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
            ("KERNELS_ROTATION_INTERVAL", &mut rotation_raw.interval),
        ] {
            if let Some(v) = env(var) {
                *slot = Some(v);
            }
        }
        if let Some(v) = env("KERNELS_ROTATION_FORCE_PATH_STYLE") {
            rotation_raw.force_path_style = Some(matches!(v.as_str(), "1" | "true" | "yes"));
        }
        let interval = parse_duration(rotation_raw.interval.as_deref().unwrap_or("7d"))
            .map_err(|e| err(format!("rotation.interval: {e}")))?;
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
        let request_timeout = parse_duration(limits.request_timeout.as_deref().unwrap_or("10s"))
            .map_err(|e| err(format!("limits.request_timeout: {e}")))?;
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
            cache_bytes: storage.cache_mb.unwrap_or(1) * 1024 * 1024,
            checkpoint_every: storage.checkpoint_every.unwrap_or(10_000).max(1),
            verify_full_on_start,
            mcp: crate::mcp::config::McpConfig::from_raw(raw.mcp.unwrap_or_default())
                .map_err(err)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_contract_example_loads() {
        let text = "kernel:\n  id: prod-001\n  variant: strict\ndata_dir: ./data\nlisten: 127.0.0.1:8080\npolicy_file: config/policy.yaml\ntokens: []\nrotation:\n  interval: 7d\n  bucket: my-archive-bucket\n  prefix: kernels-archive\n  region: us-east-1\n  endpoint: http://127.0.0.1:9000\n  force_path_style: true\n";
        let raw: RawConfig = serde_norway::from_str(text).unwrap();
        let cfg = Config::from_raw(raw, &Overrides::default(), &env_of(&[])).unwrap();
        assert_eq!(cfg.kernel_id, "prod-001");
        let rot = cfg.rotation.unwrap();
        assert_eq!(rot.interval, Duration::from_secs(7 * 86_400));
        assert_eq!(rot.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(rot.force_path_style);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = serde_norway::from_str::<RawConfig>("kernel:\n  id: a\n  variantt: strict\n")
            .unwrap_err();
        assert!(e.to_string().contains("variantt"), "{e}");
        let e = serde_norway::from_str::<RawConfig>("rotation:\n  buckett: x\n").unwrap_err();
        assert!(e.to_string().contains("buckett"), "{e}");
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let raw: RawConfig =
            serde_norway::from_str("kernel:\n  id: file-id\ndata_dir: /file\n").unwrap();
        let env = env_of(&[
            ("KERNELS_KERNEL_ID", "env-id"),
            ("KERNELS_DATA_DIR", "/env"),
            ("KERNELS_ROTATION_BUCKET", "b"),
        ]);
        let flags = Overrides {
            data_dir: Some("/flag".into()),
            ..Overrides::default()
        };
        let cfg = Config::from_raw(raw, &flags, &env).unwrap();
        assert_eq!(cfg.kernel_id, "env-id");
        assert_eq!(cfg.data_dir, PathBuf::from("/flag"));
        assert_eq!(cfg.rotation.unwrap().bucket, "b");
    }

    #[test]
    fn tokens_are_read_and_checked() {
        let raw: RawConfig = serde_norway::from_str(
            "tokens:\n  - {token_env: A_TOK, role: agent, actors: [agent-001]}\n  - {token_env: O_TOK, role: operator, name: alice}\n",
        )
        .unwrap();
        let cfg = Config::from_raw(
            raw,
            &Overrides::default(),
            &env_of(&[("A_TOK", "agent-secret-1"), ("O_TOK", "operator-secret")]),
        )
        .unwrap();
        assert_eq!(cfg.tokens.len(), 2);
        assert_eq!(
            cfg.tokens[0].actors.as_deref(),
            Some(&["agent-001".to_owned()][..])
        );
        assert_eq!(cfg.tokens[1].name, "alice");
        assert!(!format!("{:?}", cfg.tokens).contains("operator-secret"));

        let raw: RawConfig =
            serde_norway::from_str("tokens:\n  - {token_env: A_TOK, role: agent}\n").unwrap();
        let e = Config::from_raw(
            raw,
            &Overrides::default(),
            &env_of(&[("A_TOK", "agent-secret-1")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("needs actors"), "{e}");
        let raw: RawConfig =
            serde_norway::from_str("tokens:\n  - {token_env: MISSING, role: auditor}\n").unwrap();
        assert!(Config::from_raw(raw, &Overrides::default(), &env_of(&[])).is_err());
    }

    #[test]
    fn durations_and_bad_values() {
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse_duration("15s").unwrap(), Duration::from_secs(15));
        assert!(parse_duration("7w").is_err());
        assert!(parse_duration("0s").is_err());
        let raw: RawConfig = serde_norway::from_str("kernel:\n  variant: lenient\n").unwrap();
        assert!(Config::from_raw(raw, &Overrides::default(), &env_of(&[])).is_err());
        let raw: RawConfig = serde_norway::from_str("listen: nowhere\n").unwrap();
        assert!(Config::from_raw(raw, &Overrides::default(), &env_of(&[])).is_err());
    }
}
