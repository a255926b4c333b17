//! The kernel as the MCP interception sees it: three calls of the service's
//! API, answered as an HTTP status and a JSON body.
//!
//! The stdio proxy reaches the service over HTTP ([`HttpGate`], through the
//! same [`ApiClient`] the CLI uses); the MCP front inside `kernels serve`
//! calls the same handlers in-process. Either way the answer has the same
//! shape, so one module ([`super::intercept`]) reads it, and the two
//! transports cannot disagree about what an answer means.

use std::future::Future;
use std::time::Duration;

use serde_json::Value;

use crate::api_client::{ApiClient, ApiClientError};

/// The service's answer (status and body), or why there is none.
pub type KernelAnswer = Result<(u16, Value), String>;

/// The kernel's API, as the interception uses it.
pub trait Gate: Send + Sync + 'static {
    /// `POST /v1/requests` with `request`.
    fn submit(&self, request: Value) -> impl Future<Output = KernelAnswer> + Send;
    /// `GET /v1/policy/allowed[?actor=A]`.
    fn allowed(&self, actor: Option<String>) -> impl Future<Output = KernelAnswer> + Send;
    /// `POST /v1/outcomes` with `outcome`.
    fn outcome(&self, outcome: Value) -> impl Future<Output = KernelAnswer> + Send;
}

/// The service over HTTP (the stdio proxy's gate).
#[derive(Debug, Clone)]
pub struct HttpGate {
    client: ApiClient,
    /// Retries of a call that got no answer at all (the call is idempotent:
    /// a submission is retried with the same `request_id`).
    retries: u32,
}

impl HttpGate {
    /// A gate to the service at `server`, with `token`; one call may take `timeout`.
    pub fn new(
        server: &str,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<HttpGate, ApiClientError> {
        let client = ApiClient::new(server, token, timeout, timeout.min(Duration::from_secs(5)))?;
        Ok(HttpGate { client, retries: 1 })
    }

    /// The service's base URL.
    pub fn base(&self) -> &str {
        self.client.base()
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> KernelAnswer {
        let mut attempt = 0;
        loop {
            match self.client.call(method.clone(), path, body.as_ref()).await {
                Ok(answer) => return Ok(answer),
                Err(e) if attempt >= self.retries => return Err(e.to_string()),
                Err(e) => {
                    tracing::warn!(error = %e, path, "no answer from the kernel; retrying once");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

impl Gate for HttpGate {
    async fn submit(&self, request: Value) -> KernelAnswer {
        self.call(reqwest::Method::POST, "/v1/requests", Some(request))
            .await
    }

    async fn allowed(&self, actor: Option<String>) -> KernelAnswer {
        let path = match actor {
            Some(a) => format!("/v1/policy/allowed?actor={}", percent_encode(&a)),
            None => "/v1/policy/allowed".to_owned(),
        };
        self.call(reqwest::Method::GET, &path, None).await
    }

    async fn outcome(&self, outcome: Value) -> KernelAnswer {
        self.call(reqwest::Method::POST, "/v1/outcomes", Some(outcome))
            .await
    }
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved bytes).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(percent_encode("agent-001"), "agent-001");
        assert_eq!(percent_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
