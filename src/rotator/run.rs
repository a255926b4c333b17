//! One rotation run.
//!
//! 1. The range: from the entry after the last recorded rotation to the
//!    durable head. A range with nothing but `kernel.rotate` entries is
//!    empty: no upload, no entry.
//! 2. Repair: if a manifest for a range starting there is already in the
//!    archive (a run uploaded it, then the process died before recording
//!    it), that manifest is checked against the ledger and recorded — no
//!    second upload, no duplicate range, no gap.
//! 3. Otherwise the segment (a range bundle, written deterministically so a
//!    repeated run writes the same bytes) is exported to a local file,
//!    uploaded (never overwriting), then the manifest, which carries the
//!    ledger's signed checkpoint of every entry up to the segment's last.
//! 4. Both are read back and checked: the manifest's bytes, the segment's
//!    SHA-256, size and chain (anchor, first seq, every hash, root).
//! 5. Only then is `kernel.rotate` appended, with the manifest as payload.
//!
//! Before all this, a run checks the archive: a bucket without Object Lock
//! when retention is configured, or a newest recorded manifest or segment
//! that is missing or changed (see [`super::head`]), is refused. The archive
//! work (everything before the record) may be bounded in time
//! ([`rotate_within`]): a hung store then fails the run instead of holding it.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::manifest::{MANIFEST_FORMAT, Manifest, manifest_key, range_of_key, segment_key};
use super::objects::{ObjectError, Objects, Written};
use super::segment::{self, ScanError};
use crate::bundle::{BundleWriter, ExportHeader};
use crate::evidence::HashingWriter;
use crate::kernel::state::event;
use crate::ledger::{Clock, Ledger, LedgerError, SystemClock, TreeError};

/// Why a rotation run failed. Every failure leaves the ledger unchanged;
/// the next run retries.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The archive could not be reached or refused a write.
    #[error(transparent)]
    Objects(#[from] ObjectError),
    /// A read-back or repair check failed.
    #[error("archive check failed: {0}")]
    Check(String),
    /// Exporting the segment failed.
    #[error("export failed: {0}")]
    Export(String),
    /// Recording the rotation failed.
    #[error("recording the rotation: {0}")]
    Ledger(#[from] LedgerError),
    /// The archive work took longer than the attempt time allowed (a hung
    /// or very slow store); it was abandoned.
    #[error("the archive work took longer than {0:?} (rotation.attempt_timeout) and was abandoned")]
    TimedOut(Duration),
    /// The newest recorded rotation is missing or changed in the archive: a
    /// run does not chain a new segment onto it.
    #[error(
        "{}: refusing to chain the next segment onto it (the archive would have a hole); restore the object, then rotate again",
        .0.problem.as_deref().unwrap_or("the archive head is missing or changed")
    )]
    ArchiveHead(Box<super::head::HeadCheck>),
    /// The run itself failed unexpectedly (a bug); the next run retries.
    #[error("internal: {0}")]
    Internal(String),
}

impl RotationError {
    /// A stable name for the failure (status, alerts, metrics).
    pub fn code(&self) -> &'static str {
        match self {
            RotationError::Objects(ObjectError::ObjectLockMissing(_)) => "object_lock_missing",
            RotationError::Objects(ObjectError::Conflict(_)) => "archive_conflict",
            RotationError::Objects(ObjectError::Missing(_)) => "archive_object_missing",
            RotationError::Objects(_) => "store_unreachable",
            RotationError::Check(_) => "archive_check_failed",
            RotationError::Export(_) => "export_failed",
            RotationError::Ledger(_) => "record_failed",
            RotationError::TimedOut(_) => "attempt_timeout",
            RotationError::ArchiveHead(check) if check.state == super::head::HeadState::Changed => {
                "archive_head_changed"
            }
            RotationError::ArchiveHead(_) => "archive_head_missing",
            RotationError::Internal(_) => "internal",
        }
    }
}

/// What a rotation started by hand answers (see [`crate::service::RotationControl`]).
#[derive(Debug, Clone, PartialEq)]
pub enum RunAnswer {
    /// The run finished within the wait: its outcome.
    Finished {
        /// The run's id (as in the rotator's history).
        run_id: String,
        /// [`Outcome::to_value`].
        outcome: Value,
    },
    /// The run goes on in the rotator's worker; `GET /v1/rotations` shows it.
    Running {
        /// The run's id.
        run_id: String,
    },
}

/// A rotation started by hand that failed; the rotator retries it with the
/// same backoff as a scheduled run.
#[derive(Debug, Clone, thiserror::Error)]
#[error("rotation run {run_id} failed ({}): {error}", error.code())]
pub struct RunFailure {
    /// The run's id.
    pub run_id: String,
    /// Why it failed.
    pub error: Arc<RotationError>,
    /// When the rotator tries again (ms), if it will.
    pub retry_at_ms: Option<u64>,
}

impl From<ScanError> for RotationError {
    fn from(e: ScanError) -> Self {
        match e {
            ScanError::Object(o) => RotationError::Objects(o),
            other => RotationError::Check(other.to_string()),
        }
    }
}

/// When this environment variable is set, the process aborts right after a
/// run's uploads and before its `kernel.rotate` entry: the crash the next
/// run must repair. Used by the crash tests; never set it in production.
pub const ABORT_AFTER_UPLOAD: &str = "KERNELS_FAULT_ABORT_AFTER_UPLOAD";

/// Where a kernel's archive goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// The object store.
    pub objects: Objects,
    /// Key prefix.
    pub prefix: String,
    /// Local scratch dir for segment files.
    pub work_dir: PathBuf,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Nothing new to archive.
    Nothing {
        /// The first seq not yet archived.
        next_seq: u64,
    },
    /// A segment was archived and recorded.
    Archived {
        /// Its manifest.
        manifest: Box<Manifest>,
        /// Whether an earlier, unrecorded upload was recorded (no new upload).
        repaired: bool,
        /// Seq of the `kernel.rotate` entry.
        entry_seq: u64,
    },
}

impl Outcome {
    /// The outcome as JSON.
    pub fn to_value(&self) -> Value {
        match self {
            Outcome::Nothing { next_seq } => {
                json!({"archived": false, "reason": "nothing new to archive", "next_seq": next_seq})
            }
            Outcome::Archived {
                manifest,
                repaired,
                entry_seq,
            } => json!({
                "archived": true,
                "repaired": repaired,
                "manifest": manifest.to_value(),
                "manifest_sha256": manifest.sha256(),
                "rotate_entry_seq": entry_seq,
            }),
        }
    }
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), RotationError> {
    if ok {
        Ok(())
    } else {
        Err(RotationError::Check(what()))
    }
}

/// Runs one rotation of `ledger` into `target`; `actor` is recorded.
pub async fn rotate_once(
    ledger: &Ledger,
    target: &Target,
    actor: &str,
) -> Result<Outcome, RotationError> {
    rotate_within(ledger, target, actor, None).await
}

/// [`rotate_once`], with the archive work (every step before the record)
/// abandoned after `limit`: the run then fails with
/// [`RotationError::TimedOut`] and leaves the ledger unchanged.
pub async fn rotate_within(
    ledger: &Ledger,
    target: &Target,
    actor: &str,
    limit: Option<Duration>,
) -> Result<Outcome, RotationError> {
    let prepared = match limit {
        Some(limit) => tokio::time::timeout(limit, prepare(ledger, target))
            .await
            .map_err(|_| RotationError::TimedOut(limit))??,
        None => prepare(ledger, target).await?,
    };
    let (manifest, repaired) = match prepared {
        Prepared::Nothing { next_seq } => return Ok(Outcome::Nothing { next_seq }),
        Prepared::Ready { manifest, repaired } => (*manifest, repaired),
    };
    let payload = manifest.to_value();
    let entry = ledger
        .event(|s, now| s.rotate_event(now, actor, payload.clone()))
        .await?;
    debug_assert_eq!(entry.tool_name.as_deref(), Some(event::ROTATE));
    clean_work_dir(target, &manifest.kernel_id);
    Ok(Outcome::Archived {
        manifest: Box::new(manifest),
        repaired,
        entry_seq: entry.ledger_seq,
    })
}

/// What the archive work of a run leaves for the record.
enum Prepared {
    /// Nothing new to archive.
    Nothing { next_seq: u64 },
    /// Archived and read back: record it.
    Ready {
        manifest: Box<Manifest>,
        repaired: bool,
    },
}

/// Everything before the record: checks, repair or upload, read-back.
async fn prepare(ledger: &Ledger, target: &Target) -> Result<Prepared, RotationError> {
    // A bucket that cannot keep the configured retention is refused first.
    target.objects.check_object_lock().await?;
    let state = ledger.state();
    let kernel_id = state.kernel_id.clone().unwrap_or_default();
    let variant = state
        .variant
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    let last = state.last_rotation.clone();
    let from = last.as_ref().map_or(0, |r| r.to_seq + 1);
    let durable = ledger.durable_len();
    if from >= durable || only_rotations(ledger, from, durable).await? {
        return Ok(Prepared::Nothing { next_seq: from });
    }
    // Never chain onto a newest rotation that is gone from the archive.
    if let Some(refusal) = super::head::check(ledger, target).await?.refusal() {
        return Err(refusal);
    }
    let prev_manifest_sha256 = last.as_ref().map(|r| r.manifest_sha256.clone());

    // Repair: an earlier run may have uploaded this range but not recorded it.
    let manifests_prefix = format!(
        "{}manifests/",
        super::manifest::kernel_prefix(&target.prefix, &kernel_id)
    );
    let existing = target
        .objects
        .list(&manifests_prefix)
        .await?
        .into_iter()
        .find(|o| range_of_key(&o.key).is_some_and(|(a, _)| a == from));
    let (manifest, repaired) = match existing {
        Some(object) => {
            let bytes = target.objects.read_all(&object.key, 1 << 20).await?;
            let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
                RotationError::Check(format!("{}: not a manifest: {e}", object.key))
            })?;
            check(manifest.to_bytes() == bytes, || {
                format!("{} is not in canonical form", object.key)
            })?;
            check(
                manifest.from_seq == from
                    && manifest.to_seq < durable
                    && manifest.kernel_id == kernel_id,
                || {
                    format!(
                        "{} does not fit the ledger (range {}..={})",
                        object.key, manifest.from_seq, manifest.to_seq
                    )
                },
            )?;
            check(
                ledger.entry_hash_at(manifest.to_seq + 1).as_deref() == Some(&manifest.root_hash),
                || {
                    format!(
                        "{}: root hash differs from the ledger's entry {}",
                        object.key, manifest.to_seq
                    )
                },
            )?;
            check(
                manifest.prev_manifest_sha256 == prev_manifest_sha256,
                || {
                    format!(
                        "{}: does not link to the last recorded manifest",
                        object.key
                    )
                },
            )?;
            if let Some(text) = &manifest.checkpoint {
                let root = ledger.tree_root_at(manifest.to_seq + 1).ok();
                let signed = crate::checkpoint::SignedCheckpoint::parse(text).ok();
                check(
                    signed.is_some_and(|cp| {
                        Some(cp.checkpoint.root) == root
                            && cp.checkpoint.size == manifest.to_seq + 1
                    }),
                    || {
                        format!(
                            "{}: its checkpoint is not the ledger's tree of {} entries",
                            object.key,
                            manifest.to_seq + 1
                        )
                    },
                )?;
            }
            tracing::warn!(key = %object.key, "found an archived but unrecorded rotation; recording it");
            (manifest, true)
        }
        None => {
            // A segment without a manifest means a run died between the two
            // uploads: archive that same range again (same bytes), so no
            // orphan is left behind.
            let segments_prefix = format!(
                "{}segments/",
                super::manifest::kernel_prefix(&target.prefix, &kernel_id)
            );
            let orphan_to = target
                .objects
                .list(&segments_prefix)
                .await?
                .into_iter()
                .filter_map(|o| range_of_key(&o.key))
                .find(|(a, b)| *a == from && *b < durable)
                .map(|(_, b)| b);
            let to = orphan_to.unwrap_or(durable - 1);
            (
                upload(
                    ledger,
                    target,
                    &kernel_id,
                    &variant,
                    from,
                    to,
                    prev_manifest_sha256,
                )
                .await?,
                false,
            )
        }
    };

    // Fault injection for the crash tests: die between upload and record.
    if !repaired && std::env::var_os(ABORT_AFTER_UPLOAD).is_some() {
        tracing::error!(
            "{ABORT_AFTER_UPLOAD} is set: aborting after the upload, before the record"
        );
        std::process::abort();
    }

    // Read back and check both objects.
    let key = manifest_key(
        &target.prefix,
        &kernel_id,
        manifest.from_seq,
        manifest.to_seq,
    );
    let stored = target.objects.read_all(&key, 1 << 20).await?;
    check(stored == manifest.to_bytes(), || {
        format!("{key}: read back differs from what was written")
    })?;
    let (scan, _) =
        segment::scan_object(&target.objects, &manifest.segment_key, segment::Ignore).await?;
    check(
        scan.sha256 == manifest.segment_sha256 && scan.bytes == manifest.segment_bytes,
        || {
            format!(
                "{}: read back sha256/size differ from the manifest",
                manifest.segment_key
            )
        },
    )?;
    check(scan.report.valid, || {
        format!(
            "{}: chain does not verify: {:?}",
            manifest.segment_key,
            scan.report.errors.first()
        )
    })?;
    check(
        scan.report.entries_verified == manifest.entry_count
            && scan.report.computed_root_hash == manifest.root_hash
            && scan.header.from_seq.unwrap_or(0) == manifest.from_seq
            && scan
                .header
                .anchor_hash
                .as_deref()
                .unwrap_or(crate::entry::GENESIS_HASH)
                == manifest.anchor_hash,
        || {
            format!(
                "{}: range, count or hashes differ from the manifest",
                manifest.segment_key
            )
        },
    )?;

    Ok(Prepared::Ready {
        manifest: Box::new(manifest),
        repaired,
    })
}

/// Whether `from..to` holds only `kernel.rotate` entries.
async fn only_rotations(ledger: &Ledger, from: u64, to: u64) -> Result<bool, RotationError> {
    let ledger = ledger.clone();
    tokio::task::spawn_blocking(move || {
        for entry in ledger.entries(from, to) {
            let entry = entry.map_err(|e| RotationError::Export(e.to_string()))?;
            if event::of(&entry) != Some(event::ROTATE) {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await
    .map_err(|e| RotationError::Export(e.to_string()))?
}

/// A fresh local file for the segment of `from..=to`. Its name is unique
/// (an abandoned run's export may still be writing its own file).
fn segment_file(target: &Target, kernel_id: &str, from: u64, to: u64) -> PathBuf {
    let nonce: u64 = rand::random();
    target
        .work_dir
        .join(format!("{kernel_id}-{from:020}-{to:020}.{nonce:016x}.json"))
}

/// Removes the segment files of `kernel_id` left in the work dir (by this
/// run, or by runs that were abandoned or died).
fn clean_work_dir(target: &Target, kernel_id: &str) {
    let Ok(items) = std::fs::read_dir(&target.work_dir) else {
        return;
    };
    let prefix = format!("{kernel_id}-");
    for item in items.flatten() {
        if item.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(item.path());
        }
    }
}

/// Exports `from..=to` to a local file and uploads segment then manifest.
async fn upload(
    ledger: &Ledger,
    target: &Target,
    kernel_id: &str,
    variant: &str,
    from: u64,
    to: u64,
    prev_manifest_sha256: Option<String>,
) -> Result<Manifest, RotationError> {
    std::fs::create_dir_all(&target.work_dir).map_err(|e| RotationError::Export(e.to_string()))?;
    clean_work_dir(target, kernel_id);
    let path = segment_file(target, kernel_id, from, to);
    let (sha256, bytes, anchor, root) = {
        let ledger = ledger.clone();
        let path = path.clone();
        let (kernel_id, variant) = (kernel_id.to_owned(), variant.to_owned());
        tokio::task::spawn_blocking(move || {
            write_segment(&ledger, &path, &kernel_id, &variant, from, to)
        })
        .await
        .map_err(|e| RotationError::Export(e.to_string()))??
    };
    let seg_key = segment_key(&target.prefix, kernel_id, from, to);
    let written = target
        .objects
        .put_new_file(&seg_key, &path, &sha256)
        .await?;
    if written == Written::AlreadyThere {
        tracing::info!(key = %seg_key, "segment already archived by an earlier run");
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        kernel_id: kernel_id.to_owned(),
        variant: variant.to_owned(),
        from_seq: from,
        to_seq: to,
        entry_count: to - from + 1,
        anchor_hash: anchor,
        root_hash: root,
        segment_key: seg_key,
        segment_sha256: sha256,
        segment_bytes: bytes,
        prev_manifest_sha256,
        created_at_ms: SystemClock.now_ms(),
        checkpoint: signed_checkpoint(ledger, to + 1).await?,
    };
    let key = manifest_key(&target.prefix, kernel_id, from, to);
    target
        .objects
        .put_new_bytes(&key, manifest.to_bytes())
        .await?;
    Ok(manifest)
}

/// The ledger's signed checkpoint of its first `size` entries, for a
/// manifest (none when the ledger has no signing key; any other failure
/// fails the run: a manifest is never written without the checkpoint its
/// ledger can sign).
async fn signed_checkpoint(ledger: &Ledger, size: u64) -> Result<Option<String>, RotationError> {
    match ledger.checkpoint_at(size).await {
        Ok(cp) => Ok(Some(cp.to_string())),
        Err(TreeError::NoSigningKey) => Ok(None),
        Err(TreeError::Ledger(e)) => Err(RotationError::Ledger(e)),
        Err(e) => Err(RotationError::Export(format!(
            "signing the checkpoint of {size} entries: {e}"
        ))),
    }
}

/// Writes the range bundle of `from..=to`; its bytes depend only on the
/// entries (the export time is the last entry's time), so a repeated run
/// produces the same object.
fn write_segment(
    ledger: &Ledger,
    path: &std::path::Path,
    kernel_id: &str,
    variant: &str,
    from: u64,
    to: u64,
) -> Result<(String, u64, String, String), RotationError> {
    let err = |e: std::io::Error| RotationError::Export(e.to_string());
    let anchor = ledger.entry_hash_at(from).ok_or_else(|| {
        RotationError::Export(format!("cannot read entry {}", from.saturating_sub(1)))
    })?;
    let root = ledger
        .entry_hash_at(to + 1)
        .ok_or_else(|| RotationError::Export(format!("cannot read entry {to}")))?;
    let last_ts = ledger
        .entries(to, to + 1)
        .next()
        .and_then(Result::ok)
        .map(|e| e.ts_ms)
        .unwrap_or(0);
    let header = ExportHeader {
        kernel_id,
        variant,
        exported_at_ms: last_ts,
        from_seq: Some(from),
        anchor_hash: Some(&anchor),
        root_hash: &root,
    };
    let file = std::fs::File::create(path).map_err(err)?;
    let mut w = BundleWriter::start(
        HashingWriter::new(BufWriter::with_capacity(1 << 20, file)),
        &header,
    )
    .map_err(err)?;
    for entry in ledger.entries(from, to + 1) {
        let entry = entry.map_err(|e| RotationError::Export(e.to_string()))?;
        w.entry(&entry).map_err(err)?;
    }
    let (sha, bytes, buffered) = w.finish().map_err(err)?.finish();
    let mut file = buffered.into_inner().map_err(|e| err(e.into_error()))?;
    file.flush().map_err(err)?;
    file.sync_all().map_err(err)?;
    Ok((sha, bytes, anchor, root))
}
