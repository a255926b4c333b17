//! `kernels health`: the daily health check of the playbook (play 3.1)
//! against a running service.
//!
//! Checks: the process answers and the ledger accepts entries; the kernel's
//! state is IDLE or HALTED (both pass; HALTED is said first, in capitals);
//! the whole stored chain verifies; the rotator is not failing (a failing
//! rotator is DEGRADED, not UNHEALTHY). The decision distribution and the
//! time since the last entry are reported as the play does, for
//! information. State and integrity need an auditor or operator token
//! (`KERNELS_TOKEN`): without one the check cannot be made and says so.
//!
//! Exit codes: 0 HEALTHY; 1 DEGRADED or UNHEALTHY; 2 the check could not be
//! made (no or a refused token, service unreachable, an error).

use clap::Args;
use serde_json::{Value, json};

use super::client::{Client, ServerArgs, print, runtime};
use super::{CliError, CliResult, EXIT_NEGATIVE, EXIT_OK, EXIT_UNUSABLE};
use crate::ledger::{Clock, SystemClock};

/// Arguments of `kernels health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Server.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// The verdict of the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Every check passed.
    Healthy,
    /// Decisions are made and recorded, but the rotator is failing.
    Degraded,
    /// The service cannot decide or its chain does not verify.
    Unhealthy,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Healthy => "HEALTHY",
            Verdict::Degraded => "DEGRADED",
            Verdict::Unhealthy => "UNHEALTHY",
        }
    }
}

/// The play's checks over what the service answered: `/health` and `/ready`
/// codes, `GET /v1/status`, `POST /v1/verify`; `now_ms` for the age of the
/// last entry.
pub(super) fn assess(
    live: bool,
    ready: bool,
    status: &Value,
    verify: &Value,
    now_ms: u64,
) -> Value {
    let state = status["state"].as_str().unwrap_or("?");
    let rotation_failing = status["rotation"]["failing"].as_bool().unwrap_or(false);
    let by_decision = &status["counters"]["by_decision"];
    let (allow, deny) = (
        by_decision["ALLOW"].as_u64().unwrap_or(0),
        by_decision["DENY"].as_u64().unwrap_or(0),
    );
    let last_hours = status["last_entry_ts_ms"]
        .as_u64()
        .map(|ts| now_ms.saturating_sub(ts) as f64 / 3_600_000.0);
    let integrity = verify["valid"].as_bool().unwrap_or(false);
    let checks = json!([
        {"name": "service", "passed": live && ready, "live": live, "ready": ready},
        {"name": "kernel_state", "passed": state == "IDLE" || state == "HALTED", "value": state},
        {"name": "audit_integrity", "passed": integrity,
         "entries_verified": verify["entries_verified"], "errors": verify["errors"].as_array().map_or(0, Vec::len)},
        {"name": "rotation", "passed": !rotation_failing, "degrades": true,
         "enabled": status["rotation"]["enabled"], "failing": rotation_failing,
         "last_error": status["rotation"]["last_error"]},
        {"name": "decision_distribution", "passed": true, "informational": true,
         "allow": allow, "deny": deny, "ratio": allow as f64 / deny.max(1) as f64},
        {"name": "recent_activity", "passed": last_hours.is_some_and(|h| h < 24.0), "informational": true,
         "last_activity_hours": last_hours},
    ]);
    let failed = |name: &str| {
        checks
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["name"] == name && c["passed"] == false)
    };
    let verdict = if failed("service") || failed("kernel_state") || failed("audit_integrity") {
        Verdict::Unhealthy
    } else if failed("rotation") {
        Verdict::Degraded
    } else {
        Verdict::Healthy
    };
    json!({
        "health": verdict.as_str(),
        "healthy": verdict == Verdict::Healthy,
        "live": live,
        "ready": ready,
        "halted": state == "HALTED",
        "rotation_failing": rotation_failing,
        "kernel_id": status["kernel_id"],
        "checks": checks,
        "status": status,
    })
}

/// `kernels health`.
pub(super) fn health(args: HealthArgs) -> CliResult {
    let client = Client::new(&args.server)?;
    runtime()?.block_on(async {
        let get = reqwest::Method::GET;
        let (live, _) = client.call(get.clone(), "/health", None).await?;
        let (ready, _) = client.call(get.clone(), "/ready", None).await?;
        let (live, ready) = (live == 200, ready == 200);
        let (code, status) = client.call(get, "/v1/status", None).await?;
        if code != 200 {
            let why = status["error"].as_str().unwrap_or("no answer").to_owned();
            let report = json!({"health": "UNKNOWN", "live": live, "ready": ready,
                "reason": format!("cannot check the kernel's state: the service answered {code} ({why})")});
            print(&report, args.server.json, |_| {
                println!("live: {live}");
                println!("ready: {ready}");
            });
            return Err(CliError {
                message: format!(
                    "cannot check the kernel's state or chain: /v1/status answered {code} ({why}); set KERNELS_TOKEN to an auditor or operator token"
                ),
                code: EXIT_UNUSABLE,
            });
        }
        let (code, verify) = client
            .call(reqwest::Method::POST, "/v1/verify", Some(json!({})))
            .await?;
        if code != 200 {
            return Err(CliError::unusable(format!(
                "cannot verify the chain: /v1/verify answered {code}"
            )));
        }
        let report = assess(live, ready, &status, &verify, SystemClock.now_ms());
        print(&report, args.server.json, print_text);
        Ok(if report["healthy"] == true {
            EXIT_OK
        } else {
            EXIT_NEGATIVE
        })
    })
}

fn print_text(r: &Value) {
    let s = &r["status"];
    if r["halted"] == true {
        let h = &s["last_halt"];
        println!(
            "HALTED since entry {} by {}: {} (requests are refused until an operator recovers)",
            h["seq"],
            h["actor"].as_str().unwrap_or("?"),
            h["reason"].as_str().unwrap_or("?")
        );
    }
    println!(
        "kernel: {} ({}), state {}",
        s["kernel_id"].as_str().unwrap_or("?"),
        s["variant"].as_str().unwrap_or("?"),
        s["state"].as_str().unwrap_or("?")
    );
    println!(
        "entries: {}, root {}",
        s["ledger_length"],
        s["root_hash"].as_str().unwrap_or("?")
    );
    println!("policy version: {}", s["policy_version"]);
    for c in r["checks"].as_array().into_iter().flatten() {
        let mark = match (c["passed"].as_bool(), c["informational"].as_bool()) {
            (_, Some(true)) => "info",
            (Some(true), _) => "ok",
            _ if c["degrades"] == true => "DEGRADED",
            _ => "FAILED",
        };
        let detail = match c["name"].as_str() {
            Some("service") => format!("live {}, ready {}", c["live"], c["ready"]),
            Some("kernel_state") => c["value"].as_str().unwrap_or("?").to_owned(),
            Some("audit_integrity") => format!(
                "{} entries verified, {} errors",
                c["entries_verified"], c["errors"]
            ),
            Some("rotation") if c["enabled"] != true => "off (no bucket)".into(),
            Some("rotation") => match c["last_error"].as_str() {
                Some(e) if c["failing"] == true => format!("failing: {e}"),
                _ => "ok".into(),
            },
            Some("decision_distribution") => {
                format!("{} ALLOW, {} DENY", c["allow"], c["deny"])
            }
            Some("recent_activity") => match c["last_activity_hours"].as_f64() {
                Some(h) => format!("last entry {h:.1} h ago"),
                None => "no entries".into(),
            },
            _ => String::new(),
        };
        println!(
            "  {:<22} {mark:<8} {detail}",
            c["name"].as_str().unwrap_or("?")
        );
    }
    println!("{}", r["health"].as_str().unwrap_or("?"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: &str, failing: bool) -> Value {
        json!({"kernel_id": "k", "state": state, "last_entry_ts_ms": 1_000,
               "counters": {"by_decision": {"ALLOW": 6, "DENY": 2}},
               "rotation": {"enabled": true, "failing": failing}})
    }

    #[test]
    fn the_play_decides_healthy_degraded_or_unhealthy() {
        let valid = json!({"valid": true, "entries_verified": 9, "errors": []});
        let invalid = json!({"valid": false, "entries_verified": 9, "errors": [{"index": 3}]});
        let verdict = |live, ready, s: &Value, v: &Value| {
            assess(live, ready, s, v, 2_000)["health"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            verdict(true, true, &status("IDLE", false), &valid),
            "HEALTHY"
        );
        assert_eq!(
            verdict(true, true, &status("HALTED", false), &valid),
            "HEALTHY",
            "a halt is a decision the kernel made, not a fault"
        );
        assert_eq!(
            verdict(true, true, &status("IDLE", true), &valid),
            "DEGRADED"
        );
        assert_eq!(
            verdict(true, true, &status("IDLE", false), &invalid),
            "UNHEALTHY"
        );
        assert_eq!(
            verdict(true, false, &status("IDLE", false), &valid),
            "UNHEALTHY"
        );
        assert_eq!(
            verdict(true, true, &status("BOOTING", false), &valid),
            "UNHEALTHY"
        );
        let r = assess(true, true, &status("HALTED", false), &valid, 2_000);
        assert_eq!(r["halted"], true);
        assert_eq!(r["checks"][4]["ratio"], 3.0);
        assert_eq!(r["checks"][5]["passed"], true);
    }
}
