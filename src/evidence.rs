//! Exporting evidence from a ledger: bundles of a range, written as they are
//! read (never held whole), and preserved copies for incidents.
//!
//! A preserved copy is named `<ms>-<incident>-<from_seq>-<to_seq>.json`
//! (both seqs inclusive, as in its record), written, fsynced, made read-only
//! and renamed into place; with rotation configured the service also uploads
//! it to the archive (see `RotationControl::upload_preserved`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::bundle::{BundleWriter, ExportHeader};
use crate::ledger::{Clock, Ledger, SystemClock};

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The requested range does not fit the ledger.
    #[error("{0}")]
    Range(String),
    /// Reading the ledger failed.
    #[error("reading the ledger: {0}")]
    Store(#[from] crate::store::StoreError),
    /// Writing failed.
    #[error("writing the bundle: {0}")]
    Io(#[from] std::io::Error),
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// First seq exported.
    pub from_seq: u64,
    /// One past the last seq exported.
    pub to_seq: u64,
    /// `prev_hash` of the first entry.
    pub anchor_hash: String,
    /// Hash of the last entry (the anchor when empty).
    pub root_hash: String,
    /// SHA-256 of the bytes written.
    pub sha256: String,
    /// Bytes written.
    pub bytes: u64,
}

/// A writer that hashes and counts what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The hex SHA-256 and size of everything written, and the inner writer.
    pub fn finish(self) -> (String, u64, W) {
        (hex::encode(self.hasher.finalize()), self.bytes, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Resolves an inclusive `to_seq` against the durable length: `from..to`.
pub fn range(
    ledger: &Ledger,
    from: u64,
    to_inclusive: Option<u64>,
) -> Result<(u64, u64), ExportError> {
    let len = ledger.durable_len();
    let to = to_inclusive.map(|t| t.saturating_add(1)).unwrap_or(len);
    if to > len {
        return Err(ExportError::Range(format!(
            "to_seq {} is past the end of the ledger ({len} entries)",
            to - 1
        )));
    }
    if from > to {
        return Err(ExportError::Range(format!(
            "from_seq {from} is after to_seq {}",
            to.saturating_sub(1)
        )));
    }
    Ok((from, to))
}

/// Writes the bundle of entries `from..to` to `out`.
pub fn export<W: Write>(
    ledger: &Ledger,
    from: u64,
    to: u64,
    out: W,
) -> Result<(ExportSummary, W), ExportError> {
    let status = ledger.status();
    let anchor = ledger.entry_hash_at(from).ok_or_else(|| {
        ExportError::Range(format!("entry {} cannot be read", from.saturating_sub(1)))
    })?;
    let root = ledger.entry_hash_at(to).ok_or_else(|| {
        ExportError::Range(format!("entry {} cannot be read", to.saturating_sub(1)))
    })?;
    let header = ExportHeader {
        kernel_id: &status.kernel_id,
        variant: &status.variant,
        exported_at_ms: SystemClock.now_ms(),
        from_seq: (from > 0).then_some(from),
        anchor_hash: (from > 0).then_some(anchor.as_str()),
        root_hash: &root,
    };
    let mut w = BundleWriter::start(HashingWriter::new(out), &header)?;
    for entry in ledger.entries(from, to) {
        w.entry(&entry?)?;
    }
    let (sha256, bytes, inner) = w.finish()?.finish();
    Ok((
        ExportSummary {
            from_seq: from,
            to_seq: to,
            anchor_hash: anchor,
            root_hash: root,
            sha256,
            bytes,
        },
        inner,
    ))
}

/// Preserves entries `from..=to` for `incident`: writes the bundle under
/// `dir` (write, fsync, rename) and returns the record for `kernel.preserve`.
pub fn preserve(
    ledger: &Ledger,
    dir: &Path,
    incident: &str,
    from: u64,
    to_inclusive: Option<u64>,
) -> Result<Value, ExportError> {
    let (from, to) = range(ledger, from, to_inclusive)?;
    std::fs::create_dir_all(dir)?;
    let now = SystemClock.now_ms();
    // The name carries the same inclusive range as the record.
    let last = to
        .checked_sub(1)
        .map_or_else(|| "none".to_owned(), |t| t.to_string());
    let name = format!("{now}-{incident}-{from}-{last}.json");
    let tmp: PathBuf = dir.join(format!(".{name}.tmp"));
    let file = File::create(&tmp)?;
    let (summary, writer) = export(ledger, from, to, BufWriter::new(file))?;
    let file = writer.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    // Evidence is not edited in place: the copy is read-only.
    let mut permissions = file.metadata()?.permissions();
    permissions.set_readonly(true);
    std::fs::set_permissions(&tmp, permissions)?;
    let path = dir.join(&name);
    std::fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()?;
    Ok(json!({
        "incident": incident,
        "path": path.display().to_string(),
        "from_seq": summary.from_seq,
        "to_seq": summary.to_seq.checked_sub(1),
        "entries": summary.to_seq - summary.from_seq,
        "anchor_hash": summary.anchor_hash,
        "root_hash": summary.root_hash,
        "bundle_sha256": summary.sha256,
        "bundle_bytes": summary.bytes,
    }))
}
