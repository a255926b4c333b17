//! `kernels cluster …`: the operator's side of a cluster of kernels.
//!
//! Commands that act on the control plane work offline with S3 credentials
//! and the `cluster:` settings (`--config`, `KERNELS_CLUSTER_*`, defaulting
//! to `rotation`'s S3 settings): `policy put|show`, `halt`, `recover`,
//! `status`, `haproxy-config`, `forget`. `halt` and `recover` also call
//! every member directly (`KERNELS_TOKEN`, an operator token); `status`
//! asks every member (an auditor or operator token). `leave` talks to one
//! running member (`--server`), which removes its own member object and
//! records the leave.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client::{Client, ServerArgs, expect_ok, print, runtime};
use super::serve::ConfigArgs;
use super::{CliError, CliResult, EXIT_NEGATIVE, EXIT_OK, read_input};
use crate::cluster::haproxy::{self, HaproxyOptions, Target};
use crate::cluster::member::{self, MemberRecord};
use crate::cluster::objects::ControlPlane;
use crate::cluster::{halt, policy, status};
use crate::config::{ClusterConfig, parse_duration};
use crate::kernel::Policy;
use crate::ledger::{Clock, SystemClock};

/// `kernels cluster` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The shared policy: put a file for every member, or show it.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Halt every member: the halt flag object, then a direct call to each
    /// (exit 1 when a member was not reached: its own poller halts it).
    Halt(FlagArgs),
    /// Clear the halt flag and recover every member the cluster halted.
    Recover(FlagArgs),
    /// Every member: reachable, ready, state, entries, checkpoint, policy
    /// (drift flagged), last rotation. Exit 0 only when all are healthy and
    /// on one policy, 1 otherwise, 2 when it cannot check.
    Status(OfflineArgs),
    /// Print an HAProxy configuration for the members.
    HaproxyConfig(HaproxyArgs),
    /// Take the running member at --server out of its cluster (recorded).
    Leave(LeaveArgs),
    /// Remove the member object of an instance that is gone for good.
    Forget(ForgetArgs),
}

/// `kernels cluster policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate FILE and write it as the cluster's shared policy; every
    /// member applies it within one poll interval (recorded on each).
    Put {
        /// Policy file (YAML).
        file: PathBuf,
        /// Why (each member records it).
        #[arg(long)]
        reason: String,
        /// Who puts it (default: $USER).
        #[arg(long)]
        by: Option<String>,
        /// Settings.
        #[command(flatten)]
        offline: OfflineArgs,
    },
    /// Show the shared policy object (exit 1 when there is none or it is invalid).
    Show(OfflineArgs),
}

/// The cluster settings, and `--json`.
#[derive(Debug, Args)]
pub struct OfflineArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `kernels cluster halt|recover`.
#[derive(Debug, Args)]
pub struct FlagArgs {
    /// Why (each member records it).
    #[arg(long)]
    pub reason: String,
    /// Who does it (default: $USER).
    #[arg(long)]
    pub by: Option<String>,
    /// Settings.
    #[command(flatten)]
    pub offline: OfflineArgs,
}

/// Arguments of `kernels cluster haproxy-config`.
#[derive(Debug, Args)]
pub struct HaproxyArgs {
    /// Where HAProxy listens for agents.
    #[arg(long, default_value = "*:8080")]
    pub bind: String,
    /// Interval between health checks of each member.
    #[arg(long, default_value = "2s")]
    pub check_interval: String,
    /// The runtime API socket to declare (for `add server` without a reload).
    #[arg(long)]
    pub stats_socket: Option<String>,
    /// Print only the runtime API line that adds this member to a running
    /// HAProxy (`… | socat stdio /run/haproxy/admin.sock`).
    #[arg(long, value_name = "KERNEL_ID", conflicts_with = "del_server")]
    pub add_server: Option<String>,
    /// Print only the runtime API line that takes this member out.
    #[arg(long, value_name = "KERNEL_ID")]
    pub del_server: Option<String>,
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Arguments of `kernels cluster leave`.
#[derive(Debug, Args)]
pub struct LeaveArgs {
    /// Why (recorded in the member's ledger).
    #[arg(long)]
    pub reason: String,
    /// The member.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Arguments of `kernels cluster forget`.
#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// The member's kernel id.
    #[arg(value_name = "KERNEL_ID")]
    pub member: String,
    /// Settings.
    #[command(flatten)]
    pub offline: OfflineArgs,
}

/// Runs a `kernels cluster` command.
pub(super) fn cluster(cmd: ClusterCommand) -> CliResult {
    match cmd {
        ClusterCommand::Policy(PolicyCommand::Put {
            file,
            reason,
            by,
            offline,
        }) => policy_put(&file, &reason, by, &offline),
        ClusterCommand::Policy(PolicyCommand::Show(offline)) => policy_show(&offline),
        ClusterCommand::Halt(args) => set_flag(&args, true),
        ClusterCommand::Recover(args) => set_flag(&args, false),
        ClusterCommand::Status(offline) => cluster_status(&offline),
        ClusterCommand::HaproxyConfig(args) => haproxy_config(&args),
        ClusterCommand::Leave(args) => leave(&args),
        ClusterCommand::Forget(args) => forget(&args),
    }
}

fn settings(config: &ConfigArgs) -> Result<ClusterConfig, CliError> {
    config.load(None)?.cluster.ok_or_else(|| {
        CliError::unusable(
            "no cluster is configured: set cluster.id (KERNELS_CLUSTER_ID) and its bucket (cluster.bucket or rotation.bucket)",
        )
    })
}

async fn plane(config: &ClusterConfig) -> ControlPlane {
    ControlPlane::connect(config, Duration::from_secs(30)).await
}

fn unusable(e: impl std::fmt::Display) -> CliError {
    CliError::unusable(e.to_string())
}

fn who(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok())
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| "operator".into())
}

fn policy_put(file: &PathBuf, reason: &str, by: Option<String>, args: &OfflineArgs) -> CliResult {
    if reason.trim().is_empty() {
        return Err(CliError::unusable("a non-empty --reason is required"));
    }
    let text = read_input(file)?;
    let parsed = Policy::from_yaml(&text).map_err(|e| CliError {
        message: format!(
            "{}: {e}; nothing was written (every member would refuse it)",
            file.display()
        ),
        code: EXIT_NEGATIVE,
    })?;
    let config = settings(&args.config)?;
    runtime()?.block_on(async {
        let plane = plane(&config).await;
        let revision = policy::put(&plane, &text, reason, &who(by))
            .await
            .map_err(unusable)?;
        let answer = json!({
            "cluster_id": config.id,
            "key": plane.policy_key(),
            "policy_hash": parsed.hash(),
            "revision": revision,
            "reason": reason,
            "poll_interval_ms": config.poll_interval.as_millis() as u64,
        });
        print(&answer, args.json, |_| {
            println!(
                "shared policy of cluster {} is now {} (revision {revision})",
                config.id,
                parsed.hash()
            );
            println!(
                "every member applies it within one poll interval ({:?}) and records it",
                config.poll_interval
            );
        });
        Ok(EXIT_OK)
    })
}

fn policy_show(args: &OfflineArgs) -> CliResult {
    let config = settings(&args.config)?;
    runtime()?.block_on(async {
        let plane = plane(&config).await;
        let Some(object) = policy::read(&plane).await.map_err(unusable)? else {
            return Err(CliError {
                message: format!(
                    "cluster {} has no shared policy object ({})",
                    config.id,
                    plane.policy_key()
                ),
                code: EXIT_NEGATIVE,
            });
        };
        let mut answer = object.describe(&plane.policy_key());
        answer["policy"] = object
            .policy
            .as_ref()
            .map(Policy::to_json)
            .unwrap_or(Value::Null);
        answer["error"] = json!(object.policy.as_ref().err());
        print(&answer, args.json, |a| {
            println!("{}", serde_json::to_string_pretty(a).unwrap_or_default());
        });
        Ok(if object.policy.is_ok() {
            EXIT_OK
        } else {
            EXIT_NEGATIVE
        })
    })
}

/// The member records the control plane lists (unreadable ones are errors).
async fn members(plane: &ControlPlane) -> Result<Vec<MemberRecord>, CliError> {
    member::list(plane)
        .await
        .map_err(unusable)?
        .into_iter()
        .map(|m| m.map_err(unusable))
        .collect()
}

/// `halt` (`halted`) or `recover`: the flag, then every member directly.
fn set_flag(args: &FlagArgs, halted: bool) -> CliResult {
    if args.reason.trim().is_empty() {
        return Err(CliError::unusable("a non-empty --reason is required"));
    }
    let config = settings(&args.offline.config)?;
    let token = std::env::var("KERNELS_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    runtime()?.block_on(async {
        let plane = plane(&config).await;
        let flag = halt::HaltFlag {
            halted,
            reason: args.reason.clone(),
            by: Some(who(args.by.clone())),
            at_ms: SystemClock.now_ms(),
        };
        // The flag first: it alone reaches every member, within one poll.
        halt::write(&plane, &flag).await.map_err(|e| {
            CliError::unusable(format!(
                "{e}; the halt flag is not {}: no member was called (the member list is in the same store); {} each member directly with `kernels {} --server URL`",
                if halted { "set" } else { "cleared" },
                if halted { "halt" } else { "recover" },
                if halted { "halt" } else { "recover" },
            ))
        })?;
        let members = member::list(&plane).await.map_err(unusable)?;
        let http = status::http_client().map_err(CliError::unusable)?;
        let (path, done, already) = if halted {
            ("/v1/halt", "halted", "already_halted")
        } else {
            ("/v1/recover", "recovered", "not_halted")
        };
        let mut results = Vec::new();
        let mut all_reached = true;
        for m in members {
            let Ok(m) = m else {
                all_reached = false;
                results.push(json!({"member": null, "outcome": "unreadable member object", "error": m.err().map(|e| e.to_string())}));
                continue;
            };
            let (outcome, error): (&str, Option<String>) = match &token {
                None => ("not called", Some("no KERNELS_TOKEN".to_owned())),
                Some(token) => {
                    let answer = http
                        .post(format!("{}{path}", m.advertise_url.trim_end_matches('/')))
                        .bearer_auth(token)
                        .json(&json!({"reason": args.reason, "cluster": config.id}))
                        .send()
                        .await;
                    match answer {
                        Ok(r) => {
                            let code = r.status().as_u16();
                            let body: Value = r.json().await.unwrap_or(Value::Null);
                            match (code, body["code"].as_str()) {
                                (200, _) => (done, None),
                                (409, Some(c)) if c == already => (already, None),
                                _ => (
                                    "refused",
                                    Some(format!(
                                        "{code}: {}",
                                        body["error"].as_str().unwrap_or("")
                                    )),
                                ),
                            }
                        }
                        Err(e) => ("not reached", Some(e.to_string())),
                    }
                }
            };
            if outcome != done && outcome != already {
                all_reached = false;
            }
            results.push(json!({
                "member": m.kernel_id,
                "advertise_url": m.advertise_url,
                "outcome": outcome,
                "error": error,
            }));
        }
        let answer = json!({
            "cluster_id": config.id,
            "flag": flag,
            "flag_key": plane.halt_key(),
            "members": results,
            "poll_interval_ms": config.poll_interval.as_millis() as u64,
        });
        print(&answer, args.offline.json, |a| {
            println!(
                "cluster {}: halt flag {} at {}",
                config.id,
                if halted { "set" } else { "cleared" },
                plane.halt_key()
            );
            for r in a["members"].as_array().into_iter().flatten() {
                let error = r["error"].as_str().map(|e| format!(" ({e})")).unwrap_or_default();
                println!("  {}: {}{error}", r["member"].as_str().unwrap_or("?"), r["outcome"].as_str().unwrap_or("?"));
            }
            if !all_reached {
                println!(
                    "members not {done} directly follow the flag on their own within one poll interval ({:?}){}",
                    config.poll_interval,
                    if halted { "" } else { " if the cluster halted them; a member its own operator halted stays halted" }
                );
            }
        });
        Ok(if all_reached { EXIT_OK } else { EXIT_NEGATIVE })
    })
}

fn cluster_status(args: &OfflineArgs) -> CliResult {
    let config = settings(&args.config)?;
    let token = std::env::var("KERNELS_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            CliError::unusable(
                "cluster status needs an auditor or operator token in KERNELS_TOKEN to read each member's state",
            )
        })?;
    runtime()?.block_on(async {
        let plane = plane(&config).await;
        let listed = member::list(&plane).await.map_err(unusable)?;
        let shared = policy::read(&plane).await.map_err(unusable)?;
        let http = status::http_client().map_err(CliError::unusable)?;
        let mut records = Vec::new();
        let mut unreadable = Vec::new();
        for item in listed {
            match item {
                Ok(m) => records.push(m),
                Err(e) => unreadable.push(e.to_string()),
            }
        }
        let asked =
            futures::future::join_all(records.iter().map(|m| status::ask(&http, m, &token))).await;
        let views = asked
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(unusable)?;
        let report = status::evaluate(
            &config.id,
            &plane.describe(),
            shared.as_ref(),
            views,
            unreadable,
        );
        if args.json {
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
        } else {
            print!("{}", status::render(&report));
        }
        Ok(if report.healthy && report.one_policy {
            EXIT_OK
        } else {
            EXIT_NEGATIVE
        })
    })
}

fn haproxy_config(args: &HaproxyArgs) -> CliResult {
    let config = settings(&args.config)?;
    let check_interval = parse_duration(&args.check_interval)
        .map_err(|e| CliError::unusable(format!("--check-interval {e}")))?;
    if let Some(kernel_id) = &args.del_server {
        println!("{}", haproxy::runtime_del(kernel_id));
        return Ok(EXIT_OK);
    }
    runtime()?.block_on(async {
        let plane = plane(&config).await;
        let records = members(&plane).await?;
        if let Some(kernel_id) = &args.add_server {
            let record = records
                .iter()
                .find(|r| &r.kernel_id == kernel_id)
                .ok_or_else(|| {
                    CliError::unusable(format!(
                        "{kernel_id} is not a member of cluster {} (no member object at {})",
                        config.id,
                        plane.member_key(kernel_id)
                    ))
                })?;
            let target = Target::of(record).map_err(CliError::unusable)?;
            println!("{}", target.runtime_add(check_interval));
            return Ok(EXIT_OK);
        }
        let targets = records
            .iter()
            .map(Target::of)
            .collect::<Result<Vec<_>, _>>()
            .map_err(CliError::unusable)?;
        if targets.is_empty() {
            return Err(CliError::unusable(format!(
                "cluster {} has no members at {}",
                config.id,
                plane.describe()
            )));
        }
        print!(
            "{}",
            haproxy::config(
                &config.id,
                &plane.describe(),
                &targets,
                &HaproxyOptions {
                    bind: args.bind.clone(),
                    check_interval,
                    stats_socket: args.stats_socket.clone(),
                },
            )
        );
        Ok(EXIT_OK)
    })
}

fn leave(args: &LeaveArgs) -> CliResult {
    let client = Client::new(&args.server)?;
    runtime()?.block_on(async {
        let (code, v) = client
            .call(
                reqwest::Method::POST,
                "/v1/cluster/leave",
                Some(json!({"reason": args.reason})),
            )
            .await?;
        let v = expect_ok(code, v)?;
        print(&v, args.server.json, |v| {
            println!(
                "{} left cluster {}: member object {} removed, recorded at entry {}",
                v["kernel_id"].as_str().unwrap_or("?"),
                v["cluster_id"].as_str().unwrap_or("?"),
                v["member_key"].as_str().unwrap_or("?"),
                v["ledger_seq"]
            );
        });
        Ok(EXIT_OK)
    })
}

fn forget(args: &ForgetArgs) -> CliResult {
    let config = settings(&args.offline.config)?;
    runtime()?.block_on(async {
        let plane = plane(&config).await;
        let key = plane.member_key(&args.member);
        let record = match plane.read(&key, None).await.map_err(unusable)? {
            crate::cluster::objects::Read::Found(found) => {
                MemberRecord::parse(&key, &found.body).ok()
            }
            _ => {
                return Err(CliError {
                    message: format!("{key} does not exist"),
                    code: EXIT_NEGATIVE,
                });
            }
        };
        // A member that still answers must leave itself (and record it).
        if let Some(r) = &record {
            let http = status::http_client().map_err(CliError::unusable)?;
            let url = format!("{}/health", r.advertise_url.trim_end_matches('/'));
            if http.get(&url).send().await.is_ok() {
                return Err(CliError {
                    message: format!(
                        "{} still answers at {}: run `kernels cluster leave --server {}` so that it records leaving",
                        args.member, r.advertise_url, r.advertise_url
                    ),
                    code: EXIT_NEGATIVE,
                });
            }
        }
        member::remove(&plane, &args.member)
            .await
            .map_err(unusable)?;
        let answer = json!({"cluster_id": config.id, "kernel_id": args.member, "removed": key});
        print(&answer, args.offline.json, |_| {
            println!("removed {key}");
        });
        Ok(EXIT_OK)
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_command_line_is_well_formed() {
        // clap checks argument names (e.g. a positional clashing with a
        // flattened flag) only when that subcommand is parsed: check all.
        crate::cli::Cli::command().debug_assert();
    }
}
