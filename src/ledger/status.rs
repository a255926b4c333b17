//! What the ledger reports about itself: the status of `GET /v1/status`
//! and `kernels info`, and the replayed-state summary of `kernels replay`.

use serde::Serialize;
use serde_json::Value;

use crate::kernel::state::{Counters, HaltMark, RotationMark};
use crate::kernel::{KernelState, Policy};

/// What `GET /v1/status` and `kernels info --data-dir` report.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerStatus {
    /// Kernel id.
    pub kernel_id: String,
    /// Variant.
    pub variant: String,
    /// IDLE or HALTED.
    pub state: String,
    /// Durable entries.
    pub ledger_length: u64,
    /// Hash of the last durable entry.
    pub root_hash: String,
    /// Active policy version.
    pub policy_version: u64,
    /// Hash of the active policy.
    pub policy_hash: Option<String>,
    /// Session number (1 + recoveries).
    pub session: u64,
    /// Last rotation recorded.
    pub last_rotation: Option<RotationMark>,
    /// Last halt.
    pub last_halt: Option<HaltMark>,
    /// Time of the last entry.
    pub last_entry_ts_ms: Option<u64>,
    /// Decision counters.
    pub counters: Counters,
    /// Service starts recorded.
    pub starts: u64,
}

/// A state summary for `kernels replay` and `kernels archive replay`.
pub fn replay_summary(state: &KernelState) -> Value {
    serde_json::json!({
        "kernel_id": state.kernel_id,
        "variant": state.variant.map(|v| v.as_str()),
        "state": state.state.as_str(),
        "session": state.session,
        "ledger_length": state.head.len,
        "root_hash": state.head.hash,
        "head_hash": state.head.hash,
        "last_entry_ts_ms": state.last_ts_ms,
        "policy_version": state.policy_version,
        "policy_hash": state.policy_hash,
        "policy": state.policy.as_ref().map(Policy::to_json),
        "counters": state.counters,
        "permit_nonces_tracked": state.nonce_counts.len(),
        "last_rotation": state.last_rotation,
        "last_halt": state.last_halt,
        "starts": state.starts,
    })
}
