//! The handlers: `/health`, `/ready`, `/metrics` and the `/v1/` API.
//!
//! Each handler checks its role, turns the call into a ledger operation and
//! answers JSON. Nothing is recorded for a call refused before a decision
//! (bad JSON, bad shape, failed validation, wrong role or actor, a halted
//! kernel); a DENY is a decision and a normal 200 answer.

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Principal;
use super::body::{JsonBody, fields_of, reason_of};
use super::error::ApiError;
use crate::config::Role;
use crate::kernel::{DenyReason, Policy, RawRequest, Receipt, Submission};
use crate::rotator::run::RunAnswer;

pub(super) const READERS: &[Role] = &[Role::Auditor, Role::Operator];
const SUBMITTERS: &[Role] = &[Role::Agent, Role::Operator];
const OPERATORS: &[Role] = &[Role::Operator];

/// `GET /health`: the process is up.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "The process is alive")))]
pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /ready`: 200 only when the ledger is open, verified and accepting.
#[utoipa::path(get, path = "/ready", responses((status = 200, description = "Ready"), (status = 503, description = "Not ready")))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if state.ledger().is_ready() {
        Ok(Json(json!({"status": "ready"})))
    } else {
        Err(ApiError::NotReady)
    }
}

/// `GET /metrics`: Prometheus text.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.ledger().metrics().render();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `POST /v1/requests`: submit a request; answers the receipt once durable.
#[utoipa::path(
    post, path = "/v1/requests",
    request_body(content = super::openapi::RequestSchema, description = "The agent's request"),
    responses(
        (status = 200, description = "The receipt (ALLOW or DENY)", body = super::openapi::ReceiptSchema),
        (status = 400, description = "Not a valid request; nothing recorded", body = super::error::ErrorBody),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 403, description = "Wrong role, or an actor the token may not use", body = super::error::ErrorBody),
        (status = 409, description = "Kernel halted, or request_id reused with other content", body = super::error::ErrorBody),
        (status = 413, description = "Body too large", body = super::error::ErrorBody),
        (status = 503, description = "The ledger cannot make decisions durable", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn submit(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody,
) -> Result<Json<Receipt>, ApiError> {
    submit_for(&state, &principal, body).await.map(Json)
}

/// Submits `body` for `principal` (the handler, and the MCP front in-process).
pub(crate) async fn submit_for(
    state: &AppState,
    principal: &Principal,
    body: Value,
) -> Result<Receipt, ApiError> {
    principal.require(SUBMITTERS)?;
    let raw = RawRequest::from_value(body)
        .map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))?;
    // Validated once, here; the decision reads the outcome. Over HTTP a
    // structurally invalid request is the client's mistake: nothing is
    // recorded (the kernel itself refuses reserved ids).
    let submission = Submission::new(&raw);
    let request = submission.checked().map_err(|invalid| {
        ApiError::bad_request(
            "invalid_request",
            DenyReason::Invalid.error(&invalid.errors.join("; ")),
        )
    })?;
    principal.may_act_as(&request.actor)?;
    Ok(state.ledger().submit(submission).await?)
}

/// `GET /v1/status`.
#[utoipa::path(get, path = "/v1/status", responses((status = 200, description = "Kernel status", body = super::openapi::StatusSchema)), security(("bearer" = [])))]
pub async fn status(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    principal.require(READERS)?;
    let status = state.ledger().status();
    let mut value = serde_json::to_value(&status).map_err(ApiError::internal)?;
    value["ready"] = json!(state.ledger().is_ready());
    value["rotation"] = state
        .rotation()
        .map(|r| r.status())
        .unwrap_or(json!({"enabled": false}));
    if let Some(cluster) = state.cluster() {
        value["cluster"] = cluster.status();
    }
    Ok(Json(value))
}

/// `GET /v1/policy`.
#[utoipa::path(get, path = "/v1/policy", responses((status = 200, description = "{policy, version, hash}")), security(("bearer" = [])))]
pub async fn get_policy(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    principal.require(READERS)?;
    let s = state.ledger().state();
    Ok(Json(json!({
        "policy": s.policy.as_ref().map(Policy::to_json),
        "version": s.policy_version,
        "hash": s.policy_hash,
    })))
}

/// Query of `PUT /v1/policy`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PolicyQuery {
    /// Only show what would change (nothing is recorded; `reason` optional).
    pub dry_run: Option<bool>,
}

/// `PUT /v1/policy`: replace the active policy (recorded as
/// `kernel.policy_update`). The answer is this call's own update — its
/// version and hash, and field by field what it changed (`changes`) and
/// which fields the document left to their defaults (`defaulted`).
#[utoipa::path(put, path = "/v1/policy", params(PolicyQuery), request_body(content = super::openapi::PolicyUpdateSchema), responses((status = 200, description = "{version, hash, previous_hash, ledger_seq, entry_hash, changes, defaulted}; with dry_run: {dry_run, version, hash, new_hash, changes, defaulted}"), (status = 400, body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn put_policy(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    query: Result<Query<PolicyQuery>, axum::extract::rejection::QueryRejection>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    principal.require(OPERATORS)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let dry_run = q.dry_run.unwrap_or(false);
    let fields = &["policy", "reason"];
    let reason = if dry_run {
        fields_of(&body, fields)?;
        None
    } else {
        Some(reason_of(&body, fields)?)
    };
    let doc = body.get("policy").unwrap_or(&Value::Null);
    let policy = Policy::from_json(doc)
        .map_err(|e| ApiError::bad_request("invalid_policy", e.to_string()))?;
    let defaulted = Policy::missing_fields(doc);
    let Some(reason) = reason else {
        let s = state.ledger().state();
        return Ok(Json(json!({
            "dry_run": true,
            "version": s.policy_version,
            "hash": s.policy_hash,
            "new_hash": policy.hash(),
            "changes": Policy::diff(s.policy.as_ref(), &policy),
            "defaulted": defaulted,
        })));
    };
    // The policy this update replaces, read under the same lock that
    // records it: concurrent updates each see their own predecessor.
    let mut replaced = None;
    let entry = state
        .ledger()
        .event(|s, now| {
            replaced = s.policy.clone();
            s.policy_update_event(
                now,
                &principal.name,
                &policy,
                &reason,
                crate::kernel::events::POLICY_FROM_API,
            )
        })
        .await?;
    let payload = entry.payload.as_ref().unwrap_or(&Value::Null);
    Ok(Json(json!({
        "version": payload["version"],
        "hash": policy.hash(),
        "previous_hash": payload["previous_policy_hash"],
        "ledger_seq": entry.ledger_seq,
        "entry_hash": entry.entry_hash,
        "changes": Policy::diff(replaced.as_ref(), &policy),
        "defaulted": defaulted,
    })))
}

/// `POST /v1/halt`: halt the kernel; answers the HALT receipt and the root
/// hash of the evidence just before the halt.
#[utoipa::path(post, path = "/v1/halt", request_body(content = super::openapi::ReasonSchema), responses((status = 200, description = "{receipt, root_hash_before_halt, ledger_length_before_halt}"), (status = 409, body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn halt(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    principal.require(OPERATORS)?;
    let reason = reason_of(&body, &["reason", "cluster"])?;
    let actor = super::cluster::actor_of(&state, &principal, &body)?;
    let (entry, root_before) = state.ledger().halt(&actor, &reason).await?;
    let receipt = Receipt::new(&entry, crate::kernel::Status::Accepted, None);
    Ok(Json(json!({
        "receipt": receipt,
        "root_hash_before_halt": root_before,
        "ledger_length_before_halt": entry.ledger_seq,
    })))
}

/// `POST /v1/recover`: start a new session after a halt.
#[utoipa::path(post, path = "/v1/recover", request_body(content = super::openapi::ReasonSchema), responses((status = 200, description = "{ledger_seq, entry_hash, session}"), (status = 409, body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn recover(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    principal.require(OPERATORS)?;
    let reason = reason_of(&body, &["reason", "cluster"])?;
    let actor = super::cluster::actor_of(&state, &principal, &body)?;
    super::cluster::check_cluster_recovery(&state, &actor)?;
    let entry = state.ledger().recover(&actor, &reason).await?;
    // This recovery's own session (not whatever is current by now).
    let session = entry
        .payload
        .as_ref()
        .and_then(|p| p.get("new_session"))
        .cloned()
        .unwrap_or(Value::Null);
    Ok(Json(json!({
        "ledger_seq": entry.ledger_seq,
        "entry_hash": entry.entry_hash,
        "session": session,
        "payload": entry.payload,
    })))
}

/// `POST /v1/preserve`: write an evidence bundle for an incident under the
/// data dir and record its hash as `kernel.preserve`.
#[utoipa::path(post, path = "/v1/preserve", request_body(content = super::openapi::PreserveSchema), responses((status = 200, description = "{path, bundle_sha256, root_hash, from_seq, to_seq, ledger_seq}")), security(("bearer" = [])))]
pub async fn preserve(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    principal.require(OPERATORS)?;
    let reason = reason_of(&body, &["reason", "incident", "from_seq", "to_seq"])?;
    let incident = body
        .get("incident")
        .and_then(Value::as_str)
        .unwrap_or("incident")
        .to_owned();
    if incident.is_empty()
        || incident.len() > 64
        || !incident
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ApiError::bad_request(
            "invalid_request",
            "incident must be 1-64 characters of A-Z a-z 0-9 - _",
        ));
    }
    let from = match body.get("from_seq") {
        None | Some(Value::Null) => 0,
        Some(v) => v.as_u64().ok_or_else(|| {
            ApiError::bad_request("invalid_request", "from_seq must be a non-negative integer")
        })?,
    };
    let to_incl = match body.get("to_seq") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            ApiError::bad_request("invalid_request", "to_seq must be a non-negative integer")
        })?),
    };
    let ledger = state.ledger().clone();
    let dir = state.settings().data_dir.join("preserved");
    let record = tokio::task::spawn_blocking(move || {
        crate::evidence::preserve(&ledger, &dir, &incident, from, to_incl)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| match e {
        crate::evidence::ExportError::Range(m) => ApiError::bad_request("invalid_request", m),
        other => ApiError::internal(other),
    })?;
    let mut record = record;
    // Off the box too, when there is an archive; the local copy is kept and
    // recorded whatever happens to the upload.
    if let Some(rotation) = state.rotation() {
        let path = std::path::PathBuf::from(record["path"].as_str().unwrap_or_default());
        let sha256 = record["bundle_sha256"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        record["archive"] = match rotation.upload_preserved(path, sha256).await {
            Ok(location) => location,
            Err(e) => {
                tracing::error!(error = %e, "preserved evidence not uploaded");
                json!({"error": e.to_string(), "code": e.code()})
            }
        };
    }
    let entry = state
        .ledger()
        .event(|s, now| s.preserve_event(now, &principal.name, &reason, record.clone()))
        .await?;
    let mut out = record;
    out["ledger_seq"] = json!(entry.ledger_seq);
    out["entry_hash"] = json!(entry.entry_hash);
    Ok(Json(out))
}

/// `GET /v1/rotations`: the rotator's state and history.
#[utoipa::path(get, path = "/v1/rotations", responses((status = 200, description = "Rotator state")), security(("bearer" = [])))]
pub async fn rotations(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    principal.require(READERS)?;
    match state.rotation() {
        Some(r) => Ok(Json(r.status())),
        None => Ok(Json(
            json!({"enabled": false, "reason": "no rotation bucket is configured"}),
        )),
    }
}

/// `POST /v1/rotations`: rotate now. The run belongs to the rotator's
/// worker: the answer is its outcome when it ends in time, else 202 with its
/// id (`GET /v1/rotations` shows it); a failed run is retried by the worker,
/// and its failure keeps its kind (see `ApiError`'s `From<RunFailure>`).
#[utoipa::path(post, path = "/v1/rotations", responses((status = 200, description = "The run's outcome"), (status = 202, description = "{run_id, running: true}: the run goes on in the rotator"), (status = 409, body = super::error::ErrorBody), (status = 502, body = super::error::ErrorBody), (status = 504, body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn rotate(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    principal.require(OPERATORS)?;
    let rotation = state.rotation().ok_or(ApiError::RotationDisabled)?;
    // Answer before the request's time limit; the run does not depend on it.
    let limit = state.settings().request_timeout;
    let wait = limit
        .saturating_sub(std::time::Duration::from_millis(250))
        .max(limit / 2);
    match rotation
        .rotate_now(principal.name.to_string(), wait)
        .await?
    {
        RunAnswer::Finished {
            run_id,
            mut outcome,
        } => {
            outcome["run_id"] = json!(run_id);
            Ok(Json(outcome).into_response())
        }
        RunAnswer::Running { run_id } => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"run_id": run_id, "running": true, "status": "/v1/rotations"})),
        )
            .into_response()),
    }
}

/// `POST /v1/verify`: verify the whole stored chain.
#[utoipa::path(post, path = "/v1/verify", responses((status = 200, description = "{valid, entries_verified, computed_root_hash, errors}")), security(("bearer" = [])))]
pub async fn verify(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    principal.require(READERS)?;
    let ledger = state.ledger().clone();
    let report = tokio::task::spawn_blocking(move || ledger.verify_stored())
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(
        serde_json::to_value(report).map_err(ApiError::internal)?,
    ))
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// A known path with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
