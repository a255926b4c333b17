//! `kernels permit issue` with the real binary: it reproduces the Python
//! library's permits byte for byte from their inputs (the fixtures under
//! tests/fixtures/python/permits*), reads its key only from the configured
//! keyring, refuses bad input cleanly, and its permits are accepted by the
//! real server for the bound tool and refused for another.

mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::http;
use support::process::{AGENT, AUDITOR, ServeConfig, Server, command, run, run_with};

/// The library-built permits of the fixtures (the tampered, mis-keyed and
/// mis-identified ones were not made by the builder and are left out).
const BUILT_BY_THE_LIBRARY: &[(&str, &str)] = &[
    ("permits", "P_action_add_runs_echo"),
    ("permits", "P_all_wrong"),
    ("permits", "P_empty_req_params"),
    ("permits", "P_expired"),
    ("permits", "P_forbidden"),
    ("permits", "P_ghost"),
    ("permits", "P_intent_only"),
    ("permits", "P_malformed_forbidden"),
    ("permits", "P_multi2"),
    ("permits", "P_not_yet"),
    ("permits", "P_ok"),
    ("permits", "P_old_key"),
    ("permits", "P_params_mismatch"),
    ("permits", "P_then_jur_deny"),
    ("permits", "P_unicode"),
    ("permits", "P_wrong_jurisdiction"),
    ("permits", "P_wrong_subject"),
    ("permits_explicit_tools", "P_ok"),
    ("permits_restart", "P_restart"),
];

fn fixture(dir: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/python")
        .join(dir)
        .join("scenario.json");
    kernels::canonical::parse(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string"))
}

/// A config whose keyring names every fixture key by an environment variable.
fn write_env_keyring_config(dir: &Path, keyring: &Value) {
    let mut yaml = String::from("permits:\n  keys_env:\n");
    for id in keyring.as_object().unwrap().keys() {
        yaml.push_str(&format!("    {id}: {}\n", env_var_of(id)));
    }
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(dir.join("config/kernels.yaml"), yaml).unwrap();
}

fn env_var_of(key_id: &str) -> String {
    format!(
        "TEST_PERMIT_KEY_{}",
        key_id.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    )
}

#[test]
fn every_library_permit_is_reproduced_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    for (dir, name) in BUILT_BY_THE_LIBRARY {
        let scenario = fixture(dir);
        write_env_keyring_config(tmp.path(), &scenario["keyring"]);
        let want = &scenario["permits"][name];
        assert!(want.is_object(), "{dir}/{name} is in the fixture");
        std::fs::write(tmp.path().join("params.json"), want["params"].to_string()).unwrap();
        std::fs::write(
            tmp.path().join("constraints.json"),
            want["constraints"].to_string(),
        )
        .unwrap();
        let key_id = str_of(want, "key_id");
        let mut cmd = command(tmp.path());
        for (id, key) in scenario["keyring"].as_object().unwrap() {
            cmd.env(env_var_of(id), str_of(key, "hex"));
        }
        let valid_from = want["valid_from_ms"].to_string();
        let valid_until = want["valid_until_ms"].to_string();
        let max = want["max_executions"].to_string();
        let out = run_with(
            cmd,
            &[
                "permit",
                "issue",
                "--key-id",
                key_id,
                "--issuer",
                str_of(want, "issuer"),
                "--subject",
                str_of(want, "subject"),
                "--action",
                str_of(want, "action"),
                "--jurisdiction",
                str_of(want, "jurisdiction"),
                "--params",
                "params.json",
                "--constraints",
                "constraints.json",
                "--valid-from-ms",
                &valid_from,
                "--valid-until-ms",
                &valid_until,
                "--max-executions",
                &max,
                "--evidence-hash",
                str_of(want, "evidence_hash"),
                "--proposal-hash",
                str_of(want, "proposal_hash"),
                "--nonce",
                str_of(want, "nonce"),
            ],
            None,
        );
        out.expect_code(0, &format!("{dir}/{name}"));
        // Field order, number text and UTF-8 included: the same bytes.
        assert_eq!(
            out.stdout.trim_end(),
            want.to_string(),
            "{dir}/{name}: the issued permit differs from the library's"
        );
    }
}

#[test]
fn the_key_comes_only_from_the_configured_keyring() {
    let tmp = tempfile::tempdir().unwrap();
    let base = [
        "permit",
        "issue",
        "--issuer",
        "ops",
        "--subject",
        "alice",
        "--action",
        "echo",
        "--valid-for",
        "10m",
    ];
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        base.iter().chain(extra).copied().collect()
    }

    // No configuration at all: no keyring, a clear refusal.
    run(tmp.path(), &with(&base, &["--key-id", "k1"]), None)
        .expect_unusable("no keyring configured");
    // There is no flag for the key itself.
    let out = run(
        tmp.path(),
        &with(&base, &["--key-id", "k1", "--key", "00112233"]),
        None,
    );
    assert_eq!(out.code, Some(2), "a --key flag must not exist: {out:?}");

    std::fs::create_dir_all(tmp.path().join("config")).unwrap();
    std::fs::write(
        tmp.path().join("config/kernels.yaml"),
        "permits:\n  keys_env:\n    k1: TEST_PERMIT_K1\n  keys_file:\n    k2: k2.hex\n",
    )
    .unwrap();
    // The variable is not set.
    run(tmp.path(), &with(&base, &["--key-id", "k1"]), None).expect_unusable("unset key variable");
    // An unknown key id names the known ones.
    let out = run(tmp.path(), &with(&base, &["--key-id", "k9"]), None);
    out.expect_unusable("unknown key id");
    assert!(
        out.stderr.contains("k9") && out.stderr.contains("k1"),
        "{}",
        out.stderr
    );
    // A key that is not hex.
    let mut cmd = command(tmp.path());
    cmd.env("TEST_PERMIT_K1", "not-hex");
    run_with(cmd, &with(&base, &["--key-id", "k1"]), None).expect_unusable("non-hex key");
    // The key file is missing, then present.
    run(tmp.path(), &with(&base, &["--key-id", "k2"]), None).expect_unusable("missing key file");
    std::fs::write(tmp.path().join("k2.hex"), "0011223344556677\n").unwrap();
    let out = run(tmp.path(), &with(&base, &["--key-id", "k2"]), None);
    out.expect_code(0, "key from a file");
    let token = out.json();
    assert_eq!(token["key_id"], "k2");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let from = token["valid_from_ms"].as_u64().unwrap();
    assert!(
        from <= now_ms && now_ms - from < 60_000,
        "starts now: {token}"
    );
    assert_eq!(token["valid_until_ms"].as_u64().unwrap(), from + 600_000);
    assert_eq!(token["nonce"].as_str().unwrap().len(), 32);
    // Two permits never share a nonce.
    let again = run(tmp.path(), &with(&base, &["--key-id", "k2"]), None).json();
    assert_ne!(again["nonce"], token["nonce"]);

    // Bad input: a clear one-line refusal, nothing printed on stdout.
    for (extra, what) in [
        (
            &["--key-id", "k2", "--max-executions", "0"][..],
            "zero executions",
        ),
        (&["--key-id", "k2", "--nonce", "short"][..], "short nonce"),
        (
            &["--key-id", "k2", "--params", "missing.json"][..],
            "missing params file",
        ),
    ] {
        let out = run(tmp.path(), &with(&base, extra), None);
        out.expect_unusable(what);
        assert!(out.stdout.is_empty(), "{what}: {}", out.stdout);
    }
    let empty_window = [
        "permit",
        "issue",
        "--key-id",
        "k2",
        "--issuer",
        "ops",
        "--subject",
        "alice",
        "--action",
        "echo",
        "--valid-from-ms",
        "100",
        "--valid-until-ms",
        "100",
    ];
    run(tmp.path(), &empty_window, None).expect_unusable("an empty validity window");
    std::fs::write(tmp.path().join("list.json"), "[1, 2]").unwrap();
    run(
        tmp.path(),
        &with(&base, &["--key-id", "k2", "--params", "list.json"]),
        None,
    )
    .expect_unusable("params that are not an object");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issued_permit_is_accepted_for_its_tool_and_refused_for_another() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let key_hex = "746573742d7365637265742d6b65792d33322d62797465732d6c6f6e67313233";
    std::fs::write(dir.join("k1.hex"), key_hex).unwrap();
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(
        dir.join("config/kernels.yaml"),
        "permits:\n  keys_file:\n    k1: k1.hex\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("policy.yaml"),
        "allowed_actors: [alice]\nallowed_tools: [echo, add]\n",
    )
    .unwrap();
    std::fs::write(dir.join("params.json"), r#"{"text": "hello"}"#).unwrap();
    let out = run(
        dir,
        &[
            "permit",
            "issue",
            "--key-id",
            "k1",
            "--issuer",
            "ops@example.com",
            "--subject",
            "alice",
            "--action",
            "echo",
            "--params",
            "params.json",
            "--valid-for",
            "10m",
            "--max-executions",
            "2",
        ],
        None,
    );
    out.expect_code(0, "permit issue");
    let permit = out.json();

    let server = Server::start(&ServeConfig {
        cwd: dir.to_owned(),
        data_dir: "data".into(),
        policy: "policy.yaml".into(),
        kernel_id: "permits-001".into(),
    });
    let client = http::client();
    let url = server.url("/v1/requests");
    let request = |id: &str, tool: &str, params: Value, permit: &Value| {
        json!({"request_id": id, "actor": "alice", "intent": "use the permit",
               "tool_call": {"name": tool, "params": params}, "params": params, "permit": permit})
    };

    // The bound tool: allowed, and the tool ran.
    let (code, receipt) = http::post(
        &client,
        &url,
        AGENT,
        &request("p-1", "echo", json!({"text": "hello"}), &permit),
    )
    .await;
    assert_eq!(code, 200, "{receipt}");
    assert_eq!(receipt["decision"], "ALLOW", "{receipt}");
    assert_eq!(receipt["tool_result"], "hello");

    // Another tool (allowed by the policy): refused, the permit names echo.
    let (code, receipt) = http::post(
        &client,
        &url,
        AGENT,
        &request("p-2", "add", json!({"a": 1, "b": 2}), &permit),
    )
    .await;
    assert_eq!(code, 200, "{receipt}");
    assert_eq!(receipt["decision"], "DENY", "{receipt}");
    let error = receipt["error"].as_str().unwrap();
    assert!(error.contains("Permit verification failed"), "{error}");
    assert!(error.contains("ACTION_MISMATCH"), "{error}");

    // Other params than the permit's: refused.
    let (_, receipt) = http::post(
        &client,
        &url,
        AGENT,
        &request("p-3", "echo", json!({"text": "other"}), &permit),
    )
    .await;
    assert_eq!(receipt["decision"], "DENY", "{receipt}");
    assert!(
        receipt["error"]
            .as_str()
            .unwrap()
            .contains("PARAMS_MISMATCH")
    );

    // A tampered copy: refused.
    let mut tampered = permit.clone();
    tampered["max_executions"] = json!(50);
    let (_, receipt) = http::post(
        &client,
        &url,
        AGENT,
        &request("p-4", "echo", json!({"text": "hello"}), &tampered),
    )
    .await;
    assert_eq!(receipt["decision"], "DENY", "{receipt}");
    assert!(
        receipt["error"]
            .as_str()
            .unwrap()
            .contains("SIGNATURE_INVALID")
    );

    // Its second and last use, then a replay.
    let (_, receipt) = http::post(
        &client,
        &url,
        AGENT,
        &request("p-5", "echo", json!({"text": "hello"}), &permit),
    )
    .await;
    assert_eq!(receipt["decision"], "ALLOW", "{receipt}");
    let (_, receipt) = http::post(
        &client,
        &url,
        AGENT,
        &request("p-6", "echo", json!({"text": "hello"}), &permit),
    )
    .await;
    assert_eq!(receipt["decision"], "DENY", "{receipt}");
    assert!(
        receipt["error"]
            .as_str()
            .unwrap()
            .contains("REPLAY_DETECTED")
    );

    // The ledger recorded the permit on the ALLOW.
    let (_, page) = http::get(
        &client,
        &server.url("/v1/entries?from_seq=0&limit=100"),
        AUDITOR,
    )
    .await;
    let allow = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["request_id"] == "p-1")
        .expect("the ALLOW entry");
    assert_eq!(allow["permit_digest"], permit["permit_id"]);
    assert_eq!(allow["permit_verification"], "ALLOW");
    let (code, _) = server.terminate();
    assert_eq!(code, Some(0));
}
