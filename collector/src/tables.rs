//! The collector's tables and which streams feed them.
//!
//! Log streams go to `logs`. The agents' own `_limits` stream (limit decisions per key and
//! second, see the agent's `limits::record`) goes to `limits`, a table with the same layout as
//! `logs` plus typed columns for the decision counts ([`limits_columns`]). Both are written by a
//! [`LogsSink`] of their own, in `<data_dir>/logs` and `<data_dir>/limits`; [`Tables`] routes
//! payloads and heads to the right one and merges their status.

use std::collections::BTreeMap;

use switchboard_bus::wire::control::Heads;
use switchboard_bus::StreamId;

use crate::config::{ColumnType, PromotedColumn};
use crate::sink::{LogsSink, ReplayRequest, SinkStatus};

/// Name of the limits table's directory below the data directory.
pub const LIMITS_DIR: &str = "limits";
/// The agents' stream of limit decisions.
pub const LIMITS_STREAM: &str = "_limits";

/// The typed columns of the `limits` table.
pub fn limits_columns() -> Vec<PromotedColumn> {
    let col = |name: &str, kind: ColumnType| PromotedColumn { name: name.into(), kind, bloom: false };
    vec![
        col("key", ColumnType::String),
        col("limit_key", ColumnType::String),
        col("window_ms", ColumnType::Int64),
        col("allowed", ColumnType::Int64),
        col("denied", ColumnType::Int64),
        col("share", ColumnType::Float64),
        col("rate_per_sec", ColumnType::Float64),
        col("slots_max", ColumnType::Int64),
        col("slots_held", ColumnType::Int64),
    ]
}

/// Every table the collector writes.
pub struct Tables {
    /// The `logs` table.
    pub logs: LogsSink,
    /// The `limits` table.
    pub limits: LogsSink,
}

impl Tables {
    fn sink_for(&mut self, stream_name: &str) -> &mut LogsSink {
        if stream_name == LIMITS_STREAM {
            &mut self.limits
        } else {
            &mut self.logs
        }
    }

    /// Take one payload of `stream`.
    pub fn handle(&mut self, stream: &StreamId, payload: &[u8], replayed: bool) {
        self.sink_for(&stream.name).handle(stream, payload, replayed);
    }

    /// Give each table the heads of its own streams; the ranges to pull from the agent.
    pub fn on_heads(&mut self, node: &str, heads: &Heads) -> Vec<ReplayRequest> {
        let is_limits = |k: &str| k.split_once('/').is_some_and(|(_, name)| name == LIMITS_STREAM);
        let part = |limits: bool| Heads {
            version: heads.version,
            streams: heads
                .streams
                .iter()
                .filter(|(k, _)| is_limits(k) == limits)
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            acked: heads.acked.iter().filter(|(k, _)| is_limits(k) == limits).map(|(k, v)| (k.clone(), *v)).collect(),
        };
        let mut out = self.logs.on_heads(node, &part(false));
        out.extend(self.limits.on_heads(node, &part(true)));
        out
    }

    /// Commit files past their age.
    pub fn commit_aged(&mut self) {
        self.logs.commit_aged();
        self.limits.commit_aged();
    }

    /// Commit every open file.
    pub fn commit_all(&mut self) {
        self.logs.commit_all();
        self.limits.commit_all();
    }

    /// Whether a commit moved a watermark since the last call.
    pub fn take_watermarks_changed(&mut self) -> bool {
        // Both: each call clears its table's flag.
        self.logs.take_watermarks_changed() | self.limits.take_watermarks_changed()
    }

    /// Watermarks of every stream (each stream lives in one table).
    pub fn watermarks(&self) -> BTreeMap<String, u64> {
        let mut w = self.logs.watermarks();
        w.extend(self.limits.watermarks());
        w
    }

    /// Health and lag of both tables together.
    pub fn status(&self) -> SinkStatus {
        let (mut a, b) = (self.logs.status(), self.limits.status());
        a.watermarks.extend(b.watermarks);
        a.lag.extend(b.lag);
        a.failing = a.failing.or(b.failing);
        a.open_files += b.open_files;
        a
    }
}
