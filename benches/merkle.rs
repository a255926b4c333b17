//! The Merkle tree beside the chain, per operation (criterion).
//!
//! `cargo bench --bench merkle [-- FILTER]`
//!
//! * `tree/entry_leaf_hash`, `tree/node_hash` — the two hashes of the tree;
//! * `tree/append_compact_range` — appending a leaf hash to the head's
//!   compact range (what the commit path adds per entry, amortised: one leaf
//!   hash is computed before, about one node hash here);
//! * `tree/append_with_tiles` — the same plus keeping the tile-level nodes
//!   (what a store writes per entry: ~32.1 bytes);
//! * `proof/*/1M` — building an inclusion or consistency proof from the
//!   tiles of a 1,000,000-leaf tree in memory (a store adds its tile reads:
//!   at most two tiles per tile level, six at 1M), and verifying one;
//! * `checkpoint/sign`, `checkpoint/verify` — the Ed25519 signature of a
//!   checkpoint (once per commit batch) and its check;
//! * `bundle/verify{,_with_tree}/100k` — `kernels verify` of a 100,000-entry
//!   bundle in memory, without and with the tree head: the cost of
//!   `--key --checkpoint` (the `_cpu` variants count CPU-seconds of all
//!   threads instead of wall time).

mod support;

use std::hint::black_box;
use std::sync::atomic::AtomicU64;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kernels::checkpoint::{Checkpoint, SignedCheckpoint, Witnesses};
use kernels::entry::GENESIS_HASH;
use kernels::merkle::tiles::{MemoryTiles, TiledNodes};
use kernels::merkle::{
    CompactRange, Hash, consistency_proof, entry_leaf_hash, inclusion_proof, node_hash,
    verify_consistency, verify_inclusion,
};
use kernels::note::{KeyKind, SignerKey};
use support::{Rng, proc_cpu, realistic_body};

const BIG: u64 = 1_000_000;

fn leaf(i: u64) -> Hash {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&i.to_le_bytes());
    entry_leaf_hash(&h)
}

fn big_tree() -> MemoryTiles {
    let mut tiles = MemoryTiles::new();
    for i in 0..BIG {
        tiles.append(leaf(i));
    }
    tiles
}

fn tree(c: &mut Criterion) {
    let mut g = c.benchmark_group("tree");
    let raw = [0x5au8; 32];
    g.bench_function("entry_leaf_hash", |b| {
        b.iter(|| entry_leaf_hash(black_box(&raw)))
    });
    let (l, r) = (leaf(1), leaf(2));
    g.bench_function("node_hash", |b| {
        b.iter(|| node_hash(black_box(&l), black_box(&r)))
    });

    const BATCH: u64 = 4096;
    let leaves: Vec<Hash> = (0..BATCH).map(leaf).collect();
    g.throughput(Throughput::Elements(BATCH));
    // Start from a large size, so merges reach the upper levels as in a long log.
    let mut start = CompactRange::new();
    for i in 0..BIG {
        start.append(leaf(i));
    }
    g.bench_function("append_compact_range", |b| {
        b.iter_batched_ref(
            || start.clone(),
            |range| {
                for h in &leaves {
                    range.append(*h);
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("append_with_tiles", |b| {
        b.iter_batched_ref(
            MemoryTiles::new,
            |tiles| {
                for h in &leaves {
                    tiles.append(*h);
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn proofs(c: &mut Criterion) {
    let tiles = big_tree();
    let source = TiledNodes(&tiles);
    let root = tiles.root();
    let mut g = c.benchmark_group("proof");
    let mut rng = Rng::new(11);
    g.bench_function("inclusion_build/1M", |b| {
        b.iter(|| {
            let seq = rng.next() % BIG;
            inclusion_proof(seq, BIG, &source).unwrap()
        })
    });
    g.bench_function("consistency_build/1M", |b| {
        b.iter(|| {
            let old = 1 + rng.next() % (BIG - 1);
            consistency_proof(old, BIG, &source).unwrap()
        })
    });
    let seq = 777_777;
    let proof = inclusion_proof(seq, BIG, &source).unwrap();
    let leaf_hash = leaf(seq);
    g.bench_function("inclusion_verify/1M", |b| {
        b.iter(|| verify_inclusion(seq, BIG, &leaf_hash, black_box(&proof), &root).unwrap())
    });
    let old = 654_321;
    let old_root = kernels::merkle::tree_root(old, &source).unwrap();
    let cproof = consistency_proof(old, BIG, &source).unwrap();
    g.bench_function("consistency_verify/1M", |b| {
        b.iter(|| verify_consistency(old, BIG, &old_root, &root, black_box(&cproof)).unwrap())
    });
    g.finish();
}

fn checkpoints(c: &mut Criterion) {
    let key = SignerKey::generate("kernels/bench-001", KeyKind::Ed25519).unwrap();
    let cp = Checkpoint::new("kernels/bench-001", 1_000_000, leaf(9));
    let mut g = c.benchmark_group("checkpoint");
    g.bench_function("sign", |b| b.iter(|| cp.sign(&key).unwrap().to_string()));
    let text = cp.sign(&key).unwrap().to_string();
    let vkey = key.verifier();
    g.bench_function("verify", |b| {
        b.iter(|| {
            SignedCheckpoint::parse(black_box(&text))
                .unwrap()
                .verify(&vkey, &Witnesses::none())
                .unwrap()
        })
    });
    g.finish();
}

fn bundle(c: &mut Criterion) {
    const N: u64 = 100_000;
    let mut rng = Rng::new(0x5eed);
    let mut prev = GENESIS_HASH.to_owned();
    let entries: Vec<_> = (0..N)
        .map(|i| {
            let e = realistic_body(i, &mut rng).seal(i, &prev);
            prev = e.entry_hash.clone();
            e
        })
        .collect();
    let header = kernels::bundle::ExportHeader {
        kernel_id: "bench-001",
        variant: "strict",
        exported_at_ms: 1,
        from_seq: None,
        anchor_hash: None,
        root_hash: &prev,
    };
    let bytes = kernels::bundle::to_vec(&header, &entries).unwrap();
    let mut g = c.benchmark_group("bundle");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N));
    g.bench_function("verify/100k", |b| {
        b.iter(|| {
            let report = kernels::verify::verify_bundle(&bytes[..], &AtomicU64::new(0)).unwrap();
            assert!(report.valid);
        })
    });
    g.bench_function("verify_with_tree/100k", |b| {
        b.iter(|| {
            let (report, head) =
                kernels::verify::verify_bundle_with_tree(&bytes[..], &AtomicU64::new(0), N)
                    .unwrap();
            assert!(report.valid && head.leaves == N);
        })
    });
    // The same, timed in CPU-seconds of this process (all threads): steadier
    // than wall time on a machine others share.
    let bytes = &bytes;
    let cpu = |with_tree: bool| {
        move |b: &mut criterion::Bencher<'_>| {
            b.iter_custom(|iters| {
                let before = proc_cpu("self");
                for _ in 0..iters {
                    let input = &bytes[..];
                    let valid = if with_tree {
                        let progress = AtomicU64::new(0);
                        let r = kernels::verify::verify_bundle_with_tree(input, &progress, N);
                        r.unwrap().0.valid
                    } else {
                        let r = kernels::verify::verify_bundle(input, &AtomicU64::new(0));
                        r.unwrap().valid
                    };
                    assert!(valid);
                }
                std::time::Duration::from_secs_f64(proc_cpu("self") - before)
            })
        }
    };
    g.bench_function("verify_cpu/100k", cpu(false));
    g.bench_function("verify_with_tree_cpu/100k", cpu(true));
    g.finish();
}

criterion_group!(benches, tree, proofs, checkpoints, bundle);
criterion_main!(benches);
