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
//!
//! Layout: each table's settings live beside the code they configure, with the rules that concern
//! them (their `validate`), and are re-exported here:
//!
//! - this file: [`AgentConfig`] (the whole file), [`AgentSettings`] (`[agent]`), loading, and
//!   the checks that span tables;
//! - `source_config`: [`SourceConfig`] (`[[source]]`), [`StartAt`], [`BinaryFiles`];
//! - `limits::settings`: [`LimitsSettings`] (`[limits]`);
//! - `dlr::settings`: [`DlrSettings`] (`[dlr]`) and [`ConnectorIds`] (`[[dlr.connector]]`);
//! - `metrics::settings`: [`MetricsSettings`] (`[metrics]`);
//! - `cluster_config::settings`: `[cluster_config]`;
//! - `[bus]` is the bus crate's [`BusConfig`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_bus::BusConfig;

pub use crate::dlr::settings::{ConnectorIds, DlrSettings};
pub use crate::limits::settings::LimitsSettings;
pub use crate::metrics::settings::MetricsSettings;
pub use crate::source_config::{BinaryFiles, SourceConfig, StartAt};

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
    /// The gateway socket: limit decisions and DLR requests from the gateway.
    #[serde(default)]
    pub gateway: crate::gateway::GatewaySettings,
    /// The gateways' own metrics: StatsD and HTTP intake, snapshots to the `metrics` table.
    #[serde(default)]
    pub metrics: MetricsSettings,
    /// The cluster's configuration repository: where this node materializes it, how its gateway
    /// reloads.
    #[serde(default)]
    pub cluster_config: crate::cluster_config::settings::ClusterConfigSettings,
    /// The log sources to tail, one `[[source]]` table each.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
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
    /// Publish no batch while no collector is alive on the bus, so that nothing is published
    /// into the void: batches are journaled as always, and a collector that comes back pulls
    /// them (with acknowledgements off, nothing is journaled, and the agent waits). Default: true.
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
    /// Bearer token of the HTTP API: when set, every request but `GET /health` needs
    /// `Authorization: Bearer <token>`. Required when `http_listen` is not a loopback address.
    /// Default: none.
    #[serde(default)]
    pub http_token: Option<String>,
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
            http_token: None,
            http_max_body_bytes: default_http_max_body_bytes(),
            health_max_lag_ms: default_health_max_lag_ms(),
        }
    }
}

/// The largest `agent.http_max_body_bytes`: 1 GiB.
pub const MAX_HTTP_BODY_BYTES: usize = 1 << 30;
/// The longest `agent.poll_interval_ms` and `agent.glob_interval_ms`: a minute.
pub const MAX_INTERVAL_MS: u64 = 60_000;

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

    /// Check the rules of the `[agent]` table: batch sizes, the unacknowledged window, the HTTP
    /// address and body limit, and the intervals.
    pub fn validate(&self) -> Result<(), AgentConfigError> {
        let a = self;
        switchboard_bus::config::first_zero(&[
            ("agent.batch_max_lines", a.batch_max_lines as u64),
            ("agent.batch_max_bytes", a.batch_max_bytes as u64),
            ("agent.max_unacked_batches", a.max_unacked_batches as u64),
            ("agent.http_max_body_bytes", a.http_max_body_bytes as u64),
            ("agent.poll_interval_ms", a.poll_interval_ms),
            ("agent.glob_interval_ms", a.glob_interval_ms),
        ])
        .map_err(AgentConfigError::Invalid)?;
        if a.data_dir.as_os_str().is_empty() {
            return Err(AgentConfigError::Invalid(
                "agent.data_dir is empty: give the directory of this agent's state (default \"switchboard-agent\")"
                    .into(),
            ));
        }
        if a.http_max_body_bytes > MAX_HTTP_BODY_BYTES {
            return Err(AgentConfigError::Invalid(format!(
                "agent.http_max_body_bytes = {} is over {MAX_HTTP_BODY_BYTES} (1 GiB): bodies are held in memory \
                 (the default, 32 MiB, is twice the largest documented request)",
                a.http_max_body_bytes
            )));
        }
        for (key, ms) in [
            ("agent.poll_interval_ms", a.poll_interval_ms),
            ("agent.glob_interval_ms", a.glob_interval_ms),
            ("agent.batch_max_delay_ms", a.batch_max_delay_ms),
        ] {
            if ms > MAX_INTERVAL_MS {
                return Err(AgentConfigError::Invalid(format!(
                    "{key} = {ms} is over {MAX_INTERVAL_MS} (a minute): lines would wait that long to be read"
                )));
            }
        }
        switchboard_bus::http::check_listen(&a.http_listen, a.http_token.as_deref(), "agent.http_listen")
            .map_err(AgentConfigError::Invalid)
    }
}

/// A config that cannot be used, with the reason.
pub type AgentConfigError = switchboard_bus::config::FileError;

impl AgentConfig {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Self, AgentConfigError> {
        switchboard_bus::config::load_file(path, Self::validate)
    }

    /// What in this config is likely a mistake, but does not stop the agent: no `[[source]]`
    /// (the agent then only serves limits, DLRs and metrics), a setting no longer used.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.sources.is_empty() {
            out.push(
                "no [[source]] is configured: this agent tails no log file and only serves limits, DLRs \
                 and metrics; add a [[source]] table (see docs/config/agent.toml) if its gateway's logs \
                 should reach the dataset"
                    .to_owned(),
            );
        }
        for src in &self.sources {
            for pattern in &src.paths {
                if std::path::Path::new(pattern).is_dir() {
                    out.push(format!(
                        "source {:?}: paths entry {pattern:?} is a directory, which matches no file: name its files, \
                         e.g. \"{}/*.log\"",
                        src.name,
                        pattern.trim_end_matches('/')
                    ));
                }
            }
        }
        if self.limits.resync_ms.is_some() {
            out.push(
                "limits.resync_ms is no longer used and has no effect: the limits follow the configuration \
                 repository (cluster_config.resync_ms); remove it"
                    .to_owned(),
            );
        }
        out
    }

    /// What `agent --check` adds to [`AgentConfig::validate`]: what a start would meet on this
    /// host. The gateway socket's path fits a Unix socket address; the bus's listen ports, the
    /// HTTP API, the gateway's TCP address and the StatsD port are free to bind. Each error names the key. A data
    /// directory a running agent holds is a note (`Ok(Some(..))`), not an error: a changed config
    /// is checked while its agent still runs, and that agent holds the ports too, so they are
    /// not looked at then.
    pub fn check_start(&self) -> Result<Option<String>, String> {
        crate::gateway::socket_path(&self.gateway, &self.agent.data_dir).map_err(|e| e.to_string())?;
        match crate::dir_lock::DirLock::check_free(&self.agent.data_dir) {
            Err(crate::dir_lock::DirLockError::InUse { path, holder }) => {
                return Ok(Some(format!(
                    "agent.data_dir {} is held by a running agent{holder}: if that is this config's agent, stop it \
                     before starting it with this file; if not, give this config its own data_dir (the ports were \
                     not checked, as that agent holds its own)",
                    path.display()
                )));
            }
            Err(e) => return Err(e.to_string()),
            Ok(()) => {}
        }
        let in_use =
            |key: &str, addr: &str, e: std::io::Error| format!("{key} {addr}: {e} (is another process on it?)");
        if !self.agent.http_listen.is_empty() {
            std::net::TcpListener::bind(&self.agent.http_listen)
                .map_err(|e| in_use("agent.http_listen", &self.agent.http_listen, e))?;
        }
        if let Some(addr) = self.gateway.tcp_addr().map_err(|e| e.to_string())? {
            std::net::TcpListener::bind(addr).map_err(|e| in_use("gateway.tcp_listen", &addr.to_string(), e))?;
        }
        for endpoint in &self.bus.listen {
            // tcp/ and tls/ listen on TCP, quic/ on UDP; port 0 takes any free one.
            let Some((proto, address)) = switchboard_bus::config::endpoint_parts(endpoint) else { continue };
            let Ok(addr) = address.parse::<std::net::SocketAddr>() else { continue };
            if addr.port() == 0 {
                continue;
            }
            let bound = match proto {
                "quic" => std::net::UdpSocket::bind(addr).map(drop),
                _ => std::net::TcpListener::bind(addr).map(drop),
            };
            bound.map_err(|e| in_use("bus.listen", endpoint, e))?;
        }
        if self.metrics.enabled && !self.metrics.statsd_listen.is_empty() {
            std::net::UdpSocket::bind(&self.metrics.statsd_listen)
                .map_err(|e| in_use("metrics.statsd_listen", &self.metrics.statsd_listen, e))?;
        }
        Ok(None)
    }

    /// Check everything that can be checked before starting.
    ///
    /// Runs each table's own `validate` in the order `[bus]`, `[agent]`, `[limits]`, `[metrics]`,
    /// `[dlr]`, `[[source]]`, with the rules that span tables (there is something to do,
    /// `limits.interval_ms` against `bus.lease_ms`, no source name used twice) in their places.
    pub fn validate(&self) -> Result<(), AgentConfigError> {
        self.bus.validate()?;
        if self.sources.is_empty() && !self.limits.enabled && !self.dlr.enabled && !self.metrics.enabled {
            return Err(AgentConfigError::Invalid(
                "nothing to do: no [[source]] is configured and limits, dlr and metrics are all disabled".into(),
            ));
        }
        self.agent.validate()?;
        // `[limits]` against `[bus]`: the shares must be renewed well within a lease.
        let l = &self.limits;
        if l.interval_ms == 0 || l.interval_ms.saturating_mul(4) >= self.bus.lease_ms {
            return Err(AgentConfigError::Invalid(format!(
                "limits.interval_ms = {} must be > 0 and under a quarter of bus.lease_ms ({})",
                l.interval_ms, self.bus.lease_ms
            )));
        }
        self.limits.validate()?;
        self.metrics.validate()?;
        self.cluster_config.validate()?;
        if self.limits.enabled && !self.cluster_config.enabled {
            return Err(AgentConfigError::Invalid(
                "limits come from the configuration repository (global/limits.toml): with [limits] enabled, \
                 cluster_config.enabled must be true"
                    .into(),
            ));
        }
        self.dlr.validate()?;
        self.gateway.validate()?;
        let mut names = HashSet::new();
        for s in &self.sources {
            // A repeated name passed `SourceConfig::validate` at its first use, so checking for
            // repeats first reports the same first error as checking the name first.
            if !names.insert(&s.name) {
                return Err(AgentConfigError::Invalid(format!("source name {:?} is used twice", s.name)));
            }
            s.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::Format;

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

    #[test]
    fn the_limits_interval_must_be_under_a_quarter_of_the_lease() {
        let with = |interval: u64| {
            toml::from_str::<AgentConfig>(&format!("[bus]\nlease_ms = 3000\n[limits]\ninterval_ms = {interval}\n"))
                .unwrap()
                .validate()
        };
        assert!(with(749).is_ok());
        for bad in [0, 750, u64::MAX] {
            let err = with(bad).unwrap_err().to_string();
            assert!(err.contains("under a quarter of bus.lease_ms (3000)"), "{bad}: {err}");
        }
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
        let (g, dg) = (&c.gateway, crate::gateway::GatewaySettings::default());
        assert_eq!((&g.socket, &g.tcp_listen, g.max_connections), (&dg.socket, &dg.tcp_listen, dg.max_connections));
    }

    #[test]
    fn copies_are_bounded() {
        for (copies, ok) in [(0, false), (1, true), (16, true), (17, false)] {
            let c: AgentConfig = toml::from_str(&format!("[dlr]\ncopies = {copies}\n")).unwrap();
            assert_eq!(c.validate().is_ok(), ok, "copies = {copies}: {:?}", c.validate());
        }
        let c: AgentConfig = toml::from_str("[dlr]\ncopies = 0\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("dlr.copies = 0"));
    }

    #[test]
    fn the_old_place_of_the_socket_is_refused_with_its_new_one() {
        let c: AgentConfig = toml::from_str("[limits]\nsocket = \"limits.sock\"\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("gateway.socket"), "{err}");
    }
}
