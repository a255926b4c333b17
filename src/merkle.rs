//! The RFC 9162 (RFC 6962) Merkle tree kept beside the hash chain: pure tree
//! math, no I/O (like [`crate::canonical`]).
//!
//! Leaf `i` of a kernel's tree is entry `i`; its leaf data is the 32 raw
//! bytes of the entry's `entry_hash`. A leaf hashes as `SHA-256(0x00 ‖ data)`,
//! an interior node as `SHA-256(0x01 ‖ left ‖ right)`, and the tree head of
//! `n` leaves is `MTH(D[0:n])` of RFC 9162 §2.1.1 (the empty tree hashes to
//! `SHA-256("")`).
//!
//! The parts:
//!
//! * [`hash`] — the hashes themselves (leaf, node, empty root) and the
//!   addresses of the tree's nodes and the ranges of leaves they cover: the
//!   parts below build on it, and it imports none of them;
//! * [`compact`] — the compact range of the head: O(log n) hashes that take
//!   one more leaf and give the root, reporting every node they complete (the
//!   nodes a store keeps);
//! * [`proof`] — inclusion and consistency proofs built from stored nodes,
//!   read through [`proof::NodeSource`] in one batch of O(log n) nodes;
//! * [`tiles`] — the tlog-tiles layout of those nodes (tiles of 256 hashes
//!   at levels 0, 8, 16, …), a [`proof::NodeSource`] over any tile store, and
//!   an in-memory tile store;
//! * [`check`] — proof verification exactly as RFC 9162 §2.1.3.2 and
//!   §2.1.4.2 describe it.
//!
//! docs/proofs.md describes how the service stores the tree and signs its
//! heads.

pub mod check;
pub mod compact;
pub mod hash;
pub mod proof;
pub mod tiles;

pub use check::{ProofError, verify_consistency, verify_inclusion};
pub use compact::CompactRange;
pub use hash::{
    HASH_SIZE, Hash, NodeId, empty_root, entry_leaf_hash, fold_right, leaf_hash, node_hash,
    range_nodes, root_of,
};
pub use proof::{NodeSource, consistency_proof, inclusion_proof, tree_root};
