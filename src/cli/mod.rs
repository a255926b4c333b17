//! The `kernels` command line: argument parsing and dispatch to the commands.
//!
//! Offline commands (verify, canonical, validate, simulate, info, export,
//! replay, archive …) work on files, a data dir or an archive; commands that
//! change a running kernel (halt, policy update, rotate …) talk to the
//! service over HTTP. Every command returns an exit code: 0 success, 1 a
//! negative answer (invalid chain, failed validation, unhealthy service), 2
//! unusable input or an error — always with a one-line message, never a panic.

mod evidence;
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
    /// Show the version, the variants and their settings, and the storage format.
    Info(evidence::InfoArgs),
    /// Check a request file against the request rules (exit 0 valid, 1 invalid).
    Validate(evidence::ValidateArgs),
    /// Verify an evidence bundle or a data dir (exit 0 valid, 1 invalid, 2 unusable).
    Verify(evidence::VerifyArgs),
    /// Print the canonical JSON of a document, or its SHA-256.
    Canonical(evidence::CanonicalArgs),
    /// Run recorded requests through a fresh in-memory kernel; print the bundle.
    Simulate(simulate::SimulateArgs),
}

/// Parses the command line and runs the command.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Info(args) => evidence::info(args),
        Command::Validate(args) => evidence::validate(args),
        Command::Verify(args) => evidence::verify(args),
        Command::Canonical(args) => evidence::canonical(args),
        Command::Simulate(args) => simulate::simulate(args),
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
