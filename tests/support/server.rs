//! The service in-process: a real server on 127.0.0.1:0 over real sled in a
//! temp data dir, and short JSON helpers (`get`, `post`, `call`) that take an
//! optional token.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kernels::config::{Role, TokenSpec};
use kernels::kernel::{Policy, Variant};
use kernels::ledger::{Ledger, LedgerOptions, SystemClock};
use kernels::metrics::Metrics;
use kernels::service::auth::TokenTable;
use kernels::service::{AppState, RotationControl, ServiceSettings};
use serde_json::Value;

pub use super::{AGENT, AGENT_LIMITED, AUDITOR, OPERATOR};

pub fn tokens() -> Vec<TokenSpec> {
    vec![
        TokenSpec {
            secret: AGENT.into(),
            role: Role::Agent,
            actors: None,
            name: "agent-any".into(),
        },
        TokenSpec {
            secret: AGENT_LIMITED.into(),
            role: Role::Agent,
            actors: Some(vec!["agent-001".into()]),
            name: "agent-001-only".into(),
        },
        TokenSpec {
            secret: AUDITOR.into(),
            role: Role::Auditor,
            actors: None,
            name: "auditor".into(),
        },
        TokenSpec {
            secret: OPERATOR.into(),
            role: Role::Operator,
            actors: None,
            name: "ops".into(),
        },
    ]
}

pub fn policy() -> Policy {
    Policy::from_yaml("allowed_actors: [agent-001, agent-002]\nallowed_tools: [echo, add, search]\nmax_intent_length: 1000\n").unwrap()
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub ledger: Ledger,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(dir: &Path) -> TestServer {
        Self::start_with(dir, 64 * 1024, None).await
    }

    pub async fn start_with(
        dir: &Path,
        max_body: usize,
        rotation: Option<Arc<dyn RotationControl>>,
    ) -> TestServer {
        let dir = dir.to_owned();
        let ledger = tokio::task::spawn_blocking(move || {
            let options = LedgerOptions::service("k-http", Variant::Strict, policy());
            Ledger::open(
                &dir,
                options,
                Arc::new(SystemClock),
                Arc::new(Metrics::new()),
            )
            .unwrap()
        })
        .await
        .unwrap();
        Self::serve(ledger, max_body, rotation).await
    }

    pub async fn serve(
        ledger: Ledger,
        max_body: usize,
        rotation: Option<Arc<dyn RotationControl>>,
    ) -> TestServer {
        Self::serve_in(ledger, max_body, rotation, &std::env::temp_dir()).await
    }

    /// [`TestServer::serve`] with `data_dir` as the service's data dir
    /// (preserved evidence goes under it).
    pub async fn serve_in(
        ledger: Ledger,
        max_body: usize,
        rotation: Option<Arc<dyn RotationControl>>,
        data_dir: &Path,
    ) -> TestServer {
        let state = AppState::new(
            ledger.clone(),
            TokenTable::new(&tokens()),
            ServiceSettings {
                max_body_bytes: max_body,
                request_timeout: Duration::from_secs(10),
                data_dir: data_dir.to_owned(),
            },
            rotation,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = kernels::service::router(state);
        let task = tokio::spawn(async move {
            kernels::service::serve(listener, app, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        TestServer {
            addr,
            ledger,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn stop(mut self) -> Ledger {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
        let ledger = self.ledger.clone();
        let closing = ledger.clone();
        tokio::task::spawn_blocking(move || closing.close().unwrap())
            .await
            .unwrap();
        ledger
    }
}

/// A client with a timeout (see [`super::http::client`]).
pub fn client() -> reqwest::Client {
    super::http::client()
}

/// Sends `body` (raw bytes) with `token`; answers (status, JSON or text).
pub async fn call(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> (u16, Value) {
    let mut req = client().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub async fn post(url: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    call(
        reqwest::Method::POST,
        url,
        token,
        Some(serde_json::to_vec(body).unwrap()),
    )
    .await
}

pub async fn get(url: &str, token: Option<&str>) -> (u16, Value) {
    call(reqwest::Method::GET, url, token, None).await
}

/// The service's ledger length (`GET /v1/status`).
pub async fn length(server: &TestServer) -> u64 {
    let (code, status) = get(&server.url("/v1/status"), Some(AUDITOR)).await;
    assert_eq!(code, 200);
    status["ledger_length"].as_u64().unwrap()
}

/// The entry at `seq`, read back over HTTP.
pub async fn entry_at(server: &TestServer, seq: u64) -> Value {
    let (code, page) = get(
        &server.url(&format!("/v1/entries?from_seq={seq}&limit=1")),
        Some(AUDITOR),
    )
    .await;
    assert_eq!(code, 200, "{page}");
    page["entries"][0].clone()
}
