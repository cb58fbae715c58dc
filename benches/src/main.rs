//! `sb-bench`: Switchboard's benchmark harness. Each bench prints its figures beside the anchor it
//! names, as ratios, in one run. Run in release mode:
//!
//! ```text
//! cargo run --release -p switchboard-benches -- logs
//! cargo run --release -p switchboard-benches -- wire
//! cargo run --release -p switchboard-benches -- limits
//! cargo run --release -p switchboard-benches -- dlr
//! cargo run --release -p switchboard-benches -- capacity
//! cargo run --release -p switchboard-benches -- query
//! cargo run --release -p switchboard-benches -- group
//! cargo run --release -p switchboard-benches -- tls
//! cargo run --release -p switchboard-benches -- config
//! ```

mod capacity;
mod config;
mod dlr;
mod group;
mod limits;
mod limits_cluster;
mod logs;
mod ports;
mod query;
mod status;
mod tls;
mod wire;

use anyhow::Result;
use clap::{Parser, Subcommand};
use switchboard_agent::parse::Format;

/// The allocator of the `switchboard` binary, so the in-process nodes allocate as agents do.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `bus.compression` for every process a bench starts: the product's default (`None`: on with
/// `quic/` endpoints), or what `SB_BUS_COMPRESSION` (`true` or `false`) says, to compare the two in otherwise
/// equal runs.
pub(crate) fn bus_compression() -> Option<bool> {
    match std::env::var("SB_BUS_COMPRESSION").as_deref() {
        Ok("false") => Some(false),
        Ok("true") => Some(true),
        _ => None,
    }
}

/// Switchboard benchmarks (build with --release).
#[derive(Debug, Parser)]
#[command(name = "sb-bench")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Log pipeline: lines/s from appended file lines to committed Parquet rows, for 1 and 2
    /// agents, beside the Parquet-encode-only ceiling and the rsyslog anchor (400k lines/s).
    Logs {
        /// Lines per run (split over the agents).
        #[arg(long, default_value_t = 2_000_000)]
        lines: usize,
        /// Parse lines as `plain` (timestamp + level prefix) or `kv`.
        #[arg(long, default_value = "plain", value_parser = parse_format)]
        format: Format,
        /// Also extract key=value pairs from each message (fills the promoted columns).
        #[arg(long)]
        kv_in_message: bool,
        /// Runs per end-to-end case (the median is printed).
        #[arg(long, default_value_t = 3)]
        repeat: usize,
    },
    /// Rate limits: decision cost in process and through a node agent's APIs beside a Redis
    /// counter; then accuracy of one limit shared by several node processes under uneven,
    /// shifting demand (target: no 1 s window above 101% of the limit, at least 97% on average).
    Limits {
        /// Decisions per in-process case.
        #[arg(long, default_value_t = 10_000_000)]
        decisions: u64,
        /// Node processes in the accuracy run (0 skips it).
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// The shared limit, per second.
        #[arg(long, default_value_t = 2000)]
        limit: u64,
        /// Seconds per demand phase (demand rotates among the nodes each phase).
        #[arg(long, default_value_t = 5)]
        phase_secs: u64,
    },
    /// DLR lookups: 3 node processes with `--records` open records each; lookup latency
    /// (p50/p99/p999) at `--rate`/s over the bus (asking the one node that must hold the id on
    /// the ask stream, from an async and a bare client, and by query; and every node), beside
    /// zenoh's own floor (a query answered with a fixed reply), through the agent's HTTP API and
    /// its gateway socket (all lookups, then split by whether the node holds the record), by
    /// node-by-node forwarding and from a shared Redis hash; memory and disk per open record
    /// (targets: p99 under 1 ms at 10000 lookups/s, under 200 B per open record in the agent's
    /// memory; gateway socket p99 at most Redis's, HTTP at most 3x).
    Dlr {
        /// Open records registered on each node.
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        /// Lookups per row.
        #[arg(long, default_value_t = 100_000)]
        lookups: u64,
        /// Lookups per second (paced).
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// HTTP and Redis clients sharing the rate, each with its own connection (as a node's
        /// gateway threads).
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// The agents' DLR block cache, in MiB (`dlr.cache_mb`, default as in the agent). 256
        /// holds the 2,000,000 records each node keeps at the default `--records`; its memory
        /// counts in the figures.
        #[arg(long, default_value_t = 16)]
        cache_mb: u64,
        /// Times the ask-stream row is run, each printed (the spread of its p99).
        #[arg(long, default_value_t = 3)]
        repeat: u32,
        /// Other nodes keeping a copy of each record (`dlr.copies`, default as in the agent: 2,
        /// every record on all 3 nodes, every resolve answered from the node's own store; 1 sends
        /// a third of the lookups over the bus).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
        copies: u16,
    },
    /// DLR store capacity: `--records` open records in one node's store, then disk and memory
    /// per record and random reads, beside the budget (at most 150 B of disk per record, at most
    /// 256 MiB of memory growth).
    Capacity {
        /// Open records to write.
        #[arg(long, default_value_t = 10_000_000)]
        records: u64,
        /// The store's block cache, in MiB (`dlr.cache_mb`).
        #[arg(long, default_value_t = 16)]
        cache_mb: u64,
    },
    /// Mutual TLS against plain TCP in one run: end-to-end log lines/s (target: TLS at least 90%
    /// of plain) and the DLR ask stream's p99 at `--rate` lookups/s (target: at most 1.2x plain).
    Tls {
        /// Lines per end-to-end run. Each run includes opening the bus, which zenoh sometimes
        /// holds for its 200 ms scouting delay (plain TCP as well as TLS): runs of a second
        /// would measure that more than the transport.
        #[arg(long, default_value_t = 5_000_000)]
        lines: usize,
        /// Runs of each case (medians are printed, every run too).
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Open records registered on each of the 3 DLR nodes.
        #[arg(long, default_value_t = 100_000)]
        records: u64,
        /// Lookups per ask-stream run.
        #[arg(long, default_value_t = 100_000)]
        lookups: u64,
        /// Lookups per second (paced).
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// The secure transport: `tls` (TLS over TCP, the default) or `quic` (QUIC over UDP;
        /// docs/security.md compares the two).
        #[arg(long, default_value = "tls", value_parser = ["tls", "quic"])]
        transport: String,
    },
    /// One node of the accuracy run (started by `limits`): a node agent from a config file.
    #[command(hide = true)]
    LimitsNode {
        /// The agent config.
        #[arg(long)]
        config: std::path::PathBuf,
    },
    /// Analyst queries: a fixed query set (count per node per hour, errors in one pruned hour,
    /// top operators by regex, a point lookup by msg_id, merged p99 per operator) over a
    /// generated day of logs and metrics written by the collector's sinks, timed for
    /// `switchboard query` and DuckDB on the same files (targets: at most 1.5x DuckDB; pruned
    /// queries and point lookups at most 1x).
    Query {
        /// Keep the generated dataset here and reuse it on the next run with the same sizes
        /// (default: a temporary directory).
        #[arg(long)]
        data: Option<std::path::PathBuf>,
        /// Log rows over the day.
        #[arg(long, default_value_t = 10_000_000)]
        logs: u64,
        /// Metric rows over the day, rounded to whole series: every node writes 4 to 32 series
        /// (3 counters and a timer per operator, 1 to 8 operators) per 10 s interval, so from
        /// 34,560 to 276,480 rows per node; the line before the run says how many.
        #[arg(long, default_value_t = 1_000_000)]
        metrics: u64,
        /// Nodes the rows come from.
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// Runs per query and engine (the median is printed).
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Collector group: end-to-end lines/s with the dataset on a local S3 server (moto) beside a
    /// local directory (target: at least 80%), and takeover time from a kill -9 or a SIGSTOP of
    /// the writing collector to the new writer's first commit, p50 and max (target max 5 s, goal
    /// 3 s; anchor: keepalived's 3-5 s).
    Group {
        /// Lines per throughput run.
        #[arg(long, default_value_t = 1_000_000)]
        lines: usize,
        /// Throughput runs per case (the median is printed).
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Kills of the writer.
        #[arg(long, default_value_t = 10)]
        kills: usize,
        /// Hangs (SIGSTOP) of the writer.
        #[arg(long, default_value_t = 5)]
        hangs: usize,
    },
    /// One collector of the group run (started by `group`): a collector from a config file.
    #[command(hide = true)]
    CollectorNode {
        /// The collector config.
        #[arg(long)]
        config: std::path::PathBuf,
    },
    /// The operator's view: `switchboard status` against 3 nodes with `--keys` limit keys and
    /// `--records` open DLR records each: time to first output (beside one /health round by
    /// HTTP) and the nodes' CPU per second while --watch asks every second.
    Status {
        /// Open DLR records on each node.
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        /// Limit keys in use on each node.
        #[arg(long, default_value_t = 1000)]
        keys: u64,
        /// Runs of the time to first output (the median is printed).
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        /// Seconds of each CPU window (watched, unwatched).
        #[arg(long, default_value_t = 20)]
        window_secs: u64,
    },
    /// The configuration repository: a push to applied on 3 nodes, for a whole tree of --files
    /// files and for a one-line change, beside writing the tree here and flushing it.
    Config {
        /// Files in the tree.
        #[arg(long, default_value_t = 1000)]
        files: usize,
        /// Size of each file, in KiB.
        #[arg(long, default_value_t = 10)]
        file_kib: usize,
        /// Pushes of each kind (the median is printed).
        #[arg(long, default_value_t = 5)]
        repeat: usize,
    },
    /// Wire format: log_batch as Arrow IPC against JSON lines (encode, decode, bytes per row).
    Wire {
        /// Rows to encode and decode.
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
    },
}

fn parse_format(s: &str) -> Result<Format, String> {
    match s {
        "plain" => Ok(Format::Plain),
        "kv" => Ok(Format::Kv),
        "json" => Ok(Format::Json),
        "syslog" => Ok(Format::Syslog),
        _ => Err(format!("unknown format {s:?}")),
    }
}

fn main() -> Result<()> {
    // The bench's own zenoh clients: without zenoh's start-up noise, as the processes log.
    let wanted =
        std::env::var("SWITCHBOARD_LOG").unwrap_or_else(|_| format!("warn,{}", switchboard_bus::zenoh_logs::quiet()));
    let filter = tracing_subscriber::EnvFilter::try_new(wanted).unwrap_or_else(|_| "warn".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    match Cli::parse().bench {
        Bench::Logs { lines, format, kv_in_message, repeat } => {
            logs::run(&logs::LogsBench { lines, format, kv_in_message, repeat })
        }
        Bench::Wire { rows } => wire::run(rows),
        Bench::Group { lines, repeat, kills, hangs } => group::run(&group::GroupBench { lines, repeat, kills, hangs }),
        Bench::CollectorNode { config } => group::node(&config),
        Bench::Limits { decisions, nodes, limit, phase_secs } => {
            limits::run(decisions)?;
            if nodes > 0 {
                limits_cluster::accuracy(nodes, limit, std::time::Duration::from_secs(phase_secs))?;
            }
            Ok(())
        }
        Bench::Tls { lines, repeat, records, lookups, rate, transport } => {
            let transport = if transport == "quic" { "quic" } else { "tls" };
            tls::run(&tls::TlsBench { lines, repeat, records, lookups, rate, transport })
        }
        Bench::Dlr { records, lookups, rate, clients, cache_mb, repeat, copies } => {
            dlr::run(&dlr::DlrBench { records, lookups, rate, clients, cache_mb, repeat, copies: copies.into() })
        }
        Bench::Capacity { records, cache_mb } => capacity::run(records, cache_mb),
        Bench::Status { records, keys, repeat, window_secs } => {
            status::run(&status::StatusBench { records, keys, repeat, window_secs })
        }
        Bench::Config { files, file_kib, repeat } => config::run(&config::ConfigBench { files, file_kib, repeat }),
        Bench::LimitsNode { config } => limits_cluster::node(&config),
        Bench::Query { data, logs, metrics, nodes, runs } => {
            query::run(&query::QueryBench { data, logs, metrics, nodes, runs })
        }
    }
}
