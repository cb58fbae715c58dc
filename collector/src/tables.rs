//! The collector's tables and which streams feed them.
//!
//! Gateway log streams go to `logs`. The agents' own streams go to tables of their own, with the
//! logs layout plus typed columns ([`INTERNAL`]): `_limits` (limit decisions per key and second,
//! see the agent's `limits::record`) to `limits`, `_dlr` (DLR events, see the agent's
//! `dlr::events`) to `dlr`, `_metrics` (the gateways' metric snapshots, see the agent's
//! `metrics`) to `metrics`. Each table is written by a [`LogsSink`] of its own in
//! `<data_dir>/<table>`; [`Tables`] routes payloads and heads to the right one and merges their
//! status.

use std::collections::BTreeMap;

use switchboard_bus::wire::control::Heads;
use switchboard_bus::StreamId;

use crate::config::{ColumnType, PromotedColumn};
use crate::sink::{LogsSink, ReplayRequest, SinkStatus};

/// A table fed by one of the agents' own streams.
#[derive(Debug, Clone, Copy)]
pub struct InternalTable {
    /// The table's directory below the data directory (and its name in `query`).
    pub dir: &'static str,
    /// The stream that feeds it.
    pub stream: &'static str,
    /// Its typed columns: (name, type, Bloom filter).
    pub columns: &'static [(&'static str, ColumnType, bool)],
}

impl InternalTable {
    /// The typed columns as the sink takes them.
    pub fn promoted(&self) -> Vec<PromotedColumn> {
        self.columns.iter().map(|&(name, kind, bloom)| PromotedColumn { name: name.into(), kind, bloom }).collect()
    }
}

/// The `limits` table: limit decisions per key and second.
pub const LIMITS: InternalTable = InternalTable {
    dir: "limits",
    stream: "_limits",
    columns: &[
        ("key", ColumnType::String, false),
        ("limit_key", ColumnType::String, false),
        ("window_ms", ColumnType::Int64, false),
        ("allowed", ColumnType::Int64, false),
        ("denied", ColumnType::Int64, false),
        ("share", ColumnType::Float64, false),
        ("rate_per_sec", ColumnType::Float64, false),
        ("slots_max", ColumnType::Int64, false),
        ("slots_held", ColumnType::Int64, false),
    ],
};

/// The `dlr` table: DLR events (registered, resolved, delivered, duplicate, closed, expired,
/// not_found) with the record's fields and, on `delivered`, the submit-to-DLR latency.
pub const DLR: InternalTable = InternalTable {
    dir: "dlr",
    stream: "_dlr",
    columns: &[
        ("event", ColumnType::String, false),
        ("connector", ColumnType::String, false),
        ("id", ColumnType::String, true),
        ("owner", ColumnType::String, false),
        ("account", ColumnType::String, false),
        ("destination", ColumnType::String, false),
        ("gateway_ref", ColumnType::String, true),
        ("submitted_at", ColumnType::Int64, false),
        ("status", ColumnType::String, false),
        ("latency_ms", ColumnType::Int64, false),
        ("answered_by", ColumnType::String, false),
        ("lookup_us", ColumnType::Int64, false),
        ("at_node", ColumnType::String, false),
    ],
};

/// The `metrics` table: the gateways' metrics, one row per series and interval and node
/// (counters as the interval's delta, gauges as last values, timers with their HDR histogram).
pub const METRICS: InternalTable = InternalTable {
    dir: "metrics",
    stream: "_metrics",
    columns: &[
        ("name", ColumnType::String, false),
        ("tags", ColumnType::String, false),
        ("kind", ColumnType::String, false),
        ("value", ColumnType::Float64, false),
        ("count", ColumnType::Int64, false),
        ("histogram", ColumnType::Histogram, false),
        ("interval_ms", ColumnType::Int64, false),
    ],
};

/// Every table fed by the agents' own streams.
pub const INTERNAL: [InternalTable; 3] = [LIMITS, DLR, METRICS];

/// Every table the collector writes.
pub struct Tables {
    /// The `logs` table.
    pub logs: LogsSink,
    /// The internal tables, by stream name.
    pub internal: Vec<(&'static str, LogsSink)>,
}

impl Tables {
    fn sink_for(&mut self, stream_name: &str) -> &mut LogsSink {
        match self.internal.iter_mut().find(|(s, _)| *s == stream_name) {
            Some((_, sink)) => sink,
            None => &mut self.logs,
        }
    }

    fn all(&mut self) -> impl Iterator<Item = &mut LogsSink> {
        std::iter::once(&mut self.logs).chain(self.internal.iter_mut().map(|(_, s)| s))
    }

    /// Take one payload of `stream`.
    pub fn handle(&mut self, stream: &StreamId, payload: &[u8], replayed: bool) {
        self.sink_for(&stream.name).handle(stream, payload, replayed);
    }

    /// Give each table the heads of its own streams; the ranges to pull from the agent.
    pub fn on_heads(&mut self, node: &str, heads: &Heads) -> Vec<ReplayRequest> {
        let stream_of = |k: &str| k.split_once('/').map(|(_, name)| name.to_owned()).unwrap_or_default();
        let part = |keep: &dyn Fn(&str) -> bool| Heads {
            version: heads.version,
            streams: heads.streams.iter().filter(|(k, _)| keep(&stream_of(k))).map(|(k, v)| (k.clone(), *v)).collect(),
            acked: heads.acked.iter().filter(|(k, _)| keep(&stream_of(k))).map(|(k, v)| (k.clone(), *v)).collect(),
            instance: heads.instance.clone(),
        };
        let internal: Vec<&str> = self.internal.iter().map(|(s, _)| *s).collect();
        let mut out = self.logs.on_heads(node, &part(&|s| !internal.contains(&s)));
        for (stream, sink) in &mut self.internal {
            let stream: &str = stream;
            out.extend(sink.on_heads(node, &part(&|s| s == stream)));
        }
        out
    }

    /// Commit files past their age.
    pub fn commit_aged(&mut self) {
        self.all().for_each(LogsSink::commit_aged);
    }

    /// Commit every open file.
    pub fn commit_all(&mut self) {
        self.all().for_each(LogsSink::commit_all);
    }

    /// Whether a commit moved a watermark since the last call.
    pub fn take_watermarks_changed(&mut self) -> bool {
        // Every table: each call clears its table's flag.
        self.all().fold(false, |changed, s| s.take_watermarks_changed() | changed)
    }

    /// Watermarks of every stream (each stream lives in one table).
    pub fn watermarks(&self) -> BTreeMap<String, u64> {
        let mut w = self.logs.watermarks();
        for (_, s) in &self.internal {
            w.extend(s.watermarks());
        }
        w
    }

    /// Health and lag of every table together.
    pub fn status(&self) -> SinkStatus {
        let mut a = self.logs.status();
        for (_, s) in &self.internal {
            let b = s.status();
            a.watermarks.extend(b.watermarks);
            a.lag.extend(b.lag);
            a.failing = a.failing.or(b.failing);
            a.open_files += b.open_files;
        }
        a
    }
}
