//! Verifying an evidence bundle file: streamed, hashed in parallel, in order.
//!
//! The reading thread fills blocks from the input and frames the entries in
//! them ([`bundle::read_bundle_blocks`]); worker threads parse each entry of a
//! block and recompute its hashes (the expensive, independent part); a
//! collector puts the blocks back in order and runs the cheap sequential
//! link checks of [`ChainVerifier`]. Channels are bounded and blocks are
//! recycled, so memory stays flat whatever the bundle's size.
//!
//! Each entry is first read by the `raw` module, which hashes well-formed
//! entries straight from the block's bytes. What it declines goes to the
//! general path: a borrowed serde view of our entry shape, and for an entry
//! that does not fit it (a null actor, an extra key, a number where a string
//! belongs) the raw JSON fields, hashed exactly as the Python library would
//! hash them: the verifier judges the chain, not the style of the entries.
//!
//! Asked for it ([`verify_bundle_with_tree`]), the collector also feeds each
//! recomputed entry hash into a Merkle compact range as it is checked (the
//! `tree` module), giving the tree head of the bundle's first entries to
//! compare with a signed checkpoint, in the same pass.

mod raw;
mod tree;

use tree::TreeBuilder;
pub use tree::{TreeHead, TreeHeadProblem};

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use std::borrow::Cow;

use serde_json::Value;
use serde_json::value::RawValue;

use crate::bundle::{self, BundleError, BundleHeader, EntryBlock};
use crate::chain::{ChainVerifier, HashedLink, Link, VerifyReport};
use crate::entry;

/// Verifies the bundle at `path`.
pub fn verify_bundle_file(path: &Path) -> Result<VerifyReport, BundleError> {
    verify_bundle(File::open(path)?, &AtomicU64::new(0))
}

/// Verifies a bundle read from `input` (unbuffered is best: it is read in
/// large blocks); `progress` counts entries as they are verified (for a
/// progress display on another thread).
pub fn verify_bundle<R: Read>(input: R, progress: &AtomicU64) -> Result<VerifyReport, BundleError> {
    verify(input, progress, None).map(|(report, _)| report)
}

/// Verifies a bundle as [`verify_bundle`] does and, in the same pass, computes
/// the Merkle tree head of its first `tree_size` entries (to compare with a
/// signed checkpoint, see [`TreeHead::check`]).
pub fn verify_bundle_with_tree<R: Read>(
    input: R,
    progress: &AtomicU64,
    tree_size: u64,
) -> Result<(VerifyReport, TreeHead), BundleError> {
    let (report, tree) = verify(input, progress, Some(tree_size))?;
    Ok((report, tree.expect("a tree was asked for")))
}

fn verify<R: Read>(
    input: R,
    progress: &AtomicU64,
    tree_size: Option<u64>,
) -> Result<(VerifyReport, Option<TreeHead>), BundleError> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let (block_tx, block_rx) = crossbeam_channel::bounded::<(u64, EntryBlock)>(workers);
    let (done_tx, done_rx) = crossbeam_channel::bounded::<(u64, Vec<HashedLink>)>(workers * 2);
    // Blocks come back here once hashed; at most the blocks in flight exist.
    let (free_tx, free_rx) = crossbeam_channel::unbounded::<EntryBlock>();

    std::thread::scope(|scope| {
        for _ in 0..workers {
            let block_rx = block_rx.clone();
            let done_tx = done_tx.clone();
            let free_tx = free_tx.clone();
            scope.spawn(move || {
                let mut checker = EntryChecker::default();
                for (index, mut block) in block_rx {
                    let links = block.raw_entries().map(|raw| checker.check(raw)).collect();
                    if done_tx.send((index, links)).is_err() {
                        return;
                    }
                    if block.bytes.len() <= bundle::BLOCK_BYTES {
                        block.entries.clear();
                        let _ = free_tx.send(block);
                    }
                }
            });
        }
        drop(block_rx);
        drop(done_tx);
        drop(free_tx);

        let collector = scope.spawn(move || {
            let mut verifier = ChainVerifier::deferred();
            // The tree is fed the recomputed hashes in order, as they are
            // checked: no second pass, O(log n) memory.
            let mut tree = tree_size.map(TreeBuilder::new);
            let mut pending: BTreeMap<u64, Vec<HashedLink>> = BTreeMap::new();
            let mut next = 0u64;
            for (index, links) in done_rx {
                pending.insert(index, links);
                while let Some(links) = pending.remove(&next) {
                    let n = links.len() as u64;
                    for link in links {
                        if let Some(tree) = tree.as_mut() {
                            tree.push(link.computed_hash.as_ref());
                        }
                        verifier.push_hashed(link);
                    }
                    progress.fetch_add(n, Ordering::Relaxed);
                    next += 1;
                }
            }
            (verifier, tree)
        });

        let mut block_index = 0u64;
        let header: Result<BundleHeader, BundleError> =
            bundle::read_bundle_blocks(input, |block| {
                // Workers only stop when this sender is dropped: send cannot fail.
                let _ = block_tx.send((block_index, block));
                block_index += 1;
                free_rx.try_recv().unwrap_or_default()
            });
        drop(block_tx);
        let (verifier, tree) = collector.join().expect("the collector does not panic");
        let header = header?;
        let report = verifier.finish_bundle(
            header.root_hash.as_deref(),
            header.anchor_hash.as_deref(),
            header.from_seq,
        );
        Ok((report, tree.map(|t| t.finish(header.from_seq))))
    })
}

/// An entry borrowed from the bundle's bytes: strings without escapes are
/// not copied (most of them), which is most of the cost of verification.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryView<'a> {
    ledger_seq: u64,
    #[serde(borrow)]
    prev_hash: Cow<'a, str>,
    #[serde(borrow)]
    entry_hash: Cow<'a, str>,
    ts_ms: u64,
    #[serde(borrow)]
    request_id: &'a RawValue,
    #[serde(borrow)]
    actor: &'a RawValue,
    #[serde(borrow)]
    intent: &'a RawValue,
    #[serde(borrow)]
    decision: Cow<'a, str>,
    #[serde(borrow)]
    state_from: Cow<'a, str>,
    #[serde(borrow)]
    state_to: Cow<'a, str>,
    #[serde(default, borrow)]
    tool_name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    params_hash: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    evidence_hash: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    error: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    permit_digest: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    permit_verification: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    permit_denial_reasons: Option<Vec<Cow<'a, str>>>,
    #[serde(default, borrow)]
    proposal_hash: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    permit_nonce: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    permit_issuer: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    permit_subject: Option<Cow<'a, str>>,
    #[serde(default)]
    permit_max_executions: Option<u64>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
}

/// A text field as written in the bundle: a string (borrowed when it has
/// no escapes), or any other JSON value.
enum RawText<'a> {
    Str(Cow<'a, str>),
    Json(Value),
}

impl<'a> RawText<'a> {
    fn parse(raw: &'a RawValue) -> Result<RawText<'a>, serde_json::Error> {
        if raw.get().starts_with('"') {
            Ok(RawText::Str(serde_json::from_str::<Cow<'a, str>>(
                raw.get(),
            )?))
        } else {
            Ok(RawText::Json(serde_json::from_str(raw.get())?))
        }
    }

    fn as_ref(&self) -> entry::TextRef<'_> {
        match self {
            RawText::Str(s) => entry::TextRef::Str(s),
            RawText::Json(v) => entry::TextRef::Json(v),
        }
    }
}

fn opt<'b>(v: &'b Option<Cow<'_, str>>) -> Option<&'b str> {
    v.as_deref()
}

/// Verifies one entry from its bytes without copying what need not be.
fn view_link(raw: &[u8]) -> Option<Link> {
    let view: EntryView<'_> = serde_json::from_slice(raw).ok()?;
    let (request_id, actor, intent) = (
        RawText::parse(view.request_id).ok()?,
        RawText::parse(view.actor).ok()?,
        RawText::parse(view.intent).ok()?,
    );
    let reasons: Option<Vec<&str>> = view
        .permit_denial_reasons
        .as_ref()
        .map(|r| r.iter().map(|s| s.as_ref()).collect());
    let computed = entry::HashedRef {
        actor: actor.as_ref(),
        decision: &view.decision,
        error: opt(&view.error),
        evidence_hash: opt(&view.evidence_hash),
        intent: intent.as_ref(),
        params_hash: opt(&view.params_hash),
        permit_denial_reasons: reasons.as_deref(),
        permit_digest: opt(&view.permit_digest),
        permit_issuer: opt(&view.permit_issuer),
        permit_max_executions: view.permit_max_executions,
        permit_nonce: opt(&view.permit_nonce),
        permit_subject: opt(&view.permit_subject),
        permit_verification: opt(&view.permit_verification),
        proposal_hash: opt(&view.proposal_hash),
        request_id: request_id.as_ref(),
        state_from: &view.state_from,
        state_to: &view.state_to,
        tool_name: opt(&view.tool_name),
        ts_ms: view.ts_ms,
    }
    .chain_hash(&view.prev_hash);
    let mut problems = Vec::new();
    if let Some(payload) = view.payload {
        let matches = serde_json::from_str::<Value>(payload.get())
            .map_err(|e| e.to_string())
            .and_then(|v| crate::canonical::sha256_of(&v).map_err(|e| e.to_string()));
        match matches {
            Ok(h) if view.params_hash.as_deref() == Some(h.as_str()) => {}
            Ok(_) => problems.push("payload does not match params_hash".to_owned()),
            Err(e) => problems.push(format!("payload cannot be hashed: {e}")),
        }
    }
    Some(Link {
        seq: Some(view.ledger_seq),
        prev_hash: Some(view.prev_hash.into_owned()),
        entry_hash: Some(view.entry_hash.into_owned()),
        computed_hash: Some(computed),
        problems,
    })
}

/// Recomputes the hashes of raw entries, one after the other (a worker's job).
#[derive(Debug, Default)]
pub struct EntryChecker {
    scratch: raw::Scratch,
}

impl EntryChecker {
    /// Parses one raw entry and recomputes its hashes.
    pub fn check(&mut self, raw: &[u8]) -> HashedLink {
        raw::link(raw, &mut self.scratch)
            .unwrap_or_else(|| view_link(raw).unwrap_or_else(|| loose_link(raw)).into())
    }
}

/// The path for entries that are valid JSON but not our typed entry.
fn loose_link(raw: &[u8]) -> Link {
    let value: Value = match serde_json::from_slice(raw) {
        Ok(v) => v,
        Err(e) => {
            return Link {
                seq: None,
                prev_hash: None,
                entry_hash: None,
                computed_hash: None,
                problems: vec![format!("entry is not valid JSON: {e}")],
            };
        }
    };
    let Some(object) = value.as_object() else {
        return Link {
            seq: None,
            prev_hash: None,
            entry_hash: None,
            computed_hash: None,
            problems: vec!["entry is not a JSON object".to_owned()],
        };
    };
    let prev_hash = object
        .get("prev_hash")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut problems = Vec::new();
    let computed_hash = prev_hash.as_deref().and_then(|prev| {
        entry::compute_hash_of_value(prev, object)
            .map_err(|e| problems.push(format!("entry cannot be hashed: {e}")))
            .ok()
    });
    if let Some(payload) = object.get("payload") {
        match crate::canonical::sha256_of(payload) {
            Ok(h) if object.get("params_hash").and_then(Value::as_str) == Some(h.as_str()) => {}
            Ok(_) => problems.push("payload does not match params_hash".to_owned()),
            Err(e) => problems.push(format!("payload cannot be hashed: {e}")),
        }
    }
    Link {
        seq: object.get("ledger_seq").and_then(Value::as_u64),
        prev_hash,
        entry_hash: object
            .get("entry_hash")
            .and_then(Value::as_str)
            .map(str::to_owned),
        computed_hash,
        problems,
    }
}

/// A reader that counts the bytes read through it (for progress display).
pub struct CountingReader<R> {
    inner: R,
    count: std::sync::Arc<AtomicU64>,
}

impl<R> CountingReader<R> {
    /// Wraps `inner`, adding every byte read to `count`.
    pub fn new(inner: R, count: std::sync::Arc<AtomicU64>) -> Self {
        CountingReader { inner, count }
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::ExportHeader;
    use crate::entry::{Entry, GENESIS_HASH};

    fn verify_bytes(bytes: &[u8]) -> VerifyReport {
        verify_bundle(bytes, &AtomicU64::new(0)).unwrap()
    }

    /// The general path alone, for comparison with the fast one.
    fn general_link(raw: &[u8]) -> HashedLink {
        view_link(raw).unwrap_or_else(|| loose_link(raw)).into()
    }

    fn entries(n: u64, from: u64, anchor: &str) -> Vec<Entry> {
        crate::entry::test_chain(n, from, anchor)
    }

    /// Checks that the fast path, when it takes `raw`, finds exactly what the
    /// general path finds; returns whether it took it.
    fn agree(raw: &[u8]) -> bool {
        let general = general_link(raw);
        match raw::link(raw, &mut raw::Scratch::default()) {
            Some(fast) => {
                assert_eq!(fast, general, "{}", String::from_utf8_lossy(raw));
                true
            }
            None => false,
        }
    }

    /// A sealed entry that uses every field, including a payload.
    fn full_entry() -> Value {
        let payload = serde_json::json!({"policy": {"max": 1.5e-7, "big": 123456789012345678901234567890_u128, "name": "é\u{1F642}"}});
        let body = crate::entry::EntryBody {
            ts_ms: 1_700_000_000_123,
            request_id: "req-é-1".into(),
            actor: "agent \"007\"".into(),
            intent: "read /tmp/a\\b\n\t\u{7f}\u{0} 🙂".into(),
            decision: "DENY".into(),
            state_from: "IDLE".into(),
            state_to: "IDLE".into(),
            tool_name: Some("kernel.policy_update".into()),
            params_hash: Some(crate::canonical::sha256_of(&payload).unwrap()),
            evidence_hash: Some("e".repeat(64)),
            error: Some("denied: ünïcode".into()),
            permit_digest: Some("d".repeat(64)),
            permit_verification: Some("DENY".into()),
            permit_denial_reasons: Some(vec!["REPLAY_DETECTED".into(), "é".into()]),
            proposal_hash: Some("proposal-1".into()),
            permit_nonce: Some("n1".into()),
            permit_issuer: Some("operator@example.com".into()),
            permit_subject: Some("alice".into()),
            permit_max_executions: Some(3),
            payload: Some(payload),
        };
        serde_json::to_value(body.seal(7, &"a".repeat(64))).unwrap()
    }

    fn text(v: &Value) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    #[test]
    fn the_fast_path_takes_well_formed_entries_in_any_layout() {
        let full = full_entry();
        let simple = serde_json::to_value(&entries(1, 0, GENESIS_HASH)[0]).unwrap();
        for entry in [&full, &simple] {
            let compact = text(entry);
            let link = general_link(&compact);
            assert_eq!(link.entry_hash, link.computed_hash);
            assert!(link.problems.is_empty(), "{:?}", link.problems);
            assert!(agree(&compact));
            assert!(agree(&serde_json::to_vec_pretty(entry).unwrap()));
            // Keys in reverse order, with odd (but legal) whitespace.
            let object = entry.as_object().unwrap();
            let reversed: Vec<String> = object
                .iter()
                .rev()
                .map(|(k, v)| format!("\r\n\t{}\t:  {v} ", Value::from(k.as_str())))
                .collect();
            assert!(agree(format!(" {{{}}}\n", reversed.join(",")).as_bytes()));
            // Escapes Python writes (ensure_ascii) rather than raw UTF-8, and `\/`.
            let ascii = crate::canonical::to_string(entry)
                .unwrap()
                .replace('/', "\\/");
            assert!(agree(ascii.as_bytes()));
        }
        // Empty denial reasons hash as null.
        let mut v = full.clone();
        v["permit_denial_reasons"] = serde_json::json!([]);
        assert!(agree(&text(&v)));
    }

    #[test]
    fn the_fast_path_agrees_or_declines_on_odd_entries() {
        let full = full_entry();
        let odd_values = [
            "null",
            "42",
            "0",
            "-1",
            "-0",
            "1.5",
            "3.0",
            "1e3",
            "1E400",
            "true",
            "[]",
            "{}",
            "[\"a\"]",
            "[\"a\",1]",
            "[null]",
            "\"x\"",
            "\"\"",
            "\"\\u00e9\\ud83d\\ude42\"",
            "18446744073709551615",
            "18446744073709551616",
            "123456789012345678901234567890",
            "{\"z\":1,\"a\":[1.0,\"é\"]}",
        ];
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for key in full.as_object().unwrap().keys() {
            for odd in odd_values {
                let mut v = full.clone();
                v[key] = serde_json::from_str(odd).unwrap();
                cases.push(text(&v));
            }
            let mut v = full.clone();
            v.as_object_mut().unwrap().remove(key);
            cases.push(text(&v));
        }
        let compact = String::from_utf8(text(&full)).unwrap();
        let raw_texts = [
            // repeated key, unknown key, trailing comma, bad literals and numbers
            compact.replacen('{', "{\"actor\":\"x\",", 1),
            compact.replacen('{', "{\"extra\":1,", 1),
            compact.replacen('}', ",}", 1),
            compact.replace("\"ts_ms\":1700000000123", "\"ts_ms\":01700000000123"),
            compact.replace("\"ts_ms\":1700000000123", "\"ts_ms\":1700000000123.0"),
            compact.replace("\"ledger_seq\":7", "\"ledger_seq\":nul"),
            compact.replace(
                "\"tool_name\":\"kernel.policy_update\"",
                "\"tool_name\":nulL",
            ),
            compact.replace(
                "\"permit_max_executions\":3",
                "\"permit_max_executions\":null",
            ),
            compact.replace(
                "\"proposal_hash\":\"proposal-1\"",
                "\"proposal_hash\":\"a\\x\"",
            ),
            compact.replace(
                "\"proposal_hash\":\"proposal-1\"",
                "\"proposal_hash\":\"a\tb\"",
            ),
            compact.replace(
                "\"proposal_hash\":\"proposal-1\"",
                "\"proposal_hash\":\"\\ud800\"",
            ),
            compact.replace("\"payload\":{", "\"payload\":{,"),
            compact.replace("\"payload\":{", "\"payload\" {"),
            compact.replace(",\"decision\"", " , , \"decision\""),
            format!("[{compact}]"),
            format!("{compact}x"),
            "{}".to_owned(),
        ];
        cases.extend(raw_texts.iter().map(|t| t.as_bytes().to_vec()));
        // Every truncation, closed again.
        for cut in 0..compact.len() {
            if compact.is_char_boundary(cut) {
                cases.push(format!("{}}}", &compact[..cut]).into_bytes());
            }
        }
        // Invalid UTF-8 inside and outside a string.
        cases.push(compact.replace("proposal-1", "proposal-\u{1}").into_bytes());
        let mut bad = text(&full);
        let at = compact.find("proposal-1").unwrap();
        bad[at] = 0xff;
        cases.push(bad);
        let mut taken = 0;
        for case in &cases {
            if agree(case) {
                taken += 1;
            }
        }
        // The odd values the typed shape allows (nulls, other strings, ...) are still fast.
        assert!(taken > 40, "{taken} of {}", cases.len());
    }

    #[test]
    fn python_bundles_take_the_fast_path() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/python");
        let (mut seen, mut declined) = (0, 0);
        for scenario in std::fs::read_dir(dir).unwrap() {
            let path = scenario.unwrap().path().join("bundle.ledger_entries.json");
            let Ok(file) = File::open(&path) else {
                continue;
            };
            bundle::read_bundle(file, |raw| {
                // Denials of malformed requests record a non-string request_id
                // (or actor, intent): those are the general path's.
                let value: Value = serde_json::from_slice(&raw).unwrap();
                let texts = ["request_id", "actor", "intent"].map(|k| value[k].is_string());
                let fast = agree(&raw);
                assert_eq!(fast, texts == [true; 3], "{}: {value}", path.display());
                seen += 1;
                declined += usize::from(!fast);
            })
            .unwrap();
        }
        assert!(seen > 100 && declined < seen / 10, "{declined} of {seen}");
    }

    proptest::proptest! {
        #[test]
        fn any_text_hashes_the_same_on_both_paths(
            intent in "\\PC*|[\\u{0}-\\u{ff}]*",
            actor in "[ -~]{0,12}|\\PC{0,4}",
            reasons in proptest::collection::vec("[a-zé\"\\\\/ ]{0,6}", 0..3),
            ts_ms in proptest::num::u64::ANY,
        ) {
            let mut v = full_entry();
            v["intent"] = Value::from(intent);
            v["actor"] = Value::from(actor);
            v["permit_denial_reasons"] = Value::from(reasons);
            v["ts_ms"] = Value::from(ts_ms);
            proptest::prop_assert!(agree(&text(&v)));
            let ascii = crate::canonical::to_string(&v).unwrap();
            proptest::prop_assert!(agree(ascii.as_bytes()));
        }
    }

    #[test]
    fn a_large_bundle_verifies_in_order_across_chunks() {
        let es = entries(3000, 0, GENESIS_HASH);
        let root = es.last().unwrap().entry_hash.clone();
        let header = ExportHeader {
            kernel_id: "k",
            variant: "strict",
            exported_at_ms: 1,
            from_seq: None,
            anchor_hash: None,
            root_hash: &root,
        };
        let bytes = bundle::to_vec(&header, &es).unwrap();
        let report = verify_bytes(&bytes);
        assert!(report.valid, "{:?}", report.errors);
        assert_eq!(report.entries_verified, 3000);

        let mut tampered = es.clone();
        tampered[1700].intent = "evil".into();
        let report = verify_bytes(&bundle::to_vec(&header, &tampered).unwrap());
        let idx: Vec<_> = report.errors.iter().map(|e| e.index).collect();
        assert_eq!(idx, vec![Some(1700)]);
    }

    #[test]
    fn a_range_bundle_checks_its_anchor_even_when_the_header_comes_last() {
        let all = entries(10, 0, GENESIS_HASH);
        let range = &all[4..];
        let anchor = all[3].entry_hash.clone();
        let mut text = String::from("{\"ledger_entries\":[");
        for (i, e) in range.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&serde_json::to_string(e).unwrap());
        }
        let tail = |anchor: &str| {
            format!(
                "],\"from_seq\":4,\"anchor_hash\":\"{anchor}\",\"root_hash\":\"{}\"}}",
                all[9].entry_hash
            )
        };
        assert!(verify_bytes(format!("{text}{}", tail(&anchor)).as_bytes()).valid);
        let report = verify_bytes(format!("{text}{}", tail(&"1".repeat(64))).as_bytes());
        assert_eq!(report.errors[0].index, Some(0));
        // Without an anchor, a range does not start at genesis: invalid.
        let report =
            verify_bytes(format!("{text}],\"root_hash\":\"{}\"}}", all[9].entry_hash).as_bytes());
        assert!(!report.valid);
    }

    #[test]
    fn loose_entries_are_hashed_like_python_does() {
        // A null actor cannot be our typed entry, but Python can write it.
        let mut obj = serde_json::to_value(&entries(1, 0, GENESIS_HASH)[0]).unwrap();
        obj["actor"] = Value::Null;
        let hash = entry::compute_hash_of_value(GENESIS_HASH, obj.as_object().unwrap()).unwrap();
        obj["entry_hash"] = Value::String(hash.clone());
        obj["extra"] = Value::Bool(true);
        let text = format!("{{\"root_hash\":\"{hash}\",\"ledger_entries\":[{obj}]}}");
        let report = verify_bytes(text.as_bytes());
        assert!(report.valid, "{:?}", report.errors);
    }

    #[test]
    fn garbage_entries_are_reported_not_fatal() {
        let report = verify_bytes(br#"{"ledger_entries":[5, {"a":1}],"root_hash":null}"#);
        assert!(!report.valid);
        assert!(report.errors.iter().any(|e| e.index == Some(0)));
        assert!(report.errors.iter().any(|e| e.index == Some(1)));
    }
}
