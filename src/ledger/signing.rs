//! Signed checkpoints: the ledger's key signs tree heads, never two that
//! are inconsistent.
//!
//! Nothing is signed on the commit path. A checkpoint is signed when one is
//! asked for (`GET /v1/checkpoint`, a proof, a rotation's manifest), from
//! the published tree head ([`super::tree`]) or, for a past size, from the
//! root the tiles give (stored halves and the in-memory edge); Ed25519 signatures are deterministic, and the
//! last few are kept per size ([`CACHED`]), with any witness cosignatures
//! added to them since (`Ledger::add_cosignature`).
//!
//! Before a checkpoint of a size is handed out, the largest signed head —
//! `(size, root)` and the key — is made durable: a metadata value
//! ([`meta::SIGNED_TREE_HEAD`]) in the next group commit, waited for (one
//! commit, shared with whatever else is committed then), and noted beside
//! the store (`SIGNED_HEAD`, see [`crate::store::datadir`]). Opening
//! checks both ([`check_signed_head`]): a store shorter than a signed head
//! is refused with how many entries are missing, and a tree whose root at
//! that size differs is refused — so a restart, a recovery or a migration
//! never makes the service sign a tree that does not extend what it signed.
//!
//! The methods on the ledger are in [`super::provable`]. Peer witnessing
//! (the cluster): `Ledger::witness_key` is the instance key as a
//! `cosignature/v1` key, `Ledger::cosign` cosigns a peer's checkpoint with
//! it, and `Ledger::add_cosignature` adds a peer's cosignature to one of
//! this ledger's recent checkpoints, which is then served with it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::traces::KnownHead;
use super::tree::{TreeError, TreeHead};
use crate::checkpoint::{Checkpoint, SignedCheckpoint};
use crate::merkle::Hash;
use crate::merkle::tiles::TiledNodes;
use crate::note::{KeyKind, SignerKey, VerifierKey};
use crate::store::datadir::DataDir;
use crate::store::tiles::EdgeTiles;
use crate::store::{LedgerStore, StoreError, meta};

/// How many signed checkpoints (the newest sizes) are kept.
pub const CACHED: usize = 16;

/// The stored signed head: the largest tree head the ledger's key signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    /// Entries the head covers.
    pub size: u64,
    /// Its root.
    pub root: Hash,
    /// The verifier key that signed it.
    pub key: String,
}

impl SignedHead {
    /// The stored head of `store`, if any (an unreadable one is an error:
    /// it is the record that keeps signatures consistent).
    pub fn stored(store: &dyn LedgerStore) -> Result<Option<SignedHead>, StoreError> {
        let Some(bytes) = store.meta(meta::SIGNED_TREE_HEAD)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                seq: 0,
                message: format!("the stored signed tree head is unreadable: {e}"),
            })
    }

    /// As a trace of the ledger's length (see [`super::traces`]).
    pub fn trace(&self, source: &str) -> KnownHead {
        KnownHead {
            source: format!("{source} (size {}, root {})", self.size, self.root),
            len: self.size,
            hash: None,
        }
    }
}

/// Checks the signed heads recorded in the store and beside it against the
/// tree of the store (whose root at a size `root_at` gives): the store is
/// at least as long (the caller checked that through the traces) and its
/// tree at each size has the signed root.
pub(crate) fn check_signed_head(
    heads: &[SignedHead],
    root_at: impl Fn(u64) -> Result<Hash, StoreError>,
) -> Result<(), String> {
    for head in heads {
        let root = root_at(head.size).map_err(|e| e.to_string())?;
        if root != head.root {
            return Err(format!(
                "the Merkle tree of the first {} entries has root {root}, but the service signed root {} for that size (with {}): the stored entries are not the ones that were signed (restore the data dir from a backup or the archive)",
                head.size, head.root, head.key
            ));
        }
    }
    Ok(())
}

/// The signed heads a data dir records: the store's and the note beside it.
pub(crate) fn recorded_heads(
    store: &dyn LedgerStore,
    dir: Option<&DataDir>,
) -> Result<Vec<SignedHead>, StoreError> {
    let mut heads: Vec<SignedHead> = SignedHead::stored(store)?.into_iter().collect();
    if let Some(dir) = dir
        && let Some((size, root, key)) = dir.signed_head()?
        && let Some(root) = Hash::from_hex(&root)
    {
        heads.push(SignedHead { size, root, key });
    }
    Ok(heads)
}

/// The ledger's signing key and what it signed.
pub(crate) struct Signing {
    pub(super) key: Arc<SignerKey>,
    pub(super) verifier: VerifierKey,
    /// The same key as a `cosignature/v1` witness key (peer witnessing).
    pub(super) witness: SignerKey,
    /// The largest signed head made durable.
    pub(super) persisted: Mutex<Option<TreeHead>>,
    /// Held while a signed head is made durable, so the stored one only grows.
    pub(super) persisting: tokio::sync::Mutex<()>,
    /// Signed checkpoints of the newest sizes, with cosignatures added since.
    pub(super) cache: Mutex<BTreeMap<u64, SignedCheckpoint>>,
}

pub(super) fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Signing {
    /// Signing with `key`; `persisted` is the signed head the store holds
    /// (when it was signed by this key).
    pub(crate) fn new(key: Arc<SignerKey>, persisted: Option<TreeHead>) -> Signing {
        Signing {
            verifier: key.verifier(),
            witness: key.with_kind(KeyKind::CosignatureV1),
            key,
            persisted: Mutex::new(persisted),
            persisting: tokio::sync::Mutex::new(()),
            cache: Mutex::new(BTreeMap::new()),
        }
    }

    pub(super) fn covers(&self, size: u64) -> bool {
        relock(&self.persisted).is_some_and(|h| h.size >= size)
    }

    pub(super) fn sign(&self, head: TreeHead) -> Result<SignedCheckpoint, TreeError> {
        let mut cache = relock(&self.cache);
        if let Some(cp) = cache.get(&head.size) {
            return Ok(cp.clone());
        }
        let signed = Checkpoint::new(self.key.name(), head.size, head.root)
            .sign(&self.key)
            .map_err(|e| TreeError::Store(StoreError::Engine(e.to_string())))?;
        cache.insert(head.size, signed.clone());
        while cache.len() > CACHED {
            cache.pop_first();
        }
        Ok(signed)
    }
}

/// The tree root of `size` entries, from a store's tiles (and the edges of
/// its tree, [`crate::store::tiles::TileWriter::edges`]).
pub(crate) fn stored_root<S: LedgerStore + ?Sized>(
    nodes: &TiledNodes<EdgeTiles<'_, S>>,
    size: u64,
) -> Result<Hash, StoreError> {
    crate::merkle::tree_root(size, nodes).map_err(|e| match e {
        crate::merkle::proof::BuildError::Source(crate::merkle::tiles::TileError::Source {
            error,
            ..
        }) => error,
        other => StoreError::Corrupt {
            seq: size.saturating_sub(1),
            message: format!(
                "the stored Merkle tree cannot give the root of {size} entries: {other}"
            ),
        },
    })
}
