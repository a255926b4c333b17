//! The kernel's state, and the one function that changes it: [`KernelState::apply`].
//!
//! Everything the kernel knows (its id and variant, HALTED or not, the active
//! policy and its version, permit nonce uses, counters, the last rotation) is
//! folded from ledger entries. The live kernel applies each entry it seals;
//! opening a ledger applies the stored entries; replaying `--until-seq N`
//! applies the first N+1. There is no other way to change the state, so the
//! three cannot drift apart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::machine::State;
use super::permit::NonceCounts;
use super::policy::Policy;
use super::reason::DenyReason;
use super::variant::Variant;
use crate::entry::{Entry, GENESIS_HASH};

/// Distinct actors/tools counted by name; beyond this they count as `(other)`
/// so that a flood of invented names cannot grow the state without bound.
pub const MAX_COUNTED_NAMES: usize = 10_000;

/// Why an entry cannot be applied to the state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The entry does not continue the chain (wrong seq or prev_hash).
    #[error("entry {seq} does not continue the chain: {reason}")]
    Discontinuous {
        /// The entry's seq.
        seq: u64,
        /// What does not match.
        reason: String,
    },
    /// An operational event whose payload is missing or malformed.
    #[error("entry {seq} ({event}) has a bad payload: {reason}")]
    BadPayload {
        /// The entry's seq.
        seq: u64,
        /// The event (`kernel.policy_update`, …).
        event: String,
        /// What is wrong.
        reason: String,
    },
}

/// Where the chain ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Number of entries (the next entry's seq).
    pub len: u64,
    /// Hash of the last entry (genesis when empty).
    pub hash: String,
}

impl Default for Head {
    fn default() -> Self {
        Head {
            len: 0,
            hash: GENESIS_HASH.to_owned(),
        }
    }
}

/// The most recent rotation recorded in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationMark {
    /// Seq of the `kernel.rotate` entry.
    pub entry_seq: u64,
    /// Last seq covered by the archived segment.
    pub to_seq: u64,
    /// Root hash of the segment.
    pub root_hash: String,
    /// SHA-256 of the manifest (the next manifest links to it).
    pub manifest_sha256: String,
    /// When the rotation was recorded.
    pub ts_ms: u64,
}

/// The most recent halt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaltMark {
    /// Seq of the HALT entry.
    pub seq: u64,
    /// Who halted.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When.
    pub ts_ms: u64,
}

/// The cluster this kernel joined (its last `kernel.cluster_join`, unless
/// a `kernel.cluster_leave` came after it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMark {
    /// Cluster id.
    pub id: String,
    /// Seq of the `kernel.cluster_join` entry.
    pub joined_seq: u64,
}

/// Which shared policy object of a cluster was applied last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterPolicyMark {
    /// SHA-256 of the object's bytes.
    pub object_sha256: String,
    /// The revision `kernels cluster policy put` gave it (each put has its
    /// own, so putting the same file again is applied again).
    pub revision: Option<String>,
}

/// Decision counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Request decisions by `ALLOW` / `DENY`.
    pub by_decision: BTreeMap<String, u64>,
    /// Request decisions by receipt status (`ACCEPTED` / `REJECTED` / `FAILED`).
    pub by_status: BTreeMap<String, u64>,
    /// Request decisions by actor.
    pub by_actor: BTreeMap<String, u64>,
    /// Allowed tool calls by tool.
    pub by_tool: BTreeMap<String, u64>,
    /// Operational events by event name.
    pub by_event: BTreeMap<String, u64>,
}

/// Everything the kernel knows, as folded from its entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelState {
    /// Kernel id (from `kernel.create`).
    pub kernel_id: Option<String>,
    /// Variant (from `kernel.create`).
    pub variant: Option<Variant>,
    /// BOOTING before `kernel.create`, then IDLE or HALTED.
    pub state: State,
    /// Session number: 1 after create, +1 per recovery.
    pub session: u64,
    /// The active policy.
    pub policy: Option<Policy>,
    /// 1 after create, +1 per policy update.
    pub policy_version: u64,
    /// Canonical hash of the active policy.
    pub policy_hash: Option<String>,
    /// Permit nonce uses.
    #[serde(with = "nonce_counts_serde")]
    pub nonce_counts: NonceCounts,
    /// Decision counters.
    pub counters: Counters,
    /// End of the chain.
    pub head: Head,
    /// Time of the last entry.
    pub last_ts_ms: Option<u64>,
    /// Last rotation.
    pub last_rotation: Option<RotationMark>,
    /// Current (or last) halt.
    pub last_halt: Option<HaltMark>,
    /// Number of service starts recorded.
    pub starts: u64,
    /// Hash of the last policy that came from the service configuration
    /// (create, or an update when the policy file changed). A restart with
    /// an unchanged file must not undo an operator's update.
    #[serde(default)]
    pub configured_policy_hash: Option<String>,
    /// The cluster this kernel is a member of.
    #[serde(default)]
    pub cluster: Option<ClusterMark>,
    /// The last shared policy object applied from the cluster (a restart
    /// does not apply the same object again).
    #[serde(default)]
    pub cluster_policy: Option<ClusterPolicyMark>,
}

impl Default for KernelState {
    fn default() -> Self {
        KernelState {
            kernel_id: None,
            variant: None,
            state: State::Booting,
            session: 0,
            policy: None,
            policy_version: 0,
            policy_hash: None,
            nonce_counts: NonceCounts::new(),
            counters: Counters::default(),
            head: Head::default(),
            last_ts_ms: None,
            last_rotation: None,
            last_halt: None,
            starts: 0,
            configured_policy_hash: None,
            cluster: None,
            cluster_policy: None,
        }
    }
}

/// Operational event names (`tool_name` of their entries).
pub mod event {
    /// First entry of a ledger.
    pub const CREATE: &str = "kernel.create";
    /// The service started on an existing ledger.
    pub const START: &str = "kernel.start";
    /// A new policy became active.
    pub const POLICY_UPDATE: &str = "kernel.policy_update";
    /// A segment was archived.
    pub const ROTATE: &str = "kernel.rotate";
    /// Evidence was preserved for an incident.
    pub const PRESERVE: &str = "kernel.preserve";
    /// An operator recovered a halted kernel.
    pub const RECOVER: &str = "kernel.recover";

    /// Policy source of an update made by an operator through the API.
    pub const POLICY_FROM_API: &str = "api";
    /// Policy source of the service configuration (policy file or built-in).
    pub const POLICY_FROM_CONFIG: &str = "config";
    /// Policy source of a cluster's shared policy object.
    pub const POLICY_FROM_CLUSTER: &str = "cluster";
    /// The instance joined a cluster.
    pub const CLUSTER_JOIN: &str = "kernel.cluster_join";
    /// The instance left its cluster.
    pub const CLUSTER_LEAVE: &str = "kernel.cluster_leave";

    /// The outcome of an externally run tool: an entry that shares its
    /// decision's request id (see `kernel/outcome.rs`).
    pub const OUTCOME: &str = "kernel.outcome";

    /// The operational event `entry` records, if it is one: its request id
    /// is the event's name (`kernel.*`, which agents may not use) and so is
    /// its `tool_name`; or it is an outcome, which keeps its decision's
    /// request id and carries the report as payload (no decision carries a
    /// payload). (A denied agent request may name any tool, even a
    /// `kernel.*` one; it is never an event.)
    pub fn of(entry: &crate::entry::Entry) -> Option<&str> {
        entry.tool_name.as_deref().filter(|t| {
            t.starts_with("kernel.")
                && (entry.request_id.as_str() == *t || (*t == OUTCOME && entry.payload.is_some()))
        })
    }
    /// The service stopped cleanly (a crash leaves no such entry).
    pub const STOP: &str = "kernel.stop";
}

impl KernelState {
    /// Whether the kernel is halted.
    pub fn is_halted(&self) -> bool {
        self.state == State::Halted
    }

    /// Folds one entry into the state. The entry must continue the chain.
    pub fn apply(&mut self, entry: &Entry) -> Result<(), ApplyError> {
        if entry.ledger_seq != self.head.len {
            return Err(ApplyError::Discontinuous {
                seq: entry.ledger_seq,
                reason: format!("expected seq {}", self.head.len),
            });
        }
        if entry.prev_hash != self.head.hash {
            return Err(ApplyError::Discontinuous {
                seq: entry.ledger_seq,
                reason: "prev_hash does not match the previous entry".into(),
            });
        }
        self.fold(entry)?;
        self.head = Head {
            len: entry.ledger_seq + 1,
            hash: entry.entry_hash.clone(),
        };
        self.last_ts_ms = Some(entry.ts_ms);
        Ok(())
    }

    fn fold(&mut self, entry: &Entry) -> Result<(), ApplyError> {
        if entry.decision == "HALT" {
            self.state = State::Halted;
            self.last_halt = Some(HaltMark {
                seq: entry.ledger_seq,
                actor: entry.actor.to_string(),
                reason: entry.intent.to_string(),
                ts_ms: entry.ts_ms,
            });
            bump(&mut self.counters.by_event, "kernel.halt");
            return Ok(());
        }
        if let Some(event) = event::of(entry) {
            bump(&mut self.counters.by_event, event);
            return self.fold_event(event, entry);
        }
        // A decision on an agent request.
        bump(&mut self.counters.by_decision, &entry.decision);
        let status = if entry.decision == "ALLOW" {
            super::reason::Status::Accepted
        } else {
            DenyReason::status_of_denial(entry.error.as_deref())
        };
        bump(&mut self.counters.by_status, status.as_str());
        bump_capped(&mut self.counters.by_actor, &entry.actor.to_string());
        if entry.decision == "ALLOW"
            && let Some(tool) = &entry.tool_name
        {
            bump_capped(&mut self.counters.by_tool, tool);
        }
        if entry.permit_verification.as_deref() == Some("ALLOW")
            && entry
                .permit_digest
                .as_deref()
                .is_some_and(|d| !d.is_empty())
            && let (Some(nonce), Some(issuer), Some(subject), Some(_)) = (
                &entry.permit_nonce,
                &entry.permit_issuer,
                &entry.permit_subject,
                entry.permit_max_executions,
            )
            && !nonce.is_empty()
            && !issuer.is_empty()
            && !subject.is_empty()
        {
            *self
                .nonce_counts
                .entry((nonce.clone(), issuer.clone(), subject.clone()))
                .or_insert(0) += 1;
        }
        Ok(())
    }

    fn fold_event(&mut self, event: &str, entry: &Entry) -> Result<(), ApplyError> {
        let bad = |reason: &str| ApplyError::BadPayload {
            seq: entry.ledger_seq,
            event: event.to_owned(),
            reason: reason.to_owned(),
        };
        let payload = entry.payload.as_ref();
        match event {
            event::CREATE => {
                let p = payload.ok_or_else(|| bad("missing payload"))?;
                let kernel_id = p
                    .get("kernel_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("no kernel_id"))?;
                let variant = p
                    .get("variant")
                    .and_then(Value::as_str)
                    .and_then(Variant::parse)
                    .ok_or_else(|| bad("no valid variant"))?;
                let policy = Policy::from_json(p.get("policy").unwrap_or(&Value::Null))
                    .map_err(|e| bad(&e.to_string()))?;
                self.kernel_id = Some(kernel_id.to_owned());
                self.variant = Some(variant);
                self.state = State::Idle;
                self.session = 1;
                self.policy_hash = Some(policy.hash());
                self.configured_policy_hash = Some(policy.hash());
                self.policy = Some(policy);
                self.policy_version = 1;
            }
            event::POLICY_UPDATE => {
                let p = payload.ok_or_else(|| bad("missing payload"))?;
                let policy = Policy::from_json(p.get("policy").unwrap_or(&Value::Null))
                    .map_err(|e| bad(&e.to_string()))?;
                self.policy_hash = Some(policy.hash());
                match p.get("source").and_then(Value::as_str) {
                    Some(event::POLICY_FROM_CONFIG) => {
                        self.configured_policy_hash = Some(policy.hash());
                    }
                    Some(event::POLICY_FROM_CLUSTER) => {
                        let sha = p
                            .pointer("/cluster/object_sha256")
                            .and_then(Value::as_str)
                            .ok_or_else(|| bad("no cluster.object_sha256"))?;
                        let revision = p.pointer("/cluster/revision").and_then(Value::as_str);
                        self.cluster_policy = Some(ClusterPolicyMark {
                            object_sha256: sha.to_owned(),
                            revision: revision.map(str::to_owned),
                        });
                    }
                    _ => {}
                }
                self.policy = Some(policy);
                self.policy_version += 1;
            }
            event::ROTATE => {
                let p = payload.ok_or_else(|| bad("missing payload"))?;
                let to_seq = p
                    .get("to_seq")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| bad("no to_seq"))?;
                let root_hash = p
                    .get("root_hash")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("no root_hash"))?;
                let manifest_sha256 =
                    crate::canonical::sha256_of(p).map_err(|e| bad(&e.to_string()))?;
                self.last_rotation = Some(RotationMark {
                    entry_seq: entry.ledger_seq,
                    to_seq,
                    root_hash: root_hash.to_owned(),
                    manifest_sha256,
                    ts_ms: entry.ts_ms,
                });
            }
            event::RECOVER => {
                self.state = State::Idle;
                self.session += 1;
            }
            event::START => {
                self.starts += 1;
            }
            event::CLUSTER_JOIN => {
                let p = payload.ok_or_else(|| bad("missing payload"))?;
                let id = p
                    .get("cluster_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("no cluster_id"))?;
                self.cluster = Some(ClusterMark {
                    id: id.to_owned(),
                    joined_seq: entry.ledger_seq,
                });
            }
            event::CLUSTER_LEAVE => {
                self.cluster = None;
            }
            // kernel.preserve and events added later change no state.
            _ => {}
        }
        Ok(())
    }

    /// Replays `entries` from the empty state.
    pub fn replay<'a>(
        entries: impl IntoIterator<Item = &'a Entry>,
    ) -> Result<KernelState, ApplyError> {
        let mut state = KernelState::default();
        for e in entries {
            state.apply(e)?;
        }
        Ok(state)
    }
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.to_owned(), 1);
        }
    }
}

fn bump_capped(map: &mut BTreeMap<String, u64>, key: &str) {
    if map.contains_key(key) || map.len() < MAX_COUNTED_NAMES {
        bump(map, key);
    } else {
        bump(map, "(other)");
    }
}

/// Serializes nonce counts as a list (JSON maps need string keys).
mod nonce_counts_serde {
    use crate::kernel::permit::NonceCounts;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Use {
        nonce: String,
        issuer: String,
        subject: String,
        count: u64,
    }

    pub(super) fn serialize<S: Serializer>(counts: &NonceCounts, s: S) -> Result<S::Ok, S::Error> {
        let list: Vec<Use> = counts
            .iter()
            .map(|((nonce, issuer, subject), count)| Use {
                nonce: nonce.clone(),
                issuer: issuer.clone(),
                subject: subject.clone(),
                count: *count,
            })
            .collect();
        list.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NonceCounts, D::Error> {
        let list = Vec::<Use>::deserialize(d)?;
        Ok(list
            .into_iter()
            .map(|u| ((u.nonce, u.issuer, u.subject), u.count))
            .collect())
    }
}
