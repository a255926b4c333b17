//! JSON-RPC 2.0 framing as the MCP relay needs it: what kind of message a
//! frame is (request, notification or response, and its id and method), and
//! the answers the relay writes itself (results and errors).
//!
//! The relay forwards frames as the bytes it received; a frame is parsed only
//! to learn its kind. Parsing goes through `serde_json::Value`, whose
//! duplicate-key rule (the last one wins) is the one Python's `json` and
//! JavaScript's `JSON.parse` use, so the relay reads a method name exactly as
//! the SDKs on both sides do.

use serde_json::{Map, Value, json};

/// JSON-RPC: the frame is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC: the frame is JSON but not a valid request.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC: the method's params are not what it takes.
pub const INVALID_PARAMS: i64 = -32602;

/// What a frame is.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A request: it has a method and an id and expects a response.
    Request {
        /// Its id (a string or a number).
        id: Value,
        /// Its method.
        method: String,
    },
    /// A notification: a method and no id.
    Notification {
        /// Its method.
        method: String,
    },
    /// A response: an id and a `result` or an `error`.
    Response {
        /// The id of the request it answers.
        id: Value,
    },
}

/// A parsed frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The whole object.
    pub object: Map<String, Value>,
    /// Its kind.
    pub kind: Kind,
}

/// Why a frame is not a JSON-RPC message (answered with `code`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FrameError {
    /// The JSON-RPC error code to answer with.
    pub code: i64,
    /// What is wrong.
    pub message: String,
    /// The frame's id, when one could be read.
    pub id: Option<Value>,
}

impl Message {
    /// Parses one frame.
    pub fn parse(bytes: &[u8]) -> Result<Message, FrameError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| FrameError {
            code: PARSE_ERROR,
            message: format!("Parse error: {e}"),
            id: None,
        })?;
        let Value::Object(object) = value else {
            return Err(FrameError {
                code: INVALID_REQUEST,
                message: "Invalid Request: a message must be one JSON object (batches are not part of MCP)".into(),
                id: None,
            });
        };
        let id = object.get("id").cloned();
        let invalid = |message: &str| FrameError {
            code: INVALID_REQUEST,
            message: format!("Invalid Request: {message}"),
            id: id.clone(),
        };
        let kind = match (object.get("method"), &id) {
            (Some(Value::String(method)), None) => Kind::Notification {
                method: method.clone(),
            },
            (Some(Value::String(method)), Some(id)) => {
                if !(id.is_string() || id.is_number()) {
                    return Err(invalid("the id must be a string or a number"));
                }
                Kind::Request {
                    id: id.clone(),
                    method: method.clone(),
                }
            }
            (Some(_), _) => return Err(invalid("the method must be a string")),
            (None, Some(id)) if object.contains_key("result") || object.contains_key("error") => {
                Kind::Response { id: id.clone() }
            }
            (None, _) => return Err(invalid("neither a request, a notification nor a response")),
        };
        Ok(Message { object, kind })
    }

    /// The `params` object, if any.
    pub fn params(&self) -> Option<&Value> {
        self.object.get("params")
    }

    /// The method of a request or notification.
    pub fn method(&self) -> Option<&str> {
        match &self.kind {
            Kind::Request { method, .. } | Kind::Notification { method } => Some(method),
            Kind::Response { .. } => None,
        }
    }
}

/// A key under which an id is tracked: `1` and `"1"` are different ids.
pub fn id_key(id: &Value) -> String {
    id.to_string()
}

/// A response carrying `result`.
pub fn result_response(id: &Value, result: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": id, "result": result}))
        .expect("a JSON value serializes")
}

/// An error response (`id` null when the request's id is unknown).
pub fn error_response(
    id: Option<&Value>,
    code: i64,
    message: &str,
    data: Option<Value>,
) -> Vec<u8> {
    let mut error = json!({"code": code, "message": message});
    if let Some(data) = data {
        error["data"] = data;
    }
    serde_json::to_vec(
        &json!({"jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": error}),
    )
    .expect("a JSON value serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(text: &str) -> Result<Kind, i64> {
        Message::parse(text.as_bytes())
            .map(|m| m.kind)
            .map_err(|e| e.code)
    }

    #[test]
    fn frames_are_classified() {
        assert_eq!(
            kind(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{}}"#),
            Ok(Kind::Request {
                id: json!(7),
                method: "tools/call".into()
            })
        );
        assert_eq!(
            kind(r#"{"jsonrpc":"2.0","method":"notifications/cancelled"}"#),
            Ok(Kind::Notification {
                method: "notifications/cancelled".into()
            })
        );
        assert_eq!(
            kind(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#),
            Ok(Kind::Response { id: json!("a") })
        );
        assert_eq!(
            kind(r#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}}"#),
            Ok(Kind::Response { id: json!(1) })
        );
    }

    #[test]
    fn bad_frames_get_their_error_code() {
        assert_eq!(kind("{not json"), Err(PARSE_ERROR));
        assert_eq!(kind("[1]"), Err(INVALID_REQUEST));
        assert_eq!(kind(r#"{"id":1,"method":5}"#), Err(INVALID_REQUEST));
        assert_eq!(
            kind(r#"{"id":null,"method":"tools/call"}"#),
            Err(INVALID_REQUEST)
        );
        assert_eq!(kind(r#"{"id":{"a":1},"method":"x"}"#), Err(INVALID_REQUEST));
        assert_eq!(kind(r#"{"id":1}"#), Err(INVALID_REQUEST));
        let e = Message::parse(br#"{"id":3,"method":[]}"#).unwrap_err();
        assert_eq!(e.id, Some(json!(3)));
    }

    #[test]
    fn the_last_duplicate_key_wins_as_in_the_sdks() {
        assert_eq!(
            kind(r#"{"id":1,"method":"tools/list","method":"tools/call"}"#),
            Ok(Kind::Request {
                id: json!(1),
                method: "tools/call".into()
            })
        );
    }

    #[test]
    fn ids_keep_their_type() {
        assert_ne!(id_key(&json!(1)), id_key(&json!("1")));
        let text = error_response(Some(&json!("x")), -32010, "halted", None);
        let v: Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(v["id"], "x");
        assert_eq!(v["error"]["code"], -32010);
        let v: Value =
            serde_json::from_slice(&error_response(None, PARSE_ERROR, "p", None)).unwrap();
        assert_eq!(v["id"], Value::Null);
    }
}
