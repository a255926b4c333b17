//! A cluster of kernels: instances that each keep their own ledger, chain
//! and key, and share a control plane in S3 (README.md, "A cluster of
//! kernels").
//!
//! The cluster is workers, not a new service. At start an instance claims
//! its member object and records `kernel.cluster_join` (first start) or
//! refreshes it ([`join`]); then one worker ([`worker`]) polls the control
//! plane every `cluster.poll_interval` and runs its jobs in turn — the halt
//! flag ([`halt`]), the shared policy ([`policy`]) and peer witnessing
//! ([`witness`]) — each of which turns
//! what it learns into ordinary recorded entries through the same ledger
//! calls an operator's HTTP request uses. The control plane being down never
//! stops a decision: the instance keeps its last recorded policy and says
//! that the control plane is unreachable (status, metrics).
//!
//! * [`objects`] — the control plane's objects in S3 and the conditional
//!   reads and writes on them
//! * [`member`] — member objects: the record, claiming a name, the list
//! * [`join`] — what a start does: claim, record the join, first poll
//! * [`worker`] — the poll loop and its jobs; control-plane reachability
//! * [`halt`] — the cluster halt flag and the job that obeys it
//! * [`policy`] — the shared policy object and the job that applies it
//! * [`witness`] — peer witnessing: the job that cosigns peers'
//!   checkpoints, and adding the cosignatures peers deliver
//! * [`status`] — `kernels cluster status`: every member, drift, health
//! * [`haproxy`] — a load balancer configuration for the members
//! * [`error`] — the layer's error

pub mod error;
pub mod halt;
pub mod haproxy;
pub mod join;
pub mod member;
pub mod objects;
pub mod policy;
pub mod status;
pub mod witness;
pub mod worker;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};

pub use error::ClusterError;
use objects::ControlPlane;

use crate::config::ClusterConfig;
use crate::kernel::events::cluster_actor;
use crate::ledger::Ledger;

/// Who this instance is in its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its kernel id (`<cluster id>-<NNN>`).
    pub kernel_id: String,
    /// Its instance number.
    pub instance: u32,
    /// The URL it is reached at.
    pub advertise_url: String,
    /// Its checkpoint verifier key, when it has one.
    pub verifier_key: Option<String>,
    /// Its witness key (cosignatures of its peers' checkpoints), when it has one.
    pub witness_key: Option<String>,
}

struct Inner {
    config: ClusterConfig,
    identity: Identity,
    plane: ControlPlane,
    ledger: Ledger,
    /// Whether this instance is a member (cleared by a leave).
    member: AtomicBool,
    member_key: String,
    /// The member record still to be written (a start that could not).
    claim: Mutex<Option<member::MemberRecord>>,
    worker: Mutex<worker::WorkerState>,
    halt: Mutex<halt::HaltState>,
    policy: Mutex<policy::PolicyState>,
    witness: Mutex<witness::WitnessState>,
    /// Wakes the worker for an immediate poll.
    wake: tokio::sync::Notify,
    stopped: tokio::sync::Notify,
    done: AtomicBool,
}

/// Handle on this instance's membership and its worker: a cheap clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.inner.config.id)
            .field("kernel_id", &self.inner.identity.kernel_id)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// A handle for `identity` in the cluster of `config` over `plane`; no
    /// I/O (see [`join::join`] for what a start does with it).
    pub fn new(
        config: ClusterConfig,
        identity: Identity,
        plane: ControlPlane,
        ledger: Ledger,
    ) -> Cluster {
        let member_key = plane.member_key(&identity.kernel_id);
        Cluster {
            inner: Arc::new(Inner {
                config,
                identity,
                plane,
                ledger,
                member: AtomicBool::new(false),
                member_key,
                claim: Mutex::new(None),
                worker: Mutex::new(worker::WorkerState::default()),
                halt: Mutex::new(halt::HaltState::default()),
                policy: Mutex::new(policy::PolicyState::default()),
                witness: Mutex::new(witness::WitnessState::default()),
                wake: tokio::sync::Notify::new(),
                stopped: tokio::sync::Notify::new(),
                done: AtomicBool::new(false),
            }),
        }
    }

    /// The cluster id.
    pub fn id(&self) -> &str {
        &self.inner.config.id
    }

    /// The cluster settings.
    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// Who this instance is.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// The control plane.
    pub fn plane(&self) -> &ControlPlane {
        &self.inner.plane
    }

    /// The ledger the cluster's decisions are recorded in.
    pub fn ledger(&self) -> &Ledger {
        &self.inner.ledger
    }

    /// `cluster:<id>`: the actor of what the control plane does here.
    pub fn actor(&self) -> String {
        cluster_actor(&self.inner.config.id)
    }

    /// Whether this instance is a member (it joined and did not leave).
    pub fn is_member(&self) -> bool {
        self.inner.member.load(Ordering::Acquire)
    }

    fn set_member(&self, member: bool) {
        self.inner.member.store(member, Ordering::Release);
    }

    fn lock<'a, T>(m: &'a Mutex<T>) -> MutexGuard<'a, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leaves the cluster on behalf of `actor`: removes the member object,
    /// then records `kernel.cluster_leave`; the worker stops acting on the
    /// control plane. Nothing is recorded when the object cannot be removed.
    pub async fn leave(&self, actor: &str, reason: &str) -> Result<Value, ClusterError> {
        if !self.is_member() {
            return Err(ClusterError::NotMember(format!(
                "{} is not a member of cluster {}",
                self.inner.identity.kernel_id,
                self.id()
            )));
        }
        if reason.trim().is_empty() {
            return Err(ClusterError::Settings(
                "a non-empty reason is required".into(),
            ));
        }
        let key = member::remove(&self.inner.plane, &self.inner.identity.kernel_id).await?;
        let entry = self
            .inner
            .ledger
            .event(|state, now| {
                state.cluster_leave_event(
                    now,
                    actor,
                    reason,
                    json!({
                        "kernel_id": self.inner.identity.kernel_id,
                        "member_key": key,
                    }),
                )
            })
            .await?;
        self.set_member(false);
        tracing::info!(cluster = %self.id(), seq = entry.ledger_seq, "left the cluster");
        Ok(json!({
            "cluster_id": self.id(),
            "kernel_id": self.inner.identity.kernel_id,
            "member_key": key,
            "ledger_seq": entry.ledger_seq,
            "entry_hash": entry.entry_hash,
        }))
    }

    /// What `GET /v1/status` says under `cluster`: membership, the control
    /// plane's reachability, the halt flag and the shared policy as seen.
    pub fn status(&self) -> Value {
        let id = &self.inner.identity;
        json!({
            "id": self.id(),
            "kernel_id": id.kernel_id,
            "instance": id.instance,
            "member": self.is_member(),
            "member_key": self.inner.member_key,
            "advertise_url": id.advertise_url,
            "verifier_key": id.verifier_key,
            "witness_key": id.witness_key,
            "poll_interval_ms": self.inner.config.poll_interval.as_millis() as u64,
            "member_object_pending": Self::lock(&self.inner.claim).is_some(),
            "control_plane": Self::lock(&self.inner.worker).to_value(&self.inner.plane),
            "halt_flag": Self::lock(&self.inner.halt).to_value(),
            "policy": Self::lock(&self.inner.policy).to_value(),
            "witness": Self::lock(&self.inner.witness)
                .to_value(self.inner.config.peer_token.is_some() && id.witness_key.is_some()),
        })
    }

    /// Waits until the worker has stopped (after shutdown was signalled).
    pub async fn stopped(&self) {
        let notified = self.inner.stopped.notified();
        if self.inner.done.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

/// What the HTTP service needs of the cluster (`POST /v1/cluster/leave`,
/// the `cluster` field of `POST /v1/halt` and `/v1/recover`, the status).
impl crate::service::ClusterControl for Cluster {
    fn cluster_id(&self) -> &str {
        self.id()
    }

    fn status(&self) -> Value {
        Cluster::status(self)
    }

    fn leave(
        &self,
        actor: String,
        reason: String,
    ) -> Pin<Box<dyn Future<Output = Result<Value, ClusterError>> + Send + '_>> {
        Box::pin(async move { Cluster::leave(self, &actor, &reason).await })
    }

    fn add_cosignature(&self, witness_key: &str, checkpoint: &str) -> Result<Value, ClusterError> {
        witness::accept(self, witness_key, checkpoint)
    }
}
