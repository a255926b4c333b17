//! The cluster halt flag: the object `kernels cluster halt` writes and
//! `kernels cluster recover` clears, and the job that makes each member
//! obey it on its own.
//!
//! While the flag says halted, a member that is not halted halts — a
//! recorded HALT by `cluster:<id>` with the flag's reason — within one
//! poll, whether or not the operator's direct call reached it, and a member
//! that starts while it is set starts halted. When the flag is cleared
//! (`halted: false`, or the object is gone), a member whose last halt was
//! the cluster's recovers (`kernel.recover` by `cluster:<id>`); a member
//! halted by its own operator stays halted. An object that exists but does
//! not parse counts as a halt: the safe reading of a damaged flag.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Cluster;
use super::error::ClusterError;
use super::objects::{Condition, ControlPlane, ControlPlaneError, Read};
use crate::kernel::EventError;
use crate::ledger::{Clock, LedgerError, SystemClock};
use crate::metrics::ClusterReadLabels;

/// The halt flag object (`<prefix>/clusters/<id>/halt.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaltFlag {
    /// Whether the cluster is halted.
    pub halted: bool,
    /// Why it was halted (or recovered).
    pub reason: String,
    /// Who wrote it, as the operator's command knew them.
    pub by: Option<String>,
    /// When it was written (unix ms).
    pub at_ms: u64,
}

impl HaltFlag {
    /// Parses the object's bytes; anything else is a halt (see the module doc).
    pub fn parse(bytes: &[u8]) -> HaltFlag {
        serde_json::from_slice(bytes).unwrap_or_else(|e| HaltFlag {
            halted: true,
            reason: format!("the cluster halt flag object is unreadable ({e}); halted to be safe"),
            by: None,
            at_ms: 0,
        })
    }
}

/// Writes the halt flag (halted or cleared).
pub async fn write(plane: &ControlPlane, flag: &HaltFlag) -> Result<(), ControlPlaneError> {
    let mut body = serde_json::to_vec_pretty(flag).expect("a flag serializes");
    body.push(b'\n');
    plane
        .write(
            &plane.halt_key(),
            body,
            "application/json",
            Condition::None,
            &[],
        )
        .await
        .map(|_| ())
}

/// Reads the halt flag (`None`: no flag object).
pub async fn read(plane: &ControlPlane) -> Result<Option<HaltFlag>, ControlPlaneError> {
    Ok(match plane.read(&plane.halt_key(), None).await? {
        Read::Found(found) => Some(HaltFlag::parse(&found.body)),
        Read::Missing | Read::NotModified => None,
    })
}

/// What the halt job last saw and did.
#[derive(Debug, Default)]
pub(super) struct HaltState {
    etag: Option<String>,
    flag: Option<HaltFlag>,
    read_ms: Option<u64>,
    last_action: Option<Value>,
}

impl HaltState {
    pub(super) fn to_value(&self) -> Value {
        json!({
            "flag": self.flag,
            "read_ms": self.read_ms,
            "last_action": self.last_action,
        })
    }
}

/// The halt job: read the flag (conditionally), then obey it.
pub async fn poll(cluster: &Cluster) -> Result<(), ClusterError> {
    let plane = cluster.plane();
    let etag = Cluster::lock(&cluster.inner.halt).etag.clone();
    let before = Seen::now(cluster);
    let read = plane.read(&plane.halt_key(), etag.as_deref()).await;
    let result = match &read {
        Ok(Read::NotModified) => "not_modified",
        Ok(Read::Missing) => "missing",
        Ok(Read::Found(f)) if f.etag.is_some() && f.etag == etag => "unchanged",
        Ok(Read::Found(_)) => "changed",
        Err(_) => "error",
    };
    cluster
        .ledger()
        .metrics()
        .cluster_reads
        .get_or_create(&ClusterReadLabels {
            object: "halt_flag".into(),
            result: result.into(),
        })
        .inc();
    let flag = {
        let mut state = Cluster::lock(&cluster.inner.halt);
        match read? {
            Read::NotModified => {}
            Read::Missing => {
                state.flag = None;
                state.etag = None;
            }
            Read::Found(found) => {
                state.flag = Some(HaltFlag::parse(&found.body));
                state.etag = found.etag;
            }
        }
        state.read_ms = Some(SystemClock.now_ms());
        state.flag.clone()
    };
    obey(cluster, flag.as_ref(), before).await
}

/// The halts and recoveries the ledger had recorded when a read of the
/// flag began: a halt or recovery recorded after it (an operator's direct
/// call racing the read) is newer than what the read saw, so the read must
/// not undo it; the next poll reads the flag again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The session (one more per recovery).
    pub session: u64,
    /// Seq of the last HALT.
    pub halt_seq: Option<u64>,
}

impl Seen {
    fn now(cluster: &Cluster) -> Seen {
        let state = cluster.ledger().state();
        Seen {
            session: state.session,
            halt_seq: state.last_halt.as_ref().map(|h| h.seq),
        }
    }
}

/// Halts or recovers this member as the flag says (see the module doc),
/// unless the ledger changed since `before` (see [`Seen`]).
async fn obey(
    cluster: &Cluster,
    flag: Option<&HaltFlag>,
    before: Seen,
) -> Result<(), ClusterError> {
    let actor = cluster.actor();
    let state = cluster.ledger().state();
    let action = match flag {
        Some(flag) if flag.halted => {
            if state.is_halted() || state.session != before.session {
                return Ok(());
            }
            match cluster.ledger().halt(&actor, &flag.reason).await {
                Ok((entry, _)) => {
                    tracing::warn!(cluster = %cluster.id(), seq = entry.ledger_seq, reason = %flag.reason, "halted by the cluster halt flag");
                    json!({"action": "halt", "ledger_seq": entry.ledger_seq, "reason": flag.reason})
                }
                // Halted meanwhile (the operator's direct call): obeyed.
                Err(LedgerError::Event(EventError::AlreadyHalted)) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        _ => {
            let by_cluster = state
                .last_halt
                .as_ref()
                .is_some_and(|h| h.actor.as_str() == actor);
            let halted_since = state.last_halt.as_ref().map(|h| h.seq) != before.halt_seq;
            if !state.is_halted() || !by_cluster || halted_since {
                return Ok(());
            }
            let reason = flag
                .map(|f| f.reason.clone())
                .unwrap_or_else(|| "the cluster halt flag was removed".into());
            match cluster.ledger().recover(&actor, &reason).await {
                Ok(entry) => {
                    tracing::info!(cluster = %cluster.id(), seq = entry.ledger_seq, "recovered: the cluster halt flag is cleared");
                    json!({"action": "recover", "ledger_seq": entry.ledger_seq, "reason": reason})
                }
                // Recovered meanwhile (the operator's direct call).
                Err(LedgerError::Event(EventError::NotHalted)) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    };
    Cluster::lock(&cluster.inner.halt).last_action = Some(action);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cluster::Identity;
    use crate::config::ClusterConfig;
    use crate::kernel::{Policy, Variant};
    use crate::ledger::{Ledger, LedgerOptions};
    use crate::store::memory::MemoryStore;

    /// A member over an in-memory ledger; its control plane is never
    /// called (`obey` does no I/O).
    fn member() -> Cluster {
        let policy = Policy::from_yaml("allowed_actors: [a]\n").unwrap();
        let ledger = Ledger::open(
            MemoryStore::new(),
            LedgerOptions::service("prod-001", Variant::Strict, policy),
            Arc::new(SystemClock),
            Arc::new(crate::metrics::Metrics::new()),
        )
        .unwrap();
        let config = ClusterConfig {
            id: "prod".into(),
            instance: Some(1),
            bucket: "b".into(),
            prefix: "p".into(),
            region: "us-east-1".into(),
            endpoint: None,
            force_path_style: true,
            poll_interval: std::time::Duration::from_millis(100),
            advertise_url: None,
            peer_token: None,
        };
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::Config::builder()
                .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                .region(aws_sdk_s3::config::Region::new("us-east-1"))
                .build(),
        );
        let plane =
            ControlPlane::with_client(s3, "b", "p", "prod", std::time::Duration::from_secs(1));
        let identity = Identity {
            kernel_id: "prod-001".into(),
            instance: 1,
            advertise_url: "http://127.0.0.1:1".into(),
            verifier_key: None,
            witness_key: None,
        };
        Cluster::new(config, identity, plane, ledger)
    }

    fn flag(halted: bool) -> HaltFlag {
        HaltFlag {
            halted,
            reason: "incident 7".into(),
            by: None,
            at_ms: 1,
        }
    }

    #[tokio::test]
    async fn a_flag_read_before_a_direct_call_does_not_undo_it() {
        let c = member();
        // The poll read "no flag"; then the operator's halt arrived directly.
        let before = Seen::now(&c);
        c.ledger().halt("cluster:prod", "incident 7").await.unwrap();
        obey(&c, None, before).await.unwrap();
        assert!(
            c.ledger().state().is_halted(),
            "an older read must not recover"
        );
        // A read made after the halt does recover.
        obey(&c, None, Seen::now(&c)).await.unwrap();
        assert!(!c.ledger().state().is_halted());

        // The poll read "halted"; then the operator's recovery arrived directly.
        c.ledger().halt("cluster:prod", "incident 8").await.unwrap();
        let before = Seen::now(&c);
        c.ledger().recover("cluster:prod", "fixed").await.unwrap();
        obey(&c, Some(&flag(true)), before).await.unwrap();
        assert!(
            !c.ledger().state().is_halted(),
            "an older read must not halt again"
        );
        obey(&c, Some(&flag(true)), Seen::now(&c)).await.unwrap();
        assert!(c.ledger().state().is_halted());
        assert_eq!(c.ledger().state().last_halt.unwrap().actor, "cluster:prod");
    }

    #[tokio::test]
    async fn a_halt_by_the_members_own_operator_is_not_the_clusters_to_undo() {
        let c = member();
        c.ledger().halt("ops", "local investigation").await.unwrap();
        obey(&c, Some(&flag(false)), Seen::now(&c)).await.unwrap();
        obey(&c, None, Seen::now(&c)).await.unwrap();
        assert!(c.ledger().state().is_halted());
        assert_eq!(c.ledger().state().last_halt.unwrap().actor, "ops");
    }

    #[test]
    fn a_damaged_flag_reads_as_a_halt() {
        let flag = HaltFlag {
            halted: false,
            reason: "fixed".into(),
            by: Some("ops".into()),
            at_ms: 5,
        };
        assert_eq!(HaltFlag::parse(&serde_json::to_vec(&flag).unwrap()), flag);
        for bytes in [
            &b"{\"halted\": fals"[..],
            b"",
            b"[]",
            b"{\"reason\": \"x\"}",
        ] {
            let read = HaltFlag::parse(bytes);
            assert!(read.halted, "{:?}", String::from_utf8_lossy(bytes));
            assert!(read.reason.contains("unreadable"), "{}", read.reason);
        }
    }
}
