//! Log pipeline throughput: appended file lines to committed Parquet rows, beside the
//! encode-only ceiling.
//!
//! For 1 and for 2 agents, the bench writes `lines` log lines of about 150 bytes (split evenly
//! over the agents' files) before anything starts, then starts a collector and the agents in this
//! process (each with its own zenoh session on loopback), and times from the agents' start until
//! the collector has committed every row to Parquet (its files closed, fsynced and renamed).
//! In the same run it times the ceiling: the same rows, already in memory as Arrow batches of
//! the `logs` table, written straight to a Parquet file with the collector's writer properties.
//! Printed: lines/s of each, the ratio to the ceiling, and the ratio to the anchor (rsyslog
//! copying 150-byte lines file to file at 400,000 lines/s on the reference 2-core machine).
//! End to end runs with acknowledgements off and on (journal, watermarks, heads, replay
//! queryable), and then the catch-up: the time from a collector's start until a backlog of up to
//! 1,000,000 lines, written while no collector was up, is committed.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use arrow::array::RecordBatch;
use parquet::arrow::ArrowWriter;
use switchboard_agent::config::{
    AgentConfig, AgentSettings, DlrSettings, LimitsSettings, MetricsSettings, SourceConfig, StartAt,
};
use switchboard_agent::parse::{self, Format, ParseContext};
use switchboard_agent::Agent;
use switchboard_bus::wire::log_batch::{LogBatchBuilder, LogRow};
use switchboard_bus::{BusConfig, StreamId, StreamKind};
use switchboard_collector::config::{CollectorConfig, CollectorSettings, LogsTableConfig};
use switchboard_collector::logs_table::LogsTable;
use switchboard_collector::stats::CollectorStats;
use switchboard_collector::writer::FileSettings;
use switchboard_collector::Collector;
use tokio_util::sync::CancellationToken;

/// The anchor: rsyslog copying 150-byte lines from file to file on the reference machine.
const RSYSLOG_LINES_PER_SEC: f64 = 400_000.0;

/// Options of the `logs` bench.
#[derive(Debug, Clone)]
pub(crate) struct LogsBench {
    /// Lines per run.
    pub(crate) lines: usize,
    /// Line format the agents parse.
    pub(crate) format: Format,
    /// Extract key=value pairs from messages (promoted columns get filled).
    pub(crate) kv_in_message: bool,
    /// Runs per end-to-end case; the median is printed.
    pub(crate) repeat: usize,
}

/// One synthetic line of about 150 bytes: timestamp, level, SMS gateway message with fields.
pub(crate) fn line(i: usize) -> String {
    let level = match i % 50 {
        0 => "ERROR",
        1..=4 => "WARN",
        _ => "INFO",
    };
    format!(
        "2026-11-22T10:{:02}:{:02}.{:06}Z {level} smsc[{}]: submit_sm_resp msg_id=gw-{i:010x} operator=op{} account=acct{} latency_ms={} status=ok",
        (i / 60_000) % 60,
        (i / 1000) % 60,
        i % 1_000_000,
        1000 + i % 7,
        i % 6,
        i % 40,
        i % 900
    )
}

fn write_file(path: &Path, range: std::ops::Range<usize>) -> Result<u64> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let mut bytes = 0;
    for i in range {
        let l = line(i);
        bytes += l.len() as u64 + 1;
        writeln!(w, "{l}")?;
    }
    w.flush()?;
    Ok(bytes)
}

/// Run the whole bench and print its table.
pub(crate) fn run(opts: &LogsBench) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!(
        "== logs: appended lines -> committed Parquet rows ({} lines, format {:?}, kv_in_message {}, median of {} runs) ==",
        opts.lines, opts.format, opts.kv_in_message, opts.repeat
    );
    let ceiling = encode_ceiling(opts)?;
    println!("{:<34} {:>12} {:>10} {:>14}", "case", "lines/s", "vs ceiling", "vs rsyslog 400k");
    println!(
        "{:<34} {:>12.0} {:>10} {:>14.2}",
        "parquet encode only (ceiling)",
        ceiling,
        "1.00",
        ceiling / RSYSLOG_LINES_PER_SEC
    );
    let mut acked_one = 0.0;
    let mut plain_one = 0.0;
    for (agents, acknowledged) in [(1, false), (1, true), (2, true)] {
        // Median of several runs: single runs on a shared 2-core machine vary by +-15%.
        let mut rates = Vec::new();
        for _ in 0..opts.repeat.max(1) {
            rates.push(rt.block_on(end_to_end(opts, agents, acknowledged))?);
        }
        rates.sort_by(f64::total_cmp);
        let rate = rates[rates.len() / 2];
        let label = if acknowledged { "acks on" } else { "acks off" };
        println!(
            "{:<34} {:>12.0} {:>10.2} {:>14.2}",
            format!("end to end, {agents} agent(s), {label}"),
            rate,
            rate / ceiling,
            rate / RSYSLOG_LINES_PER_SEC
        );
        match (agents, acknowledged) {
            (1, true) => acked_one = rate,
            (1, false) => plain_one = rate,
            _ => {}
        }
    }
    println!("acknowledgements on / off (1 agent): {:.2} (target >= 0.90)", acked_one / plain_one);
    let backlog = opts.lines.min(1_000_000);
    let secs = rt.block_on(catch_up(opts, backlog))?;
    println!(
        "collector start to caught up (all committed) with a backlog of {backlog} lines: {secs:.2} s ({:.0} lines/s)",
        backlog as f64 / secs
    );
    Ok(())
}

/// Seconds from a collector's start until a backlog of `lines`, written while no collector
/// was up, is committed.
async fn catch_up(opts: &LogsBench, lines: usize) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let port = crate::ports::free_port()?;
    let endpoint = format!("tcp/127.0.0.1:{port}");
    let logs = dir.path().join("logs0");
    std::fs::create_dir_all(&logs)?;
    write_file(&logs.join("app.log"), 0..lines)?;
    let agents_cancel = CancellationToken::new();
    let agent = Agent::start(agent_config(opts, dir.path(), 0, &endpoint, true), agents_cancel.clone()).await?;
    // The agent is up and waiting for a collector; its file holds the backlog.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let collector_cancel = CancellationToken::new();
    let start = Instant::now();
    let mut cfg = collector_config(dir.path(), &endpoint);
    cfg.collector.max_file_age_ms = 500;
    let collector = Collector::start(cfg, collector_cancel.clone()).await?;
    let stats = collector.stats();
    while CollectorStats::get(&stats.rows_committed) < lines as u64 {
        if start.elapsed() > Duration::from_secs(600) {
            bail!("backlog not committed after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    agents_cancel.cancel();
    agent.wait().await;
    collector_cancel.cancel();
    collector.wait().await;
    Ok(secs)
}

fn collector_config(dir: &Path, endpoint: &str) -> CollectorConfig {
    CollectorConfig {
        bus: BusConfig {
            cluster: "bench".into(),
            node: "c".into(),
            listen: vec![endpoint.to_owned()],
            compression: crate::bus_compression(),
            ..BusConfig::default()
        },
        collector: CollectorSettings {
            data_dir: dir.join("dataset"),
            http_listen: String::new(),
            ..CollectorSettings::default()
        },
        logs: LogsTableConfig::default(),
    }
}

fn agent_config(opts: &LogsBench, dir: &Path, a: usize, endpoint: &str, acknowledged: bool) -> AgentConfig {
    AgentConfig {
        bus: BusConfig {
            cluster: "bench".into(),
            node: format!("gw{a}"),
            connect: vec![endpoint.to_owned()],
            compression: crate::bus_compression(),
            ..BusConfig::default()
        },
        agent: AgentSettings {
            data_dir: dir.join(format!("state{a}")),
            http_listen: String::new(),
            acknowledged,
            ..AgentSettings::default()
        },
        limits: LimitsSettings { enabled: false, ..LimitsSettings::default() },
        cluster_config: Default::default(),
        dlr: DlrSettings { enabled: false, ..DlrSettings::default() },
        metrics: MetricsSettings { enabled: false, ..MetricsSettings::default() },
        gateway: switchboard_agent::gateway::GatewaySettings { socket: Default::default(), ..Default::default() },
        sources: vec![SourceConfig {
            name: "app".into(),
            paths: vec![dir.join(format!("logs{a}/*.log")).to_string_lossy().into_owned()],
            format: opts.format,
            start_at: StartAt::Beginning,
            max_line_bytes: 1 << 20,
            kv_in_message: opts.kv_in_message,
            binary: switchboard_agent::config::BinaryFiles::Skip,
        }],
    }
}

/// The same rows as the pipeline produces, built in memory, then timed through the Parquet writer
/// alone. Returns rows/s.
fn encode_ceiling(opts: &LogsBench) -> Result<f64> {
    let table = LogsTable::new(LogsTableConfig::default().promote);
    let id = StreamId { node: "gw1".into(), kind: StreamKind::Log, name: "app".into() };
    let mut batches: Vec<RecordBatch> = Vec::new();
    let mut b = LogBatchBuilder::new();
    let ctx = ParseContext { now_micros: 1_795_000_000_000_000, kv_in_message: opts.kv_in_message };
    let file = "/var/log/gw/smsc.log";
    let mut offset = 0u64;
    for i in 0..opts.lines {
        let l = line(i);
        let p = parse::parse(opts.format, &l, &ctx);
        let row = LogRow {
            seq: i as u64,
            ts_micros: p.ts_micros.unwrap_or(ctx.now_micros),
            observed_micros: ctx.now_micros,
            file,
            offset,
            level: p.level.map(|l| l.as_str()),
            message: &p.message,
            raw: None,
            truncated: false,
        };
        b.append(&row, &p.fields);
        offset += l.len() as u64 + 1;
        if b.len() == 8192 {
            batches.push(table.to_rows(&id, &b.finish()?)?.0);
        }
    }
    if !b.is_empty() {
        batches.push(table.to_rows(&id, &b.finish()?)?.0);
    }
    let dir = tempfile::tempdir()?;
    let c = CollectorSettings::default();
    let props = FileSettings::properties(c.zstd_level, c.row_group_rows, &["msg_id".to_owned()]);
    let start = Instant::now();
    let f = std::fs::File::create(dir.path().join("ceiling.parquet"))?;
    let mut w = ArrowWriter::try_new(f, table.schema(), Some(props))?;
    for batch in &batches {
        w.write(batch)?;
    }
    w.finish()?;
    w.inner().sync_all()?;
    Ok(opts.lines as f64 / start.elapsed().as_secs_f64())
}

/// Lines/s from agent start to every row committed, with `agents` agents.
async fn end_to_end(opts: &LogsBench, agents: usize, acknowledged: bool) -> Result<f64> {
    Ok(end_to_end_with(opts, agents, acknowledged, None, |_| {}).await?.lines_per_s)
}

/// One end-to-end run: its rate, and how long after the agents started the collector accepted
/// its first row (the bus's connection and the agent's first read are in that time).
pub(crate) struct EndToEnd {
    pub(crate) lines_per_s: f64,
    pub(crate) first_row: Duration,
}

/// [`end_to_end`] with the collector's config changed by `configure` (e.g. its dataset on S3), and
/// with `tls` (a directory of [`switchboard_bus::tls::write_cluster`] for `collector:c` and
/// `agent:gw<a>`) on mutual TLS.
pub(crate) async fn end_to_end_with(
    opts: &LogsBench,
    agents: usize,
    acknowledged: bool,
    tls: Option<&Path>,
    configure: impl FnOnce(&mut CollectorConfig),
) -> Result<EndToEnd> {
    let dir = tempfile::tempdir()?;
    let port = crate::ports::free_port()?;
    let endpoint = format!("{}/127.0.0.1:{port}", if tls.is_some() { crate::tls::proto() } else { "tcp" });
    let tls_of = |role: &str, name: &str| {
        tls.map(|t| switchboard_bus::tls::TlsConfig {
            ca: t.join("ca.crt"),
            cert: t.join(format!("{role}-{name}.crt")),
            key: t.join(format!("{role}-{name}.key")),
            members: None,
        })
    };
    let per_agent = opts.lines / agents;
    let total = per_agent * agents;
    for a in 0..agents {
        let logs = dir.path().join(format!("logs{a}"));
        std::fs::create_dir_all(&logs)?;
        write_file(&logs.join("app.log"), a * per_agent..(a + 1) * per_agent)?;
    }
    let collector_cancel = CancellationToken::new();
    let mut config = collector_config(dir.path(), &endpoint);
    config.bus.tls = tls_of("collector", "c");
    configure(&mut config);
    let collector = Collector::start(config, collector_cancel.clone()).await?;
    let stats: Arc<CollectorStats> = collector.stats();
    let agents_cancel = CancellationToken::new();
    let start = Instant::now();
    let mut running = Vec::new();
    for a in 0..agents {
        let mut config = agent_config(opts, dir.path(), a, &endpoint, acknowledged);
        config.bus.tls = tls_of("agent", &format!("gw{a}"));
        running.push(Agent::start(config, agents_cancel.clone()).await?);
    }
    let deadline = Duration::from_secs(600);
    let mut first_row = None;
    while CollectorStats::get(&stats.rows_accepted) < total as u64 {
        if first_row.is_none() && CollectorStats::get(&stats.rows_accepted) > 0 {
            first_row = Some(start.elapsed());
        }
        if start.elapsed() > deadline {
            bail!("collector holds {} of {total} rows after {deadline:?}", CollectorStats::get(&stats.rows_accepted));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Commit everything: the clock stops when the last file is durable and visible.
    collector_cancel.cancel();
    collector.wait().await;
    let elapsed = start.elapsed();
    let committed = CollectorStats::get(&stats.rows_committed);
    agents_cancel.cancel();
    for a in running {
        a.wait().await;
    }
    if committed != total as u64 {
        bail!("committed {committed} rows, expected {total}");
    }
    Ok(EndToEnd { lines_per_s: total as f64 / elapsed.as_secs_f64(), first_row: first_row.unwrap_or(elapsed) })
}
