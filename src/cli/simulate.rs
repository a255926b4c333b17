//! `kernels simulate`: a what-if run of recorded requests through a fresh
//! in-memory kernel, with a clock that moves only when told to.
//!
//! The kernel is shaped like the Python library's (no `kernel.create` entry);
//! with `--compat python` the same inputs give the same entries and hashes as
//! a Python run with a virtual clock (by default denied entries also name the
//! tool they asked for, as the service records them). This is how an
//! operator tries a new policy on yesterday's traffic before applying it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::{CliError, CliResult, EXIT_OK, read_input};
use crate::bundle::{BundleWriter, ExportHeader};
use crate::kernel::permit::{Keyring, keyring_from_hex};
use crate::kernel::{Compat, DecideContext, MemoryKernel, Policy, RawRequest, Variant};

/// Arguments of `kernels simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Requests, one JSON object a line: a request, `{"advance_ms": N}` or `{"halt": "reason"}`.
    pub requests: PathBuf,
    /// Jurisdiction policy (YAML); default: the variant's built-in policy.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Kernel variant.
    #[arg(long, default_value = "strict")]
    pub variant: String,
    /// Kernel id written in the bundle.
    #[arg(long, default_value = "simulation")]
    pub kernel_id: String,
    /// Clock at the first line, in ms.
    #[arg(long, default_value_t = 0)]
    pub start_ms: u64,
    /// Permit keyring: a YAML/JSON map of key id to hex secret (permits are
    /// then required for tool calls).
    #[arg(long)]
    pub keyring: Option<PathBuf>,
    /// Permit jurisdiction.
    #[arg(long, default_value = "default")]
    pub jurisdiction: String,
    /// A tool the kernel authorises but does not run (repeatable).
    #[arg(long = "external-tool")]
    pub external_tools: Vec<String>,
    /// Also write each receipt (or refusal) as a JSON line to this file.
    #[arg(long)]
    pub receipts: Option<PathBuf>,
    /// Write the bundle here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Entry format: `native` (denied entries name the tool they asked for)
    /// or `python` (the Python library's entries, byte for byte).
    #[arg(long, value_enum, default_value_t = CompatArg::Native)]
    pub compat: CompatArg,
}

/// `--compat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompatArg {
    /// Ours.
    Native,
    /// The Python library's.
    Python,
}

impl From<CompatArg> for Compat {
    fn from(c: CompatArg) -> Compat {
        match c {
            CompatArg::Native => Compat::Native,
            CompatArg::Python => Compat::Python,
        }
    }
}

/// `kernels simulate`.
pub(super) fn simulate(args: SimulateArgs) -> CliResult {
    let variant = Variant::parse(&args.variant).ok_or_else(|| {
        CliError::unusable(format!(
            "unknown variant '{}' (strict, permissive, evidence_first, dual_channel)",
            args.variant
        ))
    })?;
    let policy = match &args.policy {
        Some(path) => Policy::from_yaml(&read_input(path)?)
            .map_err(|e| CliError::unusable(format!("{}: {e}", path.display())))?,
        None => Policy::default_for(variant),
    };
    let keyring: Keyring = match &args.keyring {
        Some(path) => {
            let map: BTreeMap<String, String> = serde_norway::from_str(&read_input(path)?)
                .map_err(|e| CliError::unusable(format!("{}: {e}", path.display())))?;
            keyring_from_hex(&map).map_err(CliError::unusable)?
        }
        None => Keyring::new(),
    };
    let text = read_input(&args.requests)?;
    let mut receipts_out = match &args.receipts {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| CliError::unusable(format!("cannot write {}: {e}", path.display())))?,
        )),
        None => None,
    };

    let external_tools: std::collections::BTreeSet<String> =
        args.external_tools.iter().cloned().collect();
    let mut kernel = MemoryKernel::bootstrap(&args.kernel_id, variant, &policy);
    let mut now = args.start_ms;
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value = crate::canonical::parse(line)
            .map_err(|e| CliError::unusable(format!("line {lineno}: not valid JSON: {e}")))?;
        let record = if let Some(step) = value.as_object().and_then(|o| o.get("advance_ms")) {
            if value.as_object().is_some_and(|o| o.len() != 1) {
                return Err(CliError::unusable(format!(
                    "line {lineno}: advance_ms must stand alone"
                )));
            }
            let step = step.as_u64().ok_or_else(|| {
                CliError::unusable(format!(
                    "line {lineno}: advance_ms must be a non-negative integer"
                ))
            })?;
            now = now
                .checked_add(step)
                .ok_or_else(|| CliError::unusable(format!("line {lineno}: clock overflow")))?;
            None
        } else if let Some(reason) = value.as_object().and_then(|o| o.get("halt")) {
            let reason = reason.as_str().ok_or_else(|| {
                CliError::unusable(format!("line {lineno}: halt reason must be a string"))
            })?;
            Some(match kernel.halt(now, "SYSTEM", reason) {
                Ok(receipt) => serde_json::to_value(&receipt).expect("receipts serialize"),
                Err(e) => serde_json::json!({"line": lineno, "refused": e.to_string()}),
            })
        } else {
            let raw = RawRequest::from_value(value)
                .map_err(|e| CliError::unusable(format!("line {lineno}: {e}")))?;
            let ctx = DecideContext {
                now_ms: now,
                keyring: &keyring,
                jurisdiction: &args.jurisdiction,
                external_tools: &external_tools,
                compat: args.compat.into(),
            };
            Some(match kernel.submit(&raw, &ctx) {
                Ok(receipt) => serde_json::to_value(&receipt).expect("receipts serialize"),
                Err(refusal) => {
                    eprintln!("kernels: line {lineno}: refused: {refusal}");
                    serde_json::json!({"line": lineno, "refused": refusal.to_string()})
                }
            })
        };
        if let (Some(out), Some(record)) = (receipts_out.as_mut(), record) {
            writeln!(out, "{record}")
                .map_err(|e| CliError::unusable(format!("cannot write receipts: {e}")))?;
        }
    }
    if let Some(mut out) = receipts_out {
        out.flush()
            .map_err(|e| CliError::unusable(format!("cannot write receipts: {e}")))?;
    }

    let header = ExportHeader {
        kernel_id: &args.kernel_id,
        variant: variant.as_str(),
        exported_at_ms: now,
        from_seq: None,
        anchor_hash: None,
        root_hash: &kernel.state.head.hash,
    };
    let write = |out: &mut dyn Write| -> std::io::Result<()> {
        let mut w = BundleWriter::start(out, &header)?;
        for e in &kernel.entries {
            w.entry(e)?;
        }
        w.finish()?;
        Ok(())
    };
    let result = match &args.out {
        Some(path) => {
            std::fs::File::create(path).and_then(|f| write(&mut std::io::BufWriter::new(f)))
        }
        None => write(&mut std::io::stdout().lock()),
    };
    result.map_err(|e| CliError::unusable(format!("cannot write the bundle: {e}")))?;
    Ok(EXIT_OK)
}
