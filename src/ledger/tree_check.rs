//! Verification of the stored Merkle tree against the stored entries.
//!
//! The tiles ([`crate::store::tiles`]) are derived from the entries, so
//! whoever changes one without the other (a tampered tile, a lost half) must
//! be caught before the service signs from them. [`LeafCheck`] runs inside
//! the chain verification's pass over a range of entries
//! ([`super::verify`]): each entry's leaf hash is compared with the stored
//! level-0 hash, and the root of every complete block of 256 leaves in the
//! range with the stored level-8 hash (one node hash per leaf). Then
//! [`check_upper_levels`] does the same for every stored level above,
//! from the stored hashes below it (1/256 of the work per level). Only the
//! full halves are stored ([`stored_len`]); the right edge of each level is
//! rebuilt from the entries and these halves on open, so it has nothing to
//! be checked against.

use crate::chain::ChainError;
use crate::merkle::tiles::TILE_WIDTH;
use crate::merkle::{Hash, entry_leaf_hash, node_hash};
use crate::store::tiles::{level_hashes, stored_len};
use crate::store::{LedgerStore, StoreError};

/// Stored hashes of one level, read in order, lazily.
type Stored<'a> = Box<dyn Iterator<Item = Result<(u64, Hash), StoreError>> + 'a>;

/// The tree check of one range of entries `from..to`, fed entry by entry.
pub(crate) struct LeafCheck<'a> {
    leaves: Stored<'a>,
    blocks: Stored<'a>,
    /// Leaves and level-8 nodes past these are not stored.
    stored_leaves: u64,
    stored_blocks: u64,
    next: u64,
    /// The leaves of the current block of 256 (when the range saw all of it).
    block: Vec<Hash>,
    block_complete: bool,
    pub(crate) errors: Vec<ChainError>,
}

fn tamper(index: u64, message: String) -> ChainError {
    ChainError {
        index: Some(index),
        message,
    }
}

impl<'a> LeafCheck<'a> {
    /// The check of entries `from..to` of `store`, in a tree of `size`.
    pub(crate) fn new<S: LedgerStore + ?Sized>(
        store: &'a S,
        from: u64,
        to: u64,
        size: u64,
    ) -> LeafCheck<'a> {
        let width = TILE_WIDTH as u64;
        let (stored_leaves, stored_blocks) = (stored_len(size, 0), stored_len(size, 1));
        let to_leaf = to.min(stored_leaves);
        let to_block = (to / width).min(stored_blocks);
        LeafCheck {
            leaves: Box::new(level_hashes(store, 0, from.min(to_leaf), to_leaf)),
            blocks: Box::new(level_hashes(
                store,
                1,
                from.div_ceil(width).min(to_block),
                to_block,
            )),
            stored_leaves,
            stored_blocks,
            next: from,
            block: Vec::with_capacity(TILE_WIDTH),
            block_complete: from.is_multiple_of(width),
            errors: Vec::new(),
        }
    }

    /// The next entry, `seq`, with its stored `entry_hash`.
    pub(crate) fn push(&mut self, seq: u64, entry_hash: &[u8; 32]) {
        if seq != self.next {
            // The chain check reports the gap; the blocks around it are not checked.
            self.block_complete = false;
            self.block.clear();
            self.skip_leaves_to(seq);
        }
        self.next = seq + 1;
        let leaf = entry_leaf_hash(entry_hash);
        match if seq < self.stored_leaves {
            self.leaves.next()
        } else {
            // The edge: rebuilt from the entries, not stored.
            Some(Ok((seq, leaf)))
        } {
            Some(Ok((i, stored))) if i == seq => {
                if stored != leaf {
                    self.errors.push(tamper(
                        seq,
                        format!("the stored Merkle tree leaf of entry {seq} is {stored}, the entry's is {leaf} (a tampered tile: restore the data dir)"),
                    ));
                }
            }
            Some(Err(e)) => self.stored_error(seq, e),
            _ => {
                // Missing (or out of place): nothing after it lines up.
                if self.errors.len() < 1_000 {
                    self.errors.push(tamper(
                        seq,
                        format!("the stored Merkle tree has no leaf for entry {seq} (lost or tampered tiles: restore the data dir)"),
                    ));
                }
                self.leaves = Box::new(std::iter::empty());
            }
        }
        if self.block_complete {
            self.block.push(leaf);
        }
        if (seq + 1).is_multiple_of(TILE_WIDTH as u64) {
            let index = seq / TILE_WIDTH as u64;
            if self.block_complete && self.block.len() == TILE_WIDTH && index < self.stored_blocks {
                self.check_block(index);
            }
            self.block.clear();
            self.block_complete = true;
        }
    }

    fn skip_leaves_to(&mut self, seq: u64) {
        let rest = std::mem::replace(&mut self.leaves, Box::new(std::iter::empty()));
        self.leaves = Box::new(rest.skip_while(move |item| matches!(item, Ok((i, _)) if *i < seq)));
    }

    fn stored_error(&mut self, seq: u64, e: StoreError) {
        self.errors.push(tamper(
            seq,
            format!("the stored Merkle tree is unreadable: {e}"),
        ));
        self.leaves = Box::new(std::iter::empty());
    }

    /// Compares the root of the block of leaves just completed with the
    /// stored level-8 node.
    fn check_block(&mut self, index: u64) {
        let root = perfect_root(&mut self.block);
        let stored = loop {
            match self.blocks.next() {
                Some(Ok((i, h))) if i == index => break Some(h),
                Some(Ok((i, _))) if i < index => continue,
                Some(Err(e)) => {
                    self.errors.push(tamper(
                        index * TILE_WIDTH as u64,
                        format!("the stored Merkle tree is unreadable: {e}"),
                    ));
                    self.blocks = Box::new(std::iter::empty());
                    break None;
                }
                _ => break None,
            }
        };
        if stored != Some(root) {
            let first = index * TILE_WIDTH as u64;
            self.errors.push(tamper(
                first,
                match stored {
                    Some(h) => format!(
                        "the stored Merkle tree node over entries {first}..{} is {h}, the root of its leaves is {root} (a tampered tile: restore the data dir)",
                        first + TILE_WIDTH as u64
                    ),
                    None => format!(
                        "the stored Merkle tree has no node over entries {first}..{} (lost or tampered tiles: restore the data dir)",
                        first + TILE_WIDTH as u64
                    ),
                },
            ));
        }
    }

    /// Ends the range: leaves it did not see are reported by the chain check.
    pub(crate) fn finish(self) -> Vec<ChainError> {
        self.errors
    }
}

/// The root of 256 hashes (hashed in place).
fn perfect_root(level: &mut [Hash]) -> Hash {
    let mut n = level.len();
    while n > 1 {
        for i in 0..n / 2 {
            level[i] = node_hash(&level[2 * i], &level[2 * i + 1]);
        }
        n /= 2;
    }
    level[0]
}

/// Checks every stored level above 8 of the tree of `len` leaves: each
/// complete block of 256 stored hashes of level `8·L` against the stored
/// node of level `8·(L+1)` above it.
pub(crate) fn check_upper_levels<S: LedgerStore + ?Sized>(store: &S, len: u64) -> Vec<ChainError> {
    let mut errors = Vec::new();
    let width = TILE_WIDTH as u64;
    let mut level = 1u8;
    loop {
        let shift = 8 * u32::from(level);
        if shift >= 64 || len >> shift == 0 {
            break;
        }
        // The stored nodes above (the hashes below them are stored too).
        let above = stored_len(len, level + 1);
        let mut block = Vec::with_capacity(TILE_WIDTH);
        let mut uppers = level_hashes(store, level + 1, 0, above);
        let mut seen = 0u64;
        for item in level_hashes(store, level, 0, above * width) {
            let (i, h) = match item {
                Ok(x) => x,
                Err(e) => {
                    errors.push(tamper(
                        0,
                        format!("the stored Merkle tree is unreadable: {e}"),
                    ));
                    return errors;
                }
            };
            if i != seen {
                break;
            }
            seen += 1;
            block.push(h);
            if block.len() == TILE_WIDTH {
                let root = perfect_root(&mut block);
                block.clear();
                let index = i / width;
                let stored = match uppers.next() {
                    Some(Ok((j, h))) if j == index => Some(h),
                    _ => None,
                };
                if stored != Some(root) {
                    errors.push(tamper(
                        (index * width) << shift,
                        format!(
                            "the stored Merkle tree node at level {}, index {index}, is not the root of the stored nodes below it (a tampered tile: restore the data dir)",
                            8 * (u32::from(level) + 1)
                        ),
                    ));
                    return errors;
                }
            }
        }
        if seen < above * width {
            errors.push(tamper(
                (seen << shift).min(len.saturating_sub(1)),
                format!(
                    "the stored Merkle tree lacks nodes of level {} from index {seen} (lost or tampered tiles: restore the data dir)",
                    8 * u32::from(level)
                ),
            ));
            return errors;
        }
        level += 1;
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::GENESIS_HASH;
    use crate::store::memory::MemoryStore;
    use crate::store::tiles::{TileWriter, half_key};
    use crate::store::{Append, Family, record};

    fn store_of(n: u64) -> MemoryStore {
        let store = MemoryStore::new();
        let mut writer = TileWriter::new();
        let entries = crate::entry::test_chain(n, 0, GENESIS_HASH);
        for part in entries.chunks(1_000) {
            let side = writer.append(
                part.iter()
                    .map(|e| crate::chain::decode_hex(e.entry_hash.as_bytes()).unwrap()),
            );
            store
                .append(Append {
                    entries: part,
                    side,
                    meta: vec![],
                })
                .unwrap();
            writer.settle();
        }
        store
    }

    fn check(store: &MemoryStore, from: u64, to: u64) -> Vec<ChainError> {
        let mut check = LeafCheck::new(store, from, to, to);
        for item in store.scan(from, to) {
            let (seq, bytes) = item.unwrap();
            check.push(seq, record::split(&bytes).unwrap().entry_hash);
        }
        let mut errors = check.finish();
        errors.extend(check_upper_levels(store, to));
        errors
    }

    fn flip(store: &MemoryStore, level: u8, half: u64, byte: usize) {
        let key = half_key(level, half);
        let (_, mut value) = store
            .side_at_or_before(Family::TILES, key)
            .unwrap()
            .unwrap();
        value[byte] ^= 1;
        store
            .append(Append {
                side: vec![(Family::TILES, key, value)],
                ..Append::default()
            })
            .unwrap();
    }

    #[test]
    fn an_untouched_tree_verifies_in_any_ranges() {
        let store = store_of(70_000);
        assert!(check(&store, 0, 70_000).is_empty());
        assert!(check(&store, 1_000, 70_000).is_empty());
        assert!(check(&store, 65_536, 70_000).is_empty());
    }

    #[test]
    fn a_flipped_byte_at_any_stored_level_is_found() {
        for (level, half, byte, at) in [
            (0u8, 3u64, 5usize, 384u64),
            (0, 545, 40, 69_761),
            (1, 1, 100, 128 * 256 + 3 * 256),
            (1, 0, 31, 0),
        ] {
            let store = store_of(70_000);
            flip(&store, level, half, byte);
            let errors = check(&store, 0, 70_000);
            assert!(!errors.is_empty(), "level {level} half {half}");
            assert!(errors[0].message.contains("tampered"), "{:?}", errors[0]);
            assert_eq!(errors[0].index, Some(at), "{errors:?}");
        }
    }

    #[test]
    fn a_lost_half_is_found() {
        let store = store_of(2_000);
        store
            .append(Append {
                side: vec![(Family::TILES, half_key(0, 14), Vec::new())],
                ..Append::default()
            })
            .unwrap();
        let errors = check(&store, 0, 2_000);
        assert!(
            errors
                .iter()
                .any(|e| e.message.contains("no leaf for entry 1792")),
            "{errors:?}"
        );
    }

    #[test]
    fn the_unstored_edge_is_not_checked_and_old_partial_halves_are_ignored() {
        // 1,000 leaves: level 0 keeps 896 stored leaves, level 8 none.
        let store = store_of(1_000);
        assert!(
            store
                .side_range(Family::TILES, half_key(0, 7), half_key(2, 0))
                .next()
                .is_none()
        );
        // A partial half as older stores wrote them, even a wrong one, is
        // not what the tree is rebuilt from.
        store
            .append(Append {
                side: vec![
                    (Family::TILES, half_key(0, 7), vec![9u8; 32 * 40]),
                    (Family::TILES, half_key(1, 0), vec![9u8; 32 * 3]),
                ],
                ..Append::default()
            })
            .unwrap();
        assert!(check(&store, 0, 1_000).is_empty());
    }
}
