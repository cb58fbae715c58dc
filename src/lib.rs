//! The `switchboard` command: thin wiring of the workspace's libraries into subcommands.
//!
//! - [`cli`]: argument definitions and the dispatch to each library's entry point;
//! - [`certs`]: `certs init|issue|show`, the cluster's CA and certificates;
//! - [`demo`]: the no-setup demo of the log pipeline on loopback;
//! - [`config_cmd`]: `config push|log|show|diff|rollback|status|resolve`, the configuration
//!   repository;
//! - [`limits_cmd`]: `limits set|list|history`, the cluster's limits with revisions;
//! - [`loggen`]: synthetic SMS gateway and MTA logs for the demo;
//! - [`status_cmd`]: `status`, the cluster at a glance.

/// Write a line to standard error, as `eprintln!` does, but never panic: a tool whose stderr
/// is a closed pipe (`cmd 2>&1 >/dev/null | head -0`) still does its job and exits as it would.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Write a line to standard output, as `println!` does, but never panic: when the reader went
/// away (`| head`), the process ends at once with success, as a pipe's writer ends on SIGPIPE.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

pub mod certs;
pub mod cli;
pub mod config_cmd;
pub mod demo;
pub mod limits_cmd;
pub mod loggen;
pub mod status_cmd;
