//! Offline commands on a data dir no service holds: `export`, `verify
//! --data-dir`, `replay`, `info --data-dir` (and `investigate` without
//! `--server`, in `investigate.rs`).
//!
//! They record no entry (no `kernel.start`, no policy update, no stop), but
//! opening and closing a data dir is not free of writes: an older storage
//! format is upgraded (`migrations/`), what the write-ahead log still holds
//! is applied to sled and the log generations it covered are deleted, and
//! closing stores a state checkpoint and the durable head when they are
//! behind. The entries themselves never change. A data dir held by a
//! running service is refused at once with a message pointing to the HTTP
//! API.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use serde_json::json;

use super::{CliError, CliResult, EXIT_NEGATIVE, EXIT_OK};
use crate::kernel::KernelState;
use crate::ledger::open::VerifyOnOpen;
use crate::ledger::{Ledger, LedgerOptions, SystemClock, replay_summary};
use crate::metrics::Metrics;

/// Opens `dir` read-only.
pub(crate) fn open_read_only(dir: &Path, verify: VerifyOnOpen) -> Result<Ledger, CliError> {
    let mut options = LedgerOptions::read_only();
    options.verify = verify;
    Ledger::open(
        dir,
        options,
        Arc::new(SystemClock),
        Arc::new(Metrics::new()),
    )
    .map_err(|e| CliError::unusable(format!("{}: {e}", dir.display())))
}

pub(super) fn data_dir_of(flag: &Option<PathBuf>) -> PathBuf {
    flag.clone()
        .or_else(|| std::env::var_os("KERNELS_DATA_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("./data"))
}

/// Arguments of `kernels export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Data directory (default ./data, or KERNELS_DATA_DIR).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Write here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// First seq (inclusive).
    #[arg(long)]
    pub from_seq: Option<u64>,
    /// Last seq (inclusive).
    #[arg(long)]
    pub to_seq: Option<u64>,
}

/// `kernels export`.
pub(super) fn export(args: ExportArgs) -> CliResult {
    let dir = data_dir_of(&args.data_dir);
    let ledger = open_read_only(&dir, VerifyOnOpen::FromCheckpoint)?;
    let (from, to) = crate::evidence::range(&ledger, args.from_seq.unwrap_or(0), args.to_seq)
        .map_err(|e| CliError::unusable(e.to_string()))?;
    let summary = match &args.out {
        Some(path) => {
            let file = std::fs::File::create(path)
                .map_err(|e| CliError::unusable(format!("cannot write {}: {e}", path.display())))?;
            let (summary, w) = crate::evidence::export(&ledger, from, to, BufWriter::new(file))
                .map_err(|e| CliError::unusable(e.to_string()))?;
            w.into_inner()
                .map_err(|e| CliError::unusable(e.to_string()))?
                .sync_all()
                .map_err(|e| CliError::unusable(e.to_string()))?;
            summary
        }
        None => {
            let stdout = std::io::stdout().lock();
            let (summary, mut w) =
                crate::evidence::export(&ledger, from, to, BufWriter::new(stdout))
                    .map_err(|e| CliError::unusable(e.to_string()))?;
            w.flush().map_err(|e| CliError::unusable(e.to_string()))?;
            summary
        }
    };
    eprintln!(
        "kernels: exported entries {}..={} ({} entries), root {}, sha256 {}",
        summary.from_seq,
        summary.to_seq.saturating_sub(1),
        summary.to_seq - summary.from_seq,
        summary.root_hash,
        summary.sha256
    );
    Ok(EXIT_OK)
}

/// `kernels verify --data-dir`.
pub(super) fn verify_data_dir(dir: &Path, json: bool) -> CliResult {
    // Not through `Ledger::open`, which stops at the first bad entry: the
    // point here is to list every one.
    let report = crate::ledger::open::verify_data_dir(dir)
        .map_err(|e| CliError::unusable(format!("{}: {e}", dir.display())))?;
    super::evidence::print_report(&report, json, &dir.display().to_string());
    Ok(if report.valid { EXIT_OK } else { EXIT_NEGATIVE })
}

/// Arguments of `kernels replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Data directory (default ./data, or KERNELS_DATA_DIR).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Replay up to and including this seq.
    #[arg(long, conflicts_with = "at_ms")]
    pub until_seq: Option<u64>,
    /// Replay the entries made at or before this time (ms).
    #[arg(long)]
    pub at_ms: Option<u64>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Replays `entries` up to the limit given.
pub(crate) fn replay_entries(
    entries: impl Iterator<Item = Result<crate::entry::Entry, String>>,
    until_seq: Option<u64>,
    at_ms: Option<u64>,
) -> Result<KernelState, String> {
    let mut state = KernelState::default();
    for entry in entries {
        let entry = entry?;
        if until_seq.is_some_and(|u| entry.ledger_seq > u) || at_ms.is_some_and(|t| entry.ts_ms > t)
        {
            break;
        }
        let seq = entry.ledger_seq;
        state
            .apply(&entry)
            .map_err(|e| format!("entry {seq}: {e}"))?;
    }
    Ok(state)
}

/// Prints a replayed state.
pub(crate) fn print_state(state: &KernelState, json: bool) {
    let summary = replay_summary(state);
    if json {
        println!("{summary}");
        return;
    }
    println!(
        "kernel: {} ({})",
        state.kernel_id.as_deref().unwrap_or("?"),
        state.variant.map(|v| v.as_str()).unwrap_or("?")
    );
    println!("state: {}", state.state);
    println!("session: {}", state.session);
    println!("entries: {} (head {})", state.head.len, state.head.hash);
    if let Some(ts) = state.last_ts_ms {
        println!("last entry at: {ts} ms");
    }
    println!(
        "policy version: {} (sha256 {})",
        state.policy_version,
        state.policy_hash.as_deref().unwrap_or("-")
    );
    if let Some(p) = &state.policy {
        println!("policy: {}", p.to_json());
    }
    println!("decisions: {}", json!(state.counters.by_decision));
    println!("statuses: {}", json!(state.counters.by_status));
    println!("events: {}", json!(state.counters.by_event));
    if let Some(h) = &state.last_halt {
        println!(
            "last halt: entry {} by {} at {} ms: {}",
            h.seq, h.actor, h.ts_ms, h.reason
        );
    }
    if let Some(r) = &state.last_rotation {
        println!(
            "last rotation: entries up to {} (entry {}, root {})",
            r.to_seq, r.entry_seq, r.root_hash
        );
    }
}

/// `kernels replay`.
pub(super) fn replay(args: ReplayArgs) -> CliResult {
    let dir = data_dir_of(&args.data_dir);
    let ledger = open_read_only(&dir, VerifyOnOpen::Full)?;
    let len = ledger.durable_len();
    let entries = ledger.entries(0, len).map(|e| e.map_err(|e| e.to_string()));
    let state = replay_entries(entries, args.until_seq, args.at_ms).map_err(CliError::unusable)?;
    print_state(&state, args.json);
    Ok(EXIT_OK)
}

/// `kernels info --data-dir`.
pub(super) fn info_data_dir(dir: &Path, json: bool) -> CliResult {
    let ledger = open_read_only(dir, VerifyOnOpen::FromCheckpoint)?;
    let status = ledger.status();
    if json {
        let mut v = serde_json::to_value(&status).map_err(|e| CliError::unusable(e.to_string()))?;
        v["version"] = json!(env!("CARGO_PKG_VERSION"));
        v["storage_format_version"] = json!(crate::STORAGE_FORMAT_VERSION);
        v["data_dir"] = json!(dir.display().to_string());
        println!("{v}");
    } else {
        println!(
            "kernels {} (storage format {})",
            env!("CARGO_PKG_VERSION"),
            crate::STORAGE_FORMAT_VERSION
        );
        println!("data dir: {}", dir.display());
        println!("kernel: {} ({})", status.kernel_id, status.variant);
        println!("state: {} (session {})", status.state, status.session);
        println!("entries: {}", status.ledger_length);
        println!("root hash: {}", status.root_hash);
        println!("policy version: {}", status.policy_version);
        println!("service starts: {}", status.starts);
        match &status.last_rotation {
            Some(r) => println!(
                "last rotation: entries up to {} (root {})",
                r.to_seq, r.root_hash
            ),
            None => println!("last rotation: none"),
        }
    }
    Ok(EXIT_OK)
}
