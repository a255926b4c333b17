//! The tree's nodes in the layout of C2SP tlog-tiles: a tile at level `L`
//! holds up to 256 consecutive node hashes of tree level `8·L` (tile 0 at
//! level 0 holds leaf hashes 0..256, tile 0 at level 1 holds the roots of
//! the first 256 full level-0 tiles, …).
//!
//! Only the hashes at levels 0, 8, 16, … are stored (about 32.1 bytes per
//! leaf); a node in between is the root of a run of at most 128 hashes of
//! one tile, hashed on reading. A proof touches at most two tiles per tile
//! level (the path's and the right edge's), so O(log₂₅₆ n) reads answer it:
//! three levels cover 16.7M entries. [`TiledNodes`] turns any
//! [`TileSource`] (a store's tile reader) into the [`NodeSource`] proofs
//! read, and [`MemoryTiles`] is a complete tile store in memory for tests
//! and benchmarks.

use std::cell::Cell;
use std::collections::BTreeMap;

use super::compact::CompactRange;
use super::hash::{HASH_SIZE, Hash, NodeId, node_hash};
use super::proof::NodeSource;

/// Tree levels per tile level.
pub const TILE_HEIGHT: u8 = 8;
/// Hashes in a full tile.
pub const TILE_WIDTH: usize = 1 << TILE_HEIGHT;

/// A tile: `level` is the tile level (tree level `8·level`), `index` its
/// position in that level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TileId {
    /// Tile level (its hashes are tree nodes at level `8·level`).
    pub level: u8,
    /// Index among the tiles of its level.
    pub index: u64,
}

impl TileId {
    /// The tile's path in tlog-tiles (`tile/<L>/<N>[.p/<W>]`): `width` below
    /// 256 names the partial tile of that width.
    pub fn path(&self, width: usize) -> String {
        let mut groups = Vec::new();
        let mut n = self.index;
        loop {
            groups.push(n % 1000);
            n /= 1000;
            if n == 0 {
                break;
            }
        }
        let digits: Vec<String> = groups
            .iter()
            .rev()
            .enumerate()
            .map(|(i, g)| {
                let x = if i + 1 < groups.len() { "x" } else { "" };
                format!("{x}{g:03}")
            })
            .collect();
        let mut path = format!("tile/{}/{}", self.level, digits.join("/"));
        if width < TILE_WIDTH {
            path.push_str(&format!(".p/{width}"));
        }
        path
    }
}

/// Where a node is stored, when it is one of the stored levels: its tile and
/// its position in the tile. A store keeps the nodes
/// [`CompactRange::append_with`] reports for which this is `Some` (the
/// ledger's store keeps those of full half tiles on disk and the rest in
/// memory: `crate::store::tiles`).
pub fn stored_position(node: NodeId) -> Option<(TileId, usize)> {
    if !node.level.is_multiple_of(TILE_HEIGHT) {
        return None;
    }
    let tile = TileId {
        level: node.level / TILE_HEIGHT,
        index: node.index >> TILE_HEIGHT,
    };
    Some((tile, (node.index as usize) & (TILE_WIDTH - 1)))
}

/// The stored hashes a node is the root of: a tile, the first position and
/// how many (a power of two, at most 128 below a stored level).
fn node_span(node: NodeId) -> (TileId, usize, usize) {
    let below = node.level % TILE_HEIGHT;
    let first = node.index << below;
    let tile = TileId {
        level: node.level / TILE_HEIGHT,
        index: first >> TILE_HEIGHT,
    };
    (tile, (first as usize) & (TILE_WIDTH - 1), 1 << below)
}

/// A store's reader of tiles.
pub trait TileSource {
    /// Why a read failed.
    type Error;

    /// The hashes of `tile`, concatenated, at least its first `width` (a
    /// longer answer, e.g. the tile as grown since, is fine: stored hashes
    /// never change).
    fn read_tile(&self, tile: TileId, width: usize) -> Result<Vec<u8>, Self::Error>;
}

/// Why [`TiledNodes`] could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TileError<E> {
    /// The tile source failed.
    #[error("reading {tile:?}: {error}")]
    Source {
        /// The tile being read.
        tile: TileId,
        /// What the source said.
        error: E,
    },
    /// A tile holds fewer hashes than the tree size implies: the store is
    /// damaged or behind.
    #[error("{tile:?} holds {bytes} bytes, {need} hashes are needed")]
    Short {
        /// The tile.
        tile: TileId,
        /// Bytes it holds.
        bytes: usize,
        /// Hashes needed.
        need: usize,
    },
}

/// A [`NodeSource`] over a [`TileSource`]: reads each tile a batch needs
/// once, and hashes the nodes between stored levels from them.
#[derive(Debug, Clone)]
pub struct TiledNodes<T>(pub T);

impl<T: TileSource> NodeSource for TiledNodes<T> {
    type Error = TileError<T::Error>;

    fn read_nodes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, Self::Error> {
        let spans: Vec<_> = ids.iter().map(|id| node_span(*id)).collect();
        let mut widths: BTreeMap<TileId, usize> = BTreeMap::new();
        for &(tile, first, count) in &spans {
            let w = widths.entry(tile).or_default();
            *w = (*w).max(first + count);
        }
        let mut tiles: BTreeMap<TileId, Vec<u8>> = BTreeMap::new();
        for (tile, width) in widths {
            let bytes = self
                .0
                .read_tile(tile, width)
                .map_err(|error| TileError::Source { tile, error })?;
            if bytes.len() < width * HASH_SIZE {
                return Err(TileError::Short {
                    tile,
                    bytes: bytes.len(),
                    need: width,
                });
            }
            tiles.insert(tile, bytes);
        }
        Ok(spans
            .iter()
            .map(|(tile, first, count)| {
                let bytes = &tiles[tile][first * HASH_SIZE..(first + count) * HASH_SIZE];
                perfect_root(bytes)
            })
            .collect())
    }
}

/// The root of a perfect subtree whose bottom hashes are `bytes` (a power
/// of two of them, concatenated).
fn perfect_root(bytes: &[u8]) -> Hash {
    let mut level: Vec<Hash> = bytes
        .chunks_exact(HASH_SIZE)
        .map(|c| Hash::from_slice(c).expect("chunks are 32 bytes"))
        .collect();
    while level.len() > 1 {
        for i in 0..level.len() / 2 {
            level[i] = node_hash(&level[2 * i], &level[2 * i + 1]);
        }
        level.truncate(level.len() / 2);
    }
    level[0]
}

/// A whole tiled tree in memory: what a store keeps, without the store.
#[derive(Debug, Default)]
pub struct MemoryTiles {
    /// `levels[l]` holds every stored hash of tree level `8·l`, in order.
    levels: Vec<Vec<Hash>>,
    head: CompactRange,
    tiles_read: Cell<u64>,
}

impl MemoryTiles {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a leaf hash, storing the nodes it completes at stored levels.
    pub fn append(&mut self, leaf: Hash) {
        let levels = &mut self.levels;
        self.head.append_with(leaf, |id, hash| {
            if let Some((tile, position)) = stored_position(id) {
                let level = tile.level as usize;
                if levels.len() <= level {
                    levels.resize(level + 1, Vec::new());
                }
                debug_assert_eq!(
                    levels[level].len(),
                    tile.index as usize * TILE_WIDTH + position
                );
                levels[level].push(*hash);
            }
        });
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.head.size()
    }

    /// The current tree head.
    pub fn root(&self) -> Hash {
        self.head.root()
    }

    /// The compact range of the head.
    pub fn head(&self) -> &CompactRange {
        &self.head
    }

    /// How many tiles have been read so far.
    pub fn tiles_read(&self) -> u64 {
        self.tiles_read.get()
    }
}

impl TileSource for MemoryTiles {
    type Error = String;

    fn read_tile(&self, tile: TileId, _width: usize) -> Result<Vec<u8>, String> {
        self.tiles_read.set(self.tiles_read.get() + 1);
        let level = self
            .levels
            .get(tile.level as usize)
            .ok_or_else(|| format!("no tile level {}", tile.level))?;
        let start = (tile.index as usize).saturating_mul(TILE_WIDTH);
        if start >= level.len() {
            return Err(format!("no {tile:?}"));
        }
        let end = level.len().min(start + TILE_WIDTH);
        Ok(level[start..end].iter().flat_map(|h| h.0).collect())
    }
}

impl TileSource for &MemoryTiles {
    type Error = String;

    fn read_tile(&self, tile: TileId, width: usize) -> Result<Vec<u8>, String> {
        (*self).read_tile(tile, width)
    }
}

#[cfg(test)]
mod tests {
    use super::super::check::{verify_consistency, verify_inclusion};
    use super::super::hash::leaf_hash;
    use super::super::proof::{MemoryNodes, consistency_proof, inclusion_proof, tree_root};
    use super::*;

    fn tree(n: u32) -> (Vec<Hash>, MemoryTiles) {
        let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut tiles = MemoryTiles::new();
        for leaf in &leaves {
            tiles.append(*leaf);
        }
        (leaves, tiles)
    }

    #[test]
    fn tile_paths_follow_tlog_tiles() {
        let t = |level, index| TileId { level, index };
        // The index in groups of three digits, all but the last with an x.
        assert_eq!(t(0, 5_040_302_001).path(256), "tile/0/x005/x040/x302/001");
        assert_eq!(t(0, 0).path(256), "tile/0/000");
        assert_eq!(t(1, 1000).path(17), "tile/1/x001/000.p/17");
        assert_eq!(t(2, 5).path(1), "tile/2/005.p/1");
    }

    #[test]
    fn the_tiles_of_70000_leaves_are_those_of_the_spec() {
        // The size tlog-tiles takes as its example: 273 full level-0 tiles
        // and one of width 112, one full level-1 tile and one of width 17,
        // one level-2 tile of width 1.
        let (_, tiles) = tree(70_000);
        let lens: Vec<usize> = tiles.levels.iter().map(Vec::len).collect();
        assert_eq!(lens, vec![70_000, 273, 1]);
        assert_eq!(273 * 256 + 112, 70_000);
        assert_eq!((273 / 256, 273 % 256), (1, 17));
    }

    #[test]
    fn tiled_nodes_answer_like_a_full_node_store() {
        let (leaves, tiles) = tree(70_000);
        let full = MemoryNodes::of_leaves(&leaves);
        let tiled = TiledNodes(&tiles);
        let ids: Vec<NodeId> = [
            (0, 0),
            (0, 69_999),
            (3, 17),
            (7, 300),
            (8, 0),
            (8, 272),
            (11, 33),
            (15, 1),
            (16, 0),
        ]
        .into_iter()
        .map(|(l, i)| NodeId::new(l, i))
        .collect();
        assert_eq!(
            tiled.read_nodes(&ids).unwrap(),
            full.read_nodes(&ids).unwrap()
        );
    }

    #[test]
    fn proofs_from_tiles_verify_and_read_few_tiles() {
        let (_, tiles) = tree(70_000);
        let source = TiledNodes(&tiles);
        let mut max_reads = 0;
        let mut roots = Vec::new();
        for size in [1u64, 255, 256, 257, 4097, 65_536, 65_537, 69_999, 70_000] {
            let root = tree_root(size, &source).unwrap();
            roots.push((size, root));
            for index in [0, size / 3, size / 2, size - 1] {
                let before = tiles.tiles_read();
                let proof = inclusion_proof(index, size, &source).unwrap();
                max_reads = max_reads.max(tiles.tiles_read() - before);
                let leaf = leaf_hash(&(index as u32).to_be_bytes());
                assert_eq!(verify_inclusion(index, size, &leaf, &proof, &root), Ok(()));
            }
        }
        assert_eq!(roots.last().unwrap().1, tiles.root());
        for &(old, old_root) in &roots {
            for &(new, new_root) in &roots {
                if old <= new {
                    let before = tiles.tiles_read();
                    let proof = consistency_proof(old, new, &source).unwrap();
                    max_reads = max_reads.max(tiles.tiles_read() - before);
                    assert_eq!(
                        verify_consistency(old, new, &old_root, &new_root, &proof),
                        Ok(())
                    );
                }
            }
        }
        // Three tile levels, at most two tiles each.
        assert!(max_reads <= 6, "{max_reads} tiles read for one proof");
    }

    #[test]
    fn a_short_or_missing_tile_is_an_error() {
        struct Truncated;
        impl TileSource for Truncated {
            type Error = String;
            fn read_tile(&self, _: TileId, _: usize) -> Result<Vec<u8>, String> {
                Ok(vec![0u8; 40])
            }
        }
        assert!(matches!(
            TiledNodes(Truncated).read_nodes(&[NodeId::new(1, 0)]),
            Err(TileError::Short { need: 2, .. })
        ));
        let (_, tiles) = tree(10);
        assert!(matches!(
            TiledNodes(&tiles).read_nodes(&[NodeId::new(0, 300)]),
            Err(TileError::Source { .. })
        ));
    }
}
