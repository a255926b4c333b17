//! Ed25519 keys in the C2SP signed-note text formats, parsed once into
//! [`VerifierKey`] and [`SignerKey`].
//!
//! * verifier key: `<name>+<8 hex key id>+<base64(type ‖ 32-byte public key)>`
//! * private key: `PRIVATE+KEY+<name>+<8 hex key id>+<base64(type ‖ 32-byte seed)>`
//! * key id: the first 4 bytes, big-endian, of `SHA-256(name ‖ "\n" ‖ type ‖ public key)`
//!
//! Two signature types are supported: `0x01`, a plain Ed25519 signature of
//! the note text (what a log signs its checkpoints with), and `0x04`, a
//! C2SP tlog-cosignature `cosignature/v1`: an Ed25519 signature, by a
//! witness, of `"cosignature/v1\ntime <t>\n"` followed by the note text,
//! carried as `u64 t ‖ signature`. The cryptography is ring's Ed25519.

use std::fmt;

use base64::Engine;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};

/// Standard base64 with padding, as Go's `StdEncoding` reads it (it does
/// not insist that unused trailing bits are zero).
pub(crate) const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// Length of an Ed25519 signature.
const SIGNATURE_LEN: usize = 64;

/// What a key signs, by its signature type byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// `0x01`: Ed25519 over the note text (a log's own signature).
    Ed25519,
    /// `0x04`: a timestamped `cosignature/v1` (a witness's).
    CosignatureV1,
}

impl KeyKind {
    /// The signature type byte.
    pub fn type_byte(self) -> u8 {
        match self {
            KeyKind::Ed25519 => 0x01,
            KeyKind::CosignatureV1 => 0x04,
        }
    }

    fn from_type_byte(byte: u8) -> Option<KeyKind> {
        match byte {
            0x01 => Some(KeyKind::Ed25519),
            0x04 => Some(KeyKind::CosignatureV1),
            _ => None,
        }
    }
}

/// Why a key text is not a usable key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text does not have the key format.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// "verifier key" or "private key".
        what: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The key names a signature type we do not support.
    #[error("unsupported signature type 0x{0:02x} (supported: 0x01 Ed25519, 0x04 cosignature/v1)")]
    UnsupportedType(u8),
    /// The stated key id is not the one the key has.
    #[error("key id {stated:08x} does not match the key (its id is {computed:08x})")]
    WrongKeyId {
        /// The id in the text.
        stated: u32,
        /// The id computed from name, type and public key.
        computed: u32,
    },
    /// A key name with a space or a `+`, or an empty one.
    #[error("invalid key name {0:?}: it must be non-empty, without spaces or '+'")]
    InvalidName(String),
    /// The system's random source failed.
    #[error("the system random number generator failed")]
    Random,
}

/// Whether `name` can name a key: non-empty, no Unicode space, no `+`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// The key id of a public key: `SHA-256(name ‖ "\n" ‖ type ‖ key)[:4]`, big-endian.
pub fn key_id(name: &str, kind: KeyKind, public: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([kind.type_byte()]);
    h.update(public);
    let digest = h.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The message a `cosignature/v1` signs for a note text at `timestamp`.
fn cosigned_message(timestamp: u64, text: &[u8]) -> Vec<u8> {
    let mut message = format!("cosignature/v1\ntime {timestamp}\n").into_bytes();
    message.extend_from_slice(text);
    message
}

/// A key that checks signatures: parsed from its verifier key text.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct VerifierKey {
    name: String,
    id: u32,
    kind: KeyKind,
    public: [u8; 32],
}

/// What a verified signature said beyond "valid".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The cosignature's time (POSIX seconds); `None` for a plain signature.
    pub timestamp: Option<u64>,
}

impl VerifierKey {
    /// Parses `<name>+<key id>+<base64(type ‖ public key)>`.
    pub fn parse(text: &str) -> Result<VerifierKey, KeyError> {
        let (name, stated, kind, public) = parse_key_text(
            text,
            "verifier key",
            "expected <name>+<key id>+<key>",
            "an Ed25519 public key is 32 bytes",
        )?;
        let computed = key_id(name, kind, &public);
        if computed != stated {
            return Err(KeyError::WrongKeyId { stated, computed });
        }
        Ok(VerifierKey {
            name: name.to_owned(),
            id: stated,
            kind,
            public,
        })
    }

    /// The key's name (a log's origin, or a witness's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The signature type.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The 32-byte Ed25519 public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public
    }

    /// Checks `signature` (the bytes after the key id) over the note `text`.
    pub fn verify(&self, text: &[u8], signature: &[u8]) -> Option<Verified> {
        let public = UnparsedPublicKey::new(&ED25519, &self.public);
        match self.kind {
            KeyKind::Ed25519 => {
                if signature.len() != SIGNATURE_LEN {
                    return None;
                }
                public.verify(text, signature).ok()?;
                Some(Verified { timestamp: None })
            }
            KeyKind::CosignatureV1 => {
                let (time, signature) = signature.split_first_chunk::<8>()?;
                let timestamp = u64::from_be_bytes(*time);
                if signature.len() != SIGNATURE_LEN || timestamp > i64::MAX as u64 {
                    return None;
                }
                public
                    .verify(&cosigned_message(timestamp, text), signature)
                    .ok()?;
                Some(Verified {
                    timestamp: Some(timestamp),
                })
            }
        }
    }
}

impl fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut key = vec![self.kind.type_byte()];
        key.extend_from_slice(&self.public);
        write!(f, "{}+{:08x}+{}", self.name, self.id, BASE64.encode(key))
    }
}

impl fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifierKey({self})")
    }
}

/// The fields of `<name>+<key id>+<base64(type ‖ 32 bytes)>`, the shape
/// that verifier keys and (after `PRIVATE+KEY+`) private keys share: the
/// name checked, the stated key id, the signature type and the 32 bytes.
/// `what`, `expected` and `size` word the errors for the encoding at hand.
fn parse_key_text<'a>(
    text: &'a str,
    what: &'static str,
    expected: &'static str,
    size: &'static str,
) -> Result<(&'a str, u32, KeyKind, [u8; 32]), KeyError> {
    let bad = |reason| KeyError::Malformed { what, reason };
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad(expected));
    };
    if !is_valid_name(name) {
        return Err(KeyError::InvalidName(name.to_owned()));
    }
    let stated = parse_key_id(id).ok_or(bad("the key id is not 8 hex digits"))?;
    let bytes = BASE64
        .decode(key)
        .map_err(|_| bad("the key is not base64"))?;
    let (&type_byte, key) = bytes.split_first().ok_or(bad("the key is empty"))?;
    let kind = KeyKind::from_type_byte(type_byte).ok_or(KeyError::UnsupportedType(type_byte))?;
    let key: [u8; 32] = key.try_into().map_err(|_| bad(size))?;
    Ok((name, stated, kind, key))
}

fn parse_key_id(text: &str) -> Option<u32> {
    if text.len() != 8 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

/// A key that signs: parsed from its private key text, or generated.
pub struct SignerKey {
    name: String,
    id: u32,
    kind: KeyKind,
    seed: [u8; 32],
    pair: Ed25519KeyPair,
}

impl SignerKey {
    /// A new key from the system's random source.
    pub fn generate(name: &str, kind: KeyKind) -> Result<SignerKey, KeyError> {
        use ring::rand::SecureRandom;
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| KeyError::Random)?;
        SignerKey::from_seed(name, kind, seed)
    }

    /// The key of an Ed25519 `seed`.
    pub fn from_seed(name: &str, kind: KeyKind, seed: [u8; 32]) -> Result<SignerKey, KeyError> {
        if !is_valid_name(name) {
            return Err(KeyError::InvalidName(name.to_owned()));
        }
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| KeyError::Malformed {
            what: "private key",
            reason: "not an Ed25519 seed",
        })?;
        let public: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .expect("Ed25519 public keys are 32 bytes");
        Ok(SignerKey {
            name: name.to_owned(),
            id: key_id(name, kind, &public),
            kind,
            seed,
            pair,
        })
    }

    /// Parses `PRIVATE+KEY+<name>+<key id>+<base64(type ‖ seed)>`.
    pub fn parse(text: &str) -> Result<SignerKey, KeyError> {
        let rest = text
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(KeyError::Malformed {
                what: "private key",
                reason: "it does not start with PRIVATE+KEY+",
            })?;
        let (name, stated, kind, seed) = parse_key_text(
            rest,
            "private key",
            "expected PRIVATE+KEY+<name>+<key id>+<key>",
            "an Ed25519 seed is 32 bytes",
        )?;
        let key = SignerKey::from_seed(name, kind, seed)?;
        if key.id != stated {
            return Err(KeyError::WrongKeyId {
                stated,
                computed: key.id,
            });
        }
        Ok(key)
    }

    /// The key of the same seed and name with another signature type: a
    /// log's instance key as a `cosignature/v1` witness key. The two never
    /// sign the same message: a checkpoint's first line is its origin, a
    /// cosigned message's is `cosignature/v1` (an origin it may not have).
    pub fn with_kind(&self, kind: KeyKind) -> SignerKey {
        SignerKey::from_seed(&self.name, kind, self.seed).expect("the name and seed are valid")
    }

    /// The private key text (`PRIVATE+KEY+…`): the secret, for the key file only.
    pub fn to_private_key_text(&self) -> String {
        let mut key = vec![self.kind.type_byte()];
        key.extend_from_slice(&self.seed);
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.id,
            BASE64.encode(key)
        )
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The signature type.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The matching verifier key.
    pub fn verifier(&self) -> VerifierKey {
        VerifierKey {
            name: self.name.clone(),
            id: self.id,
            kind: self.kind,
            public: self
                .pair
                .public_key()
                .as_ref()
                .try_into()
                .expect("Ed25519 public keys are 32 bytes"),
        }
    }

    /// The signature of the note `text` (without the key id). `timestamp`
    /// (POSIX seconds) is part of what a cosignature signs; a plain Ed25519
    /// signature ignores it.
    pub fn sign(&self, text: &[u8], timestamp: u64) -> Vec<u8> {
        match self.kind {
            KeyKind::Ed25519 => self.pair.sign(text).as_ref().to_vec(),
            KeyKind::CosignatureV1 => {
                let mut out = timestamp.to_be_bytes().to_vec();
                out.extend_from_slice(self.pair.sign(&cosigned_message(timestamp, text)).as_ref());
                out
            }
        }
    }
}

impl fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the seed.
        write!(
            f,
            "SignerKey({}+{:08x}, {:?})",
            self.name, self.id, self.kind
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key of our own, from a fixed seed (tests/note_cross.rs checks
    /// generated keys against an independent implementation).
    fn fixed_key(kind: KeyKind) -> SignerKey {
        SignerKey::from_seed("log.example/kernels", kind, [0x5a; 32]).unwrap()
    }

    #[test]
    fn key_texts_round_trip() {
        let s = fixed_key(KeyKind::Ed25519);
        let v = s.verifier();
        let vkey = v.to_string();
        let skey = s.to_private_key_text();
        assert!(vkey.starts_with(&format!("log.example/kernels+{:08x}+A", s.id())));
        assert!(skey.starts_with(&format!("PRIVATE+KEY+log.example/kernels+{:08x}+A", s.id())));
        let parsed = VerifierKey::parse(&vkey).unwrap();
        assert_eq!(
            (parsed.name(), parsed.id(), parsed.kind()),
            ("log.example/kernels", s.id(), KeyKind::Ed25519)
        );
        assert_eq!(parsed, v);
        let again = SignerKey::parse(&skey).unwrap();
        assert_eq!(again.verifier(), v);
        assert_eq!(again.to_private_key_text(), skey);
        // The seed is never in the debug output.
        assert!(!format!("{s:?}").contains(&skey[skey.len() - 20..]));
    }

    #[test]
    fn the_key_id_is_the_hash_prefix_of_name_type_and_key() {
        let v = fixed_key(KeyKind::Ed25519).verifier();
        let mut h = Sha256::new();
        h.update(b"log.example/kernels\n\x01");
        h.update(v.public_key());
        let digest = h.finalize();
        assert_eq!(v.id().to_be_bytes(), digest[..4]);
    }

    #[test]
    fn every_mangling_of_a_key_is_refused() {
        // Every proper substring and every one-byte increment fails.
        let s = fixed_key(KeyKind::Ed25519);
        let (vkey, skey) = (s.verifier().to_string(), s.to_private_key_text());
        for (key, parse) in [
            (
                vkey.as_str(),
                (|t: &str| VerifierKey::parse(t).is_ok()) as fn(&str) -> bool,
            ),
            (skey.as_str(), |t: &str| SignerKey::parse(t).is_ok()),
        ] {
            let b = key.as_bytes();
            for i in 0..=b.len() {
                for j in i + 1..=b.len() {
                    if (i, j) != (0, b.len()) {
                        let t = std::str::from_utf8(&b[i..j]).unwrap();
                        assert!(!parse(t), "{t:?} accepted");
                    }
                }
            }
            for i in 0..b.len() {
                let mut m = b.to_vec();
                m[i] += 1;
                let t = String::from_utf8(m).unwrap();
                assert!(!parse(&t), "{t:?} accepted");
            }
        }
        // A longer key and an unknown type, each with the key id that matches
        // its bytes.
        let public = s.verifier().public_key().to_vec();
        let with_id = |bytes: &[u8]| {
            let mut h = Sha256::new();
            h.update(b"log.example/kernels\n");
            h.update(bytes);
            let id = u32::from_be_bytes(h.finalize()[..4].try_into().unwrap());
            format!("log.example/kernels+{id:08x}+{}", BASE64.encode(bytes))
        };
        let mut long = vec![0x01];
        long.extend_from_slice(&public);
        long.extend_from_slice(b"extra");
        assert!(matches!(
            VerifierKey::parse(&with_id(&long)),
            Err(KeyError::Malformed { .. })
        ));
        let mut other = vec![0x65];
        other.extend_from_slice(&public);
        assert_eq!(
            VerifierKey::parse(&with_id(&other)),
            Err(KeyError::UnsupportedType(0x65))
        );
    }

    #[test]
    fn witness_keys_of_type_4_have_their_own_key_ids() {
        let w = fixed_key(KeyKind::CosignatureV1).verifier();
        let parsed = VerifierKey::parse(&w.to_string()).unwrap();
        assert_eq!(parsed.kind(), KeyKind::CosignatureV1);
        assert_eq!(parsed, w);
        // The same public key as type 0x01 has another id.
        let log = fixed_key(KeyKind::Ed25519).verifier();
        assert_eq!(log.public_key(), w.public_key());
        assert_ne!(log.id(), w.id());
        assert_eq!(key_id(w.name(), KeyKind::Ed25519, w.public_key()), log.id());
    }

    #[test]
    fn signatures_verify_with_the_matching_key_only() {
        let log = SignerKey::generate("example.com/log", KeyKind::Ed25519).unwrap();
        let witness = SignerKey::generate("example.com/w", KeyKind::CosignatureV1).unwrap();
        let text = b"example.com/log\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
        let sig = log.sign(text, 0);
        assert_eq!(sig.len(), 64);
        assert_eq!(
            log.verifier().verify(text, &sig),
            Some(Verified { timestamp: None })
        );
        assert_eq!(log.verifier().verify(b"other\n", &sig), None);
        assert_eq!(witness.verifier().verify(text, &sig), None);

        let cosig = witness.sign(text, 1_700_000_000);
        assert_eq!(cosig.len(), 72);
        assert_eq!(
            witness.verifier().verify(text, &cosig),
            Some(Verified {
                timestamp: Some(1_700_000_000)
            })
        );
        // The timestamp is signed.
        let mut moved = cosig.clone();
        moved[7] ^= 1;
        assert_eq!(witness.verifier().verify(text, &moved), None);
        // Round trip of a generated key through its texts.
        let again = SignerKey::parse(&witness.to_private_key_text()).unwrap();
        assert_eq!(again.verifier(), witness.verifier());
        assert_eq!(
            VerifierKey::parse(&witness.verifier().to_string()).unwrap(),
            witness.verifier()
        );
    }

    #[test]
    fn names_with_spaces_or_plus_are_refused() {
        for name in ["", "a b", "a+b", "a\u{a0}b", "tab\t"] {
            assert!(!is_valid_name(name), "{name:?}");
            assert!(SignerKey::generate(name, KeyKind::Ed25519).is_err());
        }
        assert!(is_valid_name("kernels/prod-001"));
    }
}
