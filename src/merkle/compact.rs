//! The compact range of a tree's head: the roots of the complete subtrees
//! that make up leaves `0..n`, one per set bit of `n`, largest first.
//!
//! It is all the state needed to append: a new leaf merges with the
//! rightmost roots while they are the same size (amortised one node hash per
//! leaf), and the root of the whole tree is those roots folded from the
//! right. Every node an append completes is reported to the caller, so a
//! store can keep exactly the nodes proofs will need (see [`super::tiles`])
//! without reading anything back.

use super::hash::{Hash, NodeId, fold_right, node_hash};

/// The compact range `[0, size)` of a tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactRange {
    size: u64,
    /// Roots of the complete subtrees, largest (leftmost) first.
    nodes: Vec<Hash>,
}

/// The stored state does not describe a compact range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a compact range of {size} leaves has {expected} nodes, not {found}")]
pub struct CompactRangeError {
    /// The size given.
    pub size: u64,
    /// How many nodes that size needs.
    pub expected: u32,
    /// How many were given.
    pub found: usize,
}

impl CompactRange {
    /// The range of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A range restored from its size and nodes (as [`Self::nodes`] gave them).
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Result<Self, CompactRangeError> {
        if nodes.len() != size.count_ones() as usize {
            return Err(CompactRangeError {
                size,
                expected: size.count_ones(),
                found: nodes.len(),
            });
        }
        Ok(CompactRange { size, nodes })
    }

    /// How many leaves the range covers.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The roots of its complete subtrees, largest first.
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// The ids of the nodes of the compact range of `size` leaves, in the
    /// order of [`Self::nodes`].
    pub fn node_ids(size: u64) -> Vec<NodeId> {
        super::range_nodes(0, size)
    }

    /// Appends a leaf hash.
    pub fn append(&mut self, leaf: Hash) {
        self.append_with(leaf, |_, _| {});
    }

    /// Appends a leaf hash, calling `completed` with every node the append
    /// completes: the leaf itself first, then each new parent up the tree.
    pub fn append_with(&mut self, leaf: Hash, mut completed: impl FnMut(NodeId, &Hash)) {
        let mut hash = leaf;
        let mut id = NodeId::new(0, self.size);
        completed(id, &hash);
        while id.index & 1 == 1 {
            let left = self
                .nodes
                .pop()
                .expect("a set bit of the size has its node");
            hash = node_hash(&left, &hash);
            id = NodeId::new(id.level + 1, id.index >> 1);
            completed(id, &hash);
        }
        self.nodes.push(hash);
        self.size += 1;
    }

    /// The tree head `MTH(D[0:size])`.
    pub fn root(&self) -> Hash {
        fold_right(&self.nodes)
    }
}

#[cfg(test)]
mod tests {
    use super::super::hash::{empty_root, leaf_hash, root_of};
    use super::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn the_root_after_each_append_is_the_tree_head() {
        let all = leaves(300);
        let mut range = CompactRange::new();
        assert_eq!(range.root(), empty_root());
        for (i, leaf) in all.iter().enumerate() {
            range.append(*leaf);
            assert_eq!(range.size(), i as u64 + 1);
            assert_eq!(range.root(), root_of(&all[..=i]), "size {}", i + 1);
            assert_eq!(range.nodes().len(), range.size().count_ones() as usize);
        }
    }

    #[test]
    fn appends_report_every_completed_node_once() {
        let all = leaves(64);
        let mut range = CompactRange::new();
        let mut seen = Vec::new();
        for leaf in &all {
            range.append_with(*leaf, |id, hash| seen.push((id, *hash)));
        }
        // 64 leaves make 127 nodes, each reported with its subtree's hash.
        assert_eq!(seen.len(), 127);
        for (id, hash) in seen {
            let span = &all[id.first_leaf() as usize..id.end_leaf() as usize];
            assert_eq!(hash, root_of(span), "{id:?}");
        }
    }

    #[test]
    fn a_range_restored_from_its_parts_continues_the_same_tree() {
        let all = leaves(100);
        let mut range = CompactRange::new();
        for leaf in &all[..37] {
            range.append(*leaf);
        }
        let mut restored = CompactRange::from_parts(37, range.nodes().to_vec()).unwrap();
        for leaf in &all[37..] {
            restored.append(*leaf);
        }
        assert_eq!(restored.root(), root_of(&all));
        assert_eq!(
            CompactRange::from_parts(37, vec![empty_root()]),
            Err(CompactRangeError {
                size: 37,
                expected: 3,
                found: 1
            })
        );
        let ids = CompactRange::node_ids(37);
        assert_eq!(
            ids,
            vec![NodeId::new(5, 0), NodeId::new(2, 8), NodeId::new(0, 36)]
        );
    }
}
