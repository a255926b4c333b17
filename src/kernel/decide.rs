//! Deciding a request: the Python library's `submit`, as a pure function.
//!
//! `decide` reads the state, never changes it, and returns the entry body to
//! seal plus the receipt fields. First [`KernelState::admit`] checks, once,
//! that the kernel takes requests (not halted); then the order is the
//! library's: validate (done once, when the [`Submission`] was made) →
//! ambiguity (fail closed) → permit (when a keyring is configured and a tool
//! is called) → jurisdiction → variant → execute → record. Request ids
//! `HALT` and `kernel.*` are refused here: replay tells operational events
//! by their id, so no agent may use one.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::machine::{IllegalTransition, State, Walk};
use super::permit::{Keyring, PermitCheck, PermitContext, PermitToken};
use super::policy::Policy;
use super::reason::{DenyReason, Status};
use super::request::{Invalid, Request, Submission};
use super::state::KernelState;
use super::tools;
use super::variant::Variant;
use crate::entry::{EntryBody, Text};

/// Whose entry format a decision follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compat {
    /// Ours: a denied entry names the tool the request asked for in
    /// `tool_name` (its decision says it did not run), so an investigation
    /// can count attempts by tool.
    #[default]
    Native,
    /// The Python library's: `tool_name` only on ALLOW (null on DENY), so
    /// the entries are the library's byte for byte (`kernels simulate
    /// --compat python`).
    Python,
}

/// What the kernel needs besides its state to decide.
#[derive(Debug, Clone, Copy)]
pub struct DecideContext<'a> {
    /// The kernel's clock.
    pub now_ms: u64,
    /// Permit keys; permits are required for tool calls when non-empty.
    pub keyring: &'a Keyring,
    /// Jurisdiction name permits must carry.
    pub jurisdiction: &'a str,
    /// Tools the kernel authorises but does not run (the agent runs them):
    /// an allowed call to one is ALLOWed without a `tool_result`.
    pub external_tools: &'a BTreeSet<String>,
    /// The entry format.
    pub compat: Compat,
}

/// No external tools: every allowed tool call must be a built-in tool.
pub static NO_EXTERNAL_TOOLS: BTreeSet<String> = BTreeSet::new();

/// Request ids only operational events may use.
pub fn is_reserved_id(request_id: &str) -> bool {
    request_id == "HALT" || request_id.starts_with("kernel.")
}

/// Why a request was not decided at all (nothing is recorded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The kernel is halted; only an operator's recovery reopens it.
    #[error("kernel is halted: {0}")]
    Halted(String),
    /// The ledger has no `kernel.create` entry yet.
    #[error("kernel is not initialised")]
    NotInitialised,
    /// The request id is `HALT` or `kernel.*`, reserved for operational
    /// events (which replay recognises by their id).
    #[error(
        "request id {0:?} is reserved: request ids \"HALT\" and \"kernel.*\" are reserved for operational events"
    )]
    ReservedId(String),
    /// The decision code took an illegal step (a bug, never input).
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
}

/// A decision, before it is sealed into the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    /// The entry to record.
    pub body: EntryBody,
    /// Receipt status.
    pub status: Status,
    /// What the tool returned (ALLOW with a tool call).
    pub tool_result: Option<Value>,
}

impl Decided {
    /// The decision (`ALLOW` / `DENY`).
    pub fn decision(&self) -> &str {
        &self.body.decision
    }
}

/// A kernel that takes requests now: what [`KernelState::admit`] answers,
/// so that the halt check is made once per decision.
#[derive(Debug, Clone, Copy)]
pub struct Admitted<'s> {
    state: &'s KernelState,
    policy: &'s Policy,
    variant: Variant,
}

impl KernelState {
    /// Whether the kernel takes requests: refused while halted or before
    /// `kernel.create`. The one halt check of the decision path.
    pub fn admit(&self) -> Result<Admitted<'_>, Refusal> {
        match self.state {
            State::Halted => {
                let reason = self
                    .last_halt
                    .as_ref()
                    .map(|h| h.reason.clone())
                    .unwrap_or_default();
                return Err(Refusal::Halted(reason));
            }
            State::Idle => {}
            _ => return Err(Refusal::NotInitialised),
        }
        Ok(Admitted {
            state: self,
            policy: self.policy.as_ref().ok_or(Refusal::NotInitialised)?,
            variant: self.variant.ok_or(Refusal::NotInitialised)?,
        })
    }

    /// Admits, then decides `submission` at `ctx.now_ms`. Pure: the state is
    /// only changed by applying the sealed entry afterwards.
    pub fn decide(
        &self,
        submission: &Submission<'_>,
        ctx: &DecideContext<'_>,
    ) -> Result<Decided, Refusal> {
        self.admit()?.decide(submission, ctx)
    }
}

impl Admitted<'_> {
    /// Decides `submission` (validated once, when it was made) at
    /// `ctx.now_ms`; refuses a reserved request id.
    pub fn decide(
        &self,
        submission: &Submission<'_>,
        ctx: &DecideContext<'_>,
    ) -> Result<Decided, Refusal> {
        if let Some(id) = submission
            .raw()
            .request_id()
            .filter(|id| is_reserved_id(id))
        {
            return Err(Refusal::ReservedId(id.to_owned()));
        }
        let (policy, variant) = (self.policy, self.variant);
        let mut walk = Walk::from(State::Idle);
        walk.go(State::Validating)?;

        let request = match submission.checked() {
            Ok(r) => r,
            Err(invalid) => {
                let Invalid {
                    errors,
                    request_id,
                    actor,
                    intent,
                    tool_name,
                } = invalid;
                let who = Who {
                    request_id: request_id.clone(),
                    actor: actor.clone(),
                    intent: intent.clone(),
                    tool_name: tool_name.clone(),
                };
                return deny(walk, ctx, who, DenyReason::Invalid, &errors.join("; "));
            }
        };

        let ambiguity = request.ambiguity(variant.max_intent_length(), variant.strict_ambiguity());
        if !ambiguity.is_empty() && variant.fail_closed() {
            let detail = ambiguity.join("; ");
            return deny(walk, ctx, Who::of(request), DenyReason::Ambiguous, &detail);
        }

        let mut permit_fields = None;
        if let Some(call) = request
            .tool_call
            .as_ref()
            .filter(|_| !ctx.keyring.is_empty())
        {
            let tool = &call.name;
            let (detail, reasons, token) = match &request.permit {
                None => (None, vec!["MISSING_PERMIT".to_owned()], None),
                Some(value) => match PermitToken::from_value(value) {
                    None => (
                        Some("PERMIT_MALFORMED".to_owned()),
                        vec!["PERMIT_MALFORMED".to_owned()],
                        None,
                    ),
                    Some(token) => {
                        let empty = Map::new();
                        let check = token.verify(&PermitContext {
                            keyring: ctx.keyring,
                            nonce_counts: &self.state.nonce_counts,
                            now_ms: ctx.now_ms,
                            jurisdiction: ctx.jurisdiction,
                            allowed_tools: &policy.allowed_tools,
                            actor: &request.actor,
                            tool,
                            request_params: request.params.as_ref().unwrap_or(&empty),
                        });
                        match check {
                            PermitCheck::Denied(reasons) => {
                                (Some(reasons.join(", ")), reasons, Some(token))
                            }
                            PermitCheck::Allowed => {
                                permit_fields = Some(token);
                                (None, Vec::new(), None)
                            }
                        }
                    }
                },
            };
            if permit_fields.is_none() {
                return deny_permit(walk, ctx, request, detail, reasons, token.as_ref());
            }
        }

        walk.go(State::Arbitrating)?;
        if variant.require_jurisdiction() {
            let violations = policy.evaluate(request);
            if !violations.is_empty() {
                let detail = violations.join("; ");
                return deny(
                    walk,
                    ctx,
                    Who::of(request),
                    DenyReason::Jurisdiction,
                    &detail,
                );
            }
        }
        let unmet = variant.requirements(request);
        if !unmet.is_empty() {
            let detail = unmet.join("; ");
            return deny(walk, ctx, Who::of(request), DenyReason::Variant, &detail);
        }

        let mut tool_result = None;
        if let Some(call) = request
            .tool_call
            .as_ref()
            .filter(|c| tools::runs_in_kernel(&c.name, request.external_tool, ctx.external_tools))
        {
            walk.go(State::Executing)?;
            match tools::execute(&call.name, &call.params) {
                Ok(result) => tool_result = Some(result),
                Err(e) => {
                    let detail = e.to_string();
                    return deny(walk, ctx, Who::of(request), DenyReason::ToolFailed, &detail);
                }
            }
        }
        walk.go(State::Auditing)?;
        walk.go(State::Idle)?;
        let mut body = EntryBody {
            ts_ms: ctx.now_ms,
            request_id: request.request_id.clone().into(),
            actor: request.actor.clone().into(),
            intent: request.intent.clone().into(),
            decision: "ALLOW".into(),
            state_from: State::Idle.as_str().into(),
            state_to: State::Idle.as_str().into(),
            tool_name: request.tool_call.as_ref().map(|c| c.name.clone()),
            params_hash: request.params_hash(),
            evidence_hash: request.evidence_hash(),
            ..EntryBody::default()
        };
        if let Some(token) = permit_fields {
            body.permit_digest = Some(token.permit_id);
            body.permit_verification = Some("ALLOW".into());
            body.proposal_hash = Some(token.proposal_hash);
            body.permit_nonce = Some(token.nonce);
            body.permit_issuer = Some(token.issuer);
            body.permit_subject = Some(token.subject);
            body.permit_max_executions = Some(token.max_executions);
        }
        Ok(Decided {
            body,
            status: Status::Accepted,
            tool_result,
        })
    }
}

/// Who a denied entry is about: what can be said of the request.
struct Who {
    request_id: Text,
    actor: Text,
    intent: Text,
    /// The tool the request asked for, if it names one.
    tool_name: Option<String>,
}

impl Who {
    fn of(request: &Request) -> Who {
        Who {
            request_id: request.request_id.clone().into(),
            actor: request.actor.clone().into(),
            intent: request.intent.clone().into(),
            tool_name: request.tool_call.as_ref().map(|c| c.name.clone()),
        }
    }
}

fn deny(
    mut walk: Walk,
    ctx: &DecideContext<'_>,
    who: Who,
    reason: DenyReason,
    detail: &str,
) -> Result<Decided, Refusal> {
    walk.go_if_not(State::Auditing)?;
    walk.go(State::Idle)?;
    let tool_name = match ctx.compat {
        Compat::Native => who.tool_name,
        Compat::Python => None,
    };
    Ok(Decided {
        body: EntryBody {
            ts_ms: ctx.now_ms,
            request_id: who.request_id,
            actor: who.actor,
            intent: who.intent,
            decision: "DENY".into(),
            state_from: State::Idle.as_str().into(),
            state_to: State::Idle.as_str().into(),
            tool_name,
            error: Some(reason.error(detail)),
            ..EntryBody::default()
        },
        status: reason.status(),
        tool_result: None,
    })
}

/// A permit denial: `detail` is `None` for a missing permit (the library's
/// bare `MISSING_PERMIT`).
fn deny_permit(
    walk: Walk,
    ctx: &DecideContext<'_>,
    request: &Request,
    detail: Option<String>,
    reasons: Vec<String>,
    token: Option<&PermitToken>,
) -> Result<Decided, Refusal> {
    let (reason, detail) = match &detail {
        None => (DenyReason::MissingPermit, ""),
        Some(d) => (DenyReason::Permit, d.as_str()),
    };
    let mut decided = deny(walk, ctx, Who::of(request), reason, detail)?;
    decided.body.permit_verification = Some("DENY".into());
    decided.body.permit_denial_reasons = Some(reasons);
    if let Some(token) = token {
        decided.body.permit_digest = Some(token.permit_id.clone());
        decided.body.proposal_hash = Some(token.proposal_hash.clone());
    }
    Ok(decided)
}
