//! The `[metrics]` table: the gateways' metrics intake (StatsD over UDP, HTTP), the snapshot
//! interval and the cap on series.

use serde::{Deserialize, Serialize};

use crate::config::AgentConfigError;

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
    /// Most memory, in bytes, the interval's series may hold, estimated: each series' name and
    /// tags, a timer's histogram (8 bytes per bucket: a timer whose samples range from 1 µs to
    /// 60 s holds about 136 KiB), a set's members; samples that would take it past are counted
    /// and dropped. Default: 1073741824 (1 GiB).
    #[serde(default = "default_metrics_max_series_bytes")]
    pub max_series_bytes: usize,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            statsd_listen: default_statsd_listen(),
            interval_ms: default_metrics_interval_ms(),
            max_series: default_metrics_max_series(),
            max_series_bytes: default_metrics_max_series_bytes(),
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
fn default_metrics_max_series_bytes() -> usize {
    1 << 30
}

fn default_true() -> bool {
    true
}

impl MetricsSettings {
    /// Check the rules of the `[metrics]` table: the interval, the series cap and the StatsD
    /// address.
    pub fn validate(&self) -> Result<(), AgentConfigError> {
        let m = self;
        if m.interval_ms < 100 {
            return Err(AgentConfigError::Invalid(format!(
                "metrics.interval_ms = {}: use at least 100 (ms)",
                m.interval_ms
            )));
        }
        if m.max_series == 0 {
            return Err(AgentConfigError::Invalid("metrics.max_series = 0: use at least 1".into()));
        }
        if m.max_series_bytes < 1 << 20 {
            return Err(AgentConfigError::Invalid(format!(
                "metrics.max_series_bytes = {}: use at least 1048576 (1 MiB)",
                m.max_series_bytes
            )));
        }
        if !m.statsd_listen.is_empty() && m.statsd_listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(AgentConfigError::Invalid(format!(
                "metrics.statsd_listen {:?} is not an address like 127.0.0.1:8125",
                m.statsd_listen
            )));
        }
        Ok(())
    }
}
