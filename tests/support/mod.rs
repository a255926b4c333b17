//! Support for the tests that drive the real `kernels` binary: running a
//! command in a temp dir, running `kernels serve` as a child process, a
//! small async HTTP client for its API, and acting on a data dir from outside.

#![allow(dead_code, unreachable_pub)]

pub mod datadir;
pub mod http;
pub mod process;
