//! The ledger's provable-history API: its Merkle tree head, inclusion and
//! consistency proofs and past roots from the stored tiles and the tree's
//! in-memory right edge ([`super::tree`]), signed checkpoints made durable before they are handed
//! out, and peer witnessing (cosigning a peer's checkpoint, adding a peer's
//! cosignature) with the ledger's key ([`super::signing`]). The types these
//! methods use live in those two files, which `Core` holds; the methods on
//! [`Ledger`] live here, above both, so that neither imports the handle.

use tokio::sync::oneshot;

use super::handle::{Durable, Ledger};
use super::signing::{CACHED, SignedHead, Signing, relock};
use super::tree::{TreeError, TreeHead};
use crate::checkpoint::{CheckpointError, SignedCheckpoint};
use crate::merkle::{Hash, NodeId, NodeSource, consistency_proof, inclusion_proof, tree_root};
use crate::note::{Signature, VerifierKey};
use crate::proofs::{ConsistencyProof, InclusionProof};
use crate::store::meta;

impl Ledger {
    /// The Merkle tree head of the durable entries: what `GET /v1/checkpoint`
    /// signs. Every acknowledged entry is under it.
    pub fn tree_head(&self) -> TreeHead {
        self.inner.tree.head()
    }

    /// The published head, with `size` checked against it.
    fn head_covering(&self, size: u64, what: &str) -> Result<TreeHead, TreeError> {
        let head = self.tree_head();
        if size > head.size {
            return Err(TreeError::OutOfRange(format!(
                "{what} {size} is past the tree of the {} acknowledged entries",
                head.size
            )));
        }
        Ok(head)
    }

    /// The tree head of the first `size` entries (at most the published head).
    pub fn tree_root_at(&self, size: u64) -> Result<Hash, TreeError> {
        let head = self.head_covering(size, "tree size")?;
        if size == head.size {
            return Ok(head.root);
        }
        Ok(tree_root(size, &self.inner.tree.nodes(self.store()))?)
    }

    /// The leaf hash of entry `seq` and its inclusion proof in the tree of
    /// `size` entries (RFC 9162 §2.1.3.1), from the tiles.
    pub fn inclusion(&self, seq: u64, size: u64) -> Result<(Hash, Vec<Hash>), TreeError> {
        self.head_covering(size, "tree_size")?;
        let nodes = self.inner.tree.nodes(self.store());
        let proof = inclusion_proof(seq, size, &nodes)?;
        let leaf = nodes.read_nodes(&[NodeId::new(0, seq)])?;
        Ok((leaf[0], proof))
    }

    /// The consistency proof from the tree of `from` entries to the tree of
    /// `to` entries (RFC 9162 §2.1.4.1), from the tiles.
    pub fn consistency(&self, from: u64, to: u64) -> Result<Vec<Hash>, TreeError> {
        self.head_covering(to, "to_size")?;
        Ok(consistency_proof(
            from,
            to,
            &self.inner.tree.nodes(self.store()),
        )?)
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
