//! A webhook receiver on 127.0.0.1:0 (axum): it keeps every JSON body it
//! accepts, and can refuse the first requests (503) to exercise retries.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::Value;

/// The path the receiver answers (it looks like a secret-bearing webhook).
pub const PATH: &str = "/hook/secret-path";

/// A webhook receiver: keeps every body it accepts; refuses (503) the first
/// `refuse` requests.
#[derive(Clone, Default)]
pub struct Receiver {
    pub got: Arc<Mutex<Vec<Value>>>,
    pub refuse: Arc<Mutex<u32>>,
    pub tried: Arc<Mutex<u32>>,
}

async fn hook(State(r): State<Receiver>, Json(body): Json<Value>) -> StatusCode {
    *r.tried.lock().unwrap() += 1;
    {
        let mut refuse = r.refuse.lock().unwrap();
        if *refuse > 0 {
            *refuse -= 1;
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    r.got.lock().unwrap().push(body);
    StatusCode::NO_CONTENT
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1:0; answers it and its address.
    pub async fn start(refuse: u32) -> (Receiver, SocketAddr) {
        let r = Receiver::default();
        *r.refuse.lock().unwrap() = refuse;
        let app = axum::Router::new()
            .route(PATH, post(hook))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (r, addr)
    }

    /// Waits until an alert of `event` has arrived (at most 30 s).
    pub async fn wait_for(&self, event: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(a) = self
                .got
                .lock()
                .unwrap()
                .iter()
                .find(|a| a["event"] == event)
            {
                return a.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {event} alert; got {:?}",
                self.got.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
