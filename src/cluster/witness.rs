//! Peer witnessing: each member cosigns its peers' checkpoints, so that a
//! member cannot rewrite its history without its peers noticing
//! (README.md, "A cluster of kernels"; docs/proofs.md, "Witnesses").
//!
//! One job of the poll worker ([`poll`]): it reads the member list and,
//! for each peer (all at once, each call bounded by the poll interval
//! between 1 s and 5 s), fetches its checkpoint (`GET <advertise_url>/v1/checkpoint`
//! with `cluster.peer_token`), verifies it with the `verifier_key` of the
//! peer's member record, and checks that it extends the last checkpoint of
//! that peer this instance cosigned (the same size and root, or a
//! consistency proof from `GET /v1/proofs/consistency` that verifies). Only
//! then does it record the checkpoint as cosigned — durably, in
//! `<data_dir>/cluster-witnessed.json`, before the cosignature leaves, so a
//! restart cannot be made to cosign a history that does not extend what it
//! vouched for — cosign it with the ledger's witness key
//! ([`Ledger::cosign`](crate::ledger::Ledger::cosign)) and deliver the
//! cosignature (`POST <advertise_url>/v1/checkpoint/cosignatures`). A
//! checkpoint that does not verify, goes back, or forks is refused, never
//! cosigned, and reported (status `cluster.witness.peers`, metric
//! `kernels_cluster_witness_refused`, `kernels cluster status`).
//!
//! The receiving side ([`accept`]) adds a cosignature only from the witness
//! key of another member of the cluster (as its member record names it, at
//! the last poll) and only when it verifies over one of the ledger's recent
//! checkpoints.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Cluster;
use super::error::ClusterError;
use super::member::{self, MemberRecord};
use crate::checkpoint::{SignedCheckpoint, Witnesses};
use crate::ledger::{Clock, SystemClock};
use crate::note::VerifierKey;
use crate::proofs::ConsistencyProof;

/// The file, in the data dir, of what this instance cosigned per peer.
pub const FILE: &str = "cluster-witnessed.json";

/// The last checkpoint of one peer this instance cosigned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cosigned {
    /// The peer's verifier key it verified with.
    pub verifier_key: String,
    /// The peer's signed checkpoint, as cosigned.
    pub checkpoint: String,
    /// When (unix ms).
    pub at_ms: u64,
}

/// What this instance cosigned, per peer kernel id, and where it is kept.
#[derive(Debug, Default)]
pub struct Witnessed {
    path: Option<PathBuf>,
    peers: BTreeMap<String, Cosigned>,
}

impl Witnessed {
    /// Reads `<data_dir>/cluster-witnessed.json` (none yet: nothing
    /// cosigned). An unreadable file is an error: it is what keeps this
    /// instance's cosignatures consistent.
    pub fn load(data_dir: &Path) -> Result<Witnessed, ClusterError> {
        let path = data_dir.join(FILE);
        let peers = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ClusterError::Settings(format!(
                    "{}: not a record of cosigned checkpoints: {e}",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(ClusterError::Settings(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        Ok(Witnessed {
            path: Some(path),
            peers,
        })
    }

    /// Records `cosigned` for `peer`, durably (a new file, synced, renamed
    /// over the old one) when there is a file.
    fn record(&mut self, peer: &str, cosigned: Cosigned) -> Result<(), String> {
        let mut peers = self.peers.clone();
        peers.insert(peer.to_owned(), cosigned);
        if let Some(path) = &self.path {
            let bytes = serde_json::to_vec_pretty(&peers).expect("cosigned checkpoints serialize");
            let tmp = path.with_extension("json.tmp");
            let write = || -> std::io::Result<()> {
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, path)?;
                if let Some(dir) = path.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
                Ok(())
            };
            write()
                .map_err(|e| format!("cannot record the cosignature in {}: {e}", path.display()))?;
        }
        self.peers = peers;
        Ok(())
    }
}

/// What witnessing knows, for the status and the receiving side.
#[derive(Debug, Default)]
pub(super) struct WitnessState {
    witnessed: Witnessed,
    /// Other members' witness keys, from the last member list.
    members: Vec<(String, VerifierKey)>,
    peers: BTreeMap<String, PeerView>,
}

impl WitnessState {
    pub(super) fn new(witnessed: Witnessed) -> WitnessState {
        WitnessState {
            witnessed,
            ..WitnessState::default()
        }
    }

    pub(super) fn to_value(&self, enabled: bool) -> Value {
        let peers: serde_json::Map<String, Value> = self
            .peers
            .iter()
            .map(|(id, v)| {
                let cosigned = self.witnessed.peers.get(id).and_then(|c| {
                    SignedCheckpoint::parse(&c.checkpoint)
                        .ok()
                        .map(|cp| cp.checkpoint.size)
                });
                (
                    id.clone(),
                    json!({
                        "cosigned_size": cosigned,
                        "last_cosigned_ms": v.last_cosigned_ms,
                        "refused": v.refused,
                        "refused_ms": v.refused_ms,
                        "last_error": v.last_error,
                    }),
                )
            })
            .collect();
        json!({ "enabled": enabled, "peers": peers })
    }
}

/// One peer as witnessed.
#[derive(Debug, Default, Clone)]
struct PeerView {
    last_cosigned_ms: Option<u64>,
    /// Why its latest checkpoint was refused (cleared when one is cosigned).
    refused: Option<String>,
    refused_ms: Option<u64>,
    /// Why it could not be witnessed at the last poll (unreachable, …).
    last_error: Option<String>,
}

/// What witnessing one peer came to.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Cosigned (and delivered) the checkpoint of this size.
    Cosigned,
    /// Nothing new to cosign.
    Unchanged,
    /// Could not witness now (peer unreachable, delivery failed, …).
    Failed(String),
    /// The checkpoint is refused: it is not one this instance may vouch for.
    Refused(String),
}

/// The witness job of a poll (see the module doc). Only reading the member
/// list is a control-plane failure; what a peer answers is reported per peer.
pub async fn poll(c: &Cluster) -> Result<(), ClusterError> {
    let Some(own_witness) = c.ledger().witness_key() else {
        return Ok(());
    };
    let listed = member::list(c.plane()).await?;
    let me = c.identity().kernel_id.clone();
    let mut peers = Vec::new();
    let mut keys = Vec::new();
    for record in listed.into_iter().flatten() {
        if record.kernel_id == me {
            continue;
        }
        if let Some(k) = record
            .witness_key
            .as_deref()
            .and_then(|k| VerifierKey::parse(k).ok())
        {
            keys.push((record.kernel_id.clone(), k));
        }
        peers.push(record);
    }
    {
        let mut state = Cluster::lock(&c.inner.witness);
        state.members = keys;
        state
            .peers
            .retain(|id, _| peers.iter().any(|p| &p.kernel_id == id));
    }
    let Some(token) = c.config().peer_token.as_ref().map(|t| t.0.clone()) else {
        return Ok(());
    };
    let http = reqwest::Client::builder()
        .timeout(c.config().poll_interval.clamp(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(5),
        ))
        .build()
        .map_err(|e| ClusterError::Settings(format!("an HTTP client for witnessing: {e}")))?;
    let metrics = c.ledger().metrics().clone();
    // All peers at once, each bounded by the timeout: a hung peer delays
    // the next poll (and its halt-flag read) by one short timeout at most.
    let outcomes = futures::future::join_all(
        peers
            .iter()
            .map(|peer| witness(c, &http, &token, &own_witness, peer)),
    )
    .await;
    for (peer, outcome) in peers.iter().zip(outcomes) {
        let now = SystemClock.now_ms();
        let mut state = Cluster::lock(&c.inner.witness);
        let view = state.peers.entry(peer.kernel_id.clone()).or_default();
        match outcome {
            Outcome::Cosigned => {
                view.last_cosigned_ms = Some(now);
                view.refused = None;
                view.last_error = None;
                metrics.cluster_witness_cosigned.inc();
            }
            Outcome::Unchanged => {
                view.refused = None;
                view.last_error = None;
            }
            Outcome::Failed(e) => {
                tracing::warn!(cluster = %c.id(), peer = %peer.kernel_id, error = %e, "could not witness the peer's checkpoint");
                view.last_error = Some(e);
            }
            Outcome::Refused(why) => {
                tracing::error!(cluster = %c.id(), peer = %peer.kernel_id, reason = %why, "refused to cosign the peer's checkpoint");
                if view.refused.as_deref() != Some(why.as_str()) {
                    view.refused_ms = Some(now);
                }
                view.refused = Some(why);
                view.last_error = None;
            }
        }
        let refused = state.peers.values().filter(|v| v.refused.is_some()).count();
        metrics.cluster_witness_refused.set(refused as i64);
    }
    Ok(())
}

async fn get_text(http: &reqwest::Client, url: &str, token: &str) -> Result<String, String> {
    let r = http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = r.status();
    let body = r.text().await.map_err(|e| format!("GET {url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("GET {url}: {status}: {}", body.trim()));
    }
    Ok(body)
}

/// Witnesses `peer`'s current checkpoint (see the module doc).
async fn witness(
    c: &Cluster,
    http: &reqwest::Client,
    token: &str,
    own: &VerifierKey,
    peer: &MemberRecord,
) -> Outcome {
    let Some(key_text) = &peer.verifier_key else {
        return Outcome::Failed("its member record has no verifier key".into());
    };
    let key = match VerifierKey::parse(key_text) {
        Ok(k) => k,
        Err(e) => return Outcome::Refused(format!("its member record's verifier key: {e}")),
    };
    let base = peer.advertise_url.trim_end_matches('/');
    let text = match get_text(http, &format!("{base}/v1/checkpoint"), token).await {
        Ok(t) => t,
        Err(e) => return Outcome::Failed(e),
    };
    let checkpoint = match SignedCheckpoint::parse(&text) {
        Ok(cp) => cp,
        Err(e) => return Outcome::Refused(format!("its checkpoint is not one: {e}")),
    };
    if let Err(e) = checkpoint.verify(&key, &Witnesses::none()) {
        return Outcome::Refused(format!(
            "its checkpoint does not verify with the verifier key of its member record: {e}"
        ));
    }
    let (new_size, new_root) = (checkpoint.checkpoint.size, checkpoint.checkpoint.root);
    let last = Cluster::lock(&c.inner.witness)
        .witnessed
        .peers
        .get(&peer.kernel_id)
        .cloned();
    match against(last.as_ref(), &peer.kernel_id, key_text, &checkpoint, own) {
        Err(outcome) => return outcome,
        Ok(Against::Unchanged) => return Outcome::Unchanged,
        Ok(Against::Cosign) => {}
        Ok(Against::Grown { from }) => {
            let Some(last) = &last else {
                return Outcome::Failed("a grown tree without a cosigned one".into());
            };
            let url = format!("{base}/v1/proofs/consistency?from_size={from}&to_size={new_size}");
            let doc = match get_text(http, &url, token).await {
                Ok(t) => t,
                Err(e) => return Outcome::Failed(e),
            };
            let proved = ConsistencyProof::parse(&doc).and_then(|p| {
                p.verify(&last.checkpoint, &key, &Witnesses::none())
                    .map(|(_, new)| new.checkpoint)
            });
            match proved {
                Ok(proved) if (proved.size, proved.root) == (new_size, new_root) => {}
                Ok(proved) => {
                    return Outcome::Refused(format!(
                        "its consistency proof is for a tree of {} entries and root {}, not its checkpoint's",
                        proved.size, proved.root
                    ));
                }
                Err(e) => {
                    return Outcome::Refused(format!(
                        "its checkpoint of {new_size} entries does not extend the one of {from} this instance cosigned: {e}"
                    ));
                }
            }
        }
    }
    let now = SystemClock.now_ms();
    let signature = match c.ledger().cosign(&checkpoint, now / 1000) {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(format!("cosigning: {e}")),
    };
    let mut cosigned = checkpoint.clone();
    if let Err(e) = cosigned.note.add_signature(signature) {
        return Outcome::Failed(format!("cosigning: {e}"));
    }
    // Durable before it leaves: what was vouched for is never forgotten.
    let record = Cosigned {
        verifier_key: key_text.clone(),
        checkpoint: checkpoint.to_string(),
        at_ms: now,
    };
    if let Err(e) = Cluster::lock(&c.inner.witness)
        .witnessed
        .record(&peer.kernel_id, record)
    {
        return Outcome::Failed(e);
    }
    let url = format!("{base}/v1/checkpoint/cosignatures");
    let body = json!({ "witness_key": own.to_string(), "checkpoint": cosigned.to_string() });
    match http.post(&url).bearer_auth(token).json(&body).send().await {
        Ok(r) if r.status().is_success() => {
            tracing::info!(cluster = %c.id(), peer = %peer.kernel_id, size = new_size, "cosigned the peer's checkpoint");
            Outcome::Cosigned
        }
        Ok(r) => {
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            Outcome::Failed(format!("POST {url}: {status}: {}", text.trim()))
        }
        Err(e) => Outcome::Failed(format!("POST {url}: {e}")),
    }
}

/// What the last checkpoint this instance cosigned for a peer says about
/// the peer's new (signature-checked) one.
#[derive(Debug, PartialEq)]
enum Against {
    /// Cosign it: the first one seen, or the same tree served without this
    /// instance's cosignature (the peer restarted, or a delivery failed).
    Cosign,
    /// The same tree, already carrying this instance's cosignature.
    Unchanged,
    /// A larger tree: cosign it once a consistency proof from the tree of
    /// `from` entries to it verifies.
    Grown { from: u64 },
}

/// Compares `checkpoint`, signed under `key_text`, with `last`, what this
/// instance cosigned for `peer` before; `Err` is the outcome when it may
/// not be cosigned (another key, a tree that shrank or changed).
fn against(
    last: Option<&Cosigned>,
    peer: &str,
    key_text: &str,
    checkpoint: &SignedCheckpoint,
    own: &VerifierKey,
) -> Result<Against, Outcome> {
    let Some(last) = last else {
        return Ok(Against::Cosign);
    };
    let (new_size, new_root) = (checkpoint.checkpoint.size, checkpoint.checkpoint.root);
    if last.verifier_key != key_text {
        return Err(Outcome::Refused(format!(
            "its verifier key is now {key_text}; this instance cosigned its checkpoints under {} (remove {peer} from {FILE} to witness it anew)",
            last.verifier_key
        )));
    }
    let old = SignedCheckpoint::parse(&last.checkpoint)
        .map_err(|e| Outcome::Failed(format!("{FILE}: {e}")))?
        .checkpoint;
    if new_size < old.size {
        return Err(Outcome::Refused(format!(
            "its checkpoint of {new_size} entries goes back from the {} this instance cosigned",
            old.size
        )));
    }
    if new_size == old.size {
        if new_root != old.root {
            return Err(Outcome::Refused(format!(
                "its checkpoint of {new_size} entries has another root than the one this instance cosigned: a rewritten history"
            )));
        }
        let carries_own = checkpoint
            .note
            .signatures()
            .iter()
            .any(|s| (s.name.as_str(), s.key_id) == (own.name(), own.id()));
        return Ok(if carries_own {
            Against::Unchanged
        } else {
            Against::Cosign
        });
    }
    Ok(if old.size == 0 {
        Against::Cosign
    } else {
        Against::Grown { from: old.size }
    })
}

/// Adds the cosignature in `checkpoint` (this ledger's checkpoint as a peer
/// cosigned it) by `witness_key`, which must be another member's witness
/// key (see the module doc). Answers the checkpoint's size and how many
/// cosignatures it now carries.
pub fn accept(c: &Cluster, witness_key: &str, checkpoint: &str) -> Result<Value, ClusterError> {
    let witness = VerifierKey::parse(witness_key)
        .map_err(|e| ClusterError::Settings(format!("witness_key: {e}")))?;
    let member = Cluster::lock(&c.inner.witness)
        .members
        .iter()
        .find(|(_, k)| k.to_string() == witness.to_string())
        .map(|(id, _)| id.clone())
        .ok_or_else(|| {
            ClusterError::NotWitness(format!(
                "{witness_key} is not the witness key of another member of cluster {}",
                c.id()
            ))
        })?;
    let cosigned = SignedCheckpoint::parse(checkpoint)
        .map_err(|e| ClusterError::Settings(format!("checkpoint: {e}")))?;
    let signature = cosigned
        .note
        .signatures()
        .iter()
        .find(|s| (s.name.as_str(), s.key_id) == (witness.name(), witness.id()))
        .cloned()
        .ok_or_else(|| {
            ClusterError::Settings(format!(
                "checkpoint: it carries no signature by {witness_key}"
            ))
        })?;
    let size = cosigned.checkpoint.size;
    let served = c
        .ledger()
        .add_cosignature(size, &witness, signature)
        .map_err(|e| ClusterError::Cosignature(e.to_string()))?;
    tracing::info!(cluster = %c.id(), witness = %member, size, "added a peer's cosignature");
    Ok(json!({
        "size": size,
        "witness": member,
        "signatures": served.note.signatures().len(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_cosigned_survives_a_reload_and_an_unreadable_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Witnessed::load(dir.path()).unwrap();
        assert!(w.peers.is_empty(), "no file yet: nothing cosigned");
        let cosigned = Cosigned {
            verifier_key: "kernels/prod-002+01020304+AQ".into(),
            checkpoint: "kernels/prod-002\n3\nroot\n".into(),
            at_ms: 7,
        };
        w.record("prod-002", cosigned.clone()).unwrap();
        let again = Witnessed::load(dir.path()).unwrap();
        assert_eq!(again.peers.get("prod-002"), Some(&cosigned));
        std::fs::write(dir.path().join(FILE), "{not json").unwrap();
        let e = Witnessed::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains(FILE) && e.contains("not a record"), "{e}");
    }

    mod against {
        use super::super::*;
        use crate::checkpoint::Checkpoint;
        use crate::merkle::Hash;
        use crate::note::{KeyKind, SignerKey};

        fn key(name: &str) -> SignerKey {
            SignerKey::generate(name, KeyKind::Ed25519).unwrap()
        }

        fn signed(key: &SignerKey, size: u64, root: u8) -> SignedCheckpoint {
            Checkpoint::new(key.name(), size, Hash([root; 32]))
                .sign(key)
                .unwrap()
        }

        fn cosigned(key: &SignerKey, size: u64, root: u8) -> Cosigned {
            Cosigned {
                verifier_key: key.verifier().to_string(),
                checkpoint: signed(key, size, root).to_string(),
                at_ms: 0,
            }
        }

        fn refusal(result: Result<Against, Outcome>) -> String {
            match result {
                Err(Outcome::Refused(why)) => why,
                other => panic!("expected a refusal, got {other:?}"),
            }
        }

        #[test]
        fn a_peer_seen_first_or_grown_is_cosigned_after_its_proof() {
            let (peer, own) = (key("kernels/peer"), key("kernels/own").verifier());
            let text = peer.verifier().to_string();
            let new = signed(&peer, 20, 2);
            assert_eq!(
                against(None, "peer", &text, &new, &own),
                Ok(Against::Cosign)
            );
            let last = cosigned(&peer, 10, 1);
            assert_eq!(
                against(Some(&last), "peer", &text, &new, &own),
                Ok(Against::Grown { from: 10 })
            );
            // From an empty tree nothing needs proving.
            let empty = cosigned(&peer, 0, 0);
            assert_eq!(
                against(Some(&empty), "peer", &text, &new, &own),
                Ok(Against::Cosign)
            );
            // The same tree served without this instance's cosignature.
            assert_eq!(
                against(Some(&cosigned(&peer, 20, 2)), "peer", &text, &new, &own),
                Ok(Against::Cosign)
            );
        }

        #[test]
        fn another_key_a_shrunk_or_a_changed_tree_is_refused() {
            let (peer, own) = (key("kernels/peer"), key("kernels/own").verifier());
            let last = cosigned(&peer, 10, 1);
            let text = peer.verifier().to_string();
            // The same name under another key.
            let other = key("kernels/peer");
            let why = refusal(against(
                Some(&last),
                "peer",
                &other.verifier().to_string(),
                &signed(&other, 20, 2),
                &own,
            ));
            assert!(why.contains("verifier key is now"), "{why}");
            let why = refusal(against(
                Some(&last),
                "peer",
                &text,
                &signed(&peer, 9, 1),
                &own,
            ));
            assert!(why.contains("goes back from the 10"), "{why}");
            let why = refusal(against(
                Some(&last),
                "peer",
                &text,
                &signed(&peer, 10, 7),
                &own,
            ));
            assert!(why.contains("rewritten history"), "{why}");
        }
    }
}
