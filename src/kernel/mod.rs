//! The pure kernel: decisions, operational events and the state they build.
//!
//! Nothing in this module does I/O, reads a clock or touches tokio, axum, sled
//! or AWS: time comes in as `now_ms`, entries go out as data. The split follows
//! event sourcing — [`KernelState::decide`] (and the event builders in
//! [`events`]) read the state and produce an [`EntryBody`]; the caller seals it
//! into the chain ([`KernelState::seal`]) and makes it durable; then
//! [`KernelState::apply`] folds it into the state. Replay is `apply` in a loop.
//!
//! * [`request`] — request shape, validation, ambiguity
//! * [`policy`] — jurisdiction policy and its evaluation
//! * [`variant`] — the four variants' rules
//! * [`permit`] — HMAC permit tokens
//! * [`tools`] — built-in deterministic tools
//! * [`machine`] — states and transitions
//! * [`decide`] — the decision path
//! * [`reason`] — why a request was denied, and the receipt status
//! * [`events`] — operational events
//! * [`outcome`] — what an externally run tool did (`kernel.outcome`)
//! * [`state`] — the folded state
//! * [`pysem`] — the Python value semantics (truthiness, whitespace, length) the checks need

pub mod decide;
pub mod events;
pub mod machine;
pub mod outcome;
pub mod permit;
pub mod policy;
pub mod pysem;
pub mod reason;
pub mod request;
pub mod state;
pub mod tools;
pub mod variant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use decide::{Admitted, Compat, DecideContext, Decided, Refusal};
pub use events::EventError;
pub use machine::State;
pub use permit::{Keyring, PermitToken};
pub use policy::Policy;
pub use reason::{DenyReason, Status};
pub use request::{RawRequest, Request, ShapeError, Submission};
pub use state::{ApplyError, KernelState};
pub use variant::Variant;

use crate::entry::{Entry, EntryBody};

/// What the kernel answers for a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// The request's id (as submitted).
    pub request_id: crate::entry::Text,
    /// ACCEPTED, REJECTED or FAILED.
    pub status: Status,
    /// ALLOW, DENY or HALT.
    pub decision: String,
    /// State before.
    pub state_from: String,
    /// State after.
    pub state_to: String,
    /// The kernel's clock at the decision.
    pub ts_ms: u64,
    /// Denial or failure text.
    pub error: Option<String>,
    /// `entry_hash` of the entry that recorded the decision.
    pub evidence_hash: String,
    /// Seq of that entry.
    pub ledger_seq: u64,
    /// What the tool returned, when one ran.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tool_result: Option<Value>,
}

impl Receipt {
    /// The receipt for `entry`, decided with `status` and `tool_result`.
    pub fn new(entry: &Entry, status: Status, tool_result: Option<Value>) -> Receipt {
        Receipt {
            request_id: entry.request_id.clone(),
            status,
            decision: entry.decision.clone(),
            state_from: entry.state_from.clone(),
            state_to: entry.state_to.clone(),
            ts_ms: entry.ts_ms,
            error: entry.error.clone(),
            evidence_hash: entry.entry_hash.clone(),
            ledger_seq: entry.ledger_seq,
            tool_result,
        }
    }
}

impl KernelState {
    /// The state of a booted kernel with an empty ledger (see [`MemoryKernel::bootstrap`]).
    pub fn bootstrapped(kernel_id: &str, variant: Variant, policy: &Policy) -> KernelState {
        KernelState {
            kernel_id: Some(kernel_id.to_owned()),
            variant: Some(variant),
            state: State::Idle,
            session: 1,
            policy_hash: Some(policy.hash()),
            configured_policy_hash: Some(policy.hash()),
            policy: Some(policy.clone()),
            policy_version: 1,
            ..KernelState::default()
        }
    }

    /// Seals `body` as the next entry of this state's chain.
    pub fn seal(&self, body: EntryBody) -> Entry {
        body.seal(self.head.len, &self.head.hash)
    }
}

/// An in-memory kernel: state plus its entries. Used by `kernels simulate`
/// and by tests; the durable service keeps entries in the store instead.
#[derive(Debug, Clone, Default)]
pub struct MemoryKernel {
    /// The folded state.
    pub state: KernelState,
    /// Every entry, in order.
    pub entries: Vec<Entry>,
}

impl MemoryKernel {
    /// A kernel with a `kernel.create` entry at `now_ms`.
    pub fn create(
        kernel_id: &str,
        variant: Variant,
        policy: &Policy,
        now_ms: u64,
    ) -> Result<MemoryKernel, EventError> {
        let mut k = MemoryKernel::default();
        let body = k
            .state
            .create_event(now_ms, "SYSTEM", kernel_id, variant, policy, None)?;
        k.record(body);
        Ok(k)
    }

    /// A kernel shaped like the Python library's in-memory kernel: booted
    /// with `policy`, but with an empty ledger (no `kernel.create` entry), so
    /// its chain is entry for entry the one the library would build. Used by
    /// `kernels simulate`; a durable kernel always starts with `kernel.create`.
    pub fn bootstrap(kernel_id: &str, variant: Variant, policy: &Policy) -> MemoryKernel {
        MemoryKernel {
            state: KernelState::bootstrapped(kernel_id, variant, policy),
            entries: Vec::new(),
        }
    }

    /// Seals, stores and applies `body`; returns the entry.
    pub fn record(&mut self, body: EntryBody) -> &Entry {
        let entry = self.state.seal(body);
        self.state
            .apply(&entry)
            .expect("a freshly sealed entry always continues the chain");
        self.entries.push(entry);
        self.entries.last().expect("just pushed")
    }

    /// Decides and records a request.
    pub fn submit(
        &mut self,
        raw: &RawRequest,
        ctx: &DecideContext<'_>,
    ) -> Result<Receipt, Refusal> {
        let decided = self.state.decide(&Submission::new(raw), ctx)?;
        let Decided {
            body,
            status,
            tool_result,
            ..
        } = decided;
        let entry = self.record(body);
        Ok(Receipt::new(entry, status, tool_result))
    }

    /// Halts, recording who and why.
    pub fn halt(&mut self, now_ms: u64, actor: &str, reason: &str) -> Result<Receipt, EventError> {
        let body = self.state.halt_event(now_ms, actor, reason)?;
        let entry = self.record(body);
        Ok(Receipt::new(entry, Status::Accepted, None))
    }
}

#[cfg(test)]
mod tests;
