//! The ledger's signed checkpoints through its public API: the signed head
//! survives a reopen, a store whose tree no longer has the signed root is
//! refused (so the service never signs two inconsistent checkpoints), and
//! peer witnessing (one instance cosigns another's checkpoint with its
//! instance key; the cosignature is served with the checkpoint).

use std::sync::Arc;

use kernels::checkpoint::{SignedCheckpoint, Witnesses};
use kernels::kernel::{Policy, RawRequest, Variant};
use kernels::ledger::open::VerifyOnOpen;
use kernels::ledger::{Ledger, LedgerError, LedgerOptions, SystemClock, TreeError};
use kernels::merkle::verify_consistency;
use kernels::metrics::Metrics;
use kernels::note::{KeyKind, SignerKey};
use kernels::store::memory::MemoryStore;
use kernels::store::tiles::half_key;
use kernels::store::{Append, Family, LedgerStore};
use serde_json::json;

fn options(kernel_id: &str, key: &Arc<SignerKey>) -> LedgerOptions {
    let policy = Policy::from_yaml("allowed_actors: [alice]\nallowed_tools: [echo]\n").unwrap();
    let mut o = LedgerOptions::service(kernel_id, Variant::Strict, policy);
    o.signing = Some(key.clone());
    o.checkpoint_every = 10;
    o
}

fn open(store: &MemoryStore, options: LedgerOptions) -> Result<Ledger, LedgerError> {
    Ledger::open(
        store.clone(),
        options,
        Arc::new(SystemClock),
        Arc::new(Metrics::new()),
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn submit(rt: &tokio::runtime::Runtime, ledger: &Ledger, tag: &str, n: usize) {
    rt.block_on(async {
        for i in 0..n {
            let raw = RawRequest::from_value(json!({"request_id": format!("{tag}{i}"),
                "actor": "alice", "intent": "echo",
                "tool_call": {"name": "echo", "params": {"text": i}}}))
            .unwrap();
            ledger.submit(&raw).await.unwrap();
        }
    });
}

fn key(name: &str) -> Arc<SignerKey> {
    Arc::new(SignerKey::generate(name, KeyKind::Ed25519).unwrap())
}

#[test]
fn a_reopened_ledger_extends_what_it_signed_and_a_changed_tree_is_refused() {
    let rt = rt();
    let store = MemoryStore::new();
    let k = key("kernels/k-sign");
    let ledger = open(&store, options("k-sign", &k)).unwrap();
    // More than 128 entries: the first half tile of leaves is full, and so
    // stored (the right edge is rebuilt from the entries on open).
    submit(&rt, &ledger, "a", 140);
    let first = rt.block_on(ledger.checkpoint()).unwrap();
    first.verify(&k.verifier(), &Witnesses::none()).unwrap();
    let signed_size = first.checkpoint.size;
    assert_eq!(signed_size, ledger.durable_len());
    ledger.close().unwrap();
    drop(ledger);

    // A reopen: the tree goes on from the same root.
    let ledger = open(&store, options("k-sign", &k)).unwrap();
    submit(&rt, &ledger, "b", 5);
    let second = rt.block_on(ledger.checkpoint()).unwrap();
    let proof = ledger
        .consistency(signed_size, second.checkpoint.size)
        .unwrap();
    verify_consistency(
        signed_size,
        second.checkpoint.size,
        &first.checkpoint.root,
        &second.checkpoint.root,
        &proof,
    )
    .unwrap();
    ledger.close().unwrap();
    drop(ledger);

    // A stored leaf below the last state checkpoint changed (opening then
    // re-hashes only the tail): the tree's root at the signed size is no
    // longer the signed one, and the ledger refuses to open.
    let k0 = half_key(0, 0);
    let (_, mut half) = store
        .side_range(Family::TILES, k0, k0 + 1)
        .next()
        .unwrap()
        .unwrap();
    half[3 * 32] ^= 1;
    store
        .append(Append {
            side: vec![(Family::TILES, k0, half)],
            ..Append::default()
        })
        .unwrap();
    let mut o = options("k-sign", &k);
    o.verify = VerifyOnOpen::FromCheckpoint;
    match open(&store, o) {
        Err(LedgerError::Corrupt { message, .. }) => {
            assert!(message.contains("signed root"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A full verification names the tampered leaf itself.
    match open(&store, options("k-sign", &k)) {
        Err(LedgerError::Corrupt { seq, message }) => {
            assert_eq!(seq, 3, "{message}");
            assert!(message.contains("tampered"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn another_key_is_refused_unless_rotated_and_the_new_key_extends_the_old_tree() {
    let rt = rt();
    let store = MemoryStore::new();
    let (a, b) = (key("kernels/k-rot"), key("kernels/k-rot"));
    let ledger = open(&store, options("k-rot", &a)).unwrap();
    submit(&rt, &ledger, "a", 3);
    let old = rt.block_on(ledger.checkpoint()).unwrap();
    ledger.close().unwrap();
    drop(ledger);
    let err = open(&store, options("k-rot", &b)).unwrap_err();
    assert!(err.to_string().contains("rotate-signing-key"), "{err}");
    let mut o = options("k-rot", &b);
    o.rotate_signing_key = true;
    let ledger = open(&store, o).unwrap();
    assert_eq!(ledger.verifier_key(), Some(&b.verifier()));
    let new = rt.block_on(ledger.checkpoint()).unwrap();
    new.verify(&b.verifier(), &Witnesses::none()).unwrap();
    assert!(new.verify(&a.verifier(), &Witnesses::none()).is_err());
    let proof = ledger
        .consistency(old.checkpoint.size, new.checkpoint.size)
        .unwrap();
    verify_consistency(
        old.checkpoint.size,
        new.checkpoint.size,
        &old.checkpoint.root,
        &new.checkpoint.root,
        &proof,
    )
    .unwrap();
    ledger.close().unwrap();
}

#[test]
fn a_peer_cosigns_a_checkpoint_and_it_is_served_with_the_cosignature() {
    let rt = rt();
    let (ka, kb) = (key("kernels/node-a"), key("kernels/node-b"));
    let (sa, sb) = (MemoryStore::new(), MemoryStore::new());
    let a = open(&sa, options("node-a", &ka)).unwrap();
    let b = open(&sb, options("node-b", &kb)).unwrap();
    submit(&rt, &a, "a", 4);
    let cp = rt.block_on(a.checkpoint()).unwrap();

    // B checks A's checkpoint with A's key, then cosigns it.
    let a_key = a.verifier_key().unwrap().clone();
    cp.verify(&a_key, &Witnesses::none()).unwrap();
    let witness = b.witness_key().unwrap();
    assert_eq!(witness.kind(), KeyKind::CosignatureV1);
    assert_eq!(witness.name(), "kernels/node-b");
    let cosignature = b.cosign(&cp, 1_796_000_000).unwrap();

    // A adds it (checked against B's witness key) and serves it.
    let with = a
        .add_cosignature(cp.checkpoint.size, &witness, cosignature.clone())
        .unwrap();
    let served = rt.block_on(a.checkpoint()).unwrap();
    assert_eq!(served, with);
    let text = served.to_string();
    let parsed = SignedCheckpoint::parse(&text).unwrap();
    let verified = parsed
        .verify(
            &a_key,
            &Witnesses::new(vec![witness.clone()], Some(1)).unwrap(),
        )
        .unwrap();
    assert_eq!(verified.cosignatures.len(), 1);
    assert_eq!(verified.cosignatures[0].timestamp, 1_796_000_000);

    // A cosignature by another key, or for another checkpoint, is refused.
    let stranger = key("kernels/node-c").with_kind(KeyKind::CosignatureV1);
    assert!(matches!(
        a.add_cosignature(
            cp.checkpoint.size,
            &stranger.verifier(),
            cosignature.clone()
        ),
        Err(TreeError::OutOfRange(_))
    ));
    submit(&rt, &a, "b", 2);
    let later = rt.block_on(a.checkpoint()).unwrap();
    assert!(
        a.add_cosignature(later.checkpoint.size, &witness, cosignature)
            .is_err()
    );
    // B's log key is not its witness key: the checkpoint does not count it.
    assert!(
        parsed
            .verify(
                &a_key,
                &Witnesses::new(vec![stranger.verifier()], Some(1)).unwrap()
            )
            .is_err()
    );
    a.close().unwrap();
    b.close().unwrap();
}
