//! Support for the tests that drive the real `kernels` binary: running a
//! command in a temp dir, running `kernels serve` as a child process, and a
//! small async HTTP client for its API.

#![allow(dead_code, unreachable_pub)]

pub mod http;
pub mod process;
