//! Member objects: the record each instance keeps at
//! `<prefix>/clusters/<id>/members/<kernel_id>.json`, how an instance
//! claims its name, and how the member list is read.
//!
//! A member name belongs to one ledger: the record carries the hash of the
//! ledger's first entry (`ledger_genesis`). A start writes the record only
//! where the key is free (`If-None-Match: *`) or over a record of the same
//! ledger (`If-Match` its ETag: a restart refreshing its own record). A
//! record of another ledger means a second instance with the same number,
//! and that start is refused. (Two processes on one ledger cannot run: the
//! data dir is locked.)
//!
//! The record is open for what peer witnessing will add (the member's
//! latest signed checkpoint, its witnesses): unknown fields are ignored
//! when read, so members of different versions share one cluster, and a
//! new field is an `Option` with a serde default.

use serde::{Deserialize, Serialize};

use super::error::ClusterError;
use super::objects::{Condition, ControlPlane, ControlPlaneError, Read};

/// The record of one member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Cluster id.
    pub cluster_id: String,
    /// The member's kernel id (`<cluster id>-<NNN>`).
    pub kernel_id: String,
    /// Its instance number.
    pub instance: u32,
    /// The URL it is reached at (by the CLI and the load balancer).
    pub advertise_url: String,
    /// Its checkpoint verifier key (C2SP note format): the key its signed
    /// checkpoints (`GET /v1/checkpoint`) verify with.
    pub verifier_key: Option<String>,
    /// Its witness key (`cosignature/v1`, C2SP note format): the key of the
    /// cosignatures it adds to its peers' checkpoints.
    #[serde(default)]
    pub witness_key: Option<String>,
    /// When this instance started (unix ms).
    pub started_at: u64,
    /// `entry_hash` of its ledger's first entry: which ledger holds this name.
    pub ledger_genesis: String,
    /// The kernels version it runs.
    pub software_version: String,
}

impl MemberRecord {
    /// The record's bytes as stored (pretty JSON, for people reading the bucket).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a member record serializes");
        bytes.push(b'\n');
        bytes
    }

    /// Parses a stored record.
    pub fn parse(key: &str, bytes: &[u8]) -> Result<MemberRecord, ClusterError> {
        serde_json::from_slice(bytes).map_err(|e| ClusterError::BadObject {
            key: key.to_owned(),
            problem: format!("not a member record: {e}"),
        })
    }
}

/// What a claim did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// The name was free: the record was created.
    Created,
    /// The record was this ledger's: it was refreshed.
    Refreshed,
}

/// Writes `record` as its member object, unless another ledger holds the name.
pub async fn claim(plane: &ControlPlane, record: &MemberRecord) -> Result<Claimed, ClusterError> {
    let key = plane.member_key(&record.kernel_id);
    // A conditional write that loses a race is read and judged again.
    for _ in 0..3 {
        let attempt = match plane.read(&key, None).await? {
            Read::Missing => plane
                .write(
                    &key,
                    record.to_bytes(),
                    "application/json",
                    Condition::Absent,
                    &[],
                )
                .await
                .map(|_| Claimed::Created),
            Read::Found(found) => {
                let other = MemberRecord::parse(&key, &found.body)?;
                if other.ledger_genesis != record.ledger_genesis {
                    return Err(ClusterError::MemberClaimed {
                        cluster_id: record.cluster_id.clone(),
                        kernel_id: record.kernel_id.clone(),
                        other_url: other.advertise_url,
                        other_started_at: other.started_at,
                        other_genesis: other.ledger_genesis,
                    });
                }
                let condition = match &found.etag {
                    Some(tag) => Condition::Matches(tag),
                    None => Condition::None,
                };
                plane
                    .write(&key, record.to_bytes(), "application/json", condition, &[])
                    .await
                    .map(|_| Claimed::Refreshed)
            }
            Read::NotModified => Err(ControlPlaneError::Store(format!(
                "{key}: the store answered 304 to an unconditional read"
            ))),
        };
        match attempt {
            Err(ControlPlaneError::Precondition(_)) => continue,
            other => return Ok(other?),
        }
    }
    Err(ControlPlaneError::Store(format!(
        "{key}: the member object kept changing while it was claimed"
    ))
    .into())
}

/// One entry of the member list: a record, or why its object is unusable.
pub type Listed = Result<MemberRecord, ClusterError>;

/// Every member object of the cluster, in key order.
pub async fn list(plane: &ControlPlane) -> Result<Vec<Listed>, ControlPlaneError> {
    let mut out = Vec::new();
    for key in plane.list(&plane.members_prefix()).await? {
        if !key.ends_with(".json") {
            continue;
        }
        out.push(match plane.read(&key, None).await? {
            Read::Found(found) => MemberRecord::parse(&key, &found.body),
            // Removed between the listing and the read: not a member any more.
            Read::Missing | Read::NotModified => continue,
        });
    }
    Ok(out)
}

/// Removes the member object of `kernel_id`.
pub async fn remove(plane: &ControlPlane, kernel_id: &str) -> Result<String, ControlPlaneError> {
    let key = plane.member_key(kernel_id);
    plane.delete(&key).await?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_a_bad_one_is_named() {
        let record = MemberRecord {
            cluster_id: "prod".into(),
            kernel_id: "prod-002".into(),
            instance: 2,
            advertise_url: "http://10.0.0.2:8080".into(),
            verifier_key: None,
            witness_key: None,
            started_at: 1_700_000_000_000,
            ledger_genesis: "ab".repeat(32),
            software_version: "0.1.0".into(),
        };
        let bytes = record.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"verifier_key\": null"), "{text}");
        assert_eq!(MemberRecord::parse("k", &bytes).unwrap(), record);
        let e = MemberRecord::parse("clusters/prod/members/x.json", b"{\"kernel_id\": 1}")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("clusters/prod/members/x.json: not a member record"),
            "{e}"
        );
    }

    #[test]
    fn a_record_of_a_newer_member_is_read() {
        let newer = br#"{"cluster_id": "prod", "kernel_id": "prod-003", "instance": 3,
            "advertise_url": "http://10.0.0.3:8080", "verifier_key": "kernels/prod-003+0a1b2c3d+AQ",
            "started_at": 1, "ledger_genesis": "00", "software_version": "0.2.0",
            "checkpoint": "kernels/prod-003\n12\nAAAA\n", "witnesses": []}"#;
        let r = MemberRecord::parse("k", newer).unwrap();
        assert_eq!(r.kernel_id, "prod-003");
        assert_eq!(
            r.verifier_key.as_deref(),
            Some("kernels/prod-003+0a1b2c3d+AQ")
        );
    }
}
