//! Checkpoint manifests and the archive's key layout.
//!
//! ```text
//! <prefix>/<kernel_id>/segments/<from_seq:020>-<to_seq:020>.json    a range bundle
//! <prefix>/<kernel_id>/manifests/<from_seq:020>-<to_seq:020>.json   its manifest
//! ```
//!
//! Zero-padded seqs make keys sort by seq. A manifest names its segment, the
//! segment's SHA-256 and size, the chain range it covers (anchor and root
//! hashes) and the SHA-256 of the previous manifest, so manifests form a
//! chain of their own; each is also recorded in the ledger as the payload of
//! a `kernel.rotate` entry, which the next segment archives. It also carries
//! the log's signed checkpoint at its last entry, so that `kernels archive
//! verify --key` can check the archived entries against what was signed.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The manifest format tag.
pub const MANIFEST_FORMAT: &str = "kernels-archive-manifest/1";

/// A checkpoint manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// Kernel id.
    pub kernel_id: String,
    /// Variant.
    pub variant: String,
    /// First seq of the segment.
    pub from_seq: u64,
    /// Last seq of the segment (inclusive).
    pub to_seq: u64,
    /// Entries in the segment.
    pub entry_count: u64,
    /// `prev_hash` of the first entry.
    pub anchor_hash: String,
    /// `entry_hash` of the last entry.
    pub root_hash: String,
    /// Key of the segment object.
    pub segment_key: String,
    /// SHA-256 of the segment object.
    pub segment_sha256: String,
    /// Size of the segment object in bytes.
    pub segment_bytes: u64,
    /// SHA-256 of the previous manifest object (null for the first).
    pub prev_manifest_sha256: Option<String>,
    /// When the manifest was made.
    pub created_at_ms: u64,
    /// The signed checkpoint (C2SP tlog-checkpoint) of the tree of entries
    /// `0..=to_seq`: absent in manifests written before the Merkle tree, or
    /// by a ledger without a signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
}

impl Manifest {
    /// The manifest as a JSON value (the `kernel.rotate` payload).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("manifests serialize")
    }

    /// The manifest object's bytes: its canonical JSON, so that the object's
    /// SHA-256 is the canonical hash of the `kernel.rotate` payload.
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::canonical::to_string(&self.to_value())
            .expect("manifests have no floats")
            .into_bytes()
    }

    /// SHA-256 of [`Manifest::to_bytes`].
    pub fn sha256(&self) -> String {
        crate::canonical::sha256_hex(&self.to_bytes())
    }
}

/// `<prefix>/<kernel_id>/`.
pub fn kernel_prefix(prefix: &str, kernel_id: &str) -> String {
    if prefix.is_empty() {
        format!("{kernel_id}/")
    } else {
        format!("{}/{kernel_id}/", prefix.trim_end_matches('/'))
    }
}

/// Key of the segment of `from..=to`.
pub fn segment_key(prefix: &str, kernel_id: &str, from: u64, to: u64) -> String {
    format!(
        "{}segments/{from:020}-{to:020}.json",
        kernel_prefix(prefix, kernel_id)
    )
}

/// Key of the manifest of `from..=to`.
pub fn manifest_key(prefix: &str, kernel_id: &str, from: u64, to: u64) -> String {
    format!(
        "{}manifests/{from:020}-{to:020}.json",
        kernel_prefix(prefix, kernel_id)
    )
}

/// The range a segment or manifest key names.
pub fn range_of_key(key: &str) -> Option<(u64, u64)> {
    let name = key.rsplit('/').next()?.strip_suffix(".json")?;
    let (a, b) = name.split_once('-')?;
    if a.len() != 20 || b.len() != 20 {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_seq_and_round_trip() {
        let a = manifest_key("kernels-archive", "prod-001", 9, 10);
        let b = manifest_key("kernels-archive", "prod-001", 11, 100);
        assert!(a < b);
        assert_eq!(range_of_key(&a), Some((9, 10)));
        assert_eq!(range_of_key(&segment_key("", "k", 0, 5)), Some((0, 5)));
        assert!(segment_key("", "k", 0, 5).starts_with("k/segments/"));
        assert_eq!(range_of_key("k/manifests/notes.json"), None);
    }
}
