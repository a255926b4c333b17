//! A durable ledger in-process, opened the way the service opens it, and
//! requests submitted to it.

use std::path::Path;
use std::sync::Arc;

use kernels::kernel::{Policy, RawRequest, Variant};
use kernels::ledger::{Ledger, LedgerOptions, SystemClock};
use kernels::metrics::Metrics;
use serde_json::json;

/// Opens (or creates) the ledger in `dir` as kernel `kernel_id`, strict,
/// with a policy that allows any actor the `echo` tool.
pub fn open(dir: &Path, kernel_id: &str) -> Ledger {
    let policy = Policy::from_yaml("allowed_actors: ['*']\nallowed_tools: [echo]\n").unwrap();
    Ledger::open(
        dir,
        LedgerOptions::service(kernel_id, Variant::Strict, policy),
        Arc::new(SystemClock),
        Arc::new(Metrics::new()),
    )
    .unwrap()
}

/// Submits `n` allowed `echo` requests with ids `{prefix}-0` … and waits
/// for each to be durable.
pub async fn submit_n(ledger: &Ledger, prefix: &str, n: usize) {
    for i in 0..n {
        let raw = RawRequest::from_value(
            json!({"request_id": format!("{prefix}-{i}"), "actor": "agent-001",
            "intent": "echo", "tool_call": {"name": "echo", "params": {"text": i}}}),
        )
        .unwrap();
        ledger.submit(&raw).await.unwrap();
    }
}
