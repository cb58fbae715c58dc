//! The agent's configuration file (TOML): the bus, where it keeps state, how it batches, and the
//! log sources it tails.
//!
//! ```toml
//! [bus]
//! node = "gw1"
//! connect = ["tcp/10.0.0.9:7447"]
//!
//! [agent]
//! data_dir = "/var/lib/switchboard/agent"
//!
//! [[source]]
//! name = "smsc"
//! paths = ["/var/log/kannel/*.log"]
//! format = "plain"
//! ```
//!
//! Every field but `source.name` and `source.paths` has a default; unknown fields are errors.
//! [`AgentConfig::validate`] checks names, globs and sizes before anything starts.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_bus::keys::check_chunk;
use switchboard_bus::BusConfig;

use crate::parse::Format;

/// The whole agent config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// How to join the bus; `bus.node` is this gateway node's name.
    #[serde(default)]
    pub bus: BusConfig,
    /// Agent-wide settings.
    #[serde(default)]
    pub agent: AgentSettings,
    /// Cluster-wide limits: the local decision API and its coordination.
    #[serde(default)]
    pub limits: LimitsSettings,
    /// The DLR index: registration, lookup across the cluster, replication.
    #[serde(default)]
    pub dlr: DlrSettings,
    /// The gateways' own metrics: StatsD and HTTP intake, snapshots to the `metrics` table.
    #[serde(default)]
    pub metrics: MetricsSettings,
    /// The log sources to tail, one `[[source]]` table each.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
}

/// The `[limits]` table. The limits themselves are set for the whole cluster with
/// `switchboard limits set`, not here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSettings {
    /// Serve the limits API and take part in the cluster's limits. Default: true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Publish this node's demand and update its shares this often, in milliseconds. Must be
    /// under a quarter of `bus.lease_ms`. Default: 100.
    #[serde(default = "default_limits_interval_ms")]
    pub interval_ms: u64,
    /// How long the share of a node that vanished silently (dead, or behind a network
    /// partition) stays reserved, in milliseconds. During a partition each side keeps to the
    /// shares of the nodes it can see for this long; afterwards the node counts as dead and its
    /// share is freed. A node that exits or is killed is freed at once. Default: 30000.
    #[serde(default = "default_silent_hold_ms")]
    pub silent_hold_ms: u64,
    /// Ask the other nodes for the current limits revision this often, in milliseconds (new
    /// revisions also arrive at once when set). Default: 5000.
    #[serde(default = "default_resync_ms")]
    pub resync_ms: u64,
    /// Unix socket of the line protocol API (docs/limits-api.md), relative to `data_dir` unless
    /// absolute; empty to disable. Default: `limits.sock`.
    #[serde(default = "default_limits_socket")]
    pub socket: PathBuf,
    /// Write decisions per key and second to the collector's `limits` table. Default: true.
    #[serde(default = "default_true")]
    pub record_decisions: bool,
}

fn default_limits_interval_ms() -> u64 {
    100
}
fn default_silent_hold_ms() -> u64 {
    30_000
}
fn default_resync_ms() -> u64 {
    5000
}
fn default_limits_socket() -> PathBuf {
    PathBuf::from("limits.sock")
}

impl Default for LimitsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: default_limits_interval_ms(),
            silent_hold_ms: default_silent_hold_ms(),
            resync_ms: default_resync_ms(),
            socket: default_limits_socket(),
            record_decisions: true,
        }
    }
}

/// The `[dlr]` table: the node's part of the cluster's DLR index (docs/dlr-api.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlrSettings {
    /// Serve the DLR API and hold this node's records and copies. Default: true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How long a registered record lives unless the registration says otherwise, in seconds.
    /// Default: 172800 (48 h).
    #[serde(default = "default_dlr_expiry_s")]
    pub expiry_s: u64,
    /// The longest expiry a registration may ask for, in seconds. Default: 2592000 (30 days).
    #[serde(default = "default_dlr_max_expiry_s")]
    pub max_expiry_s: u64,
    /// How long a closed record is kept so that a repeated DLR is recognized as a duplicate, in
    /// seconds (never past its expiry). Default: 3600.
    #[serde(default = "default_dlr_closed_retention_s")]
    pub closed_retention_s: u64,
    /// How long a lookup or report waits for a registration that has not arrived yet (a DLR
    /// that overtakes its `submit_sm_resp`), in milliseconds, unless the request says otherwise.
    /// Default: 0 for lookups; reports use `report_wait_ms`.
    #[serde(default)]
    pub wait_ms: u64,
    /// The same for reports (DLRs handed in with `/v1/dlr/report`). Default: 2000.
    #[serde(default = "default_dlr_report_wait_ms")]
    pub report_wait_ms: u64,
    /// The longest wait a request may ask for, in milliseconds. Default: 30000.
    #[serde(default = "default_dlr_max_wait_ms")]
    pub max_wait_ms: u64,
    /// How long a lookup waits for replies beyond its wait, in milliseconds. Default: 2000.
    #[serde(default = "default_dlr_timeout_ms")]
    pub timeout_ms: u64,
    /// Block cache of the record store, in MiB. Default: 16.
    #[serde(default = "default_dlr_cache_mb")]
    pub cache_mb: u64,
    /// Force the store to disk this often, in milliseconds; 0 leaves it to the OS. Records
    /// reach the OS at once, so a killed agent loses nothing either way; this bounds what a
    /// power loss can take. Default: 1000.
    #[serde(default = "default_dlr_sync_ms")]
    pub sync_ms: u64,
    /// Write DLR events (registered, resolved, delivered, expired, ...) to the collector's
    /// `dlr` table. Default: true.
    #[serde(default = "default_true")]
    pub record_events: bool,
    /// How each connector writes message ids; connectors not listed use `text` (exact match).
    #[serde(default, rename = "connector")]
    pub connectors: Vec<ConnectorIds>,
}

/// The `[metrics]` table: the gateways' counters, gauges, timers and sets (docs/metrics.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Take metrics (StatsD over UDP, `POST /v1/metrics`) and send snapshots. Default: true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The UDP address StatsD lines are read from; empty for none (HTTP only). Default:
    /// `127.0.0.1:8125`.
    #[serde(default = "default_statsd_listen")]
    pub statsd_listen: String,
    /// Snapshot every this many milliseconds: counters as the interval's delta, gauges as last
    /// values, timers as HDR histograms. Default: 10000.
    #[serde(default = "default_metrics_interval_ms")]
    pub interval_ms: u64,
    /// Most series (name, tags, kind) in one interval; samples of further series are counted
    /// and dropped. Default: 100000.
    #[serde(default = "default_metrics_max_series")]
    pub max_series: usize,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            statsd_listen: default_statsd_listen(),
            interval_ms: default_metrics_interval_ms(),
            max_series: default_metrics_max_series(),
        }
    }
}

fn default_statsd_listen() -> String {
    "127.0.0.1:8125".into()
}
fn default_metrics_interval_ms() -> u64 {
    10_000
}
fn default_metrics_max_series() -> usize {
    100_000
}

/// One `[[dlr.connector]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorIds {
    /// The connector's name, as gateways pass it in requests.
    pub name: String,
    /// Format of the ids the gateway registers (from `submit_sm_resp`): `text`, `nocase`,
    /// `decimal` or `hex`. Default: `text`.
    #[serde(default)]
    pub ids: switchboard_bus::dlr::IdFormat,
    /// Format of the ids in this connector's DLRs. Default: the same as `ids`.
    #[serde(default)]
    pub report_ids: Option<switchboard_bus::dlr::IdFormat>,
}

fn default_dlr_expiry_s() -> u64 {
    48 * 3600
}
fn default_dlr_max_expiry_s() -> u64 {
    30 * 24 * 3600
}
fn default_dlr_closed_retention_s() -> u64 {
    3600
}
fn default_dlr_report_wait_ms() -> u64 {
    2000
}
fn default_dlr_max_wait_ms() -> u64 {
    30_000
}
fn default_dlr_timeout_ms() -> u64 {
    2000
}
fn default_dlr_cache_mb() -> u64 {
    16
}
fn default_dlr_sync_ms() -> u64 {
    1000
}

impl Default for DlrSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            expiry_s: default_dlr_expiry_s(),
            max_expiry_s: default_dlr_max_expiry_s(),
            closed_retention_s: default_dlr_closed_retention_s(),
            wait_ms: 0,
            report_wait_ms: default_dlr_report_wait_ms(),
            max_wait_ms: default_dlr_max_wait_ms(),
            timeout_ms: default_dlr_timeout_ms(),
            cache_mb: default_dlr_cache_mb(),
            sync_ms: default_dlr_sync_ms(),
            record_events: true,
            connectors: Vec::new(),
        }
    }
}

/// The `[agent]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    /// Directory for the agent's checkpoint. Default: `./switchboard-agent`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Publish a batch when it holds this many lines. Default: 8192.
    #[serde(default = "default_batch_lines")]
    pub batch_max_lines: usize,
    /// Publish a batch when it holds about this many bytes. Default: 1 MiB.
    #[serde(default = "default_batch_bytes")]
    pub batch_max_bytes: usize,
    /// Publish a non-empty batch at the latest this long after its first line, in milliseconds.
    /// Default: 200.
    #[serde(default = "default_batch_delay_ms")]
    pub batch_max_delay_ms: u64,
    /// How often to look for new data when files are idle, in milliseconds. Default: 100.
    #[serde(default = "default_poll_ms")]
    pub poll_interval_ms: u64,
    /// How often to evaluate the globs for new files, in milliseconds. Default: 1000.
    #[serde(default = "default_glob_ms")]
    pub glob_interval_ms: u64,
    /// Hold batches back while no collector is alive on the bus, so that nothing is published
    /// into the void (the files stay the journal). Default: true.
    #[serde(default = "default_true")]
    pub wait_for_collector: bool,
    /// Wait for collectors' acknowledgements (watermarks) before advancing the checkpoint, and
    /// journal every batch so it can be replayed. `false` advances the checkpoint as soon as a
    /// batch is published: a little faster, but lines in a crashed collector's uncommitted file
    /// are lost. Default: true.
    #[serde(default = "default_true")]
    pub acknowledged: bool,
    /// Write the checkpoint at most this often, in milliseconds (and always at shutdown).
    /// Default: 1000.
    #[serde(default = "default_checkpoint_ms")]
    pub checkpoint_interval_ms: u64,
    /// Stop reading a source while this many of its batches wait for a collector's
    /// acknowledgement (bounds memory, ~200 bytes a batch, and replay work). A collector
    /// acknowledges a batch when the file holding it is committed (`max_file_age_ms`, 30 s by
    /// default), so the window must hold that long at full rate. Default: 16384.
    #[serde(default = "default_max_unacked")]
    pub max_unacked_batches: usize,
    /// Address of the health and Prometheus metrics endpoint (`/health`, `/metrics`); empty to
    /// disable. Default: `127.0.0.1:7480`.
    #[serde(default = "default_agent_http")]
    pub http_listen: String,
    /// Largest request body the HTTP APIs take, in bytes; larger ones get `413` with a JSON
    /// error and are counted. The default holds the largest documented request (a DLR register
    /// batch of 10,000 records with every field at its longest, about 14.2 MiB) twice over.
    /// Default: 33554432 (32 MiB).
    #[serde(default = "default_http_max_body_bytes")]
    pub http_max_body_bytes: usize,
    /// `/health` says `degraded` when the oldest line not yet committed by a collector is older
    /// than this, in milliseconds (a collector that is down, slow or cannot write). Default:
    /// 60000.
    #[serde(default = "default_health_max_lag_ms")]
    pub health_max_lag_ms: u64,
}

/// Where to start reading a file the agent has no checkpoint for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// From its first byte (default).
    #[default]
    Beginning,
    /// From its current end: only lines written from now on. Applies to files present when the
    /// agent first starts; files that appear later are always read from the beginning.
    End,
}

/// One `[[source]]`: a named stream fed by the files its globs match.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The stream's name (a key chunk: no `/`, `*`, `$`, `?`, `#`). Required.
    pub name: String,
    /// Glob patterns of the files to tail, e.g. `/var/log/kannel/*.log`. Required. Files that
    /// appear later are picked up too.
    pub paths: Vec<String>,
    /// Line format: `plain` (default), `json`, `syslog` (RFC 3164 and 5424) or `kv` (logfmt).
    #[serde(default)]
    pub format: Format,
    /// `beginning` (default) or `end`.
    #[serde(default)]
    pub start_at: StartAt,
    /// Lines longer than this are cut and flagged `truncated`. Default: 1 MiB.
    #[serde(default = "default_max_line")]
    pub max_line_bytes: usize,
    /// Also extract `key=value` pairs from the message of plain and syslog lines. Default: false.
    #[serde(default)]
    pub kv_in_message: bool,
    /// What to do with a file whose first block read looks binary (a NUL byte, or more than one
    /// byte in 20 a control character that text does not use): `skip` (default) or `read`.
    #[serde(default)]
    pub binary: BinaryFiles,
}

/// What a source does with a file that looks binary ([`crate::tailer::looks_binary`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BinaryFiles {
    /// Do not read it: a warning names it and `switchboard_agent_skipped_binary_files_total`
    /// counts it (default). A glob such as `app.log*` then passes over compressed rotations.
    #[default]
    Skip,
    /// Read it as lines like any other file (invalid UTF-8 is kept in each line's raw bytes).
    Read,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("switchboard-agent")
}
fn default_batch_lines() -> usize {
    8192
}
fn default_batch_bytes() -> usize {
    1 << 20
}
fn default_batch_delay_ms() -> u64 {
    200
}
fn default_poll_ms() -> u64 {
    100
}
fn default_glob_ms() -> u64 {
    1000
}
fn default_checkpoint_ms() -> u64 {
    1000
}
fn default_max_unacked() -> usize {
    16_384
}
fn default_health_max_lag_ms() -> u64 {
    60_000
}
fn default_agent_http() -> String {
    "127.0.0.1:7480".to_owned()
}
fn default_http_max_body_bytes() -> usize {
    crate::body_limit::DEFAULT_MAX_BODY_BYTES
}
fn default_true() -> bool {
    true
}
fn default_max_line() -> usize {
    1 << 20
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            batch_max_lines: default_batch_lines(),
            batch_max_bytes: default_batch_bytes(),
            batch_max_delay_ms: default_batch_delay_ms(),
            poll_interval_ms: default_poll_ms(),
            glob_interval_ms: default_glob_ms(),
            wait_for_collector: true,
            acknowledged: true,
            checkpoint_interval_ms: default_checkpoint_ms(),
            max_unacked_batches: default_max_unacked(),
            http_listen: default_agent_http(),
            http_max_body_bytes: default_http_max_body_bytes(),
            health_max_lag_ms: default_health_max_lag_ms(),
        }
    }
}

impl AgentSettings {
    /// `batch_max_delay_ms` as a duration.
    pub fn batch_max_delay(&self) -> Duration {
        Duration::from_millis(self.batch_max_delay_ms)
    }
    /// `poll_interval_ms` as a duration.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
    /// `glob_interval_ms` as a duration.
    pub fn glob_interval(&self) -> Duration {
        Duration::from_millis(self.glob_interval_ms)
    }
}

/// A config that cannot be used, with the reason.
pub type AgentConfigError = switchboard_bus::config::FileError;

impl AgentConfig {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Self, AgentConfigError> {
        let config: Self = switchboard_bus::config::read_file(path)?;
        config.validate()?;
        Ok(config)
    }

    /// A warning for a config that tails no log file (the agent then only serves limits, DLRs
    /// and metrics, which may be a mistake); `None` when it has sources.
    pub fn idle_warning(&self) -> Option<String> {
        self.sources.is_empty().then(|| {
            "no [[source]] is configured: this agent tails no log file and only serves limits, DLRs \
             and metrics; add a [[source]] table (see docs/config/agent.toml) if its gateway's logs \
             should reach the dataset"
                .to_owned()
        })
    }

    /// Check everything that can be checked before starting.
    pub fn validate(&self) -> Result<(), AgentConfigError> {
        self.bus.validate()?;
        if self.sources.is_empty() && !self.limits.enabled && !self.dlr.enabled && !self.metrics.enabled {
            return Err(AgentConfigError::Invalid(
                "nothing to do: no [[source]] is configured and limits, dlr and metrics are all disabled".into(),
            ));
        }
        let a = &self.agent;
        if a.batch_max_lines == 0 || a.batch_max_bytes == 0 {
            return Err(AgentConfigError::Invalid("agent.batch_max_lines and batch_max_bytes must be > 0".into()));
        }
        if a.max_unacked_batches == 0 {
            return Err(AgentConfigError::Invalid("agent.max_unacked_batches must be > 0".into()));
        }
        if !a.http_listen.is_empty() && a.http_listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(AgentConfigError::Invalid(format!(
                "agent.http_listen {:?} is not an address like 127.0.0.1:7480",
                a.http_listen
            )));
        }
        if a.http_max_body_bytes == 0 {
            return Err(AgentConfigError::Invalid("agent.http_max_body_bytes must be > 0".into()));
        }
        if a.poll_interval_ms == 0 || a.glob_interval_ms == 0 {
            return Err(AgentConfigError::Invalid("agent.poll_interval_ms and glob_interval_ms must be > 0".into()));
        }
        let l = &self.limits;
        if l.interval_ms == 0 || l.interval_ms * 4 > self.bus.lease_ms {
            return Err(AgentConfigError::Invalid(format!(
                "limits.interval_ms = {} must be > 0 and under a quarter of bus.lease_ms ({})",
                l.interval_ms, self.bus.lease_ms
            )));
        }
        if l.resync_ms == 0 {
            return Err(AgentConfigError::Invalid("limits.resync_ms must be > 0".into()));
        }
        let m = &self.metrics;
        if m.interval_ms < 100 || m.max_series == 0 {
            return Err(AgentConfigError::Invalid("metrics.interval_ms must be >= 100 and max_series > 0".into()));
        }
        if !m.statsd_listen.is_empty() && m.statsd_listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(AgentConfigError::Invalid(format!(
                "metrics.statsd_listen {:?} is not an address like 127.0.0.1:8125",
                m.statsd_listen
            )));
        }
        let d = &self.dlr;
        if d.expiry_s == 0 || d.expiry_s > d.max_expiry_s {
            return Err(AgentConfigError::Invalid(format!(
                "dlr.expiry_s = {} must be > 0 and at most dlr.max_expiry_s ({})",
                d.expiry_s, d.max_expiry_s
            )));
        }
        if d.wait_ms > d.max_wait_ms || d.report_wait_ms > d.max_wait_ms || d.timeout_ms == 0 {
            return Err(AgentConfigError::Invalid(
                "dlr.wait_ms and dlr.report_wait_ms must be at most dlr.max_wait_ms, and dlr.timeout_ms > 0".into(),
            ));
        }
        let mut connectors = HashSet::new();
        for c in &d.connectors {
            switchboard_bus::dlr::id::check_connector(&c.name)
                .map_err(|e| AgentConfigError::Invalid(format!("dlr.connector {:?}: {e}", c.name)))?;
            if !connectors.insert(&c.name) {
                return Err(AgentConfigError::Invalid(format!("dlr.connector {:?} is listed twice", c.name)));
            }
        }
        let mut names = HashSet::new();
        for s in &self.sources {
            check_chunk(&s.name).map_err(|e| AgentConfigError::Invalid(format!("source name {:?}: {e}", s.name)))?;
            if s.name.starts_with('_') {
                return Err(AgentConfigError::Invalid(format!(
                    "source name {:?}: names starting with '_' are reserved for the agent's own streams",
                    s.name
                )));
            }
            if !names.insert(&s.name) {
                return Err(AgentConfigError::Invalid(format!("source name {:?} is used twice", s.name)));
            }
            if s.paths.is_empty() {
                return Err(AgentConfigError::Invalid(format!("source {:?} has no paths", s.name)));
            }
            for p in &s.paths {
                glob::Pattern::new(p)
                    .map_err(|e| AgentConfigError::Invalid(format!("source {:?}: bad glob {p:?}: {e}", s.name)))?;
            }
            if s.max_line_bytes < 16 {
                return Err(AgentConfigError::Invalid(format!("source {:?}: max_line_bytes must be >= 16", s.name)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c: AgentConfig = toml::from_str(
            r#"
            [bus]
            node = "gw1"
            [[source]]
            name = "smsc"
            paths = ["/tmp/x/*.log"]
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.sources[0].format, Format::Plain);
        assert_eq!(c.sources[0].start_at, StartAt::Beginning);
        assert_eq!(c.sources[0].binary, BinaryFiles::Skip);
        assert_eq!(c.agent.batch_max_lines, 8192);
        assert!(c.agent.wait_for_collector);
    }

    #[test]
    fn bad_sources_are_named() {
        let c: AgentConfig = toml::from_str(
            r#"
            [[source]]
            name = "a/b"
            paths = ["x"]
            "#,
        )
        .unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("a/b"));
        let c: AgentConfig = toml::from_str(
            r#"
            [[source]]
            name = "a"
            paths = ["[x"]
            "#,
        )
        .unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("bad glob"));
        assert!(toml::from_str::<AgentConfig>("[[source]]\nname='a'\npaths=['x']\nformat='xml'").is_err());
        let read: AgentConfig = toml::from_str("[[source]]\nname='a'\npaths=['x']\nbinary='read'").unwrap();
        assert_eq!(read.sources[0].binary, BinaryFiles::Read);
        assert!(toml::from_str::<AgentConfig>("[[source]]\nname='a'\npaths=['x']\nbinary='maybe'").is_err());
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn shipped_example_config_parses_and_validates() {
        let c: AgentConfig = toml::from_str(include_str!("../../docs/config/agent.toml")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.sources.len(), 2);
        // The example states the defaults: they must be the real ones.
        let d = AgentSettings::default();
        assert_eq!(
            (c.agent.batch_max_lines, c.agent.batch_max_bytes, c.agent.batch_max_delay_ms, c.agent.poll_interval_ms),
            (d.batch_max_lines, d.batch_max_bytes, d.batch_max_delay_ms, d.poll_interval_ms)
        );
        assert_eq!(
            (c.agent.glob_interval_ms, c.agent.checkpoint_interval_ms),
            (d.glob_interval_ms, d.checkpoint_interval_ms)
        );
        assert_eq!(c.agent.data_dir, d.data_dir);
        assert_eq!((c.agent.max_unacked_batches, &c.agent.http_listen), (d.max_unacked_batches, &d.http_listen));
        assert_eq!(c.agent.acknowledged, d.acknowledged);
        assert_eq!(c.agent.http_max_body_bytes, d.http_max_body_bytes);
        assert_eq!(c.sources[0].binary, BinaryFiles::default());
        assert_eq!(c.limits, LimitsSettings::default());
        let dlr = DlrSettings { connectors: c.dlr.connectors.clone(), ..DlrSettings::default() };
        assert_eq!(c.dlr, dlr);
        assert!(!c.dlr.connectors.is_empty());
        assert_eq!(c.metrics, MetricsSettings::default());
    }
}
