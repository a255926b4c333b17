//! API errors: the one place where an error becomes an HTTP status.
//!
//! Every error answer is `{"error": "...", "code": "..."}`. Client mistakes
//! (4xx) are logged at info; server faults (5xx) are logged with their cause
//! and answered without it.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::kernel::{EventError, Refusal};
use crate::ledger::LedgerError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human text (safe to show the client).
    pub message: String,
    /// The old receipt, for `decided_in_earlier_session`.
    pub receipt: Option<serde_json::Value>,
}

/// The JSON body of an error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// Stable machine-readable code.
    pub code: String,
    /// The receipt of the earlier decision (`decided_in_earlier_session` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<serde_json::Value>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            receipt: None,
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401.
    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 500 without details for the client (the cause is logged).
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the service log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(
                status = self.status.as_u16(),
                code = self.code,
                "request failed"
            );
        } else {
            tracing::info!(status = self.status.as_u16(), code = self.code, error = %self.message, "request refused");
        }
        let body = ErrorBody {
            error: self.message,
            code: self.code.to_owned(),
            receipt: self.receipt,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> ApiError {
        match e {
            LedgerError::Refused(Refusal::Halted(reason)) => ApiError::new(
                StatusCode::CONFLICT,
                "halted",
                format!("the kernel is halted ({reason}); only an operator's recovery reopens it"),
            ),
            LedgerError::Refused(Refusal::NotInitialised) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the kernel is not initialised",
            ),
            LedgerError::Event(EventError::AlreadyHalted) => ApiError::new(
                StatusCode::CONFLICT,
                "already_halted",
                "the kernel is already halted",
            ),
            LedgerError::Event(EventError::NotHalted) => ApiError::new(
                StatusCode::CONFLICT,
                "not_halted",
                "the kernel is not halted",
            ),
            LedgerError::Event(e @ (EventError::Empty(_) | EventError::Unhashable(_))) => {
                ApiError::bad_request("invalid_request", e.to_string())
            }
            LedgerError::Event(e) => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            LedgerError::Conflict(id) => ApiError::new(
                StatusCode::CONFLICT,
                "request_id_conflict",
                format!("request_id {id:?} was already used for a different request"),
            ),
            e @ LedgerError::DecidedInEarlierSession(_) => {
                let message = e.to_string();
                let LedgerError::DecidedInEarlierSession(receipt) = e else {
                    unreachable!("matched above")
                };
                ApiError {
                    receipt: serde_json::to_value(*receipt).ok(),
                    ..ApiError::new(StatusCode::CONFLICT, "decided_in_earlier_session", message)
                }
            }
            LedgerError::Unavailable(reason) => {
                tracing::error!(%reason, "ledger unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the ledger cannot make decisions durable right now; this call was not granted",
                )
            }
            other => ApiError::internal(other),
        }
    }
}
