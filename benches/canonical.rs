//! Canonical JSON and chain verification, per operation (criterion).
//!
//! `cargo bench --bench canonical [-- FILTER]`
//!
//! * `canonical/to_string/*` — `kernels::canonical::to_string` on a realistic
//!   request-params object (ASCII, and with non-ASCII text that must be
//!   escaped), and `sha256_of` (what a `params_hash` costs);
//! * `entry/*` — an entry's hashed fields (`Entry::hashed_json`) and its hash
//!   (`Entry::compute_hash`: canonical fields + SHA-256 + hex);
//! * `chain/*` — `ChainVerifier` over a chunk of 512 sealed entries (the
//!   chunk size of `verify_bundle`): full check (hashes + links), and the
//!   sequential link check alone (`push_link` of pre-hashed links);
//! * `entry/parse_json` — `serde_json::from_slice::<Entry>` of one exported
//!   entry, the other per-entry cost of bundle verification.

mod support;

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kernels::chain::{ChainVerifier, CheckedEntry, Link};
use kernels::entry::{Entry, GENESIS_HASH};
use serde_json::json;
use support::{Rng, realistic_body};

fn params_ascii() -> serde_json::Value {
    json!({
        "query": "quarterly revenue by region for the last 4 quarters",
        "path": "/data/reports/2025/q3/summary.txt",
        "limit": 20,
        "offset": 0,
        "include_archived": false,
        "threshold": 0.75,
        "filters": {"region": ["emea", "apac", "amer"], "status": "open", "owner": null},
        "constraints": {
            "scope": "read-only access to the reports folder",
            "non_goals": ["modify files", "send email"],
            "success_criteria": "a summary of at most 200 words"
        },
        "request_meta": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "attempt": 1}
    })
}

fn params_unicode() -> serde_json::Value {
    json!({
        "query": "résumé des ventes — région Île-de-France, 3ᵉ trimestre 🙂",
        "path": "/données/rapports/été.txt",
        "limit": 20,
        "tags": ["naïve", "日本語", "Ω"],
        "note": "line one\nline two\ttabbed \"quoted\" \\ back"
    })
}

fn chain(n: u64) -> Vec<Entry> {
    let mut rng = Rng::new(7);
    let mut prev = GENESIS_HASH.to_owned();
    (0..n)
        .map(|i| {
            let e = realistic_body(i, &mut rng).seal(i, &prev);
            prev = e.entry_hash.clone();
            e
        })
        .collect()
}

fn canonical(c: &mut Criterion) {
    let mut g = c.benchmark_group("canonical");
    for (name, value) in [
        ("params_ascii", params_ascii()),
        ("params_unicode", params_unicode()),
    ] {
        let len = kernels::canonical::to_string(&value).unwrap().len() as u64;
        g.throughput(Throughput::Bytes(len));
        g.bench_function(format!("to_string/{name}"), |b| {
            b.iter(|| kernels::canonical::to_string(black_box(&value)).unwrap())
        });
        g.bench_function(format!("sha256_of/{name}"), |b| {
            b.iter(|| kernels::canonical::sha256_of(black_box(&value)).unwrap())
        });
    }
    g.finish();
}

fn entry(c: &mut Criterion) {
    let entries = chain(2);
    let e = &entries[1];
    let text = serde_json::to_vec(e).unwrap();
    let mut g = c.benchmark_group("entry");
    g.throughput(Throughput::Elements(1));
    g.bench_function("hashed_json", |b| b.iter(|| black_box(e).hashed_json()));
    g.bench_function("compute_hash", |b| b.iter(|| black_box(e).compute_hash()));
    g.bench_function("parse_json", |b| {
        b.iter(|| serde_json::from_slice::<Entry>(black_box(&text)).unwrap())
    });
    g.finish();
}

fn chain_verify(c: &mut Criterion) {
    const CHUNK: u64 = 512;
    let entries = chain(CHUNK);
    let links: Vec<Link> = entries
        .iter()
        .cloned()
        .map(|e| CheckedEntry::check(e).into_link())
        .collect();
    let mut g = c.benchmark_group("chain");
    g.throughput(Throughput::Elements(CHUNK));
    g.bench_function("verify_512_entries", |b| {
        b.iter_batched(
            || entries.clone(),
            |chunk| {
                let mut v = ChainVerifier::new();
                for e in chunk {
                    v.push(e);
                }
                let report = v.finish(None);
                assert!(report.valid);
                report
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("links_only_512_entries", |b| {
        b.iter_batched(
            || links.clone(),
            |chunk| {
                let mut v = ChainVerifier::new();
                for l in chunk {
                    v.push_link(l);
                }
                v.finish(None)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, canonical, entry, chain_verify);
criterion_main!(benches);
