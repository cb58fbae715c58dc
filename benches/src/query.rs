//! The analyst's queries: a fixed query set over a generated day of data, timed for
//! `switchboard query` (the `switchboard-queries` engine, as the CLI runs it) and for DuckDB on
//! the same files.
//!
//! The dataset is written by the collector's own sinks (the same partitioning, row groups,
//! compression and Bloom filters as a running collector), one file per table and hour: `--logs`
//! log rows from `--nodes` nodes over 24 hours (2026-01-01), and metric snapshots every 10 s per
//! node (8 operators: counters `submitted`, `delivered`, `failed` and the timer `dlr_latency`
//! with its HDR histogram) until `--metrics` rows. It is kept in `--data` and reused when the
//! same sizes are asked again.
//!
//! Each query runs `--runs` times per engine, each time from scratch (open the dataset, plan,
//! run, collect), and the median counts. DuckDB runs in a Python process (`duckdb` from PyPI,
//! installed by the bench when missing) over `read_parquet(..., hive_partitioning = true)`
//! views; without it the DuckDB column is skipped with the reason. Both engines' answers are
//! compared (row count and a checksum of the last numeric column) so a fast wrong answer shows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use base64::Engine as _;
use switchboard_bus::histogram;
use switchboard_bus::keys::{StreamId, StreamKind};
use switchboard_bus::tables::{LOGS, METRICS};
use switchboard_bus::wire::log_batch::{self, LogBatchBuilder, LogRow};
use switchboard_collector::config::CollectorConfig;
use switchboard_collector::stats::CollectorStats;
use switchboard_collector::tables::promoted;
use switchboard_queries::datafusion_batch::RecordBatch;
use switchboard_queries::Dataset;

/// 2026-01-01T00:00:00Z in µs.
const DAY_START: i64 = 1_767_225_600_000_000;
const HOUR_US: i64 = 3_600_000_000;
const OPERATORS: [&str; 8] = ["op-de1", "op-de2", "op-fr1", "op-it1", "op-es1", "op-uk1", "op-pl1", "op-nl1"];
const BATCH: usize = 8192;
/// The metric interval, ms.
const INTERVAL_MS: i64 = 10_000;

/// What to generate and how often to run each query.
pub(crate) struct QueryBench {
    pub data: Option<PathBuf>,
    pub logs: u64,
    pub metrics: u64,
    pub nodes: usize,
    pub runs: usize,
}

/// One query of the set, in both dialects.
struct Query {
    name: &'static str,
    /// `scan`: target at most 1.5x DuckDB; `pruned`/`point`: at most 1x.
    kind: &'static str,
    ours: String,
    duckdb: String,
}

fn queries(point_id: &str) -> Vec<Query> {
    let same = |name, kind, sql: &str| Query { name, kind, ours: sql.to_owned(), duckdb: sql.to_owned() };
    vec![
        same(
            "count per node per hour",
            "scan",
            "SELECT node, date, hour, count(*) AS n FROM logs GROUP BY node, date, hour ORDER BY n DESC, node, hour",
        ),
        same(
            "errors in one hour (pruned)",
            "pruned",
            "SELECT count(*) AS n, count(DISTINCT operator) AS operators FROM logs \
             WHERE date = '2026-01-01' AND hour = 13 AND level = 'ERROR'",
        ),
        Query {
            name: "top operators by regex",
            kind: "scan",
            ours: "SELECT operator, count(*) AS n FROM logs WHERE regexp_like(message, 'stat:(UNDELIV|REJECTD) err:0[0-9]{2}') \
                   GROUP BY operator ORDER BY n DESC, operator LIMIT 5"
                .into(),
            duckdb: "SELECT operator, count(*) AS n FROM logs WHERE regexp_matches(message, 'stat:(UNDELIV|REJECTD) err:0[0-9]{2}') \
                     GROUP BY operator ORDER BY n DESC, operator LIMIT 5"
                .into(),
        },
        same(
            "point lookup by msg_id",
            "point",
            &format!("SELECT seq, node, ts, message FROM logs WHERE msg_id = '{point_id}'"),
        ),
        Query {
            name: "merged p99 per operator (metrics)",
            kind: "scan",
            ours: "SELECT operator, hdr_count(h) AS n, hdr_quantile(h, 0.99) AS p99_ms FROM \
                   (SELECT tag(tags, 'operator') AS operator, hdr_merge(histogram) AS h FROM metrics \
                   WHERE name = 'dlr_latency' GROUP BY 1) ORDER BY 1"
                .into(),
            // DuckDB cannot read HDR histograms: it reads the same rows and sums their counts.
            duckdb: "SELECT regexp_extract(tags, 'operator:([^,]*)', 1) AS operator, sum(count) AS n, \
                     NULL AS p99_ms FROM metrics WHERE name = 'dlr_latency' GROUP BY 1 ORDER BY 1"
                .into(),
        },
    ]
}

pub(crate) fn run(b: &QueryBench) -> Result<()> {
    let (_tmp, dir) = match &b.data {
        Some(d) => (None, d.clone()),
        None => {
            let t = tempfile::tempdir()?;
            let d = t.path().to_owned();
            (Some(t), d)
        }
    };
    let nodes = b.nodes.max(1);
    let marker = dir.join(".sb-bench-query");
    let want = format!("logs={} metrics={} nodes={nodes}\n", b.logs, b.metrics);
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(want.as_str()) {
        println!("reusing the dataset in {} ({})", dir.display(), want.trim());
    } else {
        if dir.exists() {
            for t in [LOGS, METRICS.name] {
                let _ = std::fs::remove_dir_all(dir.join(t));
            }
        }
        std::fs::create_dir_all(&dir)?;
        generate(&dir, b.logs, b.metrics, nodes)?;
        std::fs::write(&marker, &want)?;
    }
    let (files, bytes) = files_and_bytes(&dir.join(LOGS));
    let (mfiles, mbytes) = files_and_bytes(&dir.join(METRICS.name));
    println!("dataset: logs {files} files, {} MiB; metrics {mfiles} files, {} MiB", bytes >> 20, mbytes >> 20);

    let point_id = msg_id(nodes / 2, b.logs / nodes as u64 / 2 + 7);
    let set = queries(&point_id);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut ours = Vec::new();
    for q in &set {
        let mut times = Vec::new();
        let mut answer = Answer::default();
        for _ in 0..b.runs.max(1) {
            let t = Instant::now();
            let batches = rt.block_on(async {
                let ds = Dataset::open(&dir).await?;
                ds.sql(&q.ours).await
            })?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            answer = Answer::of(&batches);
        }
        ours.push((median(&mut times), answer));
    }
    let duck = duckdb(&dir, &set, b.runs.max(1));

    println!(
        "\n{:<36} {:>12} {:>12} {:>9} {:>8}  answers (rows, checksum)",
        "query", "switchboard", "DuckDB", "ratio", "target"
    );
    for (i, q) in set.iter().enumerate() {
        let (ms, answer) = &ours[i];
        let target = if q.kind == "scan" { 1.5 } else { 1.0 };
        match &duck {
            Ok(d) => {
                let (dms, danswer) = &d[i];
                let ratio = ms / dms;
                let same = if answer == danswer || q.name.starts_with("merged") { "same" } else { "DIFFERENT" };
                println!(
                    "{:<36} {:>9.1} ms {:>9.1} ms {:>8.2}x {:>7.1}x  {} ({}, {}) {}",
                    q.name,
                    ms,
                    dms,
                    ratio,
                    target,
                    if ratio <= target { "met" } else { "MISSED" },
                    answer.rows,
                    answer.checksum,
                    same
                );
            }
            Err(_) => println!(
                "{:<36} {:>9.1} ms {:>12} {:>9} {:>7.1}x  ({}, {})",
                q.name, ms, "-", "-", target, answer.rows, answer.checksum
            ),
        }
    }
    if let Err(e) = &duck {
        println!("DuckDB skipped: {e:#}");
    }
    println!(
        "(median of {} runs each, from opening the dataset to the collected result; the p99 row's DuckDB figure \
         reads the same rows and sums counts, as DuckDB cannot merge HDR histograms)",
        b.runs.max(1)
    );
    Ok(())
}

/// A result's shape: rows and the sum of its last numeric column (integers; floats rounded).
#[derive(Debug, Default, PartialEq, serde::Deserialize)]
struct Answer {
    rows: u64,
    checksum: i64,
}

impl Answer {
    fn of(batches: &[RecordBatch]) -> Self {
        let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        let mut checksum = 0i64;
        for b in batches {
            let Some(col) = b.columns().iter().rev().find(|c| c.data_type().is_numeric()) else { continue };
            let Ok(col) = arrow::compute::cast(col, &DataType::Int64) else { continue };
            let col = col.as_primitive::<arrow::datatypes::Int64Type>();
            checksum += (0..col.len()).filter(|&i| col.is_valid(i)).map(|i| col.value(i)).sum::<i64>();
        }
        Self { rows, checksum }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn msg_id(node: usize, seq: u64) -> String {
    format!("{node:02}{seq:012x}")
}

/// A small deterministic mixer for the generated values.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

fn files_and_bytes(dir: &Path) -> (u64, u64) {
    let files = switchboard_bus::tables::table_files(dir).unwrap_or_default();
    let committed = files.iter().filter(|f| f.committed);
    (committed.clone().count() as u64, committed.map(|f| f.bytes).sum())
}

/// Write the day of logs and metrics through the collector's sinks, one file per table and hour.
fn generate(dir: &Path, logs: u64, metrics: u64, nodes: usize) -> Result<()> {
    let config: CollectorConfig = serde_json::from_value(serde_json::json!({
        "bus": {"node": "bench-collector"},
        "collector": {"data_dir": dir, "max_file_age_ms": 86_400_000u64},
    }))?;
    let stats = Arc::new(CollectorStats::default());
    let store = switchboard_collector::store::Store::Local { root: dir.to_owned() };
    let mut log_sink = switchboard_collector::tables::table_sink(
        &config,
        store.clone(),
        LOGS,
        config.logs.promote.clone(),
        BTreeMap::new(),
        stats.clone(),
    );
    let mut metric_sink = switchboard_collector::tables::table_sink(
        &config,
        store,
        METRICS.name,
        promoted(&METRICS),
        BTreeMap::new(),
        stats.clone(),
    );
    let per_node = logs / nodes as u64;
    let intervals = (86_400_000 / INTERVAL_MS) as u64;
    // Rows per node and interval: 3 counters and 1 timer per operator, for as many operators
    // as the metric rows allow.
    let series = (metrics.div_ceil(nodes as u64 * intervals) as usize).clamp(4, OPERATORS.len() * 4);
    let t = Instant::now();
    println!(
        "generating {logs} log rows ({nodes} nodes) and {} metric rows over 24 h in {} ...",
        series as u64 * intervals * nodes as u64,
        dir.display()
    );
    let mut builder = LogBatchBuilder::new();
    let mut message = String::new();
    let mut interval = 0u64;
    for hour in 0..24 {
        // Logs of this hour, node by node, in batches.
        for node in 0..nodes {
            let stream = StreamId { node: format!("gw{node}"), kind: StreamKind::Log, name: "smsc".into() };
            let (first, end) = (per_node * hour / 24, per_node * (hour + 1) / 24);
            for seq in first..end {
                let ts = DAY_START + hour as i64 * HOUR_US + ((seq - first) as i64 * HOUR_US) / (end - first) as i64;
                let r = mix(seq ^ ((node as u64) << 56));
                let op = OPERATORS[(r % OPERATORS.len() as u64) as usize];
                let id = msg_id(node, seq);
                let (level, stat) = match r % 100 {
                    0..=1 => ("ERROR", "REJECTD"),
                    2..=9 => ("WARN", "UNDELIV"),
                    _ => ("INFO", "DELIVRD"),
                };
                let latency = 200 + (r >> 20) % 30_000;
                message.clear();
                use std::fmt::Write as _;
                let _ = write!(
                    message,
                    "dlr id:{id} op:{op} dest:+4915{:08} stat:{stat} err:{:03} latency_ms={latency}",
                    (r >> 8) % 100_000_000,
                    if stat == "DELIVRD" { 0 } else { (r >> 40) % 120 }
                );
                let latency = latency.to_string();
                builder.append(
                    &LogRow {
                        seq,
                        ts_micros: ts,
                        observed_micros: ts + 1500,
                        file: "/var/log/smsc/smsc.log",
                        offset: seq * 120,
                        level: Some(level),
                        message: &message,
                        raw: None,
                        truncated: false,
                    },
                    &[("msg_id", id.as_str()), ("operator", op), ("latency_ms", latency.as_str())],
                );
                if builder.len() >= BATCH || seq + 1 == end {
                    log_sink.handle(&stream, &log_batch::encode(&builder.finish()?)?, false);
                }
            }
        }
        // Metric snapshots of this hour.
        let hour_end = (hour + 1) * intervals / 24;
        while interval < hour_end {
            let ts = DAY_START + interval as i64 * INTERVAL_MS * 1000;
            for node in 0..nodes {
                let stream = StreamId { node: format!("gw{node}"), kind: StreamKind::Log, name: METRICS.stream.into() };
                for s in 0..series {
                    let op = OPERATORS[s / 4];
                    let r = mix(interval ^ ((node as u64) << 48) ^ ((s as u64) << 40));
                    let tags = format!("operator:{op}");
                    let (name, kind, value, count, hist) = match s % 4 {
                        0 => ("submitted", "counter", (r % 500) as f64, 0u64, String::new()),
                        1 => ("delivered", "counter", (r % 450) as f64, 0, String::new()),
                        2 => ("failed", "counter", (r % 20) as f64, 0, String::new()),
                        _ => {
                            let mut h = histogram::new_histogram();
                            let n = 20 + r % 40;
                            for k in 0..n {
                                let ms = 50.0 + (mix(r ^ k) % 20_000) as f64 / 3.0;
                                let _ = h.record((ms * histogram::SCALE) as u64);
                            }
                            let b64 = base64::engine::general_purpose::STANDARD.encode(histogram::encode(&h)?);
                            ("dlr_latency", "timer", h.mean() / histogram::SCALE, n, b64)
                        }
                    };
                    let seq = interval * series as u64 + s as u64;
                    let (value, count) = (value.to_string(), count.to_string());
                    builder.append(
                        &LogRow {
                            seq,
                            ts_micros: ts,
                            observed_micros: ts,
                            file: "metrics.log",
                            offset: seq * 100,
                            level: None,
                            message: name,
                            raw: None,
                            truncated: false,
                        },
                        &[
                            ("name", name),
                            ("tags", tags.as_str()),
                            ("kind", kind),
                            ("value", value.as_str()),
                            ("count", count.as_str()),
                            ("histogram", hist.as_str()),
                            ("interval_ms", "10000"),
                        ],
                    );
                }
                metric_sink.handle(&stream, &log_batch::encode(&builder.finish()?)?, false);
            }
            interval += 1;
        }
        log_sink.commit_standalone(true);
        metric_sink.commit_standalone(true);
        if hour % 6 == 5 {
            println!("  {:>2} of 24 hours written ({:.1?})", hour + 1, t.elapsed());
        }
    }
    let (status, malformed) = (log_sink.status(), stats.payloads_malformed.load(std::sync::atomic::Ordering::Relaxed));
    if malformed > 0 || status.failing.is_some() {
        bail!("the sink refused the generated data: {malformed} malformed payloads, {:?}", status.failing);
    }
    println!("generated in {:.1?}", t.elapsed());
    Ok(())
}

/// Run the set in DuckDB (Python), installing `duckdb` from PyPI if needed: per query the
/// median ms and the answer.
fn duckdb(dir: &Path, set: &[Query], runs: usize) -> Result<Vec<(f64, Answer)>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/duckdb_queries.py");
    // pytz: DuckDB's Python client needs it to hand out timestamps with a time zone.
    let has =
        |py: &str| Command::new(py).args(["-c", "import duckdb, pytz"]).output().is_ok_and(|o| o.status.success());
    if !has("python3") {
        println!("installing duckdb from PyPI ...");
        let out = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "duckdb==2.0.0", "pytz"])
            .output()
            .context("python3 is not available")?;
        if !out.status.success() || !has("python3") {
            bail!("cannot install duckdb: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    let sql: Vec<&str> = set.iter().map(|q| q.duckdb.as_str()).collect();
    let out = Command::new("python3")
        .arg(&script)
        .arg(dir)
        .arg(runs.to_string())
        .arg(serde_json::to_string(&sql)?)
        .output()
        .context("python3")?;
    if !out.status.success() {
        bail!("the DuckDB run failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    #[derive(serde::Deserialize)]
    struct Timed {
        ms: f64,
        rows: u64,
        checksum: i64,
    }
    let timed: Vec<Timed> = serde_json::from_slice(&out.stdout).context("the DuckDB run's output")?;
    Ok(timed.into_iter().map(|t| (t.ms, Answer { rows: t.rows, checksum: t.checksum })).collect())
}
