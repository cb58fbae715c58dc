//! The dataset's tables and the agents' own streams that feed them, defined once.
//!
//! Gateway log streams go to [`LOGS`]. Each agent also writes three streams of its own, as
//! JSON lines it tails like a log file: `_limits` (limit decisions per key and second),
//! `_dlr` (DLR events) and `_metrics` (the gateways' metric snapshots). The collector writes
//! each to a table of its own ([`INTERNAL`]): the logs layout (`ts`, `level`, `message`, ...)
//! plus the table's typed columns, each read from the JSON field of the same name.
//!
//! On disk a table is a directory tree (`<dataset>/<table>/date=<day>/hour=<hh>/`) whose
//! committed files end in `.parquet`; a file being written ends in `.parquet.tmp` until its
//! atomic rename. [`table_files`] is the one walk of such a tree.
//!
//! Both sides use these definitions: the collector builds its sinks from them, and each of the
//! agent's record types states its fields with [`record_columns!`], which fails to compile when
//! the record and the table disagree on a column (a renamed, added or dropped field).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The table of gateway log lines.
pub const LOGS: &str = "logs";

/// The type of a typed column (an internal table's, or a promoted field of `logs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// UTF-8 text.
    #[default]
    String,
    /// 64-bit signed integer.
    Int64,
    /// 64-bit float.
    Float64,
    /// Boolean (`true`/`false`/`1`/`0`/`yes`/`no`).
    Bool,
    /// Bytes, given as standard base64 text.
    Binary,
    /// An HDR V2 histogram (DEFLATE or not) as standard base64 text, stored as plain HDR V2
    /// (the file's compression covers it, and readers skip inflating every row).
    Histogram,
}

impl ColumnType {
    /// The Arrow type it is stored as.
    pub fn arrow_type(self) -> arrow::datatypes::DataType {
        use arrow::datatypes::DataType;
        match self {
            ColumnType::String => DataType::Utf8,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Binary | ColumnType::Histogram => DataType::Binary,
        }
    }
}

/// One typed column of an internal table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// The column's name, and the record's JSON field it is read from.
    pub name: &'static str,
    /// Its type.
    pub kind: ColumnType,
    /// Whether its Parquet files carry a Bloom filter for it (point lookups by value).
    pub bloom: bool,
}

const fn col(name: &'static str, kind: ColumnType) -> Column {
    Column { name, kind, bloom: false }
}

const fn bloom(name: &'static str) -> Column {
    Column { name, kind: ColumnType::String, bloom: true }
}

/// A table fed by one of the agents' own streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InternalTable {
    /// The table's name: its directory below the dataset and its name in SQL.
    pub name: &'static str,
    /// The agent's stream (and source name) that feeds it.
    pub stream: &'static str,
    /// Its typed columns, after the logs layout.
    pub columns: &'static [Column],
}

impl InternalTable {
    /// Whether `names` are exactly this table's typed columns, in order (used by
    /// [`record_columns!`] at compile time).
    pub const fn has_columns(&self, names: &[&str]) -> bool {
        if names.len() != self.columns.len() {
            return false;
        }
        let mut i = 0;
        while i < names.len() {
            if !same(names[i].as_bytes(), self.columns[i].name.as_bytes()) {
                return false;
            }
            i += 1;
        }
        true
    }
}

const fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The `limits` table: limit decisions per key and second.
pub const LIMITS: InternalTable = InternalTable {
    name: "limits",
    stream: "_limits",
    columns: &[
        col("key", ColumnType::String),
        col("limit_key", ColumnType::String),
        col("window_ms", ColumnType::Int64),
        col("allowed", ColumnType::Int64),
        col("denied", ColumnType::Int64),
        col("share", ColumnType::Float64),
        col("rate_per_sec", ColumnType::Float64),
        col("slots_max", ColumnType::Int64),
        col("slots_held", ColumnType::Int64),
    ],
};

/// The `dlr` table: DLR events (registered, resolved, delivered, duplicate, closed, expired,
/// not_found) with the record's fields and, on `delivered`, the submit-to-DLR latency.
pub const DLR: InternalTable = InternalTable {
    name: "dlr",
    stream: "_dlr",
    columns: &[
        col("event", ColumnType::String),
        col("connector", ColumnType::String),
        bloom("id"),
        col("owner", ColumnType::String),
        col("account", ColumnType::String),
        col("destination", ColumnType::String),
        bloom("gateway_ref"),
        col("submitted_at", ColumnType::Int64),
        col("status", ColumnType::String),
        col("latency_ms", ColumnType::Int64),
        col("answered_by", ColumnType::String),
        col("lookup_us", ColumnType::Int64),
        col("at_node", ColumnType::String),
    ],
};

/// The `metrics` table: the gateways' metrics, one row per series and interval and node
/// (counters as the interval's delta, gauges as last values, timers with their HDR histogram).
pub const METRICS: InternalTable = InternalTable {
    name: "metrics",
    stream: "_metrics",
    columns: &[
        col("name", ColumnType::String),
        col("tags", ColumnType::String),
        col("kind", ColumnType::String),
        col("value", ColumnType::Float64),
        col("count", ColumnType::Int64),
        col("histogram", ColumnType::Histogram),
        col("interval_ms", ColumnType::Int64),
    ],
};

/// Every table fed by the agents' own streams.
pub const INTERNAL: [InternalTable; 3] = [LIMITS, DLR, METRICS];

/// Every table of the dataset, by name.
pub const ALL: [&str; 4] = [LOGS, LIMITS.name, DLR.name, METRICS.name];

/// The internal table fed by the agents' stream `stream`, if any.
pub fn internal_of(stream: &str) -> Option<&'static InternalTable> {
    INTERNAL.iter().find(|t| t.stream == stream)
}

/// A data file below a table's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// `true` for a committed `*.parquet`, `false` for a `*.parquet.tmp` being (or left half)
    /// written.
    pub committed: bool,
}

/// The partition column holding a file's day, `YYYY-MM-DD` (UTC).
pub const DATE: &str = "date";
/// The partition column holding a file's hour of the day, 0-23 (UTC); its directories spell it
/// with two digits (`hour=03`).
pub const HOUR: &str = "hour";

/// Where, relative to the dataset, `table`'s files for the hour starting `hour × 3600` s after
/// the Unix epoch go: `<table>/date=YYYY-MM-DD/hour=HH`. An hour beyond chrono's range is the
/// epoch's.
pub fn partition_dir(table: &str, hour: i64) -> String {
    let start = chrono::DateTime::from_timestamp(hour.saturating_mul(3600), 0).unwrap_or_default();
    format!("{table}/{DATE}={}/{HOUR}={}", start.format("%Y-%m-%d"), start.format("%H"))
}

/// Every data file below `dir`, depth first: committed `*.parquet` files and `*.parquet.tmp`
/// files not yet committed; other files are left out. A missing `dir` holds none; a file
/// that vanishes during the walk is left out.
pub fn table_files(dir: &Path) -> std::io::Result<Vec<TableFile>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    // A file or directory that vanishes during the walk (a `.tmp` renamed by a commit that
    // runs meanwhile) is skipped; any other error ends it.
    let gone = |r: &std::io::Error| r.kind() == std::io::ErrorKind::NotFound;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(entries) => entries,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                stack.push(entry.path());
                continue;
            }
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let committed = name.ends_with(".parquet");
            if committed || name.ends_with(".parquet.tmp") {
                out.push(TableFile { path: entry.path(), bytes: meta.len(), committed });
            }
        }
    }
    Ok(out)
}

/// Ties a record type to its table at compile time: `record_columns!(TABLE, Record<'_> {
/// layout: ts, level, msg; columns: a, b, c })` fails to build unless `Record`'s fields are exactly the
/// layout fields and the columns listed, and the columns are exactly `TABLE`'s, in order.
#[macro_export]
macro_rules! record_columns {
    ($table:expr, $record:ident $(<$lt:lifetime>)? { layout: $($layout:ident),* ; columns: $($field:ident),* $(,)? }) => {
        const _: () = assert!(
            $table.has_columns(&[$(stringify!($field)),*]),
            concat!("the columns of ", stringify!($record), " are not those of its table"),
        );
        const _: () = {
            #[allow(dead_code)]
            fn every_field_is_a_column(r: &$record $(<$lt>)?) {
                let $record { $($layout: _,)* $($field: _,)* } = r;
            }
        };
    };
}

#[cfg(test)]
mod tests {

    #[test]
    fn partition_directories_spell_the_hour_with_two_digits() {
        // 1,764,558,000 s is 2025-12-01T03:00Z.
        assert_eq!(partition_dir("logs", 1_764_558_000 / 3600), "logs/date=2025-12-01/hour=03");
        assert_eq!(partition_dir("dlr", 0), "dlr/date=1970-01-01/hour=00");
        assert_eq!(partition_dir("dlr", i64::MAX), "dlr/date=1970-01-01/hour=00");
    }

    use super::*;

    #[test]
    fn streams_and_names_are_unique() {
        let names: std::collections::BTreeSet<_> = ALL.iter().collect();
        assert_eq!(names.len(), ALL.len());
        for t in INTERNAL {
            assert!(t.stream.starts_with('_'), "agents' own streams start with _: {}", t.stream);
            assert_eq!(internal_of(t.stream), Some(&t));
        }
        assert_eq!(internal_of("app"), None);
    }

    #[test]
    fn the_walk_finds_committed_and_uncommitted_files_at_any_depth() {
        let dir = tempfile::tempdir().unwrap();
        let hour = dir.path().join("date=2026-12-01").join("hour=10");
        std::fs::create_dir_all(&hour).unwrap();
        std::fs::write(hour.join("a.parquet"), b"1234").unwrap();
        std::fs::write(hour.join(".b.parquet.tmp"), b"12").unwrap();
        std::fs::write(hour.join("notes.txt"), b"x").unwrap();
        let mut files = table_files(dir.path()).unwrap();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let got: Vec<(bool, u64)> = files.iter().map(|f| (f.committed, f.bytes)).collect();
        assert_eq!(got, [(false, 2), (true, 4)]);
        assert!(table_files(&dir.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn columns_compare_by_name_and_order() {
        assert!(METRICS.has_columns(&["name", "tags", "kind", "value", "count", "histogram", "interval_ms"]));
        assert!(!METRICS.has_columns(&["name", "tags", "kind", "value", "count", "interval_ms", "histogram"]));
        assert!(!METRICS.has_columns(&["name"]));
    }
}
