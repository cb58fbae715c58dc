//! `switchboard demo`: the whole log pipeline on loopback, with no setup.
//!
//! Starts a collector and `nodes` node agents in this process, each with its own zenoh session on
//! 127.0.0.1 (agents connect to the collector's endpoint; no multicast). While they run, one
//! writer thread per node appends synthetic gateway logs ([`crate::loggen`]: an SMS gateway in
//! logfmt, an MTA in RFC 5424 syslog) at `rate` lines per second. Progress is printed every
//! second. When the time is up the writers stop, the demo waits until the collector holds every
//! line, stops the agents and then the collector (which commits its files), and prints a summary
//! computed with SQL over the Parquet dataset, checking that each line is stored exactly once.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use switchboard_agent::config::{
    AgentConfig, AgentSettings, DlrSettings, LimitsSettings, MetricsSettings, SourceConfig, StartAt,
};
use switchboard_agent::parse::Format;
use switchboard_agent::stats::AgentStats;
use switchboard_agent::Agent;
use switchboard_bus::BusConfig;
use switchboard_collector::config::{CollectorConfig, CollectorSettings, LogsTableConfig};
use switchboard_collector::stats::CollectorStats;
use switchboard_collector::Collector;
use switchboard_queries::{render, Dataset, OutputFormat};
use tokio_util::sync::CancellationToken;

use crate::loggen::{GatewayLog, MtaLog};

/// A file in the demo directory that marks it as the demo's own (and so safe to clear).
const MARKER: &str = ".switchboard-demo";
/// How long the demo waits for the collector to hold every written line after the writers stop.
const CATCH_UP: Duration = Duration::from_secs(60);

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How long the writers write.
    pub duration: Duration,
    /// The demo directory (logs, agent state, dataset); cleared first if the demo made it.
    pub dir: PathBuf,
    /// Number of node agents.
    pub nodes: usize,
    /// Lines per second written on each node.
    pub rate: u32,
}

/// What the demo measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoSummary {
    /// Lines the writers wrote.
    pub written: u64,
    /// Rows in the dataset.
    pub stored: u64,
    /// `(node, stream, seq)` keys found more than once.
    pub duplicates: u64,
    /// The dataset's root.
    pub dataset: PathBuf,
}

/// Run the demo; `cancel` (Ctrl-C) cuts the writing short but still shuts down cleanly.
pub async fn run(opts: DemoOptions, cancel: CancellationToken) -> Result<DemoSummary> {
    if opts.nodes == 0 || opts.rate == 0 {
        bail!("--nodes and --rate must be at least 1");
    }
    prepare_dir(&opts.dir)?;
    let dir = opts.dir.canonicalize().context("resolving the demo directory")?;
    let dataset = dir.join("dataset");
    let port = free_port()?;
    let endpoint = format!("tcp/127.0.0.1:{port}");
    eprintln!(
        "switchboard demo: 1 collector + {} node agents on {endpoint}, {} s at {} lines/s per node",
        opts.nodes,
        opts.duration.as_secs(),
        opts.rate
    );
    eprintln!("  directory: {}", dir.display());

    let collector_cancel = CancellationToken::new();
    let collector = Collector::start(collector_config(&endpoint, &dataset), collector_cancel.clone())
        .await
        .context("starting the collector")?;
    let cstats = collector.stats();

    let agents_cancel = CancellationToken::new();
    let mut agents = Vec::new();
    let mut astats = Vec::new();
    let nodes: Vec<String> = (1..=opts.nodes).map(|i| format!("gw{i}")).collect();
    for node in &nodes {
        let logs = dir.join("logs").join(node);
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let agent = Agent::start(agent_config(node, &endpoint, &dir, &logs), agents_cancel.clone())
            .await
            .with_context(|| format!("starting agent {node}"))?;
        astats.push(agent.stats());
        agents.push(agent);
    }

    // Writers: one thread per node.
    let written = Arc::new(AtomicU64::new(0));
    let stop_writing = CancellationToken::new();
    let mut writers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let (node, logs) = (node.clone(), dir.join("logs").join(node));
        let (written, stop, rate) = (written.clone(), stop_writing.clone(), opts.rate);
        writers.push(std::thread::spawn(move || write_logs(&node, &logs, i as u64, rate, &written, &stop)));
    }

    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while started.elapsed() < opts.duration {
        tokio::select! {
            _ = tick.tick() => progress(started, opts.duration, &written, &astats, &cstats),
            _ = cancel.cancelled() => { eprintln!("  interrupted: stopping early"); break; }
        }
    }
    stop_writing.cancel();
    for w in writers {
        match w.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.context("writing demo logs")),
            Err(_) => bail!("a log writer thread panicked"),
        }
    }
    let total = written.load(Ordering::Relaxed);
    eprintln!("  writers stopped after {total} lines; waiting for the collector to hold all of them");
    let waited = Instant::now();
    while CollectorStats::get(&cstats.rows_accepted) < total && waited.elapsed() < CATCH_UP {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let accepted = CollectorStats::get(&cstats.rows_accepted);
    if accepted < total {
        eprintln!("  warning: the collector holds {accepted} of {total} lines after {} s", CATCH_UP.as_secs());
    }
    agents_cancel.cancel();
    for a in agents {
        a.wait().await;
    }
    collector_cancel.cancel();
    collector.wait().await;
    eprintln!(
        "  stopped cleanly: {} rows committed in {} files",
        CollectorStats::get(&cstats.rows_committed),
        CollectorStats::get(&cstats.files_committed)
    );
    summarize(total, &dataset).await
}

fn prepare_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false);
        if dir.join(MARKER).exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("clearing the previous demo run in {}", dir.display()))?;
        } else if !empty {
            bail!("{} exists and was not made by the demo; choose another directory with --dir", dir.display());
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), b"made by switchboard demo; the demo clears this directory on its next run\n")?;
    Ok(())
}

/// A loopback port that was free a moment ago.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

fn collector_config(endpoint: &str, dataset: &Path) -> CollectorConfig {
    CollectorConfig {
        bus: BusConfig {
            cluster: "demo".into(),
            node: "collector".into(),
            listen: vec![endpoint.into()],
            ..BusConfig::default()
        },
        collector: CollectorSettings {
            data_dir: dataset.to_owned(),
            max_file_age_ms: 3000,
            http_listen: String::new(),
            ..CollectorSettings::default()
        },
        logs: LogsTableConfig::default(),
    }
}

fn agent_config(node: &str, endpoint: &str, dir: &Path, logs: &Path) -> AgentConfig {
    let source = |name: &str, glob: &str, format: Format, kv: bool| SourceConfig {
        name: name.into(),
        paths: vec![logs.join(glob).to_string_lossy().into_owned()],
        format,
        start_at: StartAt::Beginning,
        max_line_bytes: 64 * 1024,
        kv_in_message: kv,
    };
    AgentConfig {
        bus: BusConfig {
            cluster: "demo".into(),
            node: node.into(),
            connect: vec![endpoint.into()],
            ..BusConfig::default()
        },
        agent: AgentSettings {
            data_dir: dir.join("agents").join(node),
            batch_max_delay_ms: 100,
            poll_interval_ms: 50,
            glob_interval_ms: 500,
            http_listen: String::new(),
            ..AgentSettings::default()
        },
        limits: LimitsSettings { enabled: false, ..LimitsSettings::default() },
        dlr: DlrSettings { enabled: false, ..DlrSettings::default() },
        metrics: MetricsSettings { enabled: false, ..MetricsSettings::default() },
        sources: vec![
            source("smsgw", "smsgw*.log", Format::Kv, false),
            source("mta", "mail*.log", Format::Syslog, true),
        ],
    }
}

/// Append synthetic lines to `<logs>/smsgw.log` and `<logs>/mail.log` at `rate` lines/s until
/// `stop` fires.
fn write_logs(
    node: &str,
    logs: &Path,
    seed: u64,
    rate: u32,
    written: &AtomicU64,
    stop: &CancellationToken,
) -> Result<()> {
    let open = |name: &str| -> Result<BufWriter<std::fs::File>> {
        let path = logs.join(name);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(BufWriter::new(f))
    };
    let (mut sms, mut mail) = (open("smsgw.log")?, open("mail.log")?);
    let mut gw = GatewayLog::new(node, seed);
    let mut mta = MtaLog::new(node, seed);
    let started = Instant::now();
    let mut done: u64 = 0;
    let mut reported: u64 = 0;
    while !stop.is_cancelled() {
        let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        let now = chrono::Utc::now();
        while done < due {
            // Two SMS lines for every mail line.
            if done % 3 == 2 {
                writeln!(mail, "{}", mta.line(now))?;
            } else {
                writeln!(sms, "{}", gw.line(now))?;
            }
            done += 1;
        }
        sms.flush()?;
        mail.flush()?;
        // Count lines only once they are in the files.
        written.fetch_add(done - reported, Ordering::Relaxed);
        reported = done;
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn progress(started: Instant, duration: Duration, written: &AtomicU64, agents: &[Arc<AgentStats>], c: &CollectorStats) {
    let published: u64 = agents.iter().map(|a| AgentStats::get(&a.lines_published)).sum();
    eprintln!(
        "  [{:>3}s/{}s] written {:>9}  published {:>9}  received {:>9}  committed {:>9} rows in {} files",
        started.elapsed().as_secs(),
        duration.as_secs(),
        written.load(Ordering::Relaxed),
        published,
        CollectorStats::get(&c.rows_accepted),
        CollectorStats::get(&c.rows_committed),
        CollectorStats::get(&c.files_committed),
    );
}

async fn summarize(written: u64, dataset: &Path) -> Result<DemoSummary> {
    let ds = Dataset::open(dataset).await?;
    let scalar = |b: &[arrow::array::RecordBatch]| -> u64 {
        b.first()
            .filter(|b| b.num_rows() > 0)
            .map(|b| b.column(0).as_primitive::<Int64Type>())
            .filter(|c| !c.is_null(0))
            .map_or(0, |c| c.value(0) as u64)
    };
    let stored = scalar(&ds.sql("SELECT count(*) FROM logs").await?);
    let duplicates = scalar(
        &ds.sql(
            "SELECT count(*) FROM (SELECT node, stream, seq FROM logs GROUP BY node, stream, seq HAVING count(*) > 1)",
        )
        .await?,
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nLines per node and level:")?;
    let b = ds
        .sql("SELECT node, coalesce(level, '-') AS level, count(*) AS lines FROM logs GROUP BY node, level ORDER BY node, level")
        .await?;
    render(&b, OutputFormat::Table, &mut out)?;
    writeln!(out, "\nErrors per operator (SMS gateway):")?;
    let b = ds
        .sql("SELECT operator, count(*) AS errors, min(message) AS example FROM logs WHERE level = 'error' AND operator IS NOT NULL GROUP BY operator ORDER BY errors DESC, operator")
        .await?;
    render(&b, OutputFormat::Table, &mut out)?;
    let verdict = if stored == written && duplicates == 0 { "exactly once" } else { "MISMATCH" };
    writeln!(out, "\n{written} lines written, {stored} rows stored, {duplicates} duplicate keys: {verdict}.")?;
    writeln!(out, "Dataset: {}", dataset.display())?;
    writeln!(out, "Next, try:")?;
    writeln!(
        out,
        "  switchboard query --data {} \"SELECT operator, avg(latency_ms) AS avg_ms, count(*) FROM logs WHERE fields['event'] = 'dlr' GROUP BY operator ORDER BY operator\"",
        dataset.display()
    )?;
    Ok(DemoSummary { written, stored, duplicates, dataset: dataset.to_owned() })
}
