//! The collector's `/health` and `/metrics`: its role in the collector group, its sinks' status,
//! the writers and mesh checks, its counters and the cluster's latest gateway metrics, rendered
//! for operators.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use switchboard_bus::http::Health;
use switchboard_bus::mesh::Mesh;
use switchboard_bus::StreamId;

use crate::group::GroupStatus;
use crate::latest::LatestMetrics;
use crate::sink::{Lag, SinkStatus};
use crate::stats::CollectorStats;
use crate::writers::WriterCheck;

/// The collector's `/health` and `/metrics`.
pub(crate) struct CollectorReport {
    pub(crate) name: String,
    /// When the collector started, ms since the Unix epoch.
    pub(crate) started_at_ms: u64,
    /// `max_file_age_ms` in seconds (how long a record may wait for its file's commit).
    pub(crate) max_file_age_s: f64,
    /// Per-second rates for the status document ([`crate::status`]).
    pub(crate) rates: Mutex<switchboard_bus::status::Rates>,
    pub(crate) membership: switchboard_bus::Membership,
    pub(crate) group: Arc<Mutex<GroupStatus>>,
    pub(crate) stats: Arc<CollectorStats>,
    pub(crate) status: tokio::sync::watch::Receiver<SinkStatus>,
    pub(crate) latest: Arc<LatestMetrics>,
    pub(crate) mesh: Mesh,
    pub(crate) writers: Arc<Mutex<WriterCheck>>,
    /// The newest heads the bus delivered (the lag keeps moving while the sink is held up).
    pub(crate) announced: Arc<crate::intake::Announced>,
}

/// At most this many streams' watermarks and lags in `/health` (the furthest behind first).
const HEALTH_STREAMS: usize = 1000;

impl CollectorReport {
    /// Every stream's lag now (see [`Lag::now`]).
    pub(crate) fn lag(&self, st: &SinkStatus) -> BTreeMap<StreamId, Lag> {
        st.lag.iter().map(|(id, l)| (id.clone(), l.now(self.announced.head(id), st.at))).collect()
    }
}

impl switchboard_bus::http::Report for CollectorReport {
    fn health(&self) -> Health {
        let st = self.status.borrow().clone();
        // A body of one entry per stream could reach megabytes (65,536 streams): the streams
        // furthest behind, and how many were left out.
        let mut lags: Vec<(StreamId, Lag)> = self.lag(&st).into_iter().collect();
        lags.sort_by(|a, b| b.1.records.cmp(&a.1.records).then_with(|| a.0.cmp(&b.0)));
        let lag_left_out = lags.len().saturating_sub(HEALTH_STREAMS);
        let lag: BTreeMap<String, serde_json::Value> = lags
            .iter()
            .take(HEALTH_STREAMS)
            .map(|(k, l)| (k.to_string(), serde_json::json!({"records": l.records, "seconds": l.seconds()})))
            .collect();
        let watermarks_left_out = st.watermarks.len().saturating_sub(HEALTH_STREAMS);
        let watermarks: BTreeMap<String, u64> =
            st.watermarks.iter().take(HEALTH_STREAMS).map(|(k, w)| (k.to_string(), *w)).collect();
        let group = self.group.lock().map(|g| g.clone()).unwrap_or_default();
        let mut h = Health::default();
        h.failing.extend(st.failing.clone());
        h.failing.extend(group.store_problem());
        h.failing.extend(group.refused.clone());
        h.failing.extend(group.claim_lost.clone());
        let conflicted = self.writers.lock().map(|w| w.conflicted(Instant::now())).unwrap_or_default();
        for node in &conflicted {
            h.degraded.push(format!(
                "two processes publish as node {node}: one's lines are dropped as duplicates of the other's"
            ));
        }
        h.degraded.extend(group.split.clone());
        h.degraded.extend(self.mesh.problems().iter().map(|p| format!("bus mesh: {p}")));
        let details = serde_json::json!({
            "collector": self.name,
            "role": group.role,
            "epoch": group.epoch,
            "leader": group.leader,
            "last_commit_age_seconds": group.last_commit.map(|t| t.elapsed().as_secs_f64()),
            "open_files": st.open_files,
            "watermarks": watermarks,
            "watermarks_left_out": watermarks_left_out,
            "lag": lag,
            "lag_left_out": lag_left_out,
            "mesh": self.mesh.health(),
        });
        if let serde_json::Value::Object(map) = details {
            h.details = map;
        }
        h
    }

    fn status(&self, health: &Health) -> switchboard_bus::status::ProcessStatus {
        self.document(health)
    }

    fn metrics(&self) -> String {
        let st = self.status.borrow().clone();
        let lag = self.lag(&st);
        let group = self.group.lock().map(|g| g.clone()).unwrap_or_default();
        let mut m = switchboard_bus::http::Metrics::new();
        let failing = st.failing.is_some() || group.store_problem().is_some();
        own_families(&mut m, &self.stats, &group, failing, self.latest.refused.load(Ordering::Relaxed));
        m.gauge_series(
            "switchboard_collector_stream_lag_records",
            "Records announced by the agent and not yet committed.",
            lag.iter().map(|(k, l)| (vec![("stream", k.to_string())], l.records as f64)),
        )
        .gauge_series(
            "switchboard_collector_stream_lag_seconds",
            "Age of the stream's oldest record not committed (since the agent first announced it).",
            lag.iter().map(|(k, l)| (vec![("stream", k.to_string())], l.seconds())),
        );
        let latest = self.latest.snapshot();
        m.gauge_series(
            "switchboard_cluster_metric",
            "The newest snapshot of each gateway counter (delta of its last interval) and gauge, per node.",
            latest.iter().map(|(labels, value, _)| (labels.clone(), *value)),
        )
        .gauge_series(
            "switchboard_cluster_metric_timestamp_seconds",
            "When that snapshot was taken (seconds since the epoch).",
            latest.into_iter().map(|(labels, _, at)| (labels, at)),
        );
        self.mesh.metrics(&mut m);
        self.health().gauge(&mut m);
        m.finish()
    }
}

/// The collector's own families, all without labels: a collector still starting shows them too
/// (at 0, its epoch and last commit at -1), as docs/prometheus.md promises.
pub(crate) fn own_families(
    m: &mut switchboard_bus::http::Metrics,
    s: &CollectorStats,
    group: &GroupStatus,
    failing: bool,
    cluster_rows_refused: u64,
) {
    let g = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    m.gauge(
        "switchboard_collector_leader",
        "1 while this collector writes the dataset, 0 while it stands by.",
        f64::from(u8::from(group.epoch.is_some())),
    )
    .gauge(
        "switchboard_collector_epoch",
        "The epoch this collector writes under (-1 while standing by).",
        group.epoch.map_or(-1.0, |e| e as f64),
    )
    .gauge(
        "switchboard_collector_last_commit_age_seconds",
        "Seconds since this collector's last commit (-1: none yet).",
        group.last_commit.map_or(-1.0, |t| t.elapsed().as_secs_f64()),
    )
    .gauge(
        "switchboard_collector_store_failing",
        "1 while the dataset's store answers with errors.",
        f64::from(u8::from(group.store_problem().is_some())),
    )
    .counter("switchboard_collector_takeovers_total", "Times this collector claimed the commit log.", group.takeovers)
    .counter(
        "switchboard_collector_stepped_down_total",
        "Times this collector found another's claim and stopped writing.",
        group.stepped_down,
    )
    .counter(
        "switchboard_collector_standby_payloads_total",
        "Payloads kept in the standby buffer (the writer stores them).",
        g(&s.payloads_standby),
    )
    .counter(
        "switchboard_collector_standby_payloads_dropped_total",
        "Payloads let go from a full standby buffer.",
        g(&s.payloads_standby_dropped),
    )
    .counter(
        "switchboard_collector_standby_payloads_taken_total",
        "Buffered payloads written at a takeover.",
        g(&s.payloads_standby_taken),
    );
    m.counter("switchboard_collector_payloads_total", "Payloads taken from the bus.", g(&s.payloads_received))
        .counter(
            "switchboard_collector_malformed_payloads_total",
            "Payloads dropped as malformed or of an unknown version.",
            g(&s.payloads_malformed),
        )
        .counter(
            "switchboard_collector_unconverted_values_total",
            "Values of a typed column (a promoted field, a column of metrics, limits or dlr) that did not convert \
                 to its type (a NaN or infinite float included): the column is null and the text stays in `fields`.",
            g(&s.promote_failures),
        )
        .counter(
            "switchboard_collector_inputs_shed_total",
            "Live payloads and heads shed while the sink was behind (payloads are pulled again).",
            g(&s.inputs_shed),
        )
        .counter("switchboard_collector_rows_received_total", "Rows in well-formed payloads.", g(&s.rows_received))
        .counter("switchboard_collector_rows_duplicate_total", "Rows dropped as already held.", g(&s.rows_duplicate))
        .counter(crate::stats::ROWS_COMMITTED_METRIC, "Rows in committed Parquet files.", g(&s.rows_committed))
        .counter("switchboard_collector_files_committed_total", "Parquet files committed.", g(&s.files_committed))
        .counter(
            "switchboard_collector_commit_errors_total",
            "Commits that failed, and tries of a commit log record that failed (retried).",
            g(&s.commit_errors).saturating_add(group.log_write_errors),
        )
        .counter("switchboard_collector_write_errors_total", "Data file writes that failed.", g(&s.write_errors))
        .counter("switchboard_collector_gaps_detected_total", "Gaps found against agents' heads.", g(&s.gaps_detected))
        .counter(
            "switchboard_collector_records_given_up_total",
            "Records below an agent's acked position that were never committed here (a restore from an older backup).",
            g(&s.records_given_up),
        )
        .counter("switchboard_collector_replays_total", "Replay queries sent to agents.", g(&s.replay_requests))
        .counter("switchboard_collector_rows_replayed_total", "Rows received from replays.", g(&s.rows_replayed))
        .counter("switchboard_collector_replay_errors_total", "Replay queries that failed.", g(&s.replay_errors))
        .counter(
            "switchboard_collector_conflicting_writers_total",
            "Heads showing two processes publishing as one node.",
            g(&s.conflicting_writers),
        )
        .gauge(
            "switchboard_collector_failing",
            "1 while writes or commits fail (e.g. disk full).",
            f64::from(u8::from(failing)),
        )
        .counter(
            "switchboard_collector_cluster_metric_rows_refused_total",
            "Metric rows of series beyond the collector's bound, left out of switchboard_cluster_metric.",
            cluster_rows_refused,
        );
}
