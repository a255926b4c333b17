//! Requests: what an agent submits, its structural validation and the
//! ambiguity check, with the Python library's exact messages.
//!
//! A request arrives as a JSON object. [`RawRequest::from_value`] refuses what
//! is not a request at all (not an object, unknown keys): that is a client
//! error and never reaches the ledger. [`RawRequest::validate`] then applies
//! the library's `validate_request`; its failures *are* decisions (DENY
//! entries), exactly as in the library. A [`Submission`] is a request
//! validated once, carried from the edge (which may refuse an invalid one
//! before anything is recorded) to the decision.

use serde_json::{Map, Value};

use super::pysem;
use crate::entry::Text;

/// The keys a request object may have.
pub const REQUEST_KEYS: [&str; 9] = [
    "request_id",
    "ts_ms",
    "actor",
    "intent",
    "tool_call",
    "params",
    "evidence",
    "permit",
    "external_tool",
];

/// A request object that is not shaped like a request at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// The JSON value is not an object.
    #[error("a request must be a JSON object")]
    NotAnObject,
    /// The object has a key no request has.
    #[error(
        "unknown request field '{0}' (allowed: request_id, ts_ms, actor, intent, tool_call, params, evidence, permit, external_tool)"
    )]
    UnknownField(String),
}

/// A request object as submitted, before validation.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRequest {
    object: Map<String, Value>,
}

/// A tool invocation of a validated request.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// Tool name (non-empty).
    pub name: String,
    /// Arguments passed to the tool (`{}` when absent).
    pub params: Map<String, Value>,
}

/// A request that passed structural validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Caller's id for the request (non-empty).
    pub request_id: String,
    /// Caller's timestamp as given (informational: entries carry the
    /// kernel's clock); `None` when absent.
    pub ts_ms: Option<Value>,
    /// Who is asking (non-empty).
    pub actor: String,
    /// What the actor wants, in words.
    pub intent: String,
    /// The tool to run, if any.
    pub tool_call: Option<ToolCall>,
    /// Request params (`None` when given as null); hashed into `params_hash`.
    pub params: Option<Map<String, Value>>,
    /// Supporting evidence text.
    pub evidence: Option<String>,
    /// A permit token object, if presented.
    pub permit: Option<Value>,
    /// Ours: the caller runs the tool after an ALLOW (an MCP server behind
    /// the proxy, a `governed` function); the kernel only decides and records.
    pub external_tool: bool,
}

/// A request that failed validation: the errors, and what can still be said
/// about who sent it (for the DENY entry).
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// The library's validation messages, in order.
    pub errors: Vec<String>,
    /// `request_id` as submitted (`""` when absent).
    pub request_id: Text,
    /// `actor` as submitted.
    pub actor: Text,
    /// `intent` as submitted.
    pub intent: Text,
    /// `tool_call.name` when it is a non-empty string.
    pub tool_name: Option<String>,
}

/// A request validated once: the object as submitted (its content hash is
/// its identity for retries) and the outcome of [`RawRequest::validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Submission<'a> {
    raw: &'a RawRequest,
    checked: Result<Request, Box<Invalid>>,
}

impl<'a> Submission<'a> {
    /// Validates `raw`.
    pub fn new(raw: &'a RawRequest) -> Submission<'a> {
        Submission {
            raw,
            checked: raw.validate(),
        }
    }

    /// The object as submitted.
    pub fn raw(&self) -> &'a RawRequest {
        self.raw
    }

    /// The validated request, or why it is invalid.
    pub fn checked(&self) -> Result<&Request, &Invalid> {
        self.checked.as_ref().map_err(|invalid| &**invalid)
    }
}

impl<'a> From<&'a RawRequest> for Submission<'a> {
    fn from(raw: &'a RawRequest) -> Submission<'a> {
        Submission::new(raw)
    }
}

impl RawRequest {
    /// Accepts a JSON object with only request keys.
    pub fn from_value(value: Value) -> Result<RawRequest, ShapeError> {
        let Value::Object(object) = value else {
            return Err(ShapeError::NotAnObject);
        };
        if let Some(key) = object.keys().find(|k| !REQUEST_KEYS.contains(&k.as_str())) {
            return Err(ShapeError::UnknownField(key.clone()));
        }
        Ok(RawRequest { object })
    }

    /// The object as submitted.
    pub fn as_object(&self) -> &Map<String, Value> {
        &self.object
    }

    /// The `request_id` if it is a string.
    pub fn request_id(&self) -> Option<&str> {
        self.object.get("request_id").and_then(Value::as_str)
    }

    /// Canonical hash of the submitted object: two submissions with the same
    /// id are "the same request" when these match.
    pub fn content_hash(&self) -> String {
        crate::canonical::object_to_string(&self.object)
            .map(|text| crate::canonical::sha256_hex(text.as_bytes()))
            .unwrap_or_else(|_| crate::canonical::sha256_hex(b"unhashable"))
    }

    /// The library's `validate_request`, plus checks for what the library
    /// cannot even represent (non-string evidence, non-object tool calls,
    /// NaN/Infinity).
    ///
    /// Missing fields take the defaults of the library's own CLI: ids and
    /// texts `""`, `params` `{}`; a missing `ts_ms` is valid (the library
    /// fills in its clock; entries always carry the kernel's).
    pub fn validate(&self) -> Result<Request, Box<Invalid>> {
        let get = |k: &str| self.object.get(k);
        let empty = Value::String(String::new());
        let request_id = get("request_id").unwrap_or(&empty);
        let actor = get("actor").unwrap_or(&empty);
        let intent = get("intent").unwrap_or(&empty);
        let ts_ms = get("ts_ms");
        let default_params = Value::Object(Map::new());
        let params = get("params").unwrap_or(&default_params);
        let tool_call = get("tool_call").filter(|v| !v.is_null());
        let evidence = get("evidence").filter(|v| !v.is_null());
        let permit = get("permit").filter(|v| !v.is_null());
        let external_tool = get("external_tool").filter(|v| !v.is_null());

        let mut errors = Vec::new();
        if !pysem::truthy(request_id) {
            errors.push("request_id is required".to_owned());
        } else if !request_id.is_string() {
            errors.push("request_id must be a string".to_owned());
        }
        match ts_ms {
            None => {}
            Some(Value::Null) => errors.push("ts_ms is required".to_owned()),
            Some(t) if !pysem::is_int(t) => errors.push("ts_ms must be an integer".to_owned()),
            Some(t) if is_negative(t) => errors.push("ts_ms must be non-negative".to_owned()),
            Some(_) => {}
        }
        if !pysem::truthy(actor) {
            errors.push("actor is required".to_owned());
        } else if !actor.is_string() {
            errors.push("actor must be a string".to_owned());
        }
        if intent.is_null() {
            errors.push("intent is required".to_owned());
        } else if !intent.is_string() {
            errors.push("intent must be a string".to_owned());
        }
        if !params.is_null() && !params.is_object() {
            errors.push("params must be a dictionary".to_owned());
        }
        if let Some(call) = tool_call {
            match call {
                Value::Object(call) => {
                    match call.get("name") {
                        None => errors.push("tool_call.name is required".to_owned()),
                        Some(Value::String(name)) if name.is_empty() => {
                            errors.push("tool_call.name cannot be empty".to_owned())
                        }
                        Some(Value::String(_)) => {}
                        Some(_) => errors.push("tool_call.name must be a string".to_owned()),
                    }
                    if call.get("params").is_some_and(|p| !p.is_object()) {
                        errors.push("tool_call.params must be a dictionary".to_owned());
                    }
                    if let Some(key) = call.keys().find(|k| *k != "name" && *k != "params") {
                        errors.push(format!("tool_call has unknown field '{key}'"));
                    }
                }
                _ => errors.push("tool_call must be a dictionary".to_owned()),
            }
        }
        if evidence.is_some_and(|e| !e.is_string()) {
            errors.push("evidence must be a string".to_owned());
        }
        if permit.is_some_and(|p| !p.is_object()) {
            errors.push("permit must be a dictionary".to_owned());
        }
        if external_tool.is_some_and(|e| !e.is_boolean()) {
            errors.push("external_tool must be a boolean".to_owned());
        }
        if [
            params,
            tool_call.unwrap_or(&Value::Null),
            permit.unwrap_or(&Value::Null),
        ]
        .iter()
        .any(|v| has_non_finite(v))
        {
            errors.push("numbers must be finite (NaN and Infinity are not allowed)".to_owned());
        }

        if !errors.is_empty() {
            let tool_name = tool_call
                .and_then(|call| call.get("name"))
                .and_then(Value::as_str)
                .filter(|name| !name.is_empty())
                .map(str::to_owned);
            return Err(Box::new(Invalid {
                errors,
                request_id: Text(request_id.clone()),
                actor: Text(actor.clone()),
                intent: Text(intent.clone()),
                tool_name,
            }));
        }
        let tool_call = tool_call.map(|call| {
            let call = call.as_object().expect("validated");
            ToolCall {
                name: call["name"].as_str().expect("validated").to_owned(),
                params: call
                    .get("params")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default(),
            }
        });
        Ok(Request {
            request_id: request_id.as_str().expect("validated").to_owned(),
            ts_ms: ts_ms.cloned(),
            actor: actor.as_str().expect("validated").to_owned(),
            intent: intent.as_str().expect("validated").to_owned(),
            tool_call,
            params: params.as_object().cloned(),
            evidence: evidence.and_then(Value::as_str).map(str::to_owned),
            permit: permit.cloned(),
            external_tool: external_tool.and_then(Value::as_bool).unwrap_or(false),
        })
    }
}

fn is_negative(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_str().starts_with('-') && n.as_str() != "-0",
        _ => false,
    }
}

fn has_non_finite(v: &Value) -> bool {
    match v {
        Value::Number(n) => {
            crate::canonical::is_float_literal(n)
                && !n.as_str().parse::<f64>().is_ok_and(f64::is_finite)
        }
        Value::Array(items) => items.iter().any(has_non_finite),
        Value::Object(map) => map.values().any(has_non_finite),
        _ => false,
    }
}

impl Request {
    /// Length in bytes of the canonical (ASCII-escaped) JSON of `params`.
    pub fn params_canonical_len(&self, params: &Map<String, Value>) -> usize {
        crate::canonical::object_to_string(params)
            .map(|s| s.len())
            .unwrap_or(usize::MAX)
    }

    /// `params_hash`: the hash of `params` when it is a non-empty object.
    pub fn params_hash(&self) -> Option<String> {
        self.params.as_ref().filter(|p| !p.is_empty()).map(|p| {
            let text = crate::canonical::object_to_string(p).expect("validated finite");
            crate::canonical::sha256_hex(text.as_bytes())
        })
    }

    /// `evidence_hash`: the hash of `{"evidence": evidence}` when non-empty.
    pub fn evidence_hash(&self) -> Option<String> {
        self.evidence.as_ref().filter(|e| !e.is_empty()).map(|e| {
            let mut text = String::from("{\"evidence\":");
            crate::canonical::write_str(&mut text, e);
            text.push('}');
            crate::canonical::sha256_hex(text.as_bytes())
        })
    }

    /// The library's `check_ambiguity` (fail-closed variants): empty or
    /// whitespace intent, an intent longer than the variant's limit, and in
    /// strict ambiguity mode an unnamed tool call.
    pub fn ambiguity(&self, max_intent_length: u64, strict: bool) -> Vec<String> {
        let mut errors = Vec::new();
        if pysem::is_blank(&self.intent) {
            errors.push("Empty intent is ambiguous".to_owned());
        }
        if pysem::py_len(&self.intent) as u64 > max_intent_length {
            errors.push(format!(
                "Intent exceeds maximum length of {max_intent_length}"
            ));
        }
        if strict && self.tool_call.as_ref().is_some_and(|t| t.name.is_empty()) {
            errors.push("Tool call with empty name is ambiguous".to_owned());
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn validate(v: Value) -> Result<Request, Box<Invalid>> {
        RawRequest::from_value(v).unwrap().validate()
    }

    #[test]
    fn a_complete_request_validates() {
        let r = validate(json!({"request_id": "r1", "actor": "a", "intent": "do",
            "tool_call": {"name": "echo", "params": {"text": "x"}}, "params": {"k": 1}, "evidence": "e"}))
        .unwrap();
        assert_eq!(r.ts_ms, None, "absent: entries carry the kernel's clock");
        let given =
            validate(json!({"request_id": "r1", "actor": "a", "intent": "do", "ts_ms": 42}));
        assert_eq!(given.unwrap().ts_ms, Some(json!(42)));
        assert_eq!(r.tool_call.unwrap().params["text"], json!("x"));
        assert_eq!(r.evidence.as_deref(), Some("e"));
    }

    #[test]
    fn validation_messages_follow_the_library_order() {
        let err = validate(
            json!({"request_id": 5, "ts_ms": -3, "actor": "", "intent": null,
            "params": [1], "tool_call": {"name": 7, "params": "x"}}),
        )
        .unwrap_err();
        assert_eq!(
            err.errors,
            vec![
                "request_id must be a string",
                "ts_ms must be non-negative",
                "actor is required",
                "intent is required",
                "params must be a dictionary",
                "tool_call.name must be a string",
                "tool_call.params must be a dictionary",
            ]
        );
        assert_eq!(err.request_id, Text(json!(5)));
        let err = validate(
            json!({"request_id": "", "ts_ms": 1.5, "actor": 0, "intent": 3,
            "tool_call": {"name": ""}}),
        )
        .unwrap_err();
        assert_eq!(
            err.errors,
            vec![
                "request_id is required",
                "ts_ms must be an integer",
                "actor is required",
                "intent must be a string",
                "tool_call.name cannot be empty",
            ]
        );
        let err =
            validate(json!({"request_id": "r", "actor": "a", "intent": "i", "tool_call": {}}))
                .unwrap_err();
        assert_eq!(err.errors, vec!["tool_call.name is required"]);
    }

    #[test]
    fn shape_errors_are_not_validation_errors() {
        assert_eq!(
            RawRequest::from_value(json!([1])),
            Err(ShapeError::NotAnObject)
        );
        assert_eq!(
            RawRequest::from_value(json!({"request_id": "r", "tool": "x"})),
            Err(ShapeError::UnknownField("tool".into()))
        );
    }

    #[test]
    fn ambiguity_counts_code_points_and_python_whitespace() {
        let mut r = validate(json!({"request_id": "r", "actor": "a", "intent": "\u{1c} \u{3000}"}))
            .unwrap();
        assert_eq!(r.ambiguity(4096, true), vec!["Empty intent is ambiguous"]);
        r.intent = "🙂".repeat(5);
        assert!(r.ambiguity(5, true).is_empty());
        assert_eq!(
            r.ambiguity(4, true),
            vec!["Intent exceeds maximum length of 4"]
        );
    }

    #[test]
    fn hashes_follow_the_contract() {
        let r = validate(
            json!({"request_id": "r", "actor": "a", "intent": "i", "params": {}, "evidence": ""}),
        )
        .unwrap();
        assert_eq!(r.params_hash(), None);
        assert_eq!(r.evidence_hash(), None);
        let r = validate(json!({"request_id": "r", "actor": "a", "intent": "i", "params": {"b": 1, "a": "é"}, "evidence": "ok"})).unwrap();
        assert_eq!(
            r.params_hash().unwrap(),
            crate::canonical::sha256_hex(br#"{"a":"\u00e9","b":1}"#)
        );
        assert_eq!(
            r.evidence_hash().unwrap(),
            crate::canonical::sha256_hex(br#"{"evidence":"ok"}"#)
        );
    }
}
