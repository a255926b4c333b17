//! The kernel in the path of Model Context Protocol tool calls: `kernels
//! mcp-proxy` (stdio) and the Streamable HTTP front of `kernels serve`.
//!
//! Like the HTTP service, this is a shell around the kernel: it reads
//! JSON-RPC frames, asks the kernel through its API, and forwards. It keeps
//! no policy of its own. Only `tools/call` (decided first, forwarded only on
//! ALLOW) and `tools/list` (filtered to what the actor may call) are
//! interpreted; every other frame is relayed as received, which keeps the
//! relay correct across protocol revisions (2025-11-25 with `initialize` and
//! sessions, 2026-07-28 stateless with `_meta` and `input_required`).
//!
//! * [`message`] — JSON-RPC framing: a frame's kind, the answers we write
//! * [`intercept`] — what happens to `tools/call` and `tools/list`, for
//!   both transports (pure)
//! * [`gate`] — the kernel's API as the interception uses it
//! * [`session`] — one connection: actor, request ids, decisions
//! * [`outcomes`] — recording what forwarded calls did, in the background
//! * [`stdio`] — the stdio transport (`kernels mcp-proxy`)
//! * [`front`] — the Streamable HTTP transport (`/mcp/{name}` in `kernels serve`)
//! * [`headers`] — the Streamable HTTP header rules (`Mcp-Method`, `Mcp-Name`)
//! * [`sse`] — Server-Sent Events framing for relaying streams
//!
//! Its `mcp:` configuration section is read by [`crate::config`].

pub mod front;
pub mod gate;
pub mod headers;
pub mod intercept;
pub mod message;
pub mod outcomes;
pub mod session;
pub mod sse;
pub mod stdio;
