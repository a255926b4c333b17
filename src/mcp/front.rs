//! The Streamable HTTP transport: `kernels serve` in front of configured
//! upstream MCP servers at `/mcp/{name}`, with the interception of the stdio
//! proxy.
//!
//! A POST carries one JSON-RPC message. Its headers must match its body
//! ([`super::headers`]). A `tools/call` is decided first and forwarded only
//! on ALLOW; a `tools/list` is forwarded once the allowed tools are known and
//! its answer filtered; everything else is forwarded as received. The
//! upstream's answer (one JSON object or an SSE stream) comes back as it is,
//! except the response to an intercepted request, which is filtered (a list)
//! or watched for its outcome (a call). `Mcp-Session-Id`, `MCP-Protocol-Version`,
//! `Mcp-Method`, `Mcp-Name` and `Mcp-Param-*` pass both ways; the caller's
//! `Authorization` (the kernel's token) never reaches the upstream. GET (the
//! server's stream of the 2025-11-25 revision) and DELETE (ending a session)
//! are relayed; responses on a GET stream are dropped and `Last-Event-ID` is
//! not forwarded, so no answer can reach the client around the interception.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::Value;

use super::gate::Gate;
use super::headers::{self, HEADER_MISMATCH};
use super::intercept::{self, Allowed, Outcome, UPSTREAM_UNAVAILABLE};
use super::message::{self, Kind, Message};
use super::session::{CallDecision, Session};
use super::sse::{self, Splitter};
use crate::config::McpConfig;
use crate::service::error::{ApiError, McpRefusal};

/// Largest JSON (non-stream) answer read from an upstream for interception.
const MAX_JSON_ANSWER: usize = 64 * 1024 * 1024;

/// Request headers forwarded to the upstream (besides `Mcp-Param-*`).
const FORWARDED: [&str; 10] = [
    "content-type",
    "accept",
    "mcp-protocol-version",
    "mcp-session-id",
    "mcp-method",
    "mcp-name",
    "traceparent",
    "tracestate",
    "baggage",
    "user-agent",
];

/// Response headers relayed to the client.
const RELAYED: [&str; 4] = [
    "content-type",
    "mcp-session-id",
    "mcp-protocol-version",
    "cache-control",
];

/// The configured upstreams and the HTTP client that reaches them.
#[derive(Debug, Clone)]
pub struct McpFront {
    servers: BTreeMap<String, Upstream>,
    http: reqwest::Client,
    /// How long an upstream may take to start answering.
    pub timeout: Duration,
    allowed_origins: Vec<String>,
}

#[derive(Debug, Clone)]
struct Upstream {
    url: String,
    tool_prefix: String,
}

impl Default for McpFront {
    fn default() -> Self {
        McpFront::new(&McpConfig::default()).expect("an HTTP client builds")
    }
}

impl McpFront {
    /// The front for `config`.
    pub fn new(config: &McpConfig) -> Result<McpFront, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("cannot build the MCP front's HTTP client: {e}"))?;
        Ok(McpFront {
            servers: config
                .servers
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        Upstream {
                            url: s.url.clone(),
                            tool_prefix: s.tool_prefix.clone(),
                        },
                    )
                })
                .collect(),
            http,
            timeout: config.timeout,
            allowed_origins: config.allowed_origins.clone(),
        })
    }

    /// The tool prefix of the server `name`, or `None` when there is no such server.
    pub fn tool_prefix(&self, name: &str) -> Option<&str> {
        self.servers.get(name).map(|u| u.tool_prefix.as_str())
    }

    /// 403 when the request carries an `Origin` that is not allowed (DNS
    /// rebinding protection, as the transport requires).
    fn origin_refused(&self, headers: &HeaderMap) -> Option<Response> {
        let origin = headers.get(header::ORIGIN)?;
        let allowed = origin
            .to_str()
            .is_ok_and(|o| self.allowed_origins.iter().any(|a| a == o));
        (!allowed).then(|| {
            jsonrpc_error(
                McpRefusal::Origin,
                None,
                message::INVALID_REQUEST,
                "Forbidden: this Origin may not call the MCP front",
            )
        })
    }

    fn upstream_request(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &HeaderMap,
    ) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, url);
        for (name, value) in headers {
            let n = name.as_str();
            if FORWARDED.contains(&n) || n.starts_with("mcp-param-") {
                req = req.header(name, value);
            }
        }
        req
    }

    /// `POST /mcp/{name}` with `body`, deciding through `session`.
    pub async fn post<G: Gate>(
        &self,
        name: &str,
        session: Arc<Session<G>>,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Response {
        if let Some(refused) = self.origin_refused(headers) {
            return refused;
        }
        let Some(upstream) = self.servers.get(name) else {
            return jsonrpc_error(
                McpRefusal::UnknownServer,
                None,
                message::INVALID_REQUEST,
                "no such MCP server",
            );
        };
        let msg = match Message::parse(&body) {
            Ok(m) => m,
            Err(e) => {
                return jsonrpc_error(McpRefusal::BadMessage, e.id.as_ref(), e.code, &e.message);
            }
        };
        if let Err(text) = headers::check(headers, &msg) {
            let id = match &msg.kind {
                Kind::Request { id, .. } | Kind::Response { id } => Some(id),
                Kind::Notification { .. } => None,
            };
            return jsonrpc_error(McpRefusal::BadMessage, id, HEADER_MISMATCH, &text);
        }
        let watch = match &msg.kind {
            Kind::Request { id, method } if method == "tools/call" => {
                match session.decide_call(id, msg.params()).await {
                    CallDecision::Answer(answer) => return json_answer(answer),
                    CallDecision::Forward { request_id } => Watch::Call {
                        id: id.clone(),
                        request_id,
                    },
                }
            }
            Kind::Request { id, method } if method == "tools/list" => {
                match session.allowed().await {
                    Ok(allowed) => Watch::List {
                        id: id.clone(),
                        allowed,
                    },
                    Err(r) => {
                        return json_answer(message::error_response(
                            Some(id),
                            r.code,
                            &r.message,
                            Some(r.data),
                        ));
                    }
                }
            }
            Kind::Notification { method } if method == "tools/call" => {
                return jsonrpc_error(
                    McpRefusal::BadMessage,
                    None,
                    message::INVALID_REQUEST,
                    "Invalid Request: a tools/call needs an id",
                );
            }
            _ => Watch::Nothing,
        };
        let mut guard = OutcomeGuard::new(session.clone(), &watch);
        let sent = self
            .upstream_request(reqwest::Method::POST, &upstream.url, headers)
            .body(body)
            .send()
            .await;
        let upstream_response = match sent {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(server = name, error = %e, "the upstream MCP server is unreachable");
                guard.finish(Outcome::failed(
                    "not forwarded: the upstream MCP server is unreachable",
                ));
                let text = format!("kernels: the upstream MCP server '{name}' is unreachable");
                return match watch.id() {
                    Some(id) => json_answer(message::error_response(
                        Some(id),
                        UPSTREAM_UNAVAILABLE,
                        &text,
                        None,
                    )),
                    None => jsonrpc_error(McpRefusal::Upstream, None, UPSTREAM_UNAVAILABLE, &text),
                };
            }
        };
        relay(
            upstream_response,
            watch,
            guard,
            session.tool_prefix().to_owned(),
        )
        .await
    }

    /// `GET /mcp/{name}`: the upstream's stream for server-initiated
    /// messages (2025-11-25), without the responses it must not carry.
    pub async fn get(&self, name: &str, headers: &HeaderMap) -> Response {
        match self.pass(reqwest::Method::GET, name, headers).await {
            Ok(r) => {
                let mut splitter = Splitter::default();
                let (status, response_headers) = relayed_head(&r);
                let stream = r.bytes_stream().map(move |chunk| {
                    chunk.map(|bytes| {
                        let kept: Vec<u8> = splitter
                            .push(&bytes)
                            .into_iter()
                            .filter(|e| !is_response(e))
                            .flat_map(|e| e.raw)
                            .collect();
                        Bytes::from(kept)
                    })
                });
                response(status, response_headers, Body::from_stream(stream))
            }
            Err(refused) => refused,
        }
    }

    /// `DELETE /mcp/{name}`: ends the upstream session.
    pub async fn delete(&self, name: &str, headers: &HeaderMap) -> Response {
        match self.pass(reqwest::Method::DELETE, name, headers).await {
            Ok(r) => {
                let (status, response_headers) = relayed_head(&r);
                let body = r.bytes().await.unwrap_or_default();
                response(status, response_headers, Body::from(body))
            }
            Err(refused) => refused,
        }
    }

    /// Sends a body-less `method` to the upstream `name` (a GET or DELETE
    /// relayed as it is); the answer, or the front's refusal.
    async fn pass(
        &self,
        method: reqwest::Method,
        name: &str,
        headers: &HeaderMap,
    ) -> Result<reqwest::Response, Response> {
        if let Some(refused) = self.origin_refused(headers) {
            return Err(refused);
        }
        let Some(upstream) = self.servers.get(name) else {
            return Err(jsonrpc_error(
                McpRefusal::UnknownServer,
                None,
                message::INVALID_REQUEST,
                "no such MCP server",
            ));
        };
        self.upstream_request(method, &upstream.url, headers)
            .send()
            .await
            .map_err(|_| {
                jsonrpc_error(
                    McpRefusal::Upstream,
                    None,
                    UPSTREAM_UNAVAILABLE,
                    "the upstream MCP server is unreachable",
                )
            })
    }
}

/// What to look for in the upstream's answer.
enum Watch {
    /// The response to a forwarded call: its outcome.
    Call { id: Value, request_id: String },
    /// The response to a list: filter it.
    List { id: Value, allowed: Allowed },
    /// Nothing: relay the answer as it comes.
    Nothing,
}

impl Watch {
    fn id(&self) -> Option<&Value> {
        match self {
            Watch::Call { id, .. } | Watch::List { id, .. } => Some(id),
            Watch::Nothing => None,
        }
    }
}

/// Records the outcome of a forwarded call exactly once: from its response,
/// or, if the answer ends (or the client goes away) before one, as failed.
struct OutcomeGuard<G: Gate> {
    session: Arc<Session<G>>,
    request_id: Option<String>,
}

impl<G: Gate> OutcomeGuard<G> {
    fn new(session: Arc<Session<G>>, watch: &Watch) -> Self {
        let request_id = match watch {
            Watch::Call { request_id, .. } => Some(request_id.clone()),
            _ => None,
        };
        OutcomeGuard {
            session,
            request_id,
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(request_id) = self.request_id.take() {
            self.session.record(request_id, outcome);
        }
    }
}

impl<G: Gate> Drop for OutcomeGuard<G> {
    fn drop(&mut self) {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.finish(Outcome::failed(
                "no answer: the stream ended (or the client left) before the response",
            ));
        }
    }
}

/// Applies `watch` to a response message's object: filters a list, records
/// a call's outcome. Answers whether the object was changed.
fn apply<G: Gate>(
    object: &mut serde_json::Map<String, Value>,
    watch: &Watch,
    guard: &mut OutcomeGuard<G>,
    prefix: &str,
) -> bool {
    match watch {
        Watch::Call { .. } => {
            guard.finish(Outcome::of_response(object));
            false
        }
        Watch::List { allowed, .. } => {
            if let Some(result) = object.get_mut("result") {
                intercept::filter_tools(result, allowed, prefix);
            }
            true
        }
        Watch::Nothing => false,
    }
}

/// The response to the watched request, if `bytes` is one.
fn watched_response(bytes: &[u8], watch: &Watch) -> Option<serde_json::Map<String, Value>> {
    let id = watch.id()?;
    match Message::parse(bytes) {
        Ok(Message {
            object,
            kind: Kind::Response { id: got },
        }) if &got == id => Some(object),
        _ => None,
    }
}

async fn relay<G: Gate>(
    upstream: reqwest::Response,
    watch: Watch,
    mut guard: OutcomeGuard<G>,
    prefix: String,
) -> Response {
    let (status, response_headers) = relayed_head(&upstream);
    let is_stream = response_headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/event-stream"));
    if matches!(watch, Watch::Nothing) {
        return response(
            status,
            response_headers,
            Body::from_stream(upstream.bytes_stream()),
        );
    }
    if !is_stream {
        let body = match read_limited(upstream).await {
            Ok(b) => b,
            Err(e) => {
                guard.finish(Outcome::failed(
                    "no answer: the upstream's answer could not be read",
                ));
                return jsonrpc_error(McpRefusal::Upstream, watch.id(), UPSTREAM_UNAVAILABLE, &e);
            }
        };
        let body = match watched_response(&body, &watch) {
            Some(mut object) => {
                if apply(&mut object, &watch, &mut guard, &prefix) {
                    Bytes::from(
                        serde_json::to_vec(&Value::Object(object)).expect("JSON serializes"),
                    )
                } else {
                    body
                }
            }
            None => {
                guard.finish(Outcome::failed(&format!(
                    "no answer: the upstream answered HTTP {status} without a response to the call"
                )));
                body
            }
        };
        return response(status, response_headers, Body::from(body));
    }
    // An SSE stream: pass events as they come; rewrite or watch the one
    // that answers the intercepted request.
    let mut splitter = Splitter::default();
    let mut state = Some((watch, guard));
    let stream = upstream
        .bytes_stream()
        .map(Some)
        .chain(futures::stream::once(async { None }));
    let stream = stream.map(move |chunk| -> Result<Bytes, std::io::Error> {
        let events = match chunk {
            Some(Ok(bytes)) => splitter.push(&bytes),
            Some(Err(e)) => return Err(std::io::Error::other(e)),
            None => {
                let tail: Vec<sse::Event> = splitter.finish().into_iter().collect();
                tail
            }
        };
        let mut out = Vec::new();
        for event in events {
            let mut rewritten = None;
            let mut answered = false;
            if let (Some((watch, guard)), Some(data)) = (state.as_mut(), event.data.as_deref())
                && let Some(mut object) = watched_response(data.as_bytes(), watch)
            {
                answered = true;
                if apply(&mut object, watch, guard, &prefix) {
                    let data =
                        serde_json::to_string(&Value::Object(object)).expect("JSON serializes");
                    rewritten = Some(event.with_data(&data));
                }
            }
            if answered {
                state = None;
            }
            out.extend(rewritten.unwrap_or(event.raw));
        }
        Ok(Bytes::from(out))
    });
    let mut response = response(status, response_headers, Body::from_stream(stream));
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

async fn read_limited(upstream: reqwest::Response) -> Result<Bytes, String> {
    let mut stream = upstream.bytes_stream();
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("reading the upstream's answer: {e}"))?;
        if body.len() + chunk.len() > MAX_JSON_ANSWER {
            return Err("the upstream's answer is too large".into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

fn is_response(event: &sse::Event) -> bool {
    event
        .data
        .as_deref()
        .and_then(|d| Message::parse(d.as_bytes()).ok())
        .is_some_and(|m| matches!(m.kind, Kind::Response { .. }))
}

/// The upstream's own status (relayed, not chosen here) and the headers relayed.
fn relayed_head(upstream: &reqwest::Response) -> (StatusCode, HeaderMap) {
    let status = upstream.status();
    let mut headers = HeaderMap::new();
    for name in RELAYED {
        if let Some(v) = upstream.headers().get(name)
            && let Ok(v) = HeaderValue::from_bytes(v.as_bytes())
        {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    (status, headers)
}

fn response(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

fn json_answer(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

/// A JSON-RPC error answered by the front itself, with the status of `kind`.
fn jsonrpc_error(kind: McpRefusal, id: Option<&Value>, code: i64, text: &str) -> Response {
    ApiError::Mcp {
        kind,
        body: message::error_response(id, code, text, None),
    }
    .into_response()
}
