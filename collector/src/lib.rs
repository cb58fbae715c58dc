//! Switchboard collector: subscribes to the cluster's streams and materializes them to a
//! Hive-partitioned Parquet dataset, each record exactly once.
//!
//! Layout (data flows top to bottom):
//! - [`config`]: the collector's TOML config;
//! - [`recovery`]: at start, committed sequence ranges read back from the data files' footers;
//! - [`tables`]: which sink each stream feeds (the tables are defined in
//!   `switchboard_bus::tables`);
//! - [`sink`]: payloads to deduplicated rows in hourly partition files;
//! - [`logs_table`]: the `logs` table schema and the wire-to-row conversion;
//! - [`writer`]: one Parquet file, committed atomically with its ranges in the footer;
//! - [`writers`]: two processes publishing as one node, found from their heads;
//! - [`ranges`]: sequence number sets; [`stats`]: counters.
//!
//! [`Collector::start`] runs recovery, subscribes, then announces the collector on the bus (so
//! agents that wait for a collector only publish once the subscription exists).

pub mod config;
pub mod latest;
pub mod logs_table;
pub mod ranges;
pub mod recovery;
pub mod sink;
pub mod stats;
pub mod tables;
pub mod writer;
pub mod writers;

/// Rows the unit tests feed the sinks.
#[cfg(test)]
pub(crate) mod test_rows {
    use switchboard_bus::wire::log_batch::LogRow;

    /// A line of an agent's `metrics.log` (its fields are the caller's).
    pub(crate) fn metrics_row(seq: u64, ts_micros: i64) -> LogRow<'static> {
        LogRow {
            seq,
            ts_micros,
            observed_micros: ts_micros,
            file: "metrics.log",
            offset: 0,
            level: None,
            message: "",
            raw: None,
            truncated: false,
        }
    }
}

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_bus::http::Health;
use switchboard_bus::keys::{KeySpace, Role, StreamId, StreamKind};
use switchboard_bus::mesh::{self, Mesh};
use switchboard_bus::wire::control::{Heads, Watermarks};
use switchboard_bus::{session, Member, Membership};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zenoh::bytes::ZBytes;
use zenoh::query::ConsolidationMode;
use zenoh::Session;

use crate::config::CollectorConfig;
use crate::logs_table::{LogsTable, TABLE_VERSION};
use crate::sink::{LogsSink, ReplayRequest, SinkStatus};
use crate::stats::CollectorStats;
use crate::tables::Tables;
use crate::writer::FileSettings;
use crate::writers::WriterCheck;

/// Series of the cluster's latest metrics kept for `/metrics` (see [`latest`]).
pub const LATEST_SERIES: usize = 10_000;

/// How often the sink wakes up to commit aged files when no data arrives.
const TICK: Duration = Duration::from_millis(200);
/// After cancellation, keep taking what is still in flight until the bus is quiet this long.
const DRAIN_QUIET: Duration = Duration::from_millis(50);
/// ... but no longer than this.
const DRAIN_MAX: Duration = Duration::from_secs(5);

/// How long a replay query may take.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(60);
/// Watermarks are re-published this often even when they do not move (agents that join late
/// or missed one learn them), and at most this often... when they do: see `publish_watermarks`.
const WATERMARK_EVERY: Duration = Duration::from_secs(1);

/// What the sink thread takes in, in arrival order.
enum Input {
    /// A `log_batch` payload of a stream, live or replayed.
    Data { stream: StreamId, payload: ZBytes, replayed: bool },
    /// A node's heads.
    Heads { node: String, heads: Heads },
}

/// Send replay queries and feed their answers to the sink.
async fn run_replays(
    session: Session,
    keys: KeySpace,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<ReplayRequest>,
    tx: flume::Sender<Input>,
    stats: Arc<CollectorStats>,
    cancel: CancellationToken,
) {
    loop {
        let req = tokio::select! {
            _ = cancel.cancelled() => break,
            r = requests.recv() => match r { Some(r) => r, None => break },
        };
        let Ok(key) = keys.replay(&req.stream) else { continue };
        let (session, tx, stats) = (session.clone(), tx.clone(), stats.clone());
        tokio::spawn(async move {
            stats.replay_requests.fetch_add(1, Ordering::Relaxed);
            let selector = format!("{key}?from={};to={}", req.from, req.to);
            let replies = match session
                .get(selector.as_str())
                .consolidation(ConsolidationMode::None)
                .timeout(REPLAY_TIMEOUT)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    stats.replay_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%selector, error = %e, "replay query failed");
                    return;
                }
            };
            while let Ok(reply) = replies.recv_async().await {
                match reply.result() {
                    Ok(sample) => {
                        let input = Input::Data {
                            stream: req.stream.clone(),
                            payload: sample.payload().clone(),
                            replayed: true,
                        };
                        if tx.send_async(input).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        stats.replay_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%selector, error = %String::from_utf8_lossy(&e.payload().to_bytes()), "agent could not replay in full");
                    }
                }
            }
        });
    }
}

/// Publish each node's watermarks when they move (at most every 100 ms) and every second.
async fn publish_watermarks(
    session: Session,
    keys: KeySpace,
    collector: String,
    mut marks: tokio::sync::watch::Receiver<SinkStatus>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(WATERMARK_EVERY);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tick.tick() => {}
            changed = marks.changed() => {
                if changed.is_err() { break; }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let current = marks.borrow_and_update().watermarks.clone();
        let mut per_node: BTreeMap<String, Watermarks> = BTreeMap::new();
        for (stream, w) in current {
            let Some((node, rest)) = stream.split_once('/') else { continue };
            per_node.entry(node.to_owned()).or_default().streams.insert(rest.to_owned(), w);
        }
        for (node, doc) in per_node {
            if let Ok(key) = keys.watermark(&collector, &node) {
                if let Err(e) = session.put(key, doc.encode()).await {
                    tracing::debug!(error = %e, "cannot publish watermarks");
                }
            }
        }
        if cancel.is_cancelled() {
            // One last round after the final commit, then stop.
            if marks.changed().await.is_ok() {
                continue;
            }
            break;
        }
    }
}

/// The collector's `/health` and `/metrics`.
struct CollectorReport {
    name: String,
    stats: Arc<CollectorStats>,
    status: tokio::sync::watch::Receiver<SinkStatus>,
    latest: Arc<latest::LatestMetrics>,
    mesh: Mesh,
    writers: Arc<Mutex<WriterCheck>>,
}

impl switchboard_bus::http::Report for CollectorReport {
    fn health(&self) -> Health {
        let st = self.status.borrow().clone();
        let lag: BTreeMap<&String, serde_json::Value> =
            st.lag.iter().map(|(k, (r, s))| (k, serde_json::json!({"records": r, "seconds": s}))).collect();
        let mut h = Health::default();
        h.failing.extend(st.failing.clone());
        let conflicted = self.writers.lock().map(|w| w.conflicted(Instant::now())).unwrap_or_default();
        for node in &conflicted {
            h.degraded.push(format!(
                "two processes publish as node {node}: one's lines are dropped as duplicates of the other's"
            ));
        }
        h.degraded.extend(self.mesh.problems().iter().map(|p| format!("bus mesh: {p}")));
        let details = serde_json::json!({
            "collector": self.name,
            "open_files": st.open_files,
            "watermarks": st.watermarks,
            "lag": lag,
            "mesh": self.mesh.health(),
        });
        if let serde_json::Value::Object(map) = details {
            h.details = map;
        }
        h
    }

    fn metrics(&self) -> String {
        let s = &self.stats;
        let g = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let st = self.status.borrow().clone();
        let mut m = switchboard_bus::http::Metrics::new();
        m.counter("switchboard_collector_payloads_total", "Payloads taken from the bus.", g(&s.payloads_received))
            .counter(
                "switchboard_collector_malformed_payloads_total",
                "Payloads dropped as malformed or of an unknown version.",
                g(&s.payloads_malformed),
            )
            .counter("switchboard_collector_rows_received_total", "Rows in well-formed payloads.", g(&s.rows_received))
            .counter(
                "switchboard_collector_rows_duplicate_total",
                "Rows dropped as already held.",
                g(&s.rows_duplicate),
            )
            .counter(crate::stats::ROWS_COMMITTED_METRIC, "Rows in committed Parquet files.", g(&s.rows_committed))
            .counter("switchboard_collector_files_committed_total", "Parquet files committed.", g(&s.files_committed))
            .counter("switchboard_collector_commit_errors_total", "Commits that failed.", g(&s.commit_errors))
            .counter("switchboard_collector_write_errors_total", "Data file writes that failed.", g(&s.write_errors))
            .counter(
                "switchboard_collector_gaps_detected_total",
                "Gaps found against agents' heads.",
                g(&s.gaps_detected),
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
                f64::from(u8::from(st.failing.is_some())),
            )
            .gauge_series(
                "switchboard_collector_stream_lag_records",
                "Records announced by the agent and not yet committed.",
                st.lag.iter().map(|(k, (r, _))| (vec![("stream", k.clone())], *r as f64)),
            )
            .gauge_series(
                "switchboard_collector_stream_lag_seconds",
                "How long the committed prefix has been behind the agent's head.",
                st.lag.iter().map(|(k, (_, secs))| (vec![("stream", k.clone())], *secs)),
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
        )
        .counter(
            "switchboard_collector_cluster_metric_rows_refused_total",
            "Metric rows of series beyond the collector's bound, left out of switchboard_cluster_metric.",
            self.latest.refused.load(Ordering::Relaxed),
        );
        self.mesh.metrics(&mut m);
        self.health().gauge(&mut m);
        m.finish()
    }
}

/// The collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::CollectorConfigError),
    /// The dataset could not be read at start.
    #[error("recovering {path}: {source}")]
    Recovery {
        /// The table directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bus session could not be set up.
    #[error("bus: {0}")]
    Bus(String),
    /// The health and metrics endpoint could not be started (e.g. its address is in use).
    #[error("health/metrics endpoint: {0}")]
    Http(String),
}

impl From<session::SessionError> for CollectorError {
    fn from(e: session::SessionError) -> Self {
        CollectorError::Bus(e.to_string())
    }
}

/// Recover one table's committed ranges from its files, and make its sink.
async fn open_table(
    config: &CollectorConfig,
    dir_name: &str,
    promote: Vec<config::PromotedColumn>,
    stats: Arc<CollectorStats>,
) -> Result<LogsSink, CollectorError> {
    let table_dir = config.collector.data_dir.join(dir_name);
    let recovered = {
        let dir = table_dir.clone();
        tokio::task::spawn_blocking(move || recovery::recover(&dir))
            .await
            .map_err(|e| CollectorError::Bus(format!("recovery task: {e}")))?
            .map_err(|source| CollectorError::Recovery { path: table_dir.clone(), source })?
    };
    tracing::info!(
        table = dir_name,
        files = recovered.files,
        streams = recovered.committed.len(),
        removed_tmp = recovered.removed_tmp,
        unreadable = recovered.unreadable.len(),
        "recovered committed ranges from the dataset"
    );
    Ok(table_sink(config, dir_name, promote, recovered.committed, stats))
}

/// The sink that writes table `dir_name` (below the data directory) as `config` says, knowing
/// what is already `committed`: what the collector writes each table with.
pub fn table_sink(
    config: &CollectorConfig,
    dir_name: &str,
    promote: Vec<config::PromotedColumn>,
    committed: BTreeMap<String, ranges::RangeSet>,
    stats: Arc<CollectorStats>,
) -> LogsSink {
    let blooms: Vec<String> = promote.iter().filter(|p| p.bloom).map(|p| p.name.clone()).collect();
    let c = &config.collector;
    let settings = FileSettings {
        table: dir_name.to_owned(),
        table_version: TABLE_VERSION,
        writer: config.bus.node.clone(),
        properties: FileSettings::properties(c.zstd_level, c.row_group_rows, &blooms),
        row_group_max_bytes: c.row_group_max_bytes,
    };
    LogsSink::new(
        LogsTable::new(promote),
        settings,
        c.data_dir.join(dir_name),
        c.max_file_bytes,
        c.max_file_age(),
        committed,
        stats,
    )
}

/// A running collector.
pub struct Collector {
    stats: Arc<CollectorStats>,
    tracker: TaskTracker,
    session: zenoh::Session,
}

impl Collector {
    /// Recover, subscribe, announce. The collector stops when `cancel` fires: it leaves the
    /// membership at once, takes what is still in flight, commits every open file; then
    /// [`Collector::wait`] returns.
    pub async fn start(config: CollectorConfig, cancel: CancellationToken) -> Result<Self, CollectorError> {
        config.validate()?;
        let keys = KeySpace::new(&config.bus.effective_prefix()).map_err(|e| CollectorError::Bus(e.to_string()))?;
        let name = config.bus.node.clone();
        let stats = Arc::new(CollectorStats::default());
        let c = &config.collector;
        let logs =
            open_table(&config, switchboard_bus::tables::LOGS, config.logs.promote.clone(), stats.clone()).await?;
        let mut internal = Vec::new();
        for t in switchboard_bus::tables::INTERNAL {
            internal.push((t.stream, open_table(&config, t.name, tables::promoted(&t), stats.clone()).await?));
        }
        let mut sink = Tables { logs, internal };
        let latest = Arc::new(latest::LatestMetrics::new(LATEST_SERIES));

        let mut bus = config.bus.clone();
        bus.listen = bus.effective_listen();
        let session = session::open(&bus).await?;
        let me = Member { role: Role::Collector, name: name.clone() };
        mesh::check_name_free(&session, &keys, &me).await?;
        let membership = Membership::watch(&session, &keys, cancel.clone()).await?;
        let mesh = Mesh::start(&session, &keys, me, membership, cancel.clone()).await?;
        let writers = Arc::new(Mutex::new(WriterCheck::default()));
        let (tx, rx) = flume::bounded::<Input>(c.queue_payloads);
        let subscriber = {
            let (tx, keys, stats) = (tx.clone(), keys.clone(), stats.clone());
            session
                .declare_subscriber(keys.all_streams(StreamKind::Log).map_err(|e| CollectorError::Bus(e.to_string()))?)
                .callback(move |sample| match keys.parse_stream(sample.key_expr().as_str()) {
                    // Blocking when the sink is behind: back-pressure to the publishers.
                    Some(stream) => {
                        let _ = tx.send(Input::Data { stream, payload: sample.payload().clone(), replayed: false });
                    }
                    None => {
                        stats.payloads_malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(key = %sample.key_expr(), "payload on a key outside the key space");
                    }
                })
                .await
                .map_err(|e| CollectorError::Bus(e.to_string()))?
        };
        let heads_subscriber = {
            let (tx, keys, stats, writers) = (tx.clone(), keys.clone(), stats.clone(), writers.clone());
            session
                .declare_subscriber(keys.all_heads().map_err(|e| CollectorError::Bus(e.to_string()))?)
                .callback(move |sample| {
                    let node = keys.parse_head(sample.key_expr().as_str());
                    match (node, Heads::decode(&sample.payload().to_bytes())) {
                        (Some(node), Ok(heads)) => {
                            if let (Some(instance), Ok(mut w)) = (heads.instance.as_deref(), writers.lock()) {
                                if instance.len() > crate::writers::MAX_INSTANCE_BYTES {
                                    stats.control_malformed.fetch_add(1, Ordering::Relaxed);
                                } else if w.observe(&node, instance, Instant::now()) {
                                    stats.conflicting_writers.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            let _ = tx.send(Input::Heads { node, heads });
                        }
                        (_, Err(e)) => {
                            stats.control_malformed.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(key = %sample.key_expr(), error = %e, "ignoring malformed heads");
                        }
                        (None, Ok(_)) => {
                            stats.control_malformed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
                .await
                .map_err(|e| CollectorError::Bus(e.to_string()))?
        };
        let token = session::announce(&session, &keys, Role::Collector, &name).await?;

        let tracker = TaskTracker::new();
        {
            let cancel = cancel.clone();
            tracker.spawn(async move {
                cancel.cancelled().await;
                drop(token);
            });
        }
        let (replay_tx, replay_rx) = tokio::sync::mpsc::unbounded_channel::<ReplayRequest>();
        tracker.spawn(run_replays(session.clone(), keys.clone(), replay_rx, tx.clone(), stats.clone(), cancel.clone()));
        let (status_tx, status_rx) = tokio::sync::watch::channel(SinkStatus::default());
        tracker.spawn(publish_watermarks(
            session.clone(),
            keys.clone(),
            name.clone(),
            status_rx.clone(),
            cancel.clone(),
        ));
        if !c.http_listen.is_empty() {
            let addr = c.http_listen.parse().map_err(|e| CollectorError::Http(format!("http_listen: {e}")))?;
            let report = Arc::new(CollectorReport {
                name: name.clone(),
                stats: stats.clone(),
                status: status_rx,
                latest: latest.clone(),
                mesh,
                writers,
            });
            let (_, task) = switchboard_bus::http::serve(addr, report, axum::Router::new(), cancel.clone())
                .await
                .map_err(|e| CollectorError::Http(format!("http_listen {addr}: {e}")))?;
            tracker.spawn(async move {
                let _ = task.await;
            });
        }
        drop(tx);
        tracker.spawn_blocking(move || {
            let take = |sink: &mut Tables, input: Input| match input {
                Input::Data { stream, payload, replayed } => {
                    let bytes = payload.to_bytes();
                    if stream.name == switchboard_bus::tables::METRICS.stream {
                        latest.take(&stream.node, &bytes);
                    }
                    sink.handle(&stream, &bytes, replayed)
                }
                Input::Heads { node, heads } => {
                    for req in sink.on_heads(&node, &heads) {
                        let _ = replay_tx.send(req);
                    }
                }
            };
            let mut last_status = Instant::now();
            while !cancel.is_cancelled() {
                match rx.recv_timeout(TICK) {
                    Ok(input) => take(&mut sink, input),
                    Err(flume::RecvTimeoutError::Timeout) => {}
                    Err(flume::RecvTimeoutError::Disconnected) => break,
                }
                sink.commit_aged();
                if sink.take_watermarks_changed() || last_status.elapsed() >= TICK {
                    status_tx.send_replace(sink.status());
                    last_status = Instant::now();
                }
            }
            let started = Instant::now();
            while started.elapsed() < DRAIN_MAX {
                match rx.recv_timeout(DRAIN_QUIET) {
                    Ok(input) => take(&mut sink, input),
                    _ => break,
                }
            }
            drop(subscriber);
            drop(heads_subscriber);
            sink.commit_all();
            status_tx.send_replace(sink.status());
            tracing::info!(watermarks = ?sink.watermarks(), "collector sink stopped");
        });
        tracker.close();
        tracing::info!(%name, "collector started");
        Ok(Self { stats, tracker, session })
    }

    /// The collector's counters.
    pub fn stats(&self) -> Arc<CollectorStats> {
        self.stats.clone()
    }

    /// Wait until the cancelled collector has committed everything, then leave the bus.
    pub async fn wait(self) {
        self.tracker.wait().await;
        if let Err(e) = self.session.close().await {
            tracing::debug!(error = %e, "closing the bus session");
        }
        tracing::info!("collector stopped");
    }
}
