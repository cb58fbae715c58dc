//! The demo's summary: every figure computed with SQL over the Parquet dataset the collector
//! wrote (what the gateways counted on their side is shown beside it, never instead of it), then
//! the canned reports and a chart written to `<dir>/reports`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use switchboard_queries::datafusion_batch::RecordBatch;
use switchboard_queries::{render, reports, Dataset, OutputFormat};

use crate::demo::load::{quantile, Load, LIMIT_KEY, LIMIT_RATE, TIMER};

/// What the demo did, for the summary to check against the dataset.
pub(crate) struct Facts {
    pub(crate) nodes: Vec<String>,
    /// Log lines written per node.
    pub(crate) written: Vec<u64>,
    pub(crate) load: Arc<Load>,
    /// The node whose agent was killed, if any.
    pub(crate) victim: Option<String>,
    /// When it was down (kill, restart).
    pub(crate) outage: Option<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)>,
    pub(crate) dir: PathBuf,
    pub(crate) dataset: PathBuf,
}

/// What the demo measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoSummary {
    /// Log lines the gateways wrote.
    pub written: u64,
    /// Of them, rows in the `logs` table.
    pub stored: u64,
    /// `(node, stream, seq)` keys found more than once.
    pub duplicates: u64,
    /// The dataset's root.
    pub dataset: PathBuf,
}

/// The first value of column `col` of a one-row answer, as a float.
fn scalar(batches: &[RecordBatch], col: usize) -> Option<f64> {
    let b = batches.iter().find(|b| b.num_rows() > 0)?;
    let c = arrow::compute::cast(b.column(col), &DataType::Float64).ok()?;
    let c = c.as_primitive::<arrow::datatypes::Float64Type>();
    (!c.is_null(0)).then(|| c.value(0))
}

/// Rows of two columns `(text, number)`.
fn pairs(batches: &[RecordBatch]) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for b in batches {
        let (Ok(k), Ok(v)) =
            (arrow::compute::cast(b.column(0), &DataType::Utf8), arrow::compute::cast(b.column(1), &DataType::Float64))
        else {
            continue;
        };
        let (k, v) = (k.as_string::<i32>(), v.as_primitive::<arrow::datatypes::Float64Type>());
        for i in 0..b.num_rows() {
            out.push((k.value(i).to_owned(), if v.is_null(i) { 0.0 } else { v.value(i) }));
        }
    }
    out
}

/// Print the summary and write the reports; the figures the caller checks come back.
pub(crate) async fn summarize(f: &Facts) -> Result<DemoSummary> {
    let ds = Dataset::open(&f.dataset).await?;
    let mut out = std::io::stdout().lock();
    let written: u64 = f.written.iter().sum();

    // Logs: exactly once, per node, the killed one included.
    let stored = scalar(&ds.sql("SELECT count(*) FROM logs").await?, 0).unwrap_or(0.0) as u64;
    let duplicates = scalar(
        &ds.sql(
            "SELECT count(*) FROM (SELECT node, stream, seq FROM logs GROUP BY node, stream, seq HAVING count(*) > 1)",
        )
        .await?,
        0,
    )
    .unwrap_or(0.0) as u64;
    let per_node = pairs(&ds.sql("SELECT node, count(*) FROM logs GROUP BY node ORDER BY node").await?);
    writeln!(out, "\n1. Logs, exactly once (SQL over the logs table)")?;
    for (i, node) in f.nodes.iter().enumerate() {
        let got = per_node.iter().find(|(n, _)| n == node).map_or(0, |(_, c)| *c as u64);
        let mark =
            if Some(node) == f.victim.as_ref() { "   <- its agent was killed with -9 and restarted" } else { "" };
        writeln!(out, "   {node}: {:>7} lines written, {got:>7} rows stored{mark}", f.written[i])?;
    }
    let verdict = if stored == written && duplicates == 0 { "exactly once" } else { "MISMATCH" };
    writeln!(out, "   {written} lines written, {stored} rows stored, {duplicates} duplicate keys: {verdict}.")?;

    // Limits: admitted per second against the limit.
    writeln!(
        out,
        "\n2. One rate limit shared by {} nodes: {LIMIT_KEY} at {LIMIT_RATE}/s (SQL over the limits table)",
        f.nodes.len()
    )?;
    // Each node's windows end on whole seconds, so one second's rows are one window per node.
    let per_second = |column: &str| {
        format!(
            "SELECT CAST(CAST(date_part('epoch', date_trunc('second', ts)) AS BIGINT) AS VARCHAR), sum({column}) \
             FROM limits WHERE key = '{LIMIT_KEY}' GROUP BY 1 ORDER BY 1"
        )
    };
    // The first and last seconds are partial: the load started and stopped inside them.
    let inner_seconds = |seconds: Vec<(String, f64)>| -> Vec<(i64, f64)> {
        let n = seconds.len();
        seconds
            .into_iter()
            .filter_map(|(s, a)| Some((s.parse::<i64>().ok()?, a)))
            .collect::<Vec<_>>()
            .get(1..n.saturating_sub(1))
            .map(<[_]>::to_vec)
            .unwrap_or_default()
    };
    let inner = inner_seconds(pairs(&ds.sql(&per_second("allowed")).await?));
    let mut asked: Vec<u64> =
        inner_seconds(pairs(&ds.sql(&per_second("allowed + denied")).await?)).iter().map(|(_, a)| *a as u64).collect();
    let admitted: Vec<u64> = inner.iter().map(|(_, a)| *a as u64).collect();
    let show = |v: &[u64]| -> String {
        let mut v = v.to_vec();
        if v.is_empty() {
            return "no full seconds".into();
        }
        let (med, max) = (quantile(&mut v, 0.5), v.iter().copied().max().unwrap_or(0));
        format!(
            "median {med}/s, highest {max}/s over {} s ({:.0}% and {:.0}% of the limit)",
            v.len(),
            100.0 * med as f64 / LIMIT_RATE as f64,
            100.0 * max as f64 / LIMIT_RATE as f64
        )
    };
    let demand: u64 = (0..f.nodes.len()).map(Load::demand).sum();
    writeln!(
        out,
        "   gateways asked for a median {}/s (paced at {demand}/s); admitted across the cluster: {}",
        quantile(&mut asked, 0.5),
        show(&admitted)
    )?;
    if let Some((down, up)) = f.outage {
        let during: Vec<u64> = inner
            .iter()
            .filter(|(s, _)| *s > down.timestamp() && *s < up.timestamp())
            .map(|(_, a)| *a as u64)
            .collect();
        writeln!(out, "   while {} was down: {}", f.victim.as_deref().unwrap_or("?"), show(&during))?;
    }
    let by_node = pairs(
        &ds.sql(&format!(
            "SELECT node, sum(allowed) FROM limits WHERE key = '{LIMIT_KEY}' GROUP BY node ORDER BY node"
        ))
        .await?,
    );
    let total_allowed: f64 = by_node.iter().map(|(_, a)| a).sum();
    let shares: Vec<String> = by_node
        .iter()
        .map(|(n, a)| format!("{n} {:.0}%", if total_allowed > 0.0 { 100.0 * a / total_allowed } else { 0.0 }))
        .collect();
    let asked: Vec<String> = f.nodes.iter().enumerate().map(|(i, n)| format!("{n} {}/s", Load::demand(i))).collect();
    writeln!(out, "   shares of what was admitted: {} (demand: {})", shares.join(", "), asked.join(", "))?;

    // DLRs: reported on the wrong node, found on the bus.
    writeln!(out, "\n3. DLRs arriving on a node that does not own the message (SQL over the dlr table)")?;
    let events = pairs(&ds.sql("SELECT event, count(*) FROM dlr GROUP BY event ORDER BY event").await?);
    let ev: Vec<String> = events.iter().map(|(e, n)| format!("{e} {n:.0}")).collect();
    writeln!(out, "   events: {}", ev.join(", "))?;
    let resolved = ds
        .sql(
            "SELECT count(*), approx_percentile_cont(lookup_us, 0.5), approx_percentile_cont(lookup_us, 0.99), \
             sum(CASE WHEN answered_by <> owner THEN 1 ELSE 0 END) \
             FROM dlr WHERE event = 'resolved' AND at_node <> owner",
        )
        .await?;
    let found = scalar(&resolved, 0).unwrap_or(0.0);
    if found > 0.0 {
        writeln!(
            out,
            "   {found:.0} found in one bus round trip from another node (lookup p50 {:.0} us, p99 {:.0} us), {:.0} of them answered by a copy while the owner was down",
            scalar(&resolved, 1).unwrap_or(0.0),
            scalar(&resolved, 2).unwrap_or(0.0),
            scalar(&resolved, 3).unwrap_or(0.0),
        )?;
    } else {
        writeln!(out, "   none looked up from another node (one node: every DLR arrived where it was registered)")?;
    }
    let d = &f.load.dlr;
    let mut rt = d.round_trips_us.lock().map(|v| v.clone()).unwrap_or_default();
    writeln!(
        out,
        "   as the gateways saw it: {} registered ({} registrations failed: sent to an agent as it was killed, say), {} delivered to the owner, {} answered by a copy, {} duplicates, {} not found, {} failed (no answer or 503 after {} tries); {} reports were answered 503 (try again: a node just restarted, or one just died) or not at all and were handed in again a second later; report round trip p50 {} us, p99 {} us",
        d.registered.load(Ordering::Relaxed),
        d.unregistered.load(Ordering::Relaxed),
        d.delivered.load(Ordering::Relaxed),
        d.owner_down.load(Ordering::Relaxed),
        d.duplicate.load(Ordering::Relaxed),
        d.not_found.load(Ordering::Relaxed),
        d.errors.load(Ordering::Relaxed),
        super::load::TRIES,
        d.retried.load(Ordering::Relaxed),
        quantile(&mut rt, 0.5),
        quantile(&mut rt, 0.99),
    )?;
    if cfg!(debug_assertions) {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        writeln!(
            out,
            "   (an unoptimized build, with four processes and the load on {cores} cores: `sb-bench dlr` measures lookups in a release build)"
        )?;
    }

    // Metrics: a cluster-wide p99 from merged histograms.
    writeln!(
        out,
        "\n4. Gateway metrics: a cluster-wide p99 from per-node HDR histograms (SQL over the metrics table)"
    )?;
    let merged = ds
        .sql(&format!(
            "SELECT hdr_count(hdr_merge(histogram)), hdr_quantile(hdr_merge(histogram), 0.99) FROM metrics WHERE name = '{TIMER}'"
        ))
        .await?;
    let mut sent = f.load.timer_values.lock().map(|v| v.clone()).unwrap_or_default();
    writeln!(
        out,
        "   {TIMER}: {:.0} values merged from every node's snapshots, p99 {:.0} ms; the gateways sent {} values, exact p99 {} ms",
        scalar(&merged, 0).unwrap_or(0.0),
        scalar(&merged, 1).unwrap_or(0.0),
        sent.len(),
        quantile(&mut sent, 0.99),
    )?;
    if f.victim.is_some() {
        writeln!(
            out,
            "   (StatsD is UDP: values sent in the killed agent's last unfinished interval are not in the dataset)"
        )?;
    }

    // Reports and a chart.
    let dir = f.dir.join("reports");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written_reports = Vec::new();
    for (name, _) in reports::REPORTS {
        let output = match reports::run(&ds, name, &reports::ReportOptions::default()).await {
            Ok(o) => o,
            Err(e) => {
                writeln!(out, "   report {name} failed: {e}")?;
                continue;
            }
        };
        let mut text = Vec::new();
        render(&output.batches, OutputFormat::Table, &mut text)?;
        std::fs::write(dir.join(format!("{name}.txt")), text)?;
        written_reports.push(name.to_string());
        if *name == "throughput" {
            if let Some((series, value)) = &output.report.series {
                let lines = switchboard_queries::plot::series_of(&output.batches, series, value)?;
                let svg = switchboard_queries::plot::svg(&lines, &output.title(name), value, output.gap_ms());
                std::fs::write(dir.join("throughput.svg"), svg)?;
                written_reports.push("throughput.svg".into());
            }
        }
    }
    writeln!(out, "\nReports in {}: {}", dir.display(), written_reports.join(", "))?;
    writeln!(out, "Configs, logs and the dataset are in {}.", f.dir.display())?;
    writeln!(out, "Next, try:")?;
    writeln!(
        out,
        "  switchboard query --data {} \"SELECT node, level, count(*) FROM logs GROUP BY 1, 2 ORDER BY 1, 2\"",
        f.dataset.display()
    )?;
    writeln!(out, "  switchboard report dlr-latency --data {}", f.dataset.display())?;
    Ok(DemoSummary { written, stored, duplicates, dataset: f.dataset.clone() })
}
