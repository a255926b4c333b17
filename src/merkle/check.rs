//! Verifying inclusion and consistency proofs, step by step as RFC 9162
//! §2.1.3.2 and §2.1.4.2 write the algorithms (`fn`, `sn`, `fr`, `sr` are
//! the RFC's names), so that a reader can check this file against the RFC.
//!
//! The cases the RFC leaves to the caller: equal sizes need an empty proof
//! and equal roots, and a consistency proof from the empty tree is refused
//! (it proves nothing; the independent implementations tests/merkle_cross.rs
//! compares with refuse it too).

use super::hash::{Hash, node_hash};

/// Why a proof does not verify. Every variant means "not proven".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The leaf index is not inside the tree.
    #[error("leaf index {index} is not inside a tree of {size} leaves")]
    IndexOutOfRange {
        /// The leaf index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// The sizes name no consistency proof.
    #[error("no consistency proof can go from {old} to {new} leaves")]
    BadSizes {
        /// The old size.
        old: u64,
        /// The new size.
        new: u64,
    },
    /// The proof has more hashes than the sizes call for.
    #[error("the proof has too many hashes")]
    TooLong,
    /// The proof has fewer hashes than the sizes call for.
    #[error("the proof has too few hashes")]
    TooShort,
    /// The proof leads to another root than the one given.
    #[error("the proof leads to root {computed}, not {expected}")]
    RootMismatch {
        /// The root the proof computes.
        computed: Hash,
        /// The root it should reach.
        expected: Hash,
    },
    /// The consistency proof does not rebuild the old root.
    #[error("the proof rebuilds old root {computed}, not {expected}")]
    OldRootMismatch {
        /// The old root the proof computes.
        computed: Hash,
        /// The old root given.
        expected: Hash,
    },
}

/// Checks that `proof` proves leaf hash `leaf` at `index` in the tree of
/// `size` leaves whose root is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    // 1. leaf_index must be below tree_size.
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    // 2.-3.
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    // 4.
    for p in proof {
        if sn == 0 {
            return Err(ProofError::TooLong);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    // 5.
    if sn != 0 {
        return Err(ProofError::TooShort);
    }
    if r != *root {
        return Err(ProofError::RootMismatch {
            computed: r,
            expected: *root,
        });
    }
    Ok(())
}

/// Checks that `proof` proves the tree of `old_size` leaves with root
/// `old_root` to be a prefix of the tree of `new_size` leaves with root
/// `new_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size == 0 || old_size > new_size {
        return Err(ProofError::BadSizes {
            old: old_size,
            new: new_size,
        });
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::TooLong);
        }
        if old_root != new_root {
            return Err(ProofError::RootMismatch {
                computed: *old_root,
                expected: *new_root,
            });
        }
        return Ok(());
    }
    // 1. An empty path proves nothing.
    if proof.is_empty() {
        return Err(ProofError::TooShort);
    }
    // 2. A power-of-two old tree is itself the first node of the path.
    let mut path = proof.iter();
    let first = if old_size.is_power_of_two() {
        *old_root
    } else {
        *path.next().expect("the proof is not empty")
    };
    // 3.-4.
    let (mut fn_, mut sn) = (old_size - 1, new_size - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    // 5.
    let (mut fr, mut sr) = (first, first);
    // 6.
    for c in path {
        if sn == 0 {
            return Err(ProofError::TooLong);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    // 7.
    if sn != 0 {
        return Err(ProofError::TooShort);
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch {
            computed: fr,
            expected: *old_root,
        });
    }
    if sr != *new_root {
        return Err(ProofError::RootMismatch {
            computed: sr,
            expected: *new_root,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::compact::CompactRange;
    use super::super::hash::leaf_hash;
    use super::super::proof::{MemoryNodes, consistency_proof, inclusion_proof};
    use super::*;

    fn flip(hash: &Hash, bit: usize) -> Hash {
        let mut h = *hash;
        h.0[bit / 8] ^= 1 << (bit % 8);
        h
    }

    /// Every inclusion proof of a tree of up to 300 leaves verifies; a proof
    /// with any one bit flipped, or for another leaf, or a shorter or longer
    /// one, does not.
    #[test]
    fn every_inclusion_proof_verifies_and_every_damaged_one_fails() {
        let leaves: Vec<Hash> = (0..300u32).map(|i| leaf_hash(&i.to_le_bytes())).collect();
        let nodes = MemoryNodes::of_leaves(&leaves);
        let mut range = CompactRange::new();
        for (n, leaf) in leaves.iter().enumerate() {
            range.append(*leaf);
            let (size, root) = (n as u64 + 1, range.root());
            for m in 0..size {
                let proof = inclusion_proof(m, size, &nodes).unwrap();
                let leaf = &leaves[m as usize];
                assert_eq!(verify_inclusion(m, size, leaf, &proof, &root), Ok(()));
                // Damage, cheaply varied with (m, size).
                let bit = (m * 31 + size * 7) as usize % 256;
                assert!(verify_inclusion(m, size, &flip(leaf, bit), &proof, &root).is_err());
                assert!(verify_inclusion(m, size, leaf, &proof, &flip(&root, bit)).is_err());
                if !proof.is_empty() {
                    let at = (m as usize + bit) % proof.len();
                    let mut bad = proof.clone();
                    bad[at] = flip(&bad[at], bit);
                    assert!(verify_inclusion(m, size, leaf, &bad, &root).is_err());
                    assert!(
                        verify_inclusion(m, size, leaf, &proof[1..], &root).is_err(),
                        "{m}/{size}"
                    );
                }
                let mut longer = proof.clone();
                longer.push(root);
                assert!(verify_inclusion(m, size, leaf, &longer, &root).is_err());
                if size > 1 {
                    let other = (m + 1) % size;
                    assert!(verify_inclusion(other, size, leaf, &proof, &root).is_err());
                }
            }
        }
    }

    /// Every consistency proof between sizes up to 200 verifies; damaged ones
    /// and swapped roots do not.
    #[test]
    fn every_consistency_proof_verifies_and_every_damaged_one_fails() {
        let leaves: Vec<Hash> = (0..200u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let nodes = MemoryNodes::of_leaves(&leaves);
        let mut roots = Vec::new();
        let mut range = CompactRange::new();
        for leaf in &leaves {
            range.append(*leaf);
            roots.push(range.root());
        }
        for new in 1..=leaves.len() as u64 {
            let new_root = roots[new as usize - 1];
            for old in 1..=new {
                let old_root = roots[old as usize - 1];
                let proof = consistency_proof(old, new, &nodes).unwrap();
                assert_eq!(
                    verify_consistency(old, new, &old_root, &new_root, &proof),
                    Ok(()),
                    "{old}->{new}"
                );
                let bit = (old * 13 + new * 5) as usize % 256;
                assert!(
                    verify_consistency(old, new, &flip(&old_root, bit), &new_root, &proof).is_err()
                );
                assert!(
                    verify_consistency(old, new, &old_root, &flip(&new_root, bit), &proof).is_err()
                );
                if !proof.is_empty() {
                    let at = (old as usize + bit) % proof.len();
                    let mut bad = proof.clone();
                    bad[at] = flip(&bad[at], bit);
                    assert!(
                        verify_consistency(old, new, &old_root, &new_root, &bad).is_err(),
                        "{old}->{new} flipped {at}"
                    );
                    let shorter = &proof[..proof.len() - 1];
                    assert!(verify_consistency(old, new, &old_root, &new_root, shorter).is_err());
                }
                if old < new {
                    assert!(
                        verify_consistency(old, new, &new_root, &old_root, &proof).is_err(),
                        "swapped roots {old}->{new}"
                    );
                }
                let mut longer = proof.clone();
                longer.push(new_root);
                assert!(verify_consistency(old, new, &old_root, &new_root, &longer).is_err());
            }
        }
    }

    #[test]
    fn the_edge_cases_are_refused() {
        let x = leaf_hash(b"x");
        assert_eq!(
            verify_inclusion(0, 0, &x, &[], &x),
            Err(ProofError::IndexOutOfRange { index: 0, size: 0 })
        );
        assert_eq!(verify_inclusion(0, 1, &x, &[], &x), Ok(()));
        assert_eq!(
            verify_consistency(0, 0, &x, &x, &[]),
            Err(ProofError::BadSizes { old: 0, new: 0 })
        );
        assert_eq!(
            verify_consistency(2, 1, &x, &x, &[]),
            Err(ProofError::BadSizes { old: 2, new: 1 })
        );
        assert_eq!(verify_consistency(3, 3, &x, &x, &[]), Ok(()));
        assert_eq!(
            verify_consistency(3, 3, &x, &x, &[x]),
            Err(ProofError::TooLong)
        );
        assert_eq!(
            verify_consistency(1, 2, &x, &x, &[]),
            Err(ProofError::TooShort)
        );
    }
}
