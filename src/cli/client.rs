//! Commands that talk to a running service over HTTP: the operations
//! playbook (`status`, `halt`, `recover`, `preserve`, `policy`, `rotate`;
//! `health` is in `health.rs`) and `submit`, and the client they share.
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
pub(super) struct Client(ApiClient);

impl Client {
    /// A client of `server`, with the token from `KERNELS_TOKEN`.
    pub(super) fn new(server: &ServerArgs) -> Result<Client, CliError> {
        ApiClient::new(
            &server.server,
            ApiClient::token_from_env(),
            Duration::from_secs(600),
            Duration::from_secs(5),
        )
        .map(Client)
        .map_err(|e| CliError::unusable(e.to_string()))
    }

    /// `GET path` with a query string; answers the status and the body.
    pub(super) async fn get_query(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<(u16, Value), CliError> {
        self.0
            .get_query(path, query)
            .await
            .map_err(|e| CliError::unusable(e.to_string()))
    }

    /// `method path` with an optional JSON body; answers the status and the body.
    pub(super) async fn call(
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

/// A runtime for one command's calls.
pub(super) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::unusable(format!("cannot start the runtime: {e}")))
}

/// Turns an error answer into a CLI error (exit 2) with the server's message.
pub(super) fn expect_ok(status: u16, value: Value) -> Result<Value, CliError> {
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

/// Prints `value` as JSON, or as text through `human`.
pub(super) fn print(value: &Value, json: bool, human: impl FnOnce(&Value)) {
    if json {
        println!("{value}");
    } else {
        human(value);
    }
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
        let upload_failed = v["archive"]["error"].is_string();
        print(&v, args.server.json, |v| {
            println!("preserved entries {}..={} in {}", v["from_seq"], v["to_seq"], v["path"]);
            println!("bundle sha256 {}, root {}", v["bundle_sha256"], v["root_hash"]);
            if let Some(key) = v["archive"]["key"].as_str() {
                println!("uploaded to {}/{key}", v["archive"]["bucket"].as_str().unwrap_or("-"));
            }
            if upload_failed {
                println!("WARNING: kept on this machine only, the upload failed: {}", v["archive"]["error"]);
            }
            println!("recorded as entry {}", v["ledger_seq"]);
        });
        // Preserved, but not off the box: a negative finding.
        Ok(if upload_failed { EXIT_NEGATIVE } else { EXIT_OK })
    })
}

/// `kernels policy …`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check a policy file offline (exit 0 valid, 1 invalid, 2 unreadable);
    /// warns about a policy that allows no actor.
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
    /// Replace the active policy with a file's (recorded, with the reason);
    /// shows field by field what changes.
    Update {
        /// The policy file.
        file: PathBuf,
        /// Why (recorded in the ledger); not needed with --dry-run.
        #[arg(long, required_unless_present = "dry_run")]
        reason: Option<String>,
        /// Only show what would change; nothing is applied or recorded.
        #[arg(long)]
        dry_run: bool,
        /// Server.
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// A policy file: its document as written (to tell which fields it leaves
/// to their defaults) and the policy. An invalid policy is a negative
/// finding (exit 1); an unreadable file is unusable input (exit 2).
fn read_policy(file: &PathBuf) -> Result<(Value, Policy), CliError> {
    let text = read_input(file)?;
    let invalid = |e: String| CliError {
        message: format!("{}: {e}", file.display()),
        code: EXIT_NEGATIVE,
    };
    let policy = Policy::from_yaml(&text).map_err(|e| invalid(e.to_string()))?;
    let doc: Value = serde_norway::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    Ok((doc, policy))
}

/// One line per changed field.
fn print_changes(answer: &Value) {
    let changes = answer["changes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if changes.is_empty() {
        println!("no change: the policy is the active one");
    }
    let defaulted: Vec<&str> = answer["defaulted"]
        .as_array()
        .map(|d| d.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for c in changes {
        let field = c["field"].as_str().unwrap_or("?");
        let list = |key: &str| -> Option<String> {
            let items: Vec<&str> = c[key]
                .as_array()?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            (!items.is_empty()).then(|| items.join(", "))
        };
        let what = if c["new"].is_array() {
            let mut parts = Vec::new();
            if let Some(added) = list("added") {
                parts.push(format!("adds {added}"));
            }
            if let Some(removed) = list("removed") {
                parts.push(format!("removes {removed}"));
            }
            parts.join("; ")
        } else {
            format!("{} -> {}", c["old"], c["new"])
        };
        let note = if defaulted.contains(&field) {
            " (not in the file: the default)"
        } else {
            ""
        };
        println!("  {field}: {what}{note}");
    }
}

/// `kernels policy`.
pub(super) fn policy(cmd: PolicyCommand) -> CliResult {
    match cmd {
        PolicyCommand::Check { file } => {
            let (doc, policy) = read_policy(&file)?;
            println!("policy OK: {}", policy.to_json());
            println!("sha256: {}", policy.hash());
            let defaulted = Policy::missing_fields(&doc);
            if !defaulted.is_empty() {
                println!("not in the file (defaults apply): {}", defaulted.join(", "));
            }
            if policy.allows_no_actor() {
                println!("warning: this policy allows no actor: every request would be denied");
            }
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
            dry_run,
            server,
        } => {
            let (doc, policy) = read_policy(&file)?;
            if policy.allows_no_actor() {
                eprintln!(
                    "kernels: warning: this policy allows no actor: every request would be denied"
                );
            }
            let client = Client::new(&server)?;
            runtime()?.block_on(async {
                let mut body = json!({"policy": doc});
                if let Some(reason) = &reason {
                    body["reason"] = json!(reason);
                }
                let path = if dry_run {
                    "/v1/policy?dry_run=true"
                } else {
                    "/v1/policy"
                };
                let (code, v) = client.call(reqwest::Method::PUT, path, Some(body)).await?;
                if code == 400 && v["code"] == "invalid_policy" {
                    return Err(CliError {
                        message: format!("the service rejected the policy: {}", v["error"].as_str().unwrap_or("?")),
                        code: EXIT_NEGATIVE,
                    });
                }
                let v = expect_ok(code, v)?;
                print(&v, server.json, |v| {
                    if dry_run {
                        println!(
                            "dry run: nothing applied (the active policy is version {}); the file would change:",
                            v["version"]
                        );
                    } else {
                        println!(
                            "policy version {} active (sha256 {}), recorded as entry {}",
                            v["version"], v["hash"], v["ledger_seq"]
                        );
                    }
                    print_changes(v);
                });
                Ok(EXIT_OK)
            })
        }
    }
}

/// Arguments of `kernels rotate` (`--json` prints the service's answer).
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Server.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `kernels rotate`: start a rotation run now (or join the one running);
/// prints what it archived, or that it goes on in the background.
pub(super) fn rotate(args: RotateArgs) -> CliResult {
    let client = Client::new(&args.server)?;
    runtime()?.block_on(async {
        let (code, v) = client
            .call(reqwest::Method::POST, "/v1/rotations", None)
            .await?;
        let v = expect_ok(code, v)?;
        print(&v, args.server.json, |v| print!("{}", rotation_text(v)));
        Ok(EXIT_OK)
    })
}

/// A rotation's outcome in words.
fn rotation_text(v: &Value) -> String {
    if v["running"] == true {
        return format!(
            "rotation run {} is still running in the background; `kernels status` shows how it ends\n",
            v["run_id"].as_str().unwrap_or("?")
        );
    }
    if v["archived"] != true {
        return format!(
            "nothing new to archive (the next segment starts at entry {})\n",
            v["next_seq"]
        );
    }
    let m = &v["manifest"];
    let mut text = format!(
        "archived entries {}..={} ({} entries) to {}\nmanifest sha256 {}, root {}; recorded as entry {}\n",
        m["from_seq"],
        m["to_seq"],
        m["entry_count"],
        m["segment_key"].as_str().unwrap_or("?"),
        v["manifest_sha256"].as_str().unwrap_or("?"),
        m["root_hash"].as_str().unwrap_or("?"),
        v["rotate_entry_seq"]
    );
    if v["repaired"] == true {
        text.push_str("(an earlier run had uploaded this segment; it is now recorded)\n");
    }
    text
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_is_told_in_words() {
        let archived = json!({"archived": true, "repaired": false, "rotate_entry_seq": 48,
            "manifest_sha256": "abc", "manifest": {"from_seq": 0, "to_seq": 46, "entry_count": 47,
            "root_hash": "def", "segment_key": "kernels-archive/k/segments/x.json"}});
        assert_eq!(
            rotation_text(&archived),
            "archived entries 0..=46 (47 entries) to kernels-archive/k/segments/x.json\nmanifest sha256 abc, root def; recorded as entry 48\n"
        );
        let nothing =
            json!({"archived": false, "reason": "nothing new to archive", "next_seq": 47});
        assert_eq!(
            rotation_text(&nothing),
            "nothing new to archive (the next segment starts at entry 47)\n"
        );
        let running = json!({"running": true, "run_id": "run-3"});
        assert!(rotation_text(&running).starts_with("rotation run run-3 is still running"));
    }
}
