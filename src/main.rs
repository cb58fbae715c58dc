//! `switchboard`: parse the command line, run the subcommand, map failure to exit code 1.

use std::io::Write as _;

use clap::Parser;

/// mimalloc, not glibc's allocator: glibc's consolidation of its free lists held a zenoh receive
/// thread for 1-5 ms at a time under DLR lookups, which set their p99.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = switchboard::cli::Cli::parse();
    match switchboard::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // A closed stderr is no reason to panic: the exit code says it.
            let _ = writeln!(std::io::stderr(), "error: {}", switchboard::cli::error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
