//! The control plane's objects in S3: where each one lives under
//! `<prefix>/clusters/<id>/`, and the few operations on them — a
//! conditional read (ETag → 304), conditional writes (`If-None-Match: *`,
//! `If-Match`), delete and list.
//!
//! Layout (README.md, "A cluster of kernels"):
//!
//! ```text
//! <prefix>/clusters/<id>/members/<kernel_id>.json   one per member
//! <prefix>/clusters/<id>/policy.yaml                the shared policy
//! <prefix>/clusters/<id>/halt.json                  the halt flag (absent = not halted)
//! ```
//!
//! Every operation is bounded by a timeout, so a hung store delays a
//! poll, never the worker's shutdown or a decision. Metadata values (the
//! reason of a policy put, who halted) are percent-encoded: S3 carries
//! them in HTTP headers, which only take ASCII.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;

use crate::config::ClusterConfig;
use crate::error_text;
use crate::rotator::objects::{Objects, S3Settings};

/// Largest control-plane object read (a policy or a member record).
pub const MAX_OBJECT_BYTES: usize = 1024 * 1024;

/// Why a control-plane operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlPlaneError {
    /// The store could not be reached, timed out or answered an error;
    /// the caller keeps what it has and tries again at the next poll.
    #[error("control plane {0}")]
    Store(String),
    /// A conditional write found the key taken (or changed since read).
    #[error("{0} already exists or was changed meanwhile")]
    Precondition(String),
    /// The object is larger than [`MAX_OBJECT_BYTES`].
    #[error("{0} is larger than {MAX_OBJECT_BYTES} bytes")]
    TooLarge(String),
}

/// An object as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Its bytes.
    pub body: Vec<u8>,
    /// Its ETag (quotes kept, as the store sent it).
    pub etag: Option<String>,
    /// Its version id, on a versioned bucket.
    pub version_id: Option<String>,
    /// Its user metadata, decoded.
    pub metadata: HashMap<String, String>,
}

/// What a conditional read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The object has the ETag asked about (304).
    NotModified,
    /// No such object.
    Missing,
    /// The object (new, or the store ignored the condition).
    Found(Fetched),
}

/// The condition of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition<'a> {
    /// Write whatever is there.
    None,
    /// Only where the key is free (`If-None-Match: *`).
    Absent,
    /// Only over the object with this ETag (`If-Match`).
    Matches(&'a str),
}

/// A cluster's control plane: one bucket and the cluster's key prefix.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    client: Client,
    bucket: String,
    root: String,
    timeout: Duration,
}

impl ControlPlane {
    /// A client of the control plane of `cluster` (standard AWS credential
    /// chain), each operation bounded by `timeout`.
    pub async fn connect(cluster: &ClusterConfig, timeout: Duration) -> ControlPlane {
        let objects = Objects::s3(&S3Settings {
            bucket: cluster.bucket.clone(),
            region: cluster.region.clone(),
            endpoint: cluster.endpoint.clone(),
            force_path_style: cluster.force_path_style,
            credentials: None,
            object_lock: None,
        })
        .await;
        let Objects::S3 { client, .. } = objects else {
            unreachable!("Objects::s3 makes an S3 client")
        };
        ControlPlane::with_client(
            client,
            &cluster.bucket,
            &cluster.prefix,
            &cluster.id,
            timeout,
        )
    }

    /// A control plane over an existing client (tests, custom clients).
    pub fn with_client(
        client: Client,
        bucket: &str,
        prefix: &str,
        cluster_id: &str,
        timeout: Duration,
    ) -> ControlPlane {
        let prefix = prefix.trim_matches('/');
        let root = if prefix.is_empty() {
            format!("clusters/{cluster_id}/")
        } else {
            format!("{prefix}/clusters/{cluster_id}/")
        };
        ControlPlane {
            client,
            bucket: bucket.to_owned(),
            root,
            timeout,
        }
    }

    /// The key prefix of the member objects.
    pub fn members_prefix(&self) -> String {
        format!("{}members/", self.root)
    }

    /// The member object of `kernel_id`.
    pub fn member_key(&self, kernel_id: &str) -> String {
        format!("{}{kernel_id}.json", self.members_prefix())
    }

    /// The shared policy object.
    pub fn policy_key(&self) -> String {
        format!("{}policy.yaml", self.root)
    }

    /// The halt flag object.
    pub fn halt_key(&self) -> String {
        format!("{}halt.json", self.root)
    }

    /// `s3://bucket/<prefix>/clusters/<id>/`, for messages.
    pub fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.root)
    }

    async fn bounded<T>(
        &self,
        what: &str,
        op: impl Future<Output = Result<T, ControlPlaneError>>,
    ) -> Result<T, ControlPlaneError> {
        tokio::time::timeout(self.timeout, op)
            .await
            .unwrap_or_else(|_| {
                Err(ControlPlaneError::Store(format!(
                    "{}: {what} did not answer within {:?}",
                    self.describe(),
                    self.timeout
                )))
            })
    }

    fn failed(&self, what: &str, detail: String) -> ControlPlaneError {
        ControlPlaneError::Store(format!("{}: {what}: {detail}", self.describe()))
    }

    /// Reads `key`; with `etag`, only when it no longer has that ETag
    /// (a store that ignores `If-None-Match` sends the object anyway).
    pub async fn read(&self, key: &str, etag: Option<&str>) -> Result<Read, ControlPlaneError> {
        self.bounded("a read", async {
            let mut get = self.client.get_object().bucket(&self.bucket).key(key);
            if let Some(tag) = etag {
                get = get.if_none_match(tag);
            }
            let out = match get.send().await {
                Ok(out) => out,
                Err(e) => {
                    let status = e.raw_response().map(|r| r.status().as_u16());
                    if status == Some(304) {
                        return Ok(Read::NotModified);
                    }
                    if status == Some(404)
                        || e.as_service_error().is_some_and(|s| s.is_no_such_key())
                    {
                        return Ok(Read::Missing);
                    }
                    return Err(self.failed(&format!("reading {key}"), error_text::chain(&e)));
                }
            };
            let etag = out.e_tag().map(str::to_owned);
            let version_id = out.version_id().map(str::to_owned);
            let metadata = out
                .metadata()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), unescape(v)))
                        .collect()
                })
                .unwrap_or_default();
            let declared = out.content_length().unwrap_or(0).max(0) as usize;
            if declared > MAX_OBJECT_BYTES {
                return Err(ControlPlaneError::TooLarge(key.to_owned()));
            }
            let body = out
                .body
                .collect()
                .await
                .map_err(|e| self.failed(&format!("reading {key}"), e.to_string()))?
                .into_bytes();
            if body.len() > MAX_OBJECT_BYTES {
                return Err(ControlPlaneError::TooLarge(key.to_owned()));
            }
            Ok(Read::Found(Fetched {
                body: body.to_vec(),
                etag,
                version_id,
                metadata,
            }))
        })
        .await
    }

    /// Writes `body` as `key` under `condition`, with user `metadata`
    /// (percent-encoded); answers the new object's ETag.
    pub async fn write(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        condition: Condition<'_>,
        metadata: &[(&str, &str)],
    ) -> Result<Option<String>, ControlPlaneError> {
        self.bounded("a write", async {
            let mut put = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_type(content_type)
                .body(ByteStream::from(body));
            put = match condition {
                Condition::None => put,
                Condition::Absent => put.if_none_match("*"),
                Condition::Matches(tag) => put.if_match(tag),
            };
            for (k, v) in metadata {
                put = put.metadata(*k, escape(v));
            }
            match put.send().await {
                Ok(out) => Ok(out.e_tag().map(str::to_owned)),
                Err(e)
                    if matches!(
                        e.raw_response().map(|r| r.status().as_u16()),
                        Some(412) | Some(409)
                    ) =>
                {
                    Err(ControlPlaneError::Precondition(key.to_owned()))
                }
                Err(e) => Err(self.failed(&format!("writing {key}"), error_text::chain(&e))),
            }
        })
        .await
    }

    /// Deletes `key` (a missing key is not an error: S3 answers the same).
    pub async fn delete(&self, key: &str) -> Result<(), ControlPlaneError> {
        self.bounded("a delete", async {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| self.failed(&format!("deleting {key}"), error_text::chain(&e)))
        })
        .await
    }

    /// The keys under `prefix`, in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, ControlPlaneError> {
        self.bounded("a listing", async {
            let mut keys = Vec::new();
            let mut token = None;
            loop {
                let resp = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(prefix)
                    .set_continuation_token(token)
                    .send()
                    .await
                    .map_err(|e| {
                        self.failed(&format!("listing {prefix}"), error_text::chain(&e))
                    })?;
                keys.extend(
                    resp.contents()
                        .iter()
                        .filter_map(|o| o.key())
                        .map(str::to_owned),
                );
                match resp.next_continuation_token() {
                    Some(t) if resp.is_truncated().unwrap_or(false) => token = Some(t.to_owned()),
                    _ => break,
                }
            }
            keys.sort();
            Ok(keys)
        })
        .await
    }
}

/// Everything but the unreserved ASCII of RFC 3986 is percent-encoded.
const METADATA: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes everything but unreserved ASCII (RFC 3986), so that
/// any text fits in an S3 metadata header.
pub fn escape(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, METADATA).to_string()
}

/// Reverses [`escape`]; text that is not valid percent-encoded UTF-8
/// (metadata written by another tool) is kept as it is.
pub fn unescape(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|t| t.into_owned())
        .unwrap_or_else(|_| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_text_survives_the_header_round_trip() {
        for text in [
            "CHG-118: tighten tools",
            "reason with ünïcödé and 🙂",
            "100% sure / a=b&c",
            "",
        ] {
            let escaped = escape(text);
            assert!(escaped.bytes().all(|b| b.is_ascii_graphic()), "{escaped}");
            assert_eq!(unescape(&escaped), text);
        }
        // Written by another tool: kept as it is.
        assert_eq!(unescape("plain words"), "plain words");
        assert_eq!(unescape("50%"), "50%");
        assert_eq!(unescape("%ZZ"), "%ZZ");
    }
}
