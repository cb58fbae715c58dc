//! The collector's configuration file (TOML).
//!
//! ```toml
//! [bus]
//! node = "collector-1"
//! listen = ["tcp/0.0.0.0:7447"]
//!
//! [collector]
//! data_dir = "/var/lib/switchboard/dataset"
//!
//! [[logs.promote]]
//! name = "msg_id"
//! type = "string"
//! bloom = true
//! ```
//!
//! Every field has a default; unknown fields are errors; [`CollectorConfig::validate`] runs
//! before anything starts.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_bus::{tables, BusConfig};

/// The whole collector config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// How to join the bus; `bus.node` is this collector's name.
    #[serde(default)]
    pub bus: BusConfig,
    /// Where and how Parquet files are written.
    #[serde(default)]
    pub collector: CollectorSettings,
    /// The `logs` table.
    #[serde(default)]
    pub logs: LogsTableConfig,
}

/// The `[collector]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorSettings {
    /// Root of the Parquet dataset; each table is a directory below it (`logs/`). A directory
    /// (`/var/lib/switchboard/data`, `file:///…`) or an S3 location (`s3://bucket/prefix`, reached
    /// as `[collector.store]` says). Several collectors may share one dataset: one writes, the
    /// others stand by (see docs/architecture.md). Default: `./switchboard-data`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// How to reach an S3 `data_dir`: endpoint, region, credentials (default: the `AWS_*`
    /// environment variables), `allow_http`, `virtual_hosted_style`, `timeout_ms`.
    #[serde(default)]
    pub store: switchboard_bus::dataset::StoreOptions,
    /// With an S3 `data_dir`: the local directory where files are written before they go up,
    /// one per collector (the `.tmp` files an earlier run left there are removed at start).
    /// Default: `switchboard-spool-<name>` in the system's temporary directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_dir: Option<PathBuf>,
    /// A command run whenever this collector's role in the group changes, with the new role
    /// (`leader` or `standby`) as its last argument, like keepalived's `notify`: e.g.
    /// `["/usr/local/bin/sb-role"]`. Not waited for; a failure is logged. Default: none.
    #[serde(default)]
    pub notify: Vec<String>,
    /// Commit a file once it holds about this many bytes. Default: 128 MiB.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: usize,
    /// Commit a file at the latest this long after its first row, in milliseconds: the delay
    /// before rows become visible to queries. Default: 30000.
    #[serde(default = "default_max_file_age_ms")]
    pub max_file_age_ms: u64,
    /// Rows per Parquet row group. Default: 262144.
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
    /// Flush a row group early when the rows buffered for one file take this much memory.
    /// Default: 64 MiB.
    #[serde(default = "default_row_group_bytes")]
    pub row_group_max_bytes: usize,
    /// zstd level (1 = fastest; 3 gives the same size on logs at 1.5x the time). Default: 1.
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// Payloads queued between the bus and the writer; beyond that the bus is slowed down
    /// (publishers block) for up to 1 s, then live payloads are shed and pulled again from
    /// the agents' journals. Default: 64.
    #[serde(default = "default_queue")]
    pub queue_payloads: usize,
    /// What a standby keeps of the payloads it sees, in bytes (the newest; older ones are let
    /// go): on a takeover it writes them at once and pulls only the rest from the agents.
    /// Default: 64 MiB.
    #[serde(default = "default_standby_buffer")]
    pub standby_buffer_bytes: usize,
    /// Address of the health and Prometheus metrics endpoint (`/health`, `/metrics`); empty to
    /// disable. Default: `127.0.0.1:7481`.
    #[serde(default = "default_http")]
    pub http_listen: String,
    /// Bearer token of the HTTP API: when set, every request but `GET /health` needs
    /// `Authorization: Bearer <token>`. Required when `http_listen` is not a loopback address.
    /// Default: none.
    #[serde(default)]
    pub http_token: Option<String>,
}

/// The `[logs]` table: how log records become rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsTableConfig {
    /// Parsed fields promoted to typed columns of their own (taken out of the `fields` map).
    /// Default: `msg_id` (string, Bloom filter), `operator` (string), `latency_ms` (int64).
    #[serde(default = "default_promote")]
    pub promote: Vec<PromotedColumn>,
}

/// One promoted field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromotedColumn {
    /// The field's name in the parsed line, and the column's name.
    pub name: String,
    /// `string` (default), `int64`, `float64` or `bool`. A value that does not convert is left in
    /// the `fields` map and the column is null for that row.
    #[serde(default, rename = "type")]
    pub kind: ColumnType,
    /// Write a Bloom filter for this column (fast point lookups, e.g. by message id).
    #[serde(default)]
    pub bloom: bool,
}

pub use switchboard_bus::tables::ColumnType;

fn default_data_dir() -> PathBuf {
    PathBuf::from("switchboard-data")
}
fn default_max_file_bytes() -> usize {
    128 << 20
}
fn default_max_file_age_ms() -> u64 {
    30_000
}
fn default_row_group_rows() -> usize {
    262_144
}
fn default_row_group_bytes() -> usize {
    64 << 20
}
fn default_zstd_level() -> i32 {
    1
}
fn default_queue() -> usize {
    64
}
fn default_standby_buffer() -> usize {
    64 << 20
}
fn default_http() -> String {
    "127.0.0.1:7481".to_owned()
}
fn default_promote() -> Vec<PromotedColumn> {
    vec![
        PromotedColumn { name: "msg_id".into(), kind: ColumnType::String, bloom: true },
        PromotedColumn { name: "operator".into(), kind: ColumnType::String, bloom: false },
        PromotedColumn { name: "latency_ms".into(), kind: ColumnType::Int64, bloom: false },
    ]
}

impl Default for CollectorSettings {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            store: Default::default(),
            spool_dir: None,
            notify: Vec::new(),
            max_file_bytes: default_max_file_bytes(),
            max_file_age_ms: default_max_file_age_ms(),
            row_group_rows: default_row_group_rows(),
            row_group_max_bytes: default_row_group_bytes(),
            zstd_level: default_zstd_level(),
            queue_payloads: default_queue(),
            standby_buffer_bytes: default_standby_buffer(),
            http_listen: default_http(),
            http_token: None,
        }
    }
}

impl Default for LogsTableConfig {
    fn default() -> Self {
        Self { promote: default_promote() }
    }
}

impl LogsTableConfig {
    /// A note when a `[[logs.promote]]` list leaves out default columns: the list replaces the
    /// defaults, so those fields stay in the `fields` map (a query on `msg_id` finds nothing).
    pub fn dropped_defaults(&self) -> Option<String> {
        let dropped: Vec<String> = default_promote()
            .into_iter()
            .filter(|d| !self.promote.iter().any(|p| p.name == d.name))
            .map(|d| d.name)
            .collect();
        (!dropped.is_empty()).then(|| {
            format!(
                "[[logs.promote]] replaces the default columns, and leaves out {}: new rows keep {} in `fields` \
                 (list {} too to keep {} column)",
                dropped.join(", "),
                if dropped.len() == 1 { "it" } else { "them" },
                if dropped.len() == 1 { "it" } else { "them" },
                if dropped.len() == 1 { "its" } else { "their" }
            )
        })
    }
}

impl CollectorSettings {
    /// Where the dataset lives (`data_dir` parsed).
    pub fn location(&self) -> Result<switchboard_bus::dataset::Location, CollectorConfigError> {
        switchboard_bus::dataset::Location::parse(&self.data_dir.to_string_lossy())
            .map_err(|e| CollectorConfigError::Invalid(format!("collector.data_dir: {e}")))
    }

    /// What `--check` can tell of the dataset's store without reaching it or writing: a local
    /// `data_dir` (and `spool_dir`) that is a directory or can be made one; an S3 client that
    /// can be built from `[collector.store]` and the environment (a plain-http endpoint needs
    /// `allow_http`).
    pub fn check_store(&self) -> Result<(), CollectorConfigError> {
        use switchboard_bus::dataset::Location;
        let invalid = CollectorConfigError::Invalid;
        match self.location()? {
            Location::Local(root) => {
                switchboard_bus::config::check_dir("collector.data_dir", &root).map_err(invalid)?
            }
            Location::S3 { bucket, .. } => {
                switchboard_bus::dataset::s3_store(&bucket, &self.store)
                    .map_err(|e| invalid(format!("collector.data_dir: {e}")))?;
            }
        }
        if let Some(spool) = &self.spool_dir {
            switchboard_bus::config::check_dir("collector.spool_dir", spool).map_err(invalid)?;
        }
        Ok(())
    }

    /// `max_file_age_ms` as a duration.
    pub fn max_file_age(&self) -> Duration {
        Duration::from_millis(self.max_file_age_ms)
    }
}

/// Column names of the `logs` table that a promoted field may not take.
pub const RESERVED_LOG_COLUMNS: &[&str] = &[
    "node",
    "stream",
    "seq",
    "ts",
    "observed_ts",
    "file",
    "offset",
    "level",
    "message",
    "raw",
    "truncated",
    "invalid_utf8",
    "fields",
    tables::DATE,
    tables::HOUR,
];

/// A config that cannot be used, with the reason.
pub type CollectorConfigError = switchboard_bus::config::FileError;

impl CollectorConfig {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Self, CollectorConfigError> {
        switchboard_bus::config::load_file(path, Self::validate)
    }

    /// Check everything that can be checked before starting.
    pub fn validate(&self) -> Result<(), CollectorConfigError> {
        self.bus.validate()?;
        let c = &self.collector;
        if c.max_file_bytes < 1024 {
            return Err(CollectorConfigError::Invalid(format!(
                "collector.max_file_bytes = {}: use at least 1024",
                c.max_file_bytes
            )));
        }
        switchboard_bus::config::first_zero(&[
            ("collector.row_group_rows", c.row_group_rows as u64),
            ("collector.queue_payloads", c.queue_payloads as u64),
            ("collector.max_file_age_ms", c.max_file_age_ms),
        ])
        .map_err(CollectorConfigError::Invalid)?;
        if let Some(program) = c.notify.first() {
            switchboard_bus::config::check_program("collector.notify", program)
                .map_err(CollectorConfigError::Invalid)?;
        }
        c.location()?;
        let t = c.store.timeout_ms;
        if t != 0 && !(100..=600_000).contains(&t) {
            return Err(CollectorConfigError::Invalid(format!(
                "collector.store.timeout_ms = {t}: use 100 to 600000 (one request's time limit; 0 is the default, 10000)"
            )));
        }
        switchboard_bus::http::check_listen(&c.http_listen, c.http_token.as_deref(), "collector.http_listen")
            .map_err(CollectorConfigError::Invalid)?;
        if !(1..=22).contains(&c.zstd_level) {
            return Err(CollectorConfigError::Invalid(format!(
                "collector.zstd_level {} is not in 1..=22",
                c.zstd_level
            )));
        }
        let mut seen = HashSet::new();
        for p in &self.logs.promote {
            let ok = !p.name.is_empty() && p.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(CollectorConfigError::Invalid(format!(
                    "logs.promote name {:?}: use letters, digits and '_' only",
                    p.name
                )));
            }
            if RESERVED_LOG_COLUMNS.contains(&p.name.as_str()) {
                return Err(CollectorConfigError::Invalid(format!(
                    "logs.promote name {:?} is a built-in column",
                    p.name
                )));
            }
            if !seen.insert(&p.name) {
                return Err(CollectorConfigError::Invalid(format!("logs.promote name {:?} is listed twice", p.name)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_has_documented_defaults() {
        let c: CollectorConfig = toml::from_str("").unwrap();
        c.validate().unwrap();
        assert_eq!(c.collector.zstd_level, 1);
        assert_eq!(c.logs.promote.len(), 3);
        assert!(c.logs.promote[0].bloom);
    }

    #[test]
    fn promoted_columns_are_checked() {
        let c: CollectorConfig = toml::from_str("[[logs.promote]]\nname = \"seq\"").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("built-in"));
        let c: CollectorConfig = toml::from_str("[[logs.promote]]\nname = \"a b\"").unwrap();
        assert!(c.validate().is_err());
        let c: CollectorConfig = toml::from_str("[[logs.promote]]\nname = \"x\"\ntype = \"int64\"").unwrap();
        c.validate().unwrap();
        assert_eq!(c.logs.promote[0].kind, ColumnType::Int64);
        assert!(toml::from_str::<CollectorConfig>("[collector]\nzstd = 3").is_err());
    }

    #[test]
    fn each_bad_setting_is_named() {
        let err = |text: &str| match toml::from_str::<CollectorConfig>(text).map(|c| c.validate()) {
            Ok(Err(e)) => e.to_string(),
            other => panic!("{text}: {other:?}"),
        };
        assert!(err("[collector]\nqueue_payloads = 0").contains("collector.queue_payloads = 0"));
        assert!(err("[collector]\nmax_file_bytes = 10").contains("collector.max_file_bytes = 10"));
        assert!(err("[collector]\nnotify = [\"/nonexistent/sb-role\"]").contains("\"/nonexistent/sb-role\" not found"));
        assert!(err("[bus]\nconnect = [\"udp/127.0.0.1:7447\"]").contains("unknown protocol"));
        assert!(err("[bus]\nconnect = [\"tcp/127.0.0.1:99999\"]").contains("port from 1 to 65535"));
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn shipped_example_config_parses_and_states_the_defaults() {
        let c: CollectorConfig = toml::from_str(include_str!("../../docs/config/collector.toml")).unwrap();
        c.validate().unwrap();
        let d = CollectorSettings::default();
        let s = &c.collector;
        assert_eq!(
            (
                s.max_file_bytes,
                s.max_file_age_ms,
                s.row_group_rows,
                s.row_group_max_bytes,
                s.zstd_level,
                s.queue_payloads
            ),
            (
                d.max_file_bytes,
                d.max_file_age_ms,
                d.row_group_rows,
                d.row_group_max_bytes,
                d.zstd_level,
                d.queue_payloads
            )
        );
        assert_eq!(s.http_listen, d.http_listen);
        assert_eq!(s.data_dir, d.data_dir);
        assert_eq!((&s.store, &s.notify, &s.spool_dir), (&d.store, &d.notify, &d.spool_dir));
        assert_eq!(s.standby_buffer_bytes, d.standby_buffer_bytes);
        assert_eq!(c.logs.promote, LogsTableConfig::default().promote);
        assert_eq!(c.logs.dropped_defaults(), None);
        let only = LogsTableConfig {
            promote: vec![PromotedColumn { name: "amount".into(), kind: ColumnType::Float64, bloom: false }],
        };
        let note = only.dropped_defaults().unwrap_or_default();
        assert!(note.contains("leaves out msg_id, operator, latency_ms") && note.contains("them too"), "{note}");
    }
}
