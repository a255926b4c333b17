//! The jurisdiction policy: who may act, with which tools, within which limits.
//!
//! A policy is read from YAML (`config/policy.yaml`) or JSON (`PUT
//! /v1/policy`); unknown keys are an error that names the key. Evaluation
//! follows the Python library's `evaluate_policy`: every violation is
//! collected, in a fixed order, with the library's exact texts. Where the
//! library's order depends on Python's set hashing (required fields) we use
//! sorted order.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::pysem;
use super::request::Request;

/// The jurisdiction policy of a kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Actors allowed to submit (`"*"` = any). Absent = nobody.
    #[serde(default)]
    pub allowed_actors: BTreeSet<String>,
    /// Tools that may be called (`"*"` = any). Absent = none.
    #[serde(default)]
    pub allowed_tools: BTreeSet<String>,
    /// Deny requests that carry no tool call.
    #[serde(default)]
    pub require_tool_call: bool,
    /// Longest intent allowed, in code points.
    #[serde(default = "default_max_intent_length")]
    pub max_intent_length: u64,
    /// Largest `params` allowed, in bytes of canonical JSON.
    #[serde(default = "default_max_param_bytes")]
    pub max_param_bytes: u64,
    /// Request fields that must be present and non-empty.
    #[serde(default = "default_required_fields")]
    pub required_fields: BTreeSet<String>,
}

fn default_max_intent_length() -> u64 {
    4096
}

fn default_max_param_bytes() -> u64 {
    65536
}

fn default_required_fields() -> BTreeSet<String> {
    ["request_id", "actor", "intent"]
        .into_iter()
        .map(String::from)
        .collect()
}

/// One field in which two policies differ.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyChange {
    /// The field's name.
    pub field: &'static str,
    /// Its value in the old policy (null when there was none).
    pub old: Value,
    /// Its value in the new policy.
    pub new: Value,
    /// For a set: the members the new policy adds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<String>,
    /// For a set: the members the new policy removes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

/// Why a policy document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The document does not parse into a policy (bad type, unknown key, …).
    #[error("invalid policy: {0}")]
    Invalid(String),
}

impl Default for Policy {
    /// The Python library's `JurisdictionPolicy.default()`: any actor, any tool.
    fn default() -> Self {
        Policy {
            allowed_actors: ["*".to_owned()].into(),
            allowed_tools: ["*".to_owned()].into(),
            require_tool_call: false,
            max_intent_length: default_max_intent_length(),
            max_param_bytes: default_max_param_bytes(),
            required_fields: default_required_fields(),
        }
    }
}

impl Policy {
    /// The policy a kernel of `variant` has when none is configured — the
    /// Python library's defaults (the permissive kernel installs its own).
    pub fn default_for(variant: super::Variant) -> Policy {
        match variant {
            super::Variant::Permissive => Policy {
                max_intent_length: 8192,
                ..Policy::default()
            },
            _ => Policy::default(),
        }
    }

    /// Parses a YAML policy document.
    pub fn from_yaml(text: &str) -> Result<Policy, PolicyError> {
        let policy: Policy =
            serde_norway::from_str(text).map_err(|e| PolicyError::Invalid(e.to_string()))?;
        Ok(policy)
    }

    /// Parses a JSON policy value.
    pub fn from_json(value: &Value) -> Result<Policy, PolicyError> {
        if !value.is_object() {
            return Err(PolicyError::Invalid("a policy must be an object".into()));
        }
        Policy::deserialize(value).map_err(|e| PolicyError::Invalid(e.to_string()))
    }

    /// The policy as a JSON value (sets as sorted lists): the form stored in
    /// `kernel.create` / `kernel.policy_update` payloads.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a policy always serializes")
    }

    /// Canonical hash of [`Policy::to_json`].
    pub fn hash(&self) -> String {
        crate::canonical::sha256_of(&self.to_json()).expect("a policy has no floats")
    }

    /// The fields of a policy, in the order they are shown.
    pub const FIELDS: [&'static str; 6] = [
        "allowed_actors",
        "allowed_tools",
        "require_tool_call",
        "max_intent_length",
        "max_param_bytes",
        "required_fields",
    ];

    /// The fields a policy document leaves out: replacing a policy with it
    /// sets them to their defaults (which may relax the policy).
    pub fn missing_fields(doc: &Value) -> Vec<&'static str> {
        Self::FIELDS
            .into_iter()
            .filter(|f| doc.get(f).is_none())
            .collect()
    }

    /// Field by field, how `new` differs from `old` (every field of `new`
    /// when there is no old policy).
    pub fn diff(old: Option<&Policy>, new: &Policy) -> Vec<PolicyChange> {
        let old_json = old.map(Policy::to_json).unwrap_or(Value::Null);
        let new_json = new.to_json();
        let members = |v: &Value| -> BTreeSet<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        Self::FIELDS
            .into_iter()
            .filter_map(|field| {
                let (o, n) = (&old_json[field], &new_json[field]);
                if o == n {
                    return None;
                }
                let (added, removed) = if n.is_array() {
                    let (om, nm) = (members(o), members(n));
                    (
                        nm.difference(&om).cloned().collect(),
                        om.difference(&nm).cloned().collect(),
                    )
                } else {
                    (Vec::new(), Vec::new())
                };
                Some(PolicyChange {
                    field,
                    old: o.clone(),
                    new: n.clone(),
                    added,
                    removed,
                })
            })
            .collect()
    }

    /// Whether no actor at all may submit (every request would be denied).
    pub fn allows_no_actor(&self) -> bool {
        self.allowed_actors.is_empty()
    }

    /// Whether `actor` is allowed.
    pub fn allows_actor(&self, actor: &str) -> bool {
        self.allowed_actors.contains("*") || self.allowed_actors.contains(actor)
    }

    /// Whether `tool` is allowed.
    pub fn allows_tool(&self, tool: &str) -> bool {
        self.allowed_tools.contains("*") || self.allowed_tools.contains(tool)
    }

    /// Every violation of this policy by `request`, in the library's order.
    pub fn evaluate(&self, request: &Request) -> Vec<String> {
        let mut violations = Vec::new();
        for field in &self.required_fields {
            let present = match field.as_str() {
                "request_id" => !request.request_id.is_empty(),
                "actor" => !request.actor.is_empty(),
                "intent" => !request.intent.is_empty(),
                "ts_ms" => true,
                // The library only knows these four; any other name is "missing".
                _ => false,
            };
            if !present {
                violations.push(format!("Required field '{field}' is missing or empty"));
            }
        }
        if !self.allows_actor(&request.actor) {
            violations.push(format!(
                "Actor '{}' is not in allowed actors",
                request.actor
            ));
        }
        if let Some(tool) = &request.tool_call
            && !self.allows_tool(&tool.name)
        {
            violations.push(format!("Tool '{}' is not in allowed tools", tool.name));
        }
        if let Some(params) = &request.params {
            let size = request.params_canonical_len(params);
            if size as u64 > self.max_param_bytes {
                violations.push(format!(
                    "Params size ({size} bytes) exceeds maximum ({} bytes)",
                    self.max_param_bytes
                ));
            }
        }
        let intent_len = pysem::py_len(&request.intent);
        if intent_len as u64 > self.max_intent_length {
            violations.push(format!(
                "Intent length ({intent_len}) exceeds maximum ({})",
                self.max_intent_length
            ));
        }
        if let Some(tool) = &request.tool_call
            && tool.name.is_empty()
        {
            violations.push("Tool call name is empty".to_owned());
        }
        if self.require_tool_call && request.tool_call.is_none() {
            violations.push("Tool call is required by policy".to_owned());
        }
        violations
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAYBOOK: &str = "allowed_actors: [agent-001, agent-002]\nallowed_tools: [read_file, write_file, search]\nrequire_tool_call: true\nmax_intent_length: 1000\n";

    #[test]
    fn the_playbook_policy_loads_unchanged() {
        let p = Policy::from_yaml(PLAYBOOK).unwrap();
        assert!(p.allows_actor("agent-001"));
        assert!(!p.allows_actor("agent-003"));
        assert!(p.allows_tool("search"));
        assert!(p.require_tool_call);
        assert_eq!(p.max_intent_length, 1000);
        assert_eq!(p.max_param_bytes, 65536);
        assert_eq!(p.required_fields.len(), 3);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Policy::from_yaml("allowed_actors: [a]\nallowed_tool: [x]\n").unwrap_err();
        assert!(err.to_string().contains("allowed_tool"), "{err}");
        let err = Policy::from_json(&serde_json::json!({"max_intent_length": "ten"})).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
        assert!(Policy::from_yaml("max_param_bytes: -1\n").is_err());
    }

    #[test]
    fn a_partial_document_shows_what_it_relaxes() {
        let old = Policy::from_yaml(PLAYBOOK).unwrap();
        let doc = serde_json::json!({"allowed_actors": ["agent-001", "agent-003"], "allowed_tools": ["search"]});
        assert_eq!(
            Policy::missing_fields(&doc),
            [
                "require_tool_call",
                "max_intent_length",
                "max_param_bytes",
                "required_fields"
            ]
        );
        let new = Policy::from_json(&doc).unwrap();
        let changes = Policy::diff(Some(&old), &new);
        let fields: Vec<&str> = changes.iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            [
                "allowed_actors",
                "allowed_tools",
                "require_tool_call",
                "max_intent_length"
            ]
        );
        assert_eq!(changes[0].added, ["agent-003"]);
        assert_eq!(changes[0].removed, ["agent-002"]);
        assert_eq!(changes[1].removed, ["read_file", "write_file"]);
        assert_eq!(
            (&changes[2].old, &changes[2].new),
            (&serde_json::json!(true), &serde_json::json!(false))
        );
        assert_eq!(
            (&changes[3].old, &changes[3].new),
            (&serde_json::json!(1000), &serde_json::json!(4096))
        );
        assert!(Policy::diff(Some(&old), &old).is_empty());
        assert_eq!(Policy::diff(None, &old).len(), 6);
        assert!(
            Policy::from_yaml("allowed_tools: [x]\n")
                .unwrap()
                .allows_no_actor()
        );
        assert!(!old.allows_no_actor());
    }

    #[test]
    fn json_form_round_trips() {
        let p = Policy::from_yaml(PLAYBOOK).unwrap();
        assert_eq!(Policy::from_json(&p.to_json()).unwrap(), p);
        assert_eq!(p.hash().len(), 64);
    }
}
