//! The `kernels` binary: parse arguments, set up logging, run, exit.

use clap::Parser;

fn main() -> std::process::ExitCode {
    kernels::allocator::tune();
    let cli = kernels::cli::Cli::parse();
    kernels::cli::init_tracing(&cli);
    kernels::cli::run(cli)
}
