//! The OpenAPI document, generated from the handlers' annotations.
//!
//! The schemas below describe the wire shapes for the document only; the
//! handlers (de)serialize the kernel's own types, which stay free of any
//! HTTP or documentation dependency.

use axum::Json;
use serde_json::Value;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// A tool invocation.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ToolCallSchema {
    /// Tool name.
    name: String,
    /// Tool arguments.
    params: Option<Object>,
}

/// Any JSON object.
#[derive(ToSchema)]
#[schema(value_type = Object)]
pub struct Object(#[allow(dead_code)] Value);

/// An agent's request.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(example = json!({"request_id": "req-1", "actor": "agent-001", "intent": "search the docs", "tool_call": {"name": "search", "params": {"q": "rotation"}}, "params": {"q": "rotation"}}))]
pub struct RequestSchema {
    /// Caller's unique id (idempotency key).
    request_id: String,
    /// Who asks; must be an actor the token may use.
    actor: String,
    /// What the actor wants, in words.
    intent: String,
    /// The tool to run, if any.
    tool_call: Option<ToolCallSchema>,
    /// Request params (hashed into `params_hash`).
    params: Option<Object>,
    /// Supporting evidence text.
    evidence: Option<String>,
    /// A permit token (when permits are configured).
    permit: Option<Object>,
    /// Caller's timestamp (informational).
    ts_ms: Option<u64>,
    /// The caller runs the tool after an ALLOW (e.g. an MCP server behind
    /// `kernels mcp-proxy`): the kernel decides and records, never runs it.
    external_tool: Option<bool>,
}

/// The kernel's answer.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(example = json!({"request_id": "req-1", "status": "ACCEPTED", "decision": "ALLOW", "state_from": "IDLE", "state_to": "IDLE", "ts_ms": 1700000000000u64, "error": null, "evidence_hash": "5f1c…", "ledger_seq": 42, "tool_result": "…"}))]
pub struct ReceiptSchema {
    /// The request's id.
    request_id: String,
    /// ACCEPTED, REJECTED or FAILED.
    status: String,
    /// ALLOW, DENY or HALT.
    decision: String,
    /// State before.
    state_from: String,
    /// State after.
    state_to: String,
    /// Kernel clock at the decision.
    ts_ms: u64,
    /// Denial or failure text.
    error: Option<String>,
    /// `entry_hash` of the recording entry.
    evidence_hash: String,
    /// Seq of the recording entry.
    ledger_seq: u64,
    /// The tool's result.
    tool_result: Option<Object>,
}

/// `GET /v1/status`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct StatusSchema {
    /// Kernel id.
    kernel_id: String,
    /// Variant.
    variant: String,
    /// IDLE or HALTED.
    state: String,
    /// Durable entries.
    ledger_length: u64,
    /// Hash of the last entry.
    root_hash: String,
    /// Active policy version.
    policy_version: u64,
    /// Last rotation.
    last_rotation: Option<Object>,
    /// Rotator state.
    rotation: Object,
    /// A cluster member only: membership, control plane reachability, the
    /// halt flag and the shared policy as this member sees them.
    cluster: Option<Object>,
}

/// `PUT /v1/policy`.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(example = json!({"policy": {"allowed_actors": ["agent-001"], "allowed_tools": ["search"], "require_tool_call": true, "max_intent_length": 1000, "max_param_bytes": 65536, "required_fields": ["actor", "intent", "request_id"]}, "reason": "ticket OPS-12"}))]
pub struct PolicyUpdateSchema {
    /// The whole new policy (unknown keys are refused; a field left out
    /// takes its default, listed in the answer's `defaulted`).
    policy: Object,
    /// Why (recorded); optional with `dry_run`.
    reason: Option<String>,
}

/// A body with a reason.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ReasonSchema {
    /// Why (recorded).
    reason: String,
    /// `POST /v1/halt` and `/v1/recover` only: this instance's cluster id,
    /// when the cluster halts or recovers it (recorded as `cluster:<id>`).
    cluster: Option<String>,
}

/// `POST /v1/preserve`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PreserveSchema {
    /// Why (recorded).
    reason: String,
    /// Incident name (A-Z a-z 0-9 - _).
    incident: Option<String>,
    /// First seq (default 0).
    from_seq: Option<u64>,
    /// Last seq, inclusive (default: the head).
    to_seq: Option<u64>,
}

/// `GET /v1/policy/allowed`.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(example = json!({"actor": "agent-001", "allowed": true, "tools": ["github.create_issue", "search"], "policy_version": 3}))]
pub struct AllowedSchema {
    /// The actor asked about.
    actor: String,
    /// Whether the policy allows the actor at all.
    allowed: bool,
    /// The tools it may call: a list of names, or `"*"` for any (`[]` when not allowed).
    #[schema(value_type = Object)]
    tools: Value,
    /// Version of the policy this was read from.
    policy_version: u64,
}

/// `POST /v1/outcomes`.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(example = json!({"request_id": "mcp-5f0c…", "ok": true, "result_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "error": null}))]
pub struct OutcomeSchema {
    /// The ALLOWed request.
    request_id: String,
    /// Whether the tool finished without an error.
    ok: bool,
    /// SHA-256 of the canonical JSON of the result (never the result).
    result_sha256: Option<String>,
    /// What went wrong (at most 4096 characters).
    error: Option<String>,
}

/// The answer of `POST /v1/outcomes`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct OutcomeRecordedSchema {
    /// The request.
    request_id: String,
    /// Seq of the `kernel.outcome` entry.
    ledger_seq: u64,
    /// Its hash.
    entry_hash: String,
    /// False when the same outcome was already recorded (nothing new).
    recorded: bool,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "kernels", description = "A durable, hash-chained governance kernel between AI agents and their tools."),
    paths(
        super::api::health,
        super::api::ready,
        super::api::metrics,
        super::api::submit,
        super::api::status,
        super::entries::evidence,
        super::entries::entries,
        super::api::get_policy,
        super::api::put_policy,
        super::api::halt,
        super::api::recover,
        super::api::preserve,
        super::api::rotations,
        super::api::rotate,
        super::api::verify,
        super::cluster::leave,
        super::cluster::add_cosignature,
        super::agents::allowed,
        super::agents::outcomes,
        super::proofs::checkpoint,
        super::proofs::checkpoint_key,
        super::proofs::inclusion,
        super::proofs::consistency,
        document,
    ),
    components(schemas(RequestSchema, ReceiptSchema, StatusSchema, PolicyUpdateSchema, ReasonSchema, PreserveSchema, AllowedSchema, OutcomeSchema, OutcomeRecordedSchema, super::error::ErrorBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// `GET /v1/openapi.json`.
#[utoipa::path(get, path = "/v1/openapi.json", responses((status = 200, description = "This document")), security(("bearer" = [])))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
