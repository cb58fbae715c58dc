//! The cluster's latest metric snapshot per node, for the collector's `/metrics`.
//!
//! Each `_metrics` payload the collector takes carries the node's snapshot rows (see the
//! agent's `metrics` module). For every counter and gauge series of every node, the row with
//! the newest timestamp is kept; `/metrics` shows them as `switchboard_cluster_metric` with the
//! labels `node`, `name`, `kind` (`counter`: the delta of the last interval; `gauge`: the last
//! value) and `tags` (as the gateway sent them, `k:v,…`), and the snapshot's time as
//! `switchboard_cluster_metric_timestamp_seconds`. A replayed or repeated row changes nothing (the
//! same time gives the same value). Timers and sets stay in the `metrics` table. At most
//! `max_series` series are kept; rows of further series are counted and left out, and a full
//! map drops the series not updated for an hour to make room.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use arrow::array::{Array, AsArray, MapArray};
use arrow::datatypes::TimestampMicrosecondType;
use switchboard_bus::wire::log_batch;

/// A series: node, name, kind (`counter` or `gauge`), tags.
type SeriesKey = (String, String, &'static str, String);

/// One series as `/metrics` shows it: labels, value, time (seconds since the epoch).
pub type Shown = (Vec<(&'static str, String)>, f64, f64);

/// A series whose newest row is older than this (by the collector's clock) is dropped when
/// the map is full (µs): a flood of one-off series gives its room back.
pub const STALE_AFTER_MICROS: i64 = 3_600_000_000;

/// How often a full map looks for stale series at most.
const EVICT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The newest row of each series.
#[derive(Debug)]
pub struct LatestMetrics {
    series: Mutex<HashMap<SeriesKey, (i64, f64)>>,
    max_series: usize,
    /// Rows of series beyond `max_series`, left out.
    pub refused: AtomicU64,
    /// When stale series were last looked for.
    evicted: Mutex<Option<std::time::Instant>>,
}

impl LatestMetrics {
    /// Keep at most `max_series` series.
    pub fn new(max_series: usize) -> Self {
        Self { series: Mutex::new(HashMap::new()), max_series, refused: AtomicU64::new(0), evicted: Mutex::new(None) }
    }

    /// With the map full, drop the series whose newest row is older than
    /// [`STALE_AFTER_MICROS`] (at most once per [`EVICT_EVERY`]).
    fn evict_stale(&self, series: &mut HashMap<SeriesKey, (i64, f64)>) {
        if series.len() < self.max_series {
            return;
        }
        // One assignment under the lock: a poisoned lock is taken over.
        let mut evicted = self.evicted.lock().unwrap_or_else(|p| p.into_inner());
        if evicted.is_some_and(|t| t.elapsed() < EVICT_EVERY) {
            return;
        }
        *evicted = Some(std::time::Instant::now());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let horizon = now.saturating_sub(STALE_AFTER_MICROS);
        series.retain(|_, (at, _)| *at >= horizon);
    }

    /// Take the rows of one `_metrics` payload from `node` (a payload that does not decode is
    /// the sink's to count).
    pub fn take(&self, node: &str, payload: &[u8]) {
        let Ok(batch) = log_batch::decode(payload) else { return };
        let (Some(ts), Some(map)) = (
            batch.column_by_name("ts").and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>()),
            batch.column_by_name("fields").and_then(|c| c.as_any().downcast_ref::<MapArray>()),
        ) else {
            return;
        };
        let (Some(keys), Some(values)) = (map.keys().as_string_opt::<i32>(), map.values().as_string_opt::<i32>())
        else {
            return;
        };
        let offsets = map.value_offsets();
        let mut series = self.lock();
        self.evict_stale(&mut series);
        for row in 0..batch.num_rows() {
            let field = |name: &str| {
                (offsets[row] as usize..offsets[row + 1] as usize)
                    .find(|&e| keys.value(e) == name && values.is_valid(e))
                    .map(|e| values.value(e))
            };
            let kind = match field("kind") {
                Some("counter") => "counter",
                Some("gauge") => "gauge",
                _ => continue,
            };
            let (Some(name), Some(value)) = (field("name"), field("value").and_then(|v| v.parse::<f64>().ok())) else {
                continue;
            };
            let key = (node.to_owned(), name.to_owned(), kind, field("tags").unwrap_or_default().to_owned());
            let at = ts.value(row);
            let full = series.len() >= self.max_series;
            match series.entry(key) {
                Entry::Occupied(mut e) => {
                    if e.get().0 <= at {
                        e.insert((at, value));
                    }
                }
                Entry::Vacant(e) if !full => {
                    e.insert((at, value));
                }
                Entry::Vacant(_) => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Every series: its labels, value and time (seconds since the epoch), sorted.
    pub fn snapshot(&self) -> Vec<Shown> {
        let mut out: Vec<_> = self
            .lock()
            .iter()
            .map(|((node, name, kind, tags), (at, value))| {
                let labels = vec![
                    ("node", node.clone()),
                    ("name", name.clone()),
                    ("kind", (*kind).to_owned()),
                    ("tags", tags.clone()),
                ];
                (labels, *value, *at as f64 / 1e6)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SeriesKey, (i64, f64)>> {
        // A panic while holding the lock leaves whole entries behind (each update is one
        // assignment), so a poisoned map is still consistent.
        self.series.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_bus::wire::log_batch::LogBatchBuilder;

    fn payload(rows: &[(i64, &str, &str, &str, &str)]) -> Vec<u8> {
        let mut b = LogBatchBuilder::new();
        for (i, (ts, name, kind, tags, value)) in rows.iter().enumerate() {
            b.append(
                &crate::test_rows::metrics_row(i as u64, *ts),
                &[("name", *name), ("kind", *kind), ("tags", *tags), ("value", *value)],
            );
        }
        log_batch::encode(&b.finish().unwrap()).unwrap()
    }

    fn now_micros() -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
    }

    #[test]
    fn the_newest_row_of_each_counter_and_gauge_wins_and_the_series_are_bounded() {
        // Row times a minute ago, in seconds from there.
        let base = now_micros() / 1_000_000 * 1_000_000 - 60_000_000;
        let at = |s: i64| base + s * 1_000_000;
        let m = LatestMetrics::new(3);
        m.take(
            "gw1",
            &payload(&[
                (at(2), "submitted", "counter", "operator:a", "7"),
                (at(1), "submitted", "counter", "operator:a", "5"),
                (at(2), "queue", "gauge", "", "12.5"),
                (at(2), "latency", "timer", "", "3"),
                (at(2), "broken", "counter", "", "not a number"),
            ]),
        );
        m.take("gw2", &payload(&[(at(3), "submitted", "counter", "operator:a", "1")]));
        // Beyond 3 series: refused, counted.
        m.take("gw3", &payload(&[(at(3), "submitted", "counter", "", "1")]));
        m.take("gw1", b"not a payload");
        let got: Vec<(String, f64, f64)> = m
            .snapshot()
            .into_iter()
            .map(|(l, v, t)| (format!("{}/{}/{}/{}", l[0].1, l[1].1, l[2].1, l[3].1), v, t))
            .collect();
        let secs = |s: i64| at(s) as f64 / 1e6;
        assert_eq!(
            got,
            vec![
                ("gw1/queue/gauge/".to_owned(), 12.5, secs(2)),
                ("gw1/submitted/counter/operator:a".to_owned(), 7.0, secs(2)),
                ("gw2/submitted/counter/operator:a".to_owned(), 1.0, secs(3)),
            ]
        );
        assert_eq!(m.refused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_full_map_drops_series_not_updated_for_an_hour() {
        let old = now_micros() - STALE_AFTER_MICROS - 60_000_000;
        let m = LatestMetrics::new(2);
        m.take("gw1", &payload(&[(old, "flood_1", "counter", "", "1"), (old, "flood_2", "counter", "", "1")]));
        m.take("gw1", &payload(&[(now_micros(), "fresh", "counter", "", "5")]));
        let names: Vec<String> = m.snapshot().into_iter().map(|(l, _, _)| l[1].1.clone()).collect();
        assert_eq!(names, ["fresh"]);
        assert_eq!(m.refused.load(Ordering::Relaxed), 0);
    }
}
