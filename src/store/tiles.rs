//! The stored layout of the Merkle tree: tlog tiles, kept in halves.
//!
//! The tree keeps the node hashes of levels 0, 8, 16, … in the layout of
//! C2SP tlog-tiles ([`crate::merkle::tiles`]): tile `(L, N)` holds up to 256
//! hashes of tree level `8·L`. sled values stay at most 4 KiB
//! ([`super::VALUE_BYTES`]), so a tile is stored as two halves of
//! [`HALF_WIDTH`] hashes, side records of [`Family::TILES`] keyed
//! `L (1 byte) ‖ half index (7 bytes BE)` ([`half_key`]), the value the
//! concatenated hashes. A full half is written once and never changes; the
//! right edge (at most one partial half per level) is rewritten, whole,
//! with every append that adds to it.
//!
//! [`TileWriter`] is the writing side: the head's compact range and the
//! right edge of every level; each batch of leaves it takes gives the side
//! records of the halves it changed, to be appended with the entries they
//! cover (one atomic step). [`TileWriter::resume`] rebuilds it from a store
//! in O(log n) reads. [`StoreTiles`] is the reading side, a
//! [`TileSource`] over any [`LedgerStore`] (its overlay included), for
//! proofs through [`crate::merkle::tiles::TiledNodes`].

use crate::merkle::tiles::{TILE_HEIGHT, TileId, TileSource, TiledNodes, stored_position};
use crate::merkle::{CompactRange, HASH_SIZE, Hash, NodeSource, entry_leaf_hash};

use super::{Family, LedgerStore, SideRecord, StoreError};

/// Hashes in a stored half tile (4 KiB).
pub const HALF_WIDTH: usize = 128;

/// Bits of the key that hold the half index (the level is above them).
const HALF_BITS: u32 = 56;

/// The side-record key of half `half` of tree level `8·level`.
pub fn half_key(level: u8, half: u64) -> u64 {
    debug_assert!(half < 1 << HALF_BITS);
    (u64::from(level) << HALF_BITS) | half
}

/// The level and half index of a [`half_key`].
pub fn key_half(key: u64) -> (u8, u64) {
    ((key >> HALF_BITS) as u8, key & ((1 << HALF_BITS) - 1))
}

/// The stored hashes of tree level `8·level` with indices in `from..to`, in
/// order, read half by half: `(index, hash)`. Ends early (the caller
/// counts) where a half is missing or short.
pub fn level_hashes<'a, S: LedgerStore + ?Sized>(
    store: &'a S,
    level: u8,
    from: u64,
    to: u64,
) -> impl Iterator<Item = Result<(u64, Hash), StoreError>> + 'a {
    let width = HALF_WIDTH as u64;
    let (first, end) = (from / width, to.div_ceil(width));
    let mut expected_half = first;
    let mut done = from >= to;
    let halves = store.side_range(Family::TILES, half_key(level, first), half_key(level, end));
    halves
        .take_while(move |item| {
            // Stop at a gap: the hashes after it are not where they belong.
            let ok = !done
                && match item {
                    Ok((key, _)) => key_half(*key) == (level, expected_half),
                    Err(_) => true,
                };
            expected_half += 1;
            done = !ok;
            ok
        })
        .flat_map(move |item| -> Vec<Result<(u64, Hash), StoreError>> {
            match item {
                Err(e) => vec![Err(e)],
                Ok((key, value)) => {
                    let base = key_half(key).1 * width;
                    value
                        .chunks_exact(HASH_SIZE)
                        .enumerate()
                        .map(|(i, c)| (base + i as u64, c))
                        .filter(|(i, _)| (from..to).contains(i))
                        .map(|(i, c)| Ok((i, Hash::from_slice(c).expect("32 bytes"))))
                        .collect()
                }
            }
        })
}

/// A [`TileSource`] over a store's tile halves.
#[derive(Debug)]
pub struct StoreTiles<'a, S: ?Sized>(pub &'a S);

impl<S: LedgerStore + ?Sized> TileSource for StoreTiles<'_, S> {
    type Error = StoreError;

    fn read_tile(&self, tile: TileId, width: usize) -> Result<Vec<u8>, StoreError> {
        let first = tile.index * 2;
        let halves = if width > HALF_WIDTH { 2 } else { 1 };
        let mut out = Vec::with_capacity(width * HASH_SIZE);
        for (i, item) in self
            .0
            .side_range(
                Family::TILES,
                half_key(tile.level, first),
                half_key(tile.level, first + halves),
            )
            .enumerate()
        {
            let (key, value) = item?;
            // A missing or partial first half ends the tile (the caller
            // reports a short tile).
            if key != half_key(tile.level, first + i as u64) || out.len() % (HALF_WIDTH * 32) != 0 {
                break;
            }
            out.extend_from_slice(&value);
        }
        Ok(out)
    }
}

/// The proofs' [`NodeSource`] over a store: its tiles.
pub fn store_nodes<S: LedgerStore + ?Sized>(store: &S) -> TiledNodes<StoreTiles<'_, S>> {
    TiledNodes(StoreTiles(store))
}

/// The right edge of one stored level: the hashes from `128 · half` on.
#[derive(Debug, Clone, Default)]
struct Edge {
    half: u64,
    hashes: Vec<Hash>,
    changed: bool,
}

/// The writing side of the stored tree: the compact range of the head and
/// the right edge of every stored level.
#[derive(Debug, Clone, Default)]
pub struct TileWriter {
    range: CompactRange,
    /// `edges[l]`: tree level `8·l`.
    edges: Vec<Edge>,
}

impl TileWriter {
    /// The writer of an empty tree.
    pub fn new() -> TileWriter {
        TileWriter::default()
    }

    /// How many leaves the tree has.
    pub fn size(&self) -> u64 {
        self.range.size()
    }

    /// The tree head.
    pub fn root(&self) -> Hash {
        self.range.root()
    }

    /// The compact range of the head.
    pub fn range(&self) -> &CompactRange {
        &self.range
    }

    /// Appends the leaves of entries (their raw `entry_hash`es, in seq
    /// order) and returns the side records of every half they changed.
    pub fn append(&mut self, entry_hashes: impl IntoIterator<Item = [u8; 32]>) -> Vec<SideRecord> {
        for entry_hash in entry_hashes {
            let edges = &mut self.edges;
            self.range
                .append_with(entry_leaf_hash(&entry_hash), |id, hash| {
                    if let Some((tile, _)) = stored_position(id) {
                        let level = tile.level as usize;
                        if edges.len() <= level {
                            // A level's first node is its index 0.
                            edges.resize_with(level + 1, Edge::default);
                        }
                        let edge = &mut edges[level];
                        debug_assert_eq!(
                            edge.half * HALF_WIDTH as u64 + edge.hashes.len() as u64,
                            id.index
                        );
                        edge.hashes.push(*hash);
                        edge.changed = true;
                    }
                });
        }
        self.records()
    }

    /// The records of the changed halves; keeps only the partial ones.
    fn records(&mut self) -> Vec<SideRecord> {
        let mut side = Vec::new();
        for (level, edge) in self.edges.iter_mut().enumerate() {
            if !edge.changed {
                continue;
            }
            for (i, chunk) in edge.hashes.chunks(HALF_WIDTH).enumerate() {
                let value: Vec<u8> = chunk.iter().flat_map(|h| h.0).collect();
                side.push((
                    Family::TILES,
                    half_key(level as u8, edge.half + i as u64),
                    value,
                ));
            }
            let full = edge.hashes.len() / HALF_WIDTH;
            edge.hashes.drain(..full * HALF_WIDTH);
            edge.half += full as u64;
            edge.changed = false;
        }
        side
    }

    /// Rebuilds the writer of a tree of `size` leaves from a store's tiles:
    /// the compact range (O(log n) nodes, through [`StoreTiles`]) and the
    /// partial half of every level.
    pub fn resume<S: LedgerStore + ?Sized>(store: &S, size: u64) -> Result<TileWriter, StoreError> {
        let unreadable = |what: String| StoreError::Corrupt {
            seq: size.saturating_sub(1),
            message: format!(
                "the stored Merkle tree does not cover the {size} stored entries: {what} (tampered or lost tiles; `kernels verify --data-dir` checks them against the entries)"
            ),
        };
        let ids = CompactRange::node_ids(size);
        let nodes = store_nodes(store).read_nodes(&ids).map_err(|e| match e {
            crate::merkle::tiles::TileError::Source { error, .. } => error,
            other => unreadable(other.to_string()),
        })?;
        let range = CompactRange::from_parts(size, nodes).map_err(|e| unreadable(e.to_string()))?;
        let mut edges = Vec::new();
        let mut level = 0u8;
        loop {
            let count = size >> (u32::from(level) * u32::from(TILE_HEIGHT));
            if count == 0 {
                break;
            }
            let half = count / HALF_WIDTH as u64;
            let have = (count % HALF_WIDTH as u64) as usize;
            let mut hashes = Vec::with_capacity(have);
            for item in level_hashes(store, level, half * HALF_WIDTH as u64, count) {
                hashes.push(item?.1);
            }
            if hashes.len() != have {
                return Err(unreadable(format!(
                    "half {half} of tile level {level} holds {} of its {have} hashes",
                    hashes.len()
                )));
            }
            edges.push(Edge {
                half,
                hashes,
                changed: false,
            });
            level += 1;
        }
        Ok(TileWriter { range, edges })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::GENESIS_HASH;
    use crate::merkle::tiles::MemoryTiles;
    use crate::merkle::{consistency_proof, inclusion_proof, tree_root};
    use crate::store::memory::MemoryStore;
    use crate::store::sled_store::{SledOptions, SledStore};
    use crate::store::{Append, VALUE_BYTES};

    fn raw(i: u64) -> [u8; 32] {
        let mut h = [0u8; 32];
        h[..8].copy_from_slice(&i.to_be_bytes());
        h[8] = 0xa5;
        h
    }

    /// Appends `n` leaves in batches of `batch` to `store` (entries and
    /// tiles in one append each, as the flusher does).
    fn grow(store: &dyn LedgerStore, writer: &mut TileWriter, from: u64, n: u64, batch: u64) {
        let entries = crate::entry::test_chain(n, from, GENESIS_HASH);
        for part in entries.chunks(batch as usize) {
            let side = writer.append(part.iter().map(|e| raw(e.ledger_seq)));
            for (_, _, v) in &side {
                assert!(v.len() <= VALUE_BYTES && !v.is_empty());
            }
            store
                .append(Append {
                    entries: part,
                    side,
                    meta: vec![],
                })
                .unwrap();
        }
        store.commit().unwrap();
    }

    fn reference(n: u64) -> MemoryTiles {
        let mut tiles = MemoryTiles::new();
        for i in 0..n {
            tiles.append(entry_leaf_hash(&raw(i)));
        }
        tiles
    }

    #[test]
    fn keys_keep_the_level_apart_and_sort_within_it() {
        assert_eq!(key_half(half_key(3, 12_345)), (3, 12_345));
        assert!(half_key(0, (1 << 56) - 1) < half_key(1, 0));
        assert!(half_key(1, 7) < half_key(1, 8));
    }

    #[test]
    fn stored_tiles_answer_like_the_tiles_in_memory_and_resume_continues_them() {
        let store = MemoryStore::new();
        let mut writer = TileWriter::new();
        // Odd batches, across half, tile and level boundaries.
        grow(&store, &mut writer, 0, 33_000, 97);
        let memory = reference(33_000);
        assert_eq!(writer.root(), memory.root());
        let stored = store_nodes(&store);
        for size in [1u64, 128, 129, 256, 257, 32_768, 32_769, 33_000] {
            assert_eq!(
                tree_root(size, &stored).unwrap(),
                tree_root(size, &TiledNodes(&memory)).unwrap()
            );
            for index in [0, size / 2, size - 1] {
                assert_eq!(
                    inclusion_proof(index, size, &stored).unwrap(),
                    inclusion_proof(index, size, &TiledNodes(&memory)).unwrap()
                );
            }
            assert_eq!(
                consistency_proof(size, 33_000, &stored).unwrap(),
                consistency_proof(size, 33_000, &TiledNodes(&memory)).unwrap()
            );
        }
        // Resumed at the end, it continues the same tree.
        let mut resumed = TileWriter::resume(&store, 33_000).unwrap();
        assert_eq!(resumed.range(), writer.range());
        grow(&store, &mut resumed, 33_000, 700, 300);
        assert_eq!(resumed.root(), reference(33_700).root());
        assert_eq!(
            tree_root(33_700, &store_nodes(&store)).unwrap(),
            resumed.root()
        );
    }

    #[test]
    fn a_sled_store_serves_tiles_from_its_overlay_and_after_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let root = {
            let store = SledStore::open(tmp.path(), &SledOptions::default()).unwrap();
            let mut writer = TileWriter::new();
            grow(&store, &mut writer, 0, 5_000, 55);
            // Right away: much of it is still in the applier's overlay.
            assert_eq!(
                tree_root(5_000, &store_nodes(&store)).unwrap(),
                writer.root()
            );
            writer.root()
        };
        let store = SledStore::open(tmp.path(), &SledOptions::default()).unwrap();
        let writer = TileWriter::resume(&store, 5_000).unwrap();
        assert_eq!(writer.root(), root);
        assert_eq!(root, reference(5_000).root());
    }

    #[test]
    fn missing_or_short_tiles_are_a_clear_error() {
        let store = MemoryStore::new();
        let mut writer = TileWriter::new();
        grow(&store, &mut writer, 0, 1_000, 100);
        // The partial half of level 0 (leaves 896..1000) loses its tail.
        store
            .append(Append {
                side: vec![(Family::TILES, half_key(0, 7), vec![0u8; 32 * 50])],
                ..Append::default()
            })
            .unwrap();
        let err = TileWriter::resume(&store, 1_000).unwrap_err();
        assert!(err.to_string().contains("does not cover"), "{err}");
        assert!(TileWriter::resume(&store, 946).is_ok());
    }
}
