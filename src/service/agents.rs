//! Handlers for what agents and their proxies need besides submitting: which
//! tools an actor may call (`GET /v1/policy/allowed`, read by `kernels
//! mcp-proxy` to filter `tools/list`), recording what an externally run tool
//! did (`POST /v1/outcomes`), and the Streamable HTTP front that puts the
//! kernel in front of configured MCP servers (`/mcp/{name}`).
//!
//! The answer of `allowed` is a projection of the active policy, never a
//! decision: every tool call is still decided (and recorded) one by one.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Principal;
use super::body::JsonBody;
use super::error::ApiError;
use crate::config::Role;
use crate::kernel::Refusal;
use crate::kernel::outcome::{OutcomeError, OutcomeReport};
use crate::ledger::outcome::RecordOutcomeError;
use crate::mcp::gate::{Gate, KernelAnswer};
use crate::mcp::session::{Session, Settings};

/// Query of `GET /v1/policy/allowed`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AllowedQuery {
    /// The actor (default: the token's single actor).
    pub actor: Option<String>,
}

/// The actor a call is about: the one named, else the token's only actor.
pub(crate) fn actor_for(principal: &Principal, named: Option<&str>) -> Result<String, ApiError> {
    match named {
        Some("") => Err(ApiError::bad_request("invalid_query", "actor is empty")),
        Some(actor) => Ok(actor.to_owned()),
        None => match principal.actors.as_deref() {
            Some([only]) => Ok(only.clone()),
            _ => Err(ApiError::bad_request(
                "actor_required",
                "name the actor (?actor=A): this token is not bound to exactly one actor",
            )),
        },
    }
}

/// What `actor` may call under the active policy:
/// `{"actor", "allowed", "tools": [...] | "*", "policy_version"}`. Agents
/// may ask only about actors their token may use; auditors and operators
/// about anyone.
pub(crate) fn allowed_for(
    state: &AppState,
    principal: &Principal,
    actor: Option<&str>,
) -> Result<Value, ApiError> {
    principal.require(&[Role::Agent, Role::Auditor, Role::Operator])?;
    let actor = actor_for(principal, actor)?;
    if principal.role == Role::Agent {
        principal.may_act_as(&actor)?;
    }
    let kernel = state.ledger().state();
    let policy = kernel
        .policy
        .as_ref()
        .ok_or(ApiError::from(Refusal::NotInitialised))?;
    let allowed = policy.allows_actor(&actor);
    let tools = if !allowed {
        json!([])
    } else if policy.allowed_tools.contains("*") {
        json!("*")
    } else {
        json!(policy.allowed_tools)
    };
    Ok(json!({
        "actor": actor,
        "allowed": allowed,
        "tools": tools,
        "policy_version": kernel.policy_version,
    }))
}

/// `GET /v1/policy/allowed?actor=A`: the tools `A` may call.
#[utoipa::path(
    get, path = "/v1/policy/allowed", params(AllowedQuery),
    responses(
        (status = 200, description = "{actor, allowed, tools: [..] | \"*\", policy_version}", body = super::openapi::AllowedSchema),
        (status = 400, description = "No actor named and the token is not bound to exactly one", body = super::error::ErrorBody),
        (status = 403, description = "An agent token asking about an actor it may not use", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn allowed(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    query: Result<Query<AllowedQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    allowed_for(&state, &principal, q.actor.as_deref()).map(Json)
}

/// `POST /v1/outcomes`: records what an externally run tool did for an
/// ALLOWed request (`kernel.outcome`), once per request.
#[utoipa::path(
    post, path = "/v1/outcomes",
    request_body(content = super::openapi::OutcomeSchema, description = "The outcome: never the result itself, only its SHA-256"),
    responses(
        (status = 200, description = "{request_id, ledger_seq, entry_hash, recorded}: recorded false when the same outcome was already recorded", body = super::openapi::OutcomeRecordedSchema),
        (status = 400, description = "Malformed outcome; nothing recorded", body = super::error::ErrorBody),
        (status = 403, description = "Wrong role, or a request of an actor the token may not use", body = super::error::ErrorBody),
        (status = 404, description = "No request of that id was decided", body = super::error::ErrorBody),
        (status = 409, description = "The request was not ALLOWed, or already has a different outcome", body = super::error::ErrorBody),
        (status = 503, description = "The ledger cannot record now; retry", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn outcomes(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    record_outcome(&state, &principal, &body).await.map(Json)
}

/// Records the outcome `body` for `principal` (the handler, and the MCP
/// front in-process).
pub(crate) async fn record_outcome(
    state: &AppState,
    principal: &Principal,
    body: &Value,
) -> Result<Value, ApiError> {
    principal.require(&[Role::Agent, Role::Operator])?;
    let report = OutcomeReport::from_value(body)
        .map_err(|e| ApiError::bad_request("invalid_outcome", e.to_string()))?;
    let (recorded, durable) = state
        .ledger()
        .outcome_begin(&principal.name, &report, |decision| {
            principal.may_act_as(decision.actor.as_str()).is_ok()
        })
        .map_err(outcome_error)?;
    durable.wait().await?;
    Ok(json!({
        "request_id": report.request_id,
        "ledger_seq": recorded.ledger_seq,
        "entry_hash": recorded.entry_hash,
        "recorded": recorded.new,
    }))
}

fn outcome_error(e: RecordOutcomeError) -> ApiError {
    match e {
        RecordOutcomeError::Unknown(_) => ApiError::Unknown {
            code: "unknown_request",
            message: e.to_string(),
        },
        RecordOutcomeError::Outcome(OutcomeError::Invalid(m)) => {
            ApiError::bad_request("invalid_outcome", m)
        }
        RecordOutcomeError::Outcome(e @ OutcomeError::NotAllowed { .. }) => {
            ApiError::conflict("not_allowed", e.to_string())
        }
        RecordOutcomeError::Conflict(_) => ApiError::conflict("outcome_conflict", e.to_string()),
        RecordOutcomeError::Forbidden(_) => ApiError::forbidden(e.to_string()),
        RecordOutcomeError::Ledger(e) => e.into(),
    }
}

/// The kernel in-process, as the MCP front's interception asks it: the same
/// handlers as the HTTP API, for the caller's principal, answered as status
/// and JSON body (so that both transports read answers the same way).
#[derive(Clone)]
struct LocalGate {
    state: AppState,
    principal: Principal,
}

async fn answer(result: Result<Value, ApiError>) -> KernelAnswer {
    match result {
        Ok(v) => Ok((200, v)),
        Err(e) => {
            let response = e.into_response();
            let status = response.status().as_u16();
            let body = axum::body::to_bytes(response.into_body(), 1024 * 1024)
                .await
                .map_err(|e| e.to_string())?;
            Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
        }
    }
}

impl Gate for LocalGate {
    async fn submit(&self, request: Value) -> KernelAnswer {
        let result = super::api::submit_for(&self.state, &self.principal, request)
            .await
            .and_then(|r| serde_json::to_value(r).map_err(ApiError::internal));
        answer(result).await
    }

    async fn allowed(&self, actor: Option<String>) -> KernelAnswer {
        answer(allowed_for(&self.state, &self.principal, actor.as_deref())).await
    }

    async fn outcome(&self, outcome: Value) -> KernelAnswer {
        answer(record_outcome(&self.state, &self.principal, &outcome).await).await
    }
}

/// Header naming the actor of the calls (else the token's single actor).
pub const ACTOR_HEADER: &str = "kernels-actor";

/// `POST /mcp/{name}` (agent, operator): one MCP message to the upstream
/// `name`, `tools/call` decided first, `tools/list` filtered.
pub async fn mcp_post(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(e) = principal.require(&[Role::Agent, Role::Operator]) {
        return e.into_response();
    }
    let Some(prefix) = state.mcp().tool_prefix(&name).map(str::to_owned) else {
        return ApiError::Unknown {
            code: "unknown_mcp_server",
            message: format!("no MCP server '{name}' is configured (mcp.servers)"),
        }
        .into_response();
    };
    let actor = match headers.get(ACTOR_HEADER).map(|v| v.to_str()) {
        None => None,
        Some(Ok(a)) if !a.is_empty() => Some(a.to_owned()),
        Some(_) => {
            return ApiError::bad_request(
                "invalid_actor",
                "the Kernels-Actor header is not a name",
            )
            .into_response();
        }
    };
    let gate = LocalGate {
        state: state.clone(),
        principal,
    };
    let session = Arc::new(Session::new(
        Arc::new(gate),
        Settings {
            actor,
            tool_prefix: prefix,
            permit_file: None,
        },
    ));
    state.mcp().post(&name, session, &headers, body).await
}

/// `GET /mcp/{name}` (agent, operator): the upstream's server-to-client
/// stream; `DELETE /mcp/{name}`: ends an upstream session.
pub async fn mcp_pass(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = principal.require(&[Role::Agent, Role::Operator]) {
        return e.into_response();
    }
    if method == Method::DELETE {
        state.mcp().delete(&name, &headers).await
    } else {
        state.mcp().get(&name, &headers).await
    }
}
