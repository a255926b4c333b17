//! `kernels serve`: open the ledger, start the rotator, join the cluster
//! (when one is configured) and start its worker, serve HTTP until a
//! shutdown signal, then close cleanly.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::{CliError, CliResult, EXIT_OK};
use crate::config::{Config, Overrides};
use crate::ledger::{Ledger, LedgerOptions, SystemClock};
use crate::metrics::Metrics;
use crate::service::auth::TokenTable;
use crate::service::{AppState, RotationControl, ServiceSettings};
use crate::store::sled_store::SledOptions;

/// Flags every command that reads the configuration accepts.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// Configuration file (default: config/kernels.yaml when it exists).
    #[arg(long, env = "KERNELS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (default ./data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Policy file (default config/policy.yaml when it exists).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Kernel id.
    #[arg(long)]
    pub kernel_id: Option<String>,
    /// Variant (strict, permissive, evidence_first, dual_channel).
    #[arg(long)]
    pub variant: Option<String>,
}

impl ConfigArgs {
    /// The command-line overrides.
    pub fn overrides(&self, listen: Option<String>) -> Overrides {
        Overrides {
            config: self.config.clone(),
            data_dir: self.data_dir.clone(),
            listen,
            policy: self.policy.clone(),
            kernel_id: self.kernel_id.clone(),
            variant: self.variant.clone(),
        }
    }

    /// Loads and validates the configuration.
    pub fn load(&self, listen: Option<String>) -> Result<Config, CliError> {
        Config::load(&self.overrides(listen)).map_err(|e| CliError::unusable(e.to_string()))
    }
}

/// Arguments of `kernels serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long)]
    pub listen: Option<String>,
    /// Accept a checkpoint signing key other than the one the ledger
    /// records (a deliberate key rotation; recorded in `kernel.start`).
    #[arg(long, env = "KERNELS_ROTATE_SIGNING_KEY")]
    pub rotate_signing_key: bool,
}

/// `kernels serve`.
pub(super) fn serve(args: ServeArgs) -> CliResult {
    let config = args.config.load(args.listen.clone())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::unusable(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(run(config, args.rotate_signing_key))
}

async fn run(config: Config, rotate_signing_key: bool) -> CliResult {
    let metrics = Arc::new(Metrics::new());
    let mut options =
        LedgerOptions::service(&config.kernel_id, config.variant, config.policy.clone());
    options.policy_source = config
        .policy_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "embedded example policy".into());
    options.keyring = config.keyring.clone();
    options.jurisdiction = config.jurisdiction.clone();
    options.external_tools = config.external_tools.clone();
    options.checkpoint_every = config.checkpoint_every;
    options.sled = SledOptions {
        cache_capacity: config.cache_bytes,
    };
    // Checkpoints are signed with the configured key file, else with a key
    // the ledger keeps in (and at first start creates in) its data dir.
    match &config.signing.key_file {
        Some(path) => {
            let key = crate::store::key_file::read_key(path, &config.signing.origin)
                .map_err(|e| CliError::unusable(format!("refusing to start: {e}")))?;
            options.signing = Some(Arc::new(key));
        }
        None => options.data_dir_key_origin = Some(config.signing.origin.clone()),
    }
    options.rotate_signing_key = rotate_signing_key;
    if config.verify_full_on_start && config.data_dir.join("KERNELS_FORMAT").exists() {
        let dir = config.data_dir.clone();
        tokio::task::spawn_blocking(move || verify_in_child(&dir))
            .await
            .map_err(|e| CliError::unusable(format!("verifying the ledger: {e}")))??;
    }
    // Every entry was just verified (or the operator chose not to): opening
    // verifies from the last state checkpoint to the head.
    options.verify = crate::ledger::open::VerifyOnOpen::FromCheckpoint;
    let data_dir = config.data_dir.clone();
    let ledger = tokio::task::spawn_blocking(move || {
        Ledger::open(&data_dir, options, Arc::new(SystemClock), metrics)
    })
    .await
    .map_err(|e| CliError::unusable(format!("opening the ledger: {e}")))?
    .map_err(|e| CliError::unusable(format!("refusing to start: {e}")))?;
    let status = ledger.status();
    tracing::info!(
        kernel_id = %status.kernel_id,
        variant = %status.variant,
        state = %status.state,
        entries = status.ledger_length,
        root_hash = %status.root_hash,
        policy_version = status.policy_version,
        data_dir = %config.data_dir.display(),
        verifier_key = %ledger.verifier_key().map(ToString::to_string).unwrap_or_default(),
        "ledger open and verified"
    );
    if config.tokens.is_empty() {
        tracing::warn!(
            "no API tokens are configured: every /v1/ call will be refused (401); set KERNELS_OPERATOR_TOKEN, KERNELS_AUDITOR_TOKEN, KERNELS_AGENT_TOKEN or `tokens:` in the config"
        );
    }

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let alerts = config
        .alerts
        .clone()
        .map(|a| crate::alerts::Alerts::start(a, ledger.clone(), shutdown_rx.clone()));
    let rotator = match &config.rotation {
        Some(rotation) => {
            tracing::info!(bucket = %rotation.bucket, prefix = %rotation.prefix, interval_secs = rotation.interval.as_secs(), "rotation enabled");
            Some(
                crate::rotator::Rotator::start(
                    ledger.clone(),
                    rotation.clone(),
                    config.data_dir.join("rotation"),
                    shutdown_rx.clone(),
                    alerts.clone(),
                )
                .await,
            )
        }
        None => None,
    };
    let rotation: Option<Arc<dyn RotationControl>> = rotator
        .clone()
        .map(|r| Arc::new(r) as Arc<dyn RotationControl>);

    let mcp = crate::mcp::front::McpFront::new(&config.mcp).map_err(CliError::unusable)?;
    // Handled from here on: "serving on" below is a promise that a SIGTERM
    // is a clean stop.
    let shutdown = crate::service::shutdown_signal();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| CliError::unusable(format!("cannot listen on {}: {e}", config.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| CliError::unusable(format!("cannot read the listen address: {e}")))?;
    // A member joins before it serves: its first request is decided under
    // the cluster's policy, and a set halt flag halts it first.
    let cluster = match &config.cluster {
        Some(c) => {
            let cluster = crate::cluster::join::join_configured(
                c,
                &config.kernel_id,
                &config.data_dir,
                local,
                ledger.clone(),
            )
            .await
            .map_err(|e| CliError::unusable(format!("refusing to start: {e}")))?;
            cluster.start(shutdown_rx.clone());
            tracing::info!(cluster = %c.id, kernel_id = %config.kernel_id, poll_interval_ms = c.poll_interval.as_millis() as u64, "cluster member");
            Some(cluster)
        }
        None => None,
    };
    tracing::info!(listen = %local, "serving");
    eprintln!("kernels: serving on http://{local}");

    let state = AppState::new(
        ledger.clone(),
        TokenTable::new(&config.tokens),
        ServiceSettings {
            max_body_bytes: config.max_body_bytes,
            request_timeout: config.request_timeout,
            data_dir: config.data_dir.clone(),
        },
        rotation,
    )
    .with_mcp(mcp);
    for server in &config.mcp.servers {
        tracing::info!(name = %server.name, url = %server.url, "fronting an MCP server at /mcp/{}", server.name);
    }
    let state = match &cluster {
        Some(c) => state.with_cluster(Arc::new(c.clone())),
        None => state,
    };
    let app = crate::service::router(state);
    // Serving ends on SIGTERM or Ctrl-C, once in-flight requests are answered.
    let limits = crate::service::ConnectionLimits {
        header_timeout: config.header_timeout,
        max_connections: config.max_connections,
    };
    let served = crate::service::serve_with(listener, app, shutdown, limits).await;
    let _ = shutdown_tx.send(true);
    if let Some(r) = rotator {
        r.stopped().await;
    }
    if let Some(a) = &alerts {
        a.stopped().await;
    }
    if let Some(c) = &cluster {
        c.stopped().await;
    }
    // A clean stop is an entry (a crash leaves none), halted or not: the
    // last one before the ledger closes.
    if served.is_ok() {
        match ledger.record_stop("shutdown signal").await {
            Ok(entry) => tracing::info!(seq = entry.ledger_seq, "stop recorded"),
            Err(e) => tracing::warn!(error = %e, "could not record the stop"),
        }
    }
    let closing = ledger.clone();
    let closed = tokio::task::spawn_blocking(move || closing.close())
        .await
        .map_err(|e| CliError::unusable(format!("closing the ledger: {e}")))?;
    served.map_err(|e| CliError::unusable(format!("server error: {e}")))?;
    closed.map_err(|e| CliError::unusable(format!("closing the ledger: {e}")))?;
    tracing::info!(entries = ledger.durable_len(), "stopped cleanly");
    Ok(EXIT_OK)
}

/// Verifies every stored entry of `dir` in a short-lived child process
/// (`kernels verify --data-dir DIR --json`) before the service opens it.
///
/// A full verification reads every stored entry. sled's cache stays bounded
/// while it does (the read nudges of `store/sled_cache.rs`), but the process
/// keeps what the scan made it allocate, for its whole life: measured on
/// 400,000 entries (`cargo bench --bench ledger_scale`), an open with full
/// verification left a process at 37.5 MiB resident against 14.5 MiB for
/// one verifying from the checkpoint, and a bare scan that grew a process
/// from 9.7 to 23 MiB still held 23 MiB after the store was dropped. In a
/// child process that memory is returned when the child exits; the service
/// then opens with a verification from its last checkpoint only. A bad
/// entry stops the start, naming it.
fn verify_in_child(dir: &std::path::Path) -> Result<(), CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::unusable(format!("cannot find the kernels binary: {e}")))?;
    let started = std::time::Instant::now();
    let out = std::process::Command::new(exe)
        .arg("verify")
        .arg("--data-dir")
        .arg(dir)
        .arg("--json")
        .env_remove("KERNELS_CONFIG")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| CliError::unusable(format!("cannot run the verification: {e}")))?;
    let report: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
    match (out.status.code(), report) {
        (Some(0), Some(report)) => {
            tracing::info!(
                entries = report["entries_verified"].as_u64().unwrap_or(0),
                root_hash = report["computed_root_hash"].as_str().unwrap_or(""),
                seconds = started.elapsed().as_secs_f64(),
                "every stored entry verified"
            );
            Ok(())
        }
        (Some(1), Some(report)) => {
            let first = &report["errors"][0];
            let count = report["errors"].as_array().map_or(0, Vec::len);
            Err(CliError::unusable(format!(
                "refusing to start: stored ledger is corrupt at entry {}: {} ({count} problem(s); `kernels verify --data-dir {}` lists them)",
                first["index"],
                first["message"].as_str().unwrap_or("?"),
                dir.display()
            )))
        }
        _ => Err(CliError::unusable(format!(
            "refusing to start: {}",
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .trim_start_matches("kernels: ")
        ))),
    }
}
