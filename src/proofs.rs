//! Proof documents: the JSON a kernel answers at `/v1/proofs/inclusion` and
//! `/v1/proofs/consistency` (docs/proofs.md), how they are built from the
//! stored tree, and how an auditor checks one offline with nothing but the
//! log's verifier key.
//!
//! Hashes in the documents are hex; the checkpoint is the signed note for
//! the document's tree size, so a document proves what it claims only
//! together with a signature by the log's key.

use serde::{Deserialize, Serialize};

use crate::checkpoint::{CheckpointError, SignedCheckpoint, VerifiedCheckpoint, Witnesses};
use crate::merkle::proof::BuildError;
use crate::merkle::{
    Hash, NodeId, NodeSource, ProofError, consistency_proof, entry_leaf_hash, inclusion_proof,
    verify_consistency, verify_inclusion,
};
use crate::note::VerifierKey;

/// An inclusion proof: entry `seq` is leaf `seq` of the tree of `tree_size`
/// entries signed in `checkpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// The entry's `ledger_seq` (its leaf index).
    pub seq: u64,
    /// The size of the tree the proof is for.
    pub tree_size: u64,
    /// The leaf hash: `SHA-256(0x00 ‖ raw entry_hash)`.
    pub leaf_hash: Hash,
    /// The audit path, from the leaf's sibling up.
    pub proof: Vec<Hash>,
    /// The signed checkpoint of `tree_size` entries.
    pub checkpoint: String,
}

/// A consistency proof: the tree of `from_size` entries is a prefix of the
/// tree of `to_size` entries signed in `checkpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    /// The older size.
    pub from_size: u64,
    /// The newer size.
    pub to_size: u64,
    /// The RFC 9162 consistency path.
    pub proof: Vec<Hash>,
    /// The signed checkpoint of `to_size` entries.
    pub checkpoint: String,
}

/// Why a proof document does not prove its claim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofDocError {
    /// Not a proof document, or not one that can be checked: unusable input.
    #[error("{0}")]
    Unusable(String),
    /// A checkpoint does not verify.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The document, checkpoint and entry do not agree.
    #[error("{0}")]
    Mismatch(String),
    /// The proof does not lead to the signed root.
    #[error("proof: {0}")]
    Proof(#[from] ProofError),
}

impl ProofDocError {
    /// True for unusable input (exit 2), false for a claim that fails (exit 1).
    pub fn is_unusable(&self) -> bool {
        match self {
            ProofDocError::Unusable(_) => true,
            ProofDocError::Checkpoint(e) => e.is_unusable(),
            _ => false,
        }
    }
}

impl InclusionProof {
    /// Builds the document for entry `seq` from the stored tree, given the
    /// signed checkpoint of the tree size to prove against.
    pub fn build<S: NodeSource>(
        seq: u64,
        checkpoint: &SignedCheckpoint,
        source: &S,
    ) -> Result<InclusionProof, BuildError<S::Error>> {
        let tree_size = checkpoint.checkpoint.size;
        let proof = inclusion_proof(seq, tree_size, source)?;
        let leaf = source
            .read_nodes(&[NodeId::new(0, seq)])
            .map_err(BuildError::Source)?;
        let leaf_hash = *leaf
            .first()
            .ok_or(BuildError::ShortAnswer { asked: 1, got: 0 })?;
        Ok(InclusionProof {
            seq,
            tree_size,
            leaf_hash,
            proof,
            checkpoint: checkpoint.to_string(),
        })
    }

    /// Reads a document from its JSON.
    pub fn parse(json: &str) -> Result<InclusionProof, ProofDocError> {
        serde_json::from_str(json)
            .map_err(|e| ProofDocError::Unusable(format!("not an inclusion proof document: {e}")))
    }

    /// Checks that the entry whose `entry_hash` is `entry_hash` is in the log
    /// of `log_key`: the checkpoint's signatures, that it is for this tree
    /// size, that the leaf is this entry's, and the proof.
    pub fn verify(
        &self,
        entry_hash: &[u8; 32],
        log_key: &VerifierKey,
        witnesses: &Witnesses,
    ) -> Result<VerifiedCheckpoint, ProofDocError> {
        let verified = SignedCheckpoint::parse(&self.checkpoint)?.verify(log_key, witnesses)?;
        let signed = &verified.checkpoint;
        if signed.size != self.tree_size {
            return Err(ProofDocError::Mismatch(format!(
                "the proof is for a tree of {} entries, its checkpoint for {}",
                self.tree_size, signed.size
            )));
        }
        let leaf = entry_leaf_hash(entry_hash);
        if leaf != self.leaf_hash {
            return Err(ProofDocError::Mismatch(format!(
                "the proof is for leaf {}, the entry's leaf hash is {leaf}",
                self.leaf_hash
            )));
        }
        verify_inclusion(self.seq, self.tree_size, &leaf, &self.proof, &signed.root)?;
        Ok(verified)
    }
}

impl ConsistencyProof {
    /// Builds the document from `from_size` to the size of `checkpoint`.
    pub fn build<S: NodeSource>(
        from_size: u64,
        checkpoint: &SignedCheckpoint,
        source: &S,
    ) -> Result<ConsistencyProof, BuildError<S::Error>> {
        let to_size = checkpoint.checkpoint.size;
        Ok(ConsistencyProof {
            from_size,
            to_size,
            proof: consistency_proof(from_size, to_size, source)?,
            checkpoint: checkpoint.to_string(),
        })
    }

    /// Reads a document from its JSON.
    pub fn parse(json: &str) -> Result<ConsistencyProof, ProofDocError> {
        serde_json::from_str(json)
            .map_err(|e| ProofDocError::Unusable(format!("not a consistency proof document: {e}")))
    }

    /// Checks that the log of `log_key` at this document's checkpoint
    /// extends the `old` checkpoint (signed by the same key): both
    /// signatures, the sizes, and the proof. Returns the old and new
    /// checkpoints.
    pub fn verify(
        &self,
        old: &str,
        log_key: &VerifierKey,
        witnesses: &Witnesses,
    ) -> Result<(VerifiedCheckpoint, VerifiedCheckpoint), ProofDocError> {
        let old = SignedCheckpoint::parse(old)?.verify(log_key, &Witnesses::none())?;
        let new = SignedCheckpoint::parse(&self.checkpoint)?.verify(log_key, witnesses)?;
        let (o, n) = (&old.checkpoint, &new.checkpoint);
        if o.size == 0 {
            return Err(ProofDocError::Unusable(
                "the old checkpoint is of the empty tree: every tree extends it, no proof is needed"
                    .into(),
            ));
        }
        if (self.from_size, self.to_size) != (o.size, n.size) {
            return Err(ProofDocError::Mismatch(format!(
                "the proof goes from {} to {} entries, the checkpoints are of {} and {}",
                self.from_size, self.to_size, o.size, n.size
            )));
        }
        verify_consistency(o.size, n.size, &o.root, &n.root, &self.proof)?;
        Ok((old, new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;
    use crate::merkle::tiles::{MemoryTiles, TiledNodes};
    use crate::note::{KeyKind, SignerKey};

    fn entry_hash(i: u64) -> [u8; 32] {
        let mut h = [0u8; 32];
        h[..8].copy_from_slice(&i.to_be_bytes());
        h[31] = 0x5a;
        h
    }

    fn log(n: u64) -> MemoryTiles {
        let mut tiles = MemoryTiles::new();
        for i in 0..n {
            tiles.append(entry_leaf_hash(&entry_hash(i)));
        }
        tiles
    }

    fn signed(key: &SignerKey, tiles: &MemoryTiles) -> SignedCheckpoint {
        Checkpoint::new(key.name(), tiles.size(), tiles.root())
            .sign(key)
            .unwrap()
    }

    #[test]
    fn an_inclusion_document_round_trips_and_verifies() {
        let key = SignerKey::generate("kernels/t", KeyKind::Ed25519).unwrap();
        let tiles = log(1000);
        let cp = signed(&key, &tiles);
        let doc = InclusionProof::build(617, &cp, &TiledNodes(&tiles)).unwrap();
        let json = serde_json::to_string(&doc).unwrap();
        let doc = InclusionProof::parse(&json).unwrap();
        let none = Witnesses::none();
        let v = doc
            .verify(&entry_hash(617), &key.verifier(), &none)
            .unwrap();
        assert_eq!(v.checkpoint.size, 1000);

        // Another entry, another key, a doctored size, a flipped proof hash.
        assert!(matches!(
            doc.verify(&entry_hash(618), &key.verifier(), &none),
            Err(ProofDocError::Mismatch(_))
        ));
        let other = SignerKey::generate("kernels/t", KeyKind::Ed25519).unwrap();
        let err = doc
            .verify(&entry_hash(617), &other.verifier(), &none)
            .unwrap_err();
        assert!(!err.is_unusable(), "{err}");
        let mut sized = doc.clone();
        sized.tree_size = 999;
        assert!(matches!(
            sized.verify(&entry_hash(617), &key.verifier(), &none),
            Err(ProofDocError::Mismatch(_))
        ));
        let mut flipped = doc.clone();
        flipped.proof[3].0[0] ^= 1;
        assert!(matches!(
            flipped.verify(&entry_hash(617), &key.verifier(), &none),
            Err(ProofDocError::Proof(_))
        ));
        assert!(InclusionProof::parse("{}").unwrap_err().is_unusable());
    }

    #[test]
    fn a_consistency_document_verifies_against_the_old_checkpoint() {
        let key = SignerKey::generate("kernels/c", KeyKind::Ed25519).unwrap();
        let old_tiles = log(300);
        let old = signed(&key, &old_tiles).to_string();
        let tiles = log(1234);
        let cp = signed(&key, &tiles);
        let doc = ConsistencyProof::build(300, &cp, &TiledNodes(&tiles)).unwrap();
        let doc = ConsistencyProof::parse(&serde_json::to_string(&doc).unwrap()).unwrap();
        let none = Witnesses::none();
        let (o, n) = doc.verify(&old, &key.verifier(), &none).unwrap();
        assert_eq!((o.checkpoint.size, n.checkpoint.size), (300, 1234));

        // An old checkpoint of another history, signed by the same key.
        let mut forked = log(299);
        forked.append(entry_leaf_hash(&[9u8; 32]));
        let fork = signed(&key, &forked).to_string();
        assert!(matches!(
            doc.verify(&fork, &key.verifier(), &none),
            Err(ProofDocError::Proof(_))
        ));
        // An old checkpoint of another size.
        let other_size = signed(&key, &log(301)).to_string();
        assert!(matches!(
            doc.verify(&other_size, &key.verifier(), &none),
            Err(ProofDocError::Mismatch(_))
        ));
        // The empty tree needs no proof.
        let empty = signed(&key, &log(0)).to_string();
        assert!(
            doc.verify(&empty, &key.verifier(), &none)
                .unwrap_err()
                .is_unusable()
        );
    }
}
