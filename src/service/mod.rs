//! The HTTP service: the durable kernel behind an axum router.
//!
//! The library never binds a socket: [`router`] builds the app and [`serve`]
//! runs it on a listener the caller bound, until the shutdown future
//! completes (in-flight requests finish first). `kernels serve` binds,
//! installs the signal handlers and calls these.
//!
//! * [`api`] — the `/v1/` handlers, `/health`, `/ready`, `/metrics`
//! * [`entries`] — `/v1/evidence` and `/v1/entries`: reading the chain
//! * [`cluster`] — the cluster membership's routes and halt/recover actor
//!   ([`ClusterControl`], below, is what it needs of the cluster worker)
//! * [`agents`] — what agents' proxies read (`/v1/policy/allowed`) and the
//!   MCP front (`/mcp/{name}`)
//! * [`proofs`] — `/v1/checkpoint` and `/v1/proofs/…`: provable history
//! * [`body`] — reading a JSON body, its allowed fields and its reason
//! * [`auth`] — bearer tokens and roles
//! * [`error`] — the one place errors become status codes
//! * [`openapi`] — the OpenAPI document, generated from the handlers
//! * [`conn`] — the accept loop: header-read timeout and connection cap

pub mod agents;
pub mod api;
pub mod auth;
pub mod body;
pub mod cluster;
pub mod conn;
pub mod entries;
pub mod error;
pub mod openapi;
pub mod proofs;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

use crate::cluster::ClusterError;
use crate::ledger::Ledger;
use crate::metrics::HttpLabels;
use crate::rotator::run::{RotationError, RunAnswer, RunFailure};
use auth::{Principal, TokenTable};
pub use conn::{ConnectionLimits, serve_with};
use error::ApiError;

/// What the cluster worker offers the HTTP layer.
pub trait ClusterControl: Send + Sync + 'static {
    /// The cluster id.
    fn cluster_id(&self) -> &str;
    /// Membership, control plane, halt flag and shared policy as JSON
    /// (`cluster` in `GET /v1/status`).
    fn status(&self) -> Value;
    /// Leaves the cluster on behalf of `actor` (removes the member object,
    /// records `kernel.cluster_leave`).
    fn leave(
        &self,
        actor: String,
        reason: String,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Value, ClusterError>> + Send + '_>>;
    /// Adds a peer's cosignature (by `witness_key`, in `checkpoint`) to
    /// this ledger's checkpoint (`POST /v1/checkpoint/cosignatures`).
    fn add_cosignature(&self, witness_key: &str, checkpoint: &str) -> Result<Value, ClusterError>;
}

/// What the rotator offers the HTTP layer. Its failures stay typed
/// ([`RunFailure`] carries the rotator's [`RotationError`]) up to `ApiError`,
/// which chooses their status.
pub trait RotationControl: Send + Sync + 'static {
    /// Starts a rotation run in the rotator's worker on behalf of `actor`
    /// (or joins the run in progress) and waits at most `wait` for it: its
    /// outcome, or [`RunAnswer::Running`] with its id when it takes longer
    /// (the worker carries on). A failed run is retried by the worker.
    fn rotate_now(
        &self,
        actor: String,
        wait: Duration,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<RunAnswer, RunFailure>> + Send + '_>>;
    /// The rotator's state and recent history as JSON.
    fn status(&self) -> Value;
    /// Uploads a preserved evidence file (SHA-256 `sha256`) to the archive,
    /// with the Object Lock retention when configured; answers where it went.
    fn upload_preserved(
        &self,
        path: PathBuf,
        sha256: String,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Value, RotationError>> + Send + '_>>;
}

/// Service settings the handlers need.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Time limit of one request.
    pub request_timeout: Duration,
    /// Data dir (preserved evidence goes under it).
    pub data_dir: PathBuf,
}

struct AppInner {
    ledger: Ledger,
    tokens: TokenTable,
    settings: ServiceSettings,
    rotation: Option<Arc<dyn RotationControl>>,
    cluster: Option<Arc<dyn ClusterControl>>,
    mcp: crate::mcp::front::McpFront,
}

/// Shared state of the handlers: a cheap clone over an `Arc`.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<AppInner>,
}

impl AppState {
    /// State for a router over `ledger`.
    pub fn new(
        ledger: Ledger,
        tokens: TokenTable,
        settings: ServiceSettings,
        rotation: Option<Arc<dyn RotationControl>>,
    ) -> AppState {
        AppState {
            inner: Arc::new(AppInner {
                ledger,
                tokens,
                settings,
                rotation,
                cluster: None,
                mcp: crate::mcp::front::McpFront::default(),
            }),
        }
    }

    /// This state with the instance's cluster membership.
    pub fn with_cluster(self, cluster: Arc<dyn ClusterControl>) -> AppState {
        let inner = &self.inner;
        AppState {
            inner: Arc::new(AppInner {
                ledger: inner.ledger.clone(),
                tokens: inner.tokens.clone(),
                settings: inner.settings.clone(),
                rotation: inner.rotation.clone(),
                mcp: inner.mcp.clone(),
                cluster: Some(cluster),
            }),
        }
    }

    /// The same state, fronting the MCP servers of `mcp` at `/mcp/{name}`.
    pub fn with_mcp(self, mcp: crate::mcp::front::McpFront) -> AppState {
        let inner = &self.inner;
        AppState {
            inner: Arc::new(AppInner {
                ledger: inner.ledger.clone(),
                tokens: inner.tokens.clone(),
                settings: inner.settings.clone(),
                rotation: inner.rotation.clone(),
                mcp,
                cluster: inner.cluster.clone(),
            }),
        }
    }

    /// The cluster membership, when a cluster is configured.
    pub fn cluster(&self) -> Option<&Arc<dyn ClusterControl>> {
        self.inner.cluster.as_ref()
    }

    /// The MCP front.
    pub fn mcp(&self) -> &crate::mcp::front::McpFront {
        &self.inner.mcp
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.inner.ledger
    }

    /// The accepted tokens.
    pub fn tokens(&self) -> &TokenTable {
        &self.inner.tokens
    }

    /// Settings.
    pub fn settings(&self) -> &ServiceSettings {
        &self.inner.settings
    }

    /// The rotator, when rotation is configured.
    pub fn rotation(&self) -> Option<&Arc<dyn RotationControl>> {
        self.inner.rotation.as_ref()
    }
}

/// Every path the service answers (the metrics' route label); a test checks
/// it against the router and the OpenAPI document.
pub const ROUTES: &[&str] = &[
    "/health",
    "/ready",
    "/metrics",
    "/v1/requests",
    "/v1/status",
    "/v1/evidence",
    "/v1/entries",
    "/v1/policy",
    "/v1/policy/allowed",
    "/v1/outcomes",
    "/v1/halt",
    "/v1/recover",
    "/v1/preserve",
    "/v1/rotations",
    "/v1/verify",
    "/v1/cluster/leave",
    "/v1/checkpoint",
    "/v1/checkpoint/key",
    "/v1/checkpoint/cosignatures",
    "/v1/proofs/inclusion",
    "/v1/proofs/consistency",
    "/v1/openapi.json",
];

/// The application: every route, with auth, limits, timeouts and logging.
pub fn router(state: AppState) -> Router {
    let tokens = Arc::new(state.tokens().clone());
    let v1 = Router::new()
        .route("/requests", post(api::submit))
        .route("/status", get(api::status))
        .route("/evidence", get(entries::evidence))
        .route("/entries", get(entries::entries))
        .route("/policy", get(api::get_policy).put(api::put_policy))
        .route("/policy/allowed", get(agents::allowed))
        .route("/outcomes", post(agents::outcomes))
        .route("/halt", post(api::halt))
        .route("/recover", post(api::recover))
        .route("/preserve", post(api::preserve))
        .route("/rotations", get(api::rotations).post(api::rotate))
        .route("/verify", post(api::verify))
        .route("/cluster/leave", post(cluster::leave))
        .route("/checkpoint", get(proofs::checkpoint))
        .route("/checkpoint/key", get(proofs::checkpoint_key))
        .route("/checkpoint/cosignatures", post(cluster::add_cosignature))
        .route("/proofs/inclusion", get(proofs::inclusion))
        .route("/proofs/consistency", get(proofs::consistency))
        .route("/openapi.json", get(openapi::document))
        .route_layer(middleware::from_fn_with_state(
            tokens.clone(),
            auth::authenticate,
        ));
    let mcp = Router::new()
        .route(
            "/mcp/{name}",
            post(agents::mcp_post)
                .get(agents::mcp_pass)
                .delete(agents::mcp_pass),
        )
        .route_layer(middleware::from_fn_with_state(tokens, auth::authenticate));
    Router::new()
        .route("/health", get(api::health))
        .route("/ready", get(api::ready))
        .route("/metrics", get(api::metrics))
        .nest("/v1", v1)
        .merge(mcp)
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.settings().max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Per-request: a declared body over the limit refused at once (413, not
/// after the body has trickled in), time limit, metrics, one log line.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    // This layer runs before routing, so the route label is the path when
    // it is one of ours (bounded label values), else "other".
    let path = req.uri().path();
    let route: &'static str = ROUTES.iter().find(|r| **r == path).map_or(
        if path.starts_with("/mcp/") {
            "/mcp/{name}"
        } else {
            "other"
        },
        |r| r,
    );
    // An MCP upstream may take long to start answering a tool call.
    let timeout = if route == "/mcp/{name}" {
        state.mcp().timeout
    } else {
        state.settings().request_timeout
    };
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let response = if declared.is_some_and(|n| n > state.settings().max_body_bytes as u64) {
        ApiError::PayloadTooLarge.into_response()
    } else {
        match tokio::time::timeout(timeout, next.run(req)).await {
            Ok(r) => r,
            // Only a submission has a request_id whose retry is safe.
            Err(_) => ApiError::Timeout {
                limit: timeout,
                submission: route == "/v1/requests",
            }
            .into_response(),
        }
    };
    let status = response.status();
    state
        .ledger()
        .metrics()
        .http_requests
        .get_or_create(&HttpLabels {
            route,
            code: status.as_u16(),
        })
        .inc();
    if tracing::enabled!(tracing::Level::INFO) {
        let principal = response.extensions().get::<Principal>();
        tracing::info!(
            method = %method,
            route = %route,
            status = status.as_u16(),
            ms = started.elapsed().as_secs_f64() * 1000.0,
            principal = principal.map_or("-", |p| &*p.name),
            "request"
        );
    }
    response
}

/// Serves `router` on `listener` with the default [`ConnectionLimits`]
/// until `shutdown` completes; in-flight requests finish before this returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, app, shutdown, ConnectionLimits::default()).await
}

/// Completes on Ctrl-C or SIGTERM. The handlers are installed when this is
/// called (not when the future is first polled), so call it before saying
/// that the service is up: a signal that comes after that is a clean stop,
/// never the default action's kill. Needs a Tokio runtime.
#[cfg(unix)]
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    async move {
        tokio::select! {
            _ = received(term.as_mut()) => {},
            _ = received(int.as_mut()) => {},
        }
        tracing::info!("shutdown signal received");
    }
}

/// Completes when `signal` arrives (never, when it could not be handled).
#[cfg(unix)]
async fn received(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received");
    }
}
