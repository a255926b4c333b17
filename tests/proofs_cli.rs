//! Provable history from the command line, with the real binary: `keygen`,
//! `checkpoint verify`, `proof verify` and `verify BUNDLE --key
//! --checkpoint`, on a ledger written by a real `kernels serve` and
//! exported, with checkpoints and proofs built by the library over the
//! exported entries and signed with the key `kernels keygen` wrote.

mod support;

use std::path::Path;

use kernels::checkpoint::{Checkpoint, SignedCheckpoint};
use kernels::entry::Entry;
use kernels::merkle::tiles::{MemoryTiles, TiledNodes};
use kernels::merkle::{Hash, entry_leaf_hash};
use kernels::note::{KeyKind, SignerKey, VerifierKey};
use kernels::proofs::{ConsistencyProof, InclusionProof};
use serde_json::{Value, json};
use support::http;
use support::process::{AGENT, Output, ServeConfig, Server, run};

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path_str(&path).to_owned()
}

fn raw_hash(hex: &str) -> [u8; 32] {
    Hash::from_hex(hex).expect("an entry hash").0
}

/// Keygen in `dir`: the verifier key printed and the private key file.
fn keygen(dir: &Path, kernel_id: &str, file: &str) -> (VerifierKey, SignerKey) {
    let out = run(
        dir,
        &["keygen", "--kernel-id", kernel_id, "--out", file],
        None,
    );
    out.expect_code(0, "keygen");
    let vkey = VerifierKey::parse(out.stdout.trim()).expect("keygen prints a verifier key");
    let text = std::fs::read_to_string(dir.join(file)).unwrap();
    let skey = SignerKey::parse(text.trim()).expect("keygen writes a private key");
    assert_eq!(skey.verifier(), vkey);
    (vkey, skey)
}

/// Serves a fresh data dir, records decisions, stops, exports; answers the bundle.
fn served_bundle(tmp: &Path, kernel_id: &str) -> Value {
    let policy = tmp.join("policy.yaml");
    std::fs::write(
        &policy,
        "allowed_actors: [agent-001]\nallowed_tools: [echo]\n",
    )
    .unwrap();
    let cfg = ServeConfig {
        cwd: tmp.to_owned(),
        data_dir: tmp.join("data"),
        policy,
        kernel_id: kernel_id.into(),
    };
    let server = Server::start(&cfg);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = http::client();
    rt.block_on(async {
        for i in 0..40 {
            let actor = if i % 3 == 0 { "agent-009" } else { "agent-001" };
            let body = json!({"request_id": format!("r{i}"), "actor": actor,
                "intent": format!("echo {i}"),
                "tool_call": {"name": "echo", "params": {"text": format!("t{i}")}},
                "params": {"text": format!("t{i}")}});
            let (code, r) = http::post(&client, &server.url("/v1/requests"), AGENT, &body).await;
            assert_eq!(code, 200, "{r}");
        }
    });
    let (code, stderr) = server.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    let bundle = tmp.join("bundle.json");
    run(
        tmp,
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
    serde_json::from_str(&std::fs::read_to_string(&bundle).unwrap()).unwrap()
}

fn entries(bundle: &Value) -> Vec<Value> {
    bundle["ledger_entries"].as_array().unwrap().clone()
}

/// The tree over the first `n` entries of a bundle.
fn tree(entries: &[Value], n: usize) -> MemoryTiles {
    let mut tiles = MemoryTiles::new();
    for e in &entries[..n] {
        tiles.append(entry_leaf_hash(&raw_hash(
            e["entry_hash"].as_str().unwrap(),
        )));
    }
    tiles
}

fn sign(key: &SignerKey, origin: &str, tiles: &MemoryTiles) -> SignedCheckpoint {
    Checkpoint::new(origin, tiles.size(), tiles.root())
        .sign(key)
        .unwrap()
}

fn valid(out: &Output, what: &str) {
    out.expect_code(0, what);
    assert!(out.stdout.starts_with("VALID"), "{what}: {}", out.stdout);
}

fn invalid(out: &Output, what: &str) {
    out.expect_code(1, what);
    assert!(!out.stderr.contains("panicked"), "{what}: {}", out.stderr);
}

#[test]
fn keygen_writes_a_private_key_once_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let (vkey, _) = keygen(tmp.path(), "prod-001", "signing.key");
    assert_eq!(vkey.name(), "kernels/prod-001");
    let mode = std::fs::metadata(tmp.path().join("signing.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let before = std::fs::read(tmp.path().join("signing.key")).unwrap();
    run(
        tmp.path(),
        &["keygen", "--kernel-id", "prod-001", "--out", "signing.key"],
        None,
    )
    .expect_unusable("keygen over an existing file");
    assert_eq!(
        std::fs::read(tmp.path().join("signing.key")).unwrap(),
        before
    );

    let out = run(
        tmp.path(),
        &[
            "keygen",
            "--kernel-id",
            "x",
            "--origin",
            "example.com/log",
            "--out",
            "o.key",
        ],
        None,
    );
    out.expect_code(0, "keygen --origin");
    assert!(out.stdout.starts_with("example.com/log+"), "{}", out.stdout);
    for bad in ["has space", "has+plus"] {
        run(
            tmp.path(),
            &["keygen", "--kernel-id", bad, "--out", "bad.key"],
            None,
        )
        .expect_unusable(bad);
        assert!(!tmp.path().join("bad.key").exists());
    }
}

#[test]
fn checkpoints_proofs_and_bundles_of_a_served_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (vkey, skey) = keygen(dir, "proof-kernel", "signing.key");
    let key = vkey.to_string();
    let key_file = write(dir, "key.pub", &format!("{key}\n"));
    let key_at = format!("@{key_file}");
    let origin = vkey.name().to_owned();

    let bundle = served_bundle(dir, "proof-kernel");
    let all = entries(&bundle);
    let n = all.len();
    assert!(n >= 40, "{n} entries");
    let tiles = tree(&all, n);
    let signed = sign(&skey, &origin, &tiles);
    let cp = write(dir, "checkpoint.txt", &signed.to_string());
    let bundle_path = path_str(&dir.join("bundle.json")).to_owned();

    // --- checkpoint verify
    valid(
        &run(dir, &["checkpoint", "verify", "--key", &key, &cp], None),
        "checkpoint",
    );
    valid(
        &run(dir, &["checkpoint", "verify", "--key", &key_at, &cp], None),
        "@key",
    );
    let out = run(
        dir,
        &["checkpoint", "verify", "--key", &key, &cp, "--json"],
        None,
    );
    out.expect_code(0, "checkpoint --json");
    let doc = out.json();
    assert_eq!(doc["valid"], true);
    assert_eq!(doc["tree_size"], n as u64);
    assert_eq!(doc["root_hash"], tiles.root().to_hex());
    assert_eq!(doc["origin"], origin.as_str());

    let (other_vkey, other_skey) = keygen(dir, "proof-kernel", "other.key");
    let other = other_vkey.to_string();
    invalid(
        &run(dir, &["checkpoint", "verify", "--key", &other, &cp], None),
        "wrong key",
    );
    let altered_sig = {
        let text = signed.to_string();
        let at = text.rfind(' ').unwrap() + 10;
        let mut bytes = text.into_bytes();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        write(dir, "altered-sig.txt", &String::from_utf8(bytes).unwrap())
    };
    invalid(
        &run(
            dir,
            &["checkpoint", "verify", "--key", &key, &altered_sig],
            None,
        ),
        "altered signature",
    );
    let wrong_origin = write(
        dir,
        "wrong-origin.txt",
        &sign(&skey, "kernels/someone-else", &tiles).to_string(),
    );
    let out = run(
        dir,
        &[
            "checkpoint",
            "verify",
            "--key",
            &key,
            &wrong_origin,
            "--json",
        ],
        None,
    );
    invalid(&out, "wrong origin");
    assert!(out.json()["error"].as_str().unwrap().contains("origin"));
    let not_a_note = write(dir, "garbage.txt", "kernels/x\n12\n");
    run(
        dir,
        &["checkpoint", "verify", "--key", &key, &not_a_note],
        None,
    )
    .expect_unusable("not a note");
    run(
        dir,
        &["checkpoint", "verify", "--key", "not-a-key", &cp],
        None,
    )
    .expect_unusable("malformed key");
    run(
        dir,
        &["checkpoint", "verify", "--key", "@/no/such/key", &cp],
        None,
    )
    .expect_unusable("missing key file");
    run(
        dir,
        &["checkpoint", "verify", "--key", &key, "/no/such/checkpoint"],
        None,
    )
    .expect_unusable("missing checkpoint");

    // --- witnesses
    let w: Vec<SignerKey> = (1..=3)
        .map(|i| {
            SignerKey::generate(&format!("witness{i}.example"), KeyKind::CosignatureV1).unwrap()
        })
        .collect();
    let wkeys: Vec<String> = w.iter().map(|k| k.verifier().to_string()).collect();
    let mut cosigned = signed.clone();
    cosigned.cosign(&w[0], 1_780_000_000).unwrap();
    cosigned.cosign(&w[1], 1_780_000_001).unwrap();
    let cosigned_cp = write(dir, "cosigned.txt", &cosigned.to_string());
    let witnessed = |ws: &[&str], quorum: Option<&str>| {
        let mut args = vec![
            "checkpoint",
            "verify",
            "--key",
            &key,
            &cosigned_cp,
            "--witness",
        ];
        args.extend_from_slice(ws);
        if let Some(q) = quorum {
            args.extend_from_slice(&["--quorum", q]);
        }
        run(dir, &args, None)
    };
    valid(&witnessed(&[&wkeys[0], &wkeys[1]], None), "two witnesses");
    invalid(
        &witnessed(&[&wkeys[0], &wkeys[2]], None),
        "a witness that did not cosign",
    );
    valid(&witnessed(&[&wkeys[0], &wkeys[2]], Some("1")), "quorum 1");
    invalid(
        &witnessed(&[&wkeys[2]], Some("1")),
        "quorum of absent witnesses",
    );
    witnessed(&[&wkeys[0]], Some("2")).expect_unusable("quorum above the witnesses");
    witnessed(&[&key], None).expect_unusable("a log key as witness");
    // The file may follow the witness keys.
    valid(
        &run(
            dir,
            &[
                "checkpoint",
                "verify",
                "--key",
                &key,
                "--witness",
                &wkeys[0],
                &wkeys[1],
                &cosigned_cp,
            ],
            None,
        ),
        "file after the witnesses",
    );
    let out = witnessed(&[&wkeys[0], &wkeys[1]], None);
    assert!(
        out.stdout
            .contains("cosigned by witness1.example at 1780000000"),
        "{}",
        out.stdout
    );

    // --- inclusion proofs of every entry
    let source = TiledNodes(&tiles);
    for seq in 0..n as u64 {
        let doc = InclusionProof::build(seq, &signed, &source).unwrap();
        let proof = write(dir, "inclusion.json", &serde_json::to_string(&doc).unwrap());
        let hash = all[seq as usize]["entry_hash"].as_str().unwrap();
        valid(
            &run(
                dir,
                &[
                    "proof",
                    "verify",
                    "--key",
                    &key,
                    &proof,
                    "--entry-hash",
                    hash,
                ],
                None,
            ),
            &format!("inclusion of {seq}"),
        );
    }
    let seq = 17usize;
    let doc = InclusionProof::build(seq as u64, &signed, &source).unwrap();
    let proof = write(dir, "inclusion.json", &serde_json::to_string(&doc).unwrap());
    let hash = all[seq]["entry_hash"].as_str().unwrap();
    let inclusion = |proof: &str, key: &str, hash: &str| {
        run(
            dir,
            &["proof", "verify", "--key", key, proof, "--entry-hash", hash],
            None,
        )
    };
    let out = run(
        dir,
        &[
            "proof",
            "verify",
            "--key",
            &key,
            &proof,
            "--entry-hash",
            hash,
            "--json",
        ],
        None,
    );
    out.expect_code(0, "inclusion --json");
    assert_eq!(out.json()["valid"], true);
    assert_eq!(out.json()["checkpoint"]["tree_size"], n as u64);
    invalid(
        &inclusion(&proof, &key, all[seq + 1]["entry_hash"].as_str().unwrap()),
        "wrong entry hash",
    );
    invalid(&inclusion(&proof, &other, hash), "wrong key");
    let mut flipped = doc.clone();
    flipped.proof[2].0[5] ^= 0x10;
    let flipped = write(
        dir,
        "flipped.json",
        &serde_json::to_string(&flipped).unwrap(),
    );
    invalid(&inclusion(&flipped, &key, hash), "flipped proof hash");
    let mut resealed = doc.clone();
    resealed.checkpoint = std::fs::read_to_string(&altered_sig).unwrap();
    let resealed = write(
        dir,
        "altered-in-proof.json",
        &serde_json::to_string(&resealed).unwrap(),
    );
    invalid(
        &inclusion(&resealed, &key, hash),
        "altered signature inside the proof",
    );
    let mut foreign = doc.clone();
    foreign.checkpoint = sign(&skey, "kernels/someone-else", &tiles).to_string();
    let foreign = write(
        dir,
        "foreign.json",
        &serde_json::to_string(&foreign).unwrap(),
    );
    invalid(
        &inclusion(&foreign, &key, hash),
        "wrong origin inside the proof",
    );
    let bad_json = write(dir, "bad.json", "{\"seq\": 1, \"tree_size\": ");
    inclusion(&bad_json, &key, hash).expect_unusable("malformed proof JSON");
    let short = write(
        dir,
        "short.json",
        &json!({"seq": 1, "tree_size": 2}).to_string(),
    );
    inclusion(&short, &key, hash).expect_unusable("proof without fields");
    let mut odd = serde_json::to_value(&doc).unwrap();
    odd["proof"][0] = json!("abc");
    let odd = write(dir, "odd.json", &odd.to_string());
    inclusion(&odd, &key, hash).expect_unusable("a proof hash that is not 64 hex digits");
    inclusion(&proof, &key, "1234").expect_unusable("malformed entry hash");

    // --- consistency proofs
    let m = n / 3;
    let old_tiles = tree(&all, m);
    let old = write(
        dir,
        "old.txt",
        &sign(&skey, &origin, &old_tiles).to_string(),
    );
    let cons = ConsistencyProof::build(m as u64, &signed, &source).unwrap();
    let cons_path = write(
        dir,
        "consistency.json",
        &serde_json::to_string(&cons).unwrap(),
    );
    let consistency = |proof: &str, old: &str| {
        run(
            dir,
            &[
                "proof",
                "verify",
                "--key",
                &key,
                proof,
                "--old-checkpoint",
                old,
            ],
            None,
        )
    };
    valid(&consistency(&cons_path, &old), "consistency");
    let mut forked = tree(&all, m - 1);
    forked.append(entry_leaf_hash(&[7u8; 32]));
    let fork = write(dir, "fork.txt", &sign(&skey, &origin, &forked).to_string());
    invalid(
        &consistency(&cons_path, &fork),
        "old checkpoint of another history",
    );
    let mut flipped = cons.clone();
    let last = flipped.proof.len() - 1;
    flipped.proof[last].0[0] ^= 1;
    let flipped = write(
        dir,
        "cons-flipped.json",
        &serde_json::to_string(&flipped).unwrap(),
    );
    invalid(&consistency(&flipped, &old), "flipped consistency hash");
    consistency(&cons_path, &not_a_note).expect_unusable("malformed old checkpoint");
    let out = run(
        dir,
        &[
            "proof",
            "verify",
            "--key",
            &key,
            &cons_path,
            "--old-checkpoint",
            &old,
            "--json",
        ],
        None,
    );
    out.expect_code(0, "consistency --json");
    assert_eq!(out.json()["from_size"], m as u64);

    // --- verify BUNDLE --key --checkpoint
    valid(
        &run(
            dir,
            &["verify", &bundle_path, "--key", &key, "--checkpoint", &cp],
            None,
        ),
        "the exported bundle against its checkpoint",
    );
    let out = run(
        dir,
        &[
            "verify",
            &bundle_path,
            "--key",
            &key,
            "--checkpoint",
            &old,
            "--json",
        ],
        None,
    );
    out.expect_code(0, "the first m entries");
    assert_eq!(out.json()["checkpoint"]["matches"], true);
    assert_eq!(out.json()["entries_verified"], n as u64);

    // Entry 5's intent rewritten, every later hash recomputed: a valid chain...
    let mut rewritten = bundle.clone();
    {
        let list = rewritten["ledger_entries"].as_array_mut().unwrap();
        let mut prev: Option<String> = None;
        for (i, value) in list.iter_mut().enumerate().skip(5) {
            let mut entry: Entry = serde_json::from_value(value.clone()).unwrap();
            if i == 5 {
                entry.intent = "nothing happened here".into();
            }
            if let Some(p) = prev.take() {
                entry.prev_hash = p;
            }
            entry.entry_hash = entry.compute_hash();
            prev = Some(entry.entry_hash.clone());
            *value = serde_json::to_value(&entry).unwrap();
        }
        rewritten["root_hash"] = json!(prev.unwrap());
    }
    let rewritten_path = write(dir, "rewritten.json", &rewritten.to_string());
    valid(
        &run(dir, &["verify", &rewritten_path], None),
        "the rewritten chain alone",
    );
    // ... that is not the log the key signed.
    let out = run(
        dir,
        &[
            "verify",
            &rewritten_path,
            "--key",
            &key,
            "--checkpoint",
            &cp,
        ],
        None,
    );
    invalid(&out, "the rewritten chain against the checkpoint");
    assert!(
        out.stdout.contains("not the entries the log signed"),
        "{}",
        out.stdout
    );
    let out = run(
        dir,
        &[
            "verify",
            &rewritten_path,
            "--key",
            &key,
            "--checkpoint",
            &cp,
            "--json",
        ],
        None,
    );
    invalid(&out, "rewritten --json");
    assert_eq!(out.json()["valid"], false);
    assert_eq!(out.json()["checkpoint"]["matches"], false);
    // The prefix before the rewrite still matches an old checkpoint of it.
    let early = write(
        dir,
        "early.txt",
        &sign(&skey, &origin, &tree(&all, 5)).to_string(),
    );
    valid(
        &run(
            dir,
            &[
                "verify",
                &rewritten_path,
                "--key",
                &key,
                "--checkpoint",
                &early,
            ],
            None,
        ),
        "the untouched prefix",
    );

    // Wrong key, a bundle shorter than the checkpoint, a range bundle, odd flags.
    invalid(
        &run(
            dir,
            &["verify", &bundle_path, "--key", &other, "--checkpoint", &cp],
            None,
        ),
        "bundle with the wrong key",
    );
    let other_signed = write(
        dir,
        "other-signed.txt",
        &sign(&other_skey, &origin, &tiles).to_string(),
    );
    invalid(
        &run(
            dir,
            &[
                "verify",
                &bundle_path,
                "--key",
                &key,
                "--checkpoint",
                &other_signed,
            ],
            None,
        ),
        "checkpoint by another key",
    );
    let mut short = bundle.clone();
    short["ledger_entries"] = json!(all[..m].to_vec());
    short["root_hash"] = all[m - 1]["entry_hash"].clone();
    let short = write(dir, "short-bundle.json", &short.to_string());
    run(
        dir,
        &["verify", &short, "--key", &key, "--checkpoint", &cp],
        None,
    )
    .expect_unusable("a bundle shorter than the checkpoint");
    let mut range = bundle.clone();
    range["ledger_entries"] = json!(all[1..].to_vec());
    range["from_seq"] = json!(1);
    range["anchor_hash"] = all[0]["entry_hash"].clone();
    let range = write(dir, "range.json", &range.to_string());
    valid(
        &run(dir, &["verify", &range], None),
        "the range bundle alone",
    );
    run(
        dir,
        &["verify", &range, "--key", &key, "--checkpoint", &old],
        None,
    )
    .expect_unusable("a range bundle against a checkpoint");
    run(dir, &["verify", &bundle_path, "--key", &key], None).expect_code(2, "--key alone");
    run(
        dir,
        &[
            "verify",
            "--data-dir",
            "data",
            "--key",
            &key,
            "--checkpoint",
            &cp,
        ],
        None,
    )
    .expect_unusable("--checkpoint with --data-dir");
}
