//! `kernels mcp-proxy [--server URL] [--actor A] [--tool-prefix P] [--permit
//! FILE] -- CMD [ARGS…]`: an MCP host starts this in place of the MCP
//! server's command; it starts the server as a child and relays MCP over
//! stdio, deciding every `tools/call` through the kernel first (see
//! `crate::mcp`).
//!
//! The token comes from `KERNELS_TOKEN` (an agent token). The proxy exits
//! with the child's exit status (128 + the signal when it was killed), or 2
//! when it cannot start.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::{CliError, CliResult};
use crate::api_client::ApiClient;
use crate::mcp::gate::HttpGate;
use crate::mcp::session::{Session, Settings, read_permit};

/// Arguments of `kernels mcp-proxy`.
#[derive(Debug, Args)]
pub struct McpProxyArgs {
    /// Base URL of the kernel service.
    #[arg(long, env = "KERNELS_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// The actor the calls are made as (default: the token's single actor).
    #[arg(long)]
    pub actor: Option<String>,
    /// Prefix of the kernel's tool names: an MCP tool `T` is `P` + `T` in
    /// the policy (e.g. `github.` to write `github.create_issue`).
    #[arg(long, default_value = "")]
    pub tool_prefix: String,
    /// A permit token file (JSON) attached to every call; re-read at each call.
    #[arg(long)]
    pub permit: Option<PathBuf>,
    /// How long one call to the kernel may take before the tool call is
    /// refused (s, ms units).
    #[arg(long, default_value = "10s", value_parser = crate::config::parse_duration)]
    pub kernel_timeout: Duration,
    /// The MCP server's command and its arguments (after `--`).
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<OsString>,
}

/// `kernels mcp-proxy`.
pub(super) fn mcp_proxy(args: McpProxyArgs) -> CliResult {
    if let Some(path) = &args.permit {
        read_permit(path).map_err(CliError::unusable)?;
    }
    if args.actor.as_deref() == Some("") {
        return Err(CliError::unusable("--actor is empty"));
    }
    let gate = HttpGate::new(
        &args.server,
        ApiClient::token_from_env(),
        args.kernel_timeout,
    )
    .map_err(|e| CliError::unusable(e.to_string()))?;
    let session = Arc::new(Session::new(
        Arc::new(gate),
        Settings {
            actor: args.actor,
            tool_prefix: args.tool_prefix,
            permit_file: args.permit,
        },
    ));
    let mut command = args.command.into_iter();
    let program = command.next().expect("clap requires a command");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::unusable(format!("cannot start the runtime: {e}")))?;
    let status = runtime.block_on(crate::mcp::stdio::run(session, program, command.collect()));
    // The task reading our stdin may still be blocked in a read.
    runtime.shutdown_timeout(Duration::from_millis(100));
    let status = status.map_err(|e| CliError::unusable(e.to_string()))?;
    Ok(exit_code(status))
}

/// The proxy's exit code for the child's status.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        return code as u8;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return (128 + signal) as u8;
        }
    }
    1
}
