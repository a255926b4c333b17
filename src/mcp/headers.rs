//! The request-metadata header rules of Streamable HTTP (2026-07-28): the
//! `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers mirror the
//! body, and a server that reads the body must refuse a request whose
//! headers say something else (HTTP 400, JSON-RPC `-32020` HeaderMismatch):
//! otherwise a component routing on the headers and one executing the body
//! would see two different requests.
//!
//! On a modern request (a version other than the handshake-era ones) the
//! headers are required; on any request, a header that is present must
//! match. `Mcp-Name` may carry `=?base64?…?=` and is compared decoded.
//! `Mcp-Param-*` headers are forwarded to the upstream, which knows the
//! tools' schemas and checks them.

use axum::http::HeaderMap;
use base64::Engine;
use serde_json::Value;

use super::intercept::PROTOCOL_META;
use super::message::{Kind, Message};

/// JSON-RPC error: the headers do not match the body.
pub const HEADER_MISMATCH: i64 = -32020;

/// Protocol revisions of the `initialize` era, whose requests carry no
/// per-request metadata (and had no `Mcp-Method`/`Mcp-Name` headers).
pub const HANDSHAKE_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// Methods whose `Mcp-Name` is their `params.name` or `params.uri`.
const NAMED: [(&str, &str); 3] = [
    ("tools/call", "name"),
    ("prompts/get", "name"),
    ("resources/read", "uri"),
];

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, String> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| format!("Header mismatch: the {name} header has invalid characters")),
    }
}

/// Decodes a `=?base64?…?=` value; other values are taken as they are.
pub fn decode_value(value: &str) -> Result<String, String> {
    match value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    {
        None => Ok(value.to_owned()),
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| format!("Header mismatch: '{value}' is not valid base64 UTF-8")),
    }
}

/// Checks `msg`'s headers; the error text is the JSON-RPC error message.
pub fn check(headers: &HeaderMap, msg: &Message) -> Result<(), String> {
    let params = msg.params();
    let meta_version = params
        .and_then(|p| p.get("_meta"))
        .and_then(|m| m.get(PROTOCOL_META))
        .and_then(Value::as_str);
    let version = header(headers, "mcp-protocol-version")?;
    if let Some(body) = meta_version {
        match version {
            None => {
                return Err("Header mismatch: the MCP-Protocol-Version header is missing".into());
            }
            Some(h) if h != body => {
                return Err(format!(
                    "Header mismatch: MCP-Protocol-Version header value '{h}' does not match body value '{body}'"
                ));
            }
            _ => {}
        }
    }
    let modern = version.is_some_and(|v| !HANDSHAKE_VERSIONS.contains(&v));
    let is_request = matches!(msg.kind, Kind::Request { .. });

    let method = msg.method();
    match (header(headers, "mcp-method")?, method) {
        (Some(h), Some(m)) if h == m => {}
        (Some(h), Some(m)) => {
            return Err(format!(
                "Header mismatch: Mcp-Method header value '{h}' does not match body value '{m}'"
            ));
        }
        (Some(h), None) => {
            return Err(format!(
                "Header mismatch: Mcp-Method header value '{h}' on a message that has no method"
            ));
        }
        (None, Some(_)) if modern && is_request => {
            return Err("Header mismatch: the Mcp-Method header is missing".into());
        }
        (None, _) => {}
    }

    let name_source = NAMED
        .iter()
        .find(|(m, _)| Some(*m) == method)
        .map(|(_, field)| params.and_then(|p| p.get(*field)).and_then(Value::as_str));
    match (header(headers, "mcp-name")?, name_source) {
        (Some(h), Some(Some(body))) => {
            let decoded = decode_value(h)?;
            if decoded != body {
                return Err(format!(
                    "Header mismatch: Mcp-Name header value '{decoded}' does not match body value '{body}'"
                ));
            }
        }
        (Some(h), _) => {
            return Err(format!(
                "Header mismatch: Mcp-Name header value '{h}' on a message that has no name"
            ));
        }
        (None, Some(Some(_))) if modern && is_request => {
            return Err("Header mismatch: the Mcp-Name header is missing".into());
        }
        (None, _) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn msg(text: &str) -> Message {
        Message::parse(text.as_bytes()).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const MODERN_CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","arguments":{},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;

    #[test]
    fn matching_headers_pass() {
        let h = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("Mcp-Name", "get_weather"),
        ]);
        assert_eq!(check(&h, &msg(MODERN_CALL)), Ok(()));
        let h = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?Z2V0X3dlYXRoZXI=?="),
        ]);
        assert_eq!(check(&h, &msg(MODERN_CALL)), Ok(()));
        // A handshake-era request needs none of them.
        let legacy = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#;
        assert_eq!(
            check(
                &headers(&[("mcp-protocol-version", "2025-11-25")]),
                &msg(legacy)
            ),
            Ok(())
        );
        assert_eq!(check(&HeaderMap::new(), &msg(legacy)), Ok(()));
        // Notifications and responses need none.
        let note =
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#;
        assert_eq!(
            check(
                &headers(&[("mcp-protocol-version", "2026-07-28")]),
                &msg(note)
            ),
            Ok(())
        );
    }

    #[test]
    fn mismatches_and_missing_headers_are_refused() {
        let base = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
        ];
        let with = |extra: &[(&'static str, &str)]| {
            let mut all = base.to_vec();
            all.extend_from_slice(extra);
            check(&headers(&all), &msg(MODERN_CALL))
        };
        assert!(
            with(&[("mcp-name", "delete_everything")])
                .unwrap_err()
                .contains("does not match")
        );
        assert!(
            with(&[])
                .unwrap_err()
                .contains("Mcp-Name header is missing")
        );
        assert!(with(&[("mcp-name", "=?base64?!!?=")]).is_err());
        let h = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/list"),
            ("mcp-name", "get_weather"),
        ]);
        assert!(
            check(&h, &msg(MODERN_CALL))
                .unwrap_err()
                .contains("Mcp-Method")
        );
        let h = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-name", "get_weather"),
        ]);
        assert!(
            check(&h, &msg(MODERN_CALL))
                .unwrap_err()
                .contains("Mcp-Method header is missing")
        );
        let h = headers(&[
            ("mcp-protocol-version", "2025-11-25"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "get_weather"),
        ]);
        assert!(
            check(&h, &msg(MODERN_CALL))
                .unwrap_err()
                .contains("MCP-Protocol-Version")
        );
        assert!(
            check(&HeaderMap::new(), &msg(MODERN_CALL))
                .unwrap_err()
                .contains("missing")
        );
        // Present headers must match on any revision.
        let legacy = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#;
        assert!(check(&headers(&[("mcp-name", "y")]), &msg(legacy)).is_err());
        assert!(check(&headers(&[("mcp-method", "tools/list")]), &msg(legacy)).is_err());
        let response = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
        assert!(check(&headers(&[("mcp-method", "tools/call")]), &msg(response)).is_err());
    }
}
