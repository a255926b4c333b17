//! A small client for the service's own HTTP API, shared by the CLI's
//! service commands (`kernels status`, `halt`, …) and `kernels mcp-proxy`.
//!
//! It sends JSON with the bearer token and answers the status with the body
//! parsed as JSON (or as a JSON string when it is not JSON). It never
//! interprets an answer: what a status means is the caller's business. A
//! transport failure is reported as [`ApiClientError::Unreachable`], which
//! says nothing about whether the service acted on the call (a submission
//! may have been decided; retrying with the same `request_id` is safe).

use std::time::Duration;

use crate::error_text;
use serde_json::Value;

/// Why a call got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiClientError {
    /// The HTTP client could not be built (TLS set-up): the command cannot run.
    #[error("cannot build an HTTP client: {0}")]
    Build(String),
    /// No answer: connection refused or lost, timeout, unreadable body.
    /// Callers fail closed.
    #[error("cannot reach {base}: {message}")]
    Unreachable {
        /// The service's base URL.
        base: String,
        /// What went wrong.
        message: String,
    },
}

/// A client for one service.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl ApiClient {
    /// A client for the service at `base` (e.g. `http://127.0.0.1:8080`),
    /// sending `token` as the bearer token; each call may take `timeout`.
    pub fn new(
        base: &str,
        token: Option<String>,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<ApiClient, ApiClientError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .build()
            .map_err(|e| ApiClientError::Build(e.to_string()))?;
        Ok(ApiClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.filter(|t| !t.is_empty()),
        })
    }

    /// The token from `KERNELS_TOKEN`, if set and not empty.
    pub fn token_from_env() -> Option<String> {
        std::env::var("KERNELS_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
    }

    /// The service's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `method base+path` (with `body` as JSON) and answers the status
    /// and the body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ApiClientError> {
        let req = self.http.request(method, format!("{}{path}", self.base));
        self.send(req, body).await
    }

    /// Sends `GET base+path?query` and answers the status and the body.
    pub async fn get_query(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<(u16, Value), ApiClientError> {
        let req = self.http.get(format!("{}{path}", self.base)).query(query);
        self.send(req, None).await
    }

    async fn send(
        &self,
        mut req: reqwest::RequestBuilder,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ApiClientError> {
        let unreachable = |message: String| ApiClientError::Unreachable {
            base: self.base.clone(),
            message,
        };
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| unreachable(error_text::chain(&e)))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| unreachable(format!("reading the answer: {}", error_text::chain(&e))))?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }
}
