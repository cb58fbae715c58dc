//! The cluster's latest metric snapshot per node, for the collector's `/metrics`.
//!
//! Each `_metrics` payload the collector takes carries the node's snapshot rows (see the
//! agent's `metrics` module). For every counter and gauge series of every node, the row with
//! the newest timestamp is kept; `/metrics` shows them as `switchboard_cluster_metric` with the
//! labels `node`, `name`, `kind` (`counter`: the delta of the last interval; `gauge`: the last
//! value) and `tags` (as the gateway sent them, `k:v,…`), and the snapshot's time as
//! `switchboard_cluster_metric_timestamp_seconds`. A replayed or repeated row changes nothing (the
//! same time gives the same value). Timers and sets stay in the `metrics` table. At most
//! `max_series` series are kept; rows of further series are counted and left out.

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

/// The newest row of each series.
#[derive(Debug)]
pub struct LatestMetrics {
    series: Mutex<HashMap<SeriesKey, (i64, f64)>>,
    max_series: usize,
    /// Rows of series beyond `max_series`, left out.
    pub refused: AtomicU64,
}

impl LatestMetrics {
    /// Keep at most `max_series` series.
    pub fn new(max_series: usize) -> Self {
        Self { series: Mutex::new(HashMap::new()), max_series, refused: AtomicU64::new(0) }
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

    #[test]
    fn the_newest_row_of_each_counter_and_gauge_wins_and_the_series_are_bounded() {
        let m = LatestMetrics::new(3);
        m.take(
            "gw1",
            &payload(&[
                (2_000_000, "submitted", "counter", "operator:a", "7"),
                (1_000_000, "submitted", "counter", "operator:a", "5"),
                (2_000_000, "queue", "gauge", "", "12.5"),
                (2_000_000, "latency", "timer", "", "3"),
                (2_000_000, "broken", "counter", "", "not a number"),
            ]),
        );
        m.take("gw2", &payload(&[(3_000_000, "submitted", "counter", "operator:a", "1")]));
        // Beyond 3 series: refused, counted.
        m.take("gw3", &payload(&[(3_000_000, "submitted", "counter", "", "1")]));
        m.take("gw1", b"not a payload");
        let got: Vec<(String, f64, f64)> = m
            .snapshot()
            .into_iter()
            .map(|(l, v, t)| (format!("{}/{}/{}/{}", l[0].1, l[1].1, l[2].1, l[3].1), v, t))
            .collect();
        assert_eq!(
            got,
            vec![
                ("gw1/queue/gauge/".to_owned(), 12.5, 2.0),
                ("gw1/submitted/counter/operator:a".to_owned(), 7.0, 2.0),
                ("gw2/submitted/counter/operator:a".to_owned(), 1.0, 3.0),
            ]
        );
        assert_eq!(m.refused.load(Ordering::Relaxed), 1);
    }
}
