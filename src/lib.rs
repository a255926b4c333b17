//! `kernels`: a durable, hash-chained governance kernel between AI agents and
//! the tools they call.
//!
//! Every request is validated, judged against a jurisdiction policy and
//! answered ALLOW, DENY or HALT; every decision and every operational event is
//! an append-only, SHA-256 hash-chained entry, compatible byte for byte with
//! the Python KERNELS library's evidence format.
//!
//! The layout, from the pure core outwards. These do no file or network I/O
//! of their own (callers hand them readers, writers, times and keys), except
//! [`verify`], which reads bundle files on worker threads:
//!
//! * [`canonical`] — Python-compatible canonical JSON, the basis of every hash
//! * [`entry`] — the ledger entry and its hash
//! * [`error_text`] — an error and its causes on one line
//! * [`chain`] — chain verification (every error, with its index)
//! * [`merkle`] — the RFC 9162 Merkle tree beside the chain: tree heads,
//!   compact ranges, tiles, inclusion and consistency proofs
//! * [`note`], [`checkpoint`] — C2SP signed notes and Ed25519 keys, and the
//!   signed tree heads (checkpoints, witness cosignatures) built on them
//! * [`proofs`] — inclusion and consistency proof documents, built and checked
//! * [`bundle`] — the evidence bundle format, streamed over any reader or
//!   writer
//! * [`verify`] — parallel, streamed verification of bundle files
//! * [`kernel`] — the pure kernel: requests, policy, variants, permits,
//!   state machine, decisions and their typed reasons, the built-in tools,
//!   operational events and the folded state
//!
//! Around it, the shells that do I/O:
//!
//! * [`store`] — storage behind the narrow `LedgerStore` trait: sled behind a
//!   write-ahead log, an in-memory store, the data dir, format migrations
//!   and the stored record layouts
//! * [`ledger`] — the durable kernel: open and verify a data dir, decide under
//!   one lock, group commit, the request index and state checkpoints
//! * [`evidence`] — exports of a ledger and preserved evidence for incidents
//! * [`rotator`] — archives to S3 and the forensic path back from them
//! * [`alerts`] — the webhook that hears about halts, failures and updates
//! * [`cluster`] — a cluster of kernels: membership, the shared control
//!   plane in S3 (policy, halt flag) and its worker, status, load balancer
//! * [`service`] — the HTTP API (axum): handlers, auth, errors, connection
//!   limits, OpenAPI
//! * [`config`] — the configuration: file, `KERNELS_*` environment, flags
//! * [`metrics`] — Prometheus metrics
//! * [`mcp`] — `kernels mcp-proxy` and the MCP front of `kernels serve`:
//!   the kernel in the path of MCP tool calls
//! * [`api_client`] — a client for the service's HTTP API (CLI, MCP proxy)
//! * [`cli`] — the `kernels` command line
//! * [`allocator`] — allocator tuning for a bounded footprint (the only `unsafe`)

pub mod alerts;
pub mod allocator;
pub mod api_client;
pub mod bundle;
pub mod canonical;
pub mod chain;
pub mod checkpoint;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod entry;
pub mod error_text;
pub mod evidence;
pub mod kernel;
pub mod ledger;
pub mod mcp;
pub mod merkle;
pub mod metrics;
pub mod note;
pub mod proofs;
pub mod rotator;
pub mod service;
pub mod store;
pub mod verify;

/// The version of the on-disk storage layout this build writes (see `migrations/`).
pub const STORAGE_FORMAT_VERSION: u32 = 5;
