//! Time series results as an SVG line chart: one line per series, time on the x axis.
//!
//! The chart is plain SVG 1.1 (axes, grid, a legend), viewable in any browser and embeddable
//! in reports. Rows are `(time, series columns..., value)`; rows with a NULL value are skipped.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};

use crate::QueryError;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 220.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 10] =
    ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
/// Lines drawn at most; further series are left out (and named in the legend's last line).
const MAX_SERIES: usize = 20;

/// One line: its points (ms since the epoch, value), in time order.
type Series = BTreeMap<String, Vec<(i64, f64)>>;

fn column_error(name: &str, why: &str) -> QueryError {
    QueryError::Sql(format!("cannot plot: column {name:?} {why}"))
}

/// The series of `batches`: time from `time`, names from `series` joined by `/`, values from `value`.
pub fn series_of(batches: &[RecordBatch], series: &[&str], value: &str) -> Result<Series, QueryError> {
    let mut out = Series::new();
    for b in batches {
        let col = |name: &str| b.column_by_name(name).ok_or_else(|| column_error(name, "is not in the result"));
        let time = cast(col("time")?, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
        let time = cast(&time, &DataType::Int64)?;
        let time = time.as_primitive::<Int64Type>();
        let values = cast(col(value)?, &DataType::Float64)?;
        let values = values.as_primitive::<Float64Type>();
        let names: Vec<_> =
            series.iter().map(|s| col(s).and_then(|c| Ok(cast(c, &DataType::Utf8)?))).collect::<Result<_, _>>()?;
        for row in 0..b.num_rows() {
            if time.is_null(row) || values.is_null(row) {
                continue;
            }
            let name = names
                .iter()
                .map(|n| if n.is_null(row) { "-".to_owned() } else { n.as_string::<i32>().value(row).to_owned() })
                .collect::<Vec<_>>()
                .join("/");
            out.entry(name).or_default().push((time.value(row), values.value(row)));
        }
    }
    for points in out.values_mut() {
        points.sort_by_key(|p| p.0);
    }
    Ok(out)
}

fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 1.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The SVG of `series` with `title` and the value axis named `value`.
pub fn svg(series: &Series, title: &str, value: &str) -> String {
    let points = series.values().flatten();
    let (mut t0, mut t1, mut v1) = (i64::MAX, i64::MIN, 0.0f64);
    let mut v0 = 0.0f64;
    for &(t, v) in points {
        (t0, t1) = (t0.min(t), t1.max(t));
        (v0, v1) = (v0.min(v), v1.max(v));
    }
    if t0 > t1 {
        (t0, t1) = (0, 1);
    }
    if t1 == t0 {
        t1 = t0 + 1;
    }
    if v1 <= v0 {
        v1 = v0 + 1.0;
    }
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let x = |t: i64| LEFT + (t - t0) as f64 / (t1 - t0) as f64 * pw;
    let y = |v: f64| TOP + ph - (v - v0) / (v1 - v0) * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="24" font-size="16">{}</text>
"#,
        escape(title)
    );
    for i in 0..=5 {
        let v = v0 + (v1 - v0) * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + pw,
            y(v),
            y(v),
            LEFT - 6.0,
            y(v) + 4.0,
            fmt_value(v)
        );
    }
    let span_ms = t1 - t0;
    let fmt = if span_ms > 2 * 86_400_000 { "%m-%d %H:%M" } else { "%H:%M" };
    for i in 0..=4 {
        let t = t0 + (span_ms as f64 * f64::from(i) / 4.0) as i64;
        let label = chrono::DateTime::from_timestamp_millis(t).map(|d| d.format(fmt).to_string()).unwrap_or_default();
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{TOP}" y2="{:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            x(t),
            x(t),
            TOP + ph,
            x(t),
            TOP + ph + 18.0
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>
<text x="{:.1}" y="{:.1}" text-anchor="middle">time (UTC)</text>
<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"##,
        LEFT + pw / 2.0,
        HEIGHT - 10.0,
        TOP + ph / 2.0,
        escape(value)
    );
    for (i, (name, pts)) in series.iter().take(MAX_SERIES).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = pts.iter().map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v))).collect();
        let _ = writeln!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, path.join(" "));
        if pts.len() == 1 {
            let (t, v) = pts[0];
            let _ = writeln!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#, x(t), y(v));
        }
        let ly = TOP + 14.0 + i as f64 * 18.0;
        let _ = writeln!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="12" height="12" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            WIDTH - RIGHT + 16.0,
            ly - 10.0,
            WIDTH - RIGHT + 34.0,
            ly,
            escape(name)
        );
    }
    if series.len() > MAX_SERIES {
        let ly = TOP + 14.0 + MAX_SERIES as f64 * 18.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{ly:.1}">+{} more series</text>"#,
            WIDTH - RIGHT + 16.0,
            series.len() - MAX_SERIES
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, StringArray, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn a_chart_has_one_line_per_series() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("time", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
            Field::new("node", DataType::Utf8, true),
            Field::new("lines", DataType::Float64, true),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(
                    TimestampMicrosecondArray::from(vec![3_600_000_000, 0, 0, 3_600_000_000]).with_timezone("UTC"),
                ),
                Arc::new(StringArray::from(vec!["a", "a", "b<", "b<"])),
                Arc::new(Float64Array::from(vec![Some(5.0), Some(1.0), Some(2.0), None])),
            ],
        )
        .unwrap();
        let s = series_of(&[b], &["node"], "lines").unwrap();
        assert_eq!(s["a"], [(0, 1.0), (3_600_000, 5.0)]);
        assert_eq!(s["b<"], [(0, 2.0)]);
        let svg = svg(&s, "log lines", "lines");
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("b&lt;") && svg.ends_with("</svg>\n"));
        assert!(series_of(&[], &["x"], "y").unwrap().is_empty());
    }
}
