//! Writing archived objects: never over another object, and with Object Lock
//! retention when it is configured.
//!
//! An object is created only where its key is free: `If-None-Match: *` on
//! PutObject and on CompleteMultipartUpload (the multipart path used for
//! segments over [`PART_BYTES`]), a check that the key is still free just
//! before the multipart completion (for stores that ignore the header), and
//! a read-back (HeadObject) that the object under the key is the one this
//! upload completed. Writing the same bytes again is recognised as done (a
//! repeated run); other bytes under the key are a conflict, never replaced.
//!
//! With `rotation.object_lock`, a bucket without Object Lock is refused before
//! anything is written ([`Objects::check_object_lock`]), every write carries
//! the retention, and the retention is read back after the write (HeadObject)
//! and put with PutObjectRetention when the store dropped it (some stores
//! ignore retention headers on multipart uploads).

use std::path::Path;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, ObjectLockMode, ObjectLockRetention,
    ObjectLockRetentionMode,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::objects::{ObjectError, Objects, Written};
use crate::error_text;

/// Size of one multipart upload part; larger files are uploaded in parts.
pub const PART_BYTES: usize = 16 * 1024 * 1024;

/// Whether an SDK error is a failed write condition (the key is taken).
fn precondition_failed<E>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    matches!(
        e.raw_response().map(|r| r.status().as_u16()),
        Some(412) | Some(409)
    )
}

impl Objects {
    /// With Object Lock configured: fails with
    /// [`ObjectError::ObjectLockMissing`] unless the bucket has Object Lock
    /// enabled. Without it (or for a local directory): nothing to check.
    pub async fn check_object_lock(&self) -> Result<(), ObjectError> {
        let Objects::S3 {
            client,
            bucket,
            object_lock: Some(_),
        } = self
        else {
            return Ok(());
        };
        match client
            .get_object_lock_configuration()
            .bucket(bucket)
            .send()
            .await
        {
            Ok(out) => {
                let enabled = out
                    .object_lock_configuration()
                    .and_then(|c| c.object_lock_enabled())
                    .is_some_and(|e| e.as_str() == "Enabled");
                if enabled {
                    Ok(())
                } else {
                    Err(ObjectError::ObjectLockMissing(bucket.clone()))
                }
            }
            Err(e)
                if e.as_service_error()
                    .and_then(|s| aws_sdk_s3::error::ProvideErrorMetadata::code(s))
                    == Some("ObjectLockConfigurationNotFoundError") =>
            {
                Err(ObjectError::ObjectLockMissing(bucket.clone()))
            }
            Err(e) => Err(ObjectError::Store(error_text::chain(&e))),
        }
    }

    /// Writes `body` as `key`, unless it exists: then it must hold the same bytes.
    pub async fn put_new_bytes(&self, key: &str, body: Vec<u8>) -> Result<Written, ObjectError> {
        let sha = hex::encode(Sha256::digest(&body));
        match self {
            Objects::S3 {
                client,
                bucket,
                object_lock,
            } => {
                let mut put = client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .if_none_match("*")
                    .content_type("application/json")
                    .body(ByteStream::from(body));
                if let Some(lock) = object_lock {
                    put = put
                        .object_lock_mode(ObjectLockMode::from(lock.mode.as_str()))
                        .object_lock_retain_until_date(retain_until(lock.days))
                        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32);
                }
                let written = match put.send().await {
                    Ok(_) => Written::Created,
                    Err(e) if precondition_failed(&e) => {
                        if self.exists_same(key, &sha).await? {
                            Written::AlreadyThere
                        } else {
                            return Err(ObjectError::Conflict(key.to_owned()));
                        }
                    }
                    Err(e) => return Err(ObjectError::Store(error_text::chain(&e))),
                };
                self.ensure_retention(key).await?;
                Ok(written)
            }
            Objects::Dir(root) => {
                let path = root.join(key);
                if let Some(parent) = path.parent() {
                    tokio::fs::create_dir_all(parent).await?;
                }
                match tokio::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .await
                {
                    Ok(mut f) => {
                        use tokio::io::AsyncWriteExt;
                        f.write_all(&body).await?;
                        f.sync_all().await?;
                        Ok(Written::Created)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        if self.exists_same(key, &sha).await? {
                            Ok(Written::AlreadyThere)
                        } else {
                            Err(ObjectError::Conflict(key.to_owned()))
                        }
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Writes the file at `path` (of SHA-256 `sha256`) as `key`, unless it
    /// exists: then it must already hold the same bytes. Files over
    /// [`PART_BYTES`] go up in parts.
    pub async fn put_new_file(
        &self,
        key: &str,
        path: &Path,
        sha256: &str,
    ) -> Result<Written, ObjectError> {
        let size = tokio::fs::metadata(path).await?.len();
        if !matches!(self, Objects::S3 { .. }) || size as usize <= PART_BYTES {
            let body = tokio::fs::read(path).await?;
            return self.put_new_bytes(key, body).await;
        }
        if self.exists_same(key, sha256).await? {
            self.ensure_retention(key).await?;
            return Ok(Written::AlreadyThere);
        }
        let mut upload = self.start_multipart(key).await?;
        let written = match upload.upload_file(path, PART_BYTES).await {
            // The key may have been taken while the parts went up: stores
            // that ignore the completion's condition would replace it.
            Ok(()) => match self.exists_same(key, sha256).await {
                Ok(false) => upload.complete(sha256).await,
                Ok(true) => {
                    upload.abort().await;
                    Ok(Written::AlreadyThere)
                }
                Err(e) => {
                    upload.abort().await;
                    Err(e)
                }
            },
            Err(e) => {
                upload.abort().await;
                Err(e)
            }
        }?;
        self.ensure_retention(key).await?;
        Ok(written)
    }

    /// Starts a multipart upload of `key` (with the retention, when configured).
    pub async fn start_multipart(&self, key: &str) -> Result<Multipart<'_>, ObjectError> {
        let Objects::S3 {
            client,
            bucket,
            object_lock,
        } = self
        else {
            return Err(ObjectError::Store(
                "a multipart upload needs an S3 store".into(),
            ));
        };
        let mut create = client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .content_type("application/json");
        if let Some(lock) = object_lock {
            create = create
                .object_lock_mode(ObjectLockMode::from(lock.mode.as_str()))
                .object_lock_retain_until_date(retain_until(lock.days));
        }
        let created = create
            .send()
            .await
            .map_err(|e| ObjectError::Store(error_text::chain(&e)))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| ObjectError::Store(format!("{key}: the store gave no upload id")))?
            .to_owned();
        Ok(Multipart {
            objects: self,
            client,
            bucket,
            key: key.to_owned(),
            upload_id,
            parts: Vec::new(),
            bytes: 0,
        })
    }

    /// With Object Lock configured: reads the object's retention back
    /// (HeadObject) and puts it (PutObjectRetention) when it is missing.
    async fn ensure_retention(&self, key: &str) -> Result<(), ObjectError> {
        let Objects::S3 {
            client,
            bucket,
            object_lock: Some(lock),
        } = self
        else {
            return Ok(());
        };
        if retention_of(client, bucket, key).await?.is_some() {
            return Ok(());
        }
        tracing::info!(%key, "the store dropped the object's retention; putting it");
        client
            .put_object_retention()
            .bucket(bucket)
            .key(key)
            .retention(
                ObjectLockRetention::builder()
                    .mode(ObjectLockRetentionMode::from(lock.mode.as_str()))
                    .retain_until_date(retain_until(lock.days))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| ObjectError::Store(error_text::chain(&e)))?;
        match retention_of(client, bucket, key).await? {
            Some(_) => Ok(()),
            None => Err(ObjectError::Store(format!(
                "{key}: the store does not keep Object Lock retention"
            ))),
        }
    }
}

/// The Object Lock mode and retain-until time (s) of `key`, from HeadObject.
async fn retention_of(
    client: &Client,
    bucket: &str,
    key: &str,
) -> Result<Option<(String, i64)>, ObjectError> {
    let head = client
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| ObjectError::Store(error_text::chain(&e)))?;
    Ok(
        match (
            head.object_lock_mode(),
            head.object_lock_retain_until_date(),
        ) {
            (Some(mode), Some(until)) => Some((mode.as_str().to_owned(), until.secs())),
            _ => None,
        },
    )
}

/// A multipart upload in progress: parts, then a conditional completion.
pub struct Multipart<'a> {
    objects: &'a Objects,
    client: &'a Client,
    bucket: &'a str,
    key: String,
    upload_id: String,
    parts: Vec<CompletedPart>,
    bytes: u64,
}

impl Multipart<'_> {
    /// Uploads the file at `path` in parts of `part_bytes` (S3 wants at least
    /// 5 MiB for every part but the last).
    pub async fn upload_file(&mut self, path: &Path, part_bytes: usize) -> Result<(), ObjectError> {
        let mut file = tokio::fs::File::open(path).await?;
        loop {
            let mut buf = Vec::with_capacity(part_bytes);
            let n = (&mut file)
                .take(part_bytes as u64)
                .read_to_end(&mut buf)
                .await?;
            if n == 0 {
                return Ok(());
            }
            let number = self.parts.len() as i32 + 1;
            let resp = self
                .client
                .upload_part()
                .bucket(self.bucket)
                .key(&self.key)
                .upload_id(&self.upload_id)
                .part_number(number)
                .body(ByteStream::from(buf))
                .send()
                .await
                .map_err(|e| ObjectError::Store(error_text::chain(&e)))?;
            self.parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(resp.e_tag().map(str::to_owned))
                    .set_checksum_crc32(resp.checksum_crc32().map(str::to_owned))
                    .build(),
            );
            self.bytes += n as u64;
        }
    }

    /// Completes the upload only if the key is still free (`If-None-Match:
    /// *`), then reads back that the object under the key is this upload's.
    /// When the key was taken meanwhile: [`Written::AlreadyThere`] if it holds
    /// the same bytes (SHA-256 `sha256`), else [`ObjectError::Conflict`];
    /// either way the upload is aborted and the other object stays.
    pub async fn complete(self, sha256: &str) -> Result<Written, ObjectError> {
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .if_none_match("*")
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(self.parts.clone()))
                    .build(),
            )
            .send()
            .await;
        let etag = match completed {
            Ok(out) => out.e_tag().map(str::to_owned),
            Err(e) => {
                self.abort().await;
                if !precondition_failed(&e) {
                    return Err(ObjectError::Store(error_text::chain(&e)));
                }
                return if self.objects.exists_same(&self.key, sha256).await? {
                    Ok(Written::AlreadyThere)
                } else {
                    Err(ObjectError::Store(format!(
                        "{}: the store refused the completion's condition but holds no object there; the next run retries",
                        self.key
                    )))
                };
            }
        };
        let head = self
            .client
            .head_object()
            .bucket(self.bucket)
            .key(&self.key)
            .send()
            .await
            .map_err(|e| ObjectError::Store(error_text::chain(&e)))?;
        let same_etag = etag.is_none() || head.e_tag() == etag.as_deref();
        if !same_etag || head.content_length() != Some(self.bytes as i64) {
            return Err(ObjectError::Conflict(self.key.clone()));
        }
        Ok(Written::Created)
    }

    /// Abandons the upload (its parts are deleted; no object is made).
    pub async fn abort(&self) {
        let _ = self
            .client
            .abort_multipart_upload()
            .bucket(self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await;
    }
}

fn retain_until(days: u32) -> aws_smithy_types::DateTime {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    aws_smithy_types::DateTime::from_secs((now + u64::from(days) * 86_400) as i64)
}
