//! The reports operators ask for every day, each one SQL statement over the dataset.
//!
//! | report | question | from |
//! | --- | --- | --- |
//! | `throughput` | messages per node and operator over time (a counter, `submitted` by default) | `metrics` |
//! | `log-volume` | log lines per node over time | `logs` |
//! | `errors` | share of log lines at level error or worse, per node over time | `logs` |
//! | `top-errors` | the most frequent error messages, digits folded so ids do not split them | `logs` |
//! | `dlr-latency` | submit-to-DLR latency percentiles per connector (operator) | `dlr` |
//! | `timer` | percentiles of a timer per operator, merged exactly across nodes (`dlr_latency` by default) | `metrics` |
//! | `rejections` | rate-limit rejections per limit over time | `limits` |
//!
//! Time series reports have a `time` column (the bucket's start), series columns and one value
//! column, which is what [`crate::plot`] draws.

use std::fmt::Write as _;

use crate::QueryError;

/// How a report is asked for.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Bucket width of time series, in seconds.
    pub bucket_s: u64,
    /// The metric a metrics report reads (`throughput`, `timer`); its default when `None`.
    pub metric: Option<String>,
    /// Rows of a top-N report.
    pub limit: usize,
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self { bucket_s: 3600, metric: None, limit: 20 }
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
    ("top-errors", "most frequent error messages (digits folded), --limit rows"),
    ("dlr-latency", "submit-to-DLR latency percentiles per connector, from the dlr table"),
    ("timer", "percentiles of a timer per operator merged across nodes (--metric, default `dlr_latency`)"),
    ("rejections", "rate-limit rejections per limit over time"),
];

const ERROR_LEVELS: &str = "('error', 'critical', 'alert', 'emergency')";

fn quote(s: &str) -> String {
    s.replace('\'', "''")
}

/// The report called `name`.
pub fn report(name: &str, opts: &ReportOptions) -> Result<Report, QueryError> {
    let bucket = format!("date_bin(INTERVAL '{} seconds', ts, TIMESTAMP '1970-01-01T00:00:00Z')", opts.bucket_s.max(1));
    let metric = |default: &str| quote(opts.metric.as_deref().unwrap_or(default));
    let r = match name {
        "throughput" => Report {
            sql: format!(
                "SELECT {bucket} AS time, node, coalesce(tag(tags, 'operator'), '') AS operator, sum(value) AS messages \
                 FROM metrics WHERE kind = 'counter' AND name = '{}' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
                metric("submitted")
            ),
            series: Some((vec!["node", "operator"], "messages")),
            table: "metrics",
        },
        "log-volume" => Report {
            sql: format!("SELECT {bucket} AS time, node, count(*) AS lines FROM logs GROUP BY 1, 2 ORDER BY 1, 2"),
            series: Some((vec!["node"], "lines")),
            table: "logs",
        },
        "errors" => Report {
            sql: format!(
                "SELECT {bucket} AS time, node, \
                 count(*) FILTER (WHERE level IN {ERROR_LEVELS}) AS errors, count(*) AS lines, \
                 CAST(count(*) FILTER (WHERE level IN {ERROR_LEVELS}) AS DOUBLE) / count(*) AS error_rate \
                 FROM logs GROUP BY 1, 2 ORDER BY 1, 2"
            ),
            series: Some((vec!["node"], "error_rate")),
            table: "logs",
        },
        "top-errors" => Report {
            sql: format!(
                "SELECT regexp_replace(message, '[0-9]+', 'N', 'g') AS message, count(*) AS count, \
                 count(DISTINCT node) AS nodes, min(ts) AS first, max(ts) AS last \
                 FROM logs WHERE level IN {ERROR_LEVELS} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {}",
                opts.limit
            ),
            series: None,
            table: "logs",
        },
        "dlr-latency" => Report {
            sql: "SELECT connector, count(*) AS delivered, \
                  hdr_quantile(hdr_of(latency_ms), 0.5) AS p50_ms, hdr_quantile(hdr_of(latency_ms), 0.9) AS p90_ms, \
                  hdr_quantile(hdr_of(latency_ms), 0.99) AS p99_ms, max(latency_ms) AS max_ms \
                  FROM dlr WHERE event = 'delivered' AND latency_ms IS NOT NULL GROUP BY 1 ORDER BY 1"
                .into(),
            series: None,
            table: "dlr",
        },
        "timer" => Report {
            sql: format!(
                "SELECT coalesce(tag(tags, 'operator'), '') AS operator, sum(count) AS samples, \
                 hdr_quantile(hdr_merge(histogram), 0.5) AS p50, hdr_quantile(hdr_merge(histogram), 0.9) AS p90, \
                 hdr_quantile(hdr_merge(histogram), 0.99) AS p99, hdr_quantile(hdr_merge(histogram), 0.999) AS p999, \
                 hdr_max(hdr_merge(histogram)) AS max \
                 FROM metrics WHERE kind = 'timer' AND name = '{}' GROUP BY 1 ORDER BY 1",
                metric("dlr_latency")
            ),
            series: None,
            table: "metrics",
        },
        "rejections" => Report {
            sql: format!(
                "SELECT {bucket} AS time, limit_key, sum(denied) AS denied, sum(allowed) AS allowed \
                 FROM limits GROUP BY 1, 2 ORDER BY 1, 2"
            ),
            series: Some((vec!["limit_key"], "denied")),
            table: "limits",
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
