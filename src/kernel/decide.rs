//! Deciding a request: the Python library's `submit`, as a pure function.
//!
//! `decide` reads the state, never changes it, and returns the entry body to
//! seal plus the receipt fields. The order is the library's: validate →
//! ambiguity (fail closed) → permit (when a keyring is configured and a tool
//! is called) → jurisdiction → variant → execute → record.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::{Map, Value};

use super::machine::{State, Walk};
use super::permit::{Keyring, PermitCheck, PermitContext, PermitToken};
use super::request::{Invalid, RawRequest, Request};
use super::state::KernelState;
use super::tools;
use crate::entry::{EntryBody, Text};

/// Receipt status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Allowed (and executed, when a tool was called).
    Accepted,
    /// Denied by a check.
    Rejected,
    /// Allowed, but the tool failed; recorded as DENY.
    Failed,
}

impl Status {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Accepted => "ACCEPTED",
            Status::Rejected => "REJECTED",
            Status::Failed => "FAILED",
        }
    }
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
}

/// No external tools: every allowed tool call must be a built-in tool.
pub static NO_EXTERNAL_TOOLS: BTreeSet<String> = BTreeSet::new();

/// Why a request was not decided at all (nothing is recorded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The kernel is halted; only an operator's recovery reopens it.
    #[error("kernel is halted: {0}")]
    Halted(String),
    /// The ledger has no `kernel.create` entry yet.
    #[error("kernel is not initialised")]
    NotInitialised,
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

impl KernelState {
    /// Decides `raw` at `ctx.now_ms`. Pure: the state is only changed by
    /// applying the sealed entry afterwards.
    pub fn decide(&self, raw: &RawRequest, ctx: &DecideContext<'_>) -> Result<Decided, Refusal> {
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
        let policy = self.policy.as_ref().ok_or(Refusal::NotInitialised)?;
        let variant = self.variant.ok_or(Refusal::NotInitialised)?;
        let mut walk = Walk::from(State::Idle);
        walk.go(State::Validating);

        let request = match raw.validate(ctx.now_ms) {
            Ok(r) => r,
            Err(invalid) => {
                let Invalid {
                    errors,
                    request_id,
                    actor,
                    intent,
                } = *invalid;
                let error = format!("Validation failed: {}", errors.join("; "));
                return Ok(deny(
                    walk,
                    ctx,
                    request_id,
                    actor,
                    intent,
                    error,
                    Status::Rejected,
                ));
            }
        };

        let ambiguity = request.ambiguity(variant.max_intent_length(), variant.strict_ambiguity());
        if !ambiguity.is_empty() && variant.fail_closed() {
            let error = format!("Ambiguity detected: {}", ambiguity.join("; "));
            return Ok(deny_request(walk, ctx, &request, error, Status::Rejected));
        }

        let mut permit_fields = None;
        if let Some(call) = request
            .tool_call
            .as_ref()
            .filter(|_| !ctx.keyring.is_empty())
        {
            let tool = &call.name;
            match &request.permit {
                None => {
                    return Ok(deny_permit(
                        walk,
                        ctx,
                        &request,
                        "MISSING_PERMIT".into(),
                        vec!["MISSING_PERMIT".into()],
                        None,
                    ));
                }
                Some(value) => match PermitToken::from_value(value) {
                    None => {
                        return Ok(deny_permit(
                            walk,
                            ctx,
                            &request,
                            "Permit verification failed: PERMIT_MALFORMED".into(),
                            vec!["PERMIT_MALFORMED".into()],
                            None,
                        ));
                    }
                    Some(token) => {
                        let empty = Map::new();
                        let check = token.verify(&PermitContext {
                            keyring: ctx.keyring,
                            nonce_counts: &self.nonce_counts,
                            now_ms: ctx.now_ms,
                            jurisdiction: ctx.jurisdiction,
                            allowed_tools: &policy.allowed_tools,
                            actor: &request.actor,
                            tool,
                            request_params: request.params.as_ref().unwrap_or(&empty),
                        });
                        match check {
                            PermitCheck::Denied(reasons) => {
                                let error =
                                    format!("Permit verification failed: {}", reasons.join(", "));
                                return Ok(deny_permit(
                                    walk,
                                    ctx,
                                    &request,
                                    error,
                                    reasons,
                                    Some(&token),
                                ));
                            }
                            PermitCheck::Allowed => permit_fields = Some(token),
                        }
                    }
                },
            }
        }

        walk.go(State::Arbitrating);
        if variant.require_jurisdiction() {
            let violations = policy.evaluate(&request);
            if !violations.is_empty() {
                let error = format!("Jurisdiction denied: {}", violations.join("; "));
                return Ok(deny_request(walk, ctx, &request, error, Status::Rejected));
            }
        }
        let unmet = variant.requirements(&request);
        if !unmet.is_empty() {
            let error = format!("Variant requirements not met: {}", unmet.join("; "));
            return Ok(deny_request(walk, ctx, &request, error, Status::Rejected));
        }

        let mut tool_result = None;
        if let Some(call) = request
            .tool_call
            .as_ref()
            .filter(|c| tools::runs_in_kernel(&c.name, request.external_tool, ctx.external_tools))
        {
            walk.go(State::Executing);
            match tools::execute(&call.name, &call.params) {
                Ok(result) => tool_result = Some(result),
                Err(e) => {
                    let error = format!("Tool execution failed: {e}");
                    return Ok(deny_request(walk, ctx, &request, error, Status::Failed));
                }
            }
        }
        walk.go(State::Auditing);
        walk.go(State::Idle);
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

fn deny_request(
    walk: Walk,
    ctx: &DecideContext<'_>,
    request: &Request,
    error: String,
    status: Status,
) -> Decided {
    let mut decided = deny(
        walk,
        ctx,
        request.request_id.clone().into(),
        request.actor.clone().into(),
        request.intent.clone().into(),
        error,
        status,
    );
    // Ours: a call its caller runs (an MCP tools/call) names its tool even
    // when denied, so every such call is an entry with its tool name; the
    // library's requests keep the library's null.
    if request.external_tool {
        decided.body.tool_name = request.tool_call.as_ref().map(|c| c.name.clone());
    }
    decided
}

fn deny(
    mut walk: Walk,
    ctx: &DecideContext<'_>,
    request_id: Text,
    actor: Text,
    intent: Text,
    error: String,
    status: Status,
) -> Decided {
    walk.go_if_not(State::Auditing);
    walk.go(State::Idle);
    Decided {
        body: EntryBody {
            ts_ms: ctx.now_ms,
            request_id,
            actor,
            intent,
            decision: "DENY".into(),
            state_from: State::Idle.as_str().into(),
            state_to: State::Idle.as_str().into(),
            error: Some(error),
            ..EntryBody::default()
        },
        status,
        tool_result: None,
    }
}

fn deny_permit(
    walk: Walk,
    ctx: &DecideContext<'_>,
    request: &Request,
    error: String,
    reasons: Vec<String>,
    token: Option<&PermitToken>,
) -> Decided {
    let mut decided = deny_request(walk, ctx, request, error, Status::Rejected);
    decided.body.permit_verification = Some("DENY".into());
    decided.body.permit_denial_reasons = Some(reasons);
    if let Some(token) = token {
        decided.body.permit_digest = Some(token.permit_id.clone());
        decided.body.proposal_hash = Some(token.proposal_hash.clone());
    }
    decided
}
