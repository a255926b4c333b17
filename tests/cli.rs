//! The `kernels` command line, run as the real binary in fresh temp dirs:
//! exit codes and output of every offline command, and the data-dir
//! commands on a ledger written by a real `kernels serve` (stopped with
//! SIGTERM, restarted, and tampered with).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::datadir::flip_stored_byte;
use support::http;
use support::process::{AGENT, AUDITOR, OPERATOR, ServeConfig, Server, run};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temp dir")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/python")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_vec(value).unwrap()).unwrap();
}

/// The entry indices named by a `verify --json` report.
fn entries_of(doc: &mut Value) -> &mut Vec<Value> {
    doc["ledger_entries"].as_array_mut().unwrap()
}

fn error_indices(report: &Value) -> BTreeSet<u64> {
    report["errors"]
        .as_array()
        .expect("errors is an array")
        .iter()
        .filter_map(|e| e["index"].as_u64())
        .collect()
}

// ---------------------------------------------------------------- version, info

#[test]
fn version_and_info() {
    let tmp = tempdir();
    let version = env!("CARGO_PKG_VERSION");

    let out = run(tmp.path(), &["--version"], None);
    out.expect_code(0, "--version");
    assert_eq!(out.stdout.trim(), format!("kernels {version}"));

    let out = run(tmp.path(), &["info"], None);
    out.expect_code(0, "info");
    assert!(
        out.stdout.starts_with(&format!("kernels {version}\n")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "storage format version: {}",
            kernels::STORAGE_FORMAT_VERSION
        )),
        "{}",
        out.stdout
    );
    for variant in ["strict", "permissive", "evidence_first", "dual_channel"] {
        assert!(out.stdout.contains(variant), "info lists {variant}");
    }
    assert!(out.stderr.is_empty(), "{}", out.stderr);

    let out = run(tmp.path(), &["info", "--json"], None);
    out.expect_code(0, "info --json");
    let info = out.json();
    assert_eq!(info["version"], version);
    assert_eq!(
        info["storage_format_version"],
        kernels::STORAGE_FORMAT_VERSION
    );
    assert_eq!(info["hash"], "sha256");
    let names: BTreeSet<&str> = info["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["dual_channel", "evidence_first", "permissive", "strict"])
    );
    for v in info["variants"].as_array().unwrap() {
        assert!(v["fail_closed"].is_boolean(), "{v}");
        assert!(v["max_intent_length"].as_u64().unwrap() > 0, "{v}");
    }
    let strict = info["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "strict")
        .unwrap();
    assert_eq!(strict["fail_closed"], true);

    // No command, or an unknown one: a usage error, exit 2.
    let out = run(tmp.path(), &[], None);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("Usage"), "{}", out.stderr);
    let out = run(tmp.path(), &["frobnicate"], None);
    assert_eq!(out.code, Some(2), "{out:?}");
}

// ---------------------------------------------------------------- canonical

/// A document with every awkward case, and what Python's
/// `json.dumps(x, sort_keys=True, separators=(",", ":"))` prints for it
/// (produced with CPython 3 from this very file).
const TRICKY: &str = r#"{
  "b": 1,
  "a": "h\u00e9llo \ud83d\ude42",
  "raw": "héllo 🙂 ﬁ",
  "nested": {"\u00e9": 1, "e": 2, "\ud83d\ude42": 3, "\uff61": 4, "Z": 5, "a": 6, "": 7},
  "floats": [0.1, 3.0, -0.0, 1e20, 1e-5, 1.5e-7, 1e16, 1e15, 100.0, 1E5, 2.5e-3, 123456789.123456789, 5e-324, 1e308, 0.1e1, 12345678901234567890.0],
  "ints": [0, -0, 123456789012345678901234567890, -123456789012345678901234567890, 9007199254740993],
  "s": "q\"b\\ n\n t\t b\b f\f r\r / \u0001 \u001f \u007f \u2028 \u00a0 zwsp\u200b",
  "empty": {}, "list": [], "t": true, "f": false, "n": null
}
"#;

const TRICKY_CANONICAL: &str = r#"{"a":"h\u00e9llo \ud83d\ude42","b":1,"empty":{},"f":false,"floats":[0.1,3.0,-0.0,1e+20,1e-05,1.5e-07,1e+16,1000000000000000.0,100.0,100000.0,0.0025,123456789.12345679,5e-324,1e+308,1.0,1.2345678901234567e+19],"ints":[0,0,123456789012345678901234567890,-123456789012345678901234567890,9007199254740993],"list":[],"n":null,"nested":{"":7,"Z":5,"a":6,"e":2,"\u00e9":1,"\uff61":4,"\ud83d\ude42":3},"raw":"h\u00e9llo \ud83d\ude42 \ufb01","s":"q\"b\\ n\n t\t b\b f\f r\r / \u0001 \u001f \u007f \u2028 \u00a0 zwsp\u200b","t":true}"#;

#[test]
fn canonical_prints_what_python_prints() {
    let tmp = tempdir();
    let file = tmp.path().join("doc.json");
    std::fs::write(&file, TRICKY).unwrap();
    let want_hash = sha256_hex(TRICKY_CANONICAL.as_bytes());

    let out = run(tmp.path(), &["canonical", path_str(&file)], None);
    out.expect_code(0, "canonical FILE");
    assert_eq!(out.stdout, format!("{TRICKY_CANONICAL}\n"));
    assert!(out.stdout.is_ascii(), "ensure_ascii: only ASCII is printed");
    assert!(out.stderr.is_empty(), "{}", out.stderr);

    let out = run(
        tmp.path(),
        &["canonical", "--sha256", path_str(&file)],
        None,
    );
    out.expect_code(0, "canonical --sha256 FILE");
    assert_eq!(out.stdout, format!("{want_hash}\n"));

    let out = run(tmp.path(), &["canonical", "-"], Some(TRICKY.as_bytes()));
    out.expect_code(0, "canonical -");
    assert_eq!(out.stdout, format!("{TRICKY_CANONICAL}\n"));

    let out = run(tmp.path(), &["canonical"], Some(TRICKY.as_bytes()));
    out.expect_code(0, "canonical (stdin by default)");
    assert_eq!(out.stdout, format!("{TRICKY_CANONICAL}\n"));

    let out = run(
        tmp.path(),
        &["canonical", "--sha256", "-"],
        Some(TRICKY.as_bytes()),
    );
    out.expect_code(0, "canonical --sha256 -");
    assert_eq!(out.stdout, format!("{want_hash}\n"));

    // The README's auditor example: recompute a params_hash by hand. The
    // Python library recorded this very hash for `{"text": "hello"}`.
    let strict = read_json(&fixtures().join("strict/bundle.ledger_entries.json"));
    let first = &strict["ledger_entries"][0];
    assert_eq!(first["request_id"], "s-echo");
    let out = run(
        tmp.path(),
        &["canonical", "--sha256"],
        Some(b"{\"text\": \"hello\"}\n"),
    );
    out.expect_code(0, "canonical --sha256 of params");
    assert_eq!(out.stdout.trim(), first["params_hash"].as_str().unwrap());

    // Scalars and the canonical form of a canonical form.
    for (input, want) in [
        ("\"caf\u{e9}\"", "\"caf\\u00e9\""),
        ("  42 ", "42"),
        ("1e400000000000000000000", ""),
        ("[1.0, 1, -1.5E-10]", "[1.0,1,-1.5e-10]"),
        (TRICKY_CANONICAL, TRICKY_CANONICAL),
    ] {
        let out = run(tmp.path(), &["canonical", "-"], Some(input.as_bytes()));
        if want.is_empty() {
            out.expect_unusable(&format!("canonical of {input}"));
        } else {
            out.expect_code(0, input);
            assert_eq!(out.stdout, format!("{want}\n"), "canonical of {input}");
        }
    }
}

#[test]
fn canonical_refuses_bad_input_with_one_line() {
    let tmp = tempdir();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", b"{\"a\": ".to_vec()),
        ("empty", b"".to_vec()),
        ("NaN", b"{\"a\": NaN}".to_vec()),
        ("Infinity", b"{\"a\": Infinity}".to_vec()),
        ("overflowing float", b"{\"a\": 1e400}".to_vec()),
        ("trailing garbage", b"{\"a\": 1} x".to_vec()),
        ("single quotes", b"{'a': 1}".to_vec()),
        ("not UTF-8", vec![b'"', 0xff, 0xfe, b'"']),
        ("deep nesting", "[".repeat(100_000).into_bytes()),
    ];
    for (what, input) in cases {
        let out = run(tmp.path(), &["canonical", "-"], Some(&input));
        out.expect_unusable(&format!("canonical of {what}"));
        assert!(out.stdout.is_empty(), "{what}: {}", out.stdout);
        let file = tmp.path().join("bad.json");
        std::fs::write(&file, &input).unwrap();
        let out = run(
            tmp.path(),
            &["canonical", "--sha256", path_str(&file)],
            None,
        );
        out.expect_unusable(&format!("canonical --sha256 FILE of {what}"));
        assert!(out.stdout.is_empty(), "{what}: {}", out.stdout);
    }
    let out = run(tmp.path(), &["canonical", "no-such-file.json"], None);
    out.expect_unusable("canonical of a missing file");
    assert!(out.stderr.contains("no-such-file.json"), "{}", out.stderr);
}

// ---------------------------------------------------------------- validate

#[test]
fn validate_answers_with_exit_codes_and_problems() {
    let tmp = tempdir();
    let write = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };

    let good = write(
        "good.json",
        r#"{"request_id": "r1", "actor": "agent-001", "intent": "search docs",
            "tool_call": {"name": "search", "params": {"q": "x"}}}"#,
    );
    let out = run(tmp.path(), &["validate", path_str(&good)], None);
    out.expect_code(0, "validate good");
    assert_eq!(out.stdout, "Validation passed.\n");
    let text = std::fs::read(&good).unwrap();
    let out = run(tmp.path(), &["validate", "-"], Some(&text));
    out.expect_code(0, "validate good from stdin");
    assert_eq!(out.stdout, "Validation passed.\n");

    let bad = write(
        "bad.json",
        r#"{"request_id": 5, "actor": "agent-001", "intent": null}"#,
    );
    let out = run(tmp.path(), &["validate", path_str(&bad)], None);
    out.expect_code(1, "validate bad");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "Validation failed:", "{}", out.stdout);
    let problems: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.strip_prefix("  - ").expect("one problem a line"))
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems.iter().any(|p| p.contains("request_id")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("intent")),
        "{problems:?}"
    );

    let unknown = write(
        "unknown.json",
        r#"{"request_id": "r2", "actor": "a", "intent": "i", "colour": "red"}"#,
    );
    let out = run(tmp.path(), &["validate", path_str(&unknown)], None);
    out.expect_code(1, "validate with an unknown field");
    assert!(out.stdout.starts_with("Validation failed:\n"));
    assert!(out.stdout.contains("colour"), "{}", out.stdout);

    let empty_tool = write(
        "tool.json",
        r#"{"request_id": "r3", "actor": "a", "intent": "i", "tool_call": {"name": ""}}"#,
    );
    let out = run(tmp.path(), &["validate", path_str(&empty_tool)], None);
    out.expect_code(1, "validate with an empty tool name");
    assert!(out.stdout.contains("tool_call"), "{}", out.stdout);

    // Unusable input: exit 2 and one line, not a list of problems.
    for (what, text) in [
        ("not JSON", "request_id = r1"),
        ("an array", r#"[{"request_id": "r1"}]"#),
        ("a string", r#""r1""#),
        ("null", "null"),
        ("truncated", r#"{"request_id": "r1""#),
    ] {
        let p = write("unusable.json", text);
        let out = run(tmp.path(), &["validate", path_str(&p)], None);
        out.expect_unusable(&format!("validate {what}"));
        assert!(
            !out.stdout.contains("Validation passed"),
            "{what}: {}",
            out.stdout
        );
    }
    let out = run(tmp.path(), &["validate", "missing.json"], None);
    out.expect_unusable("validate a missing file");
    assert!(out.stderr.contains("missing.json"), "{}", out.stderr);
}

// ---------------------------------------------------------------- verify

fn python_bundles() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(fixtures()).unwrap() {
        let p = dir.unwrap().path().join("bundle.ledger_entries.json");
        if p.exists() {
            out.push(p);
        }
    }
    out.push(fixtures().join("permits/bundle.entries.json"));
    out.sort();
    assert!(out.len() >= 9, "{out:?}");
    out
}

#[test]
fn verify_accepts_the_python_librarys_bundles() {
    let tmp = tempdir();
    for bundle in python_bundles() {
        let doc = read_json(&bundle);
        // The library's exports name the list `ledger_entries` or `entries`.
        let list = doc["ledger_entries"]
            .as_array()
            .or(doc["entries"].as_array())
            .expect("a list of entries");
        let n = list.len() as u64;
        let out = run(tmp.path(), &["verify", path_str(&bundle)], None);
        out.expect_code(0, &bundle.display().to_string());
        assert!(out.stdout.starts_with("VALID: "), "{}", out.stdout);
        assert!(
            out.stdout.contains(&format!("entries verified: {n}\n")),
            "{}",
            out.stdout
        );

        let out = run(tmp.path(), &["verify", "--json", path_str(&bundle)], None);
        out.expect_code(0, &bundle.display().to_string());
        let report = out.json();
        assert_eq!(report["valid"], true, "{report}");
        assert_eq!(report["entries_verified"], n);
        assert_eq!(report["computed_root_hash"], doc["root_hash"]);
        assert_eq!(report["errors"], json!([]));

        let bytes = std::fs::read(&bundle).unwrap();
        let out = run(tmp.path(), &["verify", "--json", "-"], Some(&bytes));
        out.expect_code(0, "verify - of a python bundle");
        assert_eq!(out.json()["entries_verified"], n);
    }
}

#[test]
fn verify_finds_every_tampering_and_names_the_entry() {
    let tmp = tempdir();
    let original = read_json(&fixtures().join("strict/bundle.ledger_entries.json"));
    assert_eq!(original["ledger_entries"].as_array().unwrap().len(), 50);

    let tamper = |name: &str, f: &dyn Fn(&mut Value)| -> PathBuf {
        let mut doc = original.clone();
        f(&mut doc);
        let path = tmp.path().join(format!("{name}.json"));
        write_json(&path, &doc);
        path
    };
    let cases: Vec<(&str, PathBuf, BTreeSet<u64>, bool)> = vec![
        (
            "changed intent",
            tamper("changed", &|d| {
                entries_of(d)[5]["intent"] = json!("tampered")
            }),
            BTreeSet::from([5]),
            false,
        ),
        (
            "changed decision",
            tamper("decision", &|d| {
                entries_of(d)[12]["decision"] = json!("ALLOW")
            }),
            BTreeSet::from([12]),
            false,
        ),
        (
            "removed entry",
            tamper("removed", &|d| {
                entries_of(d).remove(5);
            }),
            BTreeSet::from([5]),
            false,
        ),
        (
            "swapped entries",
            tamper("swapped", &|d| entries_of(d).swap(5, 6)),
            BTreeSet::from([5, 6, 7]),
            false,
        ),
        (
            "changed prev_hash",
            tamper("prev", &|d| {
                entries_of(d)[7]["prev_hash"] = json!("a".repeat(64))
            }),
            BTreeSet::from([7]),
            false,
        ),
        (
            "changed root_hash",
            tamper("root", &|d| d["root_hash"] = json!("1".repeat(64))),
            BTreeSet::new(),
            true,
        ),
        (
            "two separate changes",
            tamper("two", &|d| {
                entries_of(d)[3]["actor"] = json!("mallory");
                entries_of(d)[40]["ts_ms"] = json!(1);
            }),
            BTreeSet::from([3, 40]),
            false,
        ),
    ];
    for (what, path, want, bundle_level) in cases {
        let out = run(tmp.path(), &["verify", "--json", path_str(&path)], None);
        out.expect_code(1, what);
        let report = out.json();
        assert_eq!(report["valid"], false, "{what}: {report}");
        assert_eq!(error_indices(&report), want, "{what}: {report}");
        let bundle_errors = report["errors"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["index"].is_null())
            .count();
        if bundle_level {
            assert!(bundle_errors > 0, "{what}: {report}");
        }
        for e in report["errors"].as_array().unwrap() {
            assert!(
                !e["message"].as_str().unwrap().is_empty(),
                "{what}: {report}"
            );
        }

        let out = run(tmp.path(), &["verify", path_str(&path)], None);
        out.expect_code(1, what);
        assert!(out.stdout.starts_with("INVALID: "), "{}", out.stdout);
        for i in &want {
            assert!(
                out.stdout.contains(&format!("  entry {i}: ")),
                "{what}: {}",
                out.stdout
            );
        }
    }

    // An empty bundle is a valid (empty) chain.
    let empty = tmp.path().join("empty.json");
    write_json(
        &empty,
        &json!({"kernel_id": "k", "variant": "strict", "exported_at_ms": 0,
                "root_hash": GENESIS, "ledger_entries": []}),
    );
    let out = run(tmp.path(), &["verify", "--json", path_str(&empty)], None);
    out.expect_code(0, "empty bundle");
    assert_eq!(
        out.json(),
        json!({"valid": true, "entries_verified": 0, "computed_root_hash": GENESIS, "errors": []})
    );
}

#[test]
fn verify_refuses_unusable_files_without_panicking() {
    let tmp = tempdir();
    let strict = std::fs::read(fixtures().join("strict/bundle.ledger_entries.json")).unwrap();
    let mut noise = vec![0u8; 4096];
    {
        use rand::{Rng, SeedableRng};
        rand::rngs::StdRng::seed_from_u64(7).fill(&mut noise[..]);
    }
    let mut brace_noise = b"{".to_vec();
    brace_noise.extend_from_slice(&noise);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "truncated in the middle",
            strict[..strict.len() / 2].to_vec(),
        ),
        ("truncated at the end", strict[..strict.len() - 3].to_vec()),
        ("garbage text", b"this is not a bundle\n".to_vec()),
        ("random bytes", noise),
        ("random bytes after a brace", brace_noise),
        ("empty", Vec::new()),
        ("a JSON array", b"[]".to_vec()),
        ("no ledger_entries", b"{\"kernel_id\": \"k\"}".to_vec()),
        ("deep nesting", "[".repeat(100_000).into_bytes()),
        ("trailing garbage", {
            let mut v = strict.clone();
            v.extend_from_slice(b" trailing");
            v
        }),
    ];
    for (what, bytes) in cases {
        let path = tmp.path().join("unusable.json");
        std::fs::write(&path, &bytes).unwrap();
        for json_flag in [false, true] {
            let mut args = vec!["verify"];
            if json_flag {
                args.push("--json");
            }
            args.push(path_str(&path));
            let out = run(tmp.path(), &args, None);
            out.expect_unusable(&format!("verify {what}"));
        }
        let out = run(tmp.path(), &["verify", "-"], Some(&bytes));
        out.expect_unusable(&format!("verify - {what}"));
    }
    let out = run(tmp.path(), &["verify", "no-such-bundle.json"], None);
    out.expect_unusable("verify a missing file");
    assert!(out.stderr.contains("no-such-bundle.json"), "{}", out.stderr);
    let out = run(tmp.path(), &["verify", path_str(tmp.path())], None);
    out.expect_unusable("verify a directory");
    let out = run(tmp.path(), &["verify"], None);
    out.expect_unusable("verify without a bundle");
}

// ---------------------------------------------------------------- simulate

const SIM_POLICY: &str = "allowed_actors: [agent-001, agent-002]\nallowed_tools: [echo, add]\n";

#[test]
fn simulate_prints_a_verifiable_bundle_that_follows_the_clock() {
    let tmp = tempdir();
    let policy = tmp.path().join("policy.yaml");
    std::fs::write(&policy, SIM_POLICY).unwrap();
    let requests = tmp.path().join("requests.jsonl");
    std::fs::write(
        &requests,
        r#"{"request_id": "r1", "actor": "agent-001", "intent": "say hi", "tool_call": {"name": "echo", "params": {"text": "hi"}}}
{"advance_ms": 1000}
{"request_id": "r2", "actor": "agent-009", "intent": "read", "tool_call": {"name": "echo"}}

{"advance_ms": 250}
{"request_id": "r3", "actor": "agent-002", "intent": "add", "tool_call": {"name": "add", "params": {"a": 2, "b": 3}}, "params": {"a": 2, "b": 3}}
{"advance_ms": 250}
{"halt": "end of replay"}
{"advance_ms": 1}
{"request_id": "r4", "actor": "agent-001", "intent": "after", "tool_call": {"name": "echo", "params": {"text": "x"}}}
"#,
    )
    .unwrap();
    let start: u64 = 1_700_000_000_000;
    let receipts = tmp.path().join("receipts.jsonl");
    let out_file = tmp.path().join("bundle.json");
    let start_s = start.to_string();
    let base = [
        "simulate",
        "--policy",
        path_str(&policy),
        "--variant",
        "strict",
        "--kernel-id",
        "sim-1",
        "--start-ms",
        &start_s,
    ];

    let mut args = base.to_vec();
    args.extend(["--receipts", path_str(&receipts), path_str(&requests)]);
    let out = run(tmp.path(), &args, None);
    out.expect_code(0, "simulate");
    // The request after the halt is refused, said on stderr, naming its line.
    assert!(
        out.stderr.contains("line 10") && out.stderr.contains("halted"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"));
    let bundle = out.json();
    assert_eq!(bundle["kernel_id"], "sim-1");
    assert_eq!(bundle["variant"], "strict");
    assert_eq!(bundle["exported_at_ms"], start + 1501);
    let entries = bundle["ledger_entries"].as_array().unwrap();
    let got: Vec<(&str, u64, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["request_id"].as_str().unwrap(),
                e["ts_ms"].as_u64().unwrap(),
                e["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("r1", start, "ALLOW"),
            ("r2", start + 1000, "DENY"),
            ("r3", start + 1250, "ALLOW"),
            ("HALT", start + 1500, "HALT"),
        ],
        "entries follow the clock; nothing is recorded after the halt"
    );
    let halt = entries.last().unwrap();
    assert_eq!(halt["state_to"], "HALTED");
    assert_eq!(halt["intent"], "end of replay");
    assert_eq!(bundle["root_hash"], halt["entry_hash"]);
    assert_eq!(entries[0]["prev_hash"], GENESIS);

    // The receipts file: one line per request or halt, the refusal included.
    let lines: Vec<Value> = std::fs::read_to_string(&receipts)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    for (receipt, entry) in lines.iter().zip(entries) {
        assert_eq!(receipt["evidence_hash"], entry["entry_hash"]);
        assert_eq!(receipt["ledger_seq"], entry["ledger_seq"]);
        assert_eq!(receipt["ts_ms"], entry["ts_ms"]);
    }
    assert_eq!(lines[0]["tool_result"], "hi");
    assert_eq!(lines[1]["status"], "REJECTED");
    assert_eq!(lines[2]["tool_result"], 5);
    assert_eq!(lines[4]["line"], 10);
    assert!(lines[4]["refused"].is_string(), "{}", lines[4]);

    // The bundle verifies, from stdin and from a file.
    let verified = run(
        tmp.path(),
        &["verify", "--json", "-"],
        Some(out.stdout.as_bytes()),
    );
    verified.expect_code(0, "verify - of the simulated bundle");
    assert_eq!(verified.json()["entries_verified"], 4);
    assert_eq!(verified.json()["computed_root_hash"], bundle["root_hash"]);

    let mut args = base.to_vec();
    args.extend(["--out", path_str(&out_file), path_str(&requests)]);
    let out2 = run(tmp.path(), &args, None);
    out2.expect_code(0, "simulate --out");
    assert!(out2.stdout.is_empty(), "{}", out2.stdout);
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap(),
        out.stdout,
        "a simulation is deterministic"
    );
    run(tmp.path(), &["verify", path_str(&out_file)], None).expect_code(0, "verify FILE");

    // A different start time moves every entry and changes every hash.
    let mut args = base.to_vec();
    args[8] = "1700000000001";
    args.push(path_str(&requests));
    let shifted = run(tmp.path(), &args, None);
    shifted.expect_code(0, "simulate shifted");
    let shifted = shifted.json();
    assert_eq!(shifted["ledger_entries"][0]["ts_ms"], start + 1);
    assert_ne!(shifted["root_hash"], bundle["root_hash"]);
}

#[test]
fn simulate_refuses_malformed_lines_naming_them() {
    let tmp = tempdir();
    let policy = tmp.path().join("policy.yaml");
    std::fs::write(&policy, SIM_POLICY).unwrap();
    let good = r#"{"request_id": "r1", "actor": "agent-001", "intent": "x", "tool_call": {"name": "echo", "params": {"text": "x"}}}"#;
    for (what, line) in [
        ("not JSON", "not json"),
        ("truncated JSON", r#"{"request_id": "r2""#),
        ("an array", "[1, 2]"),
        ("a string", r#""r2""#),
        ("negative advance", r#"{"advance_ms": -1}"#),
        ("fractional advance", r#"{"advance_ms": 1.5}"#),
        (
            "advance with company",
            r#"{"advance_ms": 5, "request_id": "r2"}"#,
        ),
        ("halt without a text", r#"{"halt": 5}"#),
        (
            "unknown request field",
            r#"{"request_id": "r2", "actor": "agent-001", "intent": "x", "bogus": 1}"#,
        ),
    ] {
        let file = tmp.path().join("requests.jsonl");
        std::fs::write(
            &file,
            format!("{good}\n{{\"advance_ms\": 10}}\n{line}\n{good}\n"),
        )
        .unwrap();
        let out = run(
            tmp.path(),
            &["simulate", "--policy", path_str(&policy), path_str(&file)],
            None,
        );
        out.expect_unusable(&format!("simulate with {what}"));
        assert!(out.stderr.contains("line 3"), "{what}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{what}: no bundle is printed");
    }
    let file = tmp.path().join("requests.jsonl");
    std::fs::write(&file, format!("{good}\n")).unwrap();
    for (what, args) in [
        (
            "a missing policy",
            vec!["simulate", "--policy", "nope.yaml", path_str(&file)],
        ),
        (
            "a missing requests file",
            vec!["simulate", "--policy", path_str(&policy), "nope.jsonl"],
        ),
        (
            "an unknown variant",
            vec![
                "simulate",
                "--policy",
                path_str(&policy),
                "--variant",
                "lenient",
                path_str(&file),
            ],
        ),
    ] {
        run(tmp.path(), &args, None).expect_unusable(&format!("simulate with {what}"));
    }
    let bad_policy = tmp.path().join("bad-policy.yaml");
    std::fs::write(&bad_policy, "allowed_actorz: [a]\n").unwrap();
    let out = run(
        tmp.path(),
        &[
            "simulate",
            "--policy",
            path_str(&bad_policy),
            path_str(&file),
        ],
        None,
    );
    out.expect_unusable("simulate with an unknown policy key");
    assert!(out.stderr.contains("allowed_actorz"), "{}", out.stderr);
}

/// Request ids where we deliberately decide differently from the Python
/// library (the list and the reasons are in tests/python_compat.rs).
const DIVERGENCES: &[&str] = &[
    "pm-action-mismatch",
    "pm-denied-permit-reused",
    "s-tool-empty-name",
    "p-tool-empty-name",
    "e-tool-empty-name",
    "dc-tool-empty-name",
];

/// Runs a recorded Python scenario through `kernels simulate`, with the
/// clock moved by `advance_ms` lines, up to its first deliberate divergence;
/// every receipt and entry hash must be the one the library produced.
/// Answers (steps compared, whether the whole scenario was run).
fn simulate_python_scenario(tmp: &Path, name: &str) -> (usize, bool) {
    let dir = fixtures().join(name);
    let scenario = read_json(&dir.join("scenario.json"));
    let variant = match scenario["kernel_class"].as_str().unwrap() {
        "StrictKernel" => "strict",
        "PermissiveKernel" => "permissive",
        "EvidenceFirstKernel" => "evidence_first",
        "DualChannelKernel" => "dual_channel",
        other => panic!("{name}: unknown kernel class {other}"),
    };
    let kernel_id = scenario["kernel_config_passed_to_boot"]["kernel_id"]
        .as_str()
        .unwrap();
    let read_lines = |file: &str| -> Vec<Value> {
        std::fs::read_to_string(dir.join(file))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let steps = read_lines("requests.jsonl");
    let expected = read_lines("receipts.jsonl");
    assert_eq!(steps.len(), expected.len());

    let mut input = String::new();
    let mut compared_steps: Vec<&Value> = Vec::new();
    let start = steps[0]["clock_ms"].as_u64().unwrap();
    let mut now = start;
    let mut complete = true;
    for (step, want) in steps.iter().zip(&expected) {
        let op = step["op"].as_str().unwrap();
        if op == "submit" {
            let id = step["request"]["request_id"].as_str().unwrap_or("");
            if DIVERGENCES.contains(&id) {
                complete = false;
                break;
            }
            assert!(step["permit"].is_null(), "{name}: permits need a keyring");
        }
        let clock = step["clock_ms"].as_u64().unwrap();
        assert!(clock >= now, "{name}: the recorded clock never goes back");
        if clock > now {
            input.push_str(&format!("{{\"advance_ms\": {}}}\n", clock - now));
            now = clock;
        }
        match op {
            "submit" => {
                input.push_str(&serde_json::to_string(&step["request"]).unwrap());
                input.push('\n');
                compared_steps.push(want);
            }
            "halt" => {
                input.push_str(&serde_json::to_string(&json!({"halt": step["reason"]})).unwrap());
                input.push('\n');
                compared_steps.push(want);
            }
            "export" | "restart_and_load_ledger" => {}
            other => panic!("{name}: unknown op {other}"),
        }
    }
    let requests = tmp.join(format!("{name}.jsonl"));
    std::fs::write(&requests, &input).unwrap();
    let receipts_file = tmp.join(format!("{name}.receipts.jsonl"));
    let start_s = start.to_string();
    let mut args = vec![
        "simulate",
        "--compat",
        "python",
        "--variant",
        variant,
        "--kernel-id",
        kernel_id,
        "--start-ms",
        &start_s,
        "--receipts",
        path_str(&receipts_file),
    ];
    // The library's own default policy is the variant's built-in one; a
    // recorded policy is written as a file (JSON is YAML), without the two
    // keys the library has but ignores.
    let policy_file = tmp.join(format!("{name}.policy.yaml"));
    if !scenario["policy"].is_null() {
        let mut p = scenario["policy"].clone();
        p.as_object_mut().unwrap().remove("allowed_states");
        p.as_object_mut().unwrap().remove("allow_intent_only");
        std::fs::write(&policy_file, serde_json::to_string(&p).unwrap()).unwrap();
        args.extend(["--policy", path_str(&policy_file)]);
    }
    args.push(path_str(&requests));
    let out = run(tmp, &args, None);
    out.expect_code(0, &format!("simulate {name}"));
    let bundle = out.json();
    let entries = bundle["ledger_entries"].as_array().unwrap();
    let ours: Vec<Value> = std::fs::read_to_string(&receipts_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        ours.len(),
        compared_steps.len(),
        "{name}: one line per step"
    );

    let mut entry_count = 0;
    for (i, (got, want)) in ours.iter().zip(&compared_steps).enumerate() {
        match want.get("receipt") {
            Some(want) => {
                let ctx = format!("{name} step {i} ({})", want["request_id"]);
                assert_eq!(got["evidence_hash"], want["evidence_hash"], "{ctx}: hash");
                assert_eq!(got["decision"], want["decision"], "{ctx}: decision");
                assert_eq!(got["status"], want["status"], "{ctx}: status");
                assert_eq!(got["ts_ms"], want["ts_ms"], "{ctx}: ts_ms");
                assert_eq!(got["error"], want["error"], "{ctx}: error");
                let seq = got["ledger_seq"].as_u64().unwrap() as usize;
                assert_eq!(entries[seq]["entry_hash"], want["evidence_hash"], "{ctx}");
                entry_count += 1;
            }
            None => {
                assert!(want.get("exception").is_some(), "{name}: {want}");
                assert!(got["refused"].is_string(), "{name} step {i}: {got}");
            }
        }
    }
    assert_eq!(entries.len(), entry_count, "{name}: one entry per receipt");

    let verified = run(tmp, &["verify", "--json", "-"], Some(out.stdout.as_bytes()));
    verified.expect_code(0, &format!("verify the simulated {name}"));

    if complete {
        // Nothing diverged: the whole bundle is the library's, byte for byte
        // in every hash.
        let python = read_json(&dir.join("bundle.ledger_entries.json"));
        assert_eq!(bundle["root_hash"], python["root_hash"], "{name}: root");
        let theirs: Vec<&Value> = python["ledger_entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["entry_hash"])
            .collect();
        let mine: Vec<&Value> = entries.iter().map(|e| &e["entry_hash"]).collect();
        assert_eq!(mine, theirs, "{name}: entry hashes");
    }
    (entry_count, complete)
}

#[test]
fn simulate_reproduces_the_python_librarys_hashes() {
    let tmp = tempdir();
    let (n, complete) = simulate_python_scenario(tmp.path(), "strict_default_policy");
    assert!(
        complete,
        "strict_default_policy has no deliberate divergence"
    );
    assert_eq!(n, 21);
    for name in ["strict", "permissive", "evidence_first", "dual_channel"] {
        let (n, _) = simulate_python_scenario(tmp.path(), name);
        assert!(n >= 10, "{name}: only {n} steps compared");
    }
}

// ---------------------------------------------------------------- data dir

const SERVE_POLICY: &str = "allowed_actors: [agent-001, agent-002]\nallowed_tools: [echo, add]\n";

fn serve_config(tmp: &Path) -> ServeConfig {
    let policy = tmp.join("policy.yaml");
    std::fs::write(&policy, SERVE_POLICY).unwrap();
    ServeConfig {
        cwd: tmp.to_owned(),
        data_dir: tmp.join("data"),
        policy,
        kernel_id: "cli-kernel".into(),
    }
}

fn request(id: &str, actor: &str, tool: &str, params: Value) -> Value {
    json!({"request_id": id, "actor": actor, "intent": format!("{tool} for {actor}"),
           "tool_call": {"name": tool, "params": params.clone()}, "params": params})
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Parses an exported bundle; answers it and its entries.
fn bundle_entries(text: &str) -> (Value, Vec<Value>) {
    let bundle: Value = serde_json::from_str(text).expect("a bundle is JSON");
    let entries = bundle["ledger_entries"].as_array().unwrap().clone();
    (bundle, entries)
}

/// A ledger written by a real `kernels serve` (policy `SERVE_POLICY`):
/// eight requests, an operator's policy update and a halt, then a clean
/// stop with SIGTERM. Every scenario below starts from its own copy.
struct Served {
    tmp: tempfile::TempDir,
    cfg: ServeConfig,
    data: String,
    receipts: BTreeMap<String, Value>,
    policy_seq: u64,
    halt_seq: u64,
    length: u64,
    root: String,
}

/// Starts `kernels serve` on a fresh data dir and submits five requests.
fn serve_and_decide(
    cfg: &ServeConfig,
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
) -> (Server, BTreeMap<String, Value>) {
    let server = Server::start(cfg);
    let mut receipts: BTreeMap<String, Value> = BTreeMap::new();
    rt.block_on(async {
        for (id, actor, tool, params, decision) in [
            ("r1", "agent-001", "echo", json!({"text": "one"}), "ALLOW"),
            ("r2", "agent-009", "echo", json!({"text": "two"}), "DENY"),
            ("r3", "agent-002", "add", json!({"a": 2, "b": 3}), "ALLOW"),
            ("r4", "agent-003", "echo", json!({"text": "four"}), "DENY"),
            ("r5", "agent-001", "rm", json!({"path": "/"}), "DENY"),
        ] {
            let (code, r) = http::post(
                client,
                &server.url("/v1/requests"),
                AGENT,
                &request(id, actor, tool, params),
            )
            .await;
            assert_eq!(code, 200, "{id}: {r}");
            assert_eq!(r["decision"], decision, "{id}: {r}");
            receipts.insert(id.into(), r);
        }
    });
    assert_eq!(receipts["r1"]["tool_result"], "one");
    assert_eq!(receipts["r3"]["tool_result"], 5);

    (server, receipts)
}

/// [`serve_and_decide`], then a policy update, three more requests and a
/// halt; then SIGTERM.
fn served_ledger() -> Served {
    let tmp = tempdir();
    let cfg = serve_config(tmp.path());
    let data = path_str(&cfg.data_dir).to_owned();
    let rt = runtime();
    let client = http::client();
    let (server, mut receipts) = serve_and_decide(&cfg, &rt, &client);
    let receipts_before_policy = receipts.len();
    let (policy_seq, halt_seq, status_before_stop) = rt.block_on(async {
        let (code, policy) = http::get(&client, &server.url("/v1/policy"), AUDITOR).await;
        assert_eq!(code, 200, "{policy}");
        assert_eq!(policy["version"], 1);
        let mut p = policy["policy"].clone();
        p["allowed_actors"] = json!(["agent-001", "agent-002", "agent-003"]);
        let (code, updated) = http::put(
            &client,
            &server.url("/v1/policy"),
            OPERATOR,
            &json!({"policy": p, "reason": "onboard agent-003"}),
        )
        .await;
        assert_eq!(code, 200, "{updated}");
        assert_eq!(updated["version"], 2);
        let policy_seq = updated["ledger_seq"].as_u64().unwrap();

        for (id, actor, decision) in [
            ("r6", "agent-003", "ALLOW"),
            ("r7", "agent-009", "DENY"),
            ("r8", "agent-001", "ALLOW"),
        ] {
            let (code, r) = http::post(
                &client,
                &server.url("/v1/requests"),
                AGENT,
                &request(id, actor, "echo", json!({"text": id})),
            )
            .await;
            assert_eq!(code, 200, "{id}: {r}");
            assert_eq!(r["decision"], decision, "{id}: {r}");
            receipts.insert(id.into(), r);
        }

        let (code, halted) = http::post(
            &client,
            &server.url("/v1/halt"),
            OPERATOR,
            &json!({"reason": "incident 42"}),
        )
        .await;
        assert_eq!(code, 200, "{halted}");
        assert_eq!(halted["receipt"]["decision"], "HALT");
        let halt_seq = halted["receipt"]["ledger_seq"].as_u64().unwrap();
        let (code, refused) = http::post(
            &client,
            &server.url("/v1/requests"),
            AGENT,
            &request("r9", "agent-001", "echo", json!({"text": "late"})),
        )
        .await;
        assert_eq!(code, 409, "{refused}");
        assert_eq!(refused["code"], "halted");
        let (code, status) = http::get(&client, &server.url("/v1/status"), AUDITOR).await;
        assert_eq!(code, 200);
        assert_eq!(status["state"], "HALTED");
        assert_eq!(status["ledger_length"], halt_seq + 1);
        assert_eq!(status["starts"], 0);
        (policy_seq, halt_seq, status)
    });
    assert_eq!(receipts.len(), receipts_before_policy + 3);

    let (code, stderr) = server.terminate();
    assert_eq!(code, Some(0), "a SIGTERM is a clean stop: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The clean stop recorded `kernel.stop` after the halt: the head.
    let length = halt_seq + 2;
    let out = run(
        tmp.path(),
        &[
            "export",
            "--data-dir",
            &data,
            "--from-seq",
            &(halt_seq + 1).to_string(),
        ],
        None,
    );
    out.expect_code(0, "export the stop");
    let (_, stop) = bundle_entries(&out.stdout);
    assert_eq!(stop.len(), 1);
    assert_eq!(stop[0]["tool_name"], "kernel.stop");
    assert_eq!(
        stop[0]["state_to"], "HALTED",
        "a halted kernel records its stop"
    );
    assert_eq!(stop[0]["prev_hash"], status_before_stop["root_hash"]);
    let root = stop[0]["entry_hash"].as_str().unwrap().to_owned();

    Served {
        tmp,
        cfg,
        data,
        receipts,
        policy_seq,
        halt_seq,
        length,
        root,
    }
}

/// Every entry of a served ledger, as `kernels export` writes them.
fn exported_entries(served: &Served) -> Vec<Value> {
    let out = run(
        served.tmp.path(),
        &["export", "--data-dir", &served.data],
        None,
    );
    out.expect_code(0, "export to stdout");
    bundle_entries(&out.stdout).1
}

#[test]
fn offline_commands_refuse_a_data_dir_held_by_serve() {
    let tmp = tempdir();
    let cfg = serve_config(tmp.path());
    let data = path_str(&cfg.data_dir).to_owned();
    let rt = runtime();
    let client = http::client();
    let (server, _) = serve_and_decide(&cfg, &rt, &client);
    // While the service holds the data dir, offline commands refuse at once.
    for args in [
        vec!["export", "--data-dir", &data],
        vec!["verify", "--data-dir", &data],
        vec!["replay", "--data-dir", &data],
        vec!["info", "--data-dir", &data],
        vec![
            "investigate",
            "--data-dir",
            &data,
            "--from-ms",
            "0",
            "--to-ms",
            "1",
        ],
    ] {
        let out = run(tmp.path(), &args, None);
        out.expect_unusable(&format!("{args:?} while serving"));
        assert!(out.stderr.contains("in use"), "{args:?}: {}", out.stderr);
        assert!(
            out.elapsed < std::time::Duration::from_secs(5),
            "{args:?} took {:?}: it must fail fast, not wait",
            out.elapsed
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }

    let (code, stderr) = server.terminate();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn verify_data_dir_checks_a_served_ledger() {
    let Served {
        tmp,
        data,
        length,
        root,
        ..
    } = served_ledger();
    // verify --data-dir
    let out = run(tmp.path(), &["verify", "--data-dir", &data], None);
    out.expect_code(0, "verify --data-dir");
    assert!(out.stdout.starts_with("VALID: "), "{}", out.stdout);
    let out = run(tmp.path(), &["verify", "--data-dir", &data, "--json"], None);
    out.expect_code(0, "verify --data-dir --json");
    assert_eq!(
        out.json(),
        json!({"valid": true, "entries_verified": length, "computed_root_hash": root, "errors": []})
    );
    let out = run(
        tmp.path(),
        &["verify", "--data-dir", &data, "bundle.json"],
        None,
    );
    out.expect_unusable("verify with both a bundle and --data-dir");
}

#[test]
fn export_writes_the_served_ledger_and_ranges_that_verify_alone() {
    let Served {
        tmp,
        data,
        receipts,
        policy_seq,
        halt_seq,
        length,
        root,
        ..
    } = served_ledger();
    // export --out, then verify the file.
    let export_file = tmp.path().join("export.json");
    let out = run(
        tmp.path(),
        &[
            "export",
            "--data-dir",
            &data,
            "--out",
            path_str(&export_file),
        ],
        None,
    );
    out.expect_code(0, "export --out");
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(out.stderr.contains(&root), "{}", out.stderr);
    let out = run(
        tmp.path(),
        &["verify", "--json", path_str(&export_file)],
        None,
    );
    out.expect_code(0, "verify the export");
    assert_eq!(out.json()["entries_verified"], length);
    let (bundle, entries) = bundle_entries(&std::fs::read_to_string(&export_file).unwrap());
    assert_eq!(bundle["kernel_id"], "cli-kernel");
    assert_eq!(bundle["variant"], "strict");
    assert_eq!(bundle["root_hash"], root);
    assert_eq!(entries.len() as u64, length);
    assert_eq!(entries[0]["request_id"], "kernel.create");
    for (id, r) in &receipts {
        let seq = r["ledger_seq"].as_u64().unwrap() as usize;
        assert_eq!(entries[seq]["request_id"], id.as_str());
        assert_eq!(entries[seq]["entry_hash"], r["evidence_hash"], "{id}");
        assert_eq!(entries[seq]["decision"], r["decision"], "{id}");
    }
    let policy_entry = &entries[policy_seq as usize];
    assert_eq!(policy_entry["tool_name"], "kernel.policy_update");
    assert_eq!(policy_entry["actor"], "env:KERNELS_OPERATOR_TOKEN");
    assert!(
        policy_entry["intent"]
            .as_str()
            .unwrap()
            .contains("onboard agent-003")
    );
    assert!(policy_entry["payload"].is_object(), "{policy_entry}");
    let halt = &entries[halt_seq as usize];
    assert_eq!(
        (&halt["request_id"], &halt["decision"], &halt["intent"]),
        (&json!("HALT"), &json!("HALT"), &json!("incident 42"))
    );

    // export to stdout: the same entries.
    let out = run(tmp.path(), &["export", "--data-dir", &data], None);
    out.expect_code(0, "export to stdout");
    assert_eq!(bundle_entries(&out.stdout).1, entries);

    // An operational event's payload is checked against its params_hash: a
    // changed policy in the export is found, at that entry.
    let mut forged = bundle.clone();
    entries_of(&mut forged)[policy_seq as usize]["payload"]["policy"]["allowed_actors"] =
        json!(["*"]);
    let forged_file = tmp.path().join("forged.json");
    write_json(&forged_file, &forged);
    let out = run(
        tmp.path(),
        &["verify", "--json", path_str(&forged_file)],
        None,
    );
    out.expect_code(1, "verify an export with a forged policy payload");
    assert_eq!(
        error_indices(&out.json()),
        BTreeSet::from([policy_seq]),
        "{}",
        out.stdout
    );

    // A range: from_seq and anchor_hash, and it verifies on its own.
    let out = run(
        tmp.path(),
        &[
            "export",
            "--data-dir",
            &data,
            "--from-seq",
            "2",
            "--to-seq",
            "5",
        ],
        None,
    );
    out.expect_code(0, "export a range");
    let (range, range_entries) = bundle_entries(&out.stdout);
    assert_eq!(range["from_seq"], 2);
    assert_eq!(range["anchor_hash"], entries[1]["entry_hash"]);
    assert_eq!(range["root_hash"], entries[5]["entry_hash"]);
    assert_eq!(range_entries, entries[2..=5].to_vec());
    let verified = run(
        tmp.path(),
        &["verify", "--json", "-"],
        Some(out.stdout.as_bytes()),
    );
    verified.expect_code(0, "verify the range");
    assert_eq!(verified.json()["entries_verified"], 4);
    let mut moved = range.clone();
    moved["anchor_hash"] = entries[0]["entry_hash"].clone();
    let moved_file = tmp.path().join("moved-anchor.json");
    write_json(&moved_file, &moved);
    let out = run(
        tmp.path(),
        &["verify", "--json", path_str(&moved_file)],
        None,
    );
    out.expect_code(1, "verify a range whose anchor_hash was changed");
    assert_eq!(
        error_indices(&out.json()),
        BTreeSet::from([0]),
        "{}",
        out.stdout
    );
    let out = run(
        tmp.path(),
        &[
            "export",
            "--data-dir",
            &data,
            "--from-seq",
            "0",
            "--to-seq",
            "0",
        ],
        None,
    );
    out.expect_code(0, "export the first entry");
    assert_eq!(bundle_entries(&out.stdout).1, entries[..1].to_vec());
    run(
        tmp.path(),
        &[
            "export",
            "--data-dir",
            &data,
            "--from-seq",
            "5",
            "--to-seq",
            "2",
        ],
        None,
    )
    .expect_unusable("export of an inverted range");
    let out = run(
        tmp.path(),
        &["export", "--data-dir", &data, "--from-seq", "1000"],
        None,
    );
    out.expect_unusable("export past the head");
}

#[test]
fn info_data_dir_describes_the_served_ledger() {
    let Served {
        tmp,
        data,
        length,
        root,
        ..
    } = served_ledger();
    // info --data-dir
    let out = run(tmp.path(), &["info", "--data-dir", &data, "--json"], None);
    out.expect_code(0, "info --data-dir --json");
    let info = out.json();
    assert_eq!(info["kernel_id"], "cli-kernel");
    assert_eq!(info["variant"], "strict");
    assert_eq!(info["state"], "HALTED");
    assert_eq!(info["ledger_length"], length);
    assert_eq!(info["root_hash"], root);
    assert_eq!(info["policy_version"], 2);
    assert_eq!(info["starts"], 0);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["last_halt"]["reason"], "incident 42");
    let out = run(tmp.path(), &["info", "--data-dir", &data], None);
    out.expect_code(0, "info --data-dir");
    for want in [
        "kernel: cli-kernel (strict)".to_owned(),
        "state: HALTED".to_owned(),
        format!("entries: {length}"),
        format!("root hash: {root}"),
        "policy version: 2".to_owned(),
    ] {
        assert!(out.stdout.contains(&want), "{want}: {}", out.stdout);
    }
}

#[test]
fn replay_rebuilds_the_state_at_a_seq_or_a_time() {
    let served = served_ledger();
    let entries = exported_entries(&served);
    let Served {
        tmp,
        data,
        receipts,
        policy_seq,
        halt_seq,
        length,
        root,
        ..
    } = served;
    // replay: after the policy update, before the halt; before the update; the head.
    let before_halt = receipts["r7"]["ledger_seq"].as_u64().unwrap();
    assert!(policy_seq < before_halt && before_halt < halt_seq);
    let replay = |extra: &[&str]| -> Value {
        let mut args = vec!["replay", "--data-dir", data.as_str(), "--json"];
        args.extend_from_slice(extra);
        let out = run(tmp.path(), &args, None);
        out.expect_code(0, &format!("replay {extra:?}"));
        out.json()
    };
    let s = replay(&["--until-seq", &before_halt.to_string()]);
    assert_eq!(s["state"], "IDLE", "{s}");
    assert_eq!(s["policy_version"], 2, "{s}");
    assert_eq!(
        s["policy"]["allowed_actors"],
        json!(["agent-001", "agent-002", "agent-003"])
    );
    assert_eq!(s["ledger_length"], before_halt + 1);
    assert_eq!(s["head_hash"], entries[before_halt as usize]["entry_hash"]);
    assert_eq!(s["kernel_id"], "cli-kernel");
    let s = replay(&["--until-seq", &(policy_seq - 1).to_string()]);
    assert_eq!(s["policy_version"], 1, "{s}");
    assert_eq!(
        s["policy"]["allowed_actors"],
        json!(["agent-001", "agent-002"])
    );
    assert_eq!(s["state"], "IDLE");
    let s = replay(&[]);
    assert_eq!(s["state"], "HALTED", "{s}");
    assert_eq!(s["ledger_length"], length);
    assert_eq!(s["head_hash"], root);
    // Named as GET /v1/status names the head (root_hash, ledger_length).
    assert_eq!(s["root_hash"], root);
    assert_eq!(s["last_halt"]["reason"], "incident 42");
    let out = run(tmp.path(), &["replay", "--data-dir", &data], None);
    out.expect_code(0, "replay (text)");
    assert!(out.stdout.contains("state: HALTED"), "{}", out.stdout);
    assert!(out.stdout.contains("policy version: 2"), "{}", out.stdout);

    // replay --at-ms: the state made of the entries at or before that time.
    let ts = |seq: u64| entries[seq as usize]["ts_ms"].as_u64().unwrap();
    for at in [
        ts(0) - 1,
        ts(0),
        ts(policy_seq),
        ts(before_halt),
        ts(halt_seq),
    ] {
        let s = replay(&["--at-ms", &at.to_string()]);
        let upto: Vec<&Value> = entries
            .iter()
            .filter(|e| e["ts_ms"].as_u64().unwrap() <= at)
            .collect();
        assert_eq!(s["ledger_length"], upto.len(), "at {at}: {s}");
        let halted = upto.iter().any(|e| e["decision"] == "HALT");
        let want_state = match (upto.len(), halted) {
            (0, _) => "BOOTING",
            (_, true) => "HALTED",
            _ => "IDLE",
        };
        assert_eq!(s["state"], want_state, "at {at}: {s}");
        let updated = upto
            .iter()
            .any(|e| e["tool_name"] == "kernel.policy_update");
        if !upto.is_empty() {
            assert_eq!(s["policy_version"], if updated { 2 } else { 1 }, "{s}");
        }
    }
    let out = run(
        tmp.path(),
        &[
            "replay",
            "--data-dir",
            &data,
            "--until-seq",
            "3",
            "--at-ms",
            "5",
        ],
        None,
    );
    assert_eq!(out.code, Some(2), "--until-seq with --at-ms: {out:?}");
}

#[test]
fn investigate_lists_a_time_range_with_the_state_before_it() {
    let served = served_ledger();
    let entries = exported_entries(&served);
    let Served {
        tmp,
        data,
        receipts,
        halt_seq,
        ..
    } = served;
    let ts = |seq: u64| entries[seq as usize]["ts_ms"].as_u64().unwrap();
    let before_halt = receipts["r7"]["ledger_seq"].as_u64().unwrap();
    assert!(before_halt < halt_seq);
    // investigate: the entries of a time range.
    let (from, to) = (
        ts(receipts["r2"]["ledger_seq"].as_u64().unwrap()),
        ts(before_halt),
    );
    let out = run(
        tmp.path(),
        &[
            "investigate",
            "--data-dir",
            &data,
            "--from-ms",
            &from.to_string(),
            "--to-ms",
            &to.to_string(),
            "--json",
        ],
        None,
    );
    out.expect_code(0, "investigate --json");
    let listed: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let in_range: Vec<&Value> = entries
        .iter()
        .filter(|e| (from..=to).contains(&e["ts_ms"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        listed.iter().collect::<Vec<_>>(),
        in_range,
        "investigate lists exactly the entries of the range"
    );
    let out = run(
        tmp.path(),
        &[
            "investigate",
            "--data-dir",
            &data,
            "--from-ms",
            &from.to_string(),
            "--to-ms",
            &to.to_string(),
        ],
        None,
    );
    out.expect_code(0, "investigate (text)");
    assert!(
        out.stdout.starts_with(&format!("state at {from} ms: ")),
        "{}",
        out.stdout
    );
    let deny = in_range.iter().filter(|e| e["decision"] == "DENY").count();
    assert!(
        out.stdout
            .contains(&format!("{} entries in range: ", in_range.len()))
            && out.stdout.contains(&format!("{deny} DENY")),
        "{}",
        out.stdout
    );
    let out = run(
        tmp.path(),
        &[
            "investigate",
            "--data-dir",
            &data,
            "--from-ms",
            "0",
            "--to-ms",
            &u64::MAX.to_string(),
            "--actor",
            "agent-009",
            "--json",
        ],
        None,
    );
    out.expect_code(0, "investigate --actor");
    let ids: Vec<String> = out
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["request_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids, ["r2", "r7"]);
    run(
        tmp.path(),
        &[
            "investigate",
            "--data-dir",
            &data,
            "--from-ms",
            "10",
            "--to-ms",
            "5",
        ],
        None,
    )
    .expect_unusable("investigate an inverted range");
}

#[test]
fn a_restart_keeps_the_halt_and_rewrites_nothing() {
    let served = served_ledger();
    let entries = exported_entries(&served);
    let Served {
        tmp,
        cfg,
        data,
        length,
        ..
    } = served;
    let rt = runtime();
    let client = http::client();
    // The restart keeps the halt.
    let server = Server::start(&cfg);
    rt.block_on(async {
        let (code, status) = http::get(&client, &server.url("/v1/status"), AUDITOR).await;
        assert_eq!(code, 200, "{status}");
        assert_eq!(
            status["state"], "HALTED",
            "a halt survives a restart: {status}"
        );
        assert_eq!(status["starts"], 1, "{status}");
        assert_eq!(status["last_halt"]["reason"], "incident 42");
        assert!(status["ledger_length"].as_u64().unwrap() > length);
        for body in [
            request("r10", "agent-001", "echo", json!({"text": "new"})),
            request("r1", "agent-001", "echo", json!({"text": "one"})),
        ] {
            let (code, refused) =
                http::post(&client, &server.url("/v1/requests"), AGENT, &body).await;
            assert_eq!(code, 409, "{refused}");
            assert_eq!(refused["code"], "halted", "{refused}");
        }
        let (_, after) = http::get(&client, &server.url("/v1/status"), AUDITOR).await;
        assert_eq!(
            after["ledger_length"], status["ledger_length"],
            "a refused submission records nothing"
        );
    });
    let (code, stderr) = server.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    let out = run(tmp.path(), &["verify", "--data-dir", &data, "--json"], None);
    out.expect_code(0, "verify --data-dir after the restart");
    let out = run(tmp.path(), &["export", "--data-dir", &data], None);
    out.expect_code(0, "export after the restart");
    let (_, after) = bundle_entries(&out.stdout);
    assert_eq!(after[..entries.len()], entries[..], "nothing is rewritten");
    let start = &after[entries.len()];
    assert_eq!(start["tool_name"], "kernel.start");
    assert_eq!(start["state_from"], "HALTED");
    assert_eq!(start["state_to"], "HALTED");
}

/// README.md ("Configuration"): a restart records a policy update only when the policy
/// *file* changed. An operator's audited `PUT /v1/policy` must survive a
/// restart with the same, unchanged file.
#[test]
fn a_restart_with_an_unchanged_policy_file_keeps_the_operators_policy() {
    let tmp = tempdir();
    let cfg = serve_config(tmp.path());
    let data = path_str(&cfg.data_dir).to_owned();
    let rt = runtime();
    let client = http::client();
    let server = Server::start(&cfg);
    rt.block_on(async {
        let (_, policy) = http::get(&client, &server.url("/v1/policy"), AUDITOR).await;
        let mut p = policy["policy"].clone();
        p["allowed_actors"] = json!(["agent-001", "agent-002", "agent-003"]);
        let (code, updated) = http::put(
            &client,
            &server.url("/v1/policy"),
            OPERATOR,
            &json!({"policy": p, "reason": "onboard agent-003"}),
        )
        .await;
        assert_eq!(code, 200, "{updated}");
    });
    assert_eq!(server.terminate().0, Some(0));
    let policy_before = std::fs::read(&cfg.policy).unwrap();

    let server = Server::start(&cfg);
    assert_eq!(std::fs::read(&cfg.policy).unwrap(), policy_before);
    rt.block_on(async {
        let (code, policy) = http::get(&client, &server.url("/v1/policy"), AUDITOR).await;
        assert_eq!(code, 200);
        assert_eq!(
            (&policy["version"], &policy["policy"]["allowed_actors"]),
            (&json!(2), &json!(["agent-001", "agent-002", "agent-003"])),
            "the policy file did not change, so the operator's policy stays: {policy}"
        );
        let (code, r) = http::post(
            &client,
            &server.url("/v1/requests"),
            AGENT,
            &request("after-restart", "agent-003", "echo", json!({"text": "x"})),
        )
        .await;
        assert_eq!(code, 200);
        assert_eq!(r["decision"], "ALLOW", "{r}");
    });
    assert_eq!(server.terminate().0, Some(0));
    let out = run(tmp.path(), &["export", "--data-dir", &data], None);
    out.expect_code(0, "export");
    let (_, entries) = bundle_entries(&out.stdout);
    let file_changed: Vec<&Value> = entries
        .iter()
        .filter(|e| {
            e["intent"]
                .as_str()
                .is_some_and(|i| i.contains("policy file changed"))
        })
        .collect();
    assert!(
        file_changed.is_empty(),
        "the ledger claims the unchanged policy file changed: {file_changed:?}"
    );
}

#[test]
fn serve_accepts_a_relative_data_dir() {
    let tmp = tempdir();
    let mut cfg = serve_config(tmp.path());
    cfg.data_dir = PathBuf::from("data");
    cfg.policy = PathBuf::from("policy.yaml");
    let server = Server::try_start(&cfg).unwrap_or_else(|f| {
        panic!(
            "kernels serve --data-dir data (relative, missing) exited with {:?}: {}",
            f.code, f.stderr
        )
    });
    assert_eq!(server.terminate().0, Some(0));
    assert!(tmp.path().join("data/KERNELS_FORMAT").exists());
    let out = run(tmp.path(), &["verify", "--data-dir", "data"], None);
    out.expect_code(0, "verify --data-dir data");
}

#[test]
fn data_dir_commands_refuse_what_is_not_a_data_dir() {
    let tmp = tempdir();
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "my holiday plans").unwrap();
    let missing = tmp.path().join("missing");
    let file = foreign.join("notes.txt");
    for (dir, want) in [
        (&foreign, "not a kernels data dir"),
        (&missing, "no data dir"),
        (&file, "not a directory"),
    ] {
        let d = path_str(dir);
        for args in [
            vec!["export", "--data-dir", d],
            vec!["verify", "--data-dir", d],
            vec!["verify", "--data-dir", d, "--json"],
            vec!["replay", "--data-dir", d],
            vec!["info", "--data-dir", d],
            vec![
                "investigate",
                "--data-dir",
                d,
                "--from-ms",
                "0",
                "--to-ms",
                "1",
            ],
        ] {
            let out = run(tmp.path(), &args, None);
            out.expect_unusable(&format!("{args:?}"));
            assert!(out.stderr.contains(want), "{args:?}: {}", out.stderr);
        }
    }
    // Nothing was created or changed.
    assert!(
        !missing.exists(),
        "an offline command must not create a data dir"
    );
    let names: BTreeSet<String> = std::fs::read_dir(&foreign)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "LOCK")
        .collect();
    assert_eq!(names, BTreeSet::from(["notes.txt".to_owned()]));

    // The service refuses it too.
    let mut cfg = serve_config(tmp.path());
    cfg.data_dir = foreign.clone();
    let failure = match Server::try_start(&cfg) {
        Ok(_) => panic!("kernels serve must refuse a folder that is not a data dir"),
        Err(f) => f,
    };
    assert_eq!(failure.code, Some(2), "{}", failure.stderr);
    assert!(
        failure.stderr.contains("not a kernels data dir"),
        "{}",
        failure.stderr
    );
}

#[test]
fn a_flipped_byte_stops_the_service_and_names_the_entry() {
    let tmp = tempdir();
    let cfg = serve_config(tmp.path());
    let data = path_str(&cfg.data_dir).to_owned();
    let rt = runtime();
    let client = http::client();
    let server = Server::start(&cfg);
    let receipts: Vec<Value> = rt.block_on(async {
        let mut out = Vec::new();
        for i in 0..8 {
            let actor = if i % 3 == 0 { "agent-009" } else { "agent-001" };
            let (code, r) = http::post(
                &client,
                &server.url("/v1/requests"),
                AGENT,
                &request(
                    &format!("f{i}"),
                    actor,
                    "echo",
                    json!({"text": i.to_string()}),
                ),
            )
            .await;
            assert_eq!(code, 200, "{r}");
            out.push(r);
        }
        out
    });
    assert_eq!(server.terminate().0, Some(0));
    run(tmp.path(), &["verify", "--data-dir", &data], None).expect_code(0, "verify before");

    let bad = receipts[4]["ledger_seq"].as_u64().unwrap();
    flip_stored_byte(&cfg.data_dir, bad, 30);

    let failure = match Server::try_start(&cfg) {
        Ok(_) => panic!("kernels serve must refuse a ledger with a changed byte"),
        Err(f) => f,
    };
    assert_ne!(failure.code, Some(0), "{}", failure.stderr);
    assert!(failure.code.is_some(), "it exits, it does not crash");
    assert!(!failure.stderr.contains("panicked"), "{}", failure.stderr);
    assert!(
        failure.stderr.contains(&format!("entry {bad}")),
        "stderr names entry {bad}: {}",
        failure.stderr
    );
    assert!(!failure.stderr.contains("serving on"), "{}", failure.stderr);

    let out = run(tmp.path(), &["verify", "--data-dir", &data, "--json"], None);
    out.expect_code(1, "verify --data-dir of the changed ledger");
    let report = out.json();
    assert_eq!(report["valid"], false);
    assert_eq!(error_indices(&report), BTreeSet::from([bad]), "{report}");
    let out = run(tmp.path(), &["verify", "--data-dir", &data], None);
    out.expect_code(1, "verify --data-dir (text)");
    assert!(
        out.stdout.contains(&format!("entry {bad}: ")),
        "{}",
        out.stdout
    );
    let out = run(tmp.path(), &["replay", "--data-dir", &data], None);
    out.expect_unusable("replay of the changed ledger");
    assert!(
        out.stderr.contains(&format!("entry {bad}")),
        "{}",
        out.stderr
    );
}

// ---------------------------------------------------------------- service commands

/// `kernels ARGS --server URL` with `token` in KERNELS_TOKEN.
fn against(
    server: &Server,
    cwd: &Path,
    token: Option<&str>,
    args: &[&str],
) -> support::process::Output {
    let mut cmd = support::process::command(cwd);
    if let Some(token) = token {
        cmd.env("KERNELS_TOKEN", token);
    }
    let url = server.url("");
    let mut all = args.to_vec();
    all.extend(["--server", url.as_str()]);
    support::process::run_with(cmd, &all, None)
}

#[test]
fn policy_check_and_update_show_what_a_policy_changes() {
    let tmp = tempdir();
    let dir = tmp.path();
    std::fs::write(
        dir.join("bad.yaml"),
        "allowed_actors: [a]\nallowed_tool: [x]\n",
    )
    .unwrap();
    std::fs::write(dir.join("nobody.yaml"), "allowed_tools: [echo]\n").unwrap();
    std::fs::write(dir.join("partial.yaml"), "allowed_actors: [agent-001]\n").unwrap();
    // check: 0 valid (with warnings), 1 invalid, 2 unreadable.
    let out = run(dir, &["policy", "check", "bad.yaml"], None);
    out.expect_code(1, "policy check of an invalid policy");
    assert!(out.stderr.contains("allowed_tool"), "{}", out.stderr);
    run(dir, &["policy", "check", "missing.yaml"], None).expect_unusable("policy check of no file");
    let out = run(dir, &["policy", "check", "nobody.yaml"], None);
    out.expect_code(0, "policy check of a policy that allows nobody");
    assert!(
        out.stdout.contains("warning: this policy allows no actor"),
        "{}",
        out.stdout
    );
    let out = run(dir, &["policy", "check", "partial.yaml"], None);
    out.expect_code(0, "policy check of a partial policy");
    assert!(!out.stdout.contains("warning"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("not in the file (defaults apply): allowed_tools, require_tool_call"),
        "{}",
        out.stdout
    );

    let cfg = serve_config(dir);
    let server = Server::start(&cfg);
    let show = |what: &str| -> Value {
        let out = against(&server, dir, Some(OPERATOR), &["policy", "show", "--json"]);
        out.expect_code(0, what);
        out.json()
    };
    let before = show("policy show");
    let out = against(
        &server,
        dir,
        Some(OPERATOR),
        &["policy", "update", "partial.yaml", "--dry-run"],
    );
    out.expect_code(0, "policy update --dry-run");
    assert!(
        out.stdout.starts_with("dry run: nothing applied"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("  allowed_actors: removes agent-002\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("  allowed_tools: removes add, echo (not in the file: the default)\n"),
        "{}",
        out.stdout
    );
    assert_eq!(
        show("policy show after a dry run"),
        before,
        "a dry run applies nothing"
    );
    let out = against(
        &server,
        dir,
        Some(OPERATOR),
        &["policy", "update", "partial.yaml"],
    );
    out.expect_code(2, "policy update without a reason");
    assert!(out.stderr.contains("--reason"), "{}", out.stderr);
    let out = against(
        &server,
        dir,
        Some(OPERATOR),
        &["policy", "update", "bad.yaml", "--reason", "x"],
    );
    out.expect_code(1, "policy update with an invalid policy");
    let out = against(
        &server,
        dir,
        Some(OPERATOR),
        &[
            "policy",
            "update",
            "partial.yaml",
            "--reason",
            "only agent-001",
        ],
    );
    out.expect_code(0, "policy update");
    assert!(
        out.stdout.starts_with("policy version 2 active"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("  allowed_actors: removes agent-002\n"),
        "{}",
        out.stdout
    );
    let out = against(
        &server,
        dir,
        Some(OPERATOR),
        &["policy", "update", "partial.yaml", "--reason", "again"],
    );
    out.expect_code(0, "the same update again");
    assert!(out.stdout.contains("no change"), "{}", out.stdout);
    assert_eq!(show("policy show after updates")["version"], 3);
    server.terminate();
}

#[test]
fn investigate_analyses_a_range_of_a_service_as_of_its_data_dir() {
    let tmp = tempdir();
    let cfg = serve_config(tmp.path());
    let data = path_str(&cfg.data_dir).to_owned();
    let rt = runtime();
    let client = http::client();
    let (server, receipts) = serve_and_decide(&cfg, &rt, &client);
    let until = receipts["r5"]["ts_ms"].as_u64().unwrap().to_string();
    let range = ["investigate", "--from-ms", "0", "--to-ms", until.as_str()];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        let mut args = range.to_vec();
        args.extend_from_slice(extra);
        args
    };
    let out = against(&server, tmp.path(), Some(AUDITOR), &with(&["--analysis"]));
    out.expect_code(0, "investigate --server --analysis");
    let analysis = out.json();
    assert_eq!(analysis["entry_count"], 6, "{analysis}");
    assert_eq!(
        analysis["by_tool"],
        json!({"kernel.create": 1, "echo": 3, "add": 1, "rm": 1}),
        "denied requests count under the tool they asked for"
    );
    assert_eq!(analysis["by_decision"], json!({"ALLOW": 3, "DENY": 3}));
    assert_eq!(
        analysis["by_actor"],
        json!({"SYSTEM": 1, "agent-001": 2, "agent-002": 1, "agent-003": 1, "agent-009": 1})
    );
    let errors: Vec<&Value> = analysis["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["request_id"])
        .collect();
    assert_eq!(errors, [&json!("r2"), &json!("r4"), &json!("r5")]);
    assert_eq!(
        analysis["time_range"],
        json!({"start": 0, "end": receipts["r5"]["ts_ms"]})
    );

    let out = against(
        &server,
        tmp.path(),
        Some(AUDITOR),
        &with(&["--actor", "agent-001", "--decision", "DENY"]),
    );
    out.expect_code(0, "investigate --server (text, filtered)");
    assert!(
        out.stdout.contains("1 entries in range: 0 ALLOW, 1 DENY"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("by tool: rm 1\n"), "{}", out.stdout);
    assert!(out.stdout.contains("errors: 1\n"), "{}", out.stdout);
    let out = against(
        &server,
        tmp.path(),
        Some(AUDITOR),
        &with(&["--tool", "echo", "--json"]),
    );
    out.expect_code(0, "investigate --server --tool --json");
    let ids: Vec<String> = out
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["request_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids, ["r1", "r2", "r4"]);
    let out = against(&server, tmp.path(), None, &with(&["--analysis"]));
    out.expect_unusable("investigate --server without a token");
    assert!(out.stderr.contains("KERNELS_TOKEN"), "{}", out.stderr);
    let online = against(
        &server,
        tmp.path(),
        Some(AUDITOR),
        &with(&["--decision", "DENY", "--analysis"]),
    )
    .json();
    server.terminate();

    // The same analysis from the data dir.
    let mut args = with(&["--decision", "DENY", "--analysis"]);
    args.extend(["--data-dir", data.as_str()]);
    let out = run(tmp.path(), &args, None);
    out.expect_code(0, "investigate --data-dir --analysis");
    assert_eq!(out.json(), online);
    assert_eq!(online["entry_count"], 3);
}

#[test]
fn a_tamper_report_lists_the_first_twenty_problems_and_counts_the_rest() {
    let tmp = tempdir();
    let mut doc = read_json(&fixtures().join("strict/bundle.ledger_entries.json"));
    for i in 0..30 {
        entries_of(&mut doc)[i]["actor"] = json!(format!("tampered-{i}"));
    }
    let path = tmp.path().join("many.json");
    write_json(&path, &doc);
    let out = run(tmp.path(), &["verify", path_str(&path)], None);
    out.expect_code(1, "verify a bundle with 30 changed entries");
    assert!(out.stdout.contains("errors (30):\n"), "{}", out.stdout);
    let listed = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("  entry "))
        .count();
    assert_eq!(listed, 20, "{}", out.stdout);
    assert!(
        out.stdout
            .contains("  … and 10 more (30 in all; --json lists every one)"),
        "{}",
        out.stdout
    );
    let out = run(tmp.path(), &["verify", "--json", path_str(&path)], None);
    assert_eq!(out.json()["errors"].as_array().unwrap().len(), 30);
}

#[test]
fn health_follows_the_daily_check_and_says_when_it_cannot_check() {
    let tmp = tempdir();
    let cfg = serve_config(tmp.path());
    let server = Server::start(&cfg);
    let dir = tmp.path();
    // Without a token the state cannot be checked: never HEALTHY.
    let out = against(&server, dir, None, &["health"]);
    out.expect_unusable("health without a token");
    assert!(
        out.stderr.contains("cannot check the kernel's state"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("KERNELS_TOKEN"), "{}", out.stderr);
    assert!(!out.stdout.contains("HEALTHY"), "{}", out.stdout);
    let out = against(&server, dir, Some("not-a-token-123"), &["health", "--json"]);
    out.expect_code(2, "health with a refused token");
    assert_eq!(out.json()["health"], "UNKNOWN");

    let out = against(&server, dir, Some(AUDITOR), &["health"]);
    out.expect_code(0, "health");
    assert!(
        out.stdout.trim_end().ends_with("\nHEALTHY"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("audit_integrity"), "{}", out.stdout);
    let out = against(&server, dir, Some(AUDITOR), &["health", "--json"]);
    out.expect_code(0, "health --json");
    let report = out.json();
    assert_eq!(
        (&report["health"], &report["healthy"]),
        (&json!("HEALTHY"), &json!(true))
    );
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "service",
            "kernel_state",
            "audit_integrity",
            "rotation",
            "decision_distribution",
            "recent_activity"
        ]
    );

    // A halted kernel passes (the play's IDLE or HALTED), said first.
    let out = against(
        &server,
        dir,
        Some(OPERATOR),
        &["halt", "--reason", "incident 7"],
    );
    out.expect_code(0, "halt");
    let out = against(&server, dir, Some(AUDITOR), &["health"]);
    out.expect_code(0, "health of a halted kernel");
    assert!(
        out.stdout.starts_with("HALTED since entry "),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("incident 7"), "{}", out.stdout);

    // Rotation is off: a manual rotation is refused, with the service's reason.
    let out = against(&server, dir, Some(OPERATOR), &["rotate"]);
    out.expect_unusable("rotate without a bucket");
    assert!(
        out.stderr.contains("409") && out.stderr.contains("no bucket"),
        "{}",
        out.stderr
    );
    let url = server.url("");
    server.terminate();
    // Nothing answers: the check cannot be made.
    let mut cmd = support::process::command(dir);
    cmd.env("KERNELS_TOKEN", AUDITOR);
    let out = support::process::run_with(cmd, &["health", "--server", &url], None);
    out.expect_unusable("health of a stopped service");
}

#[test]
fn a_sigterm_right_after_the_serving_line_stops_cleanly() {
    // The service prints "serving on" only once SIGTERM and Ctrl-C are
    // handled: a supervisor that stops it at once gets a clean stop (exit 0,
    // a kernel.stop entry), never a kill by the signal's default action.
    use std::io::BufRead;
    let tmp = tempdir();
    let cfg = serve_config(tmp.path());
    let rounds = 8;
    for round in 0..rounds {
        let mut child = support::process::command(&cfg.cwd)
            .args(cfg.args())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let announced = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.starts_with("kernels: serving on "));
        assert!(announced, "round {round}: no serving line");
        support::process::signal(child.id(), "TERM");
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let status =
            support::process::wait_deadline(&mut child, std::time::Duration::from_secs(30))
                .expect("kernels serve stops after SIGTERM");
        assert_eq!(status.code(), Some(0), "round {round}: {status:?} {rest:?}");
    }
    let data = cfg.data_dir.to_str().unwrap().to_owned();
    let out = run(tmp.path(), &["export", "--data-dir", &data], None);
    out.expect_code(0, "export");
    let (_, entries) = bundle_entries(&out.stdout);
    let stops = entries
        .iter()
        .filter(|e| e["tool_name"] == "kernel.stop")
        .count();
    assert_eq!(stops, rounds);
}
