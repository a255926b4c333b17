//! `kernels permit issue`: sign a permit token without the Python library.
//!
//! The token is built exactly as the Python KERNELS library's `PermitBuilder`
//! builds it (same fields, same canonical bytes, same `permit_id` and HMAC),
//! so a permit made here is accepted wherever a library-made one is. The key
//! is never a flag value: it comes from the configured keyring
//! (`permits.keys_env` / `permits.keys_file` of the configuration file), and
//! only the key named by `--key-id` is read. The signed token is printed as
//! one line of JSON, in the library's field order.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use super::{CliError, CliResult, EXIT_OK, parse_json, read_input};
use crate::config::{RawPermits, parse_duration, read_raw};
use crate::kernel::permit::{PermitToken, keyring_from_hex};

/// `kernels permit …`.
#[derive(Debug, Subcommand)]
pub enum PermitCommand {
    /// Sign a permit token with a key of the configured keyring; print its JSON.
    Issue(IssueArgs),
}

/// Arguments of `kernels permit issue`.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Configuration file holding `permits.keys_env` / `permits.keys_file`
    /// (default: config/kernels.yaml when it exists).
    #[arg(long, env = "KERNELS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Keyring id of the signing key.
    #[arg(long)]
    pub key_id: String,
    /// Who issues the permit.
    #[arg(long)]
    pub issuer: String,
    /// The actor it authorises.
    #[arg(long)]
    pub subject: String,
    /// The tool it authorises.
    #[arg(long)]
    pub action: String,
    /// JSON file with the params a request may use (an object; `-` for stdin).
    #[arg(long)]
    pub params: Option<PathBuf>,
    /// JSON file with extra constraints (an object, e.g. `{"forbidden_params": [...]}`).
    #[arg(long)]
    pub constraints: Option<PathBuf>,
    /// How long it is valid from `--valid-from-ms` (e.g. 10m, 1h, 7d).
    #[arg(long, conflicts_with = "valid_until_ms")]
    pub valid_for: Option<String>,
    /// Start of validity in ms since the epoch (default: now).
    #[arg(long)]
    pub valid_from_ms: Option<u64>,
    /// End of validity in ms since the epoch, inclusive (instead of --valid-for).
    #[arg(long)]
    pub valid_until_ms: Option<u64>,
    /// How many ALLOWed requests may use it.
    #[arg(long, default_value_t = 1)]
    pub max_executions: u64,
    /// Jurisdiction (default: the configuration's `permits.jurisdiction`, else `default`).
    #[arg(long)]
    pub jurisdiction: Option<String>,
    /// Hash of the evidence the permit was issued on.
    #[arg(long, default_value = "")]
    pub evidence_hash: String,
    /// Hash of the proposal it answers (default: SHA-256 of the canonical
    /// JSON of `{"action", "params", "subject"}`).
    #[arg(long)]
    pub proposal_hash: Option<String>,
    /// Nonce, at least 32 characters (default: 32 random hex digits).
    #[arg(long)]
    pub nonce: Option<String>,
}

/// `kernels permit …`.
pub(super) fn permit(cmd: PermitCommand) -> CliResult {
    match cmd {
        PermitCommand::Issue(args) => issue(args),
    }
}

fn issue(args: IssueArgs) -> CliResult {
    let env = |k: &str| std::env::var(k).ok();
    let (raw, path) =
        read_raw(args.config.as_deref(), &env).map_err(|e| CliError::unusable(e.to_string()))?;
    let permits = raw.permits.unwrap_or_default();
    let key = signing_key(&permits, &args.key_id, &env).map_err(|e| {
        let from = path
            .map(|p| format!(" (configuration {})", p.display()))
            .unwrap_or_else(|| " (no configuration file found)".into());
        CliError::unusable(format!("{e}{from}"))
    })?;
    let params = object_file(args.params.as_ref(), "--params")?;
    let constraints = object_file(args.constraints.as_ref(), "--constraints")?;
    let valid_from_ms = match args.valid_from_ms {
        Some(ms) => ms,
        None => now_ms()?,
    };
    let valid_until_ms = match (&args.valid_for, args.valid_until_ms) {
        (Some(text), None) => {
            let span = parse_duration(text)
                .map_err(|e| CliError::unusable(format!("--valid-for: {e}")))?;
            let span_ms = u64::try_from(span.as_millis())
                .map_err(|_| CliError::unusable("--valid-for is too long"))?;
            valid_from_ms
                .checked_add(span_ms)
                .ok_or_else(|| CliError::unusable("--valid-for is too long"))?
        }
        (None, Some(until)) => until,
        _ => {
            return Err(CliError::unusable(
                "give how long the permit is valid: --valid-for (e.g. 10m) or --valid-until-ms",
            ));
        }
    };
    let proposal_hash = match args.proposal_hash {
        Some(p) => p,
        None => default_proposal_hash(&args.action, &params, &args.subject)?,
    };
    let unsigned = PermitToken {
        permit_id: String::new(),
        issuer: args.issuer,
        subject: args.subject,
        jurisdiction: args
            .jurisdiction
            .or(permits.jurisdiction)
            .unwrap_or_else(|| "default".into()),
        action: args.action,
        params,
        constraints,
        max_executions: args.max_executions,
        valid_from_ms,
        valid_until_ms,
        evidence_hash: args.evidence_hash,
        proposal_hash,
        nonce: args.nonce.unwrap_or_else(random_nonce),
        signature: String::new(),
        key_id: String::new(),
    };
    let token = unsigned.sign(&args.key_id, &key);
    // The library refuses to construct such a permit; so do we, naming why.
    if PermitToken::from_value(&token.to_value()).is_none() {
        return Err(CliError::unusable(malformed_reason(&token)));
    }
    println!("{}", token.to_value());
    Ok(EXIT_OK)
}

/// The key `key_id` of the configured keyring, and only that one.
fn signing_key(
    permits: &RawPermits,
    key_id: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<u8>, String> {
    let secret = if let Some(var) = permits.keys_env.get(key_id) {
        env(var).ok_or_else(|| format!("permits.keys_env.{key_id}: variable {var} is not set"))?
    } else if let Some(file) = permits.keys_file.get(key_id) {
        std::fs::read_to_string(file)
            .map_err(|e| format!("permits.keys_file.{key_id} {}: {e}", file.display()))?
    } else {
        let known: Vec<&String> = permits
            .keys_env
            .keys()
            .chain(permits.keys_file.keys())
            .collect();
        return Err(format!(
            "key id '{key_id}' is not in the configured permit keyring (known: {known:?})"
        ));
    };
    let ring = keyring_from_hex(&[(key_id.to_owned(), secret)].into())?;
    let key = ring.into_values().next().unwrap_or_default();
    if key.is_empty() {
        return Err(format!("permit key '{key_id}' is empty"));
    }
    Ok(key)
}

fn object_file(path: Option<&PathBuf>, flag: &str) -> Result<Map<String, Value>, CliError> {
    let Some(path) = path else {
        return Ok(Map::new());
    };
    let what = format!("{flag} {}", path.display());
    match parse_json(&read_input(path)?, &what)? {
        Value::Object(map) => Ok(map),
        _ => Err(CliError::unusable(format!("{what} must be a JSON object"))),
    }
}

/// SHA-256 of the canonical JSON of `{"action", "params", "subject"}`: what
/// the permit answers, when the issuer names no proposal of its own.
fn default_proposal_hash(
    action: &str,
    params: &Map<String, Value>,
    subject: &str,
) -> Result<String, CliError> {
    crate::canonical::sha256_of(&json!({"action": action, "params": params, "subject": subject}))
        .map_err(|e| CliError::unusable(format!("--params: {e}")))
}

fn random_nonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn now_ms() -> Result<u64, CliError> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_millis()).ok())
        .ok_or_else(|| CliError::unusable("the system clock is before 1970"))
}

fn malformed_reason(token: &PermitToken) -> String {
    let reason = if token.issuer.is_empty() {
        "--issuer must not be empty"
    } else if token.subject.is_empty() {
        "--subject must not be empty"
    } else if token.action.is_empty() {
        "--action must not be empty"
    } else if token.jurisdiction.is_empty() {
        "the jurisdiction must not be empty"
    } else if token.max_executions < 1 {
        "--max-executions must be at least 1"
    } else if token.valid_until_ms <= token.valid_from_ms {
        "the permit must end after it starts"
    } else if token.proposal_hash.is_empty() {
        "--proposal-hash must not be empty"
    } else if token.nonce.chars().count() < 32 {
        "--nonce must be at least 32 characters"
    } else {
        "--key-id must not be empty"
    };
    format!("not a valid permit: {reason}")
}
