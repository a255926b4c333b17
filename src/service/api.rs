//! The handlers: `/health`, `/ready`, `/metrics` and the `/v1/` API.
//!
//! Each handler checks its role, turns the call into a ledger operation and
//! answers JSON. Nothing is recorded for a call refused before a decision
//! (bad JSON, bad shape, failed validation, wrong role or actor, a halted
//! kernel); a DENY is a decision and a normal 200 answer.

use std::io::Write;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Principal;
use super::error::ApiError;
use crate::bundle::{BundleWriter, ExportHeader};
use crate::config::Role;
use crate::kernel::{Policy, RawRequest, Receipt};

const READERS: &[Role] = &[Role::Auditor, Role::Operator];
const SUBMITTERS: &[Role] = &[Role::Agent, Role::Operator];
const OPERATORS: &[Role] = &[Role::Operator];

/// A JSON request body: size-limited, UTF-8, valid JSON, numbers kept exact.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "the request body is larger than the configured limit",
                )
            } else {
                ApiError::bad_request("bad_body", rejection.body_text())
            }
        })?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| ApiError::bad_request("invalid_json", "the request body is not UTF-8"))?;
        let value = crate::canonical::parse(text).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("the request body is not valid JSON: {e}"),
            )
        })?;
        Ok(JsonBody(value))
    }
}

/// `GET /health`: the process is up.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "The process is alive")))]
pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /ready`: 200 only when the ledger is open, verified and accepting.
#[utoipa::path(get, path = "/ready", responses((status = 200, description = "Ready"), (status = 503, description = "Not ready")))]
pub async fn ready(State(state): State<AppState>) -> Response {
    if state.ledger().is_ready() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable"})),
        )
            .into_response()
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
    // Structurally invalid requests are client errors here: nothing is recorded.
    let validated = raw.validate(0).map_err(|invalid| {
        ApiError::bad_request(
            "invalid_request",
            format!("Validation failed: {}", invalid.errors.join("; ")),
        )
    })?;
    if validated.request_id == "HALT" || validated.request_id.starts_with("kernel.") {
        return Err(ApiError::bad_request(
            "invalid_request",
            "request ids \"HALT\" and \"kernel.*\" are reserved for operational events",
        ));
    }
    principal.may_act_as(&validated.actor)?;
    Ok(state.ledger().submit(&raw).await?)
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
    Ok(Json(value))
}

/// Query of `GET /v1/evidence`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EvidenceQuery {
    /// First seq (inclusive).
    pub from_seq: Option<u64>,
    /// Last seq (inclusive).
    pub to_seq: Option<u64>,
}

/// `GET /v1/evidence`: the evidence bundle, streamed.
#[utoipa::path(get, path = "/v1/evidence", params(EvidenceQuery), responses((status = 200, description = "An evidence bundle (streamed)")), security(("bearer" = [])))]
pub async fn evidence(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    query: Result<Query<EvidenceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    principal.require(READERS)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let ledger = state.ledger().clone();
    let len = ledger.durable_len();
    let from = q.from_seq.unwrap_or(0);
    let to = q
        .to_seq
        .map(|t| t.saturating_add(1))
        .unwrap_or(len)
        .min(len);
    if from > to {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("from_seq {from} is after the range end"),
        ));
    }
    let status = ledger.status();
    let anchor = ledger
        .entry_hash_at(from)
        .ok_or_else(|| ApiError::internal("cannot read the anchor entry"))?;
    let root = ledger
        .entry_hash_at(to)
        .ok_or_else(|| ApiError::internal("cannot read the last entry"))?;
    let now = crate::ledger::Clock::now_ms(&crate::ledger::SystemClock);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::task::spawn_blocking(move || {
        let mut sink = ChannelWriter {
            tx,
            buf: Vec::with_capacity(64 * 1024),
        };
        let header = ExportHeader {
            kernel_id: &status.kernel_id,
            variant: &status.variant,
            exported_at_ms: now,
            from_seq: (from > 0).then_some(from),
            anchor_hash: (from > 0).then_some(anchor.as_str()),
            root_hash: &root,
        };
        let result = (|| -> std::io::Result<()> {
            let mut w = BundleWriter::start(&mut sink, &header)?;
            for entry in ledger.entries(from, to) {
                let entry = entry.map_err(|e| std::io::Error::other(e.to_string()))?;
                w.entry(&entry)?;
            }
            w.finish()?;
            Ok(())
        })();
        if let Err(e) = result {
            tracing::error!(error = %e, "evidence export failed mid-stream");
            let _ = sink.tx.blocking_send(Err(e));
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Buffers writes into ~64 KiB chunks sent down a channel.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = Bytes::from(std::mem::replace(
                &mut self.buf,
                Vec::with_capacity(64 * 1024),
            ));
            self.tx.blocking_send(Ok(chunk)).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away")
            })?;
        }
        Ok(())
    }
}

/// Query of `GET /v1/entries`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EntriesQuery {
    /// First seq (default 0).
    pub from_seq: Option<u64>,
    /// Most entries to return (default 100, at most 1000).
    pub limit: Option<u64>,
    /// Only entries at or after this time (ms).
    pub from_ms: Option<u64>,
    /// Only entries at or before this time (ms).
    pub to_ms: Option<u64>,
}

/// `GET /v1/entries`: entries by seq range (and optionally time range).
#[utoipa::path(get, path = "/v1/entries", params(EntriesQuery), responses((status = 200, description = "{entries, next_seq}")), security(("bearer" = [])))]
pub async fn entries(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    query: Result<Query<EntriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    principal.require(READERS)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit must be between 1 and 1000",
        ));
    }
    let ledger = state.ledger().clone();
    let from = q.from_seq.unwrap_or(0);
    let (from_ms, to_ms) = (q.from_ms.unwrap_or(0), q.to_ms.unwrap_or(u64::MAX));
    let result = tokio::task::spawn_blocking(move || -> Result<Value, ApiError> {
        let len = ledger.durable_len();
        let mut out = Vec::new();
        let mut next = from;
        for entry in ledger.entries(from, len) {
            let entry = entry.map_err(ApiError::internal)?;
            next = entry.ledger_seq + 1;
            if entry.ts_ms > to_ms {
                next = len;
                break;
            }
            if entry.ts_ms >= from_ms {
                out.push(entry);
                if out.len() as u64 >= limit {
                    break;
                }
            }
        }
        Ok(json!({"entries": out, "next_seq": (next < len).then_some(next), "ledger_length": len}))
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(result))
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

/// `PUT /v1/policy`: replace the active policy (recorded as `kernel.policy_update`).
#[utoipa::path(put, path = "/v1/policy", request_body(content = super::openapi::PolicyUpdateSchema), responses((status = 200, description = "{version, hash, ledger_seq, entry_hash}"), (status = 400, body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn put_policy(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    principal.require(OPERATORS)?;
    let reason = reason_of(&body, &["policy", "reason"])?;
    let policy = Policy::from_json(body.get("policy").unwrap_or(&Value::Null))
        .map_err(|e| ApiError::bad_request("invalid_policy", e.to_string()))?;
    let entry = state
        .ledger()
        .update_policy(&principal.name, &policy, &reason)
        .await?;
    let s = state.ledger().state();
    Ok(Json(json!({
        "version": s.policy_version,
        "hash": s.policy_hash,
        "ledger_seq": entry.ledger_seq,
        "entry_hash": entry.entry_hash,
    })))
}

fn reason_of(body: &Value, allowed: &[&str]) -> Result<String, ApiError> {
    let obj = body.as_object().ok_or_else(|| {
        ApiError::bad_request("invalid_request", "expected a JSON object with a reason")
    })?;
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("unknown field '{k}'"),
        ));
    }
    obj.get("reason")
        .and_then(Value::as_str)
        .filter(|r| !r.trim().is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::bad_request("invalid_request", "a non-empty reason is required"))
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
    let reason = reason_of(&body, &["reason"])?;
    let (entry, root_before) = state.ledger().halt(&principal.name, &reason).await?;
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
    let reason = reason_of(&body, &["reason"])?;
    let entry = state.ledger().recover(&principal.name, &reason).await?;
    Ok(Json(json!({
        "ledger_seq": entry.ledger_seq,
        "entry_hash": entry.entry_hash,
        "session": state.ledger().state().session,
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

/// `POST /v1/rotations`: rotate now.
#[utoipa::path(post, path = "/v1/rotations", responses((status = 200, description = "The run's outcome"), (status = 409, body = super::error::ErrorBody), (status = 502, body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn rotate(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    principal.require(OPERATORS)?;
    let rotation = state.rotation().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "rotation_disabled",
            "rotation is off: no bucket is configured",
        )
    })?;
    rotation
        .rotate_now(principal.name.clone())
        .await
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "rotation_failed", e))
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
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// A known path with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}
