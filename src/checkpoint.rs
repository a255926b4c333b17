//! C2SP tlog-checkpoints: the signed tree head of a kernel's Merkle tree.
//!
//! A checkpoint is a signed note whose text is `<origin>\n<tree size>\n<base64
//! root hash>\n`, optionally followed by extension lines. It is signed by the
//! log's Ed25519 key, whose name is the origin (`kernels/<kernel_id>` by
//! default), and may carry `cosignature/v1` lines of witnesses. Verifying one
//! ([`SignedCheckpoint::verify`]) checks the log's signature, that the origin
//! is the key's name, and, when witnesses are given, that at least a quorum of
//! them cosigned it.

use std::fmt;

use crate::merkle::Hash;
use crate::note::{KeyKind, Note, NoteError, Signature, SignerKey, VerifierKey};

/// A tree head: what a checkpoint says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity (the signing key's name).
    pub origin: String,
    /// Number of leaves (entries) in the tree.
    pub size: u64,
    /// The tree head of those leaves.
    pub root: Hash,
    /// Extension lines (opaque, rarely used; kept so signatures still verify).
    pub extensions: Vec<String>,
}

/// Why a checkpoint is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The text is not a checkpoint: unusable input.
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    /// The signatures do not hold (see [`NoteError`]).
    #[error("{0}")]
    Note(#[from] NoteError),
    /// The log's key did not sign it (only witnesses did).
    #[error("the checkpoint is not signed by the log key {0}")]
    NotSignedByLog(String),
    /// Signed by the key, but for another origin.
    #[error("the checkpoint's origin is {origin:?}, the key is {key:?}'s")]
    WrongOrigin {
        /// The origin line.
        origin: String,
        /// The key's name.
        key: String,
    },
    /// Fewer witnesses cosigned it than the quorum.
    #[error("{cosigned} of the given witnesses cosigned the checkpoint, the quorum is {quorum}")]
    NoQuorum {
        /// Witnesses whose cosignature verified.
        cosigned: usize,
        /// Cosignatures required.
        quorum: usize,
    },
    /// The keys given cannot check a checkpoint.
    #[error("{0}")]
    BadPolicy(String),
}

impl CheckpointError {
    /// True for input that is unusable (not a checkpoint, unusable keys)
    /// rather than a checkpoint that does not verify.
    pub fn is_unusable(&self) -> bool {
        match self {
            CheckpointError::Malformed(_) | CheckpointError::BadPolicy(_) => true,
            CheckpointError::Note(e) => e.is_malformed(),
            _ => false,
        }
    }
}

impl Checkpoint {
    /// The checkpoint of a tree of `size` leaves with root `root`.
    pub fn new(origin: impl Into<String>, size: u64, root: Hash) -> Checkpoint {
        Checkpoint {
            origin: origin.into(),
            size,
            root,
            extensions: Vec::new(),
        }
    }

    /// The note text: origin, size, base64 root, extension lines.
    pub fn body(&self) -> String {
        let mut text = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            self.root.to_base64()
        );
        for line in &self.extensions {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// Parses a note text as a checkpoint.
    pub fn from_body(text: &str) -> Result<Checkpoint, CheckpointError> {
        let bad = |why: &str| CheckpointError::Malformed(why.to_owned());
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("the text does not end in a newline"))?;
        let mut lines = body.split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(bad("fewer than three lines (origin, size, root hash)"));
        };
        if origin.is_empty() {
            return Err(bad("the origin line is empty"));
        }
        let canonical = !size.is_empty()
            && size.bytes().all(|b| b.is_ascii_digit())
            && (size == "0" || !size.starts_with('0'));
        let size = size
            .parse::<u64>()
            .ok()
            .filter(|_| canonical)
            .ok_or_else(|| bad("the size line is not a decimal number without leading zeroes"))?;
        let root = Hash::from_base64(root)
            .filter(|h| h.to_base64() == root)
            .ok_or_else(|| bad("the root hash line is not the base64 of 32 bytes"))?;
        let extensions: Vec<String> = lines.map(str::to_owned).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(bad("an empty extension line"));
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }

    /// The checkpoint signed by the log's `key`, as a note.
    pub fn sign(&self, key: &SignerKey) -> Result<SignedCheckpoint, CheckpointError> {
        if key.kind() != KeyKind::Ed25519 {
            return Err(CheckpointError::BadPolicy(
                "a log signs with an Ed25519 key (type 0x01), not a cosigner key".into(),
            ));
        }
        let mut note = Note::new(self.body())?;
        note.sign(key, 0);
        Ok(SignedCheckpoint {
            checkpoint: self.clone(),
            note,
        })
    }
}

/// The witnesses a verifier trusts, and how many must have cosigned.
#[derive(Debug, Clone)]
pub struct Witnesses {
    keys: Vec<VerifierKey>,
    quorum: usize,
}

impl Witnesses {
    /// `keys` (cosignature/v1 keys, all different) of which at least
    /// `quorum` must have cosigned; `None` means all of them.
    pub fn new(
        keys: Vec<VerifierKey>,
        quorum: Option<usize>,
    ) -> Result<Witnesses, CheckpointError> {
        let quorum = quorum.unwrap_or(keys.len());
        if let Some(k) = keys.iter().find(|k| k.kind() != KeyKind::CosignatureV1) {
            return Err(CheckpointError::BadPolicy(format!(
                "witness key {k} is not a cosignature/v1 key (type 0x04)"
            )));
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i]
                .iter()
                .any(|o| (o.name(), o.id()) == (k.name(), k.id()))
            {
                return Err(CheckpointError::BadPolicy(format!(
                    "witness key {k} is given twice"
                )));
            }
        }
        if quorum > keys.len() {
            return Err(CheckpointError::BadPolicy(format!(
                "a quorum of {quorum} needs at least {quorum} witness keys, {} given",
                keys.len()
            )));
        }
        Ok(Witnesses { keys, quorum })
    }

    /// No witnesses: only the log's signature is checked.
    pub fn none() -> Witnesses {
        Witnesses {
            keys: Vec::new(),
            quorum: 0,
        }
    }
}

/// A witness's cosignature that verified.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Cosignature {
    /// The witness's key name.
    pub name: String,
    /// When it cosigned (POSIX seconds).
    pub timestamp: u64,
}

/// A checkpoint whose signatures held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCheckpoint {
    /// What it says.
    pub checkpoint: Checkpoint,
    /// The trusted witnesses that cosigned it.
    pub cosignatures: Vec<Cosignature>,
}

/// A checkpoint with its signatures, as served and stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// What it says.
    pub checkpoint: Checkpoint,
    /// The note it was read from (its text is the checkpoint's body).
    pub note: Note,
}

impl SignedCheckpoint {
    /// Parses a signed checkpoint (nothing is verified yet).
    pub fn parse(text: &str) -> Result<SignedCheckpoint, CheckpointError> {
        let note = Note::parse(text)?;
        let checkpoint = Checkpoint::from_body(note.text())?;
        Ok(SignedCheckpoint { checkpoint, note })
    }

    /// Adds a witness's cosignature made at `timestamp` (POSIX seconds).
    pub fn cosign(&mut self, witness: &SignerKey, timestamp: u64) -> Result<(), CheckpointError> {
        if witness.kind() != KeyKind::CosignatureV1 {
            return Err(CheckpointError::BadPolicy(
                "a witness cosigns with a cosignature/v1 key (type 0x04)".into(),
            ));
        }
        self.note.sign(witness, timestamp);
        Ok(())
    }

    /// Adds a witness's cosignature made elsewhere (received over the
    /// network), after checking it against `witness` (a `cosignature/v1`
    /// key); a cosignature that does not verify is refused and nothing
    /// changes. Returns its timestamp.
    pub fn add_cosignature(
        &mut self,
        witness: &VerifierKey,
        signature: Signature,
    ) -> Result<u64, CheckpointError> {
        if witness.kind() != KeyKind::CosignatureV1 {
            return Err(CheckpointError::BadPolicy(format!(
                "witness key {witness} is not a cosignature/v1 key (type 0x04)"
            )));
        }
        if (signature.name.as_str(), signature.key_id) != (witness.name(), witness.id()) {
            return Err(CheckpointError::BadPolicy(format!(
                "the cosignature is by {}+{:08x}, not by the witness key {witness}",
                signature.name, signature.key_id
            )));
        }
        let verified = witness
            .verify(self.note.text().as_bytes(), &signature.bytes)
            .ok_or(NoteError::BadSignature {
                name: signature.name.clone(),
                id: signature.key_id,
            })?;
        self.note.add_signature(signature)?;
        Ok(verified.timestamp.unwrap_or_default())
    }

    /// Checks the log's signature by `log_key`, the origin, and the
    /// witnesses' quorum.
    pub fn verify(
        &self,
        log_key: &VerifierKey,
        witnesses: &Witnesses,
    ) -> Result<VerifiedCheckpoint, CheckpointError> {
        if log_key.kind() != KeyKind::Ed25519 {
            return Err(CheckpointError::BadPolicy(format!(
                "the log key {log_key} is not an Ed25519 key (type 0x01)"
            )));
        }
        let mut known = vec![log_key.clone()];
        known.extend(witnesses.keys.iter().cloned());
        let verified = self.note.verify(&known)?;
        if !verified.iter().any(|v| v.key == 0) {
            return Err(CheckpointError::NotSignedByLog(log_key.to_string()));
        }
        if self.checkpoint.origin != log_key.name() {
            return Err(CheckpointError::WrongOrigin {
                origin: self.checkpoint.origin.clone(),
                key: log_key.name().to_owned(),
            });
        }
        let cosignatures: Vec<Cosignature> = verified
            .iter()
            .filter(|v| v.key > 0)
            .map(|v| Cosignature {
                name: known[v.key].name().to_owned(),
                timestamp: v.timestamp.unwrap_or_default(),
            })
            .collect();
        if cosignatures.len() < witnesses.quorum {
            return Err(CheckpointError::NoQuorum {
                cosigned: cosignatures.len(),
                quorum: witnesses.quorum,
            });
        }
        Ok(VerifiedCheckpoint {
            checkpoint: self.checkpoint.clone(),
            cosignatures,
        })
    }
}

impl fmt::Display for SignedCheckpoint {
    /// The signed note, as served.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.note.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::leaf_hash;

    fn log_key(name: &str) -> SignerKey {
        SignerKey::generate(name, KeyKind::Ed25519).unwrap()
    }

    fn witness(name: &str) -> SignerKey {
        SignerKey::generate(name, KeyKind::CosignatureV1).unwrap()
    }

    #[test]
    fn a_signed_checkpoint_reads_back_and_verifies() {
        let key = log_key("kernels/prod-001");
        let cp = Checkpoint::new("kernels/prod-001", 42, leaf_hash(b"x"));
        let signed = cp.sign(&key).unwrap();
        let text = signed.to_string();
        assert!(text.starts_with(&format!(
            "kernels/prod-001\n42\n{}\n\n\u{2014} kernels/prod-001 ",
            leaf_hash(b"x").to_base64()
        )));
        let parsed = SignedCheckpoint::parse(&text).unwrap();
        assert_eq!(parsed.checkpoint, cp);
        let v = parsed.verify(&key.verifier(), &Witnesses::none()).unwrap();
        assert_eq!(v.checkpoint, cp);
        assert!(v.cosignatures.is_empty());
    }

    #[test]
    fn a_wrong_key_or_origin_or_change_is_rejected() {
        let key = log_key("kernels/a");
        let other = log_key("kernels/a");
        let signed = Checkpoint::new("kernels/a", 5, leaf_hash(b"r"))
            .sign(&key)
            .unwrap();
        let err = signed
            .verify(&other.verifier(), &Witnesses::none())
            .unwrap_err();
        assert!(matches!(
            err,
            CheckpointError::Note(NoteError::NoKnownSignature { .. })
        ));
        assert!(!err.is_unusable());

        // Signed by the key, but claiming another origin.
        let misnamed = Checkpoint::new("kernels/b", 5, leaf_hash(b"r"))
            .sign(&key)
            .unwrap();
        assert!(matches!(
            misnamed.verify(&key.verifier(), &Witnesses::none()),
            Err(CheckpointError::WrongOrigin { .. })
        ));

        // The size changed after signing.
        let changed = signed.to_string().replacen("\n5\n", "\n6\n", 1);
        assert!(matches!(
            SignedCheckpoint::parse(&changed)
                .unwrap()
                .verify(&key.verifier(), &Witnesses::none()),
            Err(CheckpointError::Note(NoteError::BadSignature { .. }))
        ));
    }

    #[test]
    fn bodies_are_parsed_strictly() {
        let root = leaf_hash(b"r").to_base64();
        let ok = format!("o\n10\n{root}\n");
        assert_eq!(Checkpoint::from_body(&ok).unwrap().size, 10);
        let ext = format!("o\n0\n{root}\nextension one\nx\n");
        let cp = Checkpoint::from_body(&ext).unwrap();
        assert_eq!(cp.extensions, vec!["extension one", "x"]);
        assert_eq!(cp.body(), ext);
        for bad in [
            format!("o\n10\n{root}"),
            "o\n10\n".to_owned(),
            format!("\n10\n{root}\n"),
            format!("o\n010\n{root}\n"),
            format!("o\n+10\n{root}\n"),
            format!("o\n-1\n{root}\n"),
            format!("o\n 10\n{root}\n"),
            format!("o\n18446744073709551616\n{root}\n"),
            "o\n10\nAAAA\n".to_owned(),
            format!("o\n10\n{}\n", &root[..43]),
            format!("o\n10\n{root}\n\nx\n"),
        ] {
            assert!(
                matches!(
                    Checkpoint::from_body(&bad),
                    Err(CheckpointError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn witnesses_count_towards_the_quorum() {
        let key = log_key("kernels/w");
        let (w1, w2, w3) = (
            witness("w1.example"),
            witness("w2.example"),
            witness("w3.example"),
        );
        let mut signed = Checkpoint::new("kernels/w", 9, leaf_hash(b"q"))
            .sign(&key)
            .unwrap();
        signed.cosign(&w1, 1_700_000_001).unwrap();
        signed.cosign(&w2, 1_700_000_002).unwrap();
        let signed = SignedCheckpoint::parse(&signed.to_string()).unwrap();
        let all = vec![w1.verifier(), w2.verifier(), w3.verifier()];

        let v = signed
            .verify(
                &key.verifier(),
                &Witnesses::new(all.clone(), Some(2)).unwrap(),
            )
            .unwrap();
        assert_eq!(
            v.cosignatures,
            vec![
                Cosignature {
                    name: "w1.example".into(),
                    timestamp: 1_700_000_001
                },
                Cosignature {
                    name: "w2.example".into(),
                    timestamp: 1_700_000_002
                },
            ]
        );
        assert_eq!(
            signed.verify(&key.verifier(), &Witnesses::new(all.clone(), None).unwrap()),
            Err(CheckpointError::NoQuorum {
                cosigned: 2,
                quorum: 3
            })
        );
        // Witnesses alone do not make a checkpoint.
        let other = log_key("kernels/w");
        assert!(matches!(
            signed.verify(
                &other.verifier(),
                &Witnesses::new(all.clone(), Some(1)).unwrap()
            ),
            Err(CheckpointError::NotSignedByLog(_))
        ));
        // A log key is not a witness key, a witness may not be given twice,
        // and the quorum cannot exceed the witnesses.
        assert!(
            Witnesses::new(vec![key.verifier()], None)
                .unwrap_err()
                .is_unusable()
        );
        assert!(Witnesses::new(vec![w1.verifier(), w1.verifier()], None).is_err());
        assert!(Witnesses::new(vec![w1.verifier()], Some(2)).is_err());
        // A cosignature whose checkpoint changed rejects the note.
        let tampered = signed.to_string().replacen("\n9\n", "\n8\n", 1);
        assert!(
            SignedCheckpoint::parse(&tampered)
                .unwrap()
                .verify(&key.verifier(), &Witnesses::new(all, Some(1)).unwrap())
                .is_err()
        );
    }
}
