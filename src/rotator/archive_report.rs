//! What `kernels archive verify` reports: every [`ArchiveProblem`] found,
//! each with the object (and entry) it concerns, in an [`ArchiveReport`]
//! with what was examined. A leaf shared by the chain checks of
//! `archive` and the checkpoint checks of `archive_tree`.

use serde::Serialize;

use crate::entry::GENESIS_HASH;

/// One problem found in an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArchiveProblem {
    /// The object concerned (key), if any.
    pub object: Option<String>,
    /// The entry concerned (seq), if any.
    pub seq: Option<u64>,
    /// What is wrong.
    pub message: String,
}

/// The outcome of `kernels archive verify`.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveReport {
    /// True when no problem was found.
    pub valid: bool,
    /// Manifests examined.
    pub manifests: u64,
    /// Segments examined.
    pub segments: u64,
    /// Entries whose hashes were recomputed.
    pub entries_verified: u64,
    /// Last archived seq.
    pub last_seq: Option<u64>,
    /// Root hash of the last segment.
    pub root_hash: String,
    /// Every problem.
    pub errors: Vec<ArchiveProblem>,
    /// Things worth knowing that are not errors (e.g. orphan segments).
    pub warnings: Vec<String>,
}

impl ArchiveReport {
    /// The report of an archive that holds nothing.
    pub fn empty() -> ArchiveReport {
        ArchiveReport {
            valid: true,
            manifests: 0,
            segments: 0,
            entries_verified: 0,
            last_seq: None,
            root_hash: GENESIS_HASH.to_owned(),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// A problem with `object` (and the entry `seq`, when one is concerned).
pub(super) fn problem(
    object: &str,
    seq: Option<u64>,
    message: impl Into<String>,
) -> ArchiveProblem {
    ArchiveProblem {
        object: Some(object.to_owned()),
        seq,
        message: message.into(),
    }
}
