//! `switchboard status`: the cluster at a glance, from every process's status document.
//!
//! The command joins the bus as a short-lived peer (it announces no role), asks every process's
//! `<prefix>/status/<role>/<name>` and the liveliness tokens, and prints the cluster assembled
//! from the answers ([`switchboard_bus::status`]), problems first. It asks again for a moment
//! while the answers name live processes that have not answered yet (a new session links to the
//! cluster's peers one by one). The exit code says healthy (0), degraded (1) or unreachable (2).

use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};
use switchboard_bus::status::cluster::{assemble, ClusterStatus, Level};
use switchboard_bus::status::{fetch, gather, text};

use crate::limits_cmd::BusArgs;

/// Output of `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    /// Tables for people.
    Text,
    /// One JSON document (per redraw with --watch) for scripts.
    Json,
}

/// `switchboard status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Redraw in place every second until Ctrl-C (the exit code is the last state's).
    #[arg(long)]
    pub watch: bool,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = StatusFormat::Text)]
    pub format: StatusFormat,
    /// How long to wait for every live process to answer, once joined to the bus (joining
    /// takes up to about a second more). At least 100ms.
    #[arg(long, default_value = "3s", value_parser = crate::cli::parse_timeout)]
    pub timeout: Duration,
    /// How to reach the bus.
    #[command(flatten)]
    pub bus: BusArgs,
}

fn print(c: &ClusterStatus, format: StatusFormat, redraw: bool) -> Result<()> {
    let body = match format {
        StatusFormat::Text => text::render(c),
        StatusFormat::Json => format!("{}\n", serde_json::to_string(c)?),
    };
    use std::io::{IsTerminal as _, Write as _};
    let mut stdout = std::io::stdout();
    // Home, then clear: the table redraws in place on a terminal; into a file or a pipe each
    // table follows the last, without escape codes.
    let home = if redraw && format == StatusFormat::Text && stdout.is_terminal() { "\x1b[H\x1b[2J" } else { "" };
    write!(stdout, "{home}{body}").and_then(|()| stdout.flush())?;
    Ok(())
}

/// Run `status`; returns the exit code.
pub async fn run(args: StatusArgs) -> Result<i32> {
    // With --watch, one Ctrl-C listener for the whole run, made first: a Ctrl-C that comes while
    // a redraw is fetched is kept for the next wait, not lost (a listener made anew at each wait
    // missed it, and the watch ran on).
    let mut interrupt = if args.watch {
        let kind = tokio::signal::unix::SignalKind::interrupt();
        Some(tokio::signal::unix::signal(kind).context("listening for Ctrl-C")?)
    } else {
        None
    };
    let (session, keys) = crate::limits_cmd::open(&args.bus).await?;
    let snap = gather(&session, &keys, args.timeout).await;
    let mut c = assemble(&snap);
    print(&c, args.format, args.watch)?;
    if c.level == Level::Unreachable {
        // What zenoh said of the endpoints it could not link to: a wrong port, a TLS listener
        // dialed on tcp/, a certificate the cluster does not trust.
        for failure in switchboard_bus::connect_failures::failing_now() {
            note!("cannot connect to {failure}");
        }
        // Linked to nothing, and no failure either: the handshake never ended.
        if session.info().peers_zid().await.next().is_none() {
            let endpoints = args.bus.bus_config().map(|b| b.connect).unwrap_or_default();
            for endpoint in switchboard_bus::connect_failures::silent(&endpoints) {
                note!("cannot connect to {endpoint}");
            }
        }
    }
    if let Some(interrupt) = interrupt.as_mut() {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = interrupt.recv() => break,
                _ = tick.tick() => {}
            }
            let snap = tokio::select! {
                _ = interrupt.recv() => break,
                snap = fetch(&session, &keys, Duration::from_millis(900)) => snap.unwrap_or_default(),
            };
            c = assemble(&snap);
            print(&c, args.format, true)?;
        }
    }
    Ok(match c.level {
        Level::Ok => 0,
        Level::Degraded => 1,
        Level::Unreachable => 2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_too_short_for_an_answer_is_refused() {
        assert_eq!(crate::cli::parse_timeout("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(crate::cli::parse_timeout("100ms"), Ok(Duration::from_millis(100)));
        for short in ["0", "0s", "99ms"] {
            let e = crate::cli::parse_timeout(short).unwrap_err();
            assert!(e.contains("at least 100ms"), "{short}: {e}");
        }
    }
}
