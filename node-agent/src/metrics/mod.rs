//! The gateways' own metrics: taken as StatsD lines (UDP, or `POST /v1/metrics`), aggregated per
//! interval, and written as snapshot rows to the `_metrics` stream.
//!
//! Every `interval_ms` the [`aggregate::Aggregator`] turns its series into rows (counters as
//! the interval's delta, gauges as last values, timers as HDR histograms, sets as distinct
//! counts) that go, one JSON line each, to `metrics.log` in the data directory. The agent tails
//! that file as the internal source `_metrics`, so snapshots travel the same sequenced, durable,
//! exactly-once path as log lines, and the collector writes them to the `metrics` table.
//! docs/metrics.md describes the intake and the table.
//!
//! Bad lines are counted ([`MetricsStats`]) and never stop the intake.

pub mod aggregate;
pub mod http;
pub(crate) mod settings;
pub mod statsd;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::aggregate::{Aggregator, Refused};
use self::settings::MetricsSettings;
use crate::eventlog::EventLog;
use crate::AgentError;

/// The snapshot file in the data directory.
pub const FILE_NAME: &str = "metrics.log";
/// The snapshot file is rotated at this size.
pub const ROTATE_BYTES: u64 = 64 << 20;
/// Largest StatsD datagram read.
const MAX_DATAGRAM: usize = 64 << 10;
/// Refusal reasons kept for one intake answer.
const MAX_REASONS: usize = 10;

/// Counters of the intake.
#[derive(Debug, Default)]
pub struct MetricsStats {
    /// Lines taken.
    pub lines: AtomicU64,
    /// Lines refused: unparseable, not UTF-8, a value out of range.
    pub bad_lines: AtomicU64,
    /// Lines dropped because the series limit was reached.
    pub dropped_series: AtomicU64,
    /// Lines dropped because the series' memory budget was reached.
    pub dropped_memory: AtomicU64,
    /// UDP datagrams read.
    pub datagrams: AtomicU64,
    /// Snapshot rows written.
    pub rows: AtomicU64,
    /// Snapshots that could not be written (a full disk).
    pub write_errors: AtomicU64,
}

impl MetricsStats {
    /// (name, help, value) of every counter, for `/metrics`.
    pub fn counters(&self) -> Vec<(&'static str, &'static str, u64)> {
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("lines", "StatsD lines taken.", c(&self.lines)),
            ("bad_lines", "StatsD lines refused (unparseable, not UTF-8, out of range).", c(&self.bad_lines)),
            ("dropped_series", "Lines dropped at the series limit (metrics.max_series).", c(&self.dropped_series)),
            (
                "dropped_memory",
                "Lines dropped at the series' memory budget (metrics.max_series_bytes).",
                c(&self.dropped_memory),
            ),
            ("datagrams", "StatsD UDP datagrams read.", c(&self.datagrams)),
            ("rows", "Snapshot rows written to the _metrics stream.", c(&self.rows)),
            ("write_errors", "Snapshots that could not be written.", c(&self.write_errors)),
        ]
    }
}

/// What one intake call did.
#[derive(Debug, Default, Serialize)]
pub struct Intake {
    /// Lines taken.
    pub accepted: u64,
    /// Lines refused.
    pub rejected: u64,
    /// Why, for the first few refused lines (`line N: reason`).
    pub errors: Vec<String>,
}

/// The node's metric intake and its snapshots.
pub struct MetricsService {
    settings: MetricsSettings,
    series: Mutex<Aggregator>,
    log: EventLog,
    /// Counters.
    pub stats: MetricsStats,
}

/// The snapshot log in `data_dir`.
pub fn snapshot_log(data_dir: &Path) -> EventLog {
    EventLog::new(data_dir, FILE_NAME, ROTATE_BYTES)
}

/// The internal source that carries snapshots to the collector.
pub fn snapshots_source(data_dir: &Path) -> crate::config::SourceConfig {
    snapshot_log(data_dir).source(switchboard_bus::tables::METRICS.stream)
}

impl MetricsService {
    /// A service writing snapshots to `log`.
    pub fn new(settings: MetricsSettings, log: EventLog) -> Self {
        Self {
            series: Mutex::new(Aggregator::new(settings.max_series, settings.max_series_bytes)),
            settings,
            log,
            stats: MetricsStats::default(),
        }
    }

    /// Start the UDP listener (if configured) and the snapshot task.
    pub async fn start(
        settings: &MetricsSettings,
        data_dir: &Path,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Result<Arc<Self>, AgentError> {
        let service = Arc::new(Self::new(settings.clone(), snapshot_log(data_dir)));
        if !settings.statsd_listen.is_empty() {
            let socket = tokio::net::UdpSocket::bind(&settings.statsd_listen).await.map_err(|source| {
                AgentError::Listen { what: format!("metrics.statsd_listen {}", settings.statsd_listen), source }
            })?;
            tracing::info!(addr = %settings.statsd_listen, "StatsD intake listening");
            tracker.spawn(service.clone().receive(socket, cancel.clone()));
        }
        tracker.spawn(service.clone().snapshots(cancel.clone()));
        Ok(service)
    }

    /// Take StatsD `text` (lines separated by `\n`).
    pub fn ingest(&self, text: &str) -> Intake {
        self.ingest_bytes(text.as_bytes())
    }

    /// Take StatsD lines as they came off the wire (separated by `\n`); a line that is not
    /// UTF-8 is refused and counted like any other bad line.
    pub fn ingest_bytes(&self, bytes: &[u8]) -> Intake {
        let mut out = Intake::default();
        // The lock guards plain data; a panic elsewhere cannot leave it half-updated in a way
        // that matters more than losing one sample, so a poisoned lock is taken over.
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            let parsed = match statsd::line_text(line) {
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => statsd::parse_line(text),
                Err(not_utf8) => Err(not_utf8),
            };
            let refused = match parsed {
                Ok(parsed) => match series.add(&parsed) {
                    Ok(()) => None,
                    Err(Refused::TooManySeries) => {
                        self.stats.dropped_series.fetch_add(1, Ordering::Relaxed);
                        Some(format!("series limit ({}) reached", self.settings.max_series))
                    }
                    Err(Refused::OverMemory) => {
                        self.stats.dropped_memory.fetch_add(1, Ordering::Relaxed);
                        Some(format!(
                            "memory budget ({} bytes, metrics.max_series_bytes) reached",
                            self.settings.max_series_bytes
                        ))
                    }
                    Err(Refused::OutOfRange) => {
                        self.stats.bad_lines.fetch_add(1, Ordering::Relaxed);
                        Some("out of range: the series' sum would not be finite, or a timer's value or sample count (with its sample rate) beyond what a histogram holds".to_owned())
                    }
                },
                Err(e) => {
                    self.stats.bad_lines.fetch_add(1, Ordering::Relaxed);
                    Some(e.0)
                }
            };
            match refused {
                None => out.accepted += 1,
                Some(why) => {
                    out.rejected += 1;
                    if out.errors.len() < MAX_REASONS {
                        out.errors.push(format!("line {}: {why}", i + 1));
                    }
                }
            }
        }
        self.stats.lines.fetch_add(out.accepted, Ordering::Relaxed);
        out
    }

    async fn receive(self: Arc<Self>, socket: tokio::net::UdpSocket, cancel: CancellationToken) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let n = tokio::select! {
                _ = cancel.cancelled() => break,
                r = socket.recv_from(&mut buf) => match r {
                    Ok((n, _)) => n,
                    Err(e) => {
                        tracing::warn!(error = %e, "StatsD socket");
                        continue;
                    }
                },
            };
            self.stats.datagrams.fetch_add(1, Ordering::Relaxed);
            self.ingest_bytes(&buf[..n]);
        }
    }

    /// Write the rows of the interval of `interval_ms` that ends at `ts_ms`.
    pub fn snapshot(&self, ts_ms: u64, interval_ms: u64) {
        let rows = {
            let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
            series.snapshot(ts_ms, interval_ms)
        };
        let mut lines = Vec::with_capacity(rows.len() * 128);
        for row in &rows {
            if serde_json::to_writer(&mut lines, row).is_ok() {
                lines.push(b'\n');
            }
        }
        match self.log.append(&lines) {
            Ok(()) => {
                self.stats.rows.fetch_add(rows.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, rows = rows.len(), "cannot write a metrics snapshot yet");
            }
        }
    }

    async fn snapshots(self: Arc<Self>, cancel: CancellationToken) {
        let interval = self.settings.interval_ms;
        let mut last = crate::dlr::now_ms();
        loop {
            // Each snapshot is taken at the next multiple of the interval by the wall clock, so
            // all nodes' rows line up in time; a late wake (a busy host, a stopped process)
            // delays one snapshot, never the ones after it.
            let now = crate::dlr::now_ms();
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(next_boundary(now, interval).saturating_sub(now))) => {}
            }
            // Its row ends at the boundary just passed (the one slept to, unless the wake was
            // late by more than an interval); none if the wall clock stepped back meanwhile.
            let woke = crate::dlr::now_ms();
            let ts = woke - woke % interval.max(1);
            if ts <= last {
                continue;
            }
            last = ts;
            let service = self.clone();
            let _ = tokio::task::spawn_blocking(move || service.snapshot(ts, interval)).await;
        }
        // What came in since the last snapshot is written now and sent after the next start;
        // its interval is the time since that snapshot.
        let now = crate::dlr::now_ms();
        self.snapshot(now, now.saturating_sub(last).clamp(1, self.settings.interval_ms));
    }
}

/// The end of the interval of `interval_ms` that `now_ms` falls in: the next multiple of the
/// interval after `now_ms` (a time on a boundary ends the interval after it).
fn next_boundary(now_ms: u64, interval_ms: u64) -> u64 {
    let interval = interval_ms.max(1);
    (now_ms / interval).saturating_add(1).saturating_mul(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_that_are_not_utf8_are_refused_and_counted_not_stored_as_replacement_characters() {
        let dir = tempfile::tempdir().unwrap();
        let service = MetricsService::new(MetricsSettings::default(), snapshot_log(dir.path()));
        let intake = service.ingest_bytes(b"taken:1|c\nsub\xffmitted:1|c\nq:2|c|#operator:\xfe\n\n");
        assert_eq!((intake.accepted, intake.rejected), (1, 2));
        assert_eq!(
            intake.errors,
            [
                "line 2: the metric name is not valid UTF-8 (byte 4 of the line)",
                "line 3: the line is not valid UTF-8 (byte 17 of the line)",
            ]
        );
        assert_eq!(service.stats.bad_lines.load(Ordering::Relaxed), 2);
        assert_eq!(service.stats.lines.load(Ordering::Relaxed), 1);
        let rows = service.series.lock().unwrap().snapshot(10_000, 10_000);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["taken"], "only the UTF-8 line becomes a series");
    }
}
