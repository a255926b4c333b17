//! API errors: [`ApiError`] says what went wrong, and its `IntoResponse` is
//! the one place in the service where an HTTP status is chosen.
//!
//! Every error answer is `{"error": "...", "code": "..."}` (a conflict about
//! a recorded decision also carries its `receipt`). Client mistakes (4xx) are
//! logged at info; server faults (5xx) are logged with their cause where the
//! error is made, and answered without it.

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use crate::kernel::{EventError, Refusal};
use crate::ledger::LedgerError;
use crate::rotator::run::{RotationError, RunFailure};

/// Why a call was not answered normally; each variant names its status.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the call is malformed or invalid; nothing was recorded.
    BadRequest {
        /// Stable machine-readable code.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// 401: no valid bearer token.
    Unauthorized,
    /// 403: the token's role or actors do not allow this call.
    Forbidden(String),
    /// 404: no such endpoint.
    NotFound,
    /// 404: the call names something that does not exist (a request id, an
    /// MCP server).
    Unknown {
        /// Stable machine-readable code.
        code: &'static str,
        /// What was not found.
        message: String,
    },
    /// 405: the endpoint does not take that method.
    MethodNotAllowed,
    /// 409 `halted`: the kernel is halted (the halt's reason).
    Halted(String),
    /// 409: the call conflicts with what is recorded or running.
    Conflict {
        /// Stable machine-readable code.
        code: &'static str,
        /// What conflicts.
        message: String,
        /// The recorded receipt the conflict is about, when there is one.
        receipt: Option<Value>,
    },
    /// 413: the body is (or says it is) larger than `limits.max_body_bytes`.
    PayloadTooLarge,
    /// 503 `not_ready`: the ledger cannot accept entries (`GET /ready`).
    NotReady,
    /// 503: the service cannot do this now; nothing was granted.
    Unavailable {
        /// Stable machine-readable code.
        code: &'static str,
        /// What is unavailable (safe to show).
        message: String,
    },
    /// 503 `timeout`: the call took longer than `limits.request_timeout`.
    Timeout {
        /// The limit.
        limit: Duration,
        /// Whether the call was a submission (whose retry is safe).
        submission: bool,
    },
    /// 409 `rotation_disabled`: no bucket is configured.
    RotationDisabled,
    /// 502: a service we depend on (the archive) failed.
    Upstream {
        /// Stable machine-readable code.
        code: &'static str,
        /// What failed (safe to show).
        message: String,
    },
    /// 504: a service we depend on did not answer in time.
    UpstreamTimeout {
        /// Stable machine-readable code.
        code: &'static str,
        /// What timed out.
        message: String,
    },
    /// 500: a fault of ours; the cause is logged, never sent.
    Internal,
    /// The MCP front refused a message or could not relay it: answered as
    /// the JSON-RPC error object `body` (what an MCP client reads), with
    /// the status of its kind.
    Mcp {
        /// Why.
        kind: McpRefusal,
        /// The JSON-RPC error message.
        body: Vec<u8>,
    },
}

/// Why the MCP front (`/mcp/{name}`) answered a JSON-RPC error itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McpRefusal {
    /// 400: not one JSON-RPC message, or headers that do not match it.
    BadMessage,
    /// 403: an `Origin` that may not call the front.
    Origin,
    /// 404: no MCP server of that name is configured.
    UnknownServer,
    /// 502: the upstream MCP server is unreachable or its answer unreadable.
    Upstream,
}

/// The JSON body of an error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// Stable machine-readable code.
    pub code: String,
    /// The recorded receipt a conflict is about (only then).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub receipt: Option<Value>,
    /// `unavailable` (only on `GET /ready`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl ApiError {
    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::Forbidden(message.into())
    }

    /// 409 with `code`.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Conflict {
            code,
            message: message.into(),
            receipt: None,
        }
    }

    /// 500; logs `cause` (the client sees only that it was internal).
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "internal error");
        ApiError::Internal
    }

    /// The status, code, message and receipt of the answer.
    fn parts(self) -> (StatusCode, &'static str, String, Option<Value>) {
        use StatusCode as S;
        match self {
            ApiError::BadRequest { code, message } => (S::BAD_REQUEST, code, message, None),
            ApiError::Unauthorized => (
                S::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required".into(),
                None,
            ),
            ApiError::Forbidden(message) => (S::FORBIDDEN, "forbidden", message, None),
            ApiError::NotFound => (S::NOT_FOUND, "not_found", "no such endpoint".into(), None),
            ApiError::Unknown { code, message } => (S::NOT_FOUND, code, message, None),
            ApiError::MethodNotAllowed => (
                S::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method".into(),
                None,
            ),
            ApiError::Halted(reason) => (
                S::CONFLICT,
                "halted",
                format!("the kernel is halted ({reason}); only an operator's recovery reopens it"),
                None,
            ),
            ApiError::Conflict {
                code,
                message,
                receipt,
            } => (S::CONFLICT, code, message, receipt),
            ApiError::PayloadTooLarge => (
                S::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than the configured limit".into(),
                None,
            ),
            ApiError::NotReady => (
                S::SERVICE_UNAVAILABLE,
                "not_ready",
                "the ledger cannot accept entries".into(),
                None,
            ),
            ApiError::Unavailable { code, message } => {
                (S::SERVICE_UNAVAILABLE, code, message, None)
            }
            ApiError::Timeout { limit, submission } => {
                let hint = if submission {
                    "; a retry with the same request_id returns the recorded receipt"
                } else {
                    ""
                };
                (
                    S::SERVICE_UNAVAILABLE,
                    "timeout",
                    format!("the request took longer than {limit:?}{hint}"),
                    None,
                )
            }
            ApiError::RotationDisabled => (
                S::CONFLICT,
                "rotation_disabled",
                "rotation is off: no bucket is configured".into(),
                None,
            ),
            ApiError::Upstream { code, message } => (S::BAD_GATEWAY, code, message, None),
            ApiError::UpstreamTimeout { code, message } => {
                (S::GATEWAY_TIMEOUT, code, message, None)
            }
            ApiError::Internal => (
                S::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; see the service log".into(),
                None,
            ),
            // (`into_response` sends the JSON-RPC body itself.)
            ApiError::Mcp { kind, body } => (
                kind.status(),
                "mcp_refused",
                String::from_utf8_lossy(&body).into_owned(),
                None,
            ),
        }
    }
}

impl McpRefusal {
    fn status(self) -> StatusCode {
        match self {
            McpRefusal::BadMessage => StatusCode::BAD_REQUEST,
            McpRefusal::Origin => StatusCode::FORBIDDEN,
            McpRefusal::UnknownServer => StatusCode::NOT_FOUND,
            McpRefusal::Upstream => StatusCode::BAD_GATEWAY,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Mcp { kind, body } = self {
            let status = kind.status();
            tracing::info!(status = status.as_u16(), refusal = ?kind, "MCP message refused");
            return (
                status,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response();
        }
        let ready_probe = matches!(self, ApiError::NotReady);
        let (status, code, message, receipt) = self.parts();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), code, "request failed");
        } else {
            tracing::info!(status = status.as_u16(), code, error = %message, "request refused");
        }
        let body = ErrorBody {
            error: message,
            code: code.to_owned(),
            receipt,
            status: ready_probe.then(|| "unavailable".to_owned()),
        };
        (status, Json(body)).into_response()
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> ApiError {
        match refusal {
            Refusal::Halted(reason) => ApiError::Halted(reason),
            Refusal::NotInitialised => ApiError::Unavailable {
                code: "not_ready",
                message: "the kernel is not initialised".into(),
            },
            e @ Refusal::ReservedId(_) => ApiError::bad_request("invalid_request", e.to_string()),
            Refusal::IllegalTransition(e) => ApiError::internal(e),
        }
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> ApiError {
        match e {
            LedgerError::Refused(refusal) => refusal.into(),
            LedgerError::Event(EventError::AlreadyHalted) => {
                ApiError::conflict("already_halted", "the kernel is already halted")
            }
            LedgerError::Event(EventError::NotHalted) => {
                ApiError::conflict("not_halted", "the kernel is not halted")
            }
            LedgerError::Event(e @ (EventError::Empty(_) | EventError::Unhashable(_))) => {
                ApiError::bad_request("invalid_request", e.to_string())
            }
            LedgerError::Event(e) => ApiError::conflict("conflict", e.to_string()),
            LedgerError::Conflict(id) => ApiError::conflict(
                "request_id_conflict",
                format!("request_id {id:?} was already used for a different request"),
            ),
            e @ LedgerError::DecidedInEarlierSession(_) => {
                let message = e.to_string();
                let LedgerError::DecidedInEarlierSession(receipt) = e else {
                    unreachable!("matched above")
                };
                ApiError::Conflict {
                    code: "decided_in_earlier_session",
                    message,
                    receipt: serde_json::to_value(*receipt).ok(),
                }
            }
            LedgerError::Unavailable(reason) => {
                tracing::error!(%reason, "ledger unavailable");
                ApiError::Unavailable {
                    code: "unavailable",
                    message: "the ledger cannot make decisions durable right now; this call was not granted".into(),
                }
            }
            other => ApiError::internal(other),
        }
    }
}

/// A rotation asked for over HTTP that failed: its kind, not just its text,
/// chooses the status. The message names the run and when it is retried.
impl From<RunFailure> for ApiError {
    fn from(failure: RunFailure) -> ApiError {
        let message = match failure.retry_at_ms {
            Some(at) => format!("{failure}; the rotator retries at {at} ms"),
            None => failure.to_string(),
        };
        match &*failure.error {
            RotationError::Ledger(e) => ledger_error(e, message),
            RotationError::TimedOut(_) => ApiError::UpstreamTimeout {
                code: "rotation_timeout",
                message,
            },
            RotationError::Internal(cause) => ApiError::internal(cause),
            // The archive failed, refused, or is not as recorded (the
            // rotator's own code is in the message).
            RotationError::Objects(_)
            | RotationError::Check(_)
            | RotationError::Export(_)
            | RotationError::ArchiveHead(_) => ApiError::Upstream {
                code: "rotation_failed",
                message,
            },
        }
    }
}

/// A ledger error met while recording a rotation: answered like any ledger
/// error, but with the run's message where that one is safe to show.
fn ledger_error(e: &LedgerError, message: String) -> ApiError {
    match e {
        LedgerError::Refused(Refusal::Halted(reason)) => ApiError::Halted(reason.clone()),
        LedgerError::Unavailable(_) => ApiError::Unavailable {
            code: "unavailable",
            message: "the ledger cannot record the rotation right now; the rotator retries".into(),
        },
        LedgerError::Event(e) => ApiError::conflict("conflict", format!("{message} ({e})")),
        other => ApiError::internal(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(error: RotationError) -> ApiError {
        RunFailure {
            run_id: "run-1".into(),
            error: std::sync::Arc::new(error),
            retry_at_ms: Some(5),
        }
        .into()
    }

    async fn answer(e: ApiError) -> (u16, Value) {
        let response = e.into_response();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn every_kind_has_its_status_and_a_code() {
        let cases = [
            (
                ApiError::bad_request("invalid_request", "x"),
                400,
                "invalid_request",
            ),
            (ApiError::Unauthorized, 401, "unauthorized"),
            (ApiError::forbidden("no"), 403, "forbidden"),
            (ApiError::NotFound, 404, "not_found"),
            (
                ApiError::Unknown {
                    code: "unknown_request",
                    message: "x".into(),
                },
                404,
                "unknown_request",
            ),
            (ApiError::MethodNotAllowed, 405, "method_not_allowed"),
            (ApiError::Halted("r".into()), 409, "halted"),
            (
                ApiError::conflict("request_id_conflict", "x"),
                409,
                "request_id_conflict",
            ),
            (ApiError::PayloadTooLarge, 413, "body_too_large"),
            (ApiError::NotReady, 503, "not_ready"),
            (
                ApiError::Timeout {
                    limit: Duration::from_secs(1),
                    submission: true,
                },
                503,
                "timeout",
            ),
            (ApiError::Internal, 500, "internal"),
            (ApiError::RotationDisabled, 409, "rotation_disabled"),
            (
                failure(RotationError::Check("differs".into())),
                502,
                "rotation_failed",
            ),
            (
                failure(RotationError::TimedOut(Duration::from_secs(600))),
                504,
                "rotation_timeout",
            ),
            (
                failure(RotationError::Internal("bug".into())),
                500,
                "internal",
            ),
            (
                failure(RotationError::Ledger(LedgerError::Unavailable(
                    "disk".into(),
                ))),
                503,
                "unavailable",
            ),
            (
                LedgerError::Unavailable("disk".into()).into(),
                503,
                "unavailable",
            ),
            (
                Refusal::ReservedId("HALT".into()).into(),
                400,
                "invalid_request",
            ),
            (Refusal::NotInitialised.into(), 503, "not_ready"),
        ];
        for (error, status, code) in cases {
            let (got, body) = answer(error).await;
            assert_eq!((got, body["code"].as_str()), (status, Some(code)), "{body}");
            assert!(body["error"].is_string(), "{body}");
        }
    }

    #[tokio::test]
    async fn server_errors_do_not_leak_their_cause() {
        let (status, body) =
            answer(LedgerError::Mismatch("secret path /var/x".into()).into()).await;
        assert_eq!(status, 500);
        assert!(!body.to_string().contains("secret"), "{body}");
        let (status, body) = answer(LedgerError::Unavailable("/dev/sda1 died".into()).into()).await;
        assert_eq!(status, 503);
        assert!(!body.to_string().contains("sda1"), "{body}");
    }

    #[tokio::test]
    async fn an_mcp_refusal_is_its_json_rpc_error_with_the_status_of_its_kind() {
        let body = serde_json::json!({"jsonrpc": "2.0", "id": 7, "error": {"code": -32600, "message": "no"}});
        for (kind, status) in [
            (McpRefusal::BadMessage, 400),
            (McpRefusal::Origin, 403),
            (McpRefusal::UnknownServer, 404),
            (McpRefusal::Upstream, 502),
        ] {
            let (got, answer) = answer(ApiError::Mcp {
                kind,
                body: serde_json::to_vec(&body).unwrap(),
            })
            .await;
            assert_eq!((got, &answer), (status, &body));
        }
    }

    #[tokio::test]
    async fn a_conflict_may_carry_its_receipt() {
        let (status, body) = answer(ApiError::Conflict {
            code: "decided_in_earlier_session",
            message: "x".into(),
            receipt: Some(serde_json::json!({"ledger_seq": 3})),
        })
        .await;
        assert_eq!(status, 409);
        assert_eq!(body["receipt"]["ledger_seq"], 3);
        let (_, body) = answer(ApiError::NotReady).await;
        assert_eq!(body["status"], "unavailable");
        assert!(body.get("receipt").is_none());
    }
}
