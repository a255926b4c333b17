//! Provable history over HTTP: the signed checkpoint, its verifier key, and
//! inclusion and consistency proofs (docs/proofs.md, docs/api.md).
//!
//! Any valid token may call these: they reveal only hashes. Every answer
//! is built from the ledger's durable tree ([`crate::ledger::Ledger`]'s
//! `checkpoint`, `inclusion_proof`, `consistency_proof`): a checkpoint
//! covers only acknowledged entries, and arguments past it are a 400,
//! never a 500.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use crate::ledger::TreeError;
use crate::proofs::{ConsistencyProof, InclusionProof};

impl From<TreeError> for ApiError {
    fn from(e: TreeError) -> ApiError {
        match e {
            TreeError::OutOfRange(message) => ApiError::bad_request("out_of_range", message),
            TreeError::NoSigningKey => ApiError::Unavailable {
                code: "signing_disabled",
                message: "no checkpoint signing key is configured".into(),
            },
            TreeError::Ledger(e) => e.into(),
            e @ TreeError::Store(_) => ApiError::internal(e),
        }
    }
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

/// `GET /v1/checkpoint`: the signed checkpoint of every acknowledged entry.
#[utoipa::path(get, path = "/v1/checkpoint", responses(
    (status = 200, description = "A C2SP tlog-checkpoint signed note covering every acknowledged entry", content_type = "text/plain", body = String,
     example = "kernels/prod-001\n42\nq3Vb3r0Cz2m1bQh2mD0uQ7H4Zq0GgC8yYg2xQm5cZ3k=\n\n— kernels/prod-001 OzUjTKk7…\n"),
    (status = 503, description = "`signing_disabled`: no signing key", body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn checkpoint(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(text(state.ledger().checkpoint().await?.to_string()))
}

/// `GET /v1/checkpoint/key`: the verifier key of the checkpoints.
#[utoipa::path(get, path = "/v1/checkpoint/key", responses(
    (status = 200, description = "The C2SP verifier key that signs the checkpoints", content_type = "text/plain", body = String,
     example = "kernels/prod-001+3b35234c+AWq0fY3nb0Tq8n5d2cT8rXzqK6O3JwqH1cT2j2z3xQm4"),
    (status = 503, description = "`signing_disabled`: no signing key", body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn checkpoint_key(State(state): State<AppState>) -> Result<Response, ApiError> {
    let key = state
        .ledger()
        .verifier_key()
        .ok_or(ApiError::from(TreeError::NoSigningKey))?;
    Ok(text(format!("{key}\n")))
}

/// Query of `GET /v1/proofs/inclusion`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct InclusionQuery {
    /// The entry's `ledger_seq`.
    pub seq: u64,
    /// The tree to prove against (default: every acknowledged entry).
    pub tree_size: Option<u64>,
}

/// `GET /v1/proofs/inclusion`: entry `seq` is in the signed tree of `tree_size`.
#[utoipa::path(get, path = "/v1/proofs/inclusion", params(InclusionQuery), responses(
    (status = 200, description = "An inclusion proof with the signed checkpoint of its tree size", body = super::openapi::Object,
     example = json!({"seq": 17, "tree_size": 42, "leaf_hash": "b1c4…", "proof": ["0e7d…", "9a52…"], "checkpoint": "kernels/prod-001\n42\n…\n\n— kernels/prod-001 …\n"})),
    (status = 400, description = "`out_of_range` or `invalid_query`", body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn inclusion(
    State(state): State<AppState>,
    q: Result<Query<InclusionQuery>, QueryRejection>,
) -> Result<Json<InclusionProof>, ApiError> {
    let q = query(q)?;
    Ok(Json(
        state.ledger().inclusion_proof(q.seq, q.tree_size).await?,
    ))
}

/// Query of `GET /v1/proofs/consistency`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    /// The older tree size (at least 1).
    pub from_size: u64,
    /// The newer tree size (default: every acknowledged entry).
    pub to_size: Option<u64>,
}

/// `GET /v1/proofs/consistency`: the tree of `from_size` is a prefix of the signed tree of `to_size`.
#[utoipa::path(get, path = "/v1/proofs/consistency", params(ConsistencyQuery), responses(
    (status = 200, description = "A consistency proof with the signed checkpoint of `to_size`", body = super::openapi::Object,
     example = json!({"from_size": 13, "to_size": 42, "proof": ["4be2…", "77c0…"], "checkpoint": "kernels/prod-001\n42\n…\n\n— kernels/prod-001 …\n"})),
    (status = 400, description = "`out_of_range` or `invalid_query`", body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn consistency(
    State(state): State<AppState>,
    q: Result<Query<ConsistencyQuery>, QueryRejection>,
) -> Result<Json<ConsistencyProof>, ApiError> {
    let q = query(q)?;
    Ok(Json(
        state
            .ledger()
            .consistency_proof(q.from_size, q.to_size)
            .await?,
    ))
}
