//! Offline evidence commands: `info`, `validate`, `verify`, `canonical`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;

use super::{CliError, CliResult, EXIT_NEGATIVE, EXIT_OK, parse_json, read_input};
use crate::chain::VerifyReport;
use crate::kernel::request::RawRequest;
use crate::kernel::variant::ALL_VARIANTS;

/// Arguments of `kernels info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Describe the ledger in this data dir too.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `kernels validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The request JSON file (`-` for standard input).
    pub request: PathBuf,
}

/// Arguments of `kernels verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The evidence bundle to verify (`-` for standard input).
    pub bundle: Option<PathBuf>,
    /// Verify the stored chain of this data dir instead.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print `{"valid", "entries_verified", "computed_root_hash", "errors"}`.
    #[arg(long)]
    pub json: bool,
    /// Check the bundle against a signed checkpoint too.
    #[command(flatten)]
    pub tree: super::proofs::TreeHeadArgs,
}

/// Arguments of `kernels canonical`.
#[derive(Debug, Args)]
pub struct CanonicalArgs {
    /// The JSON document (`-` or nothing for standard input).
    pub file: Option<PathBuf>,
    /// Print the SHA-256 of the canonical form instead.
    #[arg(long)]
    pub sha256: bool,
}

/// `kernels info`.
pub(super) fn info(args: InfoArgs) -> CliResult {
    let variants: Vec<_> = ALL_VARIANTS
        .iter()
        .map(|v| {
            serde_json::json!({
                "name": v.as_str(),
                "fail_closed": v.fail_closed(),
                "require_jurisdiction": v.require_jurisdiction(),
                "strict_ambiguity": v.strict_ambiguity(),
                "max_intent_length": v.max_intent_length(),
                "description": v.description(),
            })
        })
        .collect();
    if args.json {
        let doc = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "storage_format_version": crate::STORAGE_FORMAT_VERSION,
            "hash": "sha256",
            "variants": variants,
        });
        println!("{doc}");
    } else {
        println!("kernels {}", env!("CARGO_PKG_VERSION"));
        println!("storage format version: {}", crate::STORAGE_FORMAT_VERSION);
        println!("hash: sha256 over Python-compatible canonical JSON");
        println!("variants:");
        for v in ALL_VARIANTS {
            println!(
                "  {:<15} fail_closed={} jurisdiction={} strict_ambiguity={} max_intent_length={}",
                v.as_str(),
                v.fail_closed(),
                v.require_jurisdiction(),
                v.strict_ambiguity(),
                v.max_intent_length()
            );
            println!("  {:<15} {}", "", v.description());
        }
    }
    Ok(EXIT_OK)
}

/// `kernels validate`.
pub(super) fn validate(args: ValidateArgs) -> CliResult {
    let text = read_input(&args.request)?;
    let value = parse_json(&text, &args.request.display().to_string())?;
    let mut problems = Vec::new();
    let raw = match value {
        serde_json::Value::Object(mut map) => {
            let unknown: Vec<String> = map
                .keys()
                .filter(|k| !crate::kernel::request::REQUEST_KEYS.contains(&k.as_str()))
                .cloned()
                .collect();
            for key in unknown {
                problems.push(format!("unknown field '{key}'"));
                map.remove(&key);
            }
            RawRequest::from_value(serde_json::Value::Object(map)).expect("unknown keys removed")
        }
        _ => return Err(CliError::unusable("a request must be a JSON object")),
    };
    if let Err(invalid) = raw.validate() {
        problems.extend(invalid.errors);
    }
    if problems.is_empty() {
        println!("Validation passed.");
        Ok(EXIT_OK)
    } else {
        println!("Validation failed:");
        for p in problems {
            println!("  - {p}");
        }
        Ok(EXIT_NEGATIVE)
    }
}

/// `kernels verify BUNDLE`.
pub(super) fn verify(args: VerifyArgs) -> CliResult {
    let Some(path) = args.bundle else {
        return Err(CliError::unusable(
            "give a bundle file to verify (or --data-dir DIR for a data dir)",
        ));
    };
    let checkpoint = args.tree.load()?;
    let tree_size = checkpoint.as_ref().map(|c| c.checkpoint.size);
    let progress = Arc::new(AtomicU64::new(0));
    let bytes_read = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let show_progress = std::io::stderr().is_terminal() && !args.json;
    let total = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let ticker = show_progress.then(|| {
        let (progress, bytes_read, done) = (progress.clone(), bytes_read.clone(), done.clone());
        std::thread::spawn(move || {
            let mut shown = false;
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let n = progress.load(Ordering::Relaxed);
                if n >= 100_000 || shown {
                    shown = true;
                    let read = bytes_read.load(Ordering::Relaxed);
                    let pct = (read * 100).checked_div(total).unwrap_or(0);
                    eprint!("\rverifying: {n} entries ({pct}%)   ");
                }
            }
            if shown {
                eprint!("\r\x1b[K");
            }
        })
    });
    // No BufReader: the verifier reads in large blocks of its own, and a
    // buffer in between would only copy every byte once more.
    let run = |input: &mut dyn std::io::Read| match tree_size {
        None => crate::verify::verify_bundle(input, &progress).map(|r| (r, None)),
        Some(size) => crate::verify::verify_bundle_with_tree(input, &progress, size)
            .map(|(r, head)| (r, Some(head))),
    };
    let result = if path.as_os_str() == "-" {
        let stdin = std::io::stdin().lock();
        run(&mut crate::verify::CountingReader::new(
            stdin,
            bytes_read.clone(),
        ))
    } else {
        let file = std::fs::File::open(&path)
            .map_err(|e| CliError::unusable(format!("cannot read {}: {e}", path.display())))?;
        run(&mut crate::verify::CountingReader::new(
            file,
            bytes_read.clone(),
        ))
    };
    done.store(true, Ordering::Relaxed);
    if let Some(t) = ticker {
        let _ = t.join();
    }
    let (report, head) =
        result.map_err(|e| CliError::unusable(format!("{}: {e}", path.display())))?;
    if let (Some(checkpoint), Some(head)) = (&checkpoint, &head) {
        let what = path.display().to_string();
        return super::proofs::finish_bundle_check(report, checkpoint, head, args.json, &what);
    }
    print_report(&report, args.json, &path.display().to_string());
    Ok(if report.valid { EXIT_OK } else { EXIT_NEGATIVE })
}

/// Prints a verification report as JSON or as text.
pub(crate) fn print_report(report: &VerifyReport, json: bool, what: &str) {
    if json {
        println!(
            "{}",
            serde_json::to_string(report).expect("a report serializes")
        );
        return;
    }
    let mut out = std::io::stdout().lock();
    if report.valid {
        let _ = writeln!(out, "VALID: {what}");
    } else {
        let _ = writeln!(out, "INVALID: {what}");
    }
    let _ = writeln!(out, "entries verified: {}", report.entries_verified);
    let _ = writeln!(out, "computed root hash: {}", report.computed_root_hash);
    if !report.errors.is_empty() {
        let _ = writeln!(out, "errors ({}):", report.errors.len());
        for e in report.errors.iter().take(super::LISTED_PROBLEMS) {
            match e.index {
                Some(i) => {
                    let _ = writeln!(out, "  entry {i}: {}", e.message);
                }
                None => {
                    let _ = writeln!(out, "  bundle: {}", e.message);
                }
            }
        }
        if let Some(more) = super::more_problems(report.errors.len()) {
            let _ = writeln!(out, "{more}");
        }
    }
}

/// `kernels canonical`.
pub(super) fn canonical(args: CanonicalArgs) -> CliResult {
    let path = args.file.unwrap_or_else(|| PathBuf::from("-"));
    let text = read_input(&path)?;
    let value = parse_json(&text, &path.display().to_string())?;
    let canonical = crate::canonical::to_string(&value)
        .map_err(|e| CliError::unusable(format!("no canonical form: {e}")))?;
    if args.sha256 {
        println!("{}", crate::canonical::sha256_hex(canonical.as_bytes()));
    } else {
        println!("{canonical}");
    }
    Ok(EXIT_OK)
}
