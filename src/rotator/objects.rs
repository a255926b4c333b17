//! Where archived objects live: an S3 bucket (aws-sdk-s3), or a local
//! directory holding downloaded objects (for auditors working offline).
//!
//! The operations here are the reads the rotator and the forensic commands
//! need: list a prefix, read an object as a stream, hash it. Writes (never
//! overwriting, with Object Lock retention) are in [`super::upload`].

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::ObjectLock;

/// Why an object operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The store could not be reached or answered an error.
    #[error("object store: {0}")]
    Store(String),
    /// The object does not exist.
    #[error("object {0} does not exist")]
    Missing(String),
    /// An object with that key already exists with other content.
    #[error(
        "object {0} already exists with different content; archived objects are never overwritten"
    )]
    Conflict(String),
    /// Object Lock retention is configured but the bucket has no Object Lock.
    #[error(
        "bucket {0} does not have Object Lock enabled, but rotation.object_lock is set: create the bucket with Object Lock (it cannot be turned on later on most stores) or remove rotation.object_lock; nothing was archived"
    )]
    ObjectLockMissing(String),
    /// Local I/O.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Full key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The object was created.
    Created,
    /// It already existed with the same bytes (a repeated run).
    AlreadyThere,
}

/// S3 settings.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// Bucket.
    pub bucket: String,
    /// Region.
    pub region: String,
    /// Endpoint of an S3-compatible store.
    pub endpoint: Option<String>,
    /// Path-style addressing.
    pub force_path_style: bool,
    /// Explicit credentials (tests); `None` = the standard AWS chain.
    pub credentials: Option<(String, String)>,
    /// Object Lock retention for written objects.
    pub object_lock: Option<ObjectLock>,
}

/// An async byte stream.
pub type Reader = Pin<Box<dyn AsyncRead + Send>>;

/// An archive location.
#[derive(Debug, Clone)]
pub enum Objects {
    /// An S3 bucket.
    S3 {
        /// SDK client.
        client: Client,
        /// Bucket.
        bucket: String,
        /// Object Lock retention for written objects.
        object_lock: Option<ObjectLock>,
    },
    /// A local directory mirroring the bucket's keys.
    Dir(PathBuf),
}

impl Objects {
    /// An S3 client with the standard credential chain (or the explicit
    /// credentials), over rustls with ring.
    pub async fn s3(settings: &S3Settings) -> Objects {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(settings.region.clone()));
        if let Some(endpoint) = &settings.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some((ak, sk)) = &settings.credentials {
            loader =
                loader.credentials_provider(Credentials::new(ak, sk, None, None, "kernels-config"));
        }
        let shared = loader.load().await;
        let config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(settings.force_path_style)
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(120))
                    .build(),
            )
            .build();
        Objects::S3 {
            client: Client::from_conf(config),
            bucket: settings.bucket.clone(),
            object_lock: settings.object_lock.clone(),
        }
    }

    /// Every object whose key starts with `prefix`, in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ObjectError> {
        match self {
            Objects::S3 { client, bucket, .. } => {
                let mut out = Vec::new();
                let mut token = None;
                loop {
                    let resp = client
                        .list_objects_v2()
                        .bucket(bucket)
                        .prefix(prefix)
                        .set_continuation_token(token)
                        .send()
                        .await
                        .map_err(|e| ObjectError::Store(crate::error_text::chain(&e)))?;
                    for o in resp.contents() {
                        if let Some(key) = o.key() {
                            out.push(ObjectInfo {
                                key: key.to_owned(),
                                size: o.size().unwrap_or(0).max(0) as u64,
                            });
                        }
                    }
                    match resp.next_continuation_token() {
                        Some(t) if resp.is_truncated().unwrap_or(false) => {
                            token = Some(t.to_owned())
                        }
                        _ => break,
                    }
                }
                out.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(out)
            }
            Objects::Dir(root) => {
                let mut out = Vec::new();
                let base = root.join(prefix);
                let dir = if prefix.ends_with('/') {
                    base.clone()
                } else {
                    base.parent().map(Path::to_path_buf).unwrap_or(base.clone())
                };
                if dir.is_dir() {
                    walk(root, &dir, &mut out)?;
                }
                out.retain(|o| o.key.starts_with(prefix));
                out.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(out)
            }
        }
    }

    /// Opens an object for reading.
    pub async fn read(&self, key: &str) -> Result<Reader, ObjectError> {
        match self {
            Objects::S3 { client, bucket, .. } => {
                let resp = client
                    .get_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| {
                        if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                            ObjectError::Missing(key.to_owned())
                        } else {
                            ObjectError::Store(crate::error_text::chain(&e))
                        }
                    })?;
                Ok(Box::pin(resp.body.into_async_read()))
            }
            Objects::Dir(root) => match tokio::fs::File::open(root.join(key)).await {
                Ok(f) => Ok(Box::pin(f)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(ObjectError::Missing(key.to_owned()))
                }
                Err(e) => Err(e.into()),
            },
        }
    }

    /// The size of `key`, or `None` when it does not exist (HeadObject).
    pub async fn size(&self, key: &str) -> Result<Option<u64>, ObjectError> {
        match self {
            Objects::S3 { client, bucket, .. } => {
                match client.head_object().bucket(bucket).key(key).send().await {
                    Ok(head) => Ok(Some(head.content_length().unwrap_or(0).max(0) as u64)),
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
                    Err(e) => Err(ObjectError::Store(crate::error_text::chain(&e))),
                }
            }
            Objects::Dir(root) => match tokio::fs::metadata(root.join(key)).await {
                Ok(meta) => Ok(Some(meta.len())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Reads a whole (small) object.
    pub async fn read_all(&self, key: &str, limit: usize) -> Result<Vec<u8>, ObjectError> {
        let mut reader = self.read(key).await?;
        let mut out = Vec::new();
        let mut limited = (&mut reader).take(limit as u64 + 1);
        limited.read_to_end(&mut out).await?;
        if out.len() > limit {
            return Err(ObjectError::Store(format!(
                "object {key} is larger than {limit} bytes"
            )));
        }
        Ok(out)
    }

    /// SHA-256 and size of an object, streamed.
    pub async fn digest(&self, key: &str) -> Result<(String, u64), ObjectError> {
        let mut reader = self.read(key).await?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        Ok((hex::encode(hasher.finalize()), size))
    }

    /// Whether `key` exists and has SHA-256 `sha256` (Conflict if it exists otherwise).
    pub(super) async fn exists_same(&self, key: &str, sha256: &str) -> Result<bool, ObjectError> {
        match self.digest(key).await {
            Ok((sha, _)) if sha == sha256 => Ok(true),
            Ok(_) => Err(ObjectError::Conflict(key.to_owned())),
            Err(ObjectError::Missing(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A short description of where this is (for messages).
    pub fn describe(&self) -> String {
        match self {
            Objects::S3 { bucket, .. } => format!("s3://{bucket}"),
            Objects::Dir(p) => p.display().to_string(),
        }
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<ObjectInfo>) -> Result<(), ObjectError> {
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        let path = item.path();
        let meta = item.metadata()?;
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            let key = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push(ObjectInfo {
                key,
                size: meta.len(),
            });
        }
    }
    Ok(())
}
