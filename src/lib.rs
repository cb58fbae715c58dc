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

/// Whether standard output's reader went away (`| head`): what [`out!`] writes after that is
/// dropped.
static STDOUT_GONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Write a line to standard output, as `println!` does, but never panic nor stop: once the reader
/// went away (`| head`), the rest of the output is dropped and the command goes on to its end,
/// so one that changes something (a push, a limits change) still does it and every command
/// exits with its own code (`config status | head` still says 1 for a problem).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        use std::sync::atomic::Ordering;
        if !$crate::STDOUT_GONE.load(Ordering::Relaxed) {
            if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    $crate::STDOUT_GONE.store(true, Ordering::Relaxed);
                }
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
