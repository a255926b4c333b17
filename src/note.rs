//! C2SP signed notes: a text, a blank line, and signature lines
//! `— <key name> <base64(key id ‖ signature)>`.
//!
//! A note is parsed once into a [`Note`] (its text and its signatures as
//! bytes) and checked against known keys with [`Note::verify`]: signatures
//! by unknown keys are ignored, a signature by a known key that fails
//! rejects the whole note, and a note with no signature by a known key is
//! rejected (tests/note_cross.rs holds these decisions to an independent
//! implementation's). [`keys`] holds
//! the key formats; the checkpoint built on notes is in [`crate::checkpoint`].

pub mod keys;

use std::fmt;

use base64::Engine;

use keys::{BASE64, is_valid_name};
pub use keys::{KeyError, KeyKind, SignerKey, Verified, VerifierKey};

/// The prefix of a signature line: an em dash (U+2014) and a space.
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// Most signature lines a note may carry (the spec asks verifiers to
/// accept at least 16).
pub const MAX_SIGNATURES: usize = 100;

/// Why a note is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// The text is not a signed note.
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    /// A known key's signature does not verify: the note was changed, or
    /// signed by someone else under that key's name and id.
    #[error("the signature by {name}+{id:08x} does not verify")]
    BadSignature {
        /// The key's name.
        name: String,
        /// The key's id.
        id: u32,
    },
    /// No signature by any of the known keys.
    #[error("no signature by a known key ({known})")]
    NoKnownSignature {
        /// The known keys, by name.
        known: String,
    },
    /// Two known keys share a name and id.
    #[error("two known keys are both {name}+{id:08x}")]
    AmbiguousKey {
        /// The name.
        name: String,
        /// The id.
        id: u32,
    },
}

impl NoteError {
    /// True when the input is not a note at all (as opposed to a note that
    /// does not verify).
    pub fn is_malformed(&self) -> bool {
        matches!(self, NoteError::Malformed(_))
    }
}

/// One signature line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The signer's key name.
    pub name: String,
    /// The signer's key id.
    pub key_id: u32,
    /// The signature bytes after the key id.
    pub bytes: Vec<u8>,
}

impl Signature {
    fn line(&self) -> String {
        let mut raw = self.key_id.to_be_bytes().to_vec();
        raw.extend_from_slice(&self.bytes);
        format!("{SIGNATURE_PREFIX}{} {}\n", self.name, BASE64.encode(raw))
    }
}

/// A signature that verified, and by which of the known keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSignature {
    /// Index of the key in the list given to [`Note::verify`].
    pub key: usize,
    /// The cosignature's time, for a `cosignature/v1`.
    pub timestamp: Option<u64>,
}

/// A signed note (or one about to be signed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    text: String,
    signatures: Vec<Signature>,
}

impl Note {
    /// An unsigned note of `text`, which must end in a newline and hold no
    /// control character but newlines.
    pub fn new(text: impl Into<String>) -> Result<Note, NoteError> {
        let text = text.into();
        if !text.ends_with('\n') {
            return Err(NoteError::Malformed("the text does not end in a newline"));
        }
        check_characters(&text)?;
        Ok(Note {
            text,
            signatures: Vec::new(),
        })
    }

    /// Parses a signed note: the text up to the last blank line, then one or
    /// more signature lines. Nothing is verified yet.
    pub fn parse(message: &str) -> Result<Note, NoteError> {
        check_characters(message)?;
        let split = message
            .rfind("\n\n")
            .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        let (text, mut lines) = (&message[..split + 1], &message[split + 2..]);
        if lines.is_empty() || !lines.ends_with('\n') {
            return Err(NoteError::Malformed(
                "the signatures do not end in a newline",
            ));
        }
        let mut signatures = Vec::new();
        while let Some((line, rest)) = lines.split_once('\n') {
            lines = rest;
            let line = line
                .strip_prefix(SIGNATURE_PREFIX)
                .ok_or(NoteError::Malformed(
                    "a signature line does not start with '— '",
                ))?;
            let (name, b64) = line.split_once(' ').unwrap_or((line, ""));
            let raw = BASE64.decode(b64).unwrap_or_default();
            if !is_valid_name(name) || raw.len() < 5 {
                return Err(NoteError::Malformed(
                    "a signature line is not '— <name> <base64>'",
                ));
            }
            if signatures.len() == MAX_SIGNATURES {
                return Err(NoteError::Malformed("too many signatures"));
            }
            signatures.push(Signature {
                name: name.to_owned(),
                key_id: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
                bytes: raw[4..].to_vec(),
            });
        }
        Ok(Note {
            text: text.to_owned(),
            signatures,
        })
    }

    /// The signed text (with its final newline).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The signature lines, in order.
    pub fn signatures(&self) -> &[Signature] {
        &self.signatures
    }

    /// Signs the note with `key` (replacing an earlier signature by the same
    /// key); `timestamp` is a cosignature's time, see [`SignerKey::sign`].
    pub fn sign(&mut self, key: &SignerKey, timestamp: u64) {
        let bytes = key.sign(self.text.as_bytes(), timestamp);
        self.signatures
            .retain(|s| (s.name.as_str(), s.key_id) != (key.name(), key.id()));
        self.signatures.push(Signature {
            name: key.name().to_owned(),
            key_id: key.id(),
            bytes,
        });
    }

    /// Adds a signature made elsewhere (a witness's cosignature, received
    /// over the network), replacing an earlier one by the same key. Nothing
    /// is verified here: see [`Note::verify`].
    pub fn add_signature(&mut self, signature: Signature) -> Result<(), NoteError> {
        if !is_valid_name(&signature.name) {
            return Err(NoteError::Malformed("a signature's name is not a key name"));
        }
        self.signatures
            .retain(|s| (s.name.as_str(), s.key_id) != (signature.name.as_str(), signature.key_id));
        if self.signatures.len() == MAX_SIGNATURES {
            return Err(NoteError::Malformed("too many signatures"));
        }
        self.signatures.push(signature);
        Ok(())
    }

    /// Checks the signatures by the `known` keys; returns those that verified
    /// (each key once), or why the note is not accepted.
    pub fn verify(&self, known: &[VerifierKey]) -> Result<Vec<VerifiedSignature>, NoteError> {
        let mut verified: Vec<VerifiedSignature> = Vec::new();
        for signature in &self.signatures {
            let mut matching = known
                .iter()
                .enumerate()
                .filter(|(_, k)| k.name() == signature.name && k.id() == signature.key_id);
            let Some((index, key)) = matching.next() else {
                continue;
            };
            if matching.next().is_some() {
                return Err(NoteError::AmbiguousKey {
                    name: signature.name.clone(),
                    id: signature.key_id,
                });
            }
            // A repeated signature by one key: the first one counts.
            if verified.iter().any(|v| v.key == index) {
                continue;
            }
            let Some(ok) = key.verify(self.text.as_bytes(), &signature.bytes) else {
                return Err(NoteError::BadSignature {
                    name: signature.name.clone(),
                    id: signature.key_id,
                });
            };
            verified.push(VerifiedSignature {
                key: index,
                timestamp: ok.timestamp,
            });
        }
        if verified.is_empty() {
            let names: Vec<String> = known
                .iter()
                .map(|k| format!("{}+{:08x}", k.name(), k.id()))
                .collect();
            return Err(NoteError::NoKnownSignature {
                known: names.join(", "),
            });
        }
        Ok(verified)
    }
}

impl fmt::Display for Note {
    /// The note as text: its text, a blank line, its signature lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        f.write_str("\n")?;
        for signature in &self.signatures {
            f.write_str(&signature.line())?;
        }
        Ok(())
    }
}

/// No ASCII control character other than newline.
fn check_characters(text: &str) -> Result<(), NoteError> {
    if text.bytes().any(|b| b < 0x20 && b != b'\n') {
        return Err(NoteError::Malformed(
            "a control character other than newline",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "kernels/test\n7\nsome text of the note\n";

    /// Two signers of our own, from fixed seeds (tests/note_cross.rs checks
    /// our notes against an independent implementation).
    fn signer(name: &str, seed: u8) -> SignerKey {
        SignerKey::from_seed(name, KeyKind::Ed25519, [seed; 32]).unwrap()
    }

    fn alice() -> SignerKey {
        signer("alice.example", 1)
    }

    fn bob() -> SignerKey {
        signer("bob.example", 2)
    }

    /// The signature line `key` gives `TEXT`.
    fn sig_line(key: &SignerKey) -> String {
        let mut note = Note::new(TEXT).unwrap();
        note.sign(key, 0);
        note.to_string()[TEXT.len() + 1..].to_owned()
    }

    fn keys(signers: &[&SignerKey]) -> Vec<VerifierKey> {
        signers.iter().map(|s| s.verifier()).collect()
    }

    #[test]
    fn a_signature_line_is_the_key_id_and_the_ed25519_signature() {
        let key = alice();
        let mut note = Note::new(TEXT).unwrap();
        note.sign(&key, 0);
        let mut raw = key.id().to_be_bytes().to_vec();
        raw.extend_from_slice(&key.sign(TEXT.as_bytes(), 0));
        assert_eq!(raw.len(), 68);
        let want = format!("{TEXT}\n\u{2014} alice.example {}\n", BASE64.encode(raw));
        assert_eq!(note.to_string(), want);
        // Signing again replaces the signature.
        note.sign(&key, 0);
        assert_eq!(note.signatures().len(), 1);
        assert!(Note::new("no newline").is_err());
    }

    #[test]
    fn notes_open_with_the_known_keys_only() {
        let (a, b) = (alice(), bob());
        let (a_sig, b_sig) = (sig_line(&a), sig_line(&b));
        let both = format!("{TEXT}\n{a_sig}{b_sig}");
        let note = Note::parse(&both).unwrap();
        assert_eq!(note.text(), TEXT);
        assert_eq!(note.to_string(), both);
        // One known key: Bob's signature is ignored.
        let v = note.verify(&keys(&[&a])).unwrap();
        assert_eq!(
            v,
            vec![VerifiedSignature {
                key: 0,
                timestamp: None
            }]
        );
        // Both known.
        let v = note.verify(&keys(&[&b, &a])).unwrap();
        assert_eq!(v.iter().map(|s| s.key).collect::<Vec<_>>(), vec![1, 0]);
        // None known.
        assert!(matches!(
            note.verify(&[]),
            Err(NoteError::NoKnownSignature { .. })
        ));
        // A duplicated known key that signed is ambiguous; one that did not sign is not.
        let b_only = Note::parse(&format!("{TEXT}\n{b_sig}")).unwrap();
        assert_eq!(
            b_only.verify(&keys(&[&b, &a, &b])),
            Err(NoteError::AmbiguousKey {
                name: "bob.example".into(),
                id: b.id()
            })
        );
        let a_only = Note::parse(&format!("{TEXT}\n{a_sig}")).unwrap();
        assert!(a_only.verify(&keys(&[&b, &a, &b])).is_ok());
        // Too many signatures.
        let many = format!("{TEXT}\n{}", a_sig.repeat(101));
        assert_eq!(
            Note::parse(&many),
            Err(NoteError::Malformed("too many signatures"))
        );
        // An altered signature of a known key rejects the note.
        let altered = format!("{TEXT}\n{}ABCD{}", &a_sig[..60], &a_sig[60..]);
        assert_eq!(
            Note::parse(&altered).unwrap().verify(&keys(&[&a])),
            Err(NoteError::BadSignature {
                name: "alice.example".into(),
                id: a.id()
            })
        );
        // Repeated signatures by a known key count once, an altered unknown one is ignored.
        let repeated = format!(
            "{TEXT}\n{a_sig}{a_sig}{b_sig}{b_sig}{}ABCD{}",
            &b_sig[..60],
            &b_sig[60..]
        );
        let v = Note::parse(&repeated)
            .unwrap()
            .verify(&keys(&[&a]))
            .unwrap();
        assert_eq!(v.len(), 1);
        // Bob's signature under Alice's name and key id.
        let mut forged = Note::parse(&format!("{TEXT}\n{b_sig}")).unwrap();
        forged.signatures[0].name = "alice.example".into();
        forged.signatures[0].key_id = a.id();
        assert_eq!(
            forged.verify(&keys(&[&a])),
            Err(NoteError::BadSignature {
                name: "alice.example".into(),
                id: a.id()
            })
        );
    }

    #[test]
    fn malformed_messages_are_refused() {
        let a_sig = sig_line(&alice());
        let b64 = a_sig.rsplit_once(' ').unwrap().1.trim_end();
        let bad = [
            TEXT.to_owned(),
            format!("{TEXT}\n"),
            format!("{TEXT}\n{}", &a_sig[..a_sig.len() - 1]),
            format!("\u{1}{TEXT}\n{a_sig}"),
            format!("{TEXT}\n\u{2014} Bad Name {b64}"),
            format!("{TEXT}\n\u{2014} Bad Name {b64}\n"),
            format!("{TEXT}\n{a_sig}Unexpected line.\n"),
            format!("{TEXT}\n\u{2014} alice.example\n"),
            format!("{TEXT}\n\u{2014} alice.example AAAA\n"),
            format!("{TEXT}\n- alice.example {b64}\n"),
            format!("{TEXT}\r\n{a_sig}"),
        ];
        for message in bad {
            let result = Note::parse(&message);
            assert!(
                matches!(result, Err(NoteError::Malformed(_))),
                "{message:?}: {result:?}"
            );
        }
    }
}
