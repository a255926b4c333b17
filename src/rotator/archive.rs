//! Forensics from the archive alone: verify every manifest and segment of a
//! kernel, and replay its state, without the service or its data dir.
//!
//! Verification checks each manifest (canonical form, key, kernel), the
//! chain of manifests (first seq 0 from genesis, each range continuing the
//! previous one's root, each `prev_manifest_sha256` the previous object's
//! SHA-256), each segment against its manifest (SHA-256, size, count, anchor,
//! root) and every entry hash in it, and that every manifest is recorded by
//! a `kernel.rotate` entry of a later segment (and every recorded manifest
//! exists). It reports every problem with the object it concerns. With the
//! log's verifier key it also checks every manifest's signed checkpoint
//! against the archived entries ([`super::archive_tree`]).
//!
//! The newest manifest is recorded only by the ledger (its `kernel.rotate`
//! entry goes into the next segment), so an archive whose newest objects
//! were deleted still chains: [`expect_end`] compares the archive's end with
//! the last archived seq the ledger knows (`--expect-seq`, or the service).

use std::collections::BTreeMap;

use serde_json::Value;

use super::archive_report::problem;
pub use super::archive_report::{ArchiveProblem, ArchiveReport};
use super::archive_tree::ArchiveTree;
pub use super::archive_tree::TreeChecks;
use super::manifest::{Manifest, kernel_prefix, range_of_key};
use super::objects::{ObjectError, Objects};
use super::segment;
use crate::entry::GENESIS_HASH;
use crate::kernel::KernelState;

/// Why the archive could not be examined at all (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The store could not be listed or read.
    #[error(transparent)]
    Objects(#[from] ObjectError),
    /// Nothing is archived for that kernel.
    #[error("no archived manifests under {0}")]
    Empty(String),
    /// Replay failed.
    #[error("{0}")]
    Replay(String),
}

/// Verifies the archive of `kernel_id` under `prefix` (without checkpoints).
pub async fn verify(
    objects: &Objects,
    prefix: &str,
    kernel_id: &str,
) -> Result<ArchiveReport, ArchiveError> {
    verify_with(objects, prefix, kernel_id, &TreeChecks::default()).await
}

/// Verifies the archive of `kernel_id` under `prefix`, and with a key every
/// manifest's signed checkpoint against the archived entries
/// ([`super::archive_tree`]).
pub async fn verify_with(
    objects: &Objects,
    prefix: &str,
    kernel_id: &str,
    checks: &TreeChecks,
) -> Result<ArchiveReport, ArchiveError> {
    let base = kernel_prefix(prefix, kernel_id);
    let listing = objects.list(&base).await?;
    let manifests: Vec<_> = listing
        .iter()
        .filter(|o| o.key.starts_with(&format!("{base}manifests/")))
        .cloned()
        .collect();
    let segments: BTreeMap<String, u64> = listing
        .iter()
        .filter(|o| o.key.starts_with(&format!("{base}segments/")))
        .map(|o| (o.key.clone(), o.size))
        .collect();
    if manifests.is_empty() {
        return Err(ArchiveError::Empty(format!(
            "{}/{base}",
            objects.describe()
        )));
    }
    let mut report = ArchiveReport::empty();
    let mut expected_from = 0u64;
    let mut expected_anchor = GENESIS_HASH.to_owned();
    let mut prev_sha: Option<String> = None;
    let mut recorded: BTreeMap<String, (u64, Value)> = BTreeMap::new();
    let mut manifest_shas: Vec<(String, String, Value)> = Vec::new();
    let mut used_segments = Vec::new();
    let mut tree = ArchiveTree::new(checks.key.is_some());
    let mut unchecked_checkpoints = false;

    for object in &manifests {
        report.manifests += 1;
        let key = &object.key;
        let bytes = match objects.read_all(key, 1 << 20).await {
            Ok(b) => b,
            Err(e) => {
                report
                    .errors
                    .push(problem(key, None, format!("cannot read: {e}")));
                continue;
            }
        };
        let sha = crate::canonical::sha256_hex(&bytes);
        let manifest: Manifest = match serde_json::from_slice(&bytes) {
            Ok(m) => m,
            Err(e) => {
                report
                    .errors
                    .push(problem(key, None, format!("not a manifest: {e}")));
                prev_sha = Some(sha);
                continue;
            }
        };
        if manifest.to_bytes() != bytes {
            report.errors.push(problem(
                key,
                None,
                "manifest is not in canonical form (edited?)",
            ));
        }
        if range_of_key(key) != Some((manifest.from_seq, manifest.to_seq)) {
            report.errors.push(problem(
                key,
                None,
                format!(
                    "key does not match its range {}..={}",
                    manifest.from_seq, manifest.to_seq
                ),
            ));
        }
        if manifest.kernel_id != kernel_id {
            report.errors.push(problem(
                key,
                None,
                format!("belongs to kernel '{}'", manifest.kernel_id),
            ));
        }
        if manifest.from_seq != expected_from {
            let what = if manifest.from_seq > expected_from {
                "gap"
            } else {
                "overlap"
            };
            report.errors.push(problem(
                key,
                Some(manifest.from_seq),
                format!(
                    "{what}: range starts at {}, expected {expected_from}",
                    manifest.from_seq
                ),
            ));
        }
        if manifest.anchor_hash != expected_anchor {
            report.errors.push(problem(
                key,
                Some(manifest.from_seq),
                "anchor_hash does not continue the previous segment's root",
            ));
        }
        if manifest.prev_manifest_sha256 != prev_sha {
            report.errors.push(problem(
                key,
                None,
                "prev_manifest_sha256 is not the SHA-256 of the previous manifest",
            ));
        }
        if manifest.to_seq < manifest.from_seq
            || manifest.entry_count != manifest.to_seq - manifest.from_seq + 1
        {
            report
                .errors
                .push(problem(key, None, "entry_count does not match the range"));
        }
        // The segment.
        let seg = manifest.segment_key.clone();
        if !segments.contains_key(&seg) {
            report.errors.push(problem(
                &seg,
                Some(manifest.from_seq),
                format!("segment named by {key} is missing"),
            ));
        } else {
            used_segments.push(seg.clone());
            report.segments += 1;
            match segment::scan_object(objects, &seg, std::mem::take(&mut tree)).await {
                Err(e) => report
                    .errors
                    .push(problem(&seg, None, format!("unreadable: {e}"))),
                Ok((scan, back)) => {
                    tree = back;
                    report.entries_verified += scan.report.entries_verified;
                    if scan.sha256 != manifest.segment_sha256
                        || scan.bytes != manifest.segment_bytes
                    {
                        report.errors.push(problem(
                            &seg,
                            None,
                            format!(
                                "SHA-256/size differ from manifest {key} (tampered or replaced)"
                            ),
                        ));
                    }
                    for e in &scan.report.errors {
                        let seq = e.index.map(|i| manifest.from_seq + i);
                        report.errors.push(problem(&seg, seq, e.message.clone()));
                    }
                    if scan.header.from_seq.unwrap_or(0) != manifest.from_seq
                        || scan.header.anchor_hash.as_deref().unwrap_or(GENESIS_HASH)
                            != manifest.anchor_hash
                    {
                        report.errors.push(problem(
                            &seg,
                            None,
                            "range header differs from the manifest",
                        ));
                    }
                    if scan.report.computed_root_hash != manifest.root_hash {
                        report.errors.push(problem(
                            &seg,
                            None,
                            "computed root hash differs from the manifest's root_hash",
                        ));
                    }
                    if scan.report.entries_verified != manifest.entry_count {
                        report.errors.push(problem(
                            &seg,
                            None,
                            format!(
                                "has {} entries, the manifest says {}",
                                scan.report.entries_verified, manifest.entry_count
                            ),
                        ));
                    }
                    for (seq, payload) in scan.rotations {
                        let key = payload
                            .get("segment_key")
                            .and_then(Value::as_str)
                            .map(|s| s.replace("/segments/", "/manifests/"))
                            .unwrap_or_default();
                        recorded.insert(key, (seq, payload));
                    }
                }
            }
        }
        match &checks.key {
            Some(log_key) => report.errors.extend(tree.check_manifest(
                key,
                manifest.to_seq,
                manifest.checkpoint.as_deref(),
                log_key,
            )),
            None => unchecked_checkpoints |= manifest.checkpoint.is_some(),
        }
        manifest_shas.push((key.clone(), sha.clone(), manifest.to_value()));
        expected_from = manifest.to_seq.saturating_add(1);
        expected_anchor = manifest.root_hash.clone();
        report.root_hash = manifest.root_hash.clone();
        report.last_seq = Some(manifest.to_seq);
        prev_sha = Some(sha);
    }

    // Every manifest but the newest is recorded by a later kernel.rotate entry.
    for (i, (key, _, value)) in manifest_shas.iter().enumerate() {
        match recorded.remove(key) {
            Some((seq, payload)) if &payload != value => {
                report.errors.push(problem(
                    key,
                    Some(seq),
                    format!(
                        "differs from the manifest recorded in the ledger at entry {seq} (edited?)"
                    ),
                ));
            }
            Some(_) => {}
            None if i + 1 < manifest_shas.len() => {
                report.errors.push(problem(
                    key,
                    None,
                    "is not recorded by any kernel.rotate entry of the archived ledger",
                ));
            }
            None => {}
        }
    }
    for (key, (seq, _)) in recorded {
        report.errors.push(problem(
            &key,
            Some(seq),
            format!("recorded in the ledger at entry {seq} but missing from the archive"),
        ));
    }
    for seg in segments.keys() {
        if !used_segments.contains(seg) {
            report.warnings.push(format!(
                "{seg}: segment without a manifest (an interrupted upload; not part of the archive)"
            ));
        }
    }
    if checks.key.is_some() {
        report
            .errors
            .extend(tree.finish(manifests.last().map(|o| o.key.as_str())));
    }
    if let (Some(log_key), Some(expected)) = (&checks.key, &checks.expected) {
        match tree.check_expected(expected, log_key) {
            Ok(problem) => report.errors.extend(problem),
            Err(message) => report.errors.push(ArchiveProblem {
                object: None,
                seq: None,
                message,
            }),
        }
    }
    if unchecked_checkpoints {
        report.warnings.push(
            "the manifests' signed checkpoints were not checked: give --key (the log's verifier key)"
                .into(),
        );
    }
    report.valid = report.errors.is_empty();
    Ok(report)
}

/// Marks `report` invalid when the archive ends before `expect_seq`, the last
/// seq the ledger recorded as archived: the newest objects are missing.
pub fn expect_end(report: &mut ArchiveReport, expect_seq: u64) {
    if report.last_seq.is_some_and(|last| last >= expect_seq) {
        return;
    }
    let ends = report
        .last_seq
        .map_or("has no segment".to_owned(), |s| format!("ends at seq {s}"));
    report.errors.push(ArchiveProblem {
        object: None,
        seq: report.last_seq.map(|s| s + 1),
        message: format!(
            "the archive ends early: it {ends}, but entries up to seq {expect_seq} were archived (the newest manifest and segment are missing)"
        ),
    });
    report.valid = false;
}

/// Folds archived entries into a state, up to a seq or a time.
struct Replayer {
    state: KernelState,
    until_seq: Option<u64>,
    at_ms: Option<u64>,
    done: bool,
}

impl segment::EntrySink for Replayer {
    fn accept(&mut self, entry: &crate::entry::Entry) -> Result<(), String> {
        if self.done
            || self.until_seq.is_some_and(|u| entry.ledger_seq > u)
            || self.at_ms.is_some_and(|t| entry.ts_ms > t)
        {
            self.done = true;
            return Ok(());
        }
        self.state
            .apply(entry)
            .map_err(|e| format!("entry {}: {e}", entry.ledger_seq))
    }
}

/// Rebuilds the kernel state from the archive alone, up to `until_seq` or
/// `at_ms` (inclusive) or the last archived entry.
pub async fn replay(
    objects: &Objects,
    prefix: &str,
    kernel_id: &str,
    until_seq: Option<u64>,
    at_ms: Option<u64>,
) -> Result<KernelState, ArchiveError> {
    let base = kernel_prefix(prefix, kernel_id);
    let manifests = objects.list(&format!("{base}manifests/")).await?;
    if manifests.is_empty() {
        return Err(ArchiveError::Empty(format!(
            "{}/{base}",
            objects.describe()
        )));
    }
    let mut replayer = Replayer {
        state: KernelState::default(),
        until_seq,
        at_ms,
        done: false,
    };
    for object in manifests {
        if replayer.done {
            break;
        }
        let bytes = objects.read_all(&object.key, 1 << 20).await?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| ArchiveError::Replay(format!("{}: not a manifest: {e}", object.key)))?;
        let (scan, back) = segment::scan_object(objects, &manifest.segment_key, replayer)
            .await
            .map_err(|e| ArchiveError::Replay(format!("{}: {e}", manifest.segment_key)))?;
        replayer = back;
        if scan.sha256 != manifest.segment_sha256 || !scan.report.valid {
            return Err(ArchiveError::Replay(format!(
                "{} does not match its manifest or does not verify; run `kernels archive verify`",
                manifest.segment_key
            )));
        }
    }
    Ok(replayer.state)
}
