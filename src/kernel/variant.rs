//! Kernel variants and what each one adds to the common decision path.
//!
//! All four variants are fail-closed with jurisdiction always on (the Python
//! library forces this for three of them and defaults the fourth to it). They
//! differ in the ambiguity limits and in one extra requirement each.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::pysem;
use super::request::Request;

/// One of the four kernel variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// Maximum enforcement: strict ambiguity, jurisdiction always on.
    Strict,
    /// Relaxed ambiguity (8192-code-point intents, no strict tool checks).
    Permissive,
    /// Every request must carry non-empty `evidence`.
    EvidenceFirst,
    /// Params must carry `constraints` with `scope`, `non_goals`, `success_criteria`.
    DualChannel,
}

/// Every variant, in documentation order.
pub const ALL_VARIANTS: [Variant; 4] = [
    Variant::Strict,
    Variant::Permissive,
    Variant::EvidenceFirst,
    Variant::DualChannel,
];

const REQUIRED_CONSTRAINT_KEYS: [&str; 3] = ["non_goals", "scope", "success_criteria"];

impl Variant {
    /// The configuration name (`strict`, `evidence_first`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Strict => "strict",
            Variant::Permissive => "permissive",
            Variant::EvidenceFirst => "evidence_first",
            Variant::DualChannel => "dual_channel",
        }
    }

    /// Parses a variant name; the Python library's hyphenated names
    /// (`evidence-first`, `dual-channel`) are accepted too.
    pub fn parse(name: &str) -> Option<Variant> {
        Some(match name {
            "strict" => Variant::Strict,
            "permissive" => Variant::Permissive,
            "evidence_first" | "evidence-first" => Variant::EvidenceFirst,
            "dual_channel" | "dual-channel" => Variant::DualChannel,
            _ => return None,
        })
    }

    /// Longest intent before the ambiguity check refuses it.
    pub fn max_intent_length(self) -> u64 {
        match self {
            Variant::Permissive => 8192,
            _ => 4096,
        }
    }

    /// Whether the ambiguity check also refuses unnamed tool calls.
    pub fn strict_ambiguity(self) -> bool {
        !matches!(self, Variant::Permissive)
    }

    /// Whether ambiguity denies (always, for every variant we ship).
    pub fn fail_closed(self) -> bool {
        true
    }

    /// Whether the jurisdiction policy is evaluated (always).
    pub fn require_jurisdiction(self) -> bool {
        true
    }

    /// One line describing the variant.
    pub fn description(self) -> &'static str {
        match self {
            Variant::Strict => {
                "Maximum enforcement: strict ambiguity checks, jurisdiction always on."
            }
            Variant::Permissive => {
                "Relaxed ambiguity thresholds (intents up to 8192 code points); accepts intent-only requests."
            }
            Variant::EvidenceFirst => "Requires a non-empty evidence field on every request.",
            Variant::DualChannel => {
                "Requires params.constraints with non-empty scope, non_goals and success_criteria."
            }
        }
    }

    /// The variant's own requirements, with the library's texts.
    pub fn requirements(self, request: &Request) -> Vec<String> {
        match self {
            Variant::Strict | Variant::Permissive => Vec::new(),
            Variant::EvidenceFirst => match &request.evidence {
                None => vec!["Evidence field is required for this kernel variant".to_owned()],
                Some(e) if pysem::is_blank(e) => vec!["Evidence field cannot be empty".to_owned()],
                Some(_) => Vec::new(),
            },
            Variant::DualChannel => dual_channel(request),
        }
    }
}

fn dual_channel(request: &Request) -> Vec<String> {
    let Some(params) = &request.params else {
        return vec!["Params with constraints dict is required".to_owned()];
    };
    let constraints = match params.get("constraints") {
        None | Some(Value::Null) => {
            return vec!["Constraints dict is required in params".to_owned()];
        }
        Some(Value::Object(c)) => c,
        Some(_) => return vec!["Constraints must be a dictionary".to_owned()],
    };
    let mut errors = Vec::new();
    let missing: Vec<&str> = REQUIRED_CONSTRAINT_KEYS
        .into_iter()
        .filter(|k| !constraints.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        errors.push(format!(
            "Missing required constraint keys: {}",
            missing.join(", ")
        ));
    }
    // The library iterates a frozenset here (order depends on Python's hash
    // seed); we use sorted order.
    for key in REQUIRED_CONSTRAINT_KEYS {
        match constraints.get(key) {
            Some(Value::Null) => errors.push(format!("Constraint '{key}' cannot be empty")),
            Some(Value::String(s)) if pysem::is_blank(s) => {
                errors.push(format!("Constraint '{key}' cannot be empty"))
            }
            _ => {}
        }
    }
    errors
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::request::RawRequest;
    use serde_json::json;

    fn req(extra: Value) -> Request {
        let mut v = json!({"request_id": "r", "actor": "a", "intent": "i"});
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        RawRequest::from_value(v).unwrap().validate().unwrap()
    }

    #[test]
    fn names_round_trip_and_accept_python_spelling() {
        for v in ALL_VARIANTS {
            assert_eq!(Variant::parse(v.as_str()), Some(v));
        }
        assert_eq!(Variant::parse("dual-channel"), Some(Variant::DualChannel));
        assert_eq!(Variant::parse("lenient"), None);
    }

    #[test]
    fn evidence_first_needs_evidence() {
        let v = Variant::EvidenceFirst;
        assert_eq!(
            v.requirements(&req(json!({}))),
            vec!["Evidence field is required for this kernel variant"]
        );
        assert_eq!(
            v.requirements(&req(json!({"evidence": " \u{1f}"}))),
            vec!["Evidence field cannot be empty"]
        );
        assert!(v.requirements(&req(json!({"evidence": "log"}))).is_empty());
    }

    #[test]
    fn dual_channel_messages() {
        let v = Variant::DualChannel;
        assert_eq!(
            v.requirements(&req(json!({"params": null}))),
            vec!["Params with constraints dict is required"]
        );
        assert_eq!(
            v.requirements(&req(json!({}))),
            vec!["Constraints dict is required in params"]
        );
        assert_eq!(
            v.requirements(&req(json!({"params": {"constraints": [1]}}))),
            vec!["Constraints must be a dictionary"]
        );
        assert_eq!(
            v.requirements(&req(
                json!({"params": {"constraints": {"scope": " ", "non_goals": null}}})
            )),
            vec![
                "Missing required constraint keys: success_criteria",
                "Constraint 'non_goals' cannot be empty",
                "Constraint 'scope' cannot be empty",
            ]
        );
        assert!(v
            .requirements(&req(json!({"params": {"constraints": {"scope": "s", "non_goals": [], "success_criteria": 0}}})))
            .is_empty());
    }
}
