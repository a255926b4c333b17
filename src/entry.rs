//! Ledger entries: the one record type of `kernels`, and how each is hashed.
//!
//! Decisions and operational events share this shape: the Python library's
//! entry, extended by an optional payload (see README.md). An entry
//! has 22 fields; `entry_hash` covers the 19 that are neither `ledger_seq`,
//! `prev_hash` nor `entry_hash` itself, chained to the previous entry:
//! `sha256_hex(prev_hash + ":" + canonical(E))`. Operational events carry their
//! full payload beside the entry; its canonical hash is the entry's
//! `params_hash`, so the payload is covered by the chain too.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::canonical::{self, CanonicalError};

/// A text field of an entry (`request_id`, `actor`, `intent`): a string,
/// except in the denial of a malformed request, where the Python library
/// records whatever JSON value the request carried (`42`, `null`, …) and we
/// must hash exactly that.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Text(pub Value);

impl Text {
    /// The string, or `""` when the value is not a string.
    pub fn as_str(&self) -> &str {
        self.0.as_str().unwrap_or("")
    }

    /// The raw JSON value.
    pub fn value(&self) -> &Value {
        &self.0
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text(Value::String(s))
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text(Value::String(s.to_owned()))
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Value::String(s) => f.write_str(s),
            other => write!(f, "{other}"),
        }
    }
}

/// The `prev_hash` of the first entry of a chain: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One ledger record, exactly as exported in evidence bundles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Position in the chain.
    pub ledger_seq: u64,
    /// `entry_hash` of the previous entry (genesis for the first).
    pub prev_hash: String,
    /// Hash of this entry, chained to `prev_hash`.
    pub entry_hash: String,
    /// The kernel's clock when the entry was made (not the request's).
    pub ts_ms: u64,
    /// Request id (`HALT` for a halt; the event name's request id for events).
    pub request_id: Text,
    /// Who asked: the agent, the operator, or `SYSTEM`.
    pub actor: Text,
    /// What was asked, or what the event did and why.
    pub intent: Text,
    /// `ALLOW`, `DENY` or `HALT`.
    pub decision: String,
    /// Kernel state before the entry.
    pub state_from: String,
    /// Kernel state after the entry.
    pub state_to: String,
    /// Tool called (or `kernel.<event>` for operational events).
    #[serde(default)]
    pub tool_name: Option<String>,
    /// Hash of the request params, or of the event payload.
    #[serde(default)]
    pub params_hash: Option<String>,
    /// Hash of the request's evidence text.
    #[serde(default)]
    pub evidence_hash: Option<String>,
    /// Denial or failure text.
    #[serde(default)]
    pub error: Option<String>,
    /// Permit id of the permit presented, if any.
    #[serde(default)]
    pub permit_digest: Option<String>,
    /// `ALLOW` or `DENY` when a permit was checked.
    #[serde(default)]
    pub permit_verification: Option<String>,
    /// Why the permit was refused (null when empty).
    #[serde(default)]
    pub permit_denial_reasons: Option<Vec<String>>,
    /// Proposal hash bound by the permit.
    #[serde(default)]
    pub proposal_hash: Option<String>,
    /// Permit nonce (replay protection is rebuilt from these).
    #[serde(default)]
    pub permit_nonce: Option<String>,
    /// Permit issuer.
    #[serde(default)]
    pub permit_issuer: Option<String>,
    /// Permit subject.
    #[serde(default)]
    pub permit_subject: Option<String>,
    /// Permit's execution budget.
    #[serde(default)]
    pub permit_max_executions: Option<u64>,
    /// Full payload of an operational event (hash = `params_hash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

/// The 19 hashed fields of an entry, before it is sealed into the chain.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EntryBody {
    /// See [`Entry::ts_ms`].
    pub ts_ms: u64,
    /// See [`Entry::request_id`].
    pub request_id: Text,
    /// See [`Entry::actor`].
    pub actor: Text,
    /// See [`Entry::intent`].
    pub intent: Text,
    /// See [`Entry::decision`].
    pub decision: String,
    /// See [`Entry::state_from`].
    pub state_from: String,
    /// See [`Entry::state_to`].
    pub state_to: String,
    /// See [`Entry::tool_name`].
    pub tool_name: Option<String>,
    /// See [`Entry::params_hash`].
    pub params_hash: Option<String>,
    /// See [`Entry::evidence_hash`].
    pub evidence_hash: Option<String>,
    /// See [`Entry::error`].
    pub error: Option<String>,
    /// See [`Entry::permit_digest`].
    pub permit_digest: Option<String>,
    /// See [`Entry::permit_verification`].
    pub permit_verification: Option<String>,
    /// See [`Entry::permit_denial_reasons`].
    pub permit_denial_reasons: Option<Vec<String>>,
    /// See [`Entry::proposal_hash`].
    pub proposal_hash: Option<String>,
    /// See [`Entry::permit_nonce`].
    pub permit_nonce: Option<String>,
    /// See [`Entry::permit_issuer`].
    pub permit_issuer: Option<String>,
    /// See [`Entry::permit_subject`].
    pub permit_subject: Option<String>,
    /// See [`Entry::permit_max_executions`].
    pub permit_max_executions: Option<u64>,
    /// See [`Entry::payload`].
    pub payload: Option<Value>,
}

impl EntryBody {
    /// Seals the body into the chain after `prev_hash` at position `seq`.
    pub fn seal(self, seq: u64, prev_hash: &str) -> Entry {
        let mut entry = Entry {
            ledger_seq: seq,
            prev_hash: prev_hash.to_owned(),
            entry_hash: String::new(),
            ts_ms: self.ts_ms,
            request_id: self.request_id,
            actor: self.actor,
            intent: self.intent,
            decision: self.decision,
            state_from: self.state_from,
            state_to: self.state_to,
            tool_name: self.tool_name,
            params_hash: self.params_hash,
            evidence_hash: self.evidence_hash,
            error: self.error,
            permit_digest: self.permit_digest,
            permit_verification: self.permit_verification,
            permit_denial_reasons: self.permit_denial_reasons.filter(|r| !r.is_empty()),
            proposal_hash: self.proposal_hash,
            permit_nonce: self.permit_nonce,
            permit_issuer: self.permit_issuer,
            permit_subject: self.permit_subject,
            permit_max_executions: self.permit_max_executions,
            payload: self.payload,
        };
        entry.entry_hash = entry.compute_hash();
        entry
    }
}

impl Entry {
    /// Recomputes `entry_hash` from `prev_hash` and the 19 hashed fields.
    pub fn compute_hash(&self) -> String {
        let mut text = String::with_capacity(512);
        text.push_str(&self.prev_hash);
        text.push(':');
        self.write_hashed_fields(&mut text);
        hex::encode(Sha256::digest(text.as_bytes()))
    }

    /// The canonical JSON of the 19 hashed fields (keys in sorted order).
    pub fn hashed_json(&self) -> String {
        let mut text = String::with_capacity(512);
        self.write_hashed_fields(&mut text);
        text
    }

    fn write_hashed_fields(&self, out: &mut String) {
        let reasons: Option<Vec<&str>> = self
            .permit_denial_reasons
            .as_ref()
            .map(|r| r.iter().map(String::as_str).collect());
        HashedRef {
            actor: TextRef::of(&self.actor),
            decision: &self.decision,
            error: self.error.as_deref(),
            evidence_hash: self.evidence_hash.as_deref(),
            intent: TextRef::of(&self.intent),
            params_hash: self.params_hash.as_deref(),
            permit_denial_reasons: reasons.as_deref(),
            permit_digest: self.permit_digest.as_deref(),
            permit_issuer: self.permit_issuer.as_deref(),
            permit_max_executions: self.permit_max_executions,
            permit_nonce: self.permit_nonce.as_deref(),
            permit_subject: self.permit_subject.as_deref(),
            permit_verification: self.permit_verification.as_deref(),
            proposal_hash: self.proposal_hash.as_deref(),
            request_id: TextRef::of(&self.request_id),
            state_from: &self.state_from,
            state_to: &self.state_to,
            tool_name: self.tool_name.as_deref(),
            ts_ms: self.ts_ms,
        }
        .write(out);
    }

    /// Checks a stored payload against `params_hash`; `None` when there is no payload.
    pub fn payload_matches(&self) -> Option<Result<bool, CanonicalError>> {
        let payload = self.payload.as_ref()?;
        Some(canonical::sha256_of(payload).map(|h| self.params_hash.as_deref() == Some(&h)))
    }
}

fn opt_str(out: &mut String, value: Option<&str>) {
    match value {
        Some(s) => canonical::write_str(out, s),
        None => out.push_str("null"),
    }
}

/// Which entries an investigation looks at (play 3.2): every field given
/// must match, none given matches all. The one rule behind the filters of
/// `GET /v1/entries` and `kernels investigate`.
#[derive(Debug, Clone, Copy, Default)]
pub struct EntryFilter<'a> {
    /// The entry's `actor`.
    pub actor: Option<&'a str>,
    /// The entry's `tool_name` (denied requests name the tool they asked
    /// for, events their `kernel.*` name).
    pub tool: Option<&'a str>,
    /// The entry's `decision` (`ALLOW`, `DENY` or `HALT`).
    pub decision: Option<&'a str>,
    /// The entry's `request_id`.
    pub request_id: Option<&'a str>,
}

impl EntryFilter<'_> {
    /// Whether `entry` passes the filter.
    pub fn matches(&self, entry: &Entry) -> bool {
        self.actor.is_none_or(|a| entry.actor.as_str() == a)
            && self
                .tool
                .is_none_or(|t| entry.tool_name.as_deref() == Some(t))
            && self.decision.is_none_or(|d| entry.decision == d)
            && self
                .request_id
                .is_none_or(|id| entry.request_id.as_str() == id)
    }
}

/// A text field, borrowed: a string, or (for invalid requests) any JSON value.
#[derive(Debug, Clone, Copy)]
pub enum TextRef<'a> {
    /// A string.
    Str(&'a str),
    /// Another JSON value.
    Json(&'a Value),
}

impl<'a> TextRef<'a> {
    /// Borrows a [`Text`].
    pub fn of(t: &'a Text) -> TextRef<'a> {
        match &t.0 {
            Value::String(s) => TextRef::Str(s),
            other => TextRef::Json(other),
        }
    }

    fn write(self, out: &mut String) {
        match self {
            TextRef::Str(s) => canonical::write_str(out, s),
            TextRef::Json(v) => {
                canonical::write_value(out, v).unwrap_or_else(|_| out.push_str("null"))
            }
        }
    }
}

/// The 19 hashed fields of an entry, borrowed from wherever they are (an
/// [`Entry`], or an entry being verified straight from a bundle's bytes).
#[derive(Debug, Clone, Copy)]
pub struct HashedRef<'a> {
    /// `actor`.
    pub actor: TextRef<'a>,
    /// `decision`.
    pub decision: &'a str,
    /// `error`.
    pub error: Option<&'a str>,
    /// `evidence_hash`.
    pub evidence_hash: Option<&'a str>,
    /// `intent`.
    pub intent: TextRef<'a>,
    /// `params_hash`.
    pub params_hash: Option<&'a str>,
    /// `permit_denial_reasons` (empty hashes as null).
    pub permit_denial_reasons: Option<&'a [&'a str]>,
    /// `permit_digest`.
    pub permit_digest: Option<&'a str>,
    /// `permit_issuer`.
    pub permit_issuer: Option<&'a str>,
    /// `permit_max_executions`.
    pub permit_max_executions: Option<u64>,
    /// `permit_nonce`.
    pub permit_nonce: Option<&'a str>,
    /// `permit_subject`.
    pub permit_subject: Option<&'a str>,
    /// `permit_verification`.
    pub permit_verification: Option<&'a str>,
    /// `proposal_hash`.
    pub proposal_hash: Option<&'a str>,
    /// `request_id`.
    pub request_id: TextRef<'a>,
    /// `state_from`.
    pub state_from: &'a str,
    /// `state_to`.
    pub state_to: &'a str,
    /// `tool_name`.
    pub tool_name: Option<&'a str>,
    /// `ts_ms`.
    pub ts_ms: u64,
}

impl HashedRef<'_> {
    /// Appends the canonical JSON of the 19 fields (keys in code-point order,
    /// as Python's `sort_keys=True` writes them).
    pub fn write(&self, out: &mut String) {
        out.push_str("{\"actor\":");
        self.actor.write(out);
        out.push_str(",\"decision\":");
        canonical::write_str(out, self.decision);
        out.push_str(",\"error\":");
        opt_str(out, self.error);
        out.push_str(",\"evidence_hash\":");
        opt_str(out, self.evidence_hash);
        out.push_str(",\"intent\":");
        self.intent.write(out);
        out.push_str(",\"params_hash\":");
        opt_str(out, self.params_hash);
        out.push_str(",\"permit_denial_reasons\":");
        match self.permit_denial_reasons {
            Some(reasons) if !reasons.is_empty() => {
                out.push('[');
                for (i, r) in reasons.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    canonical::write_str(out, r);
                }
                out.push(']');
            }
            _ => out.push_str("null"),
        }
        out.push_str(",\"permit_digest\":");
        opt_str(out, self.permit_digest);
        out.push_str(",\"permit_issuer\":");
        opt_str(out, self.permit_issuer);
        out.push_str(",\"permit_max_executions\":");
        match self.permit_max_executions {
            Some(n) => {
                let _ = write!(out, "{n}");
            }
            None => out.push_str("null"),
        }
        out.push_str(",\"permit_nonce\":");
        opt_str(out, self.permit_nonce);
        out.push_str(",\"permit_subject\":");
        opt_str(out, self.permit_subject);
        out.push_str(",\"permit_verification\":");
        opt_str(out, self.permit_verification);
        out.push_str(",\"proposal_hash\":");
        opt_str(out, self.proposal_hash);
        out.push_str(",\"request_id\":");
        self.request_id.write(out);
        out.push_str(",\"state_from\":");
        canonical::write_str(out, self.state_from);
        out.push_str(",\"state_to\":");
        canonical::write_str(out, self.state_to);
        out.push_str(",\"tool_name\":");
        opt_str(out, self.tool_name);
        let _ = write!(out, ",\"ts_ms\":{}}}", self.ts_ms);
    }

    /// `sha256_hex(prev_hash + ":" + canonical(fields))`.
    pub fn chain_hash(&self, prev_hash: &str) -> String {
        let mut text = String::with_capacity(768);
        text.push_str(prev_hash);
        text.push(':');
        self.write(&mut text);
        hex::encode(Sha256::digest(text.as_bytes()))
    }
}

/// The names of the 19 hashed fields, in canonical (sorted) order.
pub const HASHED_FIELDS: [&str; 19] = [
    "actor",
    "decision",
    "error",
    "evidence_hash",
    "intent",
    "params_hash",
    "permit_denial_reasons",
    "permit_digest",
    "permit_issuer",
    "permit_max_executions",
    "permit_nonce",
    "permit_subject",
    "permit_verification",
    "proposal_hash",
    "request_id",
    "state_from",
    "state_to",
    "tool_name",
    "ts_ms",
];

/// Hash of an entry given as a loose JSON object (any field types), the way the
/// Python library would hash it: the 19 fields, absent ones as null.
pub fn compute_hash_of_value(
    prev_hash: &str,
    object: &serde_json::Map<String, Value>,
) -> Result<String, CanonicalError> {
    let mut hashed = serde_json::Map::new();
    for key in HASHED_FIELDS {
        let mut value = object.get(key).cloned().unwrap_or(Value::Null);
        if key == "permit_denial_reasons" && value.as_array().is_some_and(|a| a.is_empty()) {
            value = Value::Null;
        }
        hashed.insert(key.to_owned(), value);
    }
    let mut text = String::with_capacity(512);
    text.push_str(prev_hash);
    text.push(':');
    canonical::write_value(&mut text, &Value::Object(hashed))?;
    Ok(canonical::sha256_hex(text.as_bytes()))
}

/// A valid chain of `n` simple decision entries starting at `from`, linked
/// to `anchor` (tests).
#[cfg(test)]
pub(crate) fn test_chain(n: u64, from: u64, anchor: &str) -> Vec<Entry> {
    let mut prev = anchor.to_owned();
    (from..from + n)
        .map(|i| {
            let e = EntryBody {
                ts_ms: i,
                request_id: format!("r{i}").into(),
                actor: "a".into(),
                intent: "i".into(),
                decision: "ALLOW".into(),
                state_from: "IDLE".into(),
                state_to: "IDLE".into(),
                ..EntryBody::default()
            }
            .seal(i, &prev);
            prev = e.entry_hash.clone();
            e
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> EntryBody {
        EntryBody {
            ts_ms: 1000,
            request_id: "req-1".into(),
            actor: "agent-001".into(),
            intent: "read é".into(),
            decision: "ALLOW".into(),
            state_from: "IDLE".into(),
            state_to: "IDLE".into(),
            tool_name: Some("echo".into()),
            permit_denial_reasons: Some(vec![]),
            permit_max_executions: Some(3),
            ..EntryBody::default()
        }
    }

    #[test]
    fn fast_hash_equals_generic_hash() {
        let entry = body().seal(0, GENESIS_HASH);
        let value = serde_json::to_value(&entry).unwrap();
        let generic = compute_hash_of_value(GENESIS_HASH, value.as_object().unwrap()).unwrap();
        assert_eq!(entry.entry_hash, generic);
        let mut keys: Vec<&str> = HASHED_FIELDS.to_vec();
        keys.sort_unstable();
        assert_eq!(keys, HASHED_FIELDS, "HASHED_FIELDS must be sorted");
    }

    #[test]
    fn empty_denial_reasons_hash_as_null() {
        let entry = body().seal(0, GENESIS_HASH);
        assert_eq!(entry.permit_denial_reasons, None);
        assert!(
            entry
                .hashed_json()
                .contains("\"permit_denial_reasons\":null")
        );
    }

    #[test]
    fn any_field_change_changes_the_hash() {
        let entry = body().seal(0, GENESIS_HASH);
        let mut other = entry.clone();
        other.intent = "read é!".into();
        assert_ne!(other.compute_hash(), entry.entry_hash);
        let mut other = entry.clone();
        other.prev_hash = "1".repeat(64);
        assert_ne!(other.compute_hash(), entry.entry_hash);
    }

    #[test]
    fn a_filter_passes_what_matches_every_field_it_gives() {
        let entry = body().seal(0, GENESIS_HASH);
        let all = EntryFilter::default();
        assert!(all.matches(&entry));
        let exact = EntryFilter {
            actor: Some("agent-001"),
            tool: Some("echo"),
            decision: Some("ALLOW"),
            request_id: Some("req-1"),
        };
        assert!(exact.matches(&entry));
        for miss in [
            EntryFilter {
                actor: Some("agent-002"),
                ..exact
            },
            EntryFilter {
                tool: Some("add"),
                ..exact
            },
            EntryFilter {
                decision: Some("DENY"),
                ..exact
            },
            EntryFilter {
                request_id: Some("req-2"),
                ..exact
            },
        ] {
            assert!(!miss.matches(&entry), "{miss:?}");
        }
        // An entry that names no tool passes only a filter without one.
        let toolless = EntryBody {
            tool_name: None,
            ..body()
        }
        .seal(0, GENESIS_HASH);
        let by_tool = EntryFilter {
            tool: Some("echo"),
            ..all
        };
        assert!(!by_tool.matches(&toolless));
        assert!(all.matches(&toolless));
    }
}
