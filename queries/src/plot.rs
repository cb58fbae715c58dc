//! Time series results as an SVG line chart: one line per series, time on the x axis.
//!
//! The chart is plain SVG 1.1 (axes, grid, a legend), viewable in any browser and embeddable
//! in reports. Rows are `(time, series columns..., value)`; rows with a NULL value are skipped.
//! The value axis has round ticks ([`nice_ticks`]: steps of 1, 2 or 5 times a power of ten), the
//! time axis round times labelled as precisely as the span needs ([`time_ticks`]).

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
            if time.is_null(row) || values.is_null(row) || !values.value(row).is_finite() {
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

/// Round value-axis ticks covering `[lo, hi]`: about `target` steps of 1, 2 or 5 times a power of
/// ten, from a multiple of the step at or below `lo` to one at or above `hi`. Returns the ticks
/// and the step.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, f64) {
    let (lo, hi) = if lo.is_finite() && hi.is_finite() { (lo.min(hi), lo.max(hi)) } else { (0.0, 1.0) };
    let hi = if hi > lo { hi } else { lo + 1.0 };
    let raw = (hi - lo) / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = match raw / magnitude {
        n if n <= 1.0 => 1.0,
        n if n <= 2.0 => 2.0,
        n if n <= 5.0 => 5.0,
        _ => 10.0,
    } * magnitude;
    let first = (lo / step).floor() as i64;
    let last = (hi / step).ceil() as i64;
    // Multiply rather than add up steps, so 0.1 + 0.2 does not drift; round away float dust.
    let decimals = decimals_for(step);
    let ticks = (first..=last).map(|i| round_to(i as f64 * step, decimals + 1)).collect();
    (ticks, step)
}

/// Decimal places that tell apart multiples of `step` (0 for steps of 1 or more).
fn decimals_for(step: f64) -> i32 {
    (-step.log10().floor()).max(0.0) as i32
}

fn round_to(v: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    let rounded = (v * scale).round() / scale;
    if rounded == 0.0 {
        0.0 // not -0
    } else {
        rounded
    }
}

/// A value-axis label for tick `v` of ticks `step` apart: `k`, `M` and `G` for thousands,
/// millions and billions, with as many decimals as the step needs (`1.2k`, `0.05`).
pub fn format_tick(v: f64, step: f64) -> String {
    let (unit, suffix) = match v.abs() {
        a if a >= 1e9 => (1e9, "G"),
        a if a >= 1e6 => (1e6, "M"),
        a if a >= 1e3 => (1e3, "k"),
        _ => (1.0, ""),
    };
    let decimals = decimals_for(step / unit) as usize;
    let mut text = format!("{:.*}", decimals, v / unit);
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_owned();
    }
    format!("{text}{suffix}")
}

const SECOND_MS: i64 = 1000;
const MINUTE_MS: i64 = 60 * SECOND_MS;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;
/// Time-axis steps, from one second to four weeks; ticks fall on multiples of the step (UTC).
const TIME_STEPS_MS: &[i64] = &[
    SECOND_MS,
    2 * SECOND_MS,
    5 * SECOND_MS,
    10 * SECOND_MS,
    15 * SECOND_MS,
    30 * SECOND_MS,
    MINUTE_MS,
    2 * MINUTE_MS,
    5 * MINUTE_MS,
    10 * MINUTE_MS,
    15 * MINUTE_MS,
    30 * MINUTE_MS,
    HOUR_MS,
    2 * HOUR_MS,
    3 * HOUR_MS,
    6 * HOUR_MS,
    12 * HOUR_MS,
    DAY_MS,
    2 * DAY_MS,
    7 * DAY_MS,
    14 * DAY_MS,
    28 * DAY_MS,
];
/// Intervals between time ticks at most (so at most one more tick than this).
const MAX_TIME_INTERVALS: i64 = 6;

/// Time-axis ticks over `[t0_ms, t1_ms]` with their labels (UTC): on round times, at most seven,
/// labelled as precisely as their step needs (seconds for steps under a minute, the date when
/// the span reaches a day) and never two alike.
pub fn time_ticks(t0_ms: i64, t1_ms: i64) -> Vec<(i64, String)> {
    let (t0, t1) = (t0_ms.min(t1_ms), t0_ms.max(t1_ms));
    let span = t1 - t0;
    let step = TIME_STEPS_MS
        .iter()
        .copied()
        .find(|step| span / step <= MAX_TIME_INTERVALS)
        .unwrap_or_else(|| (span / MAX_TIME_INTERVALS / (28 * DAY_MS) + 1) * 28 * DAY_MS);
    let first = t0.div_euclid(step) + i64::from(t0.rem_euclid(step) != 0);
    let ticks: Vec<i64> = (first..).map(|i| i * step).take_while(|&t| t <= t1).collect();
    // From the least precise format the step allows to the most precise: the first that tells
    // every tick apart wins (a step of a day or more on midnights needs no time of day).
    let formats: &[&str] = match step {
        s if s < MINUTE_MS => &["%H:%M:%S", "%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S"],
        s if s < DAY_MS && span < DAY_MS => &["%H:%M", "%m-%d %H:%M", "%Y-%m-%d %H:%M"],
        s if s < DAY_MS => &["%m-%d %H:%M", "%Y-%m-%d %H:%M"],
        _ => &["%Y-%m-%d", "%Y-%m-%d %H:%M"],
    };
    let label = |t: i64, fmt: &str| {
        chrono::DateTime::from_timestamp_millis(t).map(|d| d.format(fmt).to_string()).unwrap_or_default()
    };
    let mut labelled = Vec::new();
    for fmt in formats {
        labelled = ticks.iter().map(|&t| (t, label(t, fmt))).collect();
        let distinct: std::collections::BTreeSet<&str> = labelled.iter().map(|(_, l)| l.as_str()).collect();
        if distinct.len() == labelled.len() {
            break;
        }
    }
    labelled
}

/// The time axis's caption: the zone, and the date when every label shows only a time of day.
fn time_caption(t0_ms: i64, t1_ms: i64, ticks: &[(i64, String)]) -> String {
    let date = |t: i64| chrono::DateTime::from_timestamp_millis(t).map(|d| d.format("%Y-%m-%d").to_string());
    let labels_have_dates = ticks.iter().any(|(_, l)| l.contains('-'));
    match (date(t0_ms), date(t1_ms)) {
        (Some(a), Some(b)) if !labels_have_dates && a == b => format!("time (UTC, {a})"),
        (Some(a), Some(b)) if !labels_have_dates => format!("time (UTC, {a} to {b})"),
        _ => "time (UTC)".to_owned(),
    }
}

/// The time between neighbouring points: the smallest step between consecutive points of any
/// series (a report's bucket width, or the interval its rows were written at if that is wider).
fn point_spacing(series: &Series) -> Option<i64> {
    series.values().flat_map(|pts| pts.windows(2).map(|w| w[1].0 - w[0].0)).filter(|step| *step > 0).min()
}

/// `points` cut where at least one point is missing (a step of twice `spacing` or more), so that
/// a line is not drawn across time with no rows (a node that was down): each run is drawn as a
/// line of its own.
fn runs(points: &[(i64, f64)], spacing: Option<i64>) -> Vec<&[(i64, f64)]> {
    let Some(spacing) = spacing else { return vec![points] };
    points.chunk_by(|a, b| b.0 - a.0 < spacing.saturating_mul(2)).collect()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The SVG of `series` with `title` and the value axis named `value`. With no points at all the
/// chart says so instead of drawing empty axes. `gap_ms`: a step between points of twice this or
/// more is a gap (a report's bucket width, where an empty bucket means no rows); `None` takes
/// the smallest step in the data ([`point_spacing`]: rows written at an interval wider than the
/// bucket, as metrics are, leave buckets empty that are not gaps).
pub fn svg(series: &Series, title: &str, value: &str, gap_ms: Option<i64>) -> String {
    let (mut t0, mut t1) = (i64::MAX, i64::MIN);
    let (mut v0, mut v1) = (0.0f64, 0.0f64);
    for &(t, v) in series.values().flatten() {
        (t0, t1) = (t0.min(t), t1.max(t));
        if v.is_finite() {
            (v0, v1) = (v0.min(v), v1.max(v));
        }
    }
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="24" font-size="16">{}</text>
"#,
        escape(title)
    );
    if t0 > t1 {
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>
<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="16" fill="#666">no data</text>
</svg>"##,
            LEFT + pw / 2.0,
            TOP + ph / 2.0
        );
        return s;
    }
    if t1 - t0 < SECOND_MS {
        // One point in time: centre it in a minute.
        (t0, t1) = (t0 - 30 * SECOND_MS, t1 + 30 * SECOND_MS);
    }
    let (value_ticks, value_step) = nice_ticks(v0, v1, 5);
    let (v0, v1) = (value_ticks.first().copied().unwrap_or(v0), value_ticks.last().copied().unwrap_or(v1));
    let x = |t: i64| LEFT + (t - t0) as f64 / (t1 - t0) as f64 * pw;
    let y = |v: f64| TOP + ph - (v - v0) / (v1 - v0) * ph;
    for &v in &value_ticks {
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + pw,
            y(v),
            y(v),
            LEFT - 6.0,
            y(v) + 4.0,
            format_tick(v, value_step)
        );
    }
    let ticks = time_ticks(t0, t1);
    for (t, label) in &ticks {
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{TOP}" y2="{:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            x(*t),
            x(*t),
            TOP + ph,
            x(*t),
            TOP + ph + 18.0,
            escape(label)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>
<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>
<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"##,
        LEFT + pw / 2.0,
        HEIGHT - 10.0,
        escape(&time_caption(t0, t1, &ticks)),
        TOP + ph / 2.0,
        escape(value)
    );
    let spacing = gap_ms.filter(|g| *g > 0).or_else(|| point_spacing(series));
    for (i, (name, pts)) in series.iter().take(MAX_SERIES).enumerate() {
        let color = COLORS[i % COLORS.len()];
        for run in runs(pts, spacing) {
            let path: Vec<String> = run.iter().map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v))).collect();
            let _ =
                writeln!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, path.join(" "));
            if let [(t, v)] = run {
                let _ = writeln!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#, x(*t), y(*v));
            }
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
        let svg = svg(&s, "log lines", "lines", None);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("b&lt;") && svg.ends_with("</svg>\n"));
        assert!(series_of(&[], &["x"], "y").unwrap().is_empty());
    }

    /// The text of every `<text>` element in `svg`.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| Some(t.split_once('>')?.1.split_once("</text>")?.0.to_owned()))
            .collect()
    }

    fn one_series(points: &[(i64, f64)]) -> Series {
        Series::from([("gw1".to_owned(), points.to_vec())])
    }

    #[test]
    fn value_ticks_are_round_steps() {
        assert_eq!(nice_ticks(0.0, 2030.0, 5), (vec![0.0, 500.0, 1000.0, 1500.0, 2000.0, 2500.0], 500.0));
        assert_eq!(nice_ticks(0.0, 1.0, 5), (vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0], 0.2));
        assert_eq!(nice_ticks(0.0, 0.37, 5).0, [0.0, 0.1, 0.2, 0.3, 0.4]);
        assert_eq!(nice_ticks(-3.0, 7.0, 5).0, [-4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0]);
        assert_eq!(nice_ticks(5.0, 5.0, 5).0, [5.0, 5.2, 5.4, 5.6, 5.8, 6.0]);
        for (lo, hi) in [(0.0, 7.0), (0.0, 123_456.0), (0.0, 0.003), (12.0, 13_000_000.0)] {
            let (ticks, step) = nice_ticks(lo, hi, 5);
            let mantissa = step / 10f64.powf(step.log10().floor());
            assert!([1.0, 2.0, 5.0].iter().any(|m| (m - mantissa).abs() < 1e-9), "{step}");
            assert!(ticks[0] <= lo && *ticks.last().unwrap() >= hi && (4..=11).contains(&ticks.len()), "{ticks:?}");
        }
        let labels: Vec<String> = [0.0, 500.0, 1000.0, 1500.0].iter().map(|&v| format_tick(v, 500.0)).collect();
        assert_eq!(labels, ["0", "500", "1k", "1.5k"]);
        assert_eq!(format_tick(0.15, 0.05), "0.15");
        assert_eq!(format_tick(2_000_000.0, 1_000_000.0), "2M");
    }

    #[test]
    fn the_value_axis_of_a_chart_has_round_labels() {
        let svg = svg(&one_series(&[(0, 0.0), (60_000, 2030.0)]), "t", "lines", None);
        let labels = texts(&svg);
        for want in ["0", "500", "1k", "1.5k", "2k", "2.5k"] {
            assert!(labels.iter().any(|l| l == want), "{want} in {labels:?}");
        }
        assert!(!labels.iter().any(|l| l == "406" || l == "1.2k"), "{labels:?}");
    }

    #[test]
    fn time_labels_are_as_precise_as_the_span_needs_and_never_repeat() {
        let at = |h: u32, m: u32, s: u32| {
            chrono::NaiveDate::from_ymd_opt(2026, 11, 22)
                .and_then(|d| d.and_hms_opt(h, m, s))
                .map(|t| t.and_utc().timestamp_millis())
                .unwrap()
        };
        let labels = |t0: i64, t1: i64| time_ticks(t0, t1).into_iter().map(|(_, l)| l).collect::<Vec<_>>();
        // 15 s: seconds shown, every 5 s, on round times.
        assert_eq!(labels(at(10, 0, 3), at(10, 0, 18)), ["10:00:05", "10:00:10", "10:00:15"]);
        // 3 minutes: still seconds (HH:MM alone would repeat).
        assert_eq!(
            labels(at(10, 0, 0), at(10, 3, 0)),
            ["10:00:00", "10:00:30", "10:01:00", "10:01:30", "10:02:00", "10:02:30", "10:03:00"]
        );
        // 2 hours: minutes.
        assert_eq!(labels(at(10, 0, 0), at(12, 0, 0)), ["10:00", "10:30", "11:00", "11:30", "12:00"]);
        // Four days: dates.
        assert_eq!(
            labels(at(0, 0, 0), at(0, 0, 0) + 4 * DAY_MS),
            ["2026-11-22", "2026-11-23", "2026-11-24", "2026-11-25", "2026-11-26"]
        );
        // A day and a half: date and time.
        let l = labels(at(0, 0, 0), at(12, 0, 0) + DAY_MS);
        assert_eq!(l.first().map(String::as_str), Some("11-22 00:00"), "{l:?}");
        for (t0, t1) in [(0, 1), (at(10, 0, 0), at(10, 0, 40)), (at(9, 59, 0), at(10, 10, 0)), (0, 400 * DAY_MS)] {
            let l = labels(t0, t1);
            let distinct: std::collections::BTreeSet<_> = l.iter().collect();
            assert!(distinct.len() == l.len() && l.len() <= 7, "{l:?}");
        }
        assert!((2..=7).contains(&labels(at(10, 0, 0), at(10, 0, 40)).len()));
    }

    #[test]
    fn a_short_run_is_labelled_in_seconds_with_its_date_in_the_caption() {
        let t0 = 1_795_341_600_000; // 2026-11-22T10:00:00Z
        let points: Vec<(i64, f64)> = (0..15).map(|i| (t0 + i * 1000, i as f64)).collect();
        let labels = texts(&svg(&one_series(&points), "t", "lines", None));
        let times: Vec<&String> = labels.iter().filter(|l| l.starts_with("10:00:")).collect();
        assert!(times.len() >= 2, "{labels:?}");
        assert!(labels.iter().any(|l| l == "time (UTC, 2026-11-22)"), "{labels:?}");
    }

    #[test]
    fn a_chart_without_points_says_so() {
        let empty = svg(&Series::new(), "throughput", "messages", None);
        assert!(texts(&empty).iter().any(|l| l == "no data"), "{empty}");
        assert!(!empty.contains("<polyline") && !empty.contains("NaN") && empty.ends_with("</svg>\n"));
        // A single point gets a readable axis, not a zero-width one.
        let single = svg(&one_series(&[(1_795_341_600_000, 3.0)]), "t", "v", None);
        assert!(!single.contains("NaN") && single.contains("<circle"), "{single}");
    }

    #[test]
    fn a_line_is_not_drawn_across_a_gap() {
        let s = |t: i64, v: f64| (1_795_341_600_000 + t * 1000, v);
        // gw2 has no rows from 3 s to 6 s (its agent was down); gw1 has every second.
        let series = Series::from([
            ("gw1".to_owned(), (0..10).map(|t| s(t, 5.0)).collect::<Vec<_>>()),
            ("gw2".to_owned(), vec![s(0, 1.0), s(1, 2.0), s(2, 3.0), s(7, 3.0), s(8, 2.0), s(9, 1.0)]),
        ]);
        let chart = svg(&series, "t", "v", None);
        assert_eq!(chart.matches("<polyline").count(), 3, "{chart}");
        assert_eq!(runs(&series["gw2"], point_spacing(&series)).iter().map(|r| r.len()).collect::<Vec<_>>(), [3, 3]);
        // Rows further apart than the bucket (metrics every 10 s in 1 s buckets) are not gaps.
        let sparse = one_series(&[s(0, 1.0), s(10, 2.0), s(20, 3.0)]);
        assert_eq!(runs(&sparse["gw1"], point_spacing(&sparse)).len(), 1);
        // One bucket without rows is a gap too (6 h buckets: 18:00, then 06:00).
        let one_missing = one_series(&[s(0, 1.0), s(6, 2.0), s(18, 3.0), s(24, 1.0)]);
        assert_eq!(runs(&one_missing["gw1"], point_spacing(&one_missing)).len(), 2);
        // Log lines a minute apart in 30 s buckets: every other bucket is empty, each a gap.
        let minutes = one_series(&[s(0, 1.0), s(60, 1.0), s(120, 1.0)]);
        assert_eq!(svg(&minutes, "t", "v", None).matches("<polyline").count(), 1);
        let chart = svg(&minutes, "t", "v", Some(30_000));
        let joined = chart.split("points=\"").skip(1).filter(|p| p.split('"').next().is_some_and(|p| p.contains(' ')));
        assert_eq!((joined.count(), chart.matches("<circle").count()), (0, 3), "{chart}");
    }
}
