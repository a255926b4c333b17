//! Byte-for-byte compatibility with the Python KERNELS library.
//!
//! `tests/fixtures/python/` holds scenarios recorded by running the Python
//! library itself (see its README): the requests, the clock, the policy, the
//! receipts it returned and the evidence bundle it exported. Here the same
//! steps are run through our pure kernel, and every receipt and every entry
//! hash must match — except for the few steps listed in `DIVERGENCES`, where
//! we deliberately differ (each with its reason), and whose entries are then
//! compared field by field instead of by chained hash.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kernels::bundle;
use kernels::chain::ChainVerifier;
use kernels::entry::Entry;
use kernels::kernel::{
    Compat, DecideContext, EventError, Keyring, MemoryKernel, Policy, RawRequest, Refusal, Variant,
};
use serde_json::Value;

/// Request ids whose decision we deliberately make differently, and what we
/// answer instead (`ALLOW`, or a text our error contains).
const DIVERGENCES: &[(&str, &str)] = &[
    // The library lets a permit for `add` authorise `echo` when the policy
    // allows every tool; ours binds a permit to its action (README.md, "Permits").
    ("pm-action-mismatch", "ACTION_MISMATCH"),
    // The library burns a nonce use on a refused attempt (and its own ledger
    // replay forgets it); ours counts only ALLOWed uses, as replay does.
    ("pm-denied-permit-reused", "ALLOW"),
    // These fixtures were recorded with tool calls built as the library's
    // `ToolCall` objects, whose check says "is required" for an empty name;
    // a tool call given as a JSON object takes the library's dict branch
    // (the one its own `validate` command uses), as ours always does.
    ("s-tool-empty-name", "tool_call.name cannot be empty"),
    ("p-tool-empty-name", "tool_call.name cannot be empty"),
    ("e-tool-empty-name", "tool_call.name cannot be empty"),
    ("dc-tool-empty-name", "tool_call.name cannot be empty"),
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/python")
}

fn read_json(path: &Path) -> Value {
    kernels::canonical::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| kernels::canonical::parse(l).unwrap())
        .collect()
}

fn variant_of(class: &str) -> Variant {
    match class {
        "StrictKernel" => Variant::Strict,
        "PermissiveKernel" => Variant::Permissive,
        "EvidenceFirstKernel" => Variant::EvidenceFirst,
        "DualChannelKernel" => Variant::DualChannel,
        other => panic!("unknown kernel class {other}"),
    }
}

fn policy_of(scenario: &Value, variant: Variant) -> Policy {
    match &scenario["policy"] {
        Value::Null => Policy::default_for(variant),
        p => {
            // The library's policy has two fields without effect; ours refuses unknown keys.
            let mut p = p.clone();
            let map = p.as_object_mut().unwrap();
            map.remove("allowed_states");
            map.remove("allow_intent_only");
            Policy::from_json(&p).unwrap()
        }
    }
}

fn keyring_of(scenario: &Value) -> Keyring {
    let mut ring = Keyring::new();
    if let Some(keys) = scenario["keyring"].as_object() {
        for (id, k) in keys {
            ring.insert(id.clone(), hex::decode(k["hex"].as_str().unwrap()).unwrap());
        }
    }
    ring
}

struct Outcome {
    entries: Vec<Entry>,
    compared: usize,
}

fn run_scenario(name: &str) -> Outcome {
    let dir = fixtures().join(name);
    let scenario = read_json(&dir.join("scenario.json"));
    let variant = variant_of(scenario["kernel_class"].as_str().unwrap());
    let policy = policy_of(&scenario, variant);
    let keyring = keyring_of(&scenario);
    let kernel_id = scenario["kernel_config_passed_to_boot"]["kernel_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut k = MemoryKernel::bootstrap(&kernel_id, variant, &policy);
    let steps = lines(&dir.join("requests.jsonl"));
    let receipts = lines(&dir.join("receipts.jsonl"));
    assert_eq!(steps.len(), receipts.len());
    let diverging: BTreeMap<&str, &str> = DIVERGENCES.iter().copied().collect();
    let mut diverged_seqs = std::collections::BTreeSet::new();
    let mut diverged = false;
    let mut compared = 0;

    for (step, expected) in steps.iter().zip(&receipts) {
        let now = step["clock_ms"].as_u64().unwrap();
        let ctx = DecideContext {
            now_ms: now,
            keyring: &keyring,
            jurisdiction: "default",
            external_tools: &kernels::kernel::decide::NO_EXTERNAL_TOOLS,
            // The library's entry format: no tool_name on a DENY.
            compat: Compat::Python,
        };
        match step["op"].as_str().unwrap() {
            "submit" => {
                let mut request = step["request"].clone();
                if let Some(permit) = step["permit"].as_str() {
                    request["permit"] = scenario["permits"][permit].clone();
                }
                let id = request["request_id"].as_str().unwrap_or("").to_owned();
                let raw = RawRequest::from_value(request).unwrap();
                let got = k.submit(&raw, &ctx);
                if let Some(reason) = diverging.get(id.as_str()) {
                    let got = got.unwrap();
                    let matches = if *reason == "ALLOW" {
                        got.decision == "ALLOW"
                    } else {
                        got.error.as_deref().unwrap_or("").contains(reason)
                    };
                    assert!(
                        matches,
                        "{name}/{id}: expected our deliberate {reason}, got {got:?}"
                    );
                    diverged_seqs.insert(got.ledger_seq);
                    diverged = true;
                    continue;
                }
                match (&got, expected.get("receipt")) {
                    (Ok(r), Some(want)) => {
                        let ctx = format!("{name} step {} ({id})", step["step"]);
                        assert_eq!(r.status.as_str(), want["status"], "{ctx}: status");
                        assert_eq!(r.decision, want["decision"], "{ctx}: decision");
                        assert_eq!(r.error.as_deref(), want["error"].as_str(), "{ctx}: error");
                        assert_eq!(r.ts_ms, want["ts_ms"].as_u64().unwrap(), "{ctx}: ts_ms");
                        let want_result = &want["tool_result"];
                        let got_result = r.tool_result.clone().unwrap_or(Value::Null);
                        assert_eq!(
                            kernels::canonical::to_string(&got_result).unwrap(),
                            kernels::canonical::to_string(want_result).unwrap(),
                            "{ctx}: tool_result"
                        );
                        if !diverged {
                            assert_eq!(r.evidence_hash, want["evidence_hash"], "{ctx}: entry hash");
                        }
                        compared += 1;
                    }
                    (Err(Refusal::Halted(_)), None) => {
                        assert_eq!(expected["exception"]["message"], "Kernel is halted");
                    }
                    other => panic!(
                        "{name} step {}: mismatch {other:?} vs {expected}",
                        step["step"]
                    ),
                }
            }
            "halt" => {
                let reason = step["reason"].as_str().unwrap();
                match (k.halt(now, "SYSTEM", reason), expected.get("receipt")) {
                    (Ok(r), Some(want)) => {
                        if !diverged {
                            assert_eq!(r.evidence_hash, want["evidence_hash"], "{name}: halt hash");
                        }
                        compared += 1;
                    }
                    (Err(EventError::AlreadyHalted), None) => {}
                    other => panic!("{name}: halt mismatch {other:?}"),
                }
            }
            "export" => {
                if !diverged {
                    assert_eq!(k.state.head.hash, expected["exported"]["root_hash"]);
                }
            }
            "restart_and_load_ledger" => {
                // A restart is a replay of the entries into a freshly booted kernel.
                let mut fresh = MemoryKernel::bootstrap(&kernel_id, variant, &policy);
                for e in &k.entries {
                    fresh.state.apply(e).unwrap();
                    fresh.entries.push(e.clone());
                }
                k = fresh;
            }
            op => panic!("unknown op {op}"),
        }
    }

    // Every entry the library exported, field by field: the canonical JSON of
    // its 19 hashed fields must be ours, whatever happened to the chain.
    let bundle = read_json(&dir.join("bundle.ledger_entries.json"));
    let python_entries = bundle["ledger_entries"].as_array().unwrap();
    assert_eq!(k.entries.len(), python_entries.len(), "{name}: entry count");
    for (ours, theirs) in k.entries.iter().zip(python_entries) {
        let seq = theirs["ledger_seq"].as_u64().unwrap();
        assert_eq!(ours.ledger_seq, seq);
        if diverged_seqs.contains(&seq) {
            continue;
        }
        let mut hashed = serde_json::Map::new();
        for field in kernels::entry::HASHED_FIELDS {
            hashed.insert(field.to_owned(), theirs[field].clone());
        }
        assert_eq!(
            ours.hashed_json(),
            kernels::canonical::to_string(&Value::Object(hashed)).unwrap(),
            "{name}: entry {seq}"
        );
    }
    if !diverged {
        assert_eq!(k.state.head.hash, bundle["root_hash"], "{name}: root hash");
    }
    Outcome {
        entries: k.entries,
        compared,
    }
}

macro_rules! scenario_tests {
    ($($test:ident => $dir:literal),* $(,)?) => {$(
        #[test]
        fn $test() {
            let outcome = run_scenario($dir);
            assert!(outcome.compared > 0);
            let mut v = ChainVerifier::new();
            for e in outcome.entries { v.push(e); }
            assert!(v.finish(None).valid);
        }
    )*};
}

scenario_tests! {
    strict_scenario_matches_python => "strict",
    strict_default_policy_matches_python => "strict_default_policy",
    permissive_matches_python => "permissive",
    evidence_first_matches_python => "evidence_first",
    dual_channel_matches_python => "dual_channel",
    permits_match_python => "permits",
    permits_explicit_tools_match_python => "permits_explicit_tools",
    permits_restart_matches_python => "permits_restart",
}

#[test]
fn python_bundles_verify_with_our_verifier() {
    for dir in std::fs::read_dir(fixtures()).unwrap() {
        let dir = dir.unwrap().path();
        for name in ["bundle.ledger_entries.json", "bundle.entries.json"] {
            let path = dir.join(name);
            if !path.exists() {
                continue;
            }
            let report = kernels::verify::verify_bundle_file(&path).unwrap();
            assert!(report.valid, "{}: {:?}", path.display(), report.errors);
            assert!(report.entries_verified > 0, "{}", path.display());
        }
    }
}

#[test]
fn python_float_and_string_encodings_match() {
    let table = read_json(&fixtures().join("json_encoding.json"));
    let mut checked = 0;
    for row in table["floats"].as_array().unwrap() {
        let repr = row["repr"].as_str().unwrap();
        let Ok(f) = repr.parse::<f64>() else { continue };
        if !f.is_finite() {
            continue;
        }
        let mut out = String::new();
        kernels::canonical::write_float(&mut out, f).unwrap();
        assert_eq!(out, row["ledger_json"].as_str().unwrap(), "float {repr}");
        checked += 1;
    }
    assert!(checked > 10);
    let _ = bundle::MAX_VALUE_BYTES;
}
