//! One interval's metrics, per series, and the snapshot rows they become.
//!
//! A series is `(name, tags, kind)`. Per interval a counter sums its increments (the row carries
//! the delta), a gauge keeps its last value (and is sent every interval until it has not been
//! touched for [`GAUGE_IDLE_INTERVALS`]), a timer records its samples into an HDR histogram (3
//! significant digits, values scaled by [`histogram::SCALE`] so fractions of a millisecond
//! survive), and a set counts its distinct members.
//!
//! Histograms travel as HDR V2 with DEFLATE ([`switchboard_bus::histogram`]), base64 in the row.

use std::collections::{HashMap, HashSet};

use hdrhistogram::Histogram;
use switchboard_bus::histogram::{self, new_histogram};

use super::statsd::{Kind, Line, Value};

/// Gauges stop being sent after this many rows in a row without a sample.
pub const GAUGE_IDLE_INTERVALS: u32 = 30;

enum State {
    Counter { sum: f64, samples: u64 },
    Gauge { value: f64, samples: u64, idle: u32 },
    Timer { hist: Histogram<u64>, sum: f64 },
    Set { members: HashSet<String>, samples: u64 },
}

/// One snapshot row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// End of the interval, ms since the epoch.
    pub ts: u64,
    /// The metric's name.
    pub name: String,
    /// `k:v,k2:v2`, sorted.
    pub tags: String,
    /// `counter`, `gauge`, `timer` or `set`.
    pub kind: &'static str,
    /// Counter: the interval's sum; gauge: the last value; timer: the sum of the samples; set:
    /// distinct members.
    pub value: f64,
    /// Samples taken in the interval (timer: counted with their sample rate).
    pub count: u64,
    /// Timers: HDR V2 + DEFLATE, base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub histogram: Option<String>,
    /// The interval's length in ms.
    pub interval_ms: u64,
}

switchboard_bus::record_columns!(switchboard_bus::tables::METRICS, Row {
    layout: ts;
    columns: name, tags, kind, value, count, histogram, interval_ms
});

/// Why a sample was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The series limit is reached and this is a new series.
    TooManySeries,
    /// A sum that would not be finite, or a timer value or sample count beyond what a
    /// histogram holds.
    OutOfRange,
    /// The sample would take the memory the series hold past the budget.
    OverMemory,
}

/// A series as it is held: `(name, tags, kind)`.
type Key = (String, String, Kind);

/// Estimated bytes of a series' entry beside its name and tags: the map's slot, the strings'
/// headers and the state (a histogram's fields without its counts).
const SERIES_OVERHEAD: usize = 256;
/// Estimated bytes of a set member beside its text: the string's header and the set's slot.
const MEMBER_OVERHEAD: usize = 48;

/// The series of the current interval.
pub struct Aggregator {
    series: HashMap<Key, State>,
    max_series: usize,
    /// Most bytes the series may hold ([`Aggregator::bytes`]).
    max_bytes: usize,
    /// Bytes held now, estimated: names, tags, histograms' counts, sets' members.
    bytes: usize,
}

impl Aggregator {
    /// At most `max_series` series at once, holding at most about `max_bytes`.
    pub fn new(max_series: usize, max_bytes: usize) -> Self {
        Self { series: HashMap::new(), max_series, max_bytes, bytes: 0 }
    }

    /// The memory the series hold, estimated (what `max_bytes` bounds).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Series held now.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Whether no series is held.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Take one parsed line. A line refused changes nothing (no series appears for it).
    pub fn add(&mut self, line: &Line<'_>) -> Result<(), Refused> {
        let key = (line.name.to_owned(), line.tags.clone(), line.kind);
        let held = self.series.get(&key);
        if held.is_none() && self.series.len() >= self.max_series {
            return Err(Refused::TooManySeries);
        }
        check(held, &line.value)?;
        let grows = match held {
            None => key_bytes(&key).saturating_add(growth(None, &line.value)),
            Some(state) => growth(Some(state), &line.value),
        };
        let bytes = self.bytes.saturating_add(grows);
        if bytes > self.max_bytes {
            return Err(Refused::OverMemory);
        }
        self.bytes = bytes;
        let state = self.series.entry(key).or_insert_with(|| match line.kind {
            Kind::Counter => State::Counter { sum: 0.0, samples: 0 },
            Kind::Gauge => State::Gauge { value: 0.0, samples: 0, idle: 0 },
            Kind::Timer => State::Timer { hist: new_histogram(), sum: 0.0 },
            Kind::Set => State::Set { members: HashSet::new(), samples: 0 },
        });
        match (state, &line.value) {
            (State::Counter { sum, samples }, Value::Count(values)) => {
                *sum += values.iter().sum::<f64>();
                *samples += values.len() as u64;
            }
            (State::Gauge { value, samples, idle }, Value::Gauge(v)) => {
                (*value, *idle) = (*v, 0);
                *samples += 1;
            }
            (State::Gauge { value, samples, idle }, Value::GaugeDelta(d)) => {
                (*value, *idle) = (*value + d, 0);
                *samples += 1;
            }
            (State::Timer { hist, sum }, Value::Samples { values, weight }) => {
                for v in values {
                    // `check` saw every value fit and the counts stay below what V2 holds.
                    let Some(scaled) = histogram::recorded(*v) else { return Err(Refused::OutOfRange) };
                    if hist.record_n(scaled, *weight).is_err() {
                        return Err(Refused::OutOfRange);
                    }
                    *sum += v * *weight as f64;
                }
            }
            (State::Set { members, samples }, Value::Member(m)) => {
                *samples += 1;
                if !members.contains(*m) {
                    members.insert((*m).to_owned());
                }
            }
            // The parser gives each kind its own value shape.
            _ => {}
        }
        Ok(())
    }

    /// The interval's rows at `ts`; counters, timers and sets start over, gauges carry on.
    pub fn snapshot(&mut self, ts: u64, interval_ms: u64) -> Vec<Row> {
        let mut rows = Vec::with_capacity(self.series.len());
        self.series.retain(|(name, tags, kind), state| {
            let row = |value: f64, count: u64, histogram: Option<String>| Row {
                ts,
                name: name.clone(),
                tags: tags.clone(),
                kind: kind.as_str(),
                value,
                count,
                histogram,
                interval_ms,
            };
            match state {
                State::Counter { sum, samples } => rows.push(row(*sum, *samples, None)),
                State::Gauge { value, samples, idle } => {
                    // `idle`: intervals since the last sample; the row of that interval had it.
                    if *idle > GAUGE_IDLE_INTERVALS {
                        return false;
                    }
                    rows.push(row(*value, *samples, None));
                    *samples = 0;
                    *idle += 1;
                    return true;
                }
                State::Timer { hist, sum } => {
                    use base64::Engine as _;
                    match histogram::encode(hist) {
                        Ok(bytes) => {
                            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
                            rows.push(row(*sum, hist.len(), Some(b64)));
                        }
                        Err(e) => tracing::warn!(metric = %name, error = %e, "cannot serialize a histogram"),
                    }
                }
                State::Set { members, samples } => rows.push(row(members.len() as f64, *samples, None)),
            }
            false
        });
        // Gauges carry on; everything else started over.
        self.bytes = self.series.iter().map(|(key, state)| key_bytes(key).saturating_add(held_bytes(state))).sum();
        rows
    }
}

/// The estimated bytes of a series' entry, without what its state holds.
fn key_bytes((name, tags, _): &Key) -> usize {
    SERIES_OVERHEAD.saturating_add(name.len()).saturating_add(tags.len())
}

/// The estimated bytes a series' state holds beyond its entry.
fn held_bytes(state: &State) -> usize {
    match state {
        State::Timer { hist, .. } => hist.distinct_values().saturating_mul(8),
        State::Set { members, .. } => members.iter().map(|m| m.len().saturating_add(MEMBER_OVERHEAD)).sum(),
        State::Counter { .. } | State::Gauge { .. } => 0,
    }
}

/// The estimated bytes `value` adds to the series held as `held` (none yet: an empty one).
fn growth(held: Option<&State>, value: &Value) -> usize {
    match (held, value) {
        (held, Value::Samples { values, .. }) => {
            let has = match held {
                Some(State::Timer { hist, .. }) => hist.distinct_values(),
                _ => 0,
            };
            let top = values.iter().filter_map(|v| histogram::recorded(*v)).max().unwrap_or(0);
            let top = match held {
                Some(State::Timer { hist, .. }) => top.max(hist.max()),
                _ => top,
            };
            histogram_counts(top).saturating_sub(has).saturating_mul(8)
        }
        (Some(State::Set { members, .. }), Value::Member(m)) if members.contains(*m) => 0,
        (_, Value::Member(m)) => m.len().saturating_add(MEMBER_OVERHEAD),
        _ => 0,
    }
}

/// The counts a histogram of [`new_histogram`]'s precision holds to record values up to `top`:
/// 1,024 per doubling of the range past 2,048 (3 significant digits), plus 2,048 (HdrHistogram's
/// layout).
fn histogram_counts(top: u64) -> usize {
    let bits = 64 - (top | 2047).leading_zeros() as usize;
    (bits - 10 + 1) * 1024
}

/// Whether `value` can be added to the series held as `held` (none yet: an empty one): sums stay
/// finite, timer values fit a histogram and its counts what HDR V2 stores (`i64`).
fn check(held: Option<&State>, value: &Value) -> Result<(), Refused> {
    let finite = |x: f64| if x.is_finite() { Ok(()) } else { Err(Refused::OutOfRange) };
    match (held, value) {
        (held, Value::Count(values)) => {
            let sum = match held {
                Some(State::Counter { sum, .. }) => *sum,
                _ => 0.0,
            };
            finite(values.iter().fold(sum, |a, v| a + v))
        }
        (Some(State::Gauge { value, .. }), Value::GaugeDelta(d)) => finite(value + d),
        (held, Value::Samples { values, weight }) => {
            let (samples, sum) = match held {
                Some(State::Timer { hist, sum }) => (hist.len(), *sum),
                _ => (0, 0.0),
            };
            let added = weight.checked_mul(values.len() as u64).ok_or(Refused::OutOfRange)?;
            if samples.checked_add(added).is_none_or(|n| n > i64::MAX as u64) {
                return Err(Refused::OutOfRange);
            }
            if values.iter().any(|v| histogram::recorded(*v).is_none()) {
                return Err(Refused::OutOfRange);
            }
            finite(values.iter().fold(sum, |a, v| a + v * *weight as f64))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::statsd::parse_line;
    use super::*;

    fn feed(a: &mut Aggregator, lines: &[&str]) {
        for l in lines {
            a.add(&parse_line(l).unwrap()).unwrap();
        }
    }

    #[test]
    fn counters_gauges_timers_sets_per_interval() {
        let mut a = Aggregator::new(100, 1 << 30);
        feed(
            &mut a,
            &["sent:1|c|#op:a", "sent:2|c|#op:a", "sent:5|c|#op:b", "q:7|g", "q:+3|g", "u:x|s", "u:x|s", "u:y|s"],
        );
        feed(&mut a, &["lat:10|ms", "lat:20|ms", "lat:0.5|ms|@0.5"]);
        let mut rows = a.snapshot(10_000, 10_000);
        rows.sort_by(|x, y| (&x.name, &x.tags).cmp(&(&y.name, &y.tags)));
        let got: Vec<(&str, &str, f64, u64)> =
            rows.iter().map(|r| (r.name.as_str(), r.tags.as_str(), r.value, r.count)).collect();
        assert_eq!(
            got,
            [
                ("lat", "", 31.0, 4),
                ("q", "", 10.0, 2),
                ("sent", "op:a", 3.0, 2),
                ("sent", "op:b", 5.0, 1),
                // Two distinct members of three samples.
                ("u", "", 2.0, 3)
            ]
        );
        let h = rows.iter().find(|r| r.name == "lat").and_then(|r| r.histogram.clone()).unwrap();
        use base64::Engine as _;
        let h = histogram::decode(&base64::engine::general_purpose::STANDARD.decode(h).unwrap()).unwrap();
        assert_eq!(h.len(), 4);
        assert_eq!(h.max(), h.highest_equivalent(20_000));
        // Next interval: only the gauge carries on, with no new samples.
        let rows = a.snapshot(20_000, 10_000);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].value, rows[0].count), (10.0, 0));
    }

    #[test]
    fn idle_gauges_stop_and_series_are_bounded() {
        let mut a = Aggregator::new(2, 1 << 30);
        feed(&mut a, &["g:1|g", "c:1|c"]);
        assert_eq!(a.add(&parse_line("other:1|c").unwrap()), Err(Refused::TooManySeries));
        feed(&mut a, &["c:1|c"]);
        // The row with the sample, then 30 rows without one, then none.
        let gauge_rows: Vec<u64> = (0..GAUGE_IDLE_INTERVALS + 5)
            .flat_map(|i| a.snapshot(u64::from(i), 1))
            .filter(|r| r.name == "g")
            .map(|r| r.count)
            .collect();
        assert_eq!(gauge_rows.len() as u32, 1 + GAUGE_IDLE_INTERVALS);
        assert_eq!((gauge_rows[0], gauge_rows.iter().skip(1).all(|&c| c == 0)), (1, true));
        assert!(a.is_empty());
    }

    #[test]
    fn lines_out_of_range_are_refused_and_leave_no_series() {
        let mut a = Aggregator::new(100, 1 << 30);
        for line in ["z1:1|ms|@1e-300", "z3:1e300|c|@1e-300", "z5:1e300|ms", "z6:1:1e300|ms", "z7:1e16|ms"] {
            assert_eq!(a.add(&parse_line(line).unwrap()), Err(Refused::OutOfRange), "{line}");
        }
        assert!(a.is_empty(), "a refused line made a series");
        // A sum that would overflow is refused; the series keeps what it had.
        feed(&mut a, &["c:1e308|c", "g:1e308|g", "t:1|ms|@1e-9"]);
        for line in ["c:1e308|c", "g:+1e308|g"] {
            assert_eq!(a.add(&parse_line(line).unwrap()), Err(Refused::OutOfRange), "{line}");
        }
        let rows = a.snapshot(10_000, 10_000);
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|r| r.value.is_finite() && (r.kind != "timer" || r.histogram.is_some())));
        assert_eq!(rows.iter().find(|r| r.name == "t").map(|r| r.count), Some(1_000_000_000));
    }

    /// What the series' buffers hold (strings' capacities, histograms' counts), to hold the
    /// estimate against.
    fn real_bytes(a: &Aggregator) -> usize {
        a.series
            .iter()
            .map(|(k, s)| {
                k.0.capacity()
                    + k.1.capacity()
                    + match s {
                        State::Timer { hist, .. } => hist.distinct_values() * 8,
                        State::Set { members, .. } => members.iter().map(String::capacity).sum(),
                        _ => 0,
                    }
            })
            .sum()
    }

    #[test]
    fn the_series_memory_is_bounded() {
        // Timers of one sample near the largest value: each histogram holds 432 KiB of counts.
        let mut a = Aggregator::new(100_000, 16 << 20);
        let mut taken = 0;
        for i in 0..1_000 {
            match a.add(&parse_line(&format!("t{i}:9e15|ms")).unwrap()) {
                Ok(()) => taken += 1,
                Err(e) => assert_eq!(e, Refused::OverMemory),
            }
        }
        assert!((30..=40).contains(&taken), "{taken} huge timers taken in 16 MiB");
        assert!(
            a.bytes() <= 16 << 20 && real_bytes(&a) <= a.bytes(),
            "{} estimated, {} held",
            a.bytes(),
            real_bytes(&a)
        );
        // A sample within what a held timer covers costs nothing more; counters cost their key.
        a.add(&parse_line("t0:1|ms").unwrap()).unwrap();
        // A set's members count, a member seen before does not.
        let mut b = Aggregator::new(100, 1 << 20);
        let mut members = 0;
        for i in 0..100_000 {
            if b.add(&parse_line(&format!("s:member-{i}|s")).unwrap()).is_ok() {
                members += 1;
            }
        }
        assert!((10_000..20_000).contains(&members), "{members} set members in 1 MiB");
        b.add(&parse_line("s:member-0|s").unwrap()).unwrap();
        // The next interval starts over.
        assert_eq!(b.snapshot(1, 1)[0].value, members as f64);
        assert_eq!(b.bytes(), 0);
        b.add(&parse_line("s:member-100000|s").unwrap()).unwrap();
        // A timer over the usual range of a latency, 1 µs to 60 s: 136 KiB.
        let mut c = Aggregator::new(100, 1 << 30);
        feed(&mut c, &["lat:0.001|ms", "lat:60000|ms"]);
        assert_eq!(c.bytes(), 256 + 3 + 17 * 1024 * 8);
        assert_eq!(real_bytes(&c) - 3, 17 * 1024 * 8, "the estimate of a histogram's counts is exact");
    }
}
