//! Provable history over HTTP, end to end: a real `kernels serve` on
//! 127.0.0.1:0 answers `/v1/checkpoint`, `/v1/checkpoint/key`,
//! `/v1/proofs/inclusion` and `/v1/proofs/consistency`; what it answers is
//! checked offline with the real binary (`kernels checkpoint verify`,
//! `kernels proof verify`) and, independently of our code, with
//! `tlog_tiles` (Cloudflare's port of Go's sumdb/tlog) against the root in
//! the signed checkpoint — across restarts, a halt and recovery, and the
//! format migration of an old data dir.

mod support;

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{Value, json};
use support::datadir::copy_dir;
use support::http;
use support::process::{AGENT, AUDITOR, OPERATOR, Output, ServeConfig, Server, run};

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path_str(&path).to_owned()
}

fn config(tmp: &Path, kernel_id: &str) -> ServeConfig {
    let policy = tmp.join("policy.yaml");
    std::fs::write(
        &policy,
        "allowed_actors: [agent-001]\nallowed_tools: [echo]\n",
    )
    .unwrap();
    ServeConfig {
        cwd: tmp.to_owned(),
        data_dir: tmp.join("data"),
        policy,
        kernel_id: kernel_id.into(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A plain-text GET: (status, body).
fn get_text(rt: &tokio::runtime::Runtime, url: &str, token: &str) -> (u16, String) {
    rt.block_on(async {
        let resp = http::client()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = resp.text().await.unwrap();
        if status == 200 {
            assert_eq!(ctype.as_deref(), Some("text/plain; charset=utf-8"), "{url}");
        }
        (status, body)
    })
}

fn get_json(rt: &tokio::runtime::Runtime, url: &str, token: &str) -> (u16, Value) {
    rt.block_on(http::get(&http::client(), url, token))
}

/// Submits `n` requests; answers the receipts (seq and evidence hash).
fn submit(
    rt: &tokio::runtime::Runtime,
    server: &Server,
    tag: &str,
    n: usize,
) -> Vec<(u64, String)> {
    rt.block_on(async {
        let client = http::client();
        let mut out = Vec::new();
        for i in 0..n {
            let actor = if i % 4 == 0 { "agent-009" } else { "agent-001" };
            let body = json!({"request_id": format!("{tag}-{i}"), "actor": actor,
                "intent": format!("echo {i}"),
                "tool_call": {"name": "echo", "params": {"text": format!("t{i}")}},
                "params": {"text": format!("t{i}")}});
            let (code, r) = http::post(&client, &server.url("/v1/requests"), AGENT, &body).await;
            assert_eq!(code, 200, "{r}");
            out.push((
                r["ledger_seq"].as_u64().unwrap(),
                r["evidence_hash"].as_str().unwrap().to_owned(),
            ));
        }
        out
    })
}

fn valid(out: &Output, what: &str) {
    out.expect_code(0, what);
    assert!(out.stdout.starts_with("VALID"), "{what}: {}", out.stdout);
}

fn invalid(out: &Output, what: &str) {
    out.expect_code(1, what);
    assert!(!out.stderr.contains("panicked"), "{what}: {}", out.stderr);
}

/// The size and root a checkpoint text states, read here without our parser.
fn size_and_root(checkpoint: &str) -> (u64, [u8; 32]) {
    let mut lines = checkpoint.lines();
    let _origin = lines.next().unwrap();
    let size = lines.next().unwrap().parse().unwrap();
    let root = base64::engine::general_purpose::STANDARD
        .decode(lines.next().unwrap())
        .unwrap();
    (size, root.try_into().unwrap())
}

fn go_hash(hex_text: &str) -> tlog_tiles::Hash {
    let bytes = hex::decode(hex_text).unwrap();
    tlog_tiles::Hash(bytes.try_into().unwrap())
}

/// The RFC 6962 leaf hash of an entry hash, computed here from the RFC.
fn leaf_of(entry_hash: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update([0u8]);
    h.update(hex::decode(entry_hash).unwrap());
    hex::encode(h.finalize())
}

/// Checks an inclusion proof document: with `kernels proof verify` (and its
/// damaged copies refused), and with tlog_tiles against the signed root.
fn check_inclusion(dir: &Path, key: &str, doc: &Value, entry_hash: &str, name: &str) {
    let seq = doc["seq"].as_u64().unwrap();
    let (size, root) = size_and_root(doc["checkpoint"].as_str().unwrap());
    assert_eq!(doc["tree_size"].as_u64(), Some(size), "{doc}");
    assert_eq!(doc["leaf_hash"].as_str().unwrap(), leaf_of(entry_hash));
    let proof: Vec<tlog_tiles::Hash> = doc["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| go_hash(h.as_str().unwrap()))
        .collect();
    tlog_tiles::check_record(
        &proof,
        size,
        tlog_tiles::Hash(root),
        seq,
        go_hash(&leaf_of(entry_hash)),
    )
    .unwrap_or_else(|e| panic!("tlog_tiles refuses {name}: {e:?}"));

    let file = write(dir, name, &doc.to_string());
    valid(
        &run(
            dir,
            &[
                "proof",
                "verify",
                "--key",
                key,
                &file,
                "--entry-hash",
                entry_hash,
            ],
            None,
        ),
        name,
    );
    // Another entry's hash: refused.
    let mut other = hex::decode(entry_hash).unwrap();
    other[0] ^= 1;
    invalid(
        &run(
            dir,
            &[
                "proof",
                "verify",
                "--key",
                key,
                &file,
                "--entry-hash",
                &hex::encode(&other),
            ],
            None,
        ),
        "another entry",
    );
    // A flipped proof hash: refused.
    if !proof.is_empty() {
        let mut bad = doc.clone();
        let h = bad["proof"][0].as_str().unwrap().to_owned();
        let flipped = format!("{}{}", if h.starts_with('0') { "1" } else { "0" }, &h[1..]);
        bad["proof"][0] = json!(flipped);
        let bad_file = write(dir, &format!("bad-{name}"), &bad.to_string());
        invalid(
            &run(
                dir,
                &[
                    "proof",
                    "verify",
                    "--key",
                    key,
                    &bad_file,
                    "--entry-hash",
                    entry_hash,
                ],
                None,
            ),
            "a flipped proof hash",
        );
    }
}

/// An altered signature: the checkpoint's last base64 character changed.
fn altered(checkpoint: &str) -> String {
    let body = checkpoint.trim_end_matches('\n');
    let last = body.chars().last().unwrap();
    let swap = if last == 'A' { 'B' } else { 'A' };
    format!("{}{swap}\n", &body[..body.len() - last.len_utf8()])
}

/// Checks a consistency proof document from `old` (a checkpoint file), with
/// the binary and with tlog_tiles.
fn check_consistency(dir: &Path, key: &str, doc: &Value, old: &str, name: &str) {
    let (old_size, old_root) = size_and_root(&std::fs::read_to_string(old).unwrap());
    let (size, root) = size_and_root(doc["checkpoint"].as_str().unwrap());
    assert_eq!(doc["from_size"].as_u64(), Some(old_size));
    let proof: Vec<tlog_tiles::Hash> = doc["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| go_hash(h.as_str().unwrap()))
        .collect();
    tlog_tiles::check_tree(
        &proof,
        size,
        tlog_tiles::Hash(root),
        old_size,
        tlog_tiles::Hash(old_root),
    )
    .unwrap_or_else(|e| panic!("tlog_tiles refuses {name}: {e:?}"));
    let file = write(dir, name, &doc.to_string());
    valid(
        &run(
            dir,
            &[
                "proof",
                "verify",
                "--key",
                key,
                &file,
                "--old-checkpoint",
                old,
            ],
            None,
        ),
        name,
    );
    if !proof.is_empty() {
        let mut bad = doc.clone();
        let h = bad["proof"][0].as_str().unwrap().to_owned();
        let flipped = format!("{}{}", if h.starts_with('0') { "1" } else { "0" }, &h[1..]);
        bad["proof"][0] = json!(flipped);
        let bad_file = write(dir, &format!("bad-{name}"), &bad.to_string());
        invalid(
            &run(
                dir,
                &[
                    "proof",
                    "verify",
                    "--key",
                    key,
                    &bad_file,
                    "--old-checkpoint",
                    old,
                ],
                None,
            ),
            "a flipped consistency hash",
        );
    }
}

#[test]
fn every_acknowledged_entry_is_provable_across_restarts_and_a_recovery() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cfg = config(dir, "proof-http");
    let rt = runtime();
    let server = Server::start(&cfg);
    // With no key configured, one was created in the data dir.
    assert!(cfg.data_dir.join("signing.key").exists());
    let (code, key) = get_text(&rt, &server.url("/v1/checkpoint/key"), AGENT);
    assert_eq!(code, 200, "{key}");
    let key = key.trim().to_owned();
    assert!(key.starts_with("kernels/proof-http+"), "{key}");
    assert!(server.stderr().contains(&key), "the new key is logged");

    let first = submit(&rt, &server, "a", 30);
    let (code, cp1) = get_text(&rt, &server.url("/v1/checkpoint"), AUDITOR);
    assert_eq!(code, 200, "{cp1}");
    let (size1, _) = size_and_root(&cp1);
    // Every acknowledged entry is under it.
    assert!(size1 > first.last().unwrap().0, "{cp1}");
    let cp1_file = write(dir, "cp1.txt", &cp1);
    valid(
        &run(
            dir,
            &["checkpoint", "verify", "--key", &key, &cp1_file],
            None,
        ),
        "checkpoint 1",
    );
    let bad = write(dir, "cp1-bad.txt", &altered(&cp1));
    invalid(
        &run(dir, &["checkpoint", "verify", "--key", &key, &bad], None),
        "an altered signature",
    );

    for (i, (seq, hash)) in first.iter().enumerate().step_by(7) {
        let (code, doc) = get_json(
            &rt,
            &server.url(&format!("/v1/proofs/inclusion?seq={seq}")),
            AGENT,
        );
        assert_eq!(code, 200, "{doc}");
        check_inclusion(dir, &key, &doc, hash, &format!("inc-{i}.json"));
        // Against an older tree size too.
        let (code, doc) = get_json(
            &rt,
            &server.url(&format!(
                "/v1/proofs/inclusion?seq={seq}&tree_size={}",
                seq + 1
            )),
            AGENT,
        );
        assert_eq!(code, 200, "{doc}");
        assert_eq!(doc["tree_size"], seq + 1);
        check_inclusion(dir, &key, &doc, hash, &format!("inc-old-{i}.json"));
    }
    // An inclusion proof whose checkpoint's signature was altered: refused.
    let (_, mut doc) = get_json(
        &rt,
        &server.url(&format!("/v1/proofs/inclusion?seq={}", first[3].0)),
        AGENT,
    );
    doc["checkpoint"] = json!(altered(doc["checkpoint"].as_str().unwrap()));
    let file = write(dir, "inc-altered.json", &doc.to_string());
    invalid(
        &run(
            dir,
            &[
                "proof",
                "verify",
                "--key",
                &key,
                &file,
                "--entry-hash",
                &first[3].1,
            ],
            None,
        ),
        "an inclusion proof with an altered checkpoint",
    );

    // A restart: the same key, and the new tree extends the old one.
    let (code, stderr) = server.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    let server = Server::start(&cfg);
    let (_, key2) = get_text(&rt, &server.url("/v1/checkpoint/key"), AGENT);
    assert_eq!(key2.trim(), key);
    let second = submit(&rt, &server, "b", 20);
    let (_, cp2) = get_text(&rt, &server.url("/v1/checkpoint"), AGENT);
    let (size2, _) = size_and_root(&cp2);
    assert!(size2 > second.last().unwrap().0);
    let (code, doc) = get_json(
        &rt,
        &server.url(&format!("/v1/proofs/consistency?from_size={size1}")),
        AGENT,
    );
    assert_eq!(code, 200, "{doc}");
    assert_eq!(doc["to_size"], size2);
    check_consistency(dir, &key, &doc, &cp1_file, "cons-restart.json");
    let cp2_file = write(dir, "cp2.txt", &cp2);

    // A halt and a recovery: the same tree goes on.
    rt.block_on(async {
        let client = http::client();
        for path in ["/v1/halt", "/v1/recover"] {
            let (code, r) = http::post(
                &client,
                &server.url(path),
                OPERATOR,
                &json!({"reason": "drill"}),
            )
            .await;
            assert_eq!(code, 200, "{path}: {r}");
        }
    });
    let third = submit(&rt, &server, "c", 5);
    let (_, cp3) = get_text(&rt, &server.url("/v1/checkpoint"), AGENT);
    let (size3, _) = size_and_root(&cp3);
    for (from, old) in [(size1, &cp1_file), (size2, &cp2_file)] {
        let (code, doc) = get_json(
            &rt,
            &server.url(&format!(
                "/v1/proofs/consistency?from_size={from}&to_size={size3}"
            )),
            AGENT,
        );
        assert_eq!(code, 200, "{doc}");
        check_consistency(dir, &key, &doc, old, &format!("cons-{from}.json"));
    }
    // The old entries are still provable in the new tree.
    let (seq, hash) = &first[0];
    let (_, doc) = get_json(
        &rt,
        &server.url(&format!("/v1/proofs/inclusion?seq={seq}")),
        AGENT,
    );
    assert_eq!(doc["tree_size"], size3);
    check_inclusion(dir, &key, &doc, hash, "inc-after-recovery.json");
    let (seq, hash) = third.last().unwrap();
    let (_, doc) = get_json(
        &rt,
        &server.url(&format!("/v1/proofs/inclusion?seq={seq}")),
        AGENT,
    );
    check_inclusion(dir, &key, &doc, hash, "inc-last.json");

    // The whole exported chain has the signed tree head.
    let (code, stderr) = server.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    let bundle = dir.join("bundle.json");
    run(
        dir,
        &[
            "export",
            "--data-dir",
            path_str(&cfg.data_dir),
            "--out",
            path_str(&bundle),
        ],
        None,
    )
    .expect_code(0, "export");
    let cp3_file = write(dir, "cp3.txt", &cp3);
    valid(
        &run(
            dir,
            &[
                "verify",
                path_str(&bundle),
                "--key",
                &key,
                "--checkpoint",
                &cp3_file,
            ],
            None,
        ),
        "the bundle against the last checkpoint",
    );
}

#[test]
fn out_of_range_or_malformed_arguments_are_400_and_tokens_are_required() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "proof-400");
    let rt = runtime();
    let server = Server::start(&cfg);
    submit(&rt, &server, "a", 3);
    let (_, cp) = get_text(&rt, &server.url("/v1/checkpoint"), AGENT);
    let (size, _) = size_and_root(&cp);
    for (query, code) in [
        (format!("/v1/proofs/inclusion?seq={size}"), "out_of_range"),
        (
            format!("/v1/proofs/inclusion?seq=0&tree_size={}", size + 1),
            "out_of_range",
        ),
        (
            "/v1/proofs/inclusion?seq=2&tree_size=2".into(),
            "out_of_range",
        ),
        (
            "/v1/proofs/inclusion?seq=0&tree_size=0".into(),
            "out_of_range",
        ),
        ("/v1/proofs/inclusion".into(), "invalid_query"),
        ("/v1/proofs/inclusion?seq=-1".into(), "invalid_query"),
        ("/v1/proofs/inclusion?seq=abc".into(), "invalid_query"),
        ("/v1/proofs/inclusion?seq=0&size=3".into(), "invalid_query"),
        (
            format!("/v1/proofs/inclusion?seq={}", u64::MAX),
            "out_of_range",
        ),
        ("/v1/proofs/consistency?from_size=0".into(), "out_of_range"),
        (
            format!("/v1/proofs/consistency?from_size={}", size + 1),
            "out_of_range",
        ),
        (
            "/v1/proofs/consistency?from_size=3&to_size=2".into(),
            "out_of_range",
        ),
        (
            format!("/v1/proofs/consistency?from_size=1&to_size={}", size + 5),
            "out_of_range",
        ),
        ("/v1/proofs/consistency".into(), "invalid_query"),
        ("/v1/proofs/consistency?from_size=x".into(), "invalid_query"),
    ] {
        let (status, body) = get_json(&rt, &server.url(&query), AGENT);
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["code"], code, "{query}: {body}");
    }
    // Equal sizes: an empty proof, valid.
    let (status, body) = get_json(
        &rt,
        &server.url(&format!(
            "/v1/proofs/consistency?from_size={size}&to_size={size}"
        )),
        AGENT,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["proof"], json!([]));
    for path in [
        "/v1/checkpoint",
        "/v1/checkpoint/key",
        "/v1/proofs/inclusion?seq=0",
        "/v1/proofs/consistency?from_size=1",
    ] {
        let (status, _) = get_text(&rt, &server.url(path), "not-a-token-at-all");
        assert_eq!(status, 401, "{path}");
    }
    let (code, stderr) = server.terminate();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn a_configured_key_file_signs_and_another_key_is_refused_unless_rotated() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cfg = config(dir, "keyed");
    let keygen = |file: &str| {
        let out = run(
            dir,
            &["keygen", "--kernel-id", "keyed", "--out", file],
            None,
        );
        out.expect_code(0, "keygen");
        out.stdout.trim().to_owned()
    };
    let key_a = keygen("a.key");
    let key_b = keygen("b.key");
    let env = |file: &str| {
        vec![(
            "KERNELS_SIGNING_KEY_FILE".to_owned(),
            path_str(&dir.join(file)).to_owned(),
        )]
    };
    let rt = runtime();

    let server = Server::start_env(&cfg, &env("a.key"));
    assert!(!cfg.data_dir.join("signing.key").exists());
    let (_, served) = get_text(&rt, &server.url("/v1/checkpoint/key"), AGENT);
    assert_eq!(served.trim(), key_a);
    submit(&rt, &server, "a", 4);
    let (_, cp) = get_text(&rt, &server.url("/v1/checkpoint"), AGENT);
    let cp_a = write(dir, "cp-a.txt", &cp);
    valid(
        &run(dir, &["checkpoint", "verify", "--key", &key_a, &cp_a], None),
        "checkpoint by key a",
    );
    invalid(
        &run(dir, &["checkpoint", "verify", "--key", &key_b, &cp_a], None),
        "checkpoint by key a, checked with key b",
    );
    server.terminate();

    // Another key: refused, nothing written.
    let failure = Server::try_start_env(&cfg, &env("b.key"))
        .err()
        .expect("a refusal");
    assert_eq!(failure.code, Some(2), "{}", failure.stderr);
    assert!(
        failure.stderr.contains("rotate-signing-key"),
        "{}",
        failure.stderr
    );
    // A key named for another log: refused.
    let out = run(
        dir,
        &["keygen", "--kernel-id", "other", "--out", "other.key"],
        None,
    );
    out.expect_code(0, "keygen other");
    let failure = Server::try_start_env(&cfg, &env("other.key"))
        .err()
        .expect("a refusal");
    assert!(failure.stderr.contains("origin"), "{}", failure.stderr);
    // A missing key file: refused.
    let failure = Server::try_start_env(&cfg, &env("missing.key"))
        .err()
        .expect("a refusal");
    assert!(failure.stderr.contains("missing.key"), "{}", failure.stderr);

    // A deliberate rotation: recorded, and the new key signs a tree that
    // extends the one the old key signed.
    let mut rotate = env("b.key");
    rotate.push(("KERNELS_ROTATE_SIGNING_KEY".into(), "true".into()));
    let server = Server::start_env(&cfg, &rotate);
    let (_, served) = get_text(&rt, &server.url("/v1/checkpoint/key"), AGENT);
    assert_eq!(served.trim(), key_b);
    let (old_size, _) = size_and_root(&cp);
    let (code, doc) = get_json(
        &rt,
        &server.url(&format!("/v1/proofs/consistency?from_size={old_size}")),
        AGENT,
    );
    assert_eq!(code, 200, "{doc}");
    let (_, entries) = get_json(&rt, &server.url("/v1/entries?limit=1000"), AUDITOR);
    let rotation_recorded = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e.to_string().contains(&key_a) && e.to_string().contains(&key_b));
    assert!(rotation_recorded, "the rotation is recorded: {entries}");
    // The old checkpoint and the new proof: the new key's tree extends it.
    let (new_size, new_root) = size_and_root(doc["checkpoint"].as_str().unwrap());
    let (_, old_root) = size_and_root(&cp);
    let proof: Vec<tlog_tiles::Hash> = doc["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| go_hash(h.as_str().unwrap()))
        .collect();
    tlog_tiles::check_tree(
        &proof,
        new_size,
        tlog_tiles::Hash(new_root),
        old_size,
        tlog_tiles::Hash(old_root),
    )
    .unwrap();
    server.terminate();
}

#[test]
fn an_old_data_dir_migrated_to_format_4_proves_its_old_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut cfg = config(dir, "x");
    let data: PathBuf = dir.join("old-data");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/datadir-v1"),
        &data,
    );
    let before = std::fs::read_to_string(data.join("KERNELS_FORMAT")).unwrap();
    assert!(before.contains("format_version=1"), "{before}");
    // The fixture's own kernel id.
    let bundle_before = dir.join("before.json");
    run(
        dir,
        &[
            "export",
            "--data-dir",
            path_str(&data),
            "--out",
            path_str(&bundle_before),
        ],
        None,
    )
    .expect_code(0, "export of the old data dir");
    let old: Value =
        serde_json::from_str(&std::fs::read_to_string(&bundle_before).unwrap()).unwrap();
    let old_entries = old["ledger_entries"].as_array().unwrap().clone();
    cfg.kernel_id = old_entries[0]["payload"]["kernel_id"]
        .as_str()
        .unwrap()
        .to_owned();
    cfg.data_dir = data.clone();

    let rt = runtime();
    let server = Server::start(&cfg);
    assert!(
        std::fs::read_to_string(data.join("KERNELS_FORMAT"))
            .unwrap()
            .contains(&format!(
                "format_version={}",
                kernels::STORAGE_FORMAT_VERSION
            ))
    );
    let (_, key) = get_text(&rt, &server.url("/v1/checkpoint/key"), AGENT);
    let key = key.trim().to_owned();
    let (_, cp) = get_text(&rt, &server.url("/v1/checkpoint"), AGENT);
    let cp_file = write(dir, "cp.txt", &cp);
    // Every entry written before the migration is provable.
    for entry in &old_entries {
        let seq = entry["ledger_seq"].as_u64().unwrap();
        let (code, doc) = get_json(
            &rt,
            &server.url(&format!("/v1/proofs/inclusion?seq={seq}")),
            AGENT,
        );
        assert_eq!(code, 200, "{doc}");
        check_inclusion(
            dir,
            &key,
            &doc,
            entry["entry_hash"].as_str().unwrap(),
            &format!("old-{seq}.json"),
        );
    }
    let (code, stderr) = server.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    // A restart: the tree extends the one signed after the migration.
    let server = Server::start(&cfg);
    let (size, _) = size_and_root(&cp);
    let (code, doc) = get_json(
        &rt,
        &server.url(&format!("/v1/proofs/consistency?from_size={size}")),
        AGENT,
    );
    assert_eq!(code, 200, "{doc}");
    check_consistency(dir, &key, &doc, &cp_file, "cons-migrated.json");
    server.terminate();
}
