//! The stored layout of the Merkle tree: tlog tiles, kept in halves.
//!
//! The tree keeps the node hashes of levels 0, 8, 16, … in the layout of
//! C2SP tlog-tiles ([`crate::merkle::tiles`]): tile `(L, N)` holds up to 256
//! hashes of tree level `8·L`. sled values stay at most 4 KiB
//! ([`super::VALUE_BYTES`]), so a tile is stored as two halves of
//! [`HALF_WIDTH`] hashes, side records of [`Family::TILES`] keyed
//! `L (1 byte) ‖ half index (7 bytes BE)` ([`half_key`]), the value the
//! concatenated hashes. Only full halves are stored, each written once, in
//! the append of the entry that fills it; the right edge of every level
//! (fewer than 128 hashes) lives in memory and is rebuilt on open from what
//! is stored: level 0's from the entries' hashes, level `8·L`'s from the
//! full halves of level `8·(L-1)` below it. So a commit of one entry writes
//! no tile at all 127 times out of 128, instead of rewriting 4 KiB halves.
//! (Stores written before this kept partial halves too; they are ignored.)
//!
//! [`TileWriter`] is the writing side: the head's compact range and the
//! right edge of every level; each batch of leaves it takes gives the side
//! records of the halves it filled, to be appended with the entries they
//! cover (one atomic step), and [`TileWriter::settle`] forgets them once
//! they are in the store. [`TileWriter::resume`] rebuilds it from a store.
//! [`EdgeTiles`] is the reading side, a [`TileSource`] over any
//! [`LedgerStore`] (its overlay included) and a snapshot of the edges, for
//! proofs through [`crate::merkle::tiles::TiledNodes`].

use crate::merkle::tiles::{TILE_HEIGHT, TileId, TileSource, TiledNodes, stored_position};
use crate::merkle::{CompactRange, HASH_SIZE, Hash, NodeSource, entry_leaf_hash, root_of};

use super::{Family, LedgerStore, SideRecord, StoreError, record};

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

/// How many hashes of tree level `8·level` a tree of `size` leaves keeps in
/// the store: those of its full halves (the rest is the in-memory edge).
pub fn stored_len(size: u64, level: u8) -> u64 {
    let shift = u32::from(level) * u32::from(TILE_HEIGHT);
    let count = if shift >= 64 { 0 } else { size >> shift };
    count / HALF_WIDTH as u64 * HALF_WIDTH as u64
}

/// The stored hashes of tree level `8·level` with indices in `from..to`, in
/// order, read half by half: `(index, hash)`. Ends early where a half is
/// missing; a short half yields fewer hashes and the next half goes on at
/// its own indices, so callers check the indices they get.
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

/// The right edge of every level at one moment, as the writer holds it:
/// `(half, hashes)` for level `8·l` at index `l`, the hashes from index
/// `128 · half` on (not stored, or filled and not yet known to be stored).
#[derive(Debug, Clone, Default)]
pub struct Edges(Vec<(u64, Vec<Hash>)>);

/// A [`TileSource`] over a store's full halves and a snapshot of the edges
/// (taken before the store is read: a half leaves the edges only once it is
/// in the store, so every half is in one or the other).
#[derive(Debug)]
pub struct EdgeTiles<'a, S: ?Sized> {
    store: &'a S,
    edges: Edges,
}

impl<'a, S: LedgerStore + ?Sized> EdgeTiles<'a, S> {
    /// The tiles of `store` completed by `edges`.
    pub fn new(store: &'a S, edges: Edges) -> EdgeTiles<'a, S> {
        EdgeTiles { store, edges }
    }

    /// The proofs' [`NodeSource`] over these tiles.
    pub fn nodes(self) -> TiledNodes<EdgeTiles<'a, S>> {
        TiledNodes(self)
    }
}

impl<S: LedgerStore + ?Sized> TileSource for EdgeTiles<'_, S> {
    type Error = StoreError;

    fn read_tile(&self, tile: TileId, width: usize) -> Result<Vec<u8>, StoreError> {
        let first = tile.index * 2;
        let end = first + if width > HALF_WIDTH { 2 } else { 1 };
        let (edge_half, edge) = match self.edges.0.get(usize::from(tile.level)) {
            Some((half, hashes)) => (*half, hashes.as_slice()),
            None => (u64::MAX, &[][..]),
        };
        let mut out = Vec::with_capacity(width * HASH_SIZE);
        // The halves below the edge are full and stored.
        let stored_end = end.min(edge_half.max(first));
        if first < stored_end {
            for (i, item) in self
                .store
                .side_range(
                    Family::TILES,
                    half_key(tile.level, first),
                    half_key(tile.level, stored_end),
                )
                .enumerate()
            {
                let (key, value) = item?;
                // A missing or short half ends the tile (the caller reports
                // a short tile).
                if key != half_key(tile.level, first + i as u64)
                    || value.len() != HALF_WIDTH * HASH_SIZE
                {
                    return Ok(out);
                }
                out.extend_from_slice(&value);
            }
            if out.len() != (stored_end - first) as usize * HALF_WIDTH * HASH_SIZE {
                return Ok(out);
            }
        }
        for half in stored_end..end {
            let from = (half - edge_half) as usize * HALF_WIDTH;
            let to = (from + HALF_WIDTH).min(edge.len());
            if from >= to {
                break;
            }
            out.extend(edge[from..to].iter().flat_map(|h| h.0));
        }
        Ok(out)
    }
}

/// The right edge of one stored level: the hashes from `128 · half` on, the
/// full halves among them already given out as records counted by
/// `emitted` (kept until [`TileWriter::settle`]: until then they may not be
/// in the store yet).
#[derive(Debug, Clone, Default)]
struct Edge {
    half: u64,
    hashes: Vec<Hash>,
    emitted: usize,
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
    /// order) and returns the side records of every half they filled.
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
                    }
                });
        }
        self.records()
    }

    /// The records of the halves filled since the last call.
    fn records(&mut self) -> Vec<SideRecord> {
        let mut side = Vec::new();
        for (level, edge) in self.edges.iter_mut().enumerate() {
            let full = edge.hashes.len() / HALF_WIDTH;
            for i in edge.emitted..full {
                let value: Vec<u8> = edge.hashes[i * HALF_WIDTH..(i + 1) * HALF_WIDTH]
                    .iter()
                    .flat_map(|h| h.0)
                    .collect();
                side.push((
                    Family::TILES,
                    half_key(level as u8, edge.half + i as u64),
                    value,
                ));
            }
            edge.emitted = full;
        }
        side
    }

    /// Forgets the full halves given out so far: call once the records
    /// [`TileWriter::append`] returned are in the store.
    pub fn settle(&mut self) {
        for edge in &mut self.edges {
            edge.hashes.drain(..edge.emitted * HALF_WIDTH);
            edge.half += edge.emitted as u64;
            edge.emitted = 0;
        }
    }

    /// A snapshot of the hashes not (known to be) in the store.
    pub fn edges(&self) -> Edges {
        Edges(
            self.edges
                .iter()
                .map(|e| (e.half, e.hashes.clone()))
                .collect(),
        )
    }

    /// Rebuilds the writer of a tree of `size` leaves from a store: the
    /// right edge of every level (level 0's from the last entries' hashes,
    /// fewer than 128; level `8·L`'s, fewer than 128 nodes, each the root of
    /// a full tile of level `8·(L-1)`), then the compact range (O(log n)
    /// nodes, through [`EdgeTiles`]).
    pub fn resume<S: LedgerStore + ?Sized>(store: &S, size: u64) -> Result<TileWriter, StoreError> {
        let unreadable = |what: String| StoreError::Corrupt {
            seq: size.saturating_sub(1),
            message: format!(
                "the stored Merkle tree does not cover the {size} stored entries: {what} (tampered or lost tiles; `kernels verify --data-dir` checks them against the entries)"
            ),
        };
        let width = HALF_WIDTH as u64;
        let mut edges = Vec::new();
        // Level 0: the leaves of the entries past the last full half.
        let from = stored_len(size, 0);
        let mut leaves = Vec::with_capacity((size - from) as usize);
        for item in store.scan(from, size) {
            let (seq, bytes) = item?;
            let parts = record::split(&bytes).map_err(|e| StoreError::Corrupt {
                seq,
                message: e.to_string(),
            })?;
            leaves.push(entry_leaf_hash(parts.entry_hash));
        }
        if leaves.len() as u64 != size - from {
            return Err(unreadable(format!(
                "the store holds {} of entries {from}..{size}",
                leaves.len()
            )));
        }
        if size > 0 {
            edges.push(Edge {
                half: from / width,
                hashes: leaves,
                emitted: 0,
            });
        }
        // Level 8·L: each node the root of a full tile of the level below.
        let tile = 2 * width;
        let mut level = 1u8;
        loop {
            let shift = u32::from(level) * u32::from(TILE_HEIGHT);
            let count = if shift >= 64 { 0 } else { size >> shift };
            if count == 0 {
                break;
            }
            let from = stored_len(size, level);
            let mut below = Vec::with_capacity(((count - from) * tile) as usize);
            for item in level_hashes(store, level - 1, from * tile, count * tile) {
                let (index, hash) = item?;
                if index != from * tile + below.len() as u64 {
                    // A short half: the hashes after it are not where
                    // they belong.
                    break;
                }
                below.push(hash);
            }
            if below.len() as u64 != (count - from) * tile {
                return Err(unreadable(format!(
                    "tile level {} holds {} of its hashes {}..{}",
                    level - 1,
                    below.len(),
                    from * tile,
                    count * tile
                )));
            }
            edges.push(Edge {
                half: from / width,
                hashes: below.chunks_exact(tile as usize).map(root_of).collect(),
                emitted: 0,
            });
            level += 1;
        }
        let mut writer = TileWriter {
            range: CompactRange::new(),
            edges,
        };
        let ids = CompactRange::node_ids(size);
        let nodes = EdgeTiles::new(store, writer.edges())
            .nodes()
            .read_nodes(&ids)
            .map_err(|e| match e {
                crate::merkle::tiles::TileError::Source { error, .. } => error,
                other => unreadable(other.to_string()),
            })?;
        writer.range =
            CompactRange::from_parts(size, nodes).map_err(|e| unreadable(e.to_string()))?;
        Ok(writer)
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

    /// A store being grown and the raw `entry_hash`es of its entries.
    struct Grown {
        hashes: Vec<[u8; 32]>,
    }

    impl Grown {
        fn new() -> Grown {
            Grown { hashes: Vec::new() }
        }

        /// Appends `n` entries in batches of `batch` to `store` (entries
        /// and tiles in one append each, then settled, as the flusher does).
        fn grow(&mut self, store: &dyn LedgerStore, writer: &mut TileWriter, n: u64, batch: u64) {
            let from = self.hashes.len() as u64;
            let prev = self
                .hashes
                .last()
                .map_or(GENESIS_HASH.to_owned(), hex::encode);
            let entries = crate::entry::test_chain(n, from, &prev);
            for part in entries.chunks(batch as usize) {
                let raw: Vec<[u8; 32]> = part
                    .iter()
                    .map(|e| crate::chain::decode_hex(e.entry_hash.as_bytes()).unwrap())
                    .collect();
                self.hashes.extend(&raw);
                let side = writer.append(raw);
                for (_, _, v) in &side {
                    assert_eq!(v.len(), VALUE_BYTES, "only full halves are written");
                }
                store
                    .append(Append {
                        entries: part,
                        side,
                        meta: vec![],
                    })
                    .unwrap();
                writer.settle();
            }
            store.commit().unwrap();
        }

        fn reference(&self, n: u64) -> MemoryTiles {
            let mut tiles = MemoryTiles::new();
            for h in &self.hashes[..n as usize] {
                tiles.append(entry_leaf_hash(h));
            }
            tiles
        }
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
        let mut grown = Grown::new();
        // Odd batches, across half, tile and level boundaries (level 16
        // starts at 65,536 leaves).
        grown.grow(&store, &mut writer, 70_000, 97);
        let memory = grown.reference(70_000);
        assert_eq!(writer.root(), memory.root());
        let stored = EdgeTiles::new(&store, writer.edges()).nodes();
        for size in [
            1u64, 128, 129, 256, 257, 32_768, 32_769, 65_536, 65_537, 70_000,
        ] {
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
                consistency_proof(size, 70_000, &stored).unwrap(),
                consistency_proof(size, 70_000, &TiledNodes(&memory)).unwrap()
            );
            // Resumed at any size, the writer has that size's tree.
            let resumed = TileWriter::resume(&store, size).unwrap();
            assert_eq!(resumed.root(), grown.reference(size).root(), "size {size}");
        }
        // Resumed at the end, it continues the same tree.
        let mut resumed = TileWriter::resume(&store, 70_000).unwrap();
        assert_eq!(resumed.range(), writer.range());
        grown.grow(&store, &mut resumed, 700, 300);
        assert_eq!(resumed.root(), grown.reference(70_700).root());
        let nodes = EdgeTiles::new(&store, resumed.edges()).nodes();
        assert_eq!(tree_root(70_700, &nodes).unwrap(), resumed.root());
    }

    #[test]
    fn one_leaf_at_a_time_writes_each_half_once_when_it_fills() {
        let mut writer = TileWriter::new();
        let mut written = Vec::new();
        for i in 0..300u64 {
            let mut raw = [0u8; 32];
            raw[..8].copy_from_slice(&i.to_be_bytes());
            for (_, key, value) in writer.append([raw]) {
                written.push((i, key_half(key), value.len()));
            }
            writer.settle();
        }
        // Leaves 0..128 fill half 0 at leaf 127, 128..256 half 1 at 255;
        // level 8 holds one node, in memory.
        assert_eq!(
            written,
            vec![(127, (0, 0), VALUE_BYTES), (255, (0, 1), VALUE_BYTES)]
        );
    }

    #[test]
    fn a_filled_half_is_read_from_the_edge_until_it_is_settled() {
        let mut writer = TileWriter::new();
        let mut memory = MemoryTiles::new();
        let hashes: Vec<[u8; 32]> = (0..130u8).map(|i| [i; 32]).collect();
        for h in &hashes {
            memory.append(entry_leaf_hash(h));
        }
        let side = writer.append(hashes);
        assert_eq!(side.len(), 1);
        // Not in the store yet (the append is in flight): the edge has it.
        let empty = MemoryStore::new();
        let nodes = EdgeTiles::new(&empty, writer.edges()).nodes();
        assert_eq!(
            tree_root(129, &nodes).unwrap(),
            tree_root(129, &TiledNodes(&memory)).unwrap()
        );
        // Settled, the edge forgets it: the store must hold it.
        writer.settle();
        let nodes = EdgeTiles::new(&empty, writer.edges()).nodes();
        assert!(tree_root(129, &nodes).is_err());
        empty
            .append(Append {
                side,
                ..Append::default()
            })
            .unwrap();
        let nodes = EdgeTiles::new(&empty, writer.edges()).nodes();
        assert_eq!(
            tree_root(129, &nodes).unwrap(),
            tree_root(129, &TiledNodes(&memory)).unwrap()
        );
    }

    #[test]
    fn a_sled_store_serves_tiles_from_its_overlay_and_after_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let mut grown = Grown::new();
        let root = {
            let store = SledStore::open(tmp.path(), &SledOptions::default()).unwrap();
            let mut writer = TileWriter::new();
            grown.grow(&store, &mut writer, 5_000, 55);
            // Right away: much of it is still in the applier's overlay.
            let nodes = EdgeTiles::new(&store, writer.edges()).nodes();
            assert_eq!(tree_root(5_000, &nodes).unwrap(), writer.root());
            writer.root()
        };
        let store = SledStore::open(tmp.path(), &SledOptions::default()).unwrap();
        let writer = TileWriter::resume(&store, 5_000).unwrap();
        assert_eq!(writer.root(), root);
        assert_eq!(root, grown.reference(5_000).root());
    }

    #[test]
    fn missing_or_short_tiles_are_a_clear_error() {
        let store = MemoryStore::new();
        let mut writer = TileWriter::new();
        Grown::new().grow(&store, &mut writer, 1_000, 100);
        // The full half 3 of level 0 (leaves 384..512) loses its tail.
        store
            .append(Append {
                side: vec![(Family::TILES, half_key(0, 3), vec![0u8; 32 * 50])],
                ..Append::default()
            })
            .unwrap();
        let err = TileWriter::resume(&store, 1_000).unwrap_err();
        assert!(err.to_string().contains("does not cover"), "{err}");
        // A tree that does not reach that half does not need it.
        assert!(TileWriter::resume(&store, 383).is_ok());
    }

    #[test]
    fn a_short_half_is_not_made_up_for_by_a_long_one() {
        // Level 8's edge at 70,000 leaves is rebuilt from leaf halves
        // 512..546; half 512 loses 64 hashes and half 513 gains them: the
        // count is right, the places are not.
        let store = MemoryStore::new();
        let mut writer = TileWriter::new();
        Grown::new().grow(&store, &mut writer, 70_000, 1_000);
        let read = |half: u64| {
            store
                .side_range(Family::TILES, half_key(0, half), half_key(0, half + 1))
                .next()
                .unwrap()
                .unwrap()
                .1
        };
        let (first, second) = (read(512), read(513));
        let mut longer = first[64 * 32..].to_vec();
        longer.extend_from_slice(&second);
        store
            .append(Append {
                side: vec![
                    (Family::TILES, half_key(0, 512), first[..64 * 32].to_vec()),
                    (Family::TILES, half_key(0, 513), longer),
                ],
                ..Append::default()
            })
            .unwrap();
        let err = TileWriter::resume(&store, 70_000).unwrap_err();
        assert!(err.to_string().contains("does not cover"), "{err}");
    }

    #[test]
    fn partial_halves_left_by_older_stores_are_ignored() {
        // Stores written before only full halves were kept hold a partial
        // half per level, rewritten by each commit; the newest is not
        // always the whole edge (a later one may be missing).
        let store = MemoryStore::new();
        let mut writer = TileWriter::new();
        let mut grown = Grown::new();
        grown.grow(&store, &mut writer, 1_000, 100);
        store
            .append(Append {
                side: vec![
                    (Family::TILES, half_key(0, 7), vec![7u8; 32 * 50]),
                    (Family::TILES, half_key(1, 0), vec![7u8; 32 * 2]),
                ],
                ..Append::default()
            })
            .unwrap();
        let resumed = TileWriter::resume(&store, 1_000).unwrap();
        assert_eq!(resumed.root(), grown.reference(1_000).root());
        let nodes = EdgeTiles::new(&store, resumed.edges()).nodes();
        assert_eq!(
            inclusion_proof(950, 1_000, &nodes).unwrap(),
            inclusion_proof(950, 1_000, &TiledNodes(&grown.reference(1_000))).unwrap()
        );
    }
}
