//! The reports operators ask for every day, each one SQL statement over the dataset.
//!
//! | report | question | from |
//! | --- | --- | --- |
//! | `throughput` | messages per node and operator over time (a counter, `submitted` by default) | `metrics` |
//! | `log-volume` | log lines per node over time | `logs` |
//! | `errors` | share of log lines at level error or worse, per node over time | `logs` |
//! | `top-errors` | the most frequent error messages, numbers, hex ids and UUIDs folded ([`FOLDS`]) so ids do not split them | `logs` |
//! | `dlr-latency` | submit-to-DLR latency percentiles per connector (operator) | `dlr` |
//! | `timer` | percentiles of a timer per operator, merged exactly across nodes (`dlr_latency` by default) | `metrics` |
//! | `rejections` | rate-limit rejections per limit over time | `limits` |
//!
//! Time series reports have a `time` column (the bucket's start), series columns and one value
//! column, which is what [`crate::plot`] draws. [`run`] runs a report over a dataset: it picks the
//! bucket width from the span of the data ([`bucket_for_span`]) unless one is given, and a table
//! with no data yet gives an empty result that says so ([`ReportOutput::no_data`]), not an error.

use std::fmt::Write as _;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use switchboard_bus::tables;

use crate::{Dataset, QueryError};

/// Bucket widths [`run`] picks from, in seconds: each at most three times the one before, so some
/// width gives 40 to [`MAX_POINTS`] buckets for any span from two minutes to four months.
pub const BUCKETS_S: &[u64] = &[1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21_600, 43_200, 86_400, 604_800];
/// Buckets a picked width gives a time series at most.
pub const MAX_POINTS: u64 = 120;
/// The width [`report`] uses when asked to pick one (`bucket_s` 0) without a dataset to look at.
const UNPICKED_BUCKET_S: u64 = 3600;

/// How a report is asked for.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Bucket width of time series, in seconds; 0 (the default) lets [`run`] pick it from the
    /// span of the data ([`bucket_for_span`]).
    pub bucket_s: u64,
    /// The metric a metrics report reads (`throughput`, `timer`); its default when `None`.
    pub metric: Option<String>,
    /// Rows of a top-N report.
    pub limit: usize,
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self { bucket_s: 0, metric: None, limit: 20 }
    }
}

/// A report: its SQL and, for a time series, which columns to draw.
#[derive(Debug, Clone)]
pub struct Report {
    /// The statement.
    pub sql: String,
    /// For time series: the series columns and the value column.
    pub series: Option<(Vec<&'static str>, &'static str)>,
    /// The table it reads.
    pub table: &'static str,
}

/// Every report's name and one line about it.
pub const REPORTS: &[(&str, &str)] = &[
    ("throughput", "messages per node and operator over time (metrics counter, --metric, default `submitted`)"),
    ("log-volume", "log lines per node over time"),
    ("errors", "share of log lines at level error or worse, per node over time"),
    ("top-errors", "most frequent error messages (numbers, hex ids, UUIDs folded), --limit rows"),
    ("dlr-latency", "submit-to-DLR latency percentiles per connector, from the dlr table"),
    ("timer", "percentiles of a timer per operator merged across nodes (--metric, default `dlr_latency`)"),
    ("rejections", "rate-limit rejections per limit over time"),
];

const ERROR_LEVELS: &str = "('error', 'critical', 'alert', 'emergency')";

/// What [`fold_ids`] replaces in a message, in order; a placeholder leaves no digit behind for a
/// later pattern. Which placeholder a token gets depends on its shape, never on the digits an id
/// happens to draw (a hex id `2710` and `1a3f` fold alike):
///
/// | placeholder | what |
/// | --- | --- |
/// | `<uuid>` | UUIDs (`0b8e2f7c-3d4a-4e5b-9c6d-7e8f9a0b1c2d`) |
/// | `<hex>` | `0x` numbers (`0x1F3A`) |
/// | `<id>` | words of 8 or more hex digits: message and queue ids, hashes, long numbers such as phone numbers |
/// | `<n>` | numbers, dotted ones too (`0.52`, `10.0.0.17`, `5.1.1`), shorter words of hex digits with a digit (`1a3f`), digits within words (`1840ms`, `smsc02`) |
pub const FOLDS: &[(&str, &str)] = &[
    (r"(?i)\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", "<uuid>"),
    (r"\b0[xX][0-9a-fA-F]+\b", "<hex>"),
    (r"\b[0-9a-fA-F]{8,}\b", "<id>"),
    (r"\b[0-9]+(?:\.[0-9]+)+\b", "<n>"),
    (r"\b[0-9a-fA-F]*[0-9][0-9a-fA-F]*\b", "<n>"),
    (r"[0-9]+", "<n>"),
];

/// A SQL expression of `column` with UUIDs, hex ids and numbers replaced by placeholders
/// ([`FOLDS`]), so that messages differing only in ids and counts read the same.
pub fn fold_ids(column: &str) -> String {
    FOLDS.iter().fold(column.to_owned(), |expr, (pattern, placeholder)| {
        format!("regexp_replace({expr}, '{}', '{placeholder}', 'g')", quote(pattern))
    })
}

/// The bucket width, in seconds, that gives a time series over `span_ms` at most [`MAX_POINTS`]
/// buckets: the narrowest of [`BUCKETS_S`] that does (the widest for longer spans).
pub fn bucket_for_span(span_ms: i64) -> u64 {
    let span_s = span_ms.max(0).unsigned_abs().div_ceil(1000);
    BUCKETS_S.iter().copied().find(|width| span_s.div_ceil(*width) <= MAX_POINTS).unwrap_or(604_800)
}

/// A bucket width as `--bucket` takes it: `5s`, `10m`, `6h`, `7d`.
pub fn format_bucket(bucket_s: u64) -> String {
    match bucket_s {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn quote(s: &str) -> String {
    s.replace('\'', "''")
}

/// For a report that reads one metric (`--metric`): its kind and the metric it reads by default.
pub fn metric_read(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "throughput" => Some(("counter", "submitted")),
        "timer" => Some(("timer", "dlr_latency")),
        _ => None,
    }
}

/// The report called `name`. A `bucket_s` of 0 is taken as one hour here; [`run`] picks it
/// from the data instead.
pub fn report(name: &str, opts: &ReportOptions) -> Result<Report, QueryError> {
    let bucket_s = if opts.bucket_s == 0 { UNPICKED_BUCKET_S } else { opts.bucket_s };
    let bucket = format!("date_bin(INTERVAL '{bucket_s} seconds', ts, TIMESTAMP '1970-01-01T00:00:00Z')");
    let metric = || quote(opts.metric.as_deref().or(metric_read(name).map(|m| m.1)).unwrap_or_default());
    let r = match name {
        "throughput" => Report {
            sql: format!(
                "SELECT {bucket} AS time, node, coalesce(tag(tags, 'operator'), '') AS operator, sum(value) AS messages \
                 FROM metrics WHERE kind = 'counter' AND name = '{}' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
                metric()
            ),
            series: Some((vec!["node", "operator"], "messages")),
            table: tables::METRICS.name,
        },
        "log-volume" => Report {
            sql: format!("SELECT {bucket} AS time, node, count(*) AS lines FROM logs GROUP BY 1, 2 ORDER BY 1, 2"),
            series: Some((vec!["node"], "lines")),
            table: tables::LOGS,
        },
        "errors" => Report {
            sql: format!(
                "SELECT {bucket} AS time, node, \
                 count(*) FILTER (WHERE level IN {ERROR_LEVELS}) AS errors, count(*) AS lines, \
                 CAST(count(*) FILTER (WHERE level IN {ERROR_LEVELS}) AS DOUBLE) / count(*) AS error_rate \
                 FROM logs GROUP BY 1, 2 ORDER BY 1, 2"
            ),
            series: Some((vec!["node"], "error_rate")),
            table: tables::LOGS,
        },
        "top-errors" => Report {
            sql: format!(
                "SELECT {} AS message, count(*) AS count, \
                 count(DISTINCT node) AS nodes, min(ts) AS first, max(ts) AS last \
                 FROM logs WHERE level IN {ERROR_LEVELS} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {}",
                fold_ids("message"),
                opts.limit
            ),
            series: None,
            table: tables::LOGS,
        },
        "dlr-latency" => Report {
            // A quantile is the top of its HDR bucket (within 0.1%): never above the exact maximum.
            sql: "SELECT connector, count(*) AS delivered, \
                  least(hdr_quantile(hdr_of(latency_ms), 0.5), CAST(max(latency_ms) AS DOUBLE)) AS p50_ms, \
                  least(hdr_quantile(hdr_of(latency_ms), 0.9), CAST(max(latency_ms) AS DOUBLE)) AS p90_ms, \
                  least(hdr_quantile(hdr_of(latency_ms), 0.99), CAST(max(latency_ms) AS DOUBLE)) AS p99_ms, \
                  max(latency_ms) AS max_ms \
                  FROM dlr WHERE event = 'delivered' AND latency_ms IS NOT NULL GROUP BY 1 ORDER BY 1"
                .into(),
            series: None,
            table: tables::DLR.name,
        },
        "timer" => Report {
            sql: format!(
                "SELECT coalesce(tag(tags, 'operator'), '') AS operator, sum(count) AS samples, \
                 hdr_quantile(hdr_merge(histogram), 0.5) AS p50, hdr_quantile(hdr_merge(histogram), 0.9) AS p90, \
                 hdr_quantile(hdr_merge(histogram), 0.99) AS p99, hdr_quantile(hdr_merge(histogram), 0.999) AS p999, \
                 hdr_max(hdr_merge(histogram)) AS max \
                 FROM metrics WHERE kind = 'timer' AND name = '{}' GROUP BY 1 ORDER BY 1",
                metric()
            ),
            series: None,
            table: tables::METRICS.name,
        },
        "rejections" => Report {
            sql: format!(
                "SELECT {bucket} AS time, limit_key, sum(denied) AS denied, sum(allowed) AS allowed \
                 FROM limits GROUP BY 1, 2 ORDER BY 1, 2"
            ),
            series: Some((vec!["limit_key"], "denied")),
            table: tables::LIMITS.name,
        },
        other => {
            let mut msg = format!("no report {other:?}; reports:");
            for (n, about) in REPORTS {
                let _ = write!(msg, "\n  {n:<12} {about}");
            }
            return Err(QueryError::Sql(msg));
        }
    };
    Ok(r)
}

/// The reports that are time series: what a chart can draw.
pub fn time_series_reports() -> Vec<&'static str> {
    let is_series = |name: &str| report(name, &ReportOptions::default()).is_ok_and(|r| r.series.is_some());
    REPORTS.iter().map(|(name, _)| *name).filter(|name| is_series(name)).collect()
}

/// A report's result, with what [`run`] decided on the way.
#[derive(Debug, Clone)]
pub struct ReportOutput {
    /// The report that ran.
    pub report: Report,
    /// Its rows; at least one batch, so an empty result still has its columns.
    pub batches: Vec<RecordBatch>,
    /// A time series' bucket width in seconds (given or picked); `None` for other reports.
    pub bucket_s: Option<u64>,
    /// Whether [`run`] picked the bucket width from the span of the data.
    pub bucket_picked: bool,
    /// The table the report reads when it has no data yet (no committed Parquet files): the
    /// result is then empty.
    pub no_data: Option<&'static str>,
}

impl ReportOutput {
    /// A chart title: the report, its series and (when there are rows) its bucket width.
    pub fn title(&self, name: &str) -> String {
        let series = self.report.series.as_ref().map(|(s, _)| format!(" per {}", s.join("/"))).unwrap_or_default();
        let bucket = self
            .bucket_s
            .filter(|_| crate::row_count(&self.batches) > 0)
            .map(|b| format!(", {} buckets", format_bucket(b)))
            .unwrap_or_default();
        format!("{name}{series}{bucket}")
    }

    /// The step between points that is a gap in a chart of this report ([`crate::plot::svg`]):
    /// its bucket width over tables whose rows are events (a log line, a second with decisions),
    /// where an empty bucket had none; `None` over metrics, written at an interval that may be
    /// wider than the bucket.
    pub fn gap_ms(&self) -> Option<i64> {
        let events = self.report.table != tables::METRICS.name;
        self.bucket_s.filter(|_| events).and_then(|b| i64::try_from(b).ok()).map(|b| b.saturating_mul(1000))
    }
}

/// Run the report called `name` over `ds`. A time series with `bucket_s` 0 gets the width
/// [`bucket_for_span`] gives for the span of its table's rows (within the dataset's window). A
/// table with no data yet gives an empty result with the report's columns, and says which table
/// in [`ReportOutput::no_data`].
pub async fn run(ds: &Dataset, name: &str, opts: &ReportOptions) -> Result<ReportOutput, QueryError> {
    let table = report(name, opts)?.table;
    let no_data = (!ds.tables().iter().any(|t| t == table)).then_some(table);
    let mut opts = opts.clone();
    let bucket_picked = opts.bucket_s == 0;
    if bucket_picked {
        let span_ms = match no_data {
            Some(_) => 0,
            None => data_span_ms(ds, table).await?,
        };
        opts.bucket_s = bucket_for_span(span_ms);
    }
    let report = report(name, &opts)?;
    let batches = match no_data {
        Some(table) => run_on_empty(&report, table).await?,
        None => ds.sql(&report.sql).await?,
    };
    let bucket_s = report.series.is_some().then_some(opts.bucket_s);
    Ok(ReportOutput { bucket_picked: bucket_picked && bucket_s.is_some(), report, batches, bucket_s, no_data })
}

/// Milliseconds from the first to the last row of `table` (0 when it has no rows).
async fn data_span_ms(ds: &Dataset, table: &str) -> Result<i64, QueryError> {
    let batches = ds.sql(&format!("SELECT min(ts) AS first, max(ts) AS last FROM {table}")).await?;
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else { return Ok(0) };
    let millis = |column: usize| -> Result<Option<i64>, QueryError> {
        let ms = cast(batch.column(column), &DataType::Timestamp(TimeUnit::Millisecond, None))?;
        let ms = cast(&ms, &DataType::Int64)?;
        let ms = ms.as_primitive::<Int64Type>();
        Ok((!ms.is_null(0)).then(|| ms.value(0)))
    };
    Ok(match (millis(0)?, millis(1)?) {
        (Some(first), Some(last)) => last - first,
        _ => 0,
    })
}

/// The columns of `table` that reports read, for a stand-in with no rows: enough to plan every
/// report over a table that has no files yet.
fn stand_in_schema(table: &str) -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let text = |name: &str| Field::new(name, DataType::Utf8, true);
    let mut fields = vec![Field::new("ts", ts, true), text("node"), text("level"), text("message")];
    if let Some(t) = tables::INTERNAL.iter().find(|t| t.name == table) {
        fields.extend(t.columns.iter().map(|c| Field::new(c.name, c.kind.arrow_type(), true)));
    }
    Arc::new(Schema::new(fields))
}

/// `report` over an empty stand-in for `table`: no rows, but the report's own columns.
async fn run_on_empty(report: &Report, table: &str) -> Result<Vec<RecordBatch>, QueryError> {
    let ctx = SessionContext::new();
    crate::functions::register(&ctx);
    let schema = stand_in_schema(table);
    ctx.register_table(table, Arc::new(MemTable::try_new(schema, vec![vec![]])?))?;
    Ok(crate::collect_with_columns(ctx.sql(&report.sql).await?).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{render, row_count, OutputFormat};
    use datafusion::arrow::array::{
        ArrayRef, BinaryArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };
    use std::path::Path;

    #[test]
    fn every_listed_report_exists_and_unknown_ones_list_them() {
        for (name, _) in REPORTS {
            let r = report(name, &ReportOptions::default()).unwrap();
            assert!(r.sql.contains(r.table), "{name}");
        }
        let err = report("nope", &ReportOptions::default()).unwrap_err().to_string();
        assert!(err.contains("throughput") && err.contains("rejections"), "{err}");
        let r = report("timer", &ReportOptions { metric: Some("it's".into()), ..Default::default() }).unwrap();
        assert!(r.sql.contains("'it''s'"));
    }

    /// 2026-11-22T10:00:00Z in µs.
    const T0_US: i64 = 1_795_341_600_000_000;

    fn text(values: Vec<String>) -> ArrayRef {
        Arc::new(StringArray::from(values))
    }

    fn int(values: Vec<i64>) -> ArrayRef {
        Arc::new(Int64Array::from(values))
    }

    /// Write the columns `(name, values)` as one Parquet file of `table`, hour 10 of 2026-11-22;
    /// `ts_us` gives the `ts` column.
    fn write_table(root: &Path, table: &str, ts_us: Vec<i64>, columns: Vec<(&str, ArrayRef)>) {
        let dir = root.join(table).join("date=2026-11-22/hour=10");
        std::fs::create_dir_all(&dir).unwrap();
        let mut fields = vec![Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false)];
        let mut arrays: Vec<ArrayRef> = vec![Arc::new(TimestampMicrosecondArray::from(ts_us).with_timezone("UTC"))];
        for (name, array) in columns {
            fields.push(Field::new(name, array.data_type().clone(), true));
            arrays.push(array);
        }
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap();
        let file = std::fs::File::create(dir.join("part-0.parquet")).unwrap();
        let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    /// Logs over 15 s from two nodes: one error message repeated with other ids and numbers.
    fn write_logs(root: &Path) -> usize {
        let ids = ["5f3a9c0e", "a81b2d4f", "0c77e1b9", "9d0e3f2a", "b4c5d6e7", "12ab34cd"];
        let rows = 30;
        let ts: Vec<i64> = (0..rows).map(|i| T0_US + i * 500_000).collect();
        let node = (0..rows).map(|i| format!("gw{}", i % 2 + 1)).collect();
        let level = (0..rows).map(|i| if i % 3 == 0 { "error" } else { "info" }.to_owned()).collect();
        let message = (0..rows)
            .map(|i| {
                format!(
                    "submit failed for msg {} to +4917012345{i:02}: timeout after {}ms",
                    ids[i as usize % ids.len()],
                    1000 + i * 37
                )
            })
            .collect();
        write_table(root, "logs", ts, vec![("node", text(node)), ("level", text(level)), ("message", text(message))]);
        rows as usize
    }

    fn histogram(values: &[f64]) -> Vec<u8> {
        let mut h = switchboard_bus::histogram::new_histogram();
        for v in values {
            h.record((v * switchboard_bus::histogram::SCALE) as u64).unwrap();
        }
        switchboard_bus::histogram::encode(&h).unwrap()
    }

    /// Every table, with a few rows each over 40 minutes.
    fn write_every_table(root: &Path) {
        write_logs(root);
        let ts = vec![T0_US, T0_US + 600_000_000, T0_US + 2_400_000_000];
        let strings = |v: &[&str]| text(v.iter().map(|s| (*s).to_owned()).collect());
        let hist = histogram(&[10.0, 20.0, 300.0]);
        write_table(
            root,
            "metrics",
            ts.clone(),
            vec![
                ("node", strings(&["gw1", "gw2", "gw1"])),
                ("name", strings(&["submitted", "submitted", "dlr_latency"])),
                ("tags", strings(&["operator:o2", "operator:vodafone", "operator:o2"])),
                ("kind", strings(&["counter", "counter", "timer"])),
                ("value", Arc::new(Float64Array::from(vec![12.0, 30.0, 330.0]))),
                ("count", int(vec![12, 30, 3])),
                ("histogram", Arc::new(BinaryArray::from(vec![None, None, Some(hist.as_slice())]))),
            ],
        );
        write_table(
            root,
            "limits",
            ts.clone(),
            vec![
                ("node", strings(&["gw1", "gw2", "gw1"])),
                ("limit_key", strings(&["operator:o2", "operator:o2", "operator:o2"])),
                ("allowed", int(vec![100, 90, 80])),
                ("denied", int(vec![0, 5, 12])),
            ],
        );
        write_table(
            root,
            "dlr",
            ts,
            vec![
                ("node", strings(&["gw1", "gw2", "gw1"])),
                ("connector", strings(&["o2", "o2", "vodafone"])),
                ("event", strings(&["delivered", "delivered", "registered"])),
                ("latency_ms", Arc::new(Int64Array::from(vec![Some(1200), Some(800), None]))),
            ],
        );
    }

    fn column_names(batches: &[RecordBatch]) -> Vec<String> {
        batches[0].schema().fields().iter().map(|f| f.name().clone()).collect()
    }

    #[tokio::test]
    async fn every_report_runs_over_every_table() {
        let root = tempfile::tempdir().unwrap();
        write_every_table(root.path());
        let ds = Dataset::open(root.path()).await.unwrap();
        for (name, _) in REPORTS {
            let out = run(&ds, name, &ReportOptions::default()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(row_count(&out.batches) > 0, "{name}");
            assert_eq!(out.no_data, None);
            assert_eq!(out.bucket_s.is_some(), out.report.series.is_some(), "{name}");
        }
        let timer = run(&ds, "timer", &ReportOptions::default()).await.unwrap();
        assert_eq!(row_count(&timer.batches), 1);
        assert_eq!(time_series_reports(), ["throughput", "log-volume", "errors", "rejections"]);
    }

    #[test]
    fn buckets_give_a_chart_30_to_120_points() {
        assert_eq!(bucket_for_span(0), 1);
        assert_eq!(bucket_for_span(15_000), 1);
        assert_eq!(bucket_for_span(120_000), 1);
        assert_eq!(bucket_for_span(121_000), 2);
        assert_eq!(bucket_for_span(3_600_000), 30);
        assert_eq!(bucket_for_span(86_400_000), 1800);
        assert_eq!(bucket_for_span(7 * 86_400_000), 7200);
        assert_eq!(bucket_for_span(10_000 * 86_400_000), 604_800);
        for span_s in (120u64..40 * 86_400 * 3).step_by(997) {
            let points = span_s.div_ceil(bucket_for_span(span_s as i64 * 1000));
            assert!((30..=MAX_POINTS).contains(&points), "{span_s} s: {points} points");
        }
        let widths: Vec<String> = [1, 30, 60, 300, 3600, 21_600, 86_400, 604_800].map(format_bucket).to_vec();
        assert_eq!(widths, ["1s", "30s", "1m", "5m", "1h", "6h", "1d", "7d"]);
    }

    #[tokio::test]
    async fn a_short_run_gets_narrow_buckets_not_one_point_per_series() {
        let root = tempfile::tempdir().unwrap();
        write_logs(root.path());
        let ds = Dataset::open(root.path()).await.unwrap();
        let out = run(&ds, "log-volume", &ReportOptions::default()).await.unwrap();
        assert_eq!((out.bucket_s, out.bucket_picked), (Some(1), true));
        assert_eq!(out.title("log-volume"), "log-volume per node, 1s buckets");
        let empty = ReportOutput { batches: vec![RecordBatch::new_empty(out.batches[0].schema())], ..out.clone() };
        assert_eq!(empty.title("log-volume"), "log-volume per node");
        let series = crate::plot::series_of(&out.batches, &["node"], "lines").unwrap();
        assert!(series.values().all(|points| points.len() >= 7), "{series:?}");
        // A bucket asked for is kept.
        let out = run(&ds, "log-volume", &ReportOptions { bucket_s: 3600, ..Default::default() }).await.unwrap();
        assert_eq!((out.bucket_s, out.bucket_picked, row_count(&out.batches)), (Some(3600), false, 2));
        let out = run(&ds, "top-errors", &ReportOptions::default()).await.unwrap();
        assert_eq!((out.bucket_s, out.bucket_picked), (None, false));
    }

    /// `messages` folded by [`fold_ids`] in DataFusion.
    async fn folded(messages: &[&str]) -> Vec<String> {
        let ctx = SessionContext::new();
        let values: Vec<String> = messages.iter().map(|m| format!("('{}')", quote(m))).collect();
        let sql = format!("SELECT {} FROM (VALUES {}) AS t(message)", fold_ids("message"), values.join(", "));
        let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        let mut out = Vec::new();
        for b in &batches {
            let col = cast(b.column(0), &DataType::Utf8).unwrap();
            out.extend(col.as_string::<i32>().iter().map(|v| v.unwrap_or_default().to_owned()));
        }
        out
    }

    #[tokio::test]
    async fn messages_are_folded_so_ids_and_numbers_do_not_split_them() {
        let got = folded(&[
            "submit failed for msg gw1-5f3a9c0e: timeout after 1840ms",
            "request 0b8e2f7c-3d4a-4e5b-9c6d-7e8f9a0b1c2d from 10.0.0.17:7447 refused",
            "bad pdu 0x1F3A, seq 42, dst=+491701234567",
            "deadline exceeded in 2026 for account a1 on smsc02",
        ])
        .await;
        assert_eq!(
            got,
            [
                "submit failed for msg gw<n>-<id>: timeout after <n>ms",
                "request <uuid> from <n>:<n> refused",
                "bad pdu <hex>, seq <n>, dst=+<id>",
                "deadline exceeded in <n> for account <n> on smsc<n>",
            ]
        );
        // Ids with and without letters, other numbers: one message.
        let variants = folded(&[
            "submit failed for msg 5f3a9c0e to +491701234500: timeout after 1840ms",
            "submit failed for msg 12345678 to +491709876543: timeout after 30ms",
            "submit failed for msg deadbeef to +4917011223344: timeout after 7ms",
            "1A3F: to=<u12@example.net>, relay=mx.example.net[192.0.2.17]:25, delay=0.52, status=bounced (550 5.1.1 user unknown)",
            "2710: to=<u7@example.net>, relay=mx.example.net[192.0.2.4]:25, delay=2, status=bounced (550 5.1.1 user unknown)",
        ])
        .await;
        assert!(variants[..3].iter().all(|v| *v == variants[0]), "{variants:?}");
        assert_eq!(variants[3], variants[4]);
        assert_eq!(
            variants[3],
            "<n>: to=<u<n>@example.net>, relay=mx.example.net[<n>]:<n>, delay=<n>, status=bounced (<n> <n> user unknown)"
        );
    }

    #[tokio::test]
    async fn top_errors_gives_one_row_per_message_whatever_its_ids() {
        let root = tempfile::tempdir().unwrap();
        write_logs(root.path());
        let ds = Dataset::open(root.path()).await.unwrap();
        let out = run(&ds, "top-errors", &ReportOptions::default()).await.unwrap();
        assert_eq!(row_count(&out.batches), 1, "{:?}", out.batches);
        let mut csv = Vec::new();
        render(&out.batches, OutputFormat::Csv, &mut csv).unwrap();
        let csv = String::from_utf8(csv).unwrap();
        assert!(csv.contains("submit failed for msg <id> to +<id>: timeout after <n>ms,10,2,"), "{csv}");
    }

    #[tokio::test]
    async fn a_table_with_no_data_yet_gives_an_empty_report_that_names_it() {
        let root = tempfile::tempdir().unwrap();
        write_logs(root.path());
        std::fs::create_dir_all(root.path().join("metrics/date=2026-11-22")).unwrap(); // no file yet
        let ds = Dataset::open(root.path()).await.unwrap();
        for (name, table) in
            [("throughput", "metrics"), ("timer", "metrics"), ("dlr-latency", "dlr"), ("rejections", "limits")]
        {
            let out = run(&ds, name, &ReportOptions::default()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(out.no_data, Some(table), "{name}");
            assert_eq!(row_count(&out.batches), 0, "{name}");
            let mut text = Vec::new();
            render(&out.batches, OutputFormat::Table, &mut text).unwrap();
            let text = String::from_utf8(text).unwrap();
            let columns = column_names(&out.batches);
            assert!(columns.len() >= 3 && columns.iter().all(|c| text.contains(c.as_str())), "{name}: {text}");
            assert!(text.ends_with("0 rows\n"), "{name}: {text}");
        }
        // The same columns as over data.
        let full = tempfile::tempdir().unwrap();
        write_every_table(full.path());
        let full = Dataset::open(full.path()).await.unwrap();
        for (name, _) in REPORTS {
            let with_data = run(&full, name, &ReportOptions::default()).await.unwrap();
            let empty = run_on_empty(&with_data.report, with_data.report.table).await.unwrap();
            assert_eq!(column_names(&empty), column_names(&with_data.batches), "{name}");
        }
    }
}
