//! The HTTP ceiling of `POST /v1/requests`: what the same server does
//! without durability or governance.
//!
//! `cargo bench --bench http_ceiling -- --serve [--listen ADDR]` serves until
//! SIGTERM or Ctrl-C; `scripts/load.sh` runs it beside `kernels serve` under
//! the same wrk load and reports `kernels / ceiling`. Without `--serve` (as
//! `cargo bench` runs it) it serves on port 0, checks one request and exits.
//!
//! It is `kernels serve` with the ledger taken out, so that the ratio
//! measures what durability and governance cost, not a strawman: the same
//! tokio runtime, the same accept loop (`service::serve_with`: hyper's
//! HTTP/1 server, the header timeout and connection cap), the same axum
//! version, the same body limit, the same bearer-token check
//! (`TokenTable`), the same JSON parser (`canonical::parse`: serde_json with
//! `arbitrary_precision` and `preserve_order`) and request shape check
//! (`RawRequest::from_value`), a SHA-256 over the request's canonical JSON
//! (the content hash every submission gets), and a JSON `Receipt` of the
//! same shape (the `echo` tool's result included). What it leaves out:
//! validation and the decision, the entry and its chain hash, the core lock,
//! the group commit and its `fdatasync`, the request index, sled, the
//! metrics and the access log.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kernels::config::{Role, TokenSpec};
use kernels::entry::Text;
use kernels::kernel::{RawRequest, Receipt, Status};
use kernels::service::auth::TokenTable;

/// The service's default body limit (`limits.max_body_bytes`).
const MAX_BODY: usize = 1024 * 1024;

struct Ceiling {
    tokens: TokenTable,
    seq: AtomicU64,
}

async fn submit(State(c): State<Arc<Ceiling>>, headers: HeaderMap, body: Bytes) -> Response {
    let secret = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if secret.and_then(|s| c.tokens.find(s)).is_none() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let Ok(value) = kernels::canonical::parse(text) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let Ok(raw) = RawRequest::from_value(value) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let content_hash = raw.content_hash();
    let object = raw.as_object();
    let tool_result = object
        .get("tool_call")
        .and_then(|c| c.get("params"))
        .and_then(|p| p.get("text"))
        .cloned();
    let receipt = Receipt {
        request_id: Text(object.get("request_id").cloned().unwrap_or_default()),
        status: Status::Accepted,
        decision: "ALLOW".into(),
        state_from: "IDLE".into(),
        state_to: "IDLE".into(),
        ts_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        error: None,
        evidence_hash: content_hash,
        ledger_seq: c.seq.fetch_add(1, Ordering::Relaxed),
        tool_result,
    };
    axum::Json(receipt).into_response()
}

fn router(token: &str) -> Router {
    let state = Arc::new(Ceiling {
        tokens: TokenTable::new(&[TokenSpec {
            name: "agent".into(),
            secret: token.into(),
            role: Role::Agent,
            actors: None,
        }]),
        seq: AtomicU64::new(0),
    });
    Router::new()
        .route("/v1/requests", post(submit))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// One request over a plain socket: the status line and the body.
async fn post_once(addr: std::net::SocketAddr, token: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = r#"{"request_id":"c-1","actor":"agent-001","intent":"echo","tool_call":{"name":"echo","params":{"text":"hi"}},"params":{"text":"hi"}}"#;
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "POST /v1/requests HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer)
}

fn main() {
    // As `kernels` starts.
    kernels::allocator::tune();
    let args: Vec<String> = std::env::args().collect();
    let serving = args.iter().any(|a| a == "--serve");
    let listen = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let token = std::env::var("KERNELS_AGENT_TOKEN").unwrap_or_else(|_| "ceiling-token".into());
    // As `kernels serve` builds its runtime.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .expect("cannot listen");
        let addr = listener.local_addr().expect("a local address");
        let app = router(&token);
        if serving {
            eprintln!("http_ceiling: serving on http://{addr}");
            kernels::service::serve_with(
                listener,
                app,
                kernels::service::shutdown_signal(),
                kernels::service::ConnectionLimits::default(),
            )
            .await
            .expect("serving");
            return;
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(kernels::service::serve_with(
            listener,
            app,
            async {
                let _ = stop_rx.await;
            },
            kernels::service::ConnectionLimits::default(),
        ));
        let answer = post_once(addr, &token).await.expect("a request");
        let _ = stop_tx.send(());
        server.await.expect("the server task").expect("serving");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains(r#""decision":"ALLOW""#), "{answer}");
        assert!(answer.contains(r#""tool_result":"hi""#), "{answer}");
        println!(
            "http_ceiling: one request answered; measure with scripts/load.sh (kernels / ceiling)"
        );
    });
}
