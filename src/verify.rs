//! Verifying an evidence bundle file: streamed, hashed in parallel, in order.
//!
//! The reading thread scans the bundle and cuts it into chunks of raw entries;
//! worker threads parse each entry and recompute its hashes (the expensive,
//! independent part); a collector puts the chunks back in order and runs the
//! cheap sequential link checks of [`ChainVerifier`]. Channels are bounded, so
//! memory stays flat whatever the bundle's size.
//!
//! An entry that does not fit our typed [`Entry`] (a null actor, an extra key,
//! a number where a string belongs) is still hashed exactly as the Python
//! library would hash it, from its raw JSON fields: the verifier judges the
//! chain, not the style of the entries.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use std::borrow::Cow;

use serde_json::Value;
use serde_json::value::RawValue;

use crate::bundle::{self, BundleError, BundleHeader};
use crate::chain::{ChainVerifier, Link, VerifyReport};
use crate::entry;

const CHUNK: usize = 512;

/// Verifies the bundle at `path`.
pub fn verify_bundle_file(path: &Path) -> Result<VerifyReport, BundleError> {
    let file = File::open(path)?;
    verify_bundle(BufReader::with_capacity(1 << 20, file), &AtomicU64::new(0))
}

/// Verifies a bundle read from `input`; `progress` counts entries as they are
/// verified (for a progress display on another thread).
pub fn verify_bundle<R: BufRead>(
    input: R,
    progress: &AtomicU64,
) -> Result<VerifyReport, BundleError> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let (raw_tx, raw_rx) = crossbeam_channel::bounded::<(u64, Vec<Vec<u8>>)>(workers * 2);
    let (done_tx, done_rx) = crossbeam_channel::bounded::<(u64, Vec<Link>)>(workers * 2);

    std::thread::scope(|scope| {
        for _ in 0..workers {
            let raw_rx = raw_rx.clone();
            let done_tx = done_tx.clone();
            scope.spawn(move || {
                for (index, chunk) in raw_rx {
                    let links = chunk.iter().map(|raw| link_of(raw)).collect();
                    if done_tx.send((index, links)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(raw_rx);
        drop(done_tx);

        let collector = scope.spawn(move || {
            let mut verifier = ChainVerifier::deferred();
            let mut pending: BTreeMap<u64, Vec<Link>> = BTreeMap::new();
            let mut next = 0u64;
            for (index, links) in done_rx {
                pending.insert(index, links);
                while let Some(links) = pending.remove(&next) {
                    let n = links.len() as u64;
                    for link in links {
                        verifier.push_link(link);
                    }
                    progress.fetch_add(n, Ordering::Relaxed);
                    next += 1;
                }
            }
            verifier
        });

        let mut chunk = Vec::with_capacity(CHUNK);
        let mut chunk_index = 0u64;
        let header: Result<BundleHeader, BundleError> = bundle::read_bundle(input, |raw| {
            chunk.push(raw);
            if chunk.len() == CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                // Workers only stop when this sender is dropped: send cannot fail.
                let _ = raw_tx.send((chunk_index, full));
                chunk_index += 1;
            }
        });
        if !chunk.is_empty() {
            let _ = raw_tx.send((chunk_index, chunk));
        }
        drop(raw_tx);
        let verifier = collector.join().expect("the collector does not panic");
        let header = header?;
        Ok(verifier.finish_bundle(
            header.root_hash.as_deref(),
            header.anchor_hash.as_deref(),
            header.from_seq,
        ))
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

/// Parses one raw entry and recomputes its hashes.
fn link_of(raw: &[u8]) -> Link {
    view_link(raw).unwrap_or_else(|| loose_link(raw))
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

    fn entries(n: u64, from: u64, anchor: &str) -> Vec<Entry> {
        crate::entry::test_chain(n, from, anchor)
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
