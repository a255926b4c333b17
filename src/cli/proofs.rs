//! Offline commands of provable history: `keygen`, `checkpoint verify`,
//! `proof verify` (inclusion and consistency), and the checkpoint check of
//! `verify BUNDLE --key VKEY --checkpoint FILE`.
//!
//! Keys and checkpoints are parsed into their types here, at the edge
//! ([`VerifierKey`], [`SignedCheckpoint`]); exit codes follow the other
//! verifiers: 0 valid, 1 invalid (a signature, proof or tree head that does
//! not hold), 2 unusable input (a file that is not a key, checkpoint or
//! proof document).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::json;

use super::{CliError, CliResult, EXIT_NEGATIVE, EXIT_OK, read_input};
use crate::chain::{ChainError, VerifyReport};
use crate::checkpoint::{SignedCheckpoint, VerifiedCheckpoint, Witnesses};
use crate::note::{KeyKind, SignerKey, VerifierKey, keys::is_valid_name};
use crate::proofs::{ConsistencyProof, InclusionProof, ProofDocError};
use crate::verify::TreeHead;

/// Arguments of `kernels keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The kernel whose checkpoints the key will sign.
    #[arg(long)]
    pub kernel_id: String,
    /// The log's origin, which names the key (default `kernels/<kernel-id>`).
    #[arg(long)]
    pub origin: Option<String>,
    /// Where to write the private key (created with mode 0600, never overwritten).
    #[arg(long)]
    pub out: PathBuf,
}

/// `kernels checkpoint …`.
#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Verify a signed checkpoint (exit 0 valid, 1 invalid, 2 unusable).
    Verify(CheckpointVerifyArgs),
}

/// `kernels proof …`.
#[derive(Debug, Subcommand)]
pub enum ProofCommand {
    /// Verify an inclusion proof (--entry-hash) or a consistency proof
    /// (--old-checkpoint) with its signed checkpoint (exit 0 valid, 1 invalid, 2 unusable).
    Verify(ProofVerifyArgs),
}

/// Witness keys and quorum, for the commands that check a checkpoint.
#[derive(Debug, Args)]
pub struct WitnessArgs {
    /// A witness's cosignature/v1 verifier key, or @FILE holding it (several may follow).
    #[arg(long = "witness", value_name = "WKEY", num_args = 1..)]
    pub witness: Vec<String>,
    /// How many of the witnesses must have cosigned (default: all of them).
    #[arg(long, requires = "witness")]
    pub quorum: Option<usize>,
}

/// Arguments of `kernels checkpoint verify`.
#[derive(Debug, Args)]
pub struct CheckpointVerifyArgs {
    /// The log's verifier key, or @FILE holding it.
    #[arg(long, value_name = "VKEY")]
    pub key: String,
    /// The signed checkpoint (`-` for standard input).
    pub checkpoint: Option<PathBuf>,
    /// Witnesses whose cosignatures are required.
    #[command(flatten)]
    pub witnesses: WitnessArgs,
    /// Print `{"valid", "origin", "tree_size", "root_hash", "cosignatures", "error"}`.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `kernels proof verify`.
#[derive(Debug, Args)]
pub struct ProofVerifyArgs {
    /// The log's verifier key, or @FILE holding it.
    #[arg(long, value_name = "VKEY")]
    pub key: String,
    /// The proof document (`-` for standard input), as the service answers it.
    pub proof: Option<PathBuf>,
    /// Inclusion: the entry_hash (64 hex digits) of the entry the proof is for.
    #[arg(
        long,
        value_name = "HEX",
        conflicts_with = "old_checkpoint",
        required_unless_present = "old_checkpoint"
    )]
    pub entry_hash: Option<String>,
    /// Consistency: the older signed checkpoint the proof starts from.
    #[arg(long, value_name = "FILE")]
    pub old_checkpoint: Option<PathBuf>,
    /// Witnesses whose cosignatures the proof's checkpoint must carry.
    #[command(flatten)]
    pub witnesses: WitnessArgs,
    /// Print JSON: `{"valid", "kind", …, "error"}`.
    #[arg(long)]
    pub json: bool,
}

/// The checkpoint options of `kernels verify BUNDLE`.
#[derive(Debug, Args)]
pub struct TreeHeadArgs {
    /// With --checkpoint: the log's verifier key, or @FILE holding it.
    #[arg(long, value_name = "VKEY", requires = "checkpoint")]
    pub key: Option<String>,
    /// With --key: a signed checkpoint; the Merkle tree head of the bundle's
    /// first `tree size` entries must be its root (the bundle starts at seq 0).
    #[arg(long, value_name = "FILE", requires = "key")]
    pub checkpoint: Option<PathBuf>,
}

/// `kernels keygen`.
pub(super) fn keygen(args: KeygenArgs) -> CliResult {
    let origin = args
        .origin
        .unwrap_or_else(|| format!("kernels/{}", args.kernel_id));
    if !is_valid_name(&origin) {
        return Err(CliError::unusable(format!(
            "the origin {origin:?} cannot name a key: no spaces or '+' (check --kernel-id / --origin)"
        )));
    }
    let key = SignerKey::generate(&origin, KeyKind::Ed25519)
        .map_err(|e| CliError::unusable(e.to_string()))?;
    crate::store::key_file::write_key(&args.out, &key)
        .map_err(|e| CliError::unusable(e.to_string()))?;
    println!("{}", key.verifier());
    Ok(EXIT_OK)
}

/// A verifier key given as text or `@FILE`.
pub(super) fn load_key(arg: &str, what: &str) -> Result<VerifierKey, CliError> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| CliError::unusable(format!("{what}: cannot read {path}: {e}")))?,
        None => arg.to_owned(),
    };
    VerifierKey::parse(text.trim()).map_err(|e| CliError::unusable(format!("{what}: {e}")))
}

impl WitnessArgs {
    /// The witnesses; a last `--witness` value that is no key but an
    /// existing file is taken as the positional file (`--witness W1 W2 FILE`).
    fn load(&self, positional: &mut Option<PathBuf>) -> Result<Witnesses, CliError> {
        let mut values = self.witness.clone();
        if positional.is_none()
            && let Some(last) = values.last()
            && !last.starts_with('@')
            && VerifierKey::parse(last).is_err()
            && Path::new(last).exists()
        {
            *positional = values.pop().map(PathBuf::from);
        }
        if values.is_empty() {
            return Ok(Witnesses::none());
        }
        let keys = values
            .iter()
            .map(|v| load_key(v, "--witness"))
            .collect::<Result<Vec<_>, _>>()?;
        Witnesses::new(keys, self.quorum).map_err(|e| CliError::unusable(e.to_string()))
    }
}

fn checkpoint_json(verified: &VerifiedCheckpoint) -> serde_json::Value {
    let cp = &verified.checkpoint;
    json!({
        "origin": cp.origin,
        "tree_size": cp.size,
        "root_hash": cp.root.to_hex(),
        "cosignatures": verified.cosignatures,
    })
}

fn print_checkpoint_lines(verified: &VerifiedCheckpoint) {
    let cp = &verified.checkpoint;
    println!("origin: {}", cp.origin);
    println!("tree size: {}", cp.size);
    println!("root hash: {} ({})", cp.root.to_hex(), cp.root.to_base64());
    for c in &verified.cosignatures {
        println!("cosigned by {} at {}", c.name, c.timestamp);
    }
}

/// Prints a negative answer and returns exit 1.
fn invalid(json: bool, doc: serde_json::Value, message: &str) -> CliResult {
    if json {
        let mut doc = doc;
        doc["valid"] = json!(false);
        doc["error"] = json!(message);
        println!("{doc}");
    } else {
        println!("INVALID: {message}");
    }
    Ok(EXIT_NEGATIVE)
}

/// `kernels checkpoint verify`.
pub(super) fn checkpoint(cmd: CheckpointCommand) -> CliResult {
    let CheckpointCommand::Verify(mut args) = cmd;
    let key = load_key(&args.key, "--key")?;
    let witnesses = args.witnesses.load(&mut args.checkpoint)?;
    let path = args
        .checkpoint
        .ok_or_else(|| CliError::unusable("give the checkpoint file to verify"))?;
    let text = read_input(&path)?;
    let what = path.display().to_string();
    let signed =
        SignedCheckpoint::parse(&text).map_err(|e| CliError::unusable(format!("{what}: {e}")))?;
    match signed.verify(&key, &witnesses) {
        Ok(verified) => {
            if args.json {
                let mut doc = checkpoint_json(&verified);
                doc["valid"] = json!(true);
                doc["error"] = json!(null);
                println!("{doc}");
            } else {
                println!("VALID: {what}");
                print_checkpoint_lines(&verified);
            }
            Ok(EXIT_OK)
        }
        Err(e) if e.is_unusable() => Err(CliError::unusable(format!("{what}: {e}"))),
        Err(e) => invalid(args.json, json!({}), &e.to_string()),
    }
}

/// `kernels proof verify`.
pub(super) fn proof(cmd: ProofCommand) -> CliResult {
    let ProofCommand::Verify(mut args) = cmd;
    let key = load_key(&args.key, "--key")?;
    let witnesses = args.witnesses.load(&mut args.proof)?;
    let path = args
        .proof
        .ok_or_else(|| CliError::unusable("give the proof document to verify"))?;
    let text = read_input(&path)?;
    let what = path.display().to_string();
    let unusable = |e: ProofDocError| CliError::unusable(format!("{what}: {e}"));
    if let Some(old) = &args.old_checkpoint {
        let old_text = read_input(old)?;
        let doc = ConsistencyProof::parse(&text).map_err(unusable)?;
        let base =
            json!({"kind": "consistency", "from_size": doc.from_size, "to_size": doc.to_size});
        return match doc.verify(&old_text, &key, &witnesses) {
            Ok((old, new)) => {
                if args.json {
                    let mut out = base;
                    out["valid"] = json!(true);
                    out["old_root_hash"] = json!(old.checkpoint.root.to_hex());
                    out["checkpoint"] = checkpoint_json(&new);
                    out["error"] = json!(null);
                    println!("{out}");
                } else {
                    println!(
                        "VALID: the log of {} entries extends the log of {} entries ({})",
                        new.checkpoint.size, old.checkpoint.size, old.checkpoint.origin
                    );
                    print_checkpoint_lines(&new);
                }
                Ok(EXIT_OK)
            }
            Err(e) if e.is_unusable() => Err(unusable(e)),
            Err(e) => invalid(args.json, base, &e.to_string()),
        };
    }
    let hex = args.entry_hash.as_deref().unwrap_or_default();
    let entry_hash = crate::chain::decode_hex(hex.to_ascii_lowercase().as_bytes())
        .ok_or_else(|| CliError::unusable(format!("--entry-hash {hex:?} is not 64 hex digits")))?;
    let doc = InclusionProof::parse(&text).map_err(unusable)?;
    let base = json!({"kind": "inclusion", "seq": doc.seq, "tree_size": doc.tree_size});
    match doc.verify(&entry_hash, &key, &witnesses) {
        Ok(verified) => {
            if args.json {
                let mut out = base;
                out["valid"] = json!(true);
                out["entry_hash"] = json!(hex.to_ascii_lowercase());
                out["checkpoint"] = checkpoint_json(&verified);
                out["error"] = json!(null);
                println!("{out}");
            } else {
                println!(
                    "VALID: entry {} ({}) is in the log of {} entries",
                    doc.seq,
                    hex.to_ascii_lowercase(),
                    verified.checkpoint.size
                );
                print_checkpoint_lines(&verified);
            }
            Ok(EXIT_OK)
        }
        Err(e) if e.is_unusable() => Err(unusable(e)),
        Err(e) => invalid(args.json, base, &e.to_string()),
    }
}

impl TreeHeadArgs {
    /// The verified checkpoint to compare a bundle with, if one was given.
    /// A checkpoint that does not verify ends the command: exit 1.
    pub(super) fn load(&self) -> Result<Option<VerifiedCheckpoint>, CliError> {
        let (Some(key), Some(path)) = (&self.key, &self.checkpoint) else {
            return Ok(None);
        };
        let key = load_key(key, "--key")?;
        let what = path.display().to_string();
        let text = read_input(path)?;
        let signed = SignedCheckpoint::parse(&text)
            .map_err(|e| CliError::unusable(format!("{what}: {e}")))?;
        match signed.verify(&key, &Witnesses::none()) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_unusable() => Err(CliError::unusable(format!("{what}: {e}"))),
            Err(e) => Err(CliError {
                message: format!("the checkpoint {what} does not verify: {e}"),
                code: EXIT_NEGATIVE,
            }),
        }
    }
}

/// Finishes `verify BUNDLE --key --checkpoint`: compares the bundle's tree
/// head with the checkpoint, then prints the report with the outcome.
pub(super) fn finish_bundle_check(
    mut report: VerifyReport,
    checkpoint: &VerifiedCheckpoint,
    head: &TreeHead,
    json: bool,
    what: &str,
) -> CliResult {
    let cp = &checkpoint.checkpoint;
    let outcome = head.check(cp);
    if let Err(problem) = &outcome {
        if problem.is_unusable() {
            return Err(CliError::unusable(format!("{what}: {problem}")));
        }
        report.valid = false;
        report.errors.push(ChainError {
            index: None,
            message: problem.to_string(),
        });
    }
    if json {
        let mut doc = serde_json::to_value(&report).expect("a report serializes");
        doc["checkpoint"] = json!({
            "origin": cp.origin,
            "tree_size": cp.size,
            "root_hash": cp.root.to_hex(),
            "computed_tree_head": head.root.to_hex(),
            "matches": outcome.is_ok(),
        });
        println!("{doc}");
    } else {
        super::evidence::print_report(&report, false, what);
        let verdict = if outcome.is_ok() {
            "matches"
        } else {
            "does NOT match"
        };
        println!(
            "checkpoint: {} at tree size {}: the tree head of the first {} entries {verdict} ({})",
            cp.origin,
            cp.size,
            cp.size,
            head.root.to_hex()
        );
    }
    Ok(if report.valid { EXIT_OK } else { EXIT_NEGATIVE })
}
