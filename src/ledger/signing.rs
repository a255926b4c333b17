//! Signed checkpoints: the ledger's key signs tree heads, never two that
//! are inconsistent.
//!
//! Nothing is signed on the commit path. A checkpoint is signed when one is
//! asked for (`GET /v1/checkpoint`, a proof, a rotation's manifest), from
//! the published tree head ([`super::tree`]) or, for a past size, from the
//! root the stored tiles give; Ed25519 signatures are deterministic, and the
//! last few are kept per size ([`CACHED`]), with any witness cosignatures
//! added to them since ([`Ledger::add_cosignature`]).
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
//! Peer witnessing (the cluster): [`Ledger::witness_key`] is the instance
//! key as a `cosignature/v1` key, [`Ledger::cosign`] cosigns a peer's
//! checkpoint with it, and [`Ledger::add_cosignature`] adds a peer's
//! cosignature to one of this ledger's recent checkpoints, which is then
//! served with it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::handle::{Durable, Ledger};
use super::traces::KnownHead;
use super::tree::{TreeError, TreeHead};
use crate::checkpoint::{Checkpoint, CheckpointError, SignedCheckpoint};
use crate::merkle::Hash;
use crate::merkle::tiles::TiledNodes;
use crate::note::{KeyKind, Signature, SignerKey, VerifierKey};
use crate::proofs::{ConsistencyProof, InclusionProof};
use crate::store::datadir::DataDir;
use crate::store::tiles::StoreTiles;
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
    key: Arc<SignerKey>,
    verifier: VerifierKey,
    /// The same key as a `cosignature/v1` witness key (peer witnessing).
    witness: SignerKey,
    /// The largest signed head made durable.
    persisted: Mutex<Option<TreeHead>>,
    /// Held while a signed head is made durable, so the stored one only grows.
    persisting: tokio::sync::Mutex<()>,
    /// Signed checkpoints of the newest sizes, with cosignatures added since.
    cache: Mutex<BTreeMap<u64, SignedCheckpoint>>,
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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

    fn covers(&self, size: u64) -> bool {
        relock(&self.persisted).is_some_and(|h| h.size >= size)
    }

    fn sign(&self, head: TreeHead) -> Result<SignedCheckpoint, TreeError> {
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

impl Ledger {
    /// The verifier key of the key that signs this ledger's checkpoints.
    pub fn verifier_key(&self) -> Option<&VerifierKey> {
        self.inner.signing.as_ref().map(|s| &s.verifier)
    }

    /// This instance's witness key: its signing key as a tlog-cosignature
    /// `cosignature/v1` key (type 0x04, same name). Peers pin it to check
    /// the cosignatures [`Ledger::cosign`] makes.
    pub fn witness_key(&self) -> Option<VerifierKey> {
        self.inner.signing.as_ref().map(|s| s.witness.verifier())
    }

    /// Cosigns a peer's checkpoint with this instance's witness key at
    /// `timestamp` (POSIX seconds); returns the cosignature, for the peer to
    /// add with [`Ledger::add_cosignature`]. A witness vouches that it saw
    /// this checkpoint and that it extends every earlier one of that log it
    /// cosigned: the caller verifies `peer` with the peer's log key and the
    /// consistency proof from the last size it cosigned, before asking.
    pub fn cosign(&self, peer: &SignedCheckpoint, timestamp: u64) -> Result<Signature, TreeError> {
        let signing = self.signing()?;
        let mut cosigned = peer.clone();
        cosigned
            .cosign(&signing.witness, timestamp)
            .map_err(|e| TreeError::OutOfRange(e.to_string()))?;
        let id = (signing.witness.name(), signing.witness.id());
        cosigned
            .note
            .signatures()
            .iter()
            .rev()
            .find(|s| (s.name.as_str(), s.key_id) == id)
            .cloned()
            .ok_or_else(|| TreeError::OutOfRange("the cosignature was not added".into()))
    }

    fn signing(&self) -> Result<&Signing, TreeError> {
        self.inner.signing.as_ref().ok_or(TreeError::NoSigningKey)
    }

    /// The signed checkpoint of every acknowledged entry (the published
    /// tree head), with the cosignatures added to it so far.
    pub async fn checkpoint(&self) -> Result<SignedCheckpoint, TreeError> {
        let head = self.tree_head();
        self.signed(head).await
    }

    /// The signed checkpoint of the first `size` entries (`size` at most the
    /// acknowledged head).
    pub async fn checkpoint_at(&self, size: u64) -> Result<SignedCheckpoint, TreeError> {
        let head = self.tree_head();
        let head = if size == head.size {
            head
        } else {
            TreeHead {
                size,
                root: self.tree_root_at(size)?,
            }
        };
        self.signed(head).await
    }

    /// Signs `head` once it is durably recorded as signed.
    async fn signed(&self, head: TreeHead) -> Result<SignedCheckpoint, TreeError> {
        let signing = self.signing()?;
        if !signing.covers(head.size) {
            let _one_at_a_time = signing.persisting.lock().await;
            if !signing.covers(head.size) {
                self.persist_signed_head(signing, head).await?;
            }
        }
        signing.sign(head)
    }

    /// Records `head` as the largest signed head: in the next group commit
    /// (waited for), then beside the store.
    async fn persist_signed_head(
        &self,
        signing: &Signing,
        head: TreeHead,
    ) -> Result<(), TreeError> {
        let record = SignedHead {
            size: head.size,
            root: head.root,
            key: signing.verifier.to_string(),
        };
        let value = serde_json::to_vec(&record).expect("a signed head serializes");
        let (tx, rx) = oneshot::channel();
        {
            self.inner.check_open()?;
            let mut queue = self.inner.lock_queue();
            if queue.shutdown {
                return Err(super::LedgerError::Unavailable("the ledger is closing".into()).into());
            }
            if queue.push_meta(meta::SIGNED_TREE_HEAD, value, tx) {
                self.inner.work.notify_one();
            }
        }
        Durable::from_receiver(rx).wait().await?;
        *relock(&signing.persisted) = Some(head);
        if let Some(dir) = &self.inner.datadir
            && let Err(e) = dir.note_signed_head(head.size, &head.root.to_hex(), &record.key)
        {
            tracing::warn!(error = %e, "could not note the signed tree head beside the store");
        }
        Ok(())
    }

    /// Adds a witness's cosignature to the signed checkpoint of `size`
    /// (which must be one of the newest [`CACHED`] sizes signed): it is
    /// checked against `witness` (a `cosignature/v1` verifier key) and then
    /// served with that checkpoint (`GET /v1/checkpoint`, proofs). Returns
    /// the checkpoint with it.
    pub fn add_cosignature(
        &self,
        size: u64,
        witness: &VerifierKey,
        signature: Signature,
    ) -> Result<SignedCheckpoint, TreeError> {
        let signing = self.signing()?;
        let mut cache = relock(&signing.cache);
        let cp = cache.get_mut(&size).ok_or_else(|| {
            TreeError::OutOfRange(format!(
                "no checkpoint of size {size} was signed recently (the newest {CACHED} sizes are kept)"
            ))
        })?;
        cp.add_cosignature(witness, signature)
            .map_err(|e: CheckpointError| TreeError::OutOfRange(e.to_string()))?;
        Ok(cp.clone())
    }

    /// The inclusion proof of entry `seq` in the tree of `tree_size`
    /// entries (default: every acknowledged entry), with its checkpoint.
    pub async fn inclusion_proof(
        &self,
        seq: u64,
        tree_size: Option<u64>,
    ) -> Result<InclusionProof, TreeError> {
        let size = tree_size.unwrap_or_else(|| self.tree_head().size);
        if seq >= size {
            return Err(TreeError::OutOfRange(format!(
                "entry {seq} is not in a tree of {size} entries"
            )));
        }
        let (leaf_hash, proof) = self.inclusion(seq, size)?;
        let checkpoint = self.checkpoint_at(size).await?;
        Ok(InclusionProof {
            seq,
            tree_size: size,
            leaf_hash,
            proof,
            checkpoint: checkpoint.to_string(),
        })
    }

    /// The consistency proof from `from_size` (at least 1) to `to_size`
    /// entries (default: every acknowledged entry), with the checkpoint of
    /// `to_size`.
    pub async fn consistency_proof(
        &self,
        from_size: u64,
        to_size: Option<u64>,
    ) -> Result<ConsistencyProof, TreeError> {
        let to = to_size.unwrap_or_else(|| self.tree_head().size);
        if from_size == 0 || from_size > to {
            return Err(TreeError::OutOfRange(format!(
                "no consistency proof from {from_size} to {to} entries (need 1 <= from_size <= to_size)"
            )));
        }
        let proof = self.consistency(from_size, to)?;
        let checkpoint = self.checkpoint_at(to).await?;
        Ok(ConsistencyProof {
            from_size,
            to_size: to,
            proof,
            checkpoint: checkpoint.to_string(),
        })
    }
}

/// The tree root of `size` entries of a store, from its tiles.
pub(crate) fn stored_root(store: &dyn LedgerStore, size: u64) -> Result<Hash, StoreError> {
    crate::merkle::tree_root(size, &TiledNodes(StoreTiles(store))).map_err(|e| match e {
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
