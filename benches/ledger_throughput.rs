//! Durable decision throughput of the ledger, in-process.
//!
//! `cargo bench --bench ledger_throughput [-- --submitters N --decisions M]`
//!
//! Opens a fresh ledger in a temp dir (real sled, real fdatasync), runs M
//! decisions from N concurrent submitters (tokio tasks), and prints the rate,
//! the number of commits and the mean batch size; then the same with one
//! submitter, which shows the cost of one commit.

use std::sync::Arc;
use std::time::Instant;

use kernels::kernel::{Policy, RawRequest, Variant};
use kernels::ledger::{Ledger, LedgerOptions, SystemClock};
use kernels::metrics::Metrics;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn run(submitters: u64, decisions: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let policy = Policy::from_yaml("allowed_actors: ['*']\nallowed_tools: [echo]\n").unwrap();
    let mut options = LedgerOptions::service("bench", Variant::Strict, policy);
    options.checkpoint_every = 100_000;
    let metrics = Arc::new(Metrics::new());
    let ledger = Ledger::open(tmp.path(), options, Arc::new(SystemClock), metrics.clone()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let per_task = decisions / submitters;
    let commits_before = metric(&metrics.render(), "kernels_commits_total");
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..submitters {
            let ledger = ledger.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..per_task {
                    let raw = RawRequest::from_value(serde_json::json!({
                        "request_id": format!("t{t}-{i}"),
                        "actor": format!("agent-{}", t % 8),
                        "intent": "echo a value back",
                        "tool_call": {"name": "echo", "params": {"text": "hello"}},
                        "params": {"text": "hello"}
                    }))
                    .unwrap();
                    ledger.submit(&raw).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let total = per_task * submitters;
    let text = metrics.render();
    let commits = metric(&text, "kernels_commits_total") - commits_before;
    println!(
        "submitters={submitters:>3} decisions={total:>7} time={elapsed:.2}s rate={:>8.0}/s commits={commits:.0} mean_batch={:.1} mean_commit_ms={:.3}",
        total as f64 / elapsed,
        total as f64 / commits.max(1.0),
        metric(&text, "kernels_commit_seconds_sum") * 1000.0
            / metric(&text, "kernels_commit_seconds_count").max(1.0),
    );
    ledger.close().unwrap();
    assert!(ledger.verify_stored().valid);
}

fn main() {
    // As the `kernels` binary does.
    kernels::allocator::tune();
    let submitters = arg("--submitters", 64);
    let decisions = arg("--decisions", 200_000);
    run(submitters, decisions);
    run(1, arg("--single-decisions", 5_000));
}
