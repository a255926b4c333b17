//! The cluster in the HTTP API (what it needs of this instance's
//! membership is [`super::ClusterControl`]): `POST /v1/cluster/leave`, and
//! the `cluster` field of `POST /v1/halt` and `POST /v1/recover` that
//! `kernels cluster halt|recover` send.
//!
//! A halt or recovery that names the cluster is recorded with the actor
//! `cluster:<id>` — the same actor as the member's own poller of the halt
//! flag uses — so that every cluster halt, however it arrived, is one the
//! cluster's recovery may undo, and no other: a recovery naming the
//! cluster is refused (409 `not_cluster_halt`) on a member its own
//! operator halted.

use axum::extract::State;
use axum::{Extension, Json};
use serde_json::Value;

use super::AppState;
use super::auth::Principal;
use super::body::{JsonBody, reason_of};
use super::error::ApiError;
use crate::cluster::ClusterError;
use crate::config::Role;
use crate::kernel::events::cluster_actor;

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> ApiError {
        match e {
            ClusterError::ControlPlane(e) => ApiError::Upstream {
                code: "control_plane_unreachable",
                message: format!("{e}; nothing was recorded"),
            },
            ClusterError::NotMember(m) => ApiError::conflict("not_a_member", m),
            ClusterError::Settings(m) => ApiError::bad_request("invalid_request", m),
            ClusterError::Ledger(e) => e.into(),
            ClusterError::NotWitness(m) => ApiError::forbidden(m),
            ClusterError::Cosignature(m) => ApiError::conflict("cosignature_refused", m),
            other => ApiError::conflict("cluster_conflict", other.to_string()),
        }
    }
}

/// The actor of a halt or recovery: `cluster:<id>` when the body names
/// this instance's cluster (`"cluster": "<id>"`), else the caller. A body
/// naming another cluster, or any cluster on a kernel without one, is a
/// 400 (`not_in_cluster`) and nothing is recorded.
pub(super) fn actor_of(
    state: &AppState,
    principal: &Principal,
    body: &Value,
) -> Result<String, ApiError> {
    let Some(named) = body.get("cluster") else {
        return Ok(principal.name.to_string());
    };
    let named = named.as_str().ok_or_else(|| {
        ApiError::bad_request(
            "invalid_request",
            "cluster must be the cluster id (a string)",
        )
    })?;
    match state.cluster() {
        Some(c) if c.cluster_id() == named => Ok(cluster_actor(named)),
        Some(c) => Err(ApiError::bad_request(
            "not_in_cluster",
            format!(
                "this kernel is a member of cluster {}, not {named}",
                c.cluster_id()
            ),
        )),
        None => Err(ApiError::bad_request(
            "not_in_cluster",
            format!("this kernel is not a member of cluster {named} (no cluster is configured)"),
        )),
    }
}

/// For a recovery by the cluster: refuses (409 `not_cluster_halt`) when
/// the kernel's halt is not the cluster's.
pub(super) fn check_cluster_recovery(state: &AppState, actor: &str) -> Result<(), ApiError> {
    if !actor.starts_with("cluster:") {
        return Ok(());
    }
    let s = state.ledger().state();
    match &s.last_halt {
        Some(halt) if s.is_halted() && halt.actor.as_str() != actor => Err(ApiError::conflict(
            "not_cluster_halt",
            format!(
                "the kernel was halted by {}, not by the cluster ({}): recover it on its own",
                halt.actor, halt.reason
            ),
        )),
        _ => Ok(()),
    }
}

/// `POST /v1/checkpoint/cosignatures`: a peer delivers its cosignature of
/// this instance's checkpoint (`{"witness_key": "<cosignature/v1 key>",
/// "checkpoint": "<the checkpoint with the cosignature>"}`). Only the
/// witness key of another member of the cluster is accepted (403), and
/// only a cosignature that verifies over one of the ledger's recent
/// checkpoints (409 `cosignature_refused`); the checkpoint is then served
/// with it.
#[utoipa::path(post, path = "/v1/checkpoint/cosignatures", request_body(content = super::openapi::Object), responses((status = 200, description = "{size, witness, signatures}"), (status = 400, body = super::error::ErrorBody), (status = 403, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn add_cosignature(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let field = |name: &str| {
        body.get(name).and_then(Value::as_str).ok_or_else(|| {
            ApiError::bad_request("invalid_request", format!("{name} (a string) is required"))
        })
    };
    let (witness_key, checkpoint) = (field("witness_key")?, field("checkpoint")?);
    let cluster = state.cluster().ok_or_else(|| {
        ApiError::conflict("not_a_member", "no cluster is configured for this kernel")
    })?;
    Ok(Json(cluster.add_cosignature(witness_key, checkpoint)?))
}

/// `POST /v1/cluster/leave`: take this instance out of its cluster —
/// remove its member object, then record `kernel.cluster_leave` (nothing
/// is recorded when the object cannot be removed).
#[utoipa::path(post, path = "/v1/cluster/leave", request_body(content = super::openapi::ReasonSchema), responses((status = 200, description = "{cluster_id, kernel_id, member_key, ledger_seq, entry_hash}"), (status = 409, body = super::error::ErrorBody), (status = 502, body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn leave(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    principal.require(&[Role::Operator])?;
    let reason = reason_of(&body, &["reason"])?;
    let cluster = state.cluster().ok_or_else(|| {
        ApiError::conflict("not_a_member", "no cluster is configured for this kernel")
    })?;
    Ok(Json(
        cluster.leave(principal.name.to_string(), reason).await?,
    ))
}
