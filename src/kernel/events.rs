//! Operational events: create, start, stop, policy update, halt, recover,
//! rotate, preserve, cluster join and leave — each an entry of the same
//! chain as the decisions.
//!
//! An event entry names the event in `tool_name` (`kernel.<event>`), the
//! operator (or `SYSTEM`) in `actor`, says what and why in `intent`, and stores
//! its full payload, whose canonical hash is the entry's `params_hash`. A HALT
//! follows the Python library's shape instead (`request_id "HALT"`, decision
//! HALT, the reason as intent), with the operator as actor.

use serde_json::{Value, json};

use super::machine::State;
use super::policy::Policy;
use super::state::{KernelState, event};
use super::variant::Variant;
use crate::entry::EntryBody;

pub use super::state::event::{POLICY_FROM_API, POLICY_FROM_CLUSTER, POLICY_FROM_CONFIG};

/// Why an operational event cannot happen now (nothing is recorded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The ledger already has a `kernel.create`.
    #[error("the kernel already exists (id {0})")]
    AlreadyCreated(String),
    /// The ledger has no `kernel.create` yet.
    #[error("the kernel is not initialised")]
    NotInitialised,
    /// Halting a halted kernel.
    #[error("the kernel is already halted")]
    AlreadyHalted,
    /// Recovering a kernel that is not halted.
    #[error("the kernel is not halted")]
    NotHalted,
    /// A required text (reason, actor) is empty.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// The payload cannot be hashed (NaN/Infinity).
    #[error("payload cannot be hashed: {0}")]
    Unhashable(String),
    /// A rotation manifest that does not continue the archive recorded so
    /// far (range or link to the previous manifest).
    #[error("the manifest does not continue the archive: {0}")]
    Discontinuous(String),
    /// A cluster join or leave that does not fit the recorded membership.
    #[error("{0}")]
    Membership(String),
}

/// The actor of what a cluster's control plane does to a member
/// (`cluster:<id>`): its shared policy updates, halts and recoveries.
pub fn cluster_actor(cluster_id: &str) -> String {
    format!("cluster:{cluster_id}")
}

fn event_body(
    state: &KernelState,
    now_ms: u64,
    name: &str,
    actor: &str,
    intent: String,
    state_to: State,
    payload: Value,
) -> Result<EntryBody, EventError> {
    if actor.trim().is_empty() {
        return Err(EventError::Empty("actor"));
    }
    let params_hash =
        crate::canonical::sha256_of(&payload).map_err(|e| EventError::Unhashable(e.to_string()))?;
    Ok(EntryBody {
        ts_ms: now_ms,
        request_id: name.into(),
        actor: actor.into(),
        intent: intent.into(),
        decision: "ALLOW".into(),
        state_from: state.state.as_str().into(),
        state_to: state_to.as_str().into(),
        tool_name: Some(name.to_owned()),
        params_hash: Some(params_hash),
        payload: Some(payload),
        ..EntryBody::default()
    })
}

fn require_initialised(state: &KernelState) -> Result<(), EventError> {
    if state.state == State::Booting {
        Err(EventError::NotInitialised)
    } else {
        Ok(())
    }
}

fn require_reason(reason: &str) -> Result<(), EventError> {
    if reason.trim().is_empty() {
        Err(EventError::Empty("reason"))
    } else {
        Ok(())
    }
}

impl KernelState {
    /// `kernel.create`: the first entry of a ledger. `signing_key` is the
    /// verifier key of the key that signs its checkpoints, when there is one
    /// (recorded, so that an auditor finds it in the chain).
    pub fn create_event(
        &self,
        now_ms: u64,
        actor: &str,
        kernel_id: &str,
        variant: Variant,
        policy: &Policy,
        signing_key: Option<&str>,
    ) -> Result<EntryBody, EventError> {
        if let Some(id) = &self.kernel_id {
            return Err(EventError::AlreadyCreated(id.clone()));
        }
        if kernel_id.trim().is_empty() {
            return Err(EventError::Empty("kernel id"));
        }
        let mut payload = json!({
            "kernel_id": kernel_id,
            "variant": variant.as_str(),
            "policy": policy.to_json(),
            "source": POLICY_FROM_CONFIG,
        });
        if let Some(key) = signing_key {
            payload["signing_key"] = json!(key);
        }
        event_body(
            self,
            now_ms,
            event::CREATE,
            actor,
            format!("create kernel {kernel_id} ({variant})"),
            State::Idle,
            payload,
        )
    }

    /// `kernel.start`: the service started on this ledger. `signing_key` is
    /// the verifier key of the key that signs its checkpoints from now on,
    /// and `previous_key` the one it replaces, when the operator rotated it.
    pub fn start_event(
        &self,
        now_ms: u64,
        software_version: &str,
        signing_key: Option<&str>,
        previous_key: Option<&str>,
    ) -> Result<EntryBody, EventError> {
        require_initialised(self)?;
        let mut payload = json!({
            "software_version": software_version,
            "start": self.starts + 1,
            "state": self.state.as_str(),
        });
        if let Some(key) = signing_key {
            payload["signing_key"] = json!(key);
        }
        if let Some(key) = previous_key {
            payload["previous_signing_key"] = json!(key);
        }
        event_body(
            self,
            now_ms,
            event::START,
            "SYSTEM",
            format!(
                "service start #{} (kernels {software_version})",
                self.starts + 1
            ),
            self.state,
            payload,
        )
    }

    /// `kernel.stop`: the service stopped cleanly (after its last request
    /// was answered). Recorded halted or not: it is an operational event,
    /// not a decision, and changes no state.
    pub fn stop_event(&self, now_ms: u64, reason: &str) -> Result<EntryBody, EventError> {
        require_initialised(self)?;
        require_reason(reason)?;
        let payload = json!({
            "reason": reason,
            "starts": self.starts,
            "state": self.state.as_str(),
        });
        event_body(
            self,
            now_ms,
            event::STOP,
            "SYSTEM",
            format!("service stop: {reason}"),
            self.state,
            payload,
        )
    }

    /// `kernel.policy_update`: `policy` becomes active. `source` says where
    /// it came from: [`POLICY_FROM_API`] (an operator) or
    /// [`POLICY_FROM_CONFIG`] (the service's policy file, changed).
    pub fn policy_update_event(
        &self,
        now_ms: u64,
        actor: &str,
        policy: &Policy,
        reason: &str,
        source: &str,
    ) -> Result<EntryBody, EventError> {
        self.policy_update_with(now_ms, actor, policy, reason, source, None)
    }

    /// `kernel.policy_update` from cluster `cluster_id`'s shared policy
    /// object (actor `cluster:<id>`); `object` says which one (its key,
    /// `object_sha256`, ETag and version), kept under the payload's
    /// `cluster` key.
    pub fn cluster_policy_event(
        &self,
        now_ms: u64,
        cluster_id: &str,
        policy: &Policy,
        reason: &str,
        object: Value,
    ) -> Result<EntryBody, EventError> {
        if object
            .get("object_sha256")
            .and_then(Value::as_str)
            .is_none()
        {
            return Err(EventError::Empty("object_sha256"));
        }
        let mut cluster = json!({ "id": cluster_id });
        if let (Some(c), Some(o)) = (cluster.as_object_mut(), object.as_object()) {
            c.extend(o.clone());
        }
        self.policy_update_with(
            now_ms,
            &cluster_actor(cluster_id),
            policy,
            reason,
            POLICY_FROM_CLUSTER,
            Some(cluster),
        )
    }

    fn policy_update_with(
        &self,
        now_ms: u64,
        actor: &str,
        policy: &Policy,
        reason: &str,
        source: &str,
        cluster: Option<Value>,
    ) -> Result<EntryBody, EventError> {
        require_initialised(self)?;
        require_reason(reason)?;
        let version = self.policy_version + 1;
        let mut payload = json!({
            "policy": policy.to_json(),
            "version": version,
            "previous_policy_hash": self.policy_hash,
            "reason": reason,
            "source": source,
        });
        if let Some(cluster) = cluster {
            payload["cluster"] = cluster;
        }
        event_body(
            self,
            now_ms,
            event::POLICY_UPDATE,
            actor,
            format!("policy update to version {version}: {reason}"),
            self.state,
            payload,
        )
    }

    /// HALT: the library's halt entry, by `actor`.
    pub fn halt_event(
        &self,
        now_ms: u64,
        actor: &str,
        reason: &str,
    ) -> Result<EntryBody, EventError> {
        require_initialised(self)?;
        if self.is_halted() {
            return Err(EventError::AlreadyHalted);
        }
        if actor.trim().is_empty() {
            return Err(EventError::Empty("actor"));
        }
        Ok(EntryBody {
            ts_ms: now_ms,
            request_id: "HALT".into(),
            actor: actor.into(),
            intent: reason.into(),
            decision: "HALT".into(),
            state_from: self.state.as_str().into(),
            state_to: State::Halted.as_str().into(),
            ..EntryBody::default()
        })
    }

    /// `kernel.recover`: an operator starts a new session after a halt,
    /// linked to the halted chain's root hash.
    pub fn recover_event(
        &self,
        now_ms: u64,
        actor: &str,
        reason: &str,
    ) -> Result<EntryBody, EventError> {
        if !self.is_halted() {
            return Err(EventError::NotHalted);
        }
        require_reason(reason)?;
        let halt = self.last_halt.as_ref();
        let payload = json!({
            "reason": reason,
            "halted_root_hash": self.head.hash,
            "halted_at_seq": halt.map(|h| h.seq),
            "halt_reason": halt.map(|h| h.reason.clone()),
            "new_session": self.session + 1,
        });
        event_body(
            self,
            now_ms,
            event::RECOVER,
            actor,
            format!("recover from halt, session {}: {reason}", self.session + 1),
            State::Idle,
            payload,
        )
    }

    /// `kernel.rotate`: records an archived segment's manifest, which must
    /// continue the archive: it starts right after the last recorded
    /// rotation, ends within the ledger, names this kernel and links to the
    /// last recorded manifest's SHA-256.
    pub fn rotate_event(
        &self,
        now_ms: u64,
        actor: &str,
        manifest: Value,
    ) -> Result<EntryBody, EventError> {
        require_initialised(self)?;
        let broken = |why: String| Err(EventError::Discontinuous(why));
        let seq = |key: &str| {
            manifest
                .get(key)
                .and_then(Value::as_u64)
                .ok_or_else(|| EventError::Discontinuous(format!("it has no {key}")))
        };
        let (from, to) = (seq("from_seq")?, seq("to_seq")?);
        let next = self.last_rotation.as_ref().map_or(0, |r| r.to_seq + 1);
        if from != next {
            return broken(format!(
                "it starts at entry {from}, but the archive continues at entry {next}"
            ));
        }
        if to < from || to >= self.head.len {
            return broken(format!(
                "it ends at entry {to}, outside {from}..{} (the ledger's head)",
                self.head.len
            ));
        }
        if manifest.get("kernel_id").and_then(Value::as_str) != self.kernel_id.as_deref() {
            return broken("it names another kernel".into());
        }
        if !manifest.get("root_hash").is_some_and(Value::is_string) {
            return broken("it has no root_hash".into());
        }
        let prev = manifest.get("prev_manifest_sha256").and_then(Value::as_str);
        let last = self
            .last_rotation
            .as_ref()
            .map(|r| r.manifest_sha256.as_str());
        if prev != last {
            return broken(match last {
                Some(last) => format!("it does not link to the last recorded manifest {last}"),
                None => "it links to a manifest, but none is recorded".into(),
            });
        }
        event_body(
            self,
            now_ms,
            event::ROTATE,
            actor,
            format!("archived entries {from}..={to}"),
            self.state,
            manifest,
        )
    }

    /// `kernel.preserve`: records that evidence was preserved for an incident.
    pub fn preserve_event(
        &self,
        now_ms: u64,
        actor: &str,
        reason: &str,
        record: Value,
    ) -> Result<EntryBody, EventError> {
        require_initialised(self)?;
        require_reason(reason)?;
        event_body(
            self,
            now_ms,
            event::PRESERVE,
            actor,
            format!("preserve evidence: {reason}"),
            self.state,
            record,
        )
    }

    /// `kernel.cluster_join`: the instance joined cluster `cluster_id`
    /// (first start as a member, or again after leaving); `detail` holds
    /// its kernel id, advertised URL, member object key and the member
    /// list it saw, and gets the cluster id added.
    pub fn cluster_join_event(
        &self,
        now_ms: u64,
        cluster_id: &str,
        mut detail: Value,
    ) -> Result<EntryBody, EventError> {
        require_initialised(self)?;
        if cluster_id.trim().is_empty() {
            return Err(EventError::Empty("cluster id"));
        }
        match &self.cluster {
            Some(c) if c.id == cluster_id => {
                return Err(EventError::Membership(format!(
                    "already a member of cluster {cluster_id} (joined at entry {})",
                    c.joined_seq
                )));
            }
            Some(c) => {
                return Err(EventError::Membership(format!(
                    "this ledger is a member of cluster {}, not {cluster_id}: `kernels cluster leave` it first",
                    c.id
                )));
            }
            None => {}
        }
        let members = detail
            .get("members")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let Some(map) = detail.as_object_mut() else {
            return Err(EventError::Empty("join detail"));
        };
        map.insert("cluster_id".into(), json!(cluster_id));
        let kernel_id = self.kernel_id.clone().unwrap_or_default();
        event_body(
            self,
            now_ms,
            event::CLUSTER_JOIN,
            "SYSTEM",
            format!("{kernel_id} joined cluster {cluster_id} ({members} member(s) seen)"),
            self.state,
            detail,
        )
    }

    /// `kernel.cluster_leave`: `actor` took the instance out of its
    /// cluster; `detail` says what was removed (the member object), and
    /// gets the cluster id and the reason added.
    pub fn cluster_leave_event(
        &self,
        now_ms: u64,
        actor: &str,
        reason: &str,
        mut detail: Value,
    ) -> Result<EntryBody, EventError> {
        require_initialised(self)?;
        require_reason(reason)?;
        let Some(cluster) = &self.cluster else {
            return Err(EventError::Membership(
                "this kernel is not a member of a cluster".into(),
            ));
        };
        let Some(map) = detail.as_object_mut() else {
            return Err(EventError::Empty("leave detail"));
        };
        map.insert("cluster_id".into(), json!(cluster.id));
        map.insert("reason".into(), json!(reason));
        event_body(
            self,
            now_ms,
            event::CLUSTER_LEAVE,
            actor,
            format!("left cluster {}: {reason}", cluster.id),
            self.state,
            detail,
        )
    }
}
