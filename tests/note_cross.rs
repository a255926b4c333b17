//! Our signed notes, keys and checkpoints (`kernels::note`,
//! `kernels::checkpoint`) against independent implementations from
//! crates.io, used here only: `signed_note` (C2SP signed notes on
//! ed25519-dalek) and `tlog_tiles`' checkpoint bodies (C2SP tlog-checkpoint).
//!
//! Keys: for the same seed and name, `signed_note` generates the same key
//! texts we do, and each side parses the other's with the same key id.
//! Notes: for the same key and text both sign the same bytes (Ed25519 is
//! deterministic), each verifies the other's, and for random notes, signers,
//! known keys and tampering both reach the same decision. Checkpoints: the
//! same body text both ways, signed ones verify across.
//!
//! Neither crate implements `cosignature/v1` (C2SP tlog-cosignature;
//! `signed_note` knows only signature type 0x01). So witness cosignatures
//! are checked against a verifier and signer written here from the
//! tlog-cosignature spec on ed25519-dalek (not ring, which ours uses),
//! plugged into `signed_note`'s note verification: key id
//! `SHA-256(name ‖ "\n" ‖ 0x04 ‖ public key)[:4]`, signed message
//! `"cosignature/v1\ntime <t>\n" ‖ checkpoint text`, signature
//! `u64 big-endian t ‖ Ed25519 signature`.

use ed25519_dalek::{Signer as _, SigningKey, Verifier as _};
use kernels::checkpoint::{Checkpoint, SignedCheckpoint, Witnesses};
use kernels::merkle::Hash;
use kernels::note::{KeyKind, Note, NoteError, SignerKey, VerifierKey};
use proptest::prelude::*;
use signed_note::{
    Note as SnNote, NoteError as SnError, Signer as SnSigner, StandardSigner, StandardVerifier,
    VerificationError, Verifier as SnVerifier, VerifierList,
};

/// A "random" source that yields one fixed seed: `signed_note::generate_key`
/// then makes the key of that seed.
struct SeedRng {
    seed: [u8; 32],
    at: usize,
}

impl rand_core::RngCore for SeedRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for byte in dest {
            *byte = self.seed[self.at % 32];
            self.at += 1;
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for SeedRng {}

/// `signed_note`'s (private key text, verifier key text) for `seed`.
fn their_key(seed: [u8; 32], name: &str) -> (String, String) {
    signed_note::generate_key(&mut SeedRng { seed, at: 0 }, name)
}

fn our_key(seed: [u8; 32], name: &str) -> SignerKey {
    SignerKey::from_seed(name, KeyKind::Ed25519, seed).unwrap()
}

/// `text` signed by `signers`, by `signed_note`.
fn their_note(text: &str, signers: &[&StandardSigner]) -> String {
    let mut note = SnNote::new(text.as_bytes(), &[]).unwrap();
    let signers: Vec<&dyn SnSigner> = signers.iter().map(|s| *s as &dyn SnSigner).collect();
    note.add_sigs(&signers).unwrap();
    String::from_utf8(note.to_bytes()).unwrap()
}

fn their_verifiers(vkeys: &[String]) -> VerifierList {
    VerifierList::new(
        vkeys
            .iter()
            .map(|v| Box::new(StandardVerifier::new(v).unwrap()) as Box<dyn SnVerifier>)
            .collect(),
    )
}

/// Key names: non-empty, no space, no `+` (a few non-ASCII ones too).
fn name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9./_é-]{0,24}"
}

/// Note texts: one or more lines of printable text, each ending in a newline.
fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec("[ -~é—]{0,30}", 1..5)
        .prop_map(|lines| lines.iter().map(|l| format!("{l}\n")).collect::<String>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The same seed and name give the same key texts; each side parses the
    /// other's with the same name and key id.
    #[test]
    fn keys_are_the_same_texts(seed in any::<[u8; 32]>(), name in name()) {
        let (skey, vkey) = their_key(seed, &name);
        let ours = our_key(seed, &name);
        prop_assert_eq!(&ours.to_private_key_text(), &skey);
        prop_assert_eq!(&ours.verifier().to_string(), &vkey);

        let theirs = StandardVerifier::new(&ours.verifier().to_string()).unwrap();
        prop_assert_eq!((theirs.name(), theirs.key_id()), (name.as_str(), ours.id()));
        let signer = StandardSigner::new(&ours.to_private_key_text()).unwrap();
        prop_assert_eq!(signer.key_id(), ours.id());
        let parsed = VerifierKey::parse(&vkey).unwrap();
        prop_assert_eq!((parsed.name(), parsed.id()), (name.as_str(), ours.id()));
        prop_assert_eq!(SignerKey::parse(&skey).unwrap().verifier(), parsed);
        // The key id is signed_note's key id of the type-prefixed key.
        let mut typed = vec![0x01];
        typed.extend_from_slice(ours.verifier().public_key());
        prop_assert_eq!(signed_note::key_id(&name, &typed), ours.id());
    }

    /// The same key and text give the same signed note, byte for byte; each
    /// side verifies the other's note.
    #[test]
    fn notes_are_the_same_bytes(seed in any::<[u8; 32]>(), name in name(), text in text()) {
        let (skey, vkey) = their_key(seed, &name);
        let key = our_key(seed, &name);
        let mut ours = Note::new(text.clone()).unwrap();
        ours.sign(&key, 0);
        let ours = ours.to_string();
        let theirs = their_note(&text, &[&StandardSigner::new(&skey).unwrap()]);
        prop_assert_eq!(&ours, &theirs);

        let opened = SnNote::from_bytes(ours.as_bytes()).unwrap();
        let (verified, _) = opened.verify(&their_verifiers(std::slice::from_ref(&vkey))).unwrap();
        prop_assert_eq!(verified.len(), 1);
        prop_assert_eq!(opened.text(), text.as_bytes());
        let parsed = Note::parse(&theirs).unwrap();
        prop_assert_eq!(parsed.text(), text.as_str());
        prop_assert!(parsed.verify(&[VerifierKey::parse(&vkey).unwrap()]).is_ok());
    }

    /// For random notes signed by some of three keys, checked against some of
    /// them (one maybe given twice), optionally tampered with: both accept
    /// the same notes with the same signers, and refuse the same notes for
    /// the same reason.
    #[test]
    fn notes_are_accepted_and_refused_alike(
        seeds in any::<[[u8; 32]; 3]>(),
        text in text(),
        signed_by in proptest::collection::vec(0usize..3, 0..5),
        known in proptest::collection::vec(0usize..3, 0..4),
        tamper in 0u8..4,
    ) {
        let names = ["a.example", "b.example", "c.example"];
        let keys: Vec<SignerKey> = (0..3).map(|i| our_key(seeds[i], names[i])).collect();
        let mut note = Note::new(text.clone()).unwrap();
        for &i in &signed_by {
            note.sign(&keys[i], 0);
        }
        let mut message = note.to_string();
        match tamper {
            // The text changed after signing.
            1 => message.insert(0, 'x'),
            // A signature line by a key nobody knows.
            2 => {
                let stranger = our_key([9; 32], "stranger.example");
                let mut other = Note::new(text.clone()).unwrap();
                other.sign(&stranger, 0);
                let line = other.to_string()[text.len() + 1..].to_owned();
                if !signed_by.is_empty() {
                    message.push_str(&line);
                }
            }
            // One signature made by another key under a signer's name and id.
            3 => {
                if let Some(&i) = signed_by.first() {
                    let forger = our_key([7; 32], names[i]);
                    let sig = forger.sign(text.as_bytes(), 0);
                    let mut raw = keys[i].id().to_be_bytes().to_vec();
                    raw.extend_from_slice(&sig);
                    let mut forged = Note::new(text.clone()).unwrap();
                    forged.sign(&keys[i], 0);
                    let good_line = forged.to_string()[text.len() + 1..].to_owned();
                    let bad_line = format!(
                        "\u{2014} {} {}\n",
                        names[i],
                        base64_standard(&raw)
                    );
                    message = message.replacen(&good_line, &bad_line, 1);
                }
            }
            _ => {}
        }
        let vkeys: Vec<VerifierKey> = known.iter().map(|&i| keys[i].verifier()).collect();

        let ours = Note::parse(&message).and_then(|n| n.verify(&vkeys));
        let theirs = SnNote::from_bytes(message.as_bytes()).and_then(|n| {
            let list = their_verifiers(&vkeys.iter().map(|v| v.to_string()).collect::<Vec<_>>());
            n.verify(&list)
        });
        match (&ours, &theirs) {
            (Ok(ours), Ok((verified, _))) => {
                let ours: Vec<&str> = ours.iter().map(|v| vkeys[v.key].name()).collect();
                let theirs: Vec<&str> = verified.iter().map(|s| s.name()).collect();
                prop_assert_eq!(ours, theirs);
            }
            (Err(NoteError::Malformed(_)), Err(SnError::MalformedNote)) => {}
            (Err(NoteError::BadSignature { name, id }), Err(SnError::InvalidSignature { name: n2, id: i2 })) => {
                prop_assert_eq!((name, id), (n2, i2));
            }
            (Err(NoteError::NoKnownSignature { .. }), Err(SnError::UnverifiedNote)) => {}
            (
                Err(NoteError::AmbiguousKey { name, id }),
                Err(SnError::VerificationError(VerificationError::AmbiguousKey { name: n2, id: i2 })),
            ) => {
                prop_assert_eq!((name, id), (n2, i2));
            }
            _ => prop_assert!(false, "ours {:?}, theirs {:?} for {:?}", ours, theirs, message),
        }
    }

    /// Checkpoint bodies are tlog_tiles' checkpoints, both ways.
    #[test]
    fn checkpoint_bodies_are_the_same_text(
        origin in "[a-z0-9][a-z0-9./_ -]{0,30}",
        size in any::<u64>(),
        root in any::<[u8; 32]>(),
        extensions in proptest::collection::vec("[ -~]{1,20}", 0..3),
    ) {
        let mut ours = Checkpoint::new(origin.clone(), size, Hash(root));
        ours.extensions = extensions.clone();
        let extension: String = extensions.iter().map(|l| format!("{l}\n")).collect();
        let theirs =
            tlog_tiles::Checkpoint::new(&origin, size, tlog_tiles::Hash(root), &extension).unwrap();
        prop_assert_eq!(ours.body().into_bytes(), theirs.to_bytes());

        let parsed = tlog_tiles::Checkpoint::from_bytes(ours.body().as_bytes()).unwrap();
        prop_assert_eq!(
            (parsed.origin(), parsed.size(), parsed.hash().0, parsed.extension()),
            (origin.as_str(), size, root, extension.as_str())
        );
        let back = Checkpoint::from_body(std::str::from_utf8(&theirs.to_bytes()).unwrap()).unwrap();
        prop_assert_eq!(back, ours);
    }

    /// A checkpoint we sign verifies with signed_note and reads as the same
    /// checkpoint in tlog_tiles; one they make and sign verifies with ours.
    #[test]
    fn signed_checkpoints_verify_across(
        seed in any::<[u8; 32]>(),
        size in any::<u64>(),
        root in any::<[u8; 32]>(),
    ) {
        let origin = "kernels/prod-001";
        let (skey, vkey) = their_key(seed, origin);
        let key = our_key(seed, origin);
        let signed = Checkpoint::new(origin, size, Hash(root)).sign(&key).unwrap().to_string();
        let opened = SnNote::from_bytes(signed.as_bytes()).unwrap();
        prop_assert!(opened.verify(&their_verifiers(std::slice::from_ref(&vkey))).is_ok());
        let cp = tlog_tiles::Checkpoint::from_bytes(opened.text()).unwrap();
        prop_assert_eq!((cp.origin(), cp.size(), cp.hash().0), (origin, size, root));

        let body = tlog_tiles::Checkpoint::new(origin, size, tlog_tiles::Hash(root), "")
            .unwrap()
            .to_bytes();
        let theirs = their_note(
            std::str::from_utf8(&body).unwrap(),
            &[&StandardSigner::new(&skey).unwrap()],
        );
        prop_assert_eq!(&theirs, &signed);
        let verified = SignedCheckpoint::parse(&theirs)
            .unwrap()
            .verify(&VerifierKey::parse(&vkey).unwrap(), &Witnesses::none())
            .unwrap();
        prop_assert_eq!(verified.checkpoint, Checkpoint::new(origin, size, Hash(root)));
    }
}

fn base64_standard(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Malformed checkpoint bodies are refused by both parsers.
#[test]
fn malformed_checkpoint_bodies_are_refused_by_both() {
    let root = base64_standard(&[7u8; 32]);
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
        assert!(Checkpoint::from_body(&bad).is_err(), "ours: {bad:?}");
        assert!(
            tlog_tiles::Checkpoint::from_bytes(bad.as_bytes()).is_err(),
            "tlog_tiles: {bad:?}"
        );
    }
}

/// A `cosignature/v1` verifier, from the tlog-cosignature spec, on
/// ed25519-dalek, for `signed_note`'s note verification.
struct CosigVerifier {
    name: String,
    public: ed25519_dalek::VerifyingKey,
}

/// The matching signer, cosigning at a fixed time.
struct CosigSigner {
    name: String,
    key: SigningKey,
    time: u64,
}

fn cosig_key_id(name: &str, public: &ed25519_dalek::VerifyingKey) -> u32 {
    let mut typed = vec![0x04];
    typed.extend_from_slice(public.as_bytes());
    signed_note::key_id(name, &typed)
}

fn cosigned_message(time: u64, text: &[u8]) -> Vec<u8> {
    let mut message = format!("cosignature/v1\ntime {time}\n").into_bytes();
    message.extend_from_slice(text);
    message
}

impl SnVerifier for CosigVerifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        cosig_key_id(&self.name, &self.public)
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Some((time, sig)) = sig.split_first_chunk::<8>() else {
            return false;
        };
        let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
            return false;
        };
        let time = u64::from_be_bytes(*time);
        self.public
            .verify(&cosigned_message(time, msg), &sig)
            .is_ok()
    }
}

impl SnSigner for CosigSigner {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        cosig_key_id(&self.name, &self.key.verifying_key())
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, ed25519_dalek::SignatureError> {
        let mut out = self.time.to_be_bytes().to_vec();
        out.extend_from_slice(&self.key.sign(&cosigned_message(self.time, msg)).to_bytes());
        Ok(out)
    }
}

fn witness(seed: u8, name: &str) -> (SignerKey, CosigVerifier) {
    let ours = SignerKey::from_seed(name, KeyKind::CosignatureV1, [seed; 32]).unwrap();
    let public = SigningKey::from_bytes(&[seed; 32]).verifying_key();
    assert_eq!(public.as_bytes(), ours.verifier().public_key());
    (
        ours,
        CosigVerifier {
            name: name.to_owned(),
            public,
        },
    )
}

/// Our witness key ids are the spec's; our cosignatures verify with the
/// spec-written verifier inside signed_note's note verification, and a
/// cosignature the spec-written signer adds verifies with ours, timestamp
/// and all. A changed timestamp fails on both sides.
#[test]
fn cosignatures_follow_the_tlog_cosignature_spec() {
    let log = our_key([3; 32], "kernels/prod-001");
    let (w1, w1_spec) = witness(11, "w1.example/witness");
    let (w2, w2_spec) = witness(12, "w2.example/witness");
    assert_eq!(w1.id(), cosig_key_id(&w1_spec.name, &w1_spec.public));
    assert_eq!(w2.id(), cosig_key_id(&w2_spec.name, &w2_spec.public));

    let mut signed = Checkpoint::new("kernels/prod-001", 42, Hash([5; 32]))
        .sign(&log)
        .unwrap();
    signed.cosign(&w1, 1_750_000_000).unwrap();
    signed.cosign(&w2, 1_750_000_100).unwrap();
    let text = signed.to_string();
    let known = VerifierList::new(vec![
        Box::new(StandardVerifier::new(&log.verifier().to_string()).unwrap()),
        Box::new(w1_spec),
        Box::new(w2_spec),
    ]);
    let (verified, unverified) = SnNote::from_bytes(text.as_bytes())
        .unwrap()
        .verify(&known)
        .unwrap();
    let names: Vec<&str> = verified.iter().map(|s| s.name()).collect();
    assert_eq!(
        names,
        [
            "kernels/prod-001",
            "w1.example/witness",
            "w2.example/witness"
        ]
    );
    assert!(unverified.is_empty());

    // A witness's timestamp moved by one second: its signature fails there too.
    let (_, w1_spec) = witness(11, "w1.example/witness");
    let mut note = Note::parse(&text).unwrap();
    let mut moved = note.signatures()[1].clone();
    moved.bytes[7] ^= 1;
    let line = format!(
        "\u{2014} {} {}\n",
        moved.name,
        base64_standard(&[&moved.key_id.to_be_bytes()[..], &moved.bytes].concat())
    );
    let original = text.lines().nth(5).unwrap();
    let tampered = text.replacen(&format!("{original}\n"), &line, 1);
    assert_ne!(tampered, text);
    let known = VerifierList::new(vec![Box::new(w1_spec)]);
    assert!(matches!(
        SnNote::from_bytes(tampered.as_bytes())
            .unwrap()
            .verify(&known),
        Err(SnError::InvalidSignature { .. })
    ));
    let witnesses = Witnesses::new(vec![w1.verifier()], None).unwrap();
    assert!(
        SignedCheckpoint::parse(&tampered)
            .unwrap()
            .verify(&log.verifier(), &witnesses)
            .is_err()
    );

    // A cosignature added by the spec-written signer, checked by ours.
    let (w3, _) = witness(13, "w3.example/witness");
    let spec_signer = CosigSigner {
        name: "w3.example/witness".into(),
        key: SigningKey::from_bytes(&[13; 32]),
        time: 1_760_000_000,
    };
    let mut sn = SnNote::from_bytes(text.as_bytes()).unwrap();
    sn.add_sigs(&[&spec_signer]).unwrap();
    let with_w3 = String::from_utf8(sn.to_bytes()).unwrap();
    let witnesses = Witnesses::new(vec![w1.verifier(), w3.verifier()], Some(2)).unwrap();
    let verified = SignedCheckpoint::parse(&with_w3)
        .unwrap()
        .verify(&log.verifier(), &witnesses)
        .unwrap();
    let cosigned: Vec<(&str, u64)> = verified
        .cosignatures
        .iter()
        .map(|c| (c.name.as_str(), c.timestamp))
        .collect();
    assert_eq!(
        cosigned,
        [
            ("w1.example/witness", 1_750_000_000),
            ("w3.example/witness", 1_760_000_000)
        ]
    );
    note.sign(&w3, 1_760_000_000);
    assert_eq!(note.to_string(), with_w3, "the same cosignature bytes");
}
