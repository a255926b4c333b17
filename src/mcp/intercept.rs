//! What happens to the two MCP methods the relay interprets, for both
//! transports: a `tools/call` becomes a kernel request and its answer a
//! verdict (forward, an `isError` result, or a JSON-RPC error); a
//! `tools/list` result keeps only the tools the policy allows the actor; a
//! forwarded call's response becomes an outcome to record.
//!
//! Everything here is a pure function of the MCP message and the kernel's
//! answer (status and body, see [`super::gate`]). The policy itself is never
//! read here: the kernel decides every call, and the allowed-tools list is
//! the kernel's own projection of its policy. Any answer that is not plainly
//! an ALLOW is not treated as one (fail closed).

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::gate::KernelAnswer;

/// JSON-RPC error: the kernel is halted; nothing was forwarded.
pub const KERNEL_HALTED: i64 = -32010;
/// JSON-RPC error: the kernel could not be reached or could not make a
/// decision durable; nothing was forwarded.
pub const KERNEL_UNAVAILABLE: i64 = -32011;
/// JSON-RPC error: the kernel refused the request before deciding (token,
/// actor, invalid request); nothing was forwarded.
pub const KERNEL_REFUSED: i64 = -32012;
/// JSON-RPC error: the kernel's answer was not a clear decision; nothing was
/// forwarded.
pub const KERNEL_UNSURE: i64 = -32013;
/// JSON-RPC error: the call was allowed but the upstream MCP server could
/// not be reached (HTTP front).
pub const UPSTREAM_UNAVAILABLE: i64 = -32014;

/// `_meta` key of a `tools/call` whose string value becomes the request's intent.
pub const INTENT_META: &str = "kernels/intent";
/// `_meta` key of a `tools/call` whose object value is attached as the permit.
pub const PERMIT_META: &str = "kernels/permit";
/// `_meta` key under which a DENY result carries the kernel's receipt.
pub const RECEIPT_META: &str = "kernels/receipt";
/// `_meta` key of the per-request protocol version (2026-07-28 and later).
pub const PROTOCOL_META: &str = "io.modelcontextprotocol/protocolVersion";

/// A `tools/call` as the kernel sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The tool's name at the MCP server.
    pub name: String,
    /// Its arguments (`{}` when absent).
    pub arguments: Map<String, Value>,
    /// `_meta["kernels/intent"]`.
    pub intent: Option<String>,
    /// `_meta["kernels/permit"]`.
    pub permit: Option<Value>,
    /// Whether the call carries a per-request protocol version (2026-07-28).
    pub modern: bool,
}

impl ToolCall {
    /// Reads a `tools/call`'s params; an error text is answered as
    /// "invalid params" and nothing is forwarded.
    pub fn from_params(params: Option<&Value>) -> Result<ToolCall, String> {
        let Some(Value::Object(params)) = params else {
            return Err("tools/call needs params with a tool name".into());
        };
        let name = match params.get("name") {
            Some(Value::String(n)) if !n.is_empty() => n.clone(),
            _ => return Err("tools/call needs a non-empty string name".into()),
        };
        let arguments = match params.get("arguments") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(a)) => a.clone(),
            Some(_) => return Err("tools/call arguments must be an object".into()),
        };
        let meta = match params.get("_meta") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err("tools/call _meta must be an object".into()),
        };
        let intent = match meta.get(INTENT_META) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(format!("_meta[\"{INTENT_META}\"] must be a string")),
        };
        let permit = match meta.get(PERMIT_META) {
            None | Some(Value::Null) => None,
            Some(p @ Value::Object(_)) => Some(p.clone()),
            Some(_) => return Err(format!("_meta[\"{PERMIT_META}\"] must be an object")),
        };
        Ok(ToolCall {
            name,
            arguments,
            intent,
            permit,
            modern: meta.contains_key(PROTOCOL_META),
        })
    }

    /// The kernel request for this call: `tool_call {name: prefix + name,
    /// params: arguments}`, `params` = arguments, marked `external_tool` (the
    /// MCP server runs it), with the call's permit or else `permit`.
    pub fn kernel_request(
        &self,
        request_id: &str,
        actor: &str,
        prefix: &str,
        permit: Option<&Value>,
    ) -> Value {
        let mut request = json!({
            "request_id": request_id,
            "actor": actor,
            "intent": self.intent.clone().unwrap_or_else(|| format!("MCP tools/call {}", self.name)),
            "tool_call": {"name": format!("{prefix}{}", self.name), "params": self.arguments},
            "params": self.arguments,
            "external_tool": true,
        });
        if let Some(p) = self.permit.as_ref().or(permit) {
            request["permit"] = p.clone();
        }
        request
    }
}

/// A JSON-RPC error to answer instead of forwarding.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// Its code (one of the `KERNEL_*` codes).
    pub code: i64,
    /// Its message.
    pub message: String,
    /// What the kernel said (`kernel_status`, `kernel_code`, `request_id`).
    pub data: Value,
}

/// What to do with a `tools/call`.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// ALLOW: forward the call unchanged.
    Allow {
        /// The kernel's receipt.
        receipt: Value,
    },
    /// DENY: answer [`deny_result`] and do not forward.
    Deny {
        /// The kernel's receipt.
        receipt: Value,
    },
    /// No clear decision: answer this error and do not forward.
    Refuse(Refusal),
}

/// Reads the kernel's answer to the submission of `request_id`.
pub fn verdict(answer: &KernelAnswer, request_id: &str) -> Verdict {
    let (status, body) = match answer {
        Ok((status, body)) => (*status, body),
        Err(reason) => return Verdict::Refuse(unreachable(reason)),
    };
    if status != 200 {
        return Verdict::Refuse(refusal(status, body, Some(request_id)));
    }
    let field = |k: &str| body.get(k).and_then(Value::as_str);
    let same_request = field("request_id") == Some(request_id);
    let recorded = field("evidence_hash").is_some_and(|h| h.len() == 64)
        && body.get("ledger_seq").is_some_and(Value::is_u64);
    match (same_request && recorded, field("decision"), field("status")) {
        (true, Some("ALLOW"), Some("ACCEPTED")) => Verdict::Allow {
            receipt: body.clone(),
        },
        (true, Some("DENY"), Some("REJECTED" | "FAILED")) => Verdict::Deny {
            receipt: body.clone(),
        },
        _ => Verdict::Refuse(Refusal {
            code: KERNEL_UNSURE,
            message: format!(
                "kernels: the kernel's answer is not a clear decision for request {request_id}; the call was not forwarded"
            ),
            data: json!({"kernel_status": status, "request_id": request_id}),
        }),
    }
}

fn unreachable(reason: &str) -> Refusal {
    Refusal {
        code: KERNEL_UNAVAILABLE,
        message: format!(
            "kernels: no answer from the kernel ({reason}); the call was not forwarded"
        ),
        data: json!({"kernel_status": null}),
    }
}

/// The error for a non-200 answer of the kernel.
fn refusal(status: u16, body: &Value, request_id: Option<&str>) -> Refusal {
    let code_text = body.get("code").and_then(Value::as_str).unwrap_or("");
    let error = body
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string());
    let (code, message) = match (status, code_text) {
        (409, "halted") => (
            KERNEL_HALTED,
            format!("kernels: {error}; the call was not forwarded"),
        ),
        (500..=599, _) => (
            KERNEL_UNAVAILABLE,
            format!(
                "kernels: the kernel cannot decide now ({status}: {error}); the call was not forwarded"
            ),
        ),
        (400..=499, _) => (
            KERNEL_REFUSED,
            format!(
                "kernels: the kernel refused the request ({status} {code_text}: {error}); the call was not forwarded"
            ),
        ),
        _ => (
            KERNEL_UNSURE,
            format!(
                "kernels: unexpected answer from the kernel ({status}); the call was not forwarded"
            ),
        ),
    };
    Refusal {
        code,
        message,
        data: json!({"kernel_status": status, "kernel_code": code_text, "request_id": request_id}),
    }
}

/// The result answered for a DENY: the kernel's error and the
/// `evidence_hash` of the entry that recorded it, as an `isError` result
/// (a tool failure the model can read, not a protocol error).
pub fn deny_result(receipt: &Value, modern: bool) -> Value {
    let text = format!(
        "Denied by the kernel: {} (evidence_hash {}, request_id {})",
        receipt
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no reason given"),
        receipt
            .get("evidence_hash")
            .and_then(Value::as_str)
            .unwrap_or("?"),
        receipt
            .get("request_id")
            .and_then(Value::as_str)
            .unwrap_or("?"),
    );
    let mut result = json!({
        "content": [{"type": "text", "text": text}],
        "isError": true,
        "_meta": {RECEIPT_META: receipt},
    });
    if modern {
        result["resultType"] = json!("complete");
    }
    result
}

/// The tools an actor may call, as the kernel projects its policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedTools {
    /// Any tool (`"*"`).
    Any,
    /// Only these (kernel names, i.e. with the prefix).
    Only(BTreeSet<String>),
}

/// The answer of `GET /v1/policy/allowed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// The actor.
    pub actor: String,
    /// Whether the policy allows the actor at all.
    pub allowed: bool,
    /// The tools it may call.
    pub tools: AllowedTools,
}

impl Allowed {
    /// Reads the kernel's answer; anything unclear is a refusal.
    pub fn from_answer(answer: &KernelAnswer) -> Result<Allowed, Refusal> {
        let (status, body) = match answer {
            Ok(a) => a,
            Err(reason) => return Err(unreachable(reason)),
        };
        if *status != 200 {
            return Err(refusal(*status, body, None));
        }
        let unsure = || Refusal {
            code: KERNEL_UNSURE,
            message: "kernels: the kernel's list of allowed tools is unreadable".into(),
            data: json!({"kernel_status": status}),
        };
        let actor = body
            .get("actor")
            .and_then(Value::as_str)
            .ok_or_else(unsure)?;
        let allowed = body
            .get("allowed")
            .and_then(Value::as_bool)
            .ok_or_else(unsure)?;
        let tools = match body.get("tools") {
            Some(Value::String(s)) if s == "*" => AllowedTools::Any,
            Some(Value::Array(names)) => AllowedTools::Only(
                names
                    .iter()
                    .map(|n| n.as_str().map(str::to_owned))
                    .collect::<Option<_>>()
                    .ok_or_else(unsure)?,
            ),
            _ => return Err(unsure()),
        };
        Ok(Allowed {
            actor: actor.to_owned(),
            allowed,
            tools,
        })
    }

    /// Whether a call of the kernel tool name `tool` could be allowed.
    pub fn permits(&self, tool: &str) -> bool {
        self.allowed
            && match &self.tools {
                AllowedTools::Any => true,
                AllowedTools::Only(names) => names.contains(tool),
            }
    }
}

/// Keeps in a `tools/list` result only the tools `allowed` permits (their
/// kernel name is `prefix` + MCP name); everything else in the result
/// (`nextCursor`, `ttlMs`, `_meta` …) is kept. A filtered list is per actor,
/// so a `cacheScope` becomes `"private"`.
pub fn filter_tools(result: &mut Value, allowed: &Allowed, prefix: &str) {
    let Some(result) = result.as_object_mut() else {
        return;
    };
    if let Some(Value::Array(tools)) = result.get_mut("tools") {
        tools.retain(|tool| {
            tool.get("name")
                .and_then(Value::as_str)
                .is_some_and(|name| allowed.permits(&format!("{prefix}{name}")))
        });
    }
    if let Some(scope) = result.get_mut("cacheScope") {
        *scope = json!("private");
    }
}

/// What a forwarded call did, as `POST /v1/outcomes` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The tool finished and did not report an error.
    pub ok: bool,
    /// SHA-256 (hex) of the canonical JSON of the result, when there is one.
    pub result_sha256: Option<String>,
    /// Why not ok (never the result's content).
    pub error: Option<String>,
}

impl Outcome {
    /// A call that produced no response (`reason` says why).
    pub fn failed(reason: &str) -> Outcome {
        Outcome {
            ok: false,
            result_sha256: None,
            error: Some(reason.to_owned()),
        }
    }

    /// The outcome a response (the whole JSON-RPC object) carries.
    pub fn of_response(response: &Map<String, Value>) -> Outcome {
        if let Some(error) = response.get("error") {
            let code = error.get("code").map(Value::to_string).unwrap_or_default();
            let message: String = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .chars()
                .take(500)
                .collect();
            return Outcome::failed(&format!("JSON-RPC error {code}: {message}"));
        }
        let result = response.get("result").unwrap_or(&Value::Null);
        let result_sha256 = crate::canonical::sha256_of(result).ok();
        let error = if result.get("resultType").and_then(Value::as_str) == Some("input_required") {
            Some(
                "input_required: the server asked for more input; the retry is a new tools/call"
                    .to_owned(),
            )
        } else if result.get("isError") == Some(&Value::Bool(true)) {
            Some("the tool reported an error (isError)".to_owned())
        } else {
            None
        };
        Outcome {
            ok: error.is_none(),
            result_sha256,
            error,
        }
    }

    /// The body of `POST /v1/outcomes` for `request_id`.
    pub fn body(&self, request_id: &str) -> Value {
        json!({
            "request_id": request_id,
            "ok": self.ok,
            "result_sha256": self.result_sha256,
            "error": self.error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(decision: &str, status: &str) -> Value {
        json!({"request_id": "mcp-1", "status": status, "decision": decision, "state_from": "IDLE",
               "state_to": "IDLE", "ts_ms": 1, "error": (decision == "DENY").then_some("Jurisdiction denied: Tool 'rm' is not in allowed tools"),
               "evidence_hash": "ab".repeat(32), "ledger_seq": 4})
    }

    #[test]
    fn a_call_becomes_an_external_kernel_request() {
        let call = ToolCall::from_params(Some(
            &json!({"name": "create_issue", "arguments": {"title": "x"},
            "_meta": {"kernels/intent": "file the bug", "progressToken": 3}}),
        ))
        .unwrap();
        assert!(!call.modern);
        assert_eq!(
            call.kernel_request("mcp-1", "agent-001", "github.", None),
            json!({"request_id": "mcp-1", "actor": "agent-001", "intent": "file the bug",
                   "tool_call": {"name": "github.create_issue", "params": {"title": "x"}},
                   "params": {"title": "x"}, "external_tool": true})
        );
        let call = ToolCall::from_params(Some(&json!({"name": "ls",
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}})))
        .unwrap();
        assert!(call.modern);
        let permit = json!({"permit_id": "p"});
        let request = call.kernel_request("mcp-2", "a", "", Some(&permit));
        assert_eq!(request["intent"], "MCP tools/call ls");
        assert_eq!(request["params"], json!({}));
        assert_eq!(request["permit"], permit);
    }

    #[test]
    fn malformed_calls_are_refused() {
        for params in [
            json!(null),
            json!({"arguments": {}}),
            json!({"name": ""}),
            json!({"name": "x", "arguments": [1]}),
            json!({"name": "x", "_meta": {"kernels/intent": 5}}),
            json!({"name": "x", "_meta": {"kernels/permit": "p"}}),
        ] {
            assert!(ToolCall::from_params(Some(&params)).is_err(), "{params}");
        }
    }

    #[test]
    fn only_a_clear_allow_is_forwarded() {
        let allow = Ok((200, receipt("ALLOW", "ACCEPTED")));
        assert!(matches!(verdict(&allow, "mcp-1"), Verdict::Allow { .. }));
        assert!(matches!(
            verdict(&allow, "mcp-2"),
            Verdict::Refuse(Refusal {
                code: KERNEL_UNSURE,
                ..
            })
        ));
        let deny = Ok((200, receipt("DENY", "REJECTED")));
        assert!(matches!(verdict(&deny, "mcp-1"), Verdict::Deny { .. }));
        let failed = Ok((200, receipt("DENY", "FAILED")));
        assert!(matches!(verdict(&failed, "mcp-1"), Verdict::Deny { .. }));
        let mut odd = receipt("ALLOW", "REJECTED");
        assert!(matches!(
            verdict(&Ok((200, odd.clone())), "mcp-1"),
            Verdict::Refuse(_)
        ));
        odd = receipt("ALLOW", "ACCEPTED");
        odd["evidence_hash"] = json!(null);
        assert!(matches!(
            verdict(&Ok((200, odd)), "mcp-1"),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            verdict(&Ok((200, json!("ALLOW"))), "mcp-1"),
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn errors_map_to_their_codes() {
        let code = |answer: KernelAnswer| match verdict(&answer, "mcp-1") {
            Verdict::Refuse(r) => r.code,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            code(Ok((
                409,
                json!({"code": "halted", "error": "the kernel is halted (x)"})
            ))),
            KERNEL_HALTED
        );
        assert_eq!(
            code(Ok((
                409,
                json!({"code": "request_id_conflict", "error": "e"})
            ))),
            KERNEL_REFUSED
        );
        assert_eq!(
            code(Ok((403, json!({"code": "forbidden", "error": "e"})))),
            KERNEL_REFUSED
        );
        assert_eq!(
            code(Ok((503, json!({"code": "unavailable", "error": "e"})))),
            KERNEL_UNAVAILABLE
        );
        assert_eq!(code(Err("connection refused".into())), KERNEL_UNAVAILABLE);
        assert_eq!(code(Ok((302, json!("")))), KERNEL_UNSURE);
        let Verdict::Refuse(r) = verdict(
            &Ok((
                409,
                json!({"code": "halted", "error": "the kernel is halted (incident 7); only an operator's recovery reopens it"}),
            )),
            "mcp-1",
        ) else {
            unreachable!()
        };
        assert!(
            r.message.contains("incident 7") && r.message.contains("not forwarded"),
            "{}",
            r.message
        );
    }

    #[test]
    fn a_deny_is_an_is_error_result_with_the_evidence() {
        let r = receipt("DENY", "REJECTED");
        let result = deny_result(&r, false);
        assert_eq!(result["isError"], true);
        let text = result["content"][0]["text"].as_str().unwrap();
        assert!(
            text.contains("Tool 'rm' is not in allowed tools") && text.contains(&"ab".repeat(32)),
            "{text}"
        );
        assert_eq!(result["_meta"]["kernels/receipt"], r);
        assert!(result.get("resultType").is_none());
        assert_eq!(deny_result(&r, true)["resultType"], "complete");
    }

    #[test]
    fn lists_keep_only_allowed_tools() {
        let answer = Ok((
            200,
            json!({"actor": "a", "allowed": true, "tools": ["fs.read", "fs.list"], "policy_version": 1}),
        ));
        let allowed = Allowed::from_answer(&answer).unwrap();
        let mut result = json!({"tools": [{"name": "read"}, {"name": "write"}, {"name": "list"}, {"title": "no name"}],
                                "nextCursor": "c2", "cacheScope": "public", "ttlMs": 1000});
        filter_tools(&mut result, &allowed, "fs.");
        assert_eq!(
            result,
            json!({"tools": [{"name": "read"}, {"name": "list"}], "nextCursor": "c2", "cacheScope": "private", "ttlMs": 1000})
        );
        let any = Allowed::from_answer(&Ok((
            200,
            json!({"actor": "a", "allowed": true, "tools": "*"}),
        )))
        .unwrap();
        let mut result = json!({"tools": [{"name": "x"}]});
        filter_tools(&mut result, &any, "");
        assert_eq!(result["tools"].as_array().unwrap().len(), 1);
        let nobody = Allowed::from_answer(&Ok((
            200,
            json!({"actor": "a", "allowed": false, "tools": "*"}),
        )))
        .unwrap();
        filter_tools(&mut result, &nobody, "");
        assert_eq!(result["tools"], json!([]));
        assert!(Allowed::from_answer(&Ok((200, json!({"actor": "a", "tools": "*"})))).is_err());
        assert!(
            Allowed::from_answer(&Ok((
                200,
                json!({"actor": "a", "allowed": true, "tools": "all"})
            )))
            .is_err()
        );
        assert_eq!(
            Allowed::from_answer(&Err("down".into())).unwrap_err().code,
            KERNEL_UNAVAILABLE
        );
    }

    #[test]
    fn outcomes_hash_the_result_and_never_copy_it() {
        let response = json!({"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "secret"}], "isError": false}});
        let o = Outcome::of_response(response.as_object().unwrap());
        assert!(o.ok);
        assert_eq!(
            o.result_sha256,
            crate::canonical::sha256_of(&response["result"]).ok()
        );
        let failed = json!({"id": 1, "result": {"content": [{"type": "text", "text": "secret"}], "isError": true}});
        let o = Outcome::of_response(failed.as_object().unwrap());
        assert!(!o.ok && o.result_sha256.is_some());
        assert!(!o.body("mcp-1").to_string().contains("secret"));
        let asks =
            json!({"id": 1, "result": {"resultType": "input_required", "requestState": "s"}});
        assert!(!Outcome::of_response(asks.as_object().unwrap()).ok);
        let error = json!({"id": 1, "error": {"code": -32602, "message": "Unknown tool"}});
        let o = Outcome::of_response(error.as_object().unwrap());
        assert_eq!(o, Outcome::failed("JSON-RPC error -32602: Unknown tool"));
        assert_eq!(
            o.body("mcp-1"),
            json!({"request_id": "mcp-1", "ok": false, "result_sha256": null, "error": "JSON-RPC error -32602: Unknown tool"})
        );
    }
}
