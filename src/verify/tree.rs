//! The Merkle tree head of a bundle's first entries, built while the bundle
//! is verified, and its comparison with a signed checkpoint.
//!
//! The collector feeds each entry's recomputed hash, in order, into a
//! compact range (O(log n) memory, one leaf hash and amortised one node hash
//! per entry); the leaf of an entry is its hash as recomputed from its
//! fields, so a bundle whose chain was rewritten and re-hashed has other
//! leaves, and another tree head, than the log that was signed.

use crate::chain::ChainHash;
use crate::checkpoint::Checkpoint;
use crate::merkle::{CompactRange, Hash, entry_leaf_hash};

/// Builds the tree head of the first `want` entries.
pub(super) struct TreeBuilder {
    want: u64,
    seen: u64,
    range: CompactRange,
    unhashable: Option<u64>,
}

impl TreeBuilder {
    pub(super) fn new(want: u64) -> TreeBuilder {
        TreeBuilder {
            want,
            seen: 0,
            range: CompactRange::new(),
            unhashable: None,
        }
    }

    /// The next entry's recomputed hash (`None` when it could not be computed).
    pub(super) fn push(&mut self, computed: Option<&ChainHash>) {
        if self.seen < self.want {
            match computed {
                Some(ChainHash::Digest(hash)) => self.range.append(entry_leaf_hash(hash)),
                _ => {
                    self.unhashable.get_or_insert(self.seen);
                }
            }
        }
        self.seen += 1;
    }

    pub(super) fn finish(self, from_seq: Option<u64>) -> TreeHead {
        TreeHead {
            size: self.want,
            entries: self.seen,
            leaves: self.range.size(),
            root: self.range.root(),
            unhashable: self.unhashable,
            from_seq: from_seq.unwrap_or(0),
        }
    }
}

/// The tree head computed over a bundle's first entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeHead {
    /// How many entries the tree was asked to cover.
    pub size: u64,
    /// How many entries the bundle holds.
    pub entries: u64,
    /// How many leaves were hashed into the tree.
    pub leaves: u64,
    /// The tree head of those leaves.
    pub root: Hash,
    /// The first entry (index) whose hash could not be recomputed.
    pub unhashable: Option<u64>,
    /// The bundle's first seq (`from_seq`, 0 when absent).
    pub from_seq: u64,
}

/// Why a bundle's tree head does not match a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeHeadProblem {
    /// The bundle is a range that does not start at the log's first entry.
    #[error("the bundle starts at seq {0}: a checkpoint covers a log from seq 0")]
    StartsLater(u64),
    /// The bundle has fewer entries than the checkpoint covers.
    #[error("the bundle has {entries} entries, the checkpoint covers {size}")]
    TooShort {
        /// Entries in the bundle.
        entries: u64,
        /// Entries the checkpoint covers.
        size: u64,
    },
    /// An entry whose hash could not be recomputed cannot be a leaf.
    #[error("entry {0} cannot be hashed, so the tree head cannot be computed")]
    Unhashable(u64),
    /// The tree heads differ: these are not the entries that were signed.
    #[error(
        "the tree head of the first {size} entries is {computed}, the signed checkpoint's is {signed}: these are not the entries the log signed"
    )]
    RootMismatch {
        /// Entries covered.
        size: u64,
        /// The bundle's tree head.
        computed: Hash,
        /// The checkpoint's.
        signed: Hash,
    },
}

impl TreeHeadProblem {
    /// True when the bundle cannot be checked against the checkpoint at all
    /// (unusable input), rather than failing the check.
    pub fn is_unusable(&self) -> bool {
        matches!(
            self,
            TreeHeadProblem::StartsLater(_) | TreeHeadProblem::TooShort { .. }
        )
    }
}

impl TreeHead {
    /// Compares with a (verified) checkpoint for `self.size` entries.
    pub fn check(&self, checkpoint: &Checkpoint) -> Result<(), TreeHeadProblem> {
        debug_assert_eq!(checkpoint.size, self.size);
        if self.from_seq != 0 {
            return Err(TreeHeadProblem::StartsLater(self.from_seq));
        }
        if self.entries < self.size {
            return Err(TreeHeadProblem::TooShort {
                entries: self.entries,
                size: self.size,
            });
        }
        if let Some(index) = self.unhashable {
            return Err(TreeHeadProblem::Unhashable(index));
        }
        if self.root != checkpoint.root {
            return Err(TreeHeadProblem::RootMismatch {
                size: self.size,
                computed: self.root,
                signed: checkpoint.root,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{self, ExportHeader};
    use crate::entry::{Entry, GENESIS_HASH};
    use crate::merkle::root_of;
    use std::sync::atomic::AtomicU64;

    fn bundle_of(entries: &[Entry]) -> Vec<u8> {
        let root = entries.last().unwrap().entry_hash.clone();
        let header = ExportHeader {
            kernel_id: "k",
            variant: "strict",
            exported_at_ms: 1,
            from_seq: None,
            anchor_hash: None,
            root_hash: &root,
        };
        bundle::to_vec(&header, entries).unwrap()
    }

    fn leaves(entries: &[Entry]) -> Vec<Hash> {
        entries
            .iter()
            .map(|e| entry_leaf_hash(&crate::chain::decode_hex(e.entry_hash.as_bytes()).unwrap()))
            .collect()
    }

    #[test]
    fn a_streamed_bundle_gives_the_tree_head_of_its_entries_and_a_rewrite_another() {
        let entries = crate::entry::test_chain(3000, 0, GENESIS_HASH);
        let signed = Checkpoint::new("o", 2500, root_of(&leaves(&entries[..2500])));
        let (report, head) = super::super::verify_bundle_with_tree(
            &bundle_of(&entries)[..],
            &AtomicU64::new(0),
            2500,
        )
        .unwrap();
        assert!(report.valid, "{:?}", report.errors);
        assert_eq!((head.entries, head.leaves), (3000, 2500));
        assert_eq!(head.check(&signed), Ok(()));

        // Entry 10 changed and every later hash recomputed: a valid chain,
        // but not the tree that was signed.
        let mut rewritten = entries.clone();
        rewritten[10].intent = "rewritten".into();
        for i in 10..rewritten.len() {
            if i > 10 {
                rewritten[i].prev_hash = rewritten[i - 1].entry_hash.clone();
            }
            rewritten[i].entry_hash = rewritten[i].compute_hash();
        }
        let (report, head) = super::super::verify_bundle_with_tree(
            &bundle_of(&rewritten)[..],
            &AtomicU64::new(0),
            2500,
        )
        .unwrap();
        assert!(report.valid, "{:?}", report.errors);
        assert!(matches!(
            head.check(&signed),
            Err(TreeHeadProblem::RootMismatch { size: 2500, .. })
        ));
    }

    fn digest(i: u8) -> ChainHash {
        ChainHash::Digest([i; 32])
    }

    #[test]
    fn the_head_covers_exactly_the_first_entries() {
        let mut b = TreeBuilder::new(3);
        for i in 0..5 {
            b.push(Some(&digest(i)));
        }
        let head = b.finish(None);
        let leaves: Vec<Hash> = (0..3).map(|i| entry_leaf_hash(&[i; 32])).collect();
        assert_eq!((head.entries, head.leaves), (5, 3));
        assert_eq!(head.root, root_of(&leaves));
        assert_eq!(
            head.check(&Checkpoint::new("o", 3, root_of(&leaves))),
            Ok(())
        );
        let other = root_of(&leaves[..2]);
        assert!(matches!(
            head.check(&Checkpoint::new("o", 3, other)),
            Err(TreeHeadProblem::RootMismatch { .. })
        ));
    }

    #[test]
    fn short_late_or_unhashable_bundles_do_not_match() {
        let root = root_of(&[]);
        let mut b = TreeBuilder::new(4);
        b.push(Some(&digest(1)));
        let p = b
            .finish(None)
            .check(&Checkpoint::new("o", 4, root))
            .unwrap_err();
        assert_eq!(
            p,
            TreeHeadProblem::TooShort {
                entries: 1,
                size: 4
            }
        );
        assert!(p.is_unusable());

        let b = TreeBuilder::new(0);
        let p = b
            .finish(Some(7))
            .check(&Checkpoint::new("o", 0, root))
            .unwrap_err();
        assert_eq!(p, TreeHeadProblem::StartsLater(7));

        let mut b = TreeBuilder::new(2);
        b.push(Some(&digest(1)));
        b.push(Some(&ChainHash::Other("zz".into())));
        let p = b
            .finish(None)
            .check(&Checkpoint::new("o", 2, root))
            .unwrap_err();
        assert_eq!(p, TreeHeadProblem::Unhashable(1));
        assert!(!p.is_unusable());

        // The empty tree of an empty bundle matches the empty checkpoint.
        assert_eq!(
            TreeBuilder::new(0)
                .finish(None)
                .check(&Checkpoint::new("o", 0, root)),
            Ok(())
        );
    }
}
