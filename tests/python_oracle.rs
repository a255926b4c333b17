//! Canonical JSON against the real oracle: CPython's
//! `json.dumps(json.loads(x), sort_keys=True, separators=(",", ":"))`.
//!
//! Thousands of random documents (random unicode, control characters,
//! astral characters, deep nesting, big integers, and floats drawn from raw
//! bit patterns so every exponent range is hit) are canonicalised by us and
//! by python3; every line must be identical, and so must the SHA-256.

use std::io::Write;
use std::process::{Command, Stdio};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};

fn random_string(rng: &mut StdRng) -> String {
    let len = rng.random_range(0..12);
    (0..len)
        .map(|_| match rng.random_range(0..10) {
            0 => char::from_u32(rng.random_range(0..0x20)).unwrap(),
            1 => char::from_u32(rng.random_range(0x7f..0x800)).unwrap(),
            2 => char::from_u32(rng.random_range(0x1F300..0x1FAFF)).unwrap(),
            3 => ['"', '\\', '/', '\u{2028}', '\u{feff}', '\u{ffff}', 'é'][rng.random_range(0..7)],
            4 => char::from_u32(rng.random_range(0xE000..0xFFFD)).unwrap(),
            _ => char::from_u32(rng.random_range(0x20..0x7f)).unwrap(),
        })
        .collect()
}

fn random_number(rng: &mut StdRng) -> Value {
    let text = match rng.random_range(0..6) {
        0 => rng.random::<i64>().to_string(),
        1 => format!("{}{}", rng.random::<u64>(), rng.random::<u64>()),
        2 => {
            // A float from a random bit pattern (finite only).
            loop {
                let f = f64::from_bits(rng.random::<u64>());
                if f.is_finite() {
                    break format!("{f:e}");
                }
            }
        }
        3 => format!(
            "{}.{}",
            rng.random_range(-1000..1000),
            rng.random_range(0..1000)
        ),
        4 => format!("{}e{}", rng.random_range(1..100), rng.random_range(-30..30)),
        _ => [
            "0",
            "-0",
            "0.0",
            "-0.0",
            "1e16",
            "1e15",
            "0.0001",
            "0.00001",
            "1E5",
            "123456789012345678901234567890",
        ][rng.random_range(0..10)]
        .to_owned(),
    };
    kernels::canonical::parse(&text).unwrap()
}

fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..if depth > 4 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 | 3 => random_number(rng),
        4 => Value::String(random_string(rng)),
        5 => Value::Array(
            (0..rng.random_range(0..5))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut map = Map::new();
            for _ in 0..rng.random_range(0..6) {
                map.insert(random_string(rng), random_value(rng, depth + 1));
            }
            Value::Object(map)
        }
    }
}

#[test]
fn canonical_json_is_byte_identical_to_cpython() {
    let mut rng = StdRng::seed_from_u64(0x6b65726e656c73);
    let docs: Vec<Value> = (0..3000).map(|_| random_value(&mut rng, 0)).collect();
    // serde_json's writer (not ours) makes the input, so we also test parsing.
    let input: String = docs
        .iter()
        .map(|d| serde_json::to_string(d).unwrap() + "\n")
        .collect();
    let script = r#"
import json, sys, hashlib
for line in sys.stdin:
    text = json.dumps(json.loads(line), sort_keys=True, separators=(",", ":"))
    print(text + "\t" + hashlib.sha256(text.encode("utf-8")).hexdigest())
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed for this test (the reference implementation)");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    let expected = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = expected.lines().collect();
    assert_eq!(lines.len(), docs.len());
    for (doc, line) in docs.iter().zip(lines) {
        let (text, hash) = line.split_once('\t').unwrap();
        let ours = kernels::canonical::to_string(doc).unwrap();
        assert_eq!(ours, text, "document {doc}");
        assert_eq!(kernels::canonical::sha256_hex(ours.as_bytes()), hash);
    }
}
