//! Reading an archived segment: one streamed pass that hashes the object's
//! bytes, verifies its chain (every entry hash, every link, its anchor, first
//! seq and root) and hands each entry to the caller (for replay), with flat
//! memory whatever the segment's size.

use std::io::{BufReader, Read};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::objects::{ObjectError, Objects};
use crate::bundle::{self, BundleError, BundleHeader};
use crate::chain::{ChainVerifier, CheckedEntry, VerifyReport};
use crate::entry::Entry;
use crate::kernel::state::event;

/// What one pass over a segment found.
#[derive(Debug, Clone)]
pub struct SegmentScan {
    /// SHA-256 of the object's bytes.
    pub sha256: String,
    /// Size of the object.
    pub bytes: u64,
    /// The bundle's header.
    pub header: BundleHeader,
    /// Chain verification of its entries.
    pub report: VerifyReport,
    /// `(seq, payload)` of each `kernel.rotate` entry in it.
    pub rotations: Vec<(u64, Value)>,
    /// Seq of the first and last entry.
    pub seq_range: Option<(u64, u64)>,
}

/// Why a segment could not be scanned at all.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The object could not be read.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The object is not a bundle.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The caller's entry handler refused an entry.
    #[error("{0}")]
    Handler(String),
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Scans a segment read from `input`; `on_entry` sees every well-formed entry in order.
pub fn scan<R: Read>(
    input: R,
    mut on_entry: impl FnMut(&Entry) -> Result<(), String>,
) -> Result<SegmentScan, ScanError> {
    let mut reader = BufReader::with_capacity(
        1 << 20,
        HashingReader {
            inner: input,
            hasher: Sha256::new(),
            bytes: 0,
        },
    );
    let mut verifier = ChainVerifier::deferred();
    let mut rotations = Vec::new();
    let mut first_last: Option<(u64, u64)> = None;
    let mut handler_error = None;
    let header = bundle::read_bundle(&mut reader, |raw| {
        match serde_json::from_slice::<Entry>(&raw) {
            Ok(entry) => {
                // The kernel's one definition of an event: an agent's
                // request that named the tool `kernel.rotate` is not one.
                if event::of(&entry) == Some(event::ROTATE)
                    && let Some(p) = &entry.payload
                {
                    rotations.push((entry.ledger_seq, p.clone()));
                }
                first_last = Some(match first_last {
                    None => (entry.ledger_seq, entry.ledger_seq),
                    Some((a, _)) => (a, entry.ledger_seq),
                });
                if handler_error.is_none()
                    && let Err(e) = on_entry(&entry)
                {
                    handler_error = Some(e);
                }
                verifier.push_checked(CheckedEntry::check(entry));
            }
            Err(e) => verifier.push_link(crate::chain::Link {
                seq: None,
                prev_hash: None,
                entry_hash: None,
                computed_hash: None,
                problems: vec![format!("entry is not a well-formed kernels entry: {e}")],
            }),
        }
    })?;
    // Drain whatever follows (nothing, for a valid bundle) so the hash covers every byte.
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).map_err(BundleError::Io)?;
    if let Some(e) = handler_error {
        return Err(ScanError::Handler(e));
    }
    let report = verifier.finish_bundle(
        header.root_hash.as_deref(),
        header.anchor_hash.as_deref(),
        header.from_seq,
    );
    let inner = reader.into_inner();
    Ok(SegmentScan {
        sha256: hex::encode(inner.hasher.finalize()),
        bytes: inner.bytes,
        header,
        report,
        rotations,
        seq_range: first_last,
    })
}

/// Receives the entries of a scanned segment, in order.
pub trait EntrySink: Send + 'static {
    /// Takes one entry; an error stops the scan.
    fn accept(&mut self, entry: &Entry) -> Result<(), String>;
}

/// A sink that ignores the entries (verification only).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ignore;

impl EntrySink for Ignore {
    fn accept(&mut self, _entry: &Entry) -> Result<(), String> {
        Ok(())
    }
}

/// Scans the object `key`, streamed; gives the sink back afterwards.
pub async fn scan_object<S: EntrySink>(
    objects: &Objects,
    key: &str,
    sink: S,
) -> Result<(SegmentScan, S), ScanError> {
    let reader = objects.read(key).await?;
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _guard = handle.enter();
        let mut sink = sink;
        let bridge = tokio_util::io::SyncIoBridge::new(reader);
        let scan = scan(bridge, |e| sink.accept(e))?;
        Ok((scan, sink))
    })
    .await
    .map_err(|e| ScanError::Handler(format!("segment scan failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{BundleWriter, ExportHeader};
    use crate::entry::{EntryBody, GENESIS_HASH};
    use serde_json::json;

    #[test]
    fn only_kernel_rotate_events_count_as_rotations() {
        // An agent's request that named the tool `kernel.rotate` is recorded
        // with that tool's name; it is a decision, not an event, whatever
        // else the entry carries.
        let forged = json!({"segment_key": "forged"});
        let real = json!({"segment_key": "real"});
        let agent = EntryBody {
            request_id: "agent-1".into(),
            actor: "agent-001".into(),
            intent: "rotate".into(),
            decision: "DENY".into(),
            state_from: "IDLE".into(),
            state_to: "IDLE".into(),
            tool_name: Some(event::ROTATE.into()),
            params_hash: Some(crate::canonical::sha256_of(&forged).unwrap()),
            payload: Some(forged),
            ..EntryBody::default()
        }
        .seal(0, GENESIS_HASH);
        let rotate = EntryBody {
            request_id: event::ROTATE.into(),
            actor: "SYSTEM".into(),
            decision: "ALLOW".into(),
            state_from: "IDLE".into(),
            state_to: "IDLE".into(),
            tool_name: Some(event::ROTATE.into()),
            params_hash: Some(crate::canonical::sha256_of(&real).unwrap()),
            payload: Some(real.clone()),
            ..EntryBody::default()
        }
        .seal(1, &agent.entry_hash);
        let header = ExportHeader {
            kernel_id: "k",
            variant: "strict",
            exported_at_ms: 0,
            from_seq: None,
            anchor_hash: None,
            root_hash: &rotate.entry_hash,
        };
        let mut writer = BundleWriter::start(Vec::new(), &header).unwrap();
        writer.entry(&agent).unwrap();
        writer.entry(&rotate).unwrap();
        let bytes = writer.finish().unwrap();

        let scan = scan(&bytes[..], |_| Ok(())).unwrap();
        assert!(scan.report.valid, "{:?}", scan.report.errors);
        assert_eq!(scan.rotations, vec![(1, real)]);
    }
}
