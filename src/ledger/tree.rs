//! The ledger's Merkle tree: kept with the entries, its head published
//! after each commit, proofs answered from the store and the writer's
//! in-memory right edge.
//!
//! The flusher hands each batch's entry hashes to [`DurableTree::stage`]
//! before it appends the batch: the tile halves the batch fills
//! ([`crate::store::tiles`]) go into the same atomic append, so the store
//! never holds tiles for entries it does not hold; the right edge (fewer
//! than 128 hashes a level) is not stored, and opening rebuilds it from the
//! last entries and the full halves. Once the
//! batch is durable, [`DurableTree::publish`] makes its head the one
//! checkpoints sign — before any waiter of the batch is answered, so every
//! acknowledged entry is under the published head — and lets the writer
//! forget the halves now in the store. Opening rebuilds the writer from the
//! stored tiles and the last entries
//! ([`crate::store::tiles::TileWriter::resume`]).
//!
//! Proofs and past roots ([`super::provable`]) read the stored full halves
//! through the store (its overlay included) and the right edges from a
//! snapshot of the writer's ([`DurableTree::nodes`]): O(log n) reads, at
//! most two tiles per tile level.

use std::sync::{Mutex, MutexGuard};

use serde::Serialize;

use super::error::LedgerError;
use crate::entry::Entry;
use crate::merkle::Hash;
use crate::merkle::proof::BuildError;
use crate::merkle::tiles::{TileError, TiledNodes};
use crate::store::tiles::{EdgeTiles, TileWriter};
use crate::store::{LedgerStore, SideRecord, StoreError};

/// A tree head: `size` leaves (entries) and their root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TreeHead {
    /// Entries in the tree.
    pub size: u64,
    /// The RFC 9162 tree head of those entries.
    pub root: Hash,
}

/// Why a tree question was not answered.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The arguments name no proof or no tree (a seq or size past the
    /// acknowledged head, sizes out of order): the caller's mistake (400).
    #[error("{0}")]
    OutOfRange(String),
    /// No key signs this ledger's checkpoints (503 `signing_disabled`).
    #[error("no checkpoint signing key is configured")]
    NoSigningKey,
    /// The stored tree could not be read, or disagrees with itself (500).
    #[error("stored Merkle tree: {0}")]
    Store(#[from] StoreError),
    /// The ledger could not make the signed head durable (503).
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl From<BuildError<TileError<StoreError>>> for TreeError {
    fn from(e: BuildError<TileError<StoreError>>) -> TreeError {
        match e {
            BuildError::OutOfRange(m) => TreeError::OutOfRange(m),
            BuildError::Source(e) => e.into(),
            e @ BuildError::ShortAnswer { .. } => {
                TreeError::Store(StoreError::Engine(e.to_string()))
            }
        }
    }
}

impl From<TileError<StoreError>> for TreeError {
    fn from(e: TileError<StoreError>) -> TreeError {
        match e {
            TileError::Source { error, .. } => TreeError::Store(error),
            other => TreeError::Store(StoreError::Engine(other.to_string())),
        }
    }
}

/// The tree of a ledger: its writer (the flusher's) and its published head.
#[derive(Debug)]
pub(crate) struct DurableTree {
    writer: Mutex<TileWriter>,
    published: Mutex<TreeHead>,
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DurableTree {
    /// The tree of a store of `len` entries, from its tiles.
    pub(crate) fn open(store: &dyn LedgerStore, len: u64) -> Result<DurableTree, StoreError> {
        let writer = TileWriter::resume(store, len)?;
        let head = TreeHead {
            size: writer.size(),
            root: writer.root(),
        };
        Ok(DurableTree {
            writer: Mutex::new(writer),
            published: Mutex::new(head),
        })
    }

    /// Adds a batch's entries to the tree; returns the tile records to
    /// append with them.
    pub(crate) fn stage(&self, entries: &[Entry]) -> Result<Vec<SideRecord>, String> {
        let mut hashes = Vec::with_capacity(entries.len());
        for e in entries {
            hashes.push(
                crate::chain::decode_hex(e.entry_hash.as_bytes())
                    .ok_or_else(|| format!("entry {} has no hex entry_hash", e.ledger_seq))?,
            );
        }
        let mut writer = relock(&self.writer);
        if let Some(first) = entries.first()
            && first.ledger_seq != writer.size()
        {
            return Err(format!(
                "entry {} does not continue the tree of {} leaves",
                first.ledger_seq,
                writer.size()
            ));
        }
        Ok(writer.append(hashes))
    }

    /// Publishes the head of everything staged: call once it is durable.
    pub(crate) fn publish(&self) {
        let head = {
            let mut writer = relock(&self.writer);
            // The staged halves are in the store: the edges may drop them.
            writer.settle();
            TreeHead {
                size: writer.size(),
                root: writer.root(),
            }
        };
        let mut published = relock(&self.published);
        if head.size >= published.size {
            *published = head;
        }
    }

    /// The tree's nodes for proofs: `store`'s full halves and the edges
    /// as they are now (any size up to the staged one).
    pub(crate) fn nodes<'a, S: LedgerStore + ?Sized>(
        &self,
        store: &'a S,
    ) -> TiledNodes<EdgeTiles<'a, S>> {
        let edges = relock(&self.writer).edges();
        EdgeTiles::new(store, edges).nodes()
    }

    /// The published head (every entry under it is durable).
    pub(crate) fn head(&self) -> TreeHead {
        *relock(&self.published)
    }
}
