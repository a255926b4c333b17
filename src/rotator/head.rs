//! The archive head check: is the newest archived rotation still in the
//! bucket, as the ledger recorded it?
//!
//! The ledger's last `kernel.rotate` entry holds the newest manifest (its
//! payload is the manifest; the object's bytes are the payload's canonical
//! JSON) and names the segment it covers, with its size. The check reads the
//! manifest object back and compares it byte for byte, and looks the segment
//! up (it exists, with the recorded size; its full SHA-256 is left to
//! `kernels archive verify`, which reads every byte). Deleting or replacing
//! the newest objects is otherwise invisible from the archive alone: the
//! entry that records them is in the next segment, which does not exist yet.
//!
//! The rotator runs the check at start, after every run and periodically,
//! and shows it in its status; a run refuses to chain a new segment onto a
//! head that is missing or changed.

use serde::Serialize;

use super::manifest::{Manifest, manifest_key};
use super::objects::ObjectError;
use super::run::{RotationError, Target};
use crate::kernel::state::RotationMark;
use crate::ledger::Ledger;

/// What the check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadState {
    /// No rotation is recorded yet: nothing to check.
    NoneRecorded,
    /// The newest manifest and segment are there, as recorded.
    Ok,
    /// The newest manifest or segment is not in the archive.
    Missing,
    /// The newest manifest or segment differs from what was recorded.
    Changed,
}

/// The outcome of one head check (shown in the rotator's status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeadCheck {
    /// What was found.
    pub state: HeadState,
    /// Seq of the `kernel.rotate` entry that records the newest rotation.
    pub entry_seq: Option<u64>,
    /// Last seq the newest segment covers.
    pub to_seq: Option<u64>,
    /// Key of the newest manifest.
    pub manifest_key: Option<String>,
    /// Key of the newest segment.
    pub segment_key: Option<String>,
    /// What is wrong, when something is.
    pub problem: Option<String>,
}

impl HeadCheck {
    /// The check as a run's refusal, when the head is missing or changed.
    pub fn refusal(&self) -> Option<RotationError> {
        match self.state {
            HeadState::Missing | HeadState::Changed => {
                Some(RotationError::ArchiveHead(Box::new(self.clone())))
            }
            HeadState::NoneRecorded | HeadState::Ok => None,
        }
    }
}

/// The head just archived and recorded by a run (nothing to ask the store).
pub fn archived(
    target: &Target,
    manifest: &super::manifest::Manifest,
    entry_seq: u64,
) -> HeadCheck {
    HeadCheck {
        state: HeadState::Ok,
        entry_seq: Some(entry_seq),
        to_seq: Some(manifest.to_seq),
        manifest_key: Some(manifest_key(
            &target.prefix,
            &manifest.kernel_id,
            manifest.from_seq,
            manifest.to_seq,
        )),
        segment_key: Some(manifest.segment_key.clone()),
        problem: None,
    }
}

/// Checks the newest recorded rotation of `ledger` against `target`'s
/// archive. An error means the archive could not be asked (unreachable).
pub async fn check(ledger: &Ledger, target: &Target) -> Result<HeadCheck, RotationError> {
    let Some(mark) = ledger.state().last_rotation else {
        return Ok(HeadCheck {
            state: HeadState::NoneRecorded,
            entry_seq: None,
            to_seq: None,
            manifest_key: None,
            segment_key: None,
            problem: None,
        });
    };
    let manifest = recorded_manifest(ledger, &mark).await?;
    let key = manifest_key(
        &target.prefix,
        &manifest.kernel_id,
        manifest.from_seq,
        manifest.to_seq,
    );
    let found = |state, problem: Option<String>| HeadCheck {
        state,
        entry_seq: Some(mark.entry_seq),
        to_seq: Some(manifest.to_seq),
        manifest_key: Some(key.clone()),
        segment_key: Some(manifest.segment_key.clone()),
        problem,
    };
    let recorded_at = format!("recorded by entry {}", mark.entry_seq);
    match target.objects.read_all(&key, 1 << 20).await {
        Ok(bytes) if bytes == manifest.to_bytes() => {}
        Ok(_) => {
            return Ok(found(
                HeadState::Changed,
                Some(format!(
                    "the newest manifest {key} ({recorded_at}) differs from the recorded one"
                )),
            ));
        }
        Err(ObjectError::Missing(_)) => {
            return Ok(found(
                HeadState::Missing,
                Some(format!(
                    "the newest manifest {key} ({recorded_at}) is missing from the archive"
                )),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    match target.objects.size(&manifest.segment_key).await? {
        Some(size) if size == manifest.segment_bytes => Ok(found(HeadState::Ok, None)),
        Some(size) => Ok(found(
            HeadState::Changed,
            Some(format!(
                "the newest segment {} ({recorded_at}) has {size} bytes, the manifest says {}",
                manifest.segment_key, manifest.segment_bytes
            )),
        )),
        None => Ok(found(
            HeadState::Missing,
            Some(format!(
                "the newest segment {} ({recorded_at}) is missing from the archive",
                manifest.segment_key
            )),
        )),
    }
}

/// The manifest recorded as the payload of the `kernel.rotate` entry `mark`.
async fn recorded_manifest(
    ledger: &Ledger,
    mark: &RotationMark,
) -> Result<Manifest, RotationError> {
    let ledger = ledger.clone();
    let seq = mark.entry_seq;
    tokio::task::spawn_blocking(move || {
        let entry = ledger
            .entries(seq, seq + 1)
            .next()
            .ok_or_else(|| RotationError::Export(format!("entry {seq} cannot be read")))?
            .map_err(|e| RotationError::Export(format!("entry {seq}: {e}")))?;
        let payload = entry.payload.ok_or_else(|| {
            RotationError::Check(format!("kernel.rotate entry {seq} has no manifest"))
        })?;
        serde_json::from_value::<Manifest>(payload).map_err(|e| {
            RotationError::Check(format!(
                "kernel.rotate entry {seq} does not hold a manifest: {e}"
            ))
        })
    })
    .await
    .map_err(|e| RotationError::Internal(format!("reading the last rotation: {e}")))?
}
