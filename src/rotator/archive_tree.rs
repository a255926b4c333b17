//! The Merkle tree of an archive, rebuilt from the archived entries, and
//! the signed checkpoints checked against it (`kernels archive verify
//! --key`).
//!
//! [`ArchiveTree`] is the sink of the segment scans: it appends each
//! archived entry's leaf, in seq order across every segment, to an
//! in-memory tree (32 bytes per entry). After each segment, the manifest's
//! checkpoint must be signed by the log's key and state the tree head of
//! the archived entries `0..=to_seq`; consecutive checkpoints are also
//! checked with an RFC 9162 consistency proof built from the rebuilt tree.
//! Manifests written before checkpoints existed carry none; a later
//! checkpoint covers their entries (the tree starts at entry 0), so only a
//! missing checkpoint after a signed manifest, or an archive whose manifests
//! carry none at all, is a problem.
//! A checkpoint the archive should reach (`--expect-checkpoint`) must be
//! covered by the archived entries, with the same root: an archive whose
//! newest segment was deleted does not reach it.

use super::archive_report::{ArchiveProblem, problem};
use super::segment::EntrySink;
use crate::checkpoint::{SignedCheckpoint, Witnesses};
use crate::entry::Entry;
use crate::merkle::tiles::{MemoryTiles, TiledNodes};
use crate::merkle::{Hash, consistency_proof, entry_leaf_hash, tree_root, verify_consistency};
use crate::note::VerifierKey;

/// What `kernels archive verify` checks of the tree: with a key, every
/// manifest's checkpoint; with an expected checkpoint too, that the archive
/// reaches it.
#[derive(Debug, Clone, Default)]
pub struct TreeChecks {
    /// The log's verifier key (`--key`).
    pub key: Option<VerifierKey>,
    /// The checkpoint the archive must reach (`--expect-checkpoint`).
    pub expected: Option<SignedCheckpoint>,
}

/// The rebuilt tree of an archive, and what was checked so far.
#[derive(Debug, Default)]
pub struct ArchiveTree {
    /// Whether leaves are kept (only when there is a key to check with).
    enabled: bool,
    tiles: MemoryTiles,
    /// The first seq that did not continue the tree (a gap or a bad entry):
    /// nothing past it can be checked.
    broken_at: Option<u64>,
    /// The last checkpoint that matched: `(size, root)`.
    last: Option<(u64, Hash)>,
    /// Whether any manifest carried a checkpoint.
    seen_checkpoint: bool,
}

impl EntrySink for ArchiveTree {
    fn accept(&mut self, entry: &Entry) -> Result<(), String> {
        if !self.enabled || self.broken_at.is_some() {
            return Ok(());
        }
        match Hash::from_hex(&entry.entry_hash) {
            Some(raw) if entry.ledger_seq == self.tiles.size() => {
                self.tiles.append(entry_leaf_hash(&raw.0));
            }
            // The chain check reports the entry; the tree stops here.
            _ => self.broken_at = Some(self.tiles.size()),
        }
        Ok(())
    }
}

impl ArchiveTree {
    /// A tree that keeps leaves when `enabled`.
    pub fn new(enabled: bool) -> ArchiveTree {
        ArchiveTree {
            enabled,
            ..ArchiveTree::default()
        }
    }

    /// Entries in the rebuilt tree (all archived entries, up to a gap).
    pub fn size(&self) -> u64 {
        self.tiles.size()
    }

    /// The root of the rebuilt tree of `size` entries, if it has them.
    fn root_at(&self, size: u64) -> Option<Hash> {
        if size > self.tiles.size() || self.broken_at.is_some_and(|b| size > b) {
            return None;
        }
        tree_root(size, &TiledNodes(&self.tiles)).ok()
    }

    /// Checks the checkpoint `text` of manifest `key`, whose last entry is
    /// `to_seq`, against the rebuilt tree (after the manifest's segment was
    /// scanned); `None` is a manifest without one.
    pub fn check_manifest(
        &mut self,
        key: &str,
        to_seq: u64,
        text: Option<&str>,
        log_key: &VerifierKey,
    ) -> Vec<ArchiveProblem> {
        let Some(text) = text else {
            // Manifests written before checkpoints existed have none; once
            // one had a checkpoint, every later one must.
            return if self.seen_checkpoint {
                vec![problem(
                    key,
                    None,
                    "carries no checkpoint, though an earlier manifest did (removed?)",
                )]
            } else {
                Vec::new()
            };
        };
        self.seen_checkpoint = true;
        let size = to_seq.saturating_add(1);
        let signed = match self.verified(text, log_key) {
            Ok(signed) => signed,
            Err(message) => return vec![problem(key, None, message)],
        };
        if signed.checkpoint.size != size {
            return vec![problem(
                key,
                None,
                format!(
                    "its checkpoint covers {} entries, the manifest ends at entry {to_seq}",
                    signed.checkpoint.size
                ),
            )];
        }
        match self.root_at(size) {
            None => vec![problem(
                key,
                Some(to_seq),
                format!(
                    "its checkpoint cannot be checked: the archived entries do not reach entry {to_seq} in order"
                ),
            )],
            Some(root) if root != signed.checkpoint.root => vec![problem(
                key,
                Some(to_seq),
                format!(
                    "the archived entries 0..={to_seq} have tree head {root}, the signed checkpoint says {} (changed entries)",
                    signed.checkpoint.root
                ),
            )],
            Some(root) => {
                let mut problems = Vec::new();
                if let Some((old, old_root)) = self.last {
                    let consistent = consistency_proof(old, size, &TiledNodes(&self.tiles))
                        .ok()
                        .is_some_and(|proof| {
                            verify_consistency(old, size, &old_root, &root, &proof).is_ok()
                        });
                    if !consistent {
                        problems.push(problem(
                            key,
                            None,
                            format!(
                                "its checkpoint is not consistent with the previous one ({old} entries)"
                            ),
                        ));
                    }
                }
                self.last = Some((size, root));
                problems
            }
        }
    }

    /// After the last manifest: the newest manifest must carry a checkpoint
    /// (it covers every archived entry, those of manifests written before
    /// checkpoints existed too); an archive with none is not signed at all.
    pub fn finish(&self, newest: Option<&str>) -> Option<ArchiveProblem> {
        (!self.seen_checkpoint).then(|| ArchiveProblem {
            object: newest.map(str::to_owned),
            seq: None,
            message: "no manifest carries a signed checkpoint: nothing in this archive is signed by the log's key".into(),
        })
    }

    /// Checks the checkpoint the archive should reach: the archived entries
    /// cover it, with its root. `Err` is an unusable checkpoint.
    pub fn check_expected(
        &self,
        expected: &SignedCheckpoint,
        log_key: &VerifierKey,
    ) -> Result<Option<ArchiveProblem>, String> {
        expected
            .verify(log_key, &Witnesses::none())
            .map_err(|e| format!("the expected checkpoint: {e}"))?;
        let (size, root) = (expected.checkpoint.size, expected.checkpoint.root);
        let have = self.broken_at.unwrap_or(self.tiles.size());
        Ok(match self.root_at(size) {
            None => Some(ArchiveProblem {
                object: None,
                seq: Some(have),
                message: format!(
                    "the archive ends early: its entries reach {have}, but the expected checkpoint covers {size} (the newest segments are missing)"
                ),
            }),
            Some(r) if r != root => Some(ArchiveProblem {
                object: None,
                seq: None,
                message: format!(
                    "the archived entries 0..{size} have tree head {r}, the expected checkpoint says {root}"
                ),
            }),
            Some(_) => None,
        })
    }

    fn verified(&self, text: &str, log_key: &VerifierKey) -> Result<SignedCheckpoint, String> {
        let signed = SignedCheckpoint::parse(text).map_err(|e| format!("its checkpoint: {e}"))?;
        signed
            .verify(log_key, &Witnesses::none())
            .map_err(|e| format!("its checkpoint does not verify: {e}"))?;
        Ok(signed)
    }
}
