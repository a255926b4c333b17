//! Building inclusion and consistency proofs (RFC 9162 §2.1.3.1, §2.1.4.1)
//! from the nodes a store keeps.
//!
//! Every element of a proof is the hash of a range of leaves `D[lo:hi]`:
//! either a complete subtree, or the range at the right edge of the tree,
//! which is a few complete subtrees folded together (a compact range). So a
//! proof is planned as a list of ranges, the complete subtrees they need are
//! asked of the [`NodeSource`] in one batch (O(log n) of them), and the
//! ranges are hashed from the answer. The source is the store's business:
//! [`super::tiles::TiledNodes`] answers from tlog-tiles, and a store may
//! answer any other way.

use super::hash::{Hash, NodeId, fold_right, range_nodes, split_point};

/// Where proofs read the hashes of complete subtrees.
///
/// Every node asked for lies inside the tree size the proof is for, so it is
/// complete and never changes once written.
pub trait NodeSource {
    /// Why a read failed.
    type Error;

    /// The hashes of `ids`, in the same order.
    fn read_nodes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, Self::Error>;
}

/// Why a proof could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError<E> {
    /// The arguments name no proof (a leaf past the tree, a shrinking
    /// tree, an empty old tree): a client's mistake, answered 400.
    #[error("{0}")]
    OutOfRange(String),
    /// The node source failed.
    #[error("reading stored tree nodes: {0}")]
    Source(E),
    /// The node source answered with the wrong number of hashes.
    #[error("the node source answered {got} hashes for {asked} nodes")]
    ShortAnswer {
        /// Hashes asked for.
        asked: usize,
        /// Hashes answered.
        got: usize,
    },
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves, from the
/// leaf's sibling upwards (RFC 9162 `PATH(m, D[n])`).
pub fn inclusion_proof<S: NodeSource>(
    index: u64,
    size: u64,
    source: &S,
) -> Result<Vec<Hash>, BuildError<S::Error>> {
    if index >= size {
        return Err(BuildError::OutOfRange(format!(
            "leaf {index} is not in a tree of {size} leaves"
        )));
    }
    let mut ranges = Vec::new();
    inclusion_ranges(index, 0, size, &mut ranges);
    hash_ranges(&ranges, source)
}

/// The consistency proof from the tree of `old` leaves to the tree of `new`
/// leaves (RFC 9162 `PROOF(m, D[n])`); empty when the sizes are equal.
pub fn consistency_proof<S: NodeSource>(
    old: u64,
    new: u64,
    source: &S,
) -> Result<Vec<Hash>, BuildError<S::Error>> {
    if old == 0 || old > new {
        return Err(BuildError::OutOfRange(format!(
            "no consistency proof from {old} to {new} leaves (need 1 <= from_size <= to_size)"
        )));
    }
    let mut ranges = Vec::new();
    if old < new {
        consistency_ranges(old, 0, new, true, &mut ranges);
    }
    hash_ranges(&ranges, source)
}

/// The tree head of `size` leaves, from stored nodes (for a past size).
pub fn tree_root<S: NodeSource>(size: u64, source: &S) -> Result<Hash, BuildError<S::Error>> {
    let ids = range_nodes(0, size);
    let hashes = read(&ids, source)?;
    Ok(fold_right(&hashes))
}

/// `PATH(index, D[lo:hi])` as ranges of leaves, lowest first.
fn inclusion_ranges(index: u64, lo: u64, hi: u64, out: &mut Vec<(u64, u64)>) {
    if hi - lo <= 1 {
        return;
    }
    let k = split_point(hi - lo);
    if index - lo < k {
        inclusion_ranges(index, lo, lo + k, out);
        out.push((lo + k, hi));
    } else {
        inclusion_ranges(index, lo + k, hi, out);
        out.push((lo, lo + k));
    }
}

/// `SUBPROOF(m, D[lo:hi], whole)` as ranges of leaves, lowest first.
fn consistency_ranges(m: u64, lo: u64, hi: u64, whole: bool, out: &mut Vec<(u64, u64)>) {
    let n = hi - lo;
    if m == n {
        if !whole {
            out.push((lo, hi));
        }
        return;
    }
    let k = split_point(n);
    if m <= k {
        consistency_ranges(m, lo, lo + k, whole, out);
        out.push((lo + k, hi));
    } else {
        consistency_ranges(m - k, lo + k, hi, false, out);
        out.push((lo, lo + k));
    }
}

/// Reads the nodes of every range in one batch and hashes each range.
fn hash_ranges<S: NodeSource>(
    ranges: &[(u64, u64)],
    source: &S,
) -> Result<Vec<Hash>, BuildError<S::Error>> {
    let per_range: Vec<Vec<NodeId>> = ranges.iter().map(|&(lo, hi)| range_nodes(lo, hi)).collect();
    let ids: Vec<NodeId> = per_range.iter().flatten().copied().collect();
    let hashes = read(&ids, source)?;
    let mut at = 0;
    Ok(per_range
        .iter()
        .map(|nodes| {
            let range = &hashes[at..at + nodes.len()];
            at += nodes.len();
            fold_right(range)
        })
        .collect())
}

fn read<S: NodeSource>(ids: &[NodeId], source: &S) -> Result<Vec<Hash>, BuildError<S::Error>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let hashes = source.read_nodes(ids).map_err(BuildError::Source)?;
    if hashes.len() != ids.len() {
        return Err(BuildError::ShortAnswer {
            asked: ids.len(),
            got: hashes.len(),
        });
    }
    Ok(hashes)
}

/// The nodes of a tree held in memory, every level complete: the simplest
/// source, for tests (a store keeps only tiles, see [`super::tiles`]).
#[derive(Debug, Default, Clone)]
pub struct MemoryNodes {
    /// `levels[l][i]` is the hash of node `(l, i)`.
    pub levels: Vec<Vec<Hash>>,
}

impl MemoryNodes {
    /// The nodes of the tree of `leaves`.
    pub fn of_leaves(leaves: &[Hash]) -> Self {
        let mut nodes = MemoryNodes::default();
        let mut range = super::CompactRange::new();
        for leaf in leaves {
            range.append_with(*leaf, |id, hash| {
                let level = id.level as usize;
                if nodes.levels.len() <= level {
                    nodes.levels.resize(level + 1, Vec::new());
                }
                debug_assert_eq!(nodes.levels[level].len() as u64, id.index);
                nodes.levels[level].push(*hash);
            });
        }
        nodes
    }
}

impl NodeSource for MemoryNodes {
    type Error = String;

    fn read_nodes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, String> {
        ids.iter()
            .map(|id| {
                self.levels
                    .get(id.level as usize)
                    .and_then(|level| level.get(id.index as usize))
                    .copied()
                    .ok_or_else(|| format!("no node {id:?}"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::hash::{leaf_hash, root_of};
    use super::*;

    /// `PATH(m, D[n])` straight from the RFC's recursive definition.
    fn reference_path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        let n = leaves.len();
        if n <= 1 {
            return Vec::new();
        }
        let k = split_point(n as u64) as usize;
        if m < k {
            let mut p = reference_path(m, &leaves[..k]);
            p.push(root_of(&leaves[k..]));
            p
        } else {
            let mut p = reference_path(m - k, &leaves[k..]);
            p.push(root_of(&leaves[..k]));
            p
        }
    }

    /// `SUBPROOF(m, D[n], b)` straight from the RFC.
    fn reference_subproof(m: usize, leaves: &[Hash], b: bool) -> Vec<Hash> {
        let n = leaves.len();
        if m == n {
            return if b { Vec::new() } else { vec![root_of(leaves)] };
        }
        let k = split_point(n as u64) as usize;
        if m <= k {
            let mut p = reference_subproof(m, &leaves[..k], b);
            p.push(root_of(&leaves[k..]));
            p
        } else {
            let mut p = reference_subproof(m - k, &leaves[k..], false);
            p.push(root_of(&leaves[..k]));
            p
        }
    }

    #[test]
    fn proofs_match_the_rfc_definitions_for_every_small_tree() {
        let leaves: Vec<Hash> = (0..70u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let nodes = MemoryNodes::of_leaves(&leaves);
        for n in 1..=leaves.len() {
            for m in 0..n {
                assert_eq!(
                    inclusion_proof(m as u64, n as u64, &nodes).unwrap(),
                    reference_path(m, &leaves[..n]),
                    "inclusion {m}/{n}"
                );
            }
            for m in 1..=n {
                let want = if m == n {
                    Vec::new()
                } else {
                    reference_subproof(m, &leaves[..n], true)
                };
                assert_eq!(
                    consistency_proof(m as u64, n as u64, &nodes).unwrap(),
                    want,
                    "consistency {m}->{n}"
                );
            }
        }
    }

    #[test]
    fn out_of_range_arguments_are_refused() {
        let nodes = MemoryNodes::of_leaves(&[leaf_hash(b"a"), leaf_hash(b"b")]);
        for (index, size) in [(0, 0), (2, 2), (5, 2)] {
            assert!(matches!(
                inclusion_proof(index, size, &nodes),
                Err(BuildError::OutOfRange(_))
            ));
        }
        for (old, new) in [(0, 0), (0, 2), (3, 2)] {
            assert!(matches!(
                consistency_proof(old, new, &nodes),
                Err(BuildError::OutOfRange(_))
            ));
        }
        // Past what the source holds: its error, not a panic.
        assert!(matches!(
            inclusion_proof(3, 4, &nodes),
            Err(BuildError::Source(_))
        ));
    }

    #[test]
    fn a_source_that_answers_short_is_an_error() {
        struct Short;
        impl NodeSource for Short {
            type Error = ();
            fn read_nodes(&self, _: &[NodeId]) -> Result<Vec<Hash>, ()> {
                Ok(vec![Hash::default()])
            }
        }
        assert_eq!(
            inclusion_proof(0, 8, &Short),
            Err(BuildError::ShortAnswer { asked: 3, got: 1 })
        );
    }
}
