//! The `kernels` command line: argument parsing and dispatch to the commands.
//!
//! Offline commands (verify, canonical, validate, simulate, info, export,
//! replay, archive, keygen, checkpoint and proof verify …) work on files, a data dir or an archive; commands that
//! change a running kernel (halt, policy update, rotate …) talk to the
//! service over HTTP. Every command returns an exit code: 0 success, 1 a
//! negative answer (invalid chain, failed validation, unhealthy service), 2
//! unusable input or an error — always with a one-line message, never a panic.

mod archive;
mod client;
mod cluster;
mod datadir;
mod evidence;
mod health;
mod investigate;
mod mcp;
mod permit;
mod proofs;
mod serve;
mod simulate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for success.
pub const EXIT_OK: u8 = 0;
/// Exit code for a negative answer (invalid, failed, unhealthy).
pub const EXIT_NEGATIVE: u8 = 1;
/// Exit code for unusable input or an operational error.
pub const EXIT_UNUSABLE: u8 = 2;

/// How many problems a text report lists (`--json` lists them all).
pub const LISTED_PROBLEMS: usize = 20;

/// The line that ends a text listing of `total` problems cut at
/// [`LISTED_PROBLEMS`], if it was cut.
pub fn more_problems(total: usize) -> Option<String> {
    (total > LISTED_PROBLEMS).then(|| {
        format!(
            "  … and {} more ({total} in all; --json lists every one)",
            total - LISTED_PROBLEMS
        )
    })
}

/// A command's failure: what to print and which code to exit with.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// One line for the user.
    pub message: String,
    /// Exit code.
    pub code: u8,
}

impl CliError {
    /// Unusable input or an operational error (exit 2).
    pub fn unusable(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code: EXIT_UNUSABLE,
        }
    }
}

/// Result of a command: its exit code, or an error.
pub type CliResult = Result<u8, CliError>;

/// `kernels`: a durable, hash-chained governance kernel for AI agents.
#[derive(Debug, Parser)]
#[command(name = "kernels", version, about, long_about = None)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Every `kernels` command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (HTTP API, durable ledger, rotator).
    Serve(serve::ServeArgs),
    /// Show the version, variants and storage format; with --data-dir, the ledger.
    Info(evidence::InfoArgs),
    /// Check a request file against the request rules (exit 0 valid, 1 invalid).
    Validate(evidence::ValidateArgs),
    /// Verify an evidence bundle or a data dir (exit 0 valid, 1 invalid, 2 unusable).
    Verify(evidence::VerifyArgs),
    /// Print the canonical JSON of a document, or its SHA-256.
    Canonical(evidence::CanonicalArgs),
    /// Run recorded requests through a fresh in-memory kernel; print the bundle.
    Simulate(simulate::SimulateArgs),
    /// Export an evidence bundle from a data dir (streamed).
    Export(datadir::ExportArgs),
    /// Rebuild and print the kernel state from a data dir, as of the head, a seq or a time.
    Replay(datadir::ReplayArgs),
    /// Investigate a time range (play 3.2): its entries and their analysis by
    /// actor, tool, decision and errors — from a data dir or a running service.
    Investigate(investigate::InvestigateArgs),
    /// Health check of a running service (play 3.1): exit 0 healthy, 1
    /// degraded or unhealthy, 2 when it cannot check (no token, unreachable).
    Health(health::HealthArgs),
    /// Status of a running service.
    Status(client::StatusArgs),
    /// Submit one request to a running service.
    Submit(client::SubmitArgs),
    /// Halt a running kernel (recorded, with the reason).
    Halt(client::ReasonArgs),
    /// Recover a halted kernel into a new session (recorded, with the reason).
    Recover(client::ReasonArgs),
    /// Preserve evidence for an incident on the service's disk (recorded).
    Preserve(client::PreserveArgs),
    /// Check, show or update the jurisdiction policy.
    #[command(subcommand)]
    Policy(client::PolicyCommand),
    /// Rotate now: archive what is new to S3 (recorded).
    Rotate(client::RotateArgs),
    /// Verify or replay a kernel's archive (S3 or a directory of downloaded objects).
    #[command(subcommand)]
    Archive(archive::ArchiveCommand),
    /// Issue permit tokens (signed with a key of the configured keyring).
    #[command(subcommand)]
    Permit(permit::PermitCommand),
    /// Create a checkpoint signing key (writes the private key, prints the verifier key).
    Keygen(proofs::KeygenArgs),
    /// Verify a signed checkpoint, with its witnesses' cosignatures.
    #[command(subcommand)]
    Checkpoint(proofs::CheckpointCommand),
    /// Verify an inclusion or consistency proof against its signed checkpoint.
    #[command(subcommand)]
    Proof(proofs::ProofCommand),
    /// A cluster of kernels: shared policy, halt and recover, status, load balancer.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Run an MCP server (stdio) behind the kernel: every tools/call is decided first.
    McpProxy(mcp::McpProxyArgs),
}

/// Logging: JSON lines on stderr; `KERNELS_LOG` sets the filter (default
/// `info` for `serve`, `warn` for the other commands).
pub fn init_tracing(cli: &Cli) {
    let default = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KERNELS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the command.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(args) => serve::serve(args),
        Command::Info(args) => match &args.data_dir {
            Some(dir) => datadir::info_data_dir(dir, args.json),
            None => evidence::info(args),
        },
        Command::Validate(args) => evidence::validate(args),
        Command::Verify(args) => match (&args.data_dir, &args.bundle) {
            (Some(_), None) if args.tree.checkpoint.is_some() => Err(CliError::unusable(
                "--key/--checkpoint check a bundle file: export the data dir first",
            )),
            (Some(dir), None) => datadir::verify_data_dir(dir, args.json),
            (Some(_), Some(_)) => Err(CliError::unusable(
                "give a bundle file or --data-dir, not both",
            )),
            (None, _) => evidence::verify(args),
        },
        Command::Canonical(args) => evidence::canonical(args),
        Command::Simulate(args) => simulate::simulate(args),
        Command::Export(args) => datadir::export(args),
        Command::Replay(args) => datadir::replay(args),
        Command::Investigate(args) => investigate::investigate(args),
        Command::Health(args) => health::health(args),
        Command::Status(args) => client::status(args),
        Command::Submit(args) => client::submit(args),
        Command::Halt(args) => client::halt(args),
        Command::Recover(args) => client::recover(args),
        Command::Preserve(args) => client::preserve(args),
        Command::Policy(cmd) => client::policy(cmd),
        Command::Rotate(args) => client::rotate(args),
        Command::Archive(cmd) => archive::archive(cmd),
        Command::Permit(cmd) => permit::permit(cmd),
        Command::Keygen(args) => proofs::keygen(args),
        Command::Checkpoint(cmd) => proofs::checkpoint(cmd),
        Command::Proof(cmd) => proofs::proof(cmd),
        Command::Cluster(cmd) => cluster::cluster(cmd),
        Command::McpProxy(args) => mcp::mcp_proxy(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("kernels: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// Reads a whole file (or stdin for `-`), with a one-line error.
pub(crate) fn read_input(path: &PathBuf) -> Result<String, CliError> {
    use std::io::Read;
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::unusable(format!("cannot read standard input: {e}")))?;
    } else {
        let bytes = std::fs::read(path)
            .map_err(|e| CliError::unusable(format!("cannot read {}: {e}", path.display())))?;
        text = String::from_utf8(bytes)
            .map_err(|_| CliError::unusable(format!("{} is not UTF-8 text", path.display())))?;
    }
    Ok(text)
}

/// Parses JSON text, with a one-line error naming `what`.
pub(crate) fn parse_json(text: &str, what: &str) -> Result<serde_json::Value, CliError> {
    crate::canonical::parse(text)
        .map_err(|e| CliError::unusable(format!("{what} is not valid JSON: {e}")))
}
