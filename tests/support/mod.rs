//! The one test-support tree of the integration tests (`mod support;`).
//!
//! * [`server`] — the service in-process on 127.0.0.1:0 over a temp data dir
//!   ([`server::TestServer`]), with short `get`/`post`/`call` helpers
//! * [`process`] — the real `kernels` binary as a child process (one-shot
//!   commands, and `kernels serve` on 127.0.0.1:0), with every inherited
//!   `KERNELS_*` variable removed
//! * [`http`] — a small async JSON client for the API (reqwest, with a timeout)
//! * [`s3`] — a real S3-compatible server (s3s-fs, in-process) on 127.0.0.1
//! * [`moto`] — moto's S3 server (Object Lock) from the test venv, as a child
//!   process on 127.0.0.1 with a port it picks itself
//! * [`cluster`] — a cluster of `kernels serve` processes sharing a control
//!   plane in moto's S3 server
//! * [`haproxy`] — HAProxy as a child process (the load balancer in front
//!   of a cluster)
//! * [`gate`] — a TCP gate that forwards to a server or hangs (a hung store)
//! * [`webhook`] — a webhook receiver (alerts)
//! * [`ledger`] — a durable ledger in-process, and requests submitted to it
//! * [`fs`] — file helpers (copying a data dir)
//! * [`datadir`] — acting on a data dir from outside (damaging stored bytes)
//! * [`mcp`] — the MCP tests' pieces: the test venv's Python (the official
//!   SDK's fixture servers) and `kernels mcp-proxy` as a child speaking raw
//!   JSON-RPC lines
//!
//! The tokens below are the ones both servers accept.

#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod cluster;
pub mod datadir;
pub mod fs;
pub mod gate;
pub mod haproxy;
pub mod http;
pub mod ledger;
pub mod mcp;
pub mod moto;
pub mod process;
pub mod s3;
pub mod server;
pub mod webhook;

/// Agent token (may act as any actor).
pub const AGENT: &str = "agent-token-0001";
/// Agent token limited to `agent-001` (in-process server only).
pub const AGENT_LIMITED: &str = "agent-token-limited";
/// Auditor token.
pub const AUDITOR: &str = "auditor-token-0001";
/// Operator token.
pub const OPERATOR: &str = "operator-token-0001";
