//! The shared policy: the object `kernels cluster policy put` writes at
//! `<prefix>/clusters/<id>/policy.yaml`, and the job that applies it.
//!
//! The job reads the object with a conditional GET (`If-None-Match` its
//! last ETag: a 304 costs nothing). A new object is validated as a policy
//! file is; a valid one becomes an ordinary recorded `kernel.policy_update`
//! by `cluster:<id>` — the same ledger call `PUT /v1/policy` makes — with
//! the reason from the object's metadata and the object's SHA-256, ETag,
//! version and revision under the payload's `cluster` key. An invalid one is
//! refused (`policy.rejected` in the status, metric
//! `kernels_cluster_policy_rejected 1`, one warning per object) and the
//! running policy kept, as OPA keeps its last good bundle.
//!
//! Each object is applied once: the ledger remembers the last one applied
//! (its SHA-256 and revision), so a restart does not record it again, and
//! a member given another policy by hand keeps it — reported as drift by
//! `kernels cluster status` — until the next put.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Cluster;
use super::error::ClusterError;
use super::objects::{Condition, ControlPlane, ControlPlaneError, Fetched, Read};
use crate::kernel::Policy;
use crate::kernel::state::ClusterPolicyMark;
use crate::ledger::{Clock, SystemClock};
use crate::metrics::ClusterReadLabels;

/// Metadata key of the reason given to `kernels cluster policy put`.
pub const META_REASON: &str = "reason";
/// Metadata key of the put's revision (unique per put).
pub const META_REVISION: &str = "revision";
/// Metadata key of who put it.
pub const META_BY: &str = "put-by";

/// The shared policy object as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyObject {
    /// SHA-256 of its bytes (hex).
    pub sha256: String,
    /// Its ETag.
    pub etag: Option<String>,
    /// Its version id (versioned buckets).
    pub version_id: Option<String>,
    /// The revision its put gave it.
    pub revision: Option<String>,
    /// The reason its put gave.
    pub reason: Option<String>,
    /// Who put it.
    pub by: Option<String>,
    /// The policy, or why the object is not one.
    pub policy: Result<Policy, String>,
}

impl PolicyObject {
    /// Judges a fetched object.
    pub fn from_fetched(fetched: &Fetched) -> PolicyObject {
        let policy = std::str::from_utf8(&fetched.body)
            .map_err(|_| "the object is not UTF-8 text".to_owned())
            .and_then(|text| Policy::from_yaml(text).map_err(|e| e.to_string()));
        PolicyObject {
            sha256: hex::encode(Sha256::digest(&fetched.body)),
            etag: fetched.etag.clone(),
            version_id: fetched.version_id.clone(),
            revision: fetched.metadata.get(META_REVISION).cloned(),
            reason: fetched.metadata.get(META_REASON).cloned(),
            by: fetched.metadata.get(META_BY).cloned(),
            policy,
        }
    }

    /// Its mark in the ledger's state, once applied.
    pub fn mark(&self) -> ClusterPolicyMark {
        ClusterPolicyMark {
            object_sha256: self.sha256.clone(),
            revision: self.revision.clone(),
        }
    }

    /// What the status (and the recorded payload) say about it.
    pub fn describe(&self, key: &str) -> Value {
        json!({
            "key": key,
            "object_sha256": self.sha256,
            "etag": self.etag,
            "version_id": self.version_id,
            "revision": self.revision,
            "reason": self.reason,
            "put_by": self.by,
            "policy_hash": self.policy.as_ref().ok().map(Policy::hash),
        })
    }
}

/// Writes `text` (already validated) as the shared policy, with `reason`
/// and `by` in its metadata and a fresh revision; answers the revision.
pub async fn put(
    plane: &ControlPlane,
    text: &str,
    reason: &str,
    by: &str,
) -> Result<String, ControlPlaneError> {
    let revision = format!("{}-{:08x}", SystemClock.now_ms(), rand::random::<u32>());
    plane
        .write(
            &plane.policy_key(),
            text.as_bytes().to_vec(),
            "application/yaml",
            Condition::None,
            &[
                (META_REASON, reason),
                (META_REVISION, &revision),
                (META_BY, by),
            ],
        )
        .await?;
    Ok(revision)
}

/// Reads the shared policy object (`None`: there is none).
pub async fn read(plane: &ControlPlane) -> Result<Option<PolicyObject>, ControlPlaneError> {
    Ok(match plane.read(&plane.policy_key(), None).await? {
        Read::Found(found) => Some(PolicyObject::from_fetched(&found)),
        Read::Missing | Read::NotModified => None,
    })
}

/// What the policy job last saw and did.
#[derive(Debug, Default)]
pub(super) struct PolicyState {
    etag: Option<String>,
    object: Option<PolicyObject>,
    read_ms: Option<u64>,
    applied: Option<Value>,
    rejected: Option<Value>,
}

impl PolicyState {
    pub(super) fn to_value(&self) -> Value {
        json!({
            "object": self.object.as_ref().map(|o| o.describe("policy.yaml")),
            "read_ms": self.read_ms,
            "applied": self.applied,
            "rejected": self.rejected,
        })
    }
}

/// The policy job: read the object (conditionally); apply a new valid one.
pub async fn poll(cluster: &Cluster) -> Result<(), ClusterError> {
    let plane = cluster.plane();
    let key = plane.policy_key();
    let etag = Cluster::lock(&cluster.inner.policy).etag.clone();
    let read = plane.read(&key, etag.as_deref()).await;
    let unchanged = matches!(&read, Ok(Read::Found(f)) if f.etag.is_some() && f.etag == etag);
    let result = match &read {
        Ok(Read::NotModified) => "not_modified",
        Ok(Read::Missing) => "missing",
        Ok(Read::Found(_)) if unchanged => "unchanged",
        Ok(Read::Found(_)) => "changed",
        Err(_) => "error",
    };
    let metrics = cluster.ledger().metrics().clone();
    metrics
        .cluster_reads
        .get_or_create(&ClusterReadLabels {
            object: "policy".into(),
            result: result.into(),
        })
        .inc();
    let object = match read? {
        // The object we already judged: nothing to do.
        Read::NotModified => return Ok(()),
        Read::Found(_) if unchanged => return Ok(()),
        Read::Missing => {
            // No shared policy (yet): every member keeps its own.
            let mut state = Cluster::lock(&cluster.inner.policy);
            state.etag = None;
            state.object = None;
            state.rejected = None;
            state.read_ms = Some(SystemClock.now_ms());
            metrics.cluster_policy_rejected.set(0);
            return Ok(());
        }
        Read::Found(fetched) => PolicyObject::from_fetched(&fetched),
    };
    let now = SystemClock.now_ms();
    {
        // The ETag is kept only once the object is judged (below), so that
        // a failure to record it has it read and judged again.
        let mut state = Cluster::lock(&cluster.inner.policy);
        state.object = Some(object.clone());
        state.read_ms = Some(now);
    }
    let policy = match &object.policy {
        Ok(policy) => policy.clone(),
        Err(problem) => {
            tracing::warn!(cluster = %cluster.id(), key = %key, object_sha256 = %object.sha256, error = %problem, "the shared policy object is invalid; the running policy is kept");
            metrics.cluster_policy_rejected.set(1);
            let mut state = Cluster::lock(&cluster.inner.policy);
            state.rejected = Some(json!({
                "object_sha256": object.sha256,
                "etag": object.etag,
                "revision": object.revision,
                "error": problem,
                "at_ms": now,
            }));
            state.etag = object.etag.clone();
            return Ok(());
        }
    };
    metrics.cluster_policy_rejected.set(0);
    Cluster::lock(&cluster.inner.policy).rejected = None;
    let mark = object.mark();
    if cluster.ledger().state().cluster_policy.as_ref() == Some(&mark) {
        // Recorded before (e.g. before a restart): not again.
        Cluster::lock(&cluster.inner.policy).etag = object.etag.clone();
        return Ok(());
    }
    let reason = object
        .reason
        .clone()
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| "the cluster's shared policy object changed".into());
    let mut detail = object.describe(&key);
    if let Some(map) = detail.as_object_mut() {
        map.remove("policy_hash");
        map.remove("reason");
    }
    // The same ledger call as PUT /v1/policy: an operational event built
    // from the current state under the ledger's lock.
    let entry = cluster
        .ledger()
        .event(|state, now| state.cluster_policy_event(now, cluster.id(), &policy, &reason, detail))
        .await?;
    metrics.cluster_policy_updates.inc();
    tracing::info!(cluster = %cluster.id(), seq = entry.ledger_seq, policy_hash = %policy.hash(), object_sha256 = %object.sha256, "shared policy applied");
    let mut state = Cluster::lock(&cluster.inner.policy);
    state.applied = Some(json!({
        "object_sha256": object.sha256,
        "revision": object.revision,
        "policy_hash": policy.hash(),
        "ledger_seq": entry.ledger_seq,
        "at_ms": entry.ts_ms,
    }));
    state.etag = object.etag.clone();
    Ok(())
}
