//! What a start does in a cluster, before the instance serves: claim its
//! member name, record `kernel.cluster_join` the first time, and poll the
//! control plane once — so that a member that starts while the halt flag
//! is set starts halted, and a new member decides under the shared policy
//! from its very first request.
//!
//! The first join needs the control plane: an instance that has never seen
//! its cluster does not start without it. A later start (a restart: the
//! ledger already records the join) starts under its last recorded policy
//! when the control plane is down (after one timeout, without a first
//! poll), says so in its status, and claims its member object at the first
//! poll that reaches it.

use serde_json::json;

use super::error::ClusterError;
use super::member::{self, Claimed, MemberRecord};
use super::objects::ControlPlane;
use super::witness::{WitnessState, Witnessed};
use super::{Cluster, Identity};
use crate::config::ClusterConfig;
use crate::ledger::{Clock, Ledger, SystemClock};

/// Joins (or rejoins) the cluster of `config` as the instance `identity`
/// whose ledger is `ledger` (see the module doc). The caller starts the
/// worker ([`Cluster::start`]) on the answer.
pub async fn join(
    config: &ClusterConfig,
    identity: Identity,
    plane: ControlPlane,
    ledger: Ledger,
    witnessed: Witnessed,
) -> Result<Cluster, ClusterError> {
    let state = ledger.state();
    let first = match &state.cluster {
        Some(c) if c.id == config.id => false,
        Some(c) => {
            return Err(ClusterError::NotMember(format!(
                "this ledger is a member of cluster {}, not {}: `kernels cluster leave` it first, or keep cluster.id {}",
                c.id, config.id, c.id
            )));
        }
        None => true,
    };
    let genesis = ledger
        .entry_hash_at(1)
        .ok_or_else(|| ClusterError::Settings("the ledger has no first entry".into()))?;
    let record = MemberRecord {
        cluster_id: config.id.clone(),
        kernel_id: identity.kernel_id.clone(),
        instance: identity.instance,
        advertise_url: identity.advertise_url.clone(),
        verifier_key: identity.verifier_key.clone(),
        witness_key: identity.witness_key.clone(),
        started_at: SystemClock.now_ms(),
        ledger_genesis: genesis,
        software_version: env!("CARGO_PKG_VERSION").into(),
    };
    let cluster = Cluster::new(config.clone(), identity, plane, ledger);
    *Cluster::lock(&cluster.inner.witness) = WitnessState::new(witnessed);
    match member::claim(cluster.plane(), &record).await {
        Ok(claimed) => {
            tracing::info!(cluster = %config.id, key = %cluster.inner.member_key, created = claimed == Claimed::Created, "member object written");
        }
        Err(ClusterError::ControlPlane(e)) if !first => {
            tracing::warn!(cluster = %config.id, error = %e, "control plane unreachable at start: serving under the last recorded policy; the member object is written at the first poll that reaches it");
            *Cluster::lock(&cluster.inner.claim) = Some(record.clone());
            // No first poll: it would only wait for the same store again.
            cluster.set_member(true);
            let _ = cluster.record_poll(Some(ClusterError::ControlPlane(e)));
            return Ok(cluster);
        }
        Err(ClusterError::ControlPlane(e)) => {
            return Err(ClusterError::Settings(format!(
                "cannot join cluster {}: {e}; a first join needs the control plane (the instance has never seen the cluster's policy or halt flag)",
                config.id
            )));
        }
        Err(e) => return Err(e),
    }
    cluster.set_member(true);
    if first {
        let listed = member::list(cluster.plane()).await.map_err(|e| {
            ClusterError::Settings(format!("cannot join cluster {}: {e}", config.id))
        })?;
        let mut members = Vec::new();
        let mut unreadable = Vec::new();
        for item in listed {
            match item {
                Ok(m) => members.push(json!({
                    "kernel_id": m.kernel_id,
                    "advertise_url": m.advertise_url,
                    "started_at": m.started_at,
                })),
                Err(e) => unreadable.push(e.to_string()),
            }
        }
        let detail = json!({
            "kernel_id": record.kernel_id,
            "instance": record.instance,
            "advertise_url": record.advertise_url,
            "verifier_key": record.verifier_key,
            "member_key": cluster.inner.member_key,
            "members": members,
            "unreadable_members": unreadable,
        });
        let entry = cluster
            .ledger()
            .event(|state, now| state.cluster_join_event(now, &config.id, detail))
            .await?;
        tracing::info!(cluster = %config.id, seq = entry.ledger_seq, members = members_len(&entry), "joined the cluster");
    }
    // A failure here (the control plane gone since the claim a moment
    // ago) is reported by the status, and the worker polls again.
    let _ = cluster.poll_once().await;
    Ok(cluster)
}

fn members_len(entry: &crate::entry::Entry) -> usize {
    entry
        .payload
        .as_ref()
        .and_then(|p| p.get("members"))
        .and_then(|m| m.as_array())
        .map_or(0, Vec::len)
}

/// The worker's first job: the member claim a start could not make
/// because the control plane was down (nothing to do once it is made).
pub async fn claim_pending(cluster: &Cluster) -> Result<(), ClusterError> {
    let Some(record) = Cluster::lock(&cluster.inner.claim).clone() else {
        return Ok(());
    };
    member::claim(cluster.plane(), &record).await?;
    *Cluster::lock(&cluster.inner.claim) = None;
    tracing::info!(cluster = %cluster.id(), key = %cluster.inner.member_key, "member object written");
    Ok(())
}

/// The join of `kernels serve`: this instance's identity from the settings
/// (its kernel id, instance number, advertised URL — by default `http://`
/// and the address it is bound to — and the verifier key of the ledger's
/// checkpoint signing key, configured `signing.key_file` or the data dir's,
/// and its witness key), what it cosigned of its peers
/// (`<data_dir>/cluster-witnessed.json`), a control-plane client, then
/// [`join`].
pub async fn join_configured(
    config: &ClusterConfig,
    kernel_id: &str,
    data_dir: &std::path::Path,
    bound: std::net::SocketAddr,
    ledger: Ledger,
) -> Result<Cluster, ClusterError> {
    let instance = config.instance.ok_or_else(|| {
        ClusterError::Settings(format!(
            "cluster {}: cluster.instance (KERNELS_CLUSTER_INSTANCE) is required to serve as a member",
            config.id
        ))
    })?;
    let advertise_url = match &config.advertise_url {
        Some(url) => url.clone(),
        None if bound.ip().is_unspecified() => {
            return Err(ClusterError::Settings(format!(
                "cluster {}: cluster.advertise_url (KERNELS_CLUSTER_ADVERTISE_URL) is required when listening on {bound}: other members and the load balancer need an address they can reach",
                config.id
            )));
        }
        None => format!("http://{bound}"),
    };
    let identity = Identity {
        kernel_id: kernel_id.to_owned(),
        instance,
        advertise_url,
        verifier_key: ledger.verifier_key().map(ToString::to_string),
        witness_key: ledger.witness_key().map(|k| k.to_string()),
    };
    let witnessed = Witnessed::load(data_dir)?;
    let timeout = config.poll_interval.clamp(
        std::time::Duration::from_secs(2),
        std::time::Duration::from_secs(30),
    );
    let plane = ControlPlane::connect(config, timeout).await;
    join(config, identity, plane, ledger, witnessed).await
}
