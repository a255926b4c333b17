//! Permit tokens: HMAC-SHA256 capabilities that authorise one tool call.
//!
//! A permit is bound to its issuer, subject (the actor), jurisdiction, action
//! (the tool), params, validity window, nonce and `max_executions`, and signed
//! with a key from the kernel's keyring. Verification follows the Python
//! library's `verify_permit`, with two deliberate differences, both so that the
//! state stays a pure function of the ledger:
//!
//! * a nonce use is consumed only by a request that is finally ALLOWed (the
//!   only uses the ledger records; the library also burns a use on refused
//!   attempts, which its own ledger replay then forgets);
//! * the permit's action must equal the tool called (`ACTION_MISMATCH`); the
//!   library accepts any action when the policy allows every tool.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;

use super::pysem;

/// HMAC keys by key id.
pub type Keyring = BTreeMap<String, Vec<u8>>;

/// Nonce use counts, keyed by `(nonce, issuer, subject)`.
pub type NonceCounts = BTreeMap<(String, String, String), u64>;

/// A permit token, in the library's field layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermitToken {
    /// SHA-256 of the canonical permit without id and signature.
    pub permit_id: String,
    /// Who issued it.
    pub issuer: String,
    /// The actor it authorises.
    pub subject: String,
    /// Jurisdiction it is valid in.
    pub jurisdiction: String,
    /// The tool it authorises.
    pub action: String,
    /// Params the request may use (a request's params must be a subset).
    pub params: Map<String, Value>,
    /// Extra constraints (`forbidden_params`, …).
    pub constraints: Map<String, Value>,
    /// How many times it may be used.
    pub max_executions: u64,
    /// Start of validity (inclusive).
    pub valid_from_ms: u64,
    /// End of validity (inclusive).
    pub valid_until_ms: u64,
    /// Hash of the evidence it was issued on.
    pub evidence_hash: String,
    /// Hash of the proposal it answers.
    pub proposal_hash: String,
    /// Unique nonce (≥ 32 characters).
    pub nonce: String,
    /// Hex HMAC-SHA256 over the canonical permit.
    pub signature: String,
    /// Keyring id of the signing key.
    pub key_id: String,
}

/// Outcome of checking a permit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PermitCheck {
    /// Every check passed.
    Allowed,
    /// Refused, with the library's reason codes in order.
    Denied(Vec<String>),
}

/// What the kernel checks a permit against.
#[derive(Debug, Clone, Copy)]
pub struct PermitContext<'a> {
    /// Signing keys.
    pub keyring: &'a Keyring,
    /// Nonce uses recorded so far.
    pub nonce_counts: &'a NonceCounts,
    /// The kernel's clock.
    pub now_ms: u64,
    /// The kernel's jurisdiction name.
    pub jurisdiction: &'a str,
    /// The policy's allowed tools.
    pub allowed_tools: &'a std::collections::BTreeSet<String>,
    /// The requesting actor.
    pub actor: &'a str,
    /// The tool being called.
    pub tool: &'a str,
    /// The request's params (`{}` when absent).
    pub request_params: &'a Map<String, Value>,
}

impl PermitToken {
    /// Reads a permit object; `None` when it is not a well-formed permit
    /// (the library refuses such tokens at construction).
    pub fn from_value(value: &Value) -> Option<PermitToken> {
        let token: PermitToken = serde_json::from_value(value.clone()).ok()?;
        let ok = !token.issuer.is_empty()
            && !token.subject.is_empty()
            && !token.jurisdiction.is_empty()
            && !token.action.is_empty()
            && token.max_executions >= 1
            && token.valid_until_ms > token.valid_from_ms
            && !token.proposal_hash.is_empty()
            && token.nonce.chars().count() >= 32
            && !token.key_id.is_empty();
        ok.then_some(token)
    }

    /// The permit as JSON.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a permit always serializes")
    }

    /// The library's `canonical_permit_bytes` (UTF-8, sorted keys).
    pub fn canonical_bytes(&self, with_permit_id: bool) -> Vec<u8> {
        let mut value = self.to_value();
        let map = value.as_object_mut().expect("a permit is an object");
        map.remove("signature");
        if !with_permit_id {
            map.remove("permit_id");
        }
        crate::canonical::to_string_utf8(&value)
            .unwrap_or_default()
            .into_bytes()
    }

    /// The id this permit should have.
    pub fn compute_id(&self) -> String {
        crate::canonical::sha256_hex(&self.canonical_bytes(false))
    }

    /// The signature this permit should carry under `key`.
    pub fn compute_signature(&self, key: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(&self.canonical_bytes(true));
        hex::encode(mac.finalize().into_bytes())
    }

    /// Fills in `permit_id` and `signature` (what an issuer does).
    pub fn sign(mut self, key_id: &str, key: &[u8]) -> PermitToken {
        self.key_id = key_id.to_owned();
        self.permit_id = self.compute_id();
        self.signature = self.compute_signature(key);
        self
    }

    /// The nonce-count key of this permit.
    pub fn nonce_key(&self) -> (String, String, String) {
        (
            self.nonce.clone(),
            self.issuer.clone(),
            self.subject.clone(),
        )
    }

    /// The library's `verify_permit` (see the module doc for our two changes).
    pub fn verify(&self, ctx: &PermitContext<'_>) -> PermitCheck {
        let Some(key) = ctx.keyring.get(&self.key_id) else {
            return PermitCheck::Denied(vec!["UNKNOWN_KEY_ID".into()]);
        };
        let expected = self.compute_signature(key);
        if !constant_time_eq(self.signature.as_bytes(), expected.as_bytes()) {
            return PermitCheck::Denied(vec!["SIGNATURE_INVALID".into()]);
        }
        if self.permit_id != self.compute_id() {
            return PermitCheck::Denied(vec!["PERMIT_ID_MISMATCH".into()]);
        }
        let mut reasons: Vec<String> = Vec::new();
        if ctx.now_ms < self.valid_from_ms {
            reasons.push("NOT_YET_VALID".into());
        }
        if ctx.now_ms > self.valid_until_ms {
            reasons.push("EXPIRED".into());
        }
        if self.jurisdiction != ctx.jurisdiction {
            reasons.push("JURISDICTION_MISMATCH".into());
        }
        if !ctx.allowed_tools.contains("*") && !ctx.allowed_tools.contains(&self.action) {
            reasons.push("ACTION_NOT_ALLOWED".into());
        } else if self.action != ctx.tool {
            // Ours: the library never compares the action with the tool called.
            reasons.push("ACTION_MISMATCH".into());
        }
        if self.subject != ctx.actor {
            reasons.push("SUBJECT_MISMATCH".into());
        }
        let params_ok = ctx
            .request_params
            .iter()
            .all(|(k, v)| self.params.get(k).is_some_and(|p| pysem::py_eq(p, v)));
        if !params_ok {
            reasons.push("PARAMS_MISMATCH".into());
        }
        let used = ctx
            .nonce_counts
            .get(&self.nonce_key())
            .copied()
            .unwrap_or(0);
        if used > 0 && used >= self.max_executions {
            reasons.push("REPLAY_DETECTED".into());
        }
        if let Some(forbidden) = self.constraints.get("forbidden_params") {
            match forbidden {
                Value::Array(items) => {
                    for item in items {
                        if let Value::String(name) = item
                            && ctx.request_params.contains_key(name)
                        {
                            reasons.push(format!("FORBIDDEN_PARAM_DETECTED:{name}"));
                        }
                    }
                }
                _ => reasons.push("CONSTRAINT_MALFORMED_FORBIDDEN_PARAMS".into()),
            }
        }
        if reasons.is_empty() {
            PermitCheck::Allowed
        } else {
            PermitCheck::Denied(reasons)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Parses a keyring given as `key_id -> hex secret`.
pub fn keyring_from_hex(entries: &BTreeMap<String, String>) -> Result<Keyring, String> {
    entries
        .iter()
        .map(|(id, secret)| {
            hex::decode(secret.trim())
                .map(|bytes| (id.clone(), bytes))
                .map_err(|e| format!("permit key '{id}' is not hex: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keyring() -> Keyring {
        [(
            "k1".to_owned(),
            b"secret-key-0123456789abcdef01234".to_vec(),
        )]
        .into()
    }

    fn permit() -> PermitToken {
        PermitToken {
            permit_id: String::new(),
            issuer: "ops".into(),
            subject: "alice".into(),
            jurisdiction: "default".into(),
            action: "echo".into(),
            params: json!({"text": "hé"}).as_object().unwrap().clone(),
            constraints: Map::new(),
            max_executions: 1,
            valid_from_ms: 100,
            valid_until_ms: 200,
            evidence_hash: String::new(),
            proposal_hash: "p".into(),
            nonce: "0123456789abcdef0123456789abcdef".into(),
            signature: String::new(),
            key_id: String::new(),
        }
        .sign("k1", b"secret-key-0123456789abcdef01234")
    }

    fn check(
        p: &PermitToken,
        counts: &NonceCounts,
        now: u64,
        actor: &str,
        params: Value,
    ) -> PermitCheck {
        let tools = ["*".to_owned()].into();
        p.verify(&PermitContext {
            keyring: &keyring(),
            nonce_counts: counts,
            now_ms: now,
            jurisdiction: "default",
            allowed_tools: &tools,
            actor,
            tool: "echo",
            request_params: params.as_object().unwrap(),
        })
    }

    #[test]
    fn a_signed_permit_verifies_once() {
        let p = permit();
        let mut counts = NonceCounts::new();
        assert_eq!(
            check(&p, &counts, 150, "alice", json!({"text": "hé"})),
            PermitCheck::Allowed
        );
        counts.insert(p.nonce_key(), 1);
        assert_eq!(
            check(&p, &counts, 150, "alice", json!({})),
            PermitCheck::Denied(vec!["REPLAY_DETECTED".into()])
        );
    }

    #[test]
    fn reasons_are_collected_in_order() {
        let p = permit();
        assert_eq!(
            check(&p, &NonceCounts::new(), 300, "bob", json!({"text": "x"})),
            PermitCheck::Denied(vec![
                "EXPIRED".into(),
                "SUBJECT_MISMATCH".into(),
                "PARAMS_MISMATCH".into()
            ])
        );
        let mut tampered = p.clone();
        tampered.max_executions = 5;
        assert_eq!(
            check(&tampered, &NonceCounts::new(), 150, "alice", json!({})),
            PermitCheck::Denied(vec!["SIGNATURE_INVALID".into()])
        );
    }

    #[test]
    fn malformed_permits_are_refused() {
        let mut v = permit().to_value();
        v["nonce"] = json!("short");
        assert!(PermitToken::from_value(&v).is_none());
        assert!(PermitToken::from_value(&json!({"permit_id": "x"})).is_none());
        assert!(PermitToken::from_value(&permit().to_value()).is_some());
    }
}
