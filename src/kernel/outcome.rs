//! Outcomes: what an externally run tool did after an ALLOW, recorded as a
//! `kernel.outcome` entry of the same chain.
//!
//! An ALLOW says a tool may run; when the caller runs it (an MCP server
//! behind the proxy, a `governed` function), the caller reports whether it
//! succeeded and the SHA-256 of its result — never the result itself. The
//! entry shares the decision's `request_id` (so a search by request id shows
//! decision and outcome together), names the decision's actor, and stores
//! the report as its payload (`params_hash` is the payload's hash). Whether
//! a request already has an outcome is the ledger's business, not the state's.

use serde_json::{Map, Value, json};

use super::state::KernelState;
use crate::entry::{Entry, EntryBody};

/// The event name of an outcome entry.
pub use super::state::event::OUTCOME;

/// Longest `error` text an outcome may carry (in characters).
pub const MAX_ERROR_CHARS: usize = 4096;

/// A report of `POST /v1/outcomes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeReport {
    /// The decided request.
    pub request_id: String,
    /// Whether the tool finished without an error.
    pub ok: bool,
    /// SHA-256 (64 lowercase hex) of the result, if there was one.
    pub result_sha256: Option<String>,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// Why an outcome cannot be recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutcomeError {
    /// The report is malformed (HTTP 400; nothing recorded).
    #[error("invalid outcome: {0}")]
    Invalid(String),
    /// The request was not ALLOWed: no tool ran (HTTP 409).
    #[error("request {request_id:?} was decided {decision}, not ALLOW: it has no outcome")]
    NotAllowed {
        /// The request.
        request_id: String,
        /// Its decision.
        decision: String,
    },
}

impl OutcomeReport {
    /// Reads a report: `request_id` (non-empty string), `ok` (boolean),
    /// optional `result_sha256` (hex digest or null) and `error` (text or
    /// null); nothing else.
    pub fn from_value(value: &Value) -> Result<OutcomeReport, OutcomeError> {
        let invalid = |m: &str| OutcomeError::Invalid(m.to_owned());
        let Value::Object(map) = value else {
            return Err(invalid("an outcome must be a JSON object"));
        };
        if let Some(key) = map
            .keys()
            .find(|k| !["request_id", "ok", "result_sha256", "error"].contains(&k.as_str()))
        {
            return Err(OutcomeError::Invalid(format!(
                "unknown field '{key}' (allowed: request_id, ok, result_sha256, error)"
            )));
        }
        let request_id = match map.get("request_id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(invalid("request_id must be a non-empty string")),
        };
        let ok = map
            .get("ok")
            .and_then(Value::as_bool)
            .ok_or_else(|| invalid("ok must be a boolean"))?;
        let result_sha256 = match map.get("result_sha256") {
            None | Some(Value::Null) => None,
            Some(Value::String(h))
                if h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
            {
                Some(h.clone())
            }
            Some(_) => {
                return Err(invalid(
                    "result_sha256 must be 64 lowercase hex digits or null",
                ));
            }
        };
        let error = match map.get("error") {
            None | Some(Value::Null) => None,
            Some(Value::String(e)) if e.chars().count() <= MAX_ERROR_CHARS => Some(e.clone()),
            Some(Value::String(_)) => {
                return Err(OutcomeError::Invalid(format!(
                    "error is longer than {MAX_ERROR_CHARS} characters"
                )));
            }
            Some(_) => return Err(invalid("error must be a string or null")),
        };
        Ok(OutcomeReport {
            request_id,
            ok,
            result_sha256,
            error,
        })
    }

    /// The report as recorded (every field present).
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        map.insert("request_id".into(), json!(self.request_id));
        map.insert("ok".into(), json!(self.ok));
        map.insert("result_sha256".into(), json!(self.result_sha256));
        map.insert("error".into(), json!(self.error));
        Value::Object(map)
    }

    /// Canonical hash of [`OutcomeReport::to_value`]: two reports are the
    /// same outcome when these match.
    pub fn hash(&self) -> String {
        crate::canonical::sha256_of(&self.to_value()).expect("an outcome has no floats")
    }
}

impl KernelState {
    /// The `kernel.outcome` entry for `report` about `decision` (the entry
    /// that decided the request), reported by the principal `reporter`.
    pub fn outcome_event(
        &self,
        now_ms: u64,
        decision: &Entry,
        reporter: &str,
        report: &OutcomeReport,
    ) -> Result<EntryBody, OutcomeError> {
        if decision.decision != "ALLOW" {
            return Err(OutcomeError::NotAllowed {
                request_id: report.request_id.clone(),
                decision: decision.decision.clone(),
            });
        }
        let payload = report.to_value();
        let what = if report.ok { "ok" } else { "failed" };
        let tool = decision.tool_name.as_deref().unwrap_or("(no tool)");
        Ok(EntryBody {
            ts_ms: now_ms,
            request_id: report.request_id.clone().into(),
            actor: decision.actor.clone(),
            intent: format!(
                "outcome of {tool} (entry {}): {what}, reported by {reporter}",
                decision.ledger_seq
            )
            .into(),
            decision: "ALLOW".into(),
            state_from: self.state.as_str().into(),
            state_to: self.state.as_str().into(),
            tool_name: Some(OUTCOME.to_owned()),
            params_hash: Some(report.hash()),
            error: report.error.clone(),
            payload: Some(payload),
            ..EntryBody::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::tests::ctx;
    use crate::kernel::{MemoryKernel, Policy, RawRequest, Variant};

    fn kernel_with(request: Value) -> MemoryKernel {
        let policy =
            Policy::from_yaml("allowed_actors: [alice]\nallowed_tools: [gh.issue]\n").unwrap();
        let mut k = MemoryKernel::create("k-out", Variant::Strict, &policy, 1_000).unwrap();
        k.submit(&RawRequest::from_value(request).unwrap(), &ctx(2_000))
            .unwrap();
        k
    }

    fn report(v: Value) -> Result<OutcomeReport, OutcomeError> {
        OutcomeReport::from_value(&v)
    }

    #[test]
    fn given_an_allowed_call_when_its_outcome_is_reported_then_the_entry_carries_the_report() {
        let k = kernel_with(
            json!({"request_id": "mcp-1", "actor": "alice", "intent": "file",
            "tool_call": {"name": "gh.issue", "params": {}}, "external_tool": true}),
        );
        let r = report(json!({"request_id": "mcp-1", "ok": true, "result_sha256": "a".repeat(64)}))
            .unwrap();
        let body = k
            .state
            .outcome_event(3_000, &k.entries[1], "proxy", &r)
            .unwrap();
        assert_eq!(body.tool_name.as_deref(), Some(OUTCOME));
        assert_eq!(body.request_id.as_str(), "mcp-1");
        assert_eq!(body.actor.as_str(), "alice");
        assert_eq!(
            body.payload,
            Some(
                json!({"request_id": "mcp-1", "ok": true, "result_sha256": "a".repeat(64), "error": null})
            )
        );
        assert_eq!(body.params_hash, Some(r.hash()));
        assert_eq!(
            body.intent.as_str(),
            "outcome of gh.issue (entry 1): ok, reported by proxy"
        );
        // It seals and replays like any event.
        let mut state = k.state.clone();
        let entry = state.seal(body);
        state.apply(&entry).unwrap();
        assert_eq!(entry.payload_matches(), Some(Ok(true)));
        assert_eq!(state.counters.by_event[OUTCOME], 1);
        assert_eq!(state.counters.by_decision, k.state.counters.by_decision);
    }

    #[test]
    fn a_denied_call_has_no_outcome() {
        let k = kernel_with(
            json!({"request_id": "mcp-1", "actor": "alice", "intent": "rm",
            "tool_call": {"name": "rm", "params": {}}, "external_tool": true}),
        );
        let r = report(json!({"request_id": "mcp-1", "ok": true})).unwrap();
        assert_eq!(
            k.state.outcome_event(3_000, &k.entries[1], "proxy", &r),
            Err(OutcomeError::NotAllowed {
                request_id: "mcp-1".into(),
                decision: "DENY".into()
            })
        );
    }

    #[test]
    fn malformed_reports_are_refused() {
        for bad in [
            json!([]),
            json!({"ok": true}),
            json!({"request_id": "", "ok": true}),
            json!({"request_id": "r", "ok": "yes"}),
            json!({"request_id": "r", "ok": true, "result_sha256": "ABC"}),
            json!({"request_id": "r", "ok": true, "result_sha256": "A".repeat(64)}),
            json!({"request_id": "r", "ok": true, "error": 5}),
            json!({"request_id": "r", "ok": true, "error": "x".repeat(MAX_ERROR_CHARS + 1)}),
            json!({"request_id": "r", "ok": true, "result": "the result itself"}),
        ] {
            assert!(report(bad.clone()).is_err(), "{bad}");
        }
        let a = report(json!({"request_id": "r", "ok": false})).unwrap();
        let b =
            report(json!({"request_id": "r", "ok": false, "result_sha256": null, "error": null}))
                .unwrap();
        assert_eq!(a.hash(), b.hash(), "absent and null are the same outcome");
    }
}
