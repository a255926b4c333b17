//! The `kernels` binary: parse arguments, run, map the outcome to an exit code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    kernels::cli::run(kernels::cli::Cli::parse())
}
