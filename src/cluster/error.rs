//! The cluster layer's one error: what went wrong joining, polling or
//! leaving, and how each is handled.

use super::objects::ControlPlaneError;
use crate::ledger::LedgerError;

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The control plane (S3) failed or could not be reached: the instance
    /// keeps deciding under its last recorded policy, reports the control
    /// plane unreachable and tries again at the next poll. At a first join
    /// it stops the start (the instance has never seen the cluster).
    #[error(transparent)]
    ControlPlane(#[from] ControlPlaneError),
    /// Another ledger holds this member name: a second instance with the
    /// same number. The start is refused.
    #[error(
        "member {kernel_id} of cluster {cluster_id} is already claimed by another instance (advertised at {other_url}, started at {other_started_at} ms, ledger {other_genesis}): a second instance with the same number is refused; give this one another cluster.instance, or, if that instance is gone for good, `kernels cluster forget {kernel_id}` first"
    )]
    MemberClaimed {
        /// The cluster.
        cluster_id: String,
        /// The contested member name.
        kernel_id: String,
        /// Where the other instance says it is.
        other_url: String,
        /// When it started.
        other_started_at: u64,
        /// Its ledger's first entry hash.
        other_genesis: String,
    },
    /// An object of the control plane is not what it must be (a member
    /// record that does not parse, …); the object is named.
    #[error("{key}: {problem}")]
    BadObject {
        /// The object's key.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// This kernel is not (or no longer) a member of the cluster.
    #[error("{0}")]
    NotMember(String),
    /// The settings do not allow this (e.g. serving without an instance number).
    #[error("{0}")]
    Settings(String),
    /// A cosignature was offered by a key that is not the witness key of
    /// another member of the cluster.
    #[error("{0}")]
    NotWitness(String),
    /// A cosignature that cannot be added (bad signature, unknown size, …).
    #[error("{0}")]
    Cosignature(String),
    /// Recording what the control plane said failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}
