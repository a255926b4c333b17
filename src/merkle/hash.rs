//! The tree's building blocks: its SHA-256 hashes (a leaf's, an interior
//! node's, the empty tree's), the address of a complete subtree
//! ([`NodeId`]), the subtrees that cover a range of leaves and how their
//! hashes fold into the range's, and `MTH` by RFC 9162's recursive
//! definition as the reference the faster paths are tested against. Pure
//! functions over bytes; the other parts of [`crate::merkle`] build on them.

use std::fmt;

use base64::Engine;
use sha2::{Digest, Sha256};

/// The size of every hash in the tree, in bytes.
pub const HASH_SIZE: usize = 32;

/// A SHA-256 hash of the tree: a leaf hash, a node hash or a root.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; HASH_SIZE]);

impl Hash {
    /// The hash as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Option<Hash> {
        let mut out = [0u8; HASH_SIZE];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(Hash(out))
    }

    /// The hash in standard base64 (as checkpoints write it).
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// Parses the canonical standard base64 of 32 bytes.
    pub fn from_base64(text: &str) -> Option<Hash> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?;
        Some(Hash(bytes.try_into().ok()?))
    }

    /// The 32 bytes of a slice of exactly that length.
    pub fn from_slice(bytes: &[u8]) -> Option<Hash> {
        Some(Hash(bytes.try_into().ok()?))
    }
}

impl serde::Serialize for Hash {
    /// As 64 lowercase hex digits.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Hash {
    /// From 64 hex digits.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Hash, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Hash::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not 64 hex digits")))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The hash of a leaf holding `data`: `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    Hash(h.finalize().into())
}

/// The leaf hash of an entry, from the 32 raw bytes of its `entry_hash`.
pub fn entry_leaf_hash(entry_hash: &[u8; HASH_SIZE]) -> Hash {
    // 33 bytes and SHA-256's padding fit one block.
    let mut block = [0u8; 64];
    block[1..33].copy_from_slice(entry_hash);
    block[33] = 0x80;
    block[56..].copy_from_slice(&(33u64 * 8).to_be_bytes());
    sha256_blocks(&[block])
}

/// The hash of an interior node: `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    // 65 bytes and SHA-256's padding fill two blocks.
    let mut blocks = [[0u8; 64]; 2];
    blocks[0][0] = 1;
    blocks[0][1..33].copy_from_slice(&left.0);
    blocks[0][33..].copy_from_slice(&right.0[..31]);
    blocks[1][0] = right.0[31];
    blocks[1][1] = 0x80;
    blocks[1][56..].copy_from_slice(&(65u64 * 8).to_be_bytes());
    sha256_blocks(&blocks)
}

/// SHA-256 of input already padded into `blocks`, straight through the
/// compression function: leaves and nodes are hashed once or twice per
/// entry on the commit path and in bundle verification, and their sizes are
/// fixed, so the general streaming hasher's buffering is skipped.
fn sha256_blocks(blocks: &[[u8; 64]]) -> Hash {
    const IV: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut state = IV;
    for block in blocks {
        let block = sha2::digest::generic_array::GenericArray::from_slice(block);
        sha2::compress256(&mut state, std::slice::from_ref(block));
    }
    let mut out = [0u8; HASH_SIZE];
    for (bytes, word) in out.chunks_exact_mut(4).zip(state) {
        bytes.copy_from_slice(&word.to_be_bytes());
    }
    Hash(out)
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Hash(Sha256::digest([]).into())
}

/// A complete subtree of the tree: the node at `level` (0 = leaves) whose
/// leaves are `index << level .. (index + 1) << level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    /// Height above the leaves.
    pub level: u8,
    /// Position among the nodes of its level, from the left.
    pub index: u64,
}

impl NodeId {
    /// The node at `level`, `index`.
    pub const fn new(level: u8, index: u64) -> NodeId {
        NodeId { level, index }
    }

    /// The first leaf under this node.
    pub fn first_leaf(&self) -> u64 {
        self.index << self.level
    }

    /// One past the last leaf under this node.
    pub fn end_leaf(&self) -> u64 {
        (self.index + 1) << self.level
    }
}

/// The complete subtrees that make up the leaves `begin..end`, left to right,
/// each as large as its position allows (the compact range of RFC 9162
/// implementations). Their hashes, folded from the right with
/// [`node_hash`], give `MTH(D[begin:end])` whenever `begin` is a multiple of
/// a power of two at least `end - begin` (every range a proof uses is).
pub fn range_nodes(begin: u64, end: u64) -> Vec<NodeId> {
    let mut nodes = Vec::new();
    let mut at = begin;
    while at < end {
        // The largest aligned block at `at` that fits before `end`.
        let align = if at == 0 { 63 } else { at.trailing_zeros() };
        let fit = 63 - (end - at).leading_zeros();
        let level = align.min(fit);
        nodes.push(NodeId::new(level as u8, at >> level));
        at += 1u64 << level;
    }
    nodes
}

/// Folds the hashes of [`range_nodes`] from the right into the range's hash
/// (the empty root for no hashes).
pub fn fold_right(hashes: &[Hash]) -> Hash {
    let mut iter = hashes.iter().rev();
    let Some(last) = iter.next() else {
        return empty_root();
    };
    iter.fold(*last, |acc, left| node_hash(left, &acc))
}

/// `MTH(D[0:n])` of the given leaf hashes, by the recursive definition of
/// RFC 9162 §2.1.1: the reference the faster paths are tested against.
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split_point(n as u64) as usize;
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// The largest power of two smaller than `n` (for `n >= 2`): where RFC 9162
/// splits a tree of `n` leaves.
pub(crate) fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_size_hashes_are_sha256() {
        for seed in 0..200u32 {
            let a: [u8; 32] = Sha256::digest(seed.to_be_bytes()).into();
            let b: [u8; 32] = Sha256::digest(a).into();
            assert_eq!(entry_leaf_hash(&a), leaf_hash(&a));
            let mut block = vec![1u8];
            block.extend_from_slice(&a);
            block.extend_from_slice(&b);
            assert_eq!(
                node_hash(&Hash(a), &Hash(b)),
                Hash(Sha256::digest(&block).into())
            );
        }
    }

    #[test]
    fn hashes_read_and_write_hex_and_base64() {
        let x = leaf_hash(b"x");
        assert_eq!(Hash::from_hex(&x.to_hex()), Some(x));
        assert_eq!(Hash::from_hex(&x.to_hex().to_uppercase()), Some(x));
        assert_eq!(Hash::from_base64(&x.to_base64()), Some(x));
        assert_eq!(Hash::from_hex(&x.to_hex()[1..]), None);
        assert_eq!(Hash::from_base64("AAAA"), None);
        assert_eq!(x.to_base64().len(), 44);
        let json = serde_json::to_string(&x).unwrap();
        assert_eq!(json, format!("\"{}\"", x.to_hex()));
        assert_eq!(serde_json::from_str::<Hash>(&json).unwrap(), x);
        assert!(serde_json::from_str::<Hash>("\"abc\"").is_err());
        assert!(serde_json::from_str::<Hash>("12").is_err());
    }

    #[test]
    fn range_nodes_cover_the_range_with_aligned_blocks() {
        assert_eq!(range_nodes(0, 0), vec![]);
        assert_eq!(
            range_nodes(0, 7),
            vec![NodeId::new(2, 0), NodeId::new(1, 2), NodeId::new(0, 6)]
        );
        assert_eq!(range_nodes(4, 8), vec![NodeId::new(2, 1)]);
        assert_eq!(
            range_nodes(3, 9),
            vec![NodeId::new(0, 3), NodeId::new(2, 1), NodeId::new(0, 8)]
        );
        for begin in 0..40u64 {
            for end in begin..80 {
                let nodes = range_nodes(begin, end);
                let mut at = begin;
                for n in &nodes {
                    assert_eq!(n.first_leaf(), at);
                    at = n.end_leaf();
                }
                assert_eq!(at, end);
            }
        }
    }

    #[test]
    fn split_points_are_the_largest_smaller_power_of_two() {
        let cases = [
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 4),
            (8, 4),
            (9, 8),
            (1 << 40, 1 << 39),
        ];
        for (n, k) in cases {
            assert_eq!(split_point(n), k, "{n}");
        }
        assert_eq!(split_point(u64::MAX), 1 << 63);
    }
}
