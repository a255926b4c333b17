//! One MCP connection's dealings with the kernel, whatever the transport:
//! who the actor is, a fresh request id for every call, the decision for a
//! `tools/call`, the allowed list for a `tools/list`, and the outcomes of
//! forwarded calls.
//!
//! Request ids are `mcp-` and 128 random bits: unique per call, never the
//! JSON-RPC id (which restarts with every MCP session). A submission that
//! got no answer is retried with the same id, which the kernel treats as the
//! same request.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::gate::Gate;
use super::intercept::{self, Allowed, Outcome, Refusal, ToolCall, Verdict};
use super::message::{self, INVALID_PARAMS};
use super::outcomes::Outcomes;

/// How a connection's calls become kernel requests.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The actor (else the token's single actor, asked from the kernel).
    pub actor: Option<String>,
    /// Prefix of the kernel's name for an MCP tool (`github.` + `create_issue`).
    pub tool_prefix: String,
    /// A permit file attached to every call (read at each call, so it can be
    /// replaced while the proxy runs).
    pub permit_file: Option<PathBuf>,
}

/// What to do with a `tools/call`.
#[derive(Debug, Clone, PartialEq)]
pub enum CallDecision {
    /// ALLOW: forward the call as received; `request_id` is the kernel's.
    Forward {
        /// The kernel request id (for the outcome).
        request_id: String,
    },
    /// Answer this frame instead and forward nothing (a DENY result or a
    /// JSON-RPC error).
    Answer(Vec<u8>),
}

/// One connection.
#[derive(Debug)]
pub struct Session<G> {
    gate: Arc<G>,
    settings: Settings,
    actor: Mutex<Option<String>>,
    outcomes: Outcomes<G>,
}

impl<G: Gate> Session<G> {
    /// A session asking `gate`.
    pub fn new(gate: Arc<G>, settings: Settings) -> Session<G> {
        Session {
            outcomes: Outcomes::new(gate.clone()),
            actor: Mutex::new(settings.actor.clone()),
            gate,
            settings,
        }
    }

    /// The tool prefix.
    pub fn tool_prefix(&self) -> &str {
        &self.settings.tool_prefix
    }

    fn known_actor(&self) -> Option<String> {
        self.actor.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The tools the actor may call (and, when no actor was given, the
    /// token's single actor, remembered for the calls that follow).
    pub async fn allowed(&self) -> Result<Allowed, Refusal> {
        let known = self.known_actor();
        let answer = self.gate.allowed(known.clone()).await;
        let allowed = Allowed::from_answer(&answer)?;
        if known.is_none() {
            *self.actor.lock().unwrap_or_else(|p| p.into_inner()) = Some(allowed.actor.clone());
        }
        Ok(allowed)
    }

    async fn actor(&self) -> Result<String, Refusal> {
        match self.known_actor() {
            Some(actor) => Ok(actor),
            None => self.allowed().await.map(|a| a.actor),
        }
    }

    /// Decides the `tools/call` request `id` with `params`.
    pub async fn decide_call(&self, id: &Value, params: Option<&Value>) -> CallDecision {
        let error = |r: Refusal| {
            CallDecision::Answer(message::error_response(
                Some(id),
                r.code,
                &r.message,
                Some(r.data),
            ))
        };
        let call = match ToolCall::from_params(params) {
            Ok(call) => call,
            Err(text) => {
                return CallDecision::Answer(message::error_response(
                    Some(id),
                    INVALID_PARAMS,
                    &format!("Invalid params: {text}"),
                    None,
                ));
            }
        };
        let actor = match self.actor().await {
            Ok(actor) => actor,
            Err(r) => return error(r),
        };
        let permit = match self.permit() {
            Ok(p) => p,
            Err(r) => return error(r),
        };
        let request_id = new_request_id();
        let request = call.kernel_request(
            &request_id,
            &actor,
            &self.settings.tool_prefix,
            permit.as_ref(),
        );
        let answer = self.gate.submit(request).await;
        match intercept::verdict(&answer, &request_id) {
            Verdict::Allow { .. } => {
                tracing::info!(request_id, tool = %call.name, "allowed; forwarding");
                CallDecision::Forward { request_id }
            }
            Verdict::Deny { receipt } => {
                tracing::info!(request_id, tool = %call.name, "denied");
                CallDecision::Answer(message::result_response(
                    id,
                    intercept::deny_result(&receipt, call.modern),
                ))
            }
            Verdict::Refuse(r) => {
                tracing::warn!(request_id, tool = %call.name, code = r.code, message = %r.message, "not forwarded");
                error(r)
            }
        }
    }

    fn permit(&self) -> Result<Option<Value>, Refusal> {
        let Some(path) = &self.settings.permit_file else {
            return Ok(None);
        };
        read_permit(path).map(Some).map_err(|e| Refusal {
            code: intercept::KERNEL_REFUSED,
            message: format!("kernels: {e}; the call was not forwarded"),
            data: Value::Null,
        })
    }

    /// Records in the background what the forwarded call `request_id` did.
    pub fn record(&self, request_id: String, outcome: Outcome) {
        self.outcomes.record(request_id, outcome);
    }

    /// Waits at most `limit` for outcome recordings in flight; answers how
    /// many did not finish.
    pub async fn drain(&self, limit: std::time::Duration) -> usize {
        self.outcomes.drain(limit).await
    }
}

/// Reads a permit token file (a JSON object).
pub fn read_permit(path: &std::path::Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the permit {}: {e}", path.display()))?;
    match crate::canonical::parse(&text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(format!(
            "the permit {} is not a JSON object",
            path.display()
        )),
        Err(e) => Err(format!("the permit {} is not JSON: {e}", path.display())),
    }
}

/// A fresh kernel request id: `mcp-` and 32 hex digits.
pub fn new_request_id() -> String {
    format!("mcp-{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_fresh_and_never_reserved() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert!(a.starts_with("mcp-") && a.len() == 36, "{a}");
    }
}
