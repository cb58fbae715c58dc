//! Command-line definitions (clap) and their dispatch.
//!
//! Each subcommand reads its settings (a TOML file for long-running processes, flags otherwise),
//! sets up `tracing`, runs one library entry point on a Tokio runtime, and stops gracefully on
//! Ctrl-C or SIGTERM through a cancellation token.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use switchboard_agent::config::AgentConfig;
use switchboard_agent::Agent;
use switchboard_collector::config::CollectorConfig;
use switchboard_collector::Collector;
use switchboard_queries::{reports, Dataset, OutputFormat, TimeWindow};
use tokio_util::sync::CancellationToken;

use crate::demo::{self, DemoOptions};

/// Switchboard: one zenoh bus for a fleet of messaging gateways.
///
/// Node agents tail the gateways' logs and publish them on the bus; a collector writes
/// everything, exactly once, to a Hive-partitioned Parquet dataset; `query` runs SQL over it.
/// Start with `switchboard demo`.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, propagate_version = true)]
pub struct Cli {
    /// Log filter for the process's own logs (tracing `EnvFilter` syntax, e.g. `info`,
    /// `switchboard_agent=debug` for an agent, `switchboard_collector=debug` for a collector).
    /// Default: `info` for `agent` and `collector`, `error` for `status`, `warn` for other
    /// commands.
    #[arg(long, global = true, env = "SWITCHBOARD_LOG")]
    pub log: Option<String>,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node agent beside a gateway: tail its log files and publish them on the bus.
    ///
    /// The config names the bus endpoints and the log sources (globs, format). The agent resumes
    /// from its checkpoint after a restart; it publishes only while a collector is alive.
    Agent {
        /// The agent's TOML config (see docs/config/agent.toml).
        #[arg(short, long, env = "SWITCHBOARD_AGENT_CONFIG")]
        config: PathBuf,
        /// Check the config and exit (0 if it would start): its values, endpoints, TLS files,
        /// programs, socket group, a data_dir this process may write in, and what a start would
        /// meet on this host: a port in use (bus listen, HTTP, gateway TCP, StatsD), a socket
        /// path too long (a data_dir a running agent holds is a note). Nothing is started or
        /// written.
        #[arg(long)]
        check: bool,
    },
    /// Run a collector: write every log stream of the cluster to the Parquet dataset.
    ///
    /// Files are committed atomically with the sequence ranges they hold in their footers; a
    /// restarted collector reads them back and drops what it already has.
    Collector {
        /// The collector's TOML config (see docs/config/collector.toml).
        #[arg(short, long, env = "SWITCHBOARD_COLLECTOR_CONFIG")]
        config: PathBuf,
        /// Check the config and exit (0 if it would start): its values, TLS files, a local
        /// data_dir and spool_dir this process may write in, or an S3 client that can be built
        /// from [collector.store]. The store is not reached; nothing is started or written.
        #[arg(long)]
        check: bool,
    },
    /// Run SQL over the Parquet dataset (DataFusion).
    ///
    /// Tables: `logs`, `metrics` (the gateways' counters, gauges and timers per interval),
    /// `limits` (limit decisions per key and second) and `dlr` (DLR events), each partitioned by
    /// `date` ('YYYY-MM-DD') and `hour` (0-23): filter on them, or use --since/--until, to read
    /// only the matching files. Functions: hdr_merge, hdr_of, hdr_quantile, hdr_count, hdr_max,
    /// tag (see docs/metrics.md). Read-only: statements that write files or define tables
    /// (COPY ... TO, INSERT, CREATE EXTERNAL TABLE, ...) are refused unless --allow-write is given.
    /// Examples:
    ///   switchboard query "SELECT node, level, count(*) FROM logs WHERE date = '2026-11-22' GROUP BY 1, 2"
    ///   switchboard query --since 1h "SELECT tag(tags, 'operator') AS op, hdr_quantile(hdr_merge(histogram), 0.99) AS p99 FROM metrics WHERE name = 'dlr_latency' GROUP BY 1"
    #[command(verbatim_doc_comment)]
    Query {
        /// The SQL statement.
        sql: String,
        /// Dataset and time window.
        #[command(flatten)]
        scope: Scope,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Write the result to this file instead of standard output (required for parquet).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Allow statements that write files or define tables: COPY (...) TO 'file',
        /// CREATE EXTERNAL TABLE, CREATE VIEW, ... Without it the dataset is read-only; its own
        /// tables take no INSERT even with it (only the collector writes them).
        #[arg(long)]
        allow_write: bool,
    },
    /// Print one of the everyday reports (and draw time series with --plot).
    ///
    /// Reports: throughput, log-volume, errors, top-errors, dlr-latency, timer, rejections; the
    /// time series among them (throughput, log-volume, errors, rejections) can be drawn. A table
    /// with no data yet gives an empty report and a note saying which table, not an error.
    /// Example:
    ///   switchboard report throughput --since 24h --plot throughput.svg
    #[command(verbatim_doc_comment)]
    Report {
        /// The report's name; `switchboard report list` lists them.
        name: String,
        /// Dataset and time window.
        #[command(flatten)]
        scope: Scope,
        /// Bucket width of time series, whole seconds: `10s`, `5m`, `1h`, `1d`. By default picked
        /// from the span of the data (in the --since/--until window), for at most 120 buckets: from
        /// 1s for a run of two minutes to 1d for four months.
        #[arg(long, value_parser = parse_bucket)]
        bucket: Option<Duration>,
        /// The metric a metrics report reads (throughput: a counter, default `submitted`;
        /// timer: a timer, default `dlr_latency`).
        #[arg(long)]
        metric: Option<String>,
        /// Rows of top-N reports.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Write the report to this file instead of standard output (required for parquet).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Also draw a time series report as an SVG chart into this file (only time series:
        /// throughput, log-volume, errors, rejections).
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Set, list and review the cluster-wide limits (rate and concurrency) every node applies.
    ///
    /// Gateways ask their node agent for decisions (HTTP `POST /v1/limits/acquire` or the Unix
    /// socket, see docs/limits-api.md); the agents share each limit by demand over the bus.
    ///
    /// Exit code: 0 done; 1 an error, or `list` found nodes enforcing other limits; 2 no node
    /// answered (wrong endpoint or cluster name, or no agent with limits running).
    Limits {
        /// What to do.
        #[command(subcommand)]
        command: crate::limits_cmd::LimitsCommand,
    },
    /// The cluster's configuration repository: one revisioned tree every node applies atomically.
    ///
    /// `push` publishes a directory (`global/`, `default/`, `<subcluster>/`, `<node>/`) as the
    /// next revision; each agent writes its files into its working directory beside the current
    /// ones, switches a link in one step and runs its gateway's reload command. `log`, `show`,
    /// `diff`, `rollback`; `status` shows each node, local edits, failed reloads and conflicts;
    /// `resolve` settles a conflict. See docs/config-repository.md.
    ///
    /// Examples:
    ///   switchboard config push ./cluster-config -m "raise the SMPP window" --connect tcp/10.0.0.9:7447
    ///   switchboard config log
    ///   switchboard config diff 11 12
    ///   switchboard config status
    #[command(verbatim_doc_comment)]
    Config {
        /// What to do.
        #[command(subcommand)]
        command: crate::config_cmd::ConfigCommand,
    },
    /// Make the cluster's CA and each process's certificate for mutual TLS on the bus.
    ///
    /// A certificate's identity is `<role>:<name>`; the members file lists every identity and is
    /// the same on every node. See docs/security.md for the configuration and rotation.
    Certs {
        /// What to do.
        #[command(subcommand)]
        command: crate::certs::CertsCommand,
    },
    /// The cluster at a glance: nodes, collectors, streams, limits and DLRs, problems first.
    ///
    /// Asks every process on the bus for its status document (docs/protocol.md, "Status") and
    /// prints the cluster as one: which nodes are alive or gone (and since when), each
    /// collector's role and last commit, each stream's lag and catch-up estimate, each limit
    /// key's use and shares, each node's DLR records. Exit code: 0 healthy, 1 degraded (a
    /// problem is listed), 2 unreachable (nothing answered).
    /// Examples:
    ///   switchboard status --connect tcp/10.0.0.9:7447
    ///   switchboard status --config /etc/switchboard/agent.toml --watch
    ///   switchboard status --format json | jq '.problems'
    #[command(verbatim_doc_comment)]
    Status(crate::status_cmd::StatusArgs),
    /// A short tour of the whole mission on loopback: a collector and three node agents as real
    /// processes, with no setup.
    ///
    /// The demo writes the configs an operator would write into --dir, sets one cluster-wide rate
    /// limit, and plays each node's gateway: synthetic SMS gateway and MTA logs, limit requests at
    /// uneven rates, messages registered on one node whose DLRs arrive on another, StatsD timers.
    /// Part way through it kills one agent with -9 and restarts it. At the end it prints a summary
    /// computed with SQL over the Parquet dataset (logs exactly once, asked and admitted per
    /// second against the limit, DLRs found across nodes and by copies, a merged p99) and writes
    /// the reports and a chart to <dir>/reports. `switchboard query` then reads <dir>/dataset.
    Demo {
        /// How long the gateways run: `30s`, `2m`, or seconds.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        duration: Duration,
        /// Directory for the demo's configs, logs, agent state, dataset and reports (cleared first
        /// if the demo made it; refused if something else did).
        #[arg(long, default_value = "switchboard-demo")]
        dir: PathBuf,
        /// Number of node agents (at most 9).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Log lines written per second on each node.
        #[arg(long, default_value_t = 2000)]
        rate: u32,
        /// First of 20 loopback ports: the collector's bus endpoint; +1 its HTTP; +1+i agent i's
        /// HTTP; +10+i agent i's StatsD. 0 picks free ones. Each agent's own bus listener takes a
        /// free port the system picks, outside this range.
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Do not kill and restart an agent part way through.
        #[arg(long)]
        no_kill: bool,
    },
}

/// Which dataset and which time window a query or report reads.
#[derive(Debug, Clone, clap::Args)]
pub struct Scope {
    /// The dataset root (the collector's `data_dir`): a directory (or `file:///dir`), or `s3://bucket/prefix` (the
    /// endpoint, region and credentials from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY; AWS_ALLOW_HTTP=true for a plain http:// endpoint). Without it and
    /// with no switchboard-data here, the demo's dataset (switchboard-demo/dataset) is read if
    /// it exists, and stderr says so.
    #[arg(long, env = "SWITCHBOARD_DATA", default_value = DEFAULT_DATA)]
    pub data: PathBuf,
    /// Only rows at or after this time: RFC 3339, a UTC date (`2026-11-22`, `2026-11-22 10:00`)
    /// or a span back from now (`15m`, `2h`, `7d`).
    #[arg(long)]
    pub since: Option<String>,
    /// Only rows before this time (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
}

/// The dataset `query` and `report` read when `--data` is not given.
const DEFAULT_DATA: &str = "switchboard-data";
/// Where `switchboard demo` writes its dataset by default.
const DEMO_DATA: &str = "switchboard-demo/dataset";

impl Scope {
    /// The dataset of `--data`; an error when it holds no dataset at all (a mistyped path or
    /// prefix), rather than the empty answers of a dataset with nothing committed yet.
    async fn open(&self) -> Result<Dataset> {
        let window = TimeWindow::parse(self.since.as_deref(), self.until.as_deref(), chrono::Utc::now())?;
        let text = self.data.to_string_lossy();
        let ds = if text.contains("://") {
            // As the collector's `data_dir` takes it: `s3://...` or `file:///...`.
            match switchboard_bus::dataset::Location::parse(&text)? {
                switchboard_bus::dataset::Location::Local(path) => Dataset::open_window(&path, window).await?,
                location => {
                    let options = switchboard_bus::dataset::StoreOptions::default();
                    Dataset::open_location(&location, &options, window).await?
                }
            }
        } else {
            Dataset::open_window(&self.root()?, window).await?
        };
        if ds.is_not_a_dataset() {
            anyhow::bail!(
                "no dataset at {}: neither a table nor a collector's commit log ({}/) is there; pass --data \
                 with the collector's data_dir",
                text,
                switchboard_bus::dataset::META_DIR
            );
        }
        Ok(ds)
    }

    /// `--data`, or after a demo in this directory its dataset (said on stderr); a dataset that
    /// does not exist is an error that says which `--data` to pass.
    fn root(&self) -> Result<PathBuf> {
        if self.data.exists() {
            return Ok(self.data.clone());
        }
        let demo = std::path::Path::new(DEMO_DATA);
        if self.data == std::path::Path::new(DEFAULT_DATA) && demo.exists() {
            note!("reading the demo's dataset {DEMO_DATA} (no {DEFAULT_DATA} here; pass --data to choose)");
            return Ok(demo.to_owned());
        }
        anyhow::bail!(
            "no dataset at {}: pass --data with the collector's data_dir (or set SWITCHBOARD_DATA){}",
            self.data.display(),
            if demo.exists() { format!("; the demo's is --data {DEMO_DATA}") } else { String::new() }
        )
    }
}

/// Output formats of `query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned text table (at most 100,000 rows: it holds the result whole).
    Table,
    /// CSV with a header line (streamed as the rows are made, as json and ndjson are).
    Csv,
    /// A JSON array of objects, one per line (every column, a null as `null`).
    Json,
    /// One JSON object per line (every column, a null as `null`).
    Ndjson,
    /// A Parquet file (with --output).
    Parquet,
}

/// Print or write the rows of `rows` as `format`, batch by batch as the query makes them (the
/// table format holds up to [`switchboard_queries::TABLE_MAX_ROWS`]).
async fn stream_out(
    rows: switchboard_queries::SendableRecordBatchStream,
    format: Format,
    output: Option<&std::path::Path>,
) -> Result<()> {
    if rows.schema().fields().is_empty() {
        // A statement without a result (SET, CREATE VIEW): no table of no columns.
        switchboard_queries::run_to_end(rows).await?;
        note!(
            "done: the statement has no result (what it sets or defines lasts only as long as this command, \
             which runs one statement)"
        );
        return Ok(());
    }
    let text = match format {
        Format::Table => OutputFormat::Table,
        Format::Csv => OutputFormat::Csv,
        Format::Json => OutputFormat::Json,
        Format::Ndjson => OutputFormat::Ndjson,
        Format::Parquet => {
            let path = output.context("--format parquet writes a file: give --output FILE")?;
            let written = switchboard_queries::write_parquet_stream(rows, path).await?;
            note!("wrote {written} rows to {}", path.display());
            return Ok(());
        }
    };
    match output {
        Some(path) => {
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
            );
            switchboard_queries::write_stream(rows, text, &mut f).await?;
            std::io::Write::flush(&mut f)?;
        }
        None => {
            let mut out = QuietPipe(std::io::BufWriter::new(std::io::stdout().lock()));
            switchboard_queries::write_stream(rows, text, &mut out).await?;
            std::io::Write::flush(&mut out)?;
        }
    }
    Ok(())
}

/// Standard output that ends the process quietly (exit 0) when its reader goes away (`| head`):
/// a result streamed into a closed pipe is not an error of the query.
struct QuietPipe<W>(W);

impl<W: std::io::Write> QuietPipe<W> {
    fn quiet<T>(r: std::io::Result<T>) -> std::io::Result<T> {
        if r.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) {
            std::process::exit(0);
        }
        r
    }
}

impl<W: std::io::Write> std::io::Write for QuietPipe<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Self::quiet(self.0.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Self::quiet(self.0.flush())
    }
}

/// A report's bucket: a duration of whole seconds, at least one (rows are bucketed by second).
fn parse_bucket(s: &str) -> Result<Duration, String> {
    let d =
        parse_duration(s).map_err(|_| format!("{s:?} is not a bucket: use whole seconds, as in 10s, 5m, 1h or 1d"))?;
    if d.as_secs() == 0 || d.subsec_nanos() != 0 {
        return Err(format!("a bucket is a whole number of seconds, at least 1s (got {s:?})"));
    }
    Ok(d)
}

/// Parse `15s`, `500ms`, `2m`, `1h` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 15s, 500ms, 2m"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        other => return Err(format!("unknown unit {other:?} in {s:?}: use ms, s, m, h or d")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `--timeout`: a duration of at least 100 ms (live processes answer, and apply a revision, in
/// milliseconds, not in none: a shorter wait would call every process hung or behind).
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) {
        return Err(format!("{s} is too short for processes to answer: give at least 100ms"));
    }
    Ok(d)
}

/// An error and its causes on one line, each said once: many errors already quote their cause in
/// their own message, which a plain walk of the chain would print again.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

/// Logs to stderr as `filter` (else `default`) says. A long-running process (`long_running`)
/// also counts zenoh's access-control denials for its `/metrics`, and says when an endpoint of
/// its `connect` cannot be reached; a one-shot command has no metrics to count them in and says
/// nothing of them (what a command's session refuses while its links come up is traffic the
/// processes send it through one another, not an attack on it; a command that cannot connect
/// fails with its own error).
fn init_tracing(filter: Option<&str>, default: &str, long_running: bool) {
    use std::io::IsTerminal;
    // A filter that names no zenoh target gets the quieting too.
    // A one-shot command also leaves out zenoh's routing bookkeeping (`Unknown token` when a
    // process that was just killed withdraws nothing the command's session ever took).
    // object_store says each retry of a request at INFO: a store that is down would fill the
    // log with them, where the collector says its store's state once per interval. The DLR
    // store's engine says each step of opening its trees at INFO, which tells an operator nothing.
    let quiet = if long_running {
        format!("{},object_store::client::retry=warn,fjall=warn,lsm_tree=warn", switchboard_bus::zenoh_logs::quiet())
    } else {
        format!(
            "{},zenoh::net::routing::hat=off,object_store::client::retry=warn,fjall=warn,lsm_tree=warn",
            switchboard_bus::zenoh_logs::quiet()
        )
    };
    let wanted = match filter {
        Some(f) if f.contains("zenoh") => f.to_owned(),
        Some(f) => format!("{f},{quiet}"),
        None => format!("{default},{quiet}"),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&wanted).unwrap_or_else(|e| {
        note!(
            "warning: --log / SWITCHBOARD_LOG {:?} is not a valid filter ({e}); using {default:?}",
            filter.unwrap_or(default)
        );
        tracing_subscriber::EnvFilter::new(format!("{default},{quiet}"))
    });
    // Colour only a terminal, and never when NO_COLOR is set: log files get plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let log = tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr).with_filter(filter);
    // zenoh's access-control decisions, whatever the log filter: the denials are counted.
    let denials = long_running.then(|| {
        switchboard_bus::refusals::AccessDeniedLayer.with_filter(switchboard_bus::refusals::AccessDeniedLayer::filter())
    });
    // zenoh's failures to reach a `connect` endpoint, which it says only at DEBUG: said at WARN
    // (and kept, for a tool that reached no process to say why).
    let unreachable = {
        use switchboard_bus::connect_failures::ConnectFailureLayer;
        if !long_running {
            switchboard_bus::connect_failures::short_lived();
        }
        ConnectFailureLayer.with_filter(ConnectFailureLayer::filter())
    };
    let _ = tracing_subscriber::registry().with(log).with(denials).with(unreachable).try_init();
}

/// `--check` reads the TLS files as the start would: present, PEM, valid now, signed by the CA,
/// the process's own identity, the certificate's key, and the members file.
fn check_tls(bus: &switchboard_bus::config::BusConfig, role: switchboard_bus::tls::IdRole) -> Result<()> {
    let Some(tls) = &bus.tls else { return Ok(()) };
    let me = switchboard_bus::tls::Identity::new(role, &bus.node)?;
    for warning in switchboard_bus::tls::load(tls, Some(&me))?.warnings {
        note!("warning: {warning}");
    }
    Ok(())
}

/// The exit code of a command that returns its own: `failed` after an error (said on stderr),
/// 0 when the reader of the output went away (`| head`), which is not an error of ours.
fn exit_code(result: Result<i32>, failed: i32) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => 0,
        Err(e) => {
            note!("error: {}", error_chain(&e));
            failed
        }
    }
}

/// Run a bus command, then close its sessions without waiting on a hung peer.
async fn closing<T>(command: impl std::future::Future<Output = T>) -> T {
    let out = command.await;
    crate::limits_cmd::close_sessions().await;
    out
}

/// A process whose vital thread died exits with the reason (after its orderly stop).
fn died() -> Result<()> {
    match switchboard_bus::vital::failed() {
        Some(why) => anyhow::bail!("{why}"),
        None => Ok(()),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Query planning recurses deeply; give worker threads room.
        .thread_stack_size(8 << 20)
        .build()
        .context("starting the Tokio runtime")
}

/// A token cancelled on Ctrl-C or SIGTERM. A second one exits at once: a stop that waits for
/// what cannot finish now (a collector's last commit to a store that does not answer) can be cut
/// short, losing nothing acknowledged, as a kill would.
fn shutdown_token() -> CancellationToken {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let t = token.clone();
    // Both streams live for the whole process, so a signal that comes while the other is handled
    // is kept for the next look, not lost.
    let streams = signal(SignalKind::terminate()).and_then(|term| Ok((term, signal(SignalKind::interrupt())?)));
    tokio::spawn(async move {
        let (mut term, mut int) = match streams {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM and SIGINT");
                let _ = tokio::signal::ctrl_c().await;
                t.cancel();
                return;
            }
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested: finishing the work under way (a second Ctrl-C or SIGTERM exits at once)");
        t.cancel();
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::warn!(
            "second stop signal: exiting at once; what was not acknowledged or committed is taken up again from the \
             agents' journals"
        );
        std::process::exit(1);
    });
    token
}

/// Run one parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let log = cli.log.as_deref();
    match cli.command {
        Command::Agent { config, check } => {
            init_tracing(log, "info", true);
            let cfg = AgentConfig::load(&config)?;
            let warnings = cfg.warnings();
            if check {
                switchboard_bus::config::check_dir("agent.data_dir", &cfg.agent.data_dir)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
                check_tls(&cfg.bus, switchboard_bus::tls::IdRole::Agent)
                    .with_context(|| config.display().to_string())?;
                if let Some(group) = &cfg.gateway.socket_group {
                    switchboard_agent::gateway::gid_of(group)
                        .with_context(|| format!("{}: gateway.socket_group", config.display()))?;
                }
                if cfg.cluster_config.enabled {
                    let dir = cfg.cluster_config.dir(&cfg.agent.data_dir);
                    switchboard_agent::cluster_config::worktree::check_link(&dir)
                        .with_context(|| format!("{}: cluster_config.dir", config.display()))?;
                }
                let running = cfg.check_start().map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
                let n = cfg.sources.len();
                out!("{}: ok ({n} source{})", config.display(), if n == 1 { "" } else { "s" });
                if let Some(note) = running {
                    out!("note: {note}");
                }
                for w in warnings.iter().map(String::as_str).chain(cfg.bus.unreachable_warning()) {
                    out!("warning: {w}");
                }
                return Ok(());
            }
            runtime()?.block_on(async {
                let cancel = shutdown_token();
                // After the stop signals are taken: a process that logged a line takes them.
                for w in &warnings {
                    tracing::warn!("{w}");
                }
                let agent = Agent::start(cfg, cancel).await?;
                agent.wait().await;
                died()
            })
        }
        Command::Collector { config, check } => {
            init_tracing(log, "info", true);
            let cfg = CollectorConfig::load(&config)?;
            if check {
                check_tls(&cfg.bus, switchboard_bus::tls::IdRole::Collector)
                    .with_context(|| config.display().to_string())?;
                cfg.collector.check_store().map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
                out!("{}: ok", config.display());
                if let Some(w) = cfg.bus.unreachable_warning() {
                    out!("warning: {w}");
                }
                if let Some(note) = cfg.logs.dropped_defaults() {
                    out!("note: {note}");
                }
                return Ok(());
            }
            runtime()?.block_on(async {
                let cancel = shutdown_token();
                if let Some(note) = cfg.logs.dropped_defaults() {
                    tracing::info!("{note}");
                }
                let collector = match Collector::start(cfg, cancel).await {
                    Err(switchboard_collector::CollectorError::StoppedStarting) => {
                        tracing::info!("collector stopped before it opened the dataset: nothing was claimed");
                        return died();
                    }
                    started => started?,
                };
                if let Some(why) = collector.wait().await {
                    died()?;
                    anyhow::bail!(
                        "stopped with rows not committed ({why}): the agents keep them, and the collector that leads \
                         next pulls them"
                    );
                }
                died()
            })
        }
        Command::Query { sql, scope, format, output, allow_write } => {
            init_tracing(log, "warn", false);
            runtime()?.block_on(async {
                let ds = scope.open().await?.allow_writes(allow_write);
                let rows = ds.sql_stream(&sql).await?;
                stream_out(rows, format, output.as_deref()).await
            })
        }
        Command::Report { name, scope, bucket, metric, limit, format, output, plot } => {
            init_tracing(log, "warn", false);
            if name == "list" {
                for (n, about) in reports::REPORTS {
                    out!("{n:<12} {about}");
                }
                return Ok(());
            }
            // 0 lets the report pick the bucket from the span of its data.
            let bucket_s = bucket.map_or(0, |b| b.as_secs());
            let opts = reports::ReportOptions { bucket_s, metric, limit };
            // Refuse a chart that cannot be drawn before running anything, not after printing.
            if plot.is_some() && reports::report(&name, &opts)?.series.is_none() {
                anyhow::bail!(
                    "report {name} is not a time series, so --plot cannot draw it (time series: {})",
                    reports::time_series_reports().join(", ")
                );
            }
            runtime()?.block_on(async {
                let ds = scope.open().await?;
                let out = reports::run(&ds, &name, &opts).await?;
                if let Some(table) = out.no_data {
                    note!(
                        "report {name} reads the {table} table, which has no data yet (no committed Parquet \
                         files): the report is empty"
                    );
                }
                let has_rows = switchboard_queries::row_count(&out.batches) > 0;
                if let (Some((kind, default)), None, false) = (reports::metric_read(&name), &out.no_data, has_rows) {
                    note!(
                        "no {kind} named {:?} in the metrics table (in the scope asked for); \
                         `switchboard query --data {} \"SELECT DISTINCT name, kind FROM metrics\"` lists what there is",
                        opts.metric.as_deref().unwrap_or(default),
                        scope.data.display()
                    );
                }
                if let (Some(bucket_s), true, true) = (out.bucket_s, out.bucket_picked, has_rows) {
                    note!(
                        "buckets of {} (picked from the span of the data; --bucket to choose)",
                        reports::format_bucket(bucket_s)
                    );
                }
                stream_out(switchboard_queries::stream_of(out.batches.clone())?, format, output.as_deref()).await?;
                if let (Some(path), Some((series, value))) = (plot, &out.report.series) {
                    let lines = switchboard_queries::plot::series_of(&out.batches, series, value)?;
                    let svg = switchboard_queries::plot::svg(&lines, &out.title(&name), value, out.gap_ms());
                    std::fs::write(&path, svg).with_context(|| format!("cannot write {}", path.display()))?;
                    note!("drew {} series to {}", lines.len(), path.display());
                }
                Ok(())
            })
        }
        Command::Limits { command } => {
            init_tracing(log, "warn", false);
            let result = runtime()?.block_on(closing(crate::limits_cmd::run(command)));
            let failed = result.as_ref().err().map_or(1, crate::limits_cmd::failure_code);
            std::process::exit(exit_code(result.map(|()| 0), failed))
        }
        Command::Config { command } => {
            init_tracing(log, "warn", false);
            // `config status` exits 2 when it cannot look (as `status` does), 1 for a problem found.
            let failed = if matches!(command, crate::config_cmd::ConfigCommand::Status { .. }) { 2 } else { 1 };
            std::process::exit(exit_code(runtime()?.block_on(closing(crate::config_cmd::run(command))), failed))
        }
        Command::Certs { command } => crate::certs::run(command),
        Command::Status(args) => {
            init_tracing(log, "error", false);
            std::process::exit(exit_code(runtime()?.block_on(closing(crate::status_cmd::run(args))), 2))
        }
        Command::Demo { duration, dir, nodes, rate, port, no_kill } => {
            init_tracing(log, "warn", false);
            runtime()?.block_on(async {
                let cancel = shutdown_token();
                let opts = DemoOptions { duration, dir, nodes, rate, port, kill: !no_kill };
                let summary = demo::run(opts, cancel).await?;
                if summary.stored != summary.written || summary.duplicates != 0 {
                    anyhow::bail!(
                        "the dataset does not match what was written: {} written, {} stored, {} duplicates",
                        summary.written,
                        summary.stored,
                        summary.duplicates
                    );
                }
                Ok(())
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn a_bucket_is_whole_seconds_and_its_errors_say_so() {
        assert_eq!(parse_bucket("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_bucket("2000ms"), Ok(Duration::from_secs(2)));
        for bad in ["7x", "500ms", "0s", "1.5s"] {
            let err = parse_bucket(bad).unwrap_err();
            assert!(err.contains("whole") && !err.contains("ms,"), "{bad}: {err}");
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
