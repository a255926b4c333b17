//! `kernels`: a durable, hash-chained governance kernel between AI agents and
//! the tools they call.
//!
//! Every request is validated, judged against a jurisdiction policy and
//! answered ALLOW, DENY or HALT; every decision and every operational event is
//! an append-only, SHA-256 hash-chained entry, compatible byte for byte with
//! the Python KERNELS library's evidence format.
//!
//! The layout, from the pure core outwards:
//!
//! * [`canonical`] — Python-compatible canonical JSON, the basis of every hash
//! * [`entry`] — the ledger entry and its hash
//! * [`chain`] — chain verification (every error, with its index)
//! * [`bundle`] — streamed evidence bundle reading and writing
//! * [`kernel`] — the pure kernel: requests, policy, variants, permits,
//!   state machine, decisions, operational events and the folded state
//! * [`verify`] — parallel, streamed verification of bundle files
//! * [`mcp`] — `kernels mcp-proxy` and the MCP front of `kernels serve`:
//!   the kernel in the path of MCP tool calls
//! * [`api_client`] — a client for the service's HTTP API (CLI, MCP proxy)
//! * [`cli`] — the `kernels` command line
//! * [`allocator`] — allocator tuning for a bounded footprint (the only `unsafe`)

pub mod allocator;
pub mod api_client;
pub mod bundle;
pub mod canonical;
pub mod chain;
pub mod cli;
pub mod config;
pub mod entry;
pub mod evidence;
pub mod kernel;
pub mod ledger;
pub mod mcp;
pub mod metrics;
pub mod rotator;
pub mod service;
pub mod store;
pub mod verify;

/// The version of the on-disk storage layout this build writes (see `migrations/`).
pub const STORAGE_FORMAT_VERSION: u32 = 3;
