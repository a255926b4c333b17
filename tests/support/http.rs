//! A small async JSON client for the service's HTTP API (reqwest).

use std::time::Duration;

use serde_json::Value;

/// A client with a timeout, so that a hung server fails a test instead of
/// hanging it.
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a reqwest client builds")
}

/// Sends `method url` with a bearer `token` and a JSON `body`; answers the
/// status and the body as JSON (or as a JSON string when it is not JSON).
pub async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut req = client.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `POST url` with a JSON body.
pub async fn post(client: &reqwest::Client, url: &str, token: &str, body: &Value) -> (u16, Value) {
    call(client, reqwest::Method::POST, url, token, Some(body)).await
}

/// `PUT url` with a JSON body.
pub async fn put(client: &reqwest::Client, url: &str, token: &str, body: &Value) -> (u16, Value) {
    call(client, reqwest::Method::PUT, url, token, Some(body)).await
}

/// `GET url`.
pub async fn get(client: &reqwest::Client, url: &str, token: &str) -> (u16, Value) {
    call(client, reqwest::Method::GET, url, token, None).await
}
