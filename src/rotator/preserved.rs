//! Preserved evidence off the box: a bundle that `POST /v1/preserve` wrote
//! under the data dir is also uploaded to the kernel's archive, under
//! `<prefix>/<kernel_id>/preserved/<file name>`, never overwriting, with the
//! Object Lock retention of `rotation.object_lock` when it is set, and read
//! back before the service records where it went.

use std::path::Path;

use serde_json::{Value, json};

use super::manifest::kernel_prefix;
use super::objects::{ObjectError, Objects, Written};
use super::run::{RotationError, Target};
use crate::config::ObjectLock;

/// Uploads the preserved file at `path` (of SHA-256 `sha256`) for
/// `kernel_id`; answers where it went, as recorded in `kernel.preserve`.
pub async fn upload(
    target: &Target,
    kernel_id: &str,
    path: &Path,
    sha256: &str,
    object_lock: Option<&ObjectLock>,
) -> Result<Value, RotationError> {
    target.objects.check_object_lock().await?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| RotationError::Export(format!("{} has no file name", path.display())))?;
    let key = format!(
        "{}preserved/{name}",
        kernel_prefix(&target.prefix, kernel_id)
    );
    let written = target.objects.put_new_file(&key, path, sha256).await?;
    let (stored, bytes) = target.objects.digest(&key).await?;
    if stored != sha256 {
        return Err(ObjectError::Conflict(key).into());
    }
    let bucket = match &target.objects {
        Objects::S3 { bucket, .. } => Some(bucket.clone()),
        Objects::Dir(_) => None,
    };
    Ok(json!({
        "bucket": bucket,
        "key": key,
        "sha256": stored,
        "bytes": bytes,
        "already_there": written == Written::AlreadyThere,
        "object_lock": object_lock.map(|l| json!({"mode": l.mode, "days": l.days})),
    }))
}
