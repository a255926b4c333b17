//! Commands that talk to a running service over HTTP: the operations
//! playbook (`health`, `status`, `halt`, `recover`, `preserve`, `policy`,
//! `rotate`) and `submit`.
//!
//! The server comes from `--server URL` (or `KERNELS_SERVER`, default
//! `http://127.0.0.1:8080`), the bearer token from `KERNELS_TOKEN`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{CliError, CliResult, EXIT_NEGATIVE, EXIT_OK, parse_json, read_input};
use crate::api_client::ApiClient;
use crate::kernel::Policy;

/// Where the service is.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Base URL of the service.
    #[arg(long, env = "KERNELS_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Print the raw JSON answer.
    #[arg(long)]
    pub json: bool,
}

/// The service's API client, with the CLI's errors.
struct Client(ApiClient);

impl Client {
    fn new(server: &ServerArgs) -> Result<Client, CliError> {
        ApiClient::new(
            &server.server,
            ApiClient::token_from_env(),
            Duration::from_secs(600),
            Duration::from_secs(5),
        )
        .map(Client)
        .map_err(|e| CliError::unusable(e.to_string()))
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), CliError> {
        self.0
            .call(method, path, body.as_ref())
            .await
            .map_err(|e| CliError::unusable(e.to_string()))
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::unusable(format!("cannot start the runtime: {e}")))
}

/// Turns an error answer into a CLI error (exit 2) with the server's message.
fn expect_ok(status: u16, value: Value) -> Result<Value, CliError> {
    if (200..300).contains(&status) {
        return Ok(value);
    }
    let message = value
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| value.to_string());
    let hint = if status == 401 {
        " (set KERNELS_TOKEN)"
    } else {
        ""
    };
    Err(CliError::unusable(format!(
        "the service answered {status}: {message}{hint}"
    )))
}

fn print(value: &Value, json: bool, human: impl FnOnce(&Value)) {
    if json {
        println!("{value}");
    } else {
        human(value);
    }
}

/// Arguments of `kernels health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Server.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `kernels health`: liveness, readiness, chain state and rotator — exit 0
/// when healthy, 1 when not.
pub(super) fn health(args: HealthArgs) -> CliResult {
    let client = Client::new(&args.server)?;
    runtime()?.block_on(async {
        let (live, _) = client.call(reqwest::Method::GET, "/health", None).await?;
        let (ready, _) = client.call(reqwest::Method::GET, "/ready", None).await?;
        let (code, status) = client
            .call(reqwest::Method::GET, "/v1/status", None)
            .await?;
        let status = if code == 200 { Some(status) } else { None };
        let halted = status.as_ref().is_some_and(|s| s["state"] == "HALTED");
        let rotation_failing = status
            .as_ref()
            .is_some_and(|s| s["rotation"]["failing"].as_bool().unwrap_or(false));
        let healthy = live == 200 && ready == 200 && !halted;
        let report = json!({
            "healthy": healthy,
            "live": live == 200,
            "ready": ready == 200,
            "halted": halted,
            "rotation_failing": rotation_failing,
            "status": status,
        });
        print(&report, args.server.json, |r| {
            println!("live: {}", r["live"]);
            println!("ready: {}", r["ready"]);
            if let Some(s) = r.get("status").filter(|s| !s.is_null()) {
                println!(
                    "kernel: {} ({}), state {}",
                    s["kernel_id"], s["variant"], s["state"]
                );
                println!("entries: {}, root {}", s["ledger_length"], s["root_hash"]);
                println!("policy version: {}", s["policy_version"]);
                println!("rotation: {}", s["rotation"]);
            } else {
                println!(
                    "status: not available (set KERNELS_TOKEN to an auditor or operator token)"
                );
            }
            println!(
                "{}",
                if r["healthy"] == true {
                    "HEALTHY"
                } else {
                    "UNHEALTHY"
                }
            );
        });
        Ok(if healthy { EXIT_OK } else { EXIT_NEGATIVE })
    })
}

/// Arguments of `kernels status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Server.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `kernels status`.
pub(super) fn status(args: StatusArgs) -> CliResult {
    let client = Client::new(&args.server)?;
    runtime()?.block_on(async {
        let (code, v) = client
            .call(reqwest::Method::GET, "/v1/status", None)
            .await?;
        let v = expect_ok(code, v)?;
        println!(
            "{}",
            if args.server.json {
                v.to_string()
            } else {
                serde_json::to_string_pretty(&v).unwrap_or_default()
            }
        );
        Ok(EXIT_OK)
    })
}

/// Arguments of `kernels halt` / `kernels recover`.
#[derive(Debug, Args)]
pub struct ReasonArgs {
    /// Why (recorded in the ledger).
    #[arg(long)]
    pub reason: String,
    /// Server.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `kernels halt`.
pub(super) fn halt(args: ReasonArgs) -> CliResult {
    let client = Client::new(&args.server)?;
    runtime()?.block_on(async {
        let (code, v) = client
            .call(
                reqwest::Method::POST,
                "/v1/halt",
                Some(json!({"reason": args.reason})),
            )
            .await?;
        let v = expect_ok(code, v)?;
        print(&v, args.server.json, |v| {
            println!(
                "HALTED at entry {} ({})",
                v["receipt"]["ledger_seq"], v["receipt"]["evidence_hash"]
            );
            println!(
                "evidence root hash before the halt: {}",
                v["root_hash_before_halt"]
            );
        });
        Ok(EXIT_OK)
    })
}

/// `kernels recover`.
pub(super) fn recover(args: ReasonArgs) -> CliResult {
    let client = Client::new(&args.server)?;
    runtime()?.block_on(async {
        let (code, v) = client
            .call(
                reqwest::Method::POST,
                "/v1/recover",
                Some(json!({"reason": args.reason})),
            )
            .await?;
        let v = expect_ok(code, v)?;
        print(&v, args.server.json, |v| {
            println!(
                "recovered: session {} begins at entry {}",
                v["session"], v["ledger_seq"]
            );
        });
        Ok(EXIT_OK)
    })
}

/// Arguments of `kernels preserve`.
#[derive(Debug, Args)]
pub struct PreserveArgs {
    /// Why (recorded in the ledger).
    #[arg(long)]
    pub reason: String,
    /// Incident name (A-Z a-z 0-9 - _), used in the file name.
    #[arg(long, default_value = "incident")]
    pub incident: String,
    /// First seq (default 0).
    #[arg(long)]
    pub from_seq: Option<u64>,
    /// Last seq, inclusive (default: the head).
    #[arg(long)]
    pub to_seq: Option<u64>,
    /// Server.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `kernels preserve`.
pub(super) fn preserve(args: PreserveArgs) -> CliResult {
    let client = Client::new(&args.server)?;
    runtime()?.block_on(async {
        let body = json!({"reason": args.reason, "incident": args.incident, "from_seq": args.from_seq, "to_seq": args.to_seq});
        let (code, v) = client.call(reqwest::Method::POST, "/v1/preserve", Some(body)).await?;
        let v = expect_ok(code, v)?;
        print(&v, args.server.json, |v| {
            println!("preserved entries {}..={} in {}", v["from_seq"], v["to_seq"], v["path"]);
            println!("bundle sha256 {}, root {}", v["bundle_sha256"], v["root_hash"]);
            println!("recorded as entry {}", v["ledger_seq"]);
        });
        Ok(EXIT_OK)
    })
}

/// `kernels policy …`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check a policy file offline (exit 0 valid, 2 invalid).
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// Show the active policy.
    Show {
        /// Server.
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Replace the active policy with a file's (recorded, with the reason).
    Update {
        /// The policy file.
        file: PathBuf,
        /// Why (recorded in the ledger).
        #[arg(long)]
        reason: String,
        /// Server.
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// `kernels policy`.
pub(super) fn policy(cmd: PolicyCommand) -> CliResult {
    match cmd {
        PolicyCommand::Check { file } => {
            let policy = Policy::from_yaml(&read_input(&file)?)
                .map_err(|e| CliError::unusable(format!("{}: {e}", file.display())))?;
            println!("policy OK: {}", policy.to_json());
            println!("sha256: {}", policy.hash());
            Ok(EXIT_OK)
        }
        PolicyCommand::Show { server } => {
            let client = Client::new(&server)?;
            runtime()?.block_on(async {
                let (code, v) = client
                    .call(reqwest::Method::GET, "/v1/policy", None)
                    .await?;
                let v = expect_ok(code, v)?;
                println!(
                    "{}",
                    if server.json {
                        v.to_string()
                    } else {
                        serde_json::to_string_pretty(&v).unwrap_or_default()
                    }
                );
                Ok(EXIT_OK)
            })
        }
        PolicyCommand::Update {
            file,
            reason,
            server,
        } => {
            let policy = Policy::from_yaml(&read_input(&file)?)
                .map_err(|e| CliError::unusable(format!("{}: {e}", file.display())))?;
            let client = Client::new(&server)?;
            runtime()?.block_on(async {
                let body = json!({"policy": policy.to_json(), "reason": reason});
                let (code, v) = client
                    .call(reqwest::Method::PUT, "/v1/policy", Some(body))
                    .await?;
                let v = expect_ok(code, v)?;
                print(&v, server.json, |v| {
                    println!(
                        "policy version {} active (sha256 {}), recorded as entry {}",
                        v["version"], v["hash"], v["ledger_seq"]
                    );
                });
                Ok(EXIT_OK)
            })
        }
    }
}

/// Arguments of `kernels rotate`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Server.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `kernels rotate`: rotate now.
pub(super) fn rotate(args: RotateArgs) -> CliResult {
    let client = Client::new(&args.server)?;
    runtime()?.block_on(async {
        let (code, v) = client
            .call(reqwest::Method::POST, "/v1/rotations", None)
            .await?;
        let v = expect_ok(code, v)?;
        print(&v, args.server.json, |v| {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default())
        });
        Ok(EXIT_OK)
    })
}

/// Arguments of `kernels submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The request JSON file (`-` for standard input).
    pub request: PathBuf,
    /// Server.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `kernels submit`: submit one request and print the receipt.
pub(super) fn submit(args: SubmitArgs) -> CliResult {
    let body = parse_json(
        &read_input(&args.request)?,
        &args.request.display().to_string(),
    )?;
    let client = Client::new(&args.server)?;
    runtime()?.block_on(async {
        let (code, v) = client
            .call(reqwest::Method::POST, "/v1/requests", Some(body))
            .await?;
        let v = expect_ok(code, v)?;
        println!("{v}");
        Ok(if v["decision"] == "ALLOW" {
            EXIT_OK
        } else {
            EXIT_NEGATIVE
        })
    })
}
