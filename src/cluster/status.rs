//! `kernels cluster status`: every member the control plane lists, asked
//! over HTTP (`/ready`, `/v1/status`, `/v1/checkpoint`), then judged as a
//! whole — healthy, and on one policy?
//!
//! The reference policy is the shared policy object's, when there is a
//! valid one; else the policy most reachable members run. A member on
//! another policy is flagged as drift (e.g. one given a policy by hand with
//! `PUT /v1/policy`). A member is healthy when it answers, is ready, is
//! IDLE or HALTED (a halt is said first, as `kernels health` does), reaches
//! the control plane itself and has not refused the shared policy.
//! Gathering does I/O; [`evaluate`] and [`render`] are pure.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::member::MemberRecord;
use super::policy::PolicyObject;
use crate::error_text;

/// What one member answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemberView {
    /// Kernel id.
    pub kernel_id: String,
    /// Advertised URL.
    pub advertise_url: String,
    /// When it last started (member object).
    pub started_at: u64,
    /// Whether it answered at all.
    pub reachable: bool,
    /// Whether `/ready` answered 200.
    pub ready: bool,
    /// IDLE, HALTED, …
    pub state: Option<String>,
    /// Why it is halted, when it is.
    pub halt_reason: Option<String>,
    /// Durable entries.
    pub ledger_length: Option<u64>,
    /// Tree size of its latest signed checkpoint (`null` until the member
    /// serves `GET /v1/checkpoint`).
    pub checkpoint_size: Option<u64>,
    /// Active policy hash.
    pub policy_hash: Option<String>,
    /// Active policy version.
    pub policy_version: Option<u64>,
    /// Its last rotation (`null`: none yet).
    pub last_rotation: Option<Value>,
    /// Whether it reaches the control plane itself (`null`: unknown).
    pub control_plane_reachable: Option<bool>,
    /// Whether it refuses the shared policy object.
    pub policy_rejected: bool,
    /// Whether it runs another policy than the reference.
    pub drift: bool,
    /// The peers whose checkpoint it refuses to cosign, and why
    /// (`prod-003: …`): a peer that rewrote its history, or forged one.
    pub witness_refusals: Vec<String>,
    /// What is wrong with it (empty: healthy).
    pub problems: Vec<String>,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Cluster id.
    pub cluster_id: String,
    /// Where the control plane is.
    pub control_plane: String,
    /// The shared policy object, if any.
    pub shared_policy: Option<Value>,
    /// The policy hash every member should run (`null`: none to compare with).
    pub reference_policy_hash: Option<String>,
    /// Every member.
    pub members: Vec<MemberView>,
    /// Member objects that could not be read.
    pub unreadable_members: Vec<String>,
    /// Every member healthy.
    pub healthy: bool,
    /// Every member on the reference policy.
    pub one_policy: bool,
    /// What is wrong, member by member.
    pub problems: Vec<String>,
}

/// Why the status cannot be gathered (the token is refused).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unusable(pub String);

/// Asks `member` over HTTP with `token` (auditor or operator).
pub async fn ask(
    http: &reqwest::Client,
    member: &MemberRecord,
    token: &str,
) -> Result<MemberView, Unusable> {
    let base = member.advertise_url.trim_end_matches('/');
    let mut view = MemberView {
        kernel_id: member.kernel_id.clone(),
        advertise_url: member.advertise_url.clone(),
        started_at: member.started_at,
        ..MemberView::default()
    };
    let ready = http.get(format!("{base}/ready")).send().await;
    match ready {
        Ok(r) => {
            view.reachable = true;
            view.ready = r.status().as_u16() == 200;
        }
        Err(e) => {
            view.problems
                .push(format!("unreachable: {}", error_text::chain(&e)));
            return Ok(view);
        }
    }
    let status = http
        .get(format!("{base}/v1/status"))
        .bearer_auth(token)
        .send()
        .await;
    let status = match status {
        Ok(r) if matches!(r.status().as_u16(), 401 | 403) => {
            return Err(Unusable(format!(
                "{} refused the token ({}): cluster status needs an auditor or operator token in KERNELS_TOKEN",
                member.kernel_id,
                r.status().as_u16()
            )));
        }
        Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
        Ok(r) => {
            view.problems
                .push(format!("GET /v1/status answered {}", r.status().as_u16()));
            None
        }
        Err(e) => {
            view.problems
                .push(format!("GET /v1/status failed: {}", error_text::chain(&e)));
            None
        }
    };
    if let Some(s) = status {
        view.state = s["state"].as_str().map(str::to_owned);
        view.halt_reason = s["last_halt"]["reason"].as_str().map(str::to_owned);
        view.ledger_length = s["ledger_length"].as_u64();
        view.policy_hash = s["policy_hash"].as_str().map(str::to_owned);
        view.policy_version = s["policy_version"].as_u64();
        view.last_rotation = Some(s["last_rotation"].clone()).filter(|v| !v.is_null());
        view.control_plane_reachable = s["cluster"]["control_plane"]["reachable"].as_bool();
        view.policy_rejected = !s["cluster"]["policy"]["rejected"].is_null();
        if let Some(peers) = s["cluster"]["witness"]["peers"].as_object() {
            for (peer, v) in peers {
                if let Some(why) = v["refused"].as_str() {
                    view.witness_refusals.push(format!("{peer}: {why}"));
                    view.problems
                        .push(format!("refuses to cosign {peer}'s checkpoint: {why}"));
                }
            }
        }
        if s["cluster"]["member"] == Value::Bool(false) {
            view.problems
                .push("it has left the cluster but its member object is listed".into());
        }
    }
    view.checkpoint_size = checkpoint_size(http, base, token).await;
    Ok(view)
}

/// The tree size of the member's signed checkpoint (its second line), when
/// it serves one.
async fn checkpoint_size(http: &reqwest::Client, base: &str, token: &str) -> Option<u64> {
    let r = http
        .get(format!("{base}/v1/checkpoint"))
        .bearer_auth(token)
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.text().await.ok()?.lines().nth(1)?.trim().parse().ok()
}

/// An HTTP client for asking members (short timeouts: a hung member is
/// reported, not waited for).
pub fn http_client() -> Result<reqwest::Client, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(3))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// Judges the members' answers against the shared policy (see the module doc).
pub fn evaluate(
    cluster_id: &str,
    control_plane: &str,
    shared: Option<&PolicyObject>,
    mut members: Vec<MemberView>,
    unreadable_members: Vec<String>,
) -> Report {
    let shared_hash = shared.and_then(|o| o.policy.as_ref().ok().map(|p| p.hash()));
    let reference = shared_hash.clone().or_else(|| {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for m in &members {
            if let Some(h) = &m.policy_hash {
                *counts.entry(h).or_default() += 1;
            }
        }
        let best = counts.values().copied().max()?;
        let mut top = counts.iter().filter(|(_, n)| **n == best);
        let first = top.next()?;
        // A tie has no majority: nothing to call the reference.
        top.next().is_none().then(|| first.0.to_string())
    });
    let distinct: std::collections::BTreeSet<&str> = members
        .iter()
        .filter_map(|m| m.policy_hash.as_deref())
        .collect();
    let distinct_count = distinct.len();
    for m in &mut members {
        if m.reachable && !m.ready {
            m.problems
                .push("not ready (GET /ready did not answer 200)".into());
        }
        match m.state.as_deref() {
            Some("IDLE") | Some("HALTED") | None => {}
            Some(other) => m.problems.push(format!("state {other}")),
        }
        if m.control_plane_reachable == Some(false) {
            m.problems.push("it cannot reach the control plane".into());
        }
        if m.policy_rejected {
            m.problems
                .push("it refuses the shared policy object (invalid)".into());
        }
        if let Some(hash) = &m.policy_hash {
            m.drift = match &reference {
                Some(r) => hash != r,
                None => distinct_count > 1,
            };
            if m.drift {
                m.problems.push(match &reference {
                    Some(r) => {
                        format!("policy drift: runs {} instead of {}", short(hash), short(r))
                    }
                    None => format!("policy drift: runs {} (no majority policy)", short(hash)),
                });
            }
        }
    }
    let mut problems: Vec<String> = members
        .iter()
        .flat_map(|m| {
            m.problems
                .iter()
                .map(move |p| format!("{}: {p}", m.kernel_id))
        })
        .collect();
    problems.extend(unreadable_members.iter().cloned());
    if members.is_empty() {
        problems.push(format!("no members are listed at {control_plane}"));
    }
    if let Some(Err(e)) = shared.map(|o| &o.policy) {
        problems.push(format!("the shared policy object is invalid: {e}"));
    }
    let healthy = !members.is_empty()
        && unreadable_members.is_empty()
        && members.iter().all(|m| {
            m.reachable
                && m.ready
                && m.control_plane_reachable != Some(false)
                && !m.policy_rejected
                && m.problems.iter().all(|p| p.starts_with("policy drift"))
        });
    let one_policy = members.iter().all(|m| !m.drift && m.policy_hash.is_some());
    Report {
        cluster_id: cluster_id.to_owned(),
        control_plane: control_plane.to_owned(),
        shared_policy: shared.map(|o| o.describe("policy.yaml")),
        reference_policy_hash: reference,
        members,
        unreadable_members,
        healthy,
        one_policy,
        problems,
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// The report in words: halts said first, then every member, then the problems.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let verdict = match (report.healthy, report.one_policy) {
        (true, true) => "HEALTHY, one policy",
        (true, false) => "POLICY DRIFT",
        (false, _) => "UNHEALTHY",
    };
    out.push_str(&format!(
        "cluster {}: {verdict} ({} member(s); control plane {})\n",
        report.cluster_id,
        report.members.len(),
        report.control_plane
    ));
    for m in report
        .members
        .iter()
        .filter(|m| m.state.as_deref() == Some("HALTED"))
    {
        out.push_str(&format!(
            "  HALTED: {} ({})\n",
            m.kernel_id,
            m.halt_reason.as_deref().unwrap_or("no reason recorded")
        ));
    }
    out.push_str(&format!(
        "  policy: {}\n",
        match &report.reference_policy_hash {
            Some(h) if report.shared_policy.is_some() => format!("{h} (shared policy object)"),
            Some(h) => format!("{h} (most members; no valid shared policy object)"),
            None => "no reference (no shared policy object, no majority)".into(),
        }
    ));
    for m in &report.members {
        let dash = || "-".to_owned();
        out.push_str(&format!(
            "  {:<12} {:<28} {:<11} {:<9} {:<8} entries {:<8} checkpoint {:<8} policy {}{} last rotation {}\n",
            m.kernel_id,
            m.advertise_url,
            if m.reachable { "reachable" } else { "UNREACHABLE" },
            if m.ready { "ready" } else { "NOT READY" },
            m.state.as_deref().unwrap_or("-"),
            m.ledger_length.map_or_else(dash, |n| n.to_string()),
            m.checkpoint_size.map_or_else(dash, |n| n.to_string()),
            m.policy_hash.as_deref().map_or("-", short),
            if m.drift { " DRIFT" } else { "" },
            m.last_rotation
                .as_ref()
                .and_then(|r| r["to_seq"].as_u64())
                .map_or_else(dash, |s| format!("to seq {s}")),
        ));
    }
    if !report.problems.is_empty() {
        out.push_str("problems:\n");
        for p in &report.problems {
            out.push_str(&format!("  {p}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, hash: &str) -> MemberView {
        MemberView {
            kernel_id: id.into(),
            advertise_url: format!("http://{id}:8080"),
            reachable: true,
            ready: true,
            state: Some("IDLE".into()),
            policy_hash: Some(hash.into()),
            control_plane_reachable: Some(true),
            ..MemberView::default()
        }
    }

    #[test]
    fn drift_is_against_the_majority_without_a_shared_object() {
        let members = vec![
            member("p-1", "aaa"),
            member("p-2", "bbb"),
            member("p-3", "aaa"),
        ];
        let r = evaluate("p", "s3://b/", None, members, vec![]);
        assert_eq!(r.reference_policy_hash.as_deref(), Some("aaa"));
        assert!(r.healthy && !r.one_policy);
        assert_eq!(
            r.members.iter().map(|m| m.drift).collect::<Vec<_>>(),
            [false, true, false]
        );
        assert!(
            r.problems[0].starts_with("p-2: policy drift: runs bbb instead of aaa"),
            "{:?}",
            r.problems
        );
        assert!(render(&r).contains("POLICY DRIFT"));

        // A tie: no reference, every member flagged.
        let r = evaluate(
            "p",
            "s3://b/",
            None,
            vec![member("p-1", "a"), member("p-2", "b")],
            vec![],
        );
        assert_eq!(r.reference_policy_hash, None);
        assert!(r.members.iter().all(|m| m.drift) && !r.one_policy);
    }

    #[test]
    fn the_shared_object_is_the_reference_and_health_is_everyones() {
        let policy = crate::kernel::Policy::from_yaml("allowed_actors: [a]\n").unwrap();
        let shared = PolicyObject {
            sha256: "00".into(),
            etag: None,
            version_id: None,
            revision: None,
            reason: None,
            by: None,
            policy: Ok(policy.clone()),
        };
        let h = policy.hash();
        let members = vec![member("p-1", &h), member("p-2", &h), member("p-3", "other")];
        let r = evaluate("p", "s3://b/", Some(&shared), members, vec![]);
        assert_eq!(r.reference_policy_hash.as_deref(), Some(h.as_str()));
        assert!(r.members[2].drift && !r.one_policy && r.healthy);

        let mut down = member("p-2", &h);
        down.reachable = false;
        down.ready = false;
        down.policy_hash = None;
        let mut halted = member("p-1", &h);
        halted.state = Some("HALTED".into());
        halted.halt_reason = Some("incident 12".into());
        let r = evaluate("p", "s3://b/", Some(&shared), vec![halted, down], vec![]);
        assert!(!r.healthy && !r.one_policy);
        let text = render(&r);
        assert!(text.starts_with("cluster p: UNHEALTHY"), "{text}");
        assert!(text.contains("HALTED: p-1 (incident 12)"), "{text}");

        let mut cut_off = member("p-1", &h);
        cut_off.control_plane_reachable = Some(false);
        let r = evaluate("p", "s3://b/", Some(&shared), vec![cut_off], vec![]);
        assert!(!r.healthy && r.one_policy);
        assert!(r.problems[0].contains("cannot reach the control plane"));

        let r = evaluate("p", "s3://b/", None, vec![], vec![]);
        assert!(!r.healthy, "no members is not a healthy cluster");
    }
}
