//! What every handler does first with a JSON body: [`JsonBody`] reads it
//! (size-limited, UTF-8, valid JSON with exact numbers), `fields_of`
//! refuses keys a call does not take, and `reason_of` finds the non-empty
//! `reason` that operational calls require. A leaf of the service: the
//! handlers in `api`, `agents` and `cluster` share it.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde_json::Value;

use super::error::ApiError;

/// A JSON request body: size-limited, UTF-8, valid JSON, numbers kept exact.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
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

/// The body as an object with only `allowed` keys.
pub(super) fn fields_of<'b>(
    body: &'b Value,
    allowed: &[&str],
) -> Result<&'b serde_json::Map<String, Value>, ApiError> {
    let obj = body.as_object().ok_or_else(|| {
        ApiError::bad_request("invalid_request", "expected a JSON object with a reason")
    })?;
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("unknown field '{k}'"),
        ));
    }
    Ok(obj)
}

pub(super) fn reason_of(body: &Value, allowed: &[&str]) -> Result<String, ApiError> {
    fields_of(body, allowed)?
        .get("reason")
        .and_then(Value::as_str)
        .filter(|r| !r.trim().is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::bad_request("invalid_request", "a non-empty reason is required"))
}
