//! Switchboard collector: subscribes to the cluster's streams and materializes them to a
//! Hive-partitioned Parquet dataset, each record exactly once.
//!
//! Layout (data flows top to bottom):
//! - [`config`]: the collector's TOML config;
//! - [`recovery`]: at start, committed sequence ranges read back from the data files' footers;
//! - [`sink`]: payloads to deduplicated rows in hourly partition files;
//! - [`logs_table`]: the `logs` table schema and the wire-to-row conversion;
//! - [`writer`]: one Parquet file, committed atomically with its ranges in the footer;
//! - [`ranges`]: sequence number sets; [`stats`]: counters.
//!
//! [`Collector::start`] runs recovery, subscribes, then announces the collector on the bus (so
//! agents that wait for a collector only publish once the subscription exists).

pub mod config;
pub mod logs_table;
pub mod ranges;
pub mod recovery;
pub mod sink;
pub mod stats;
pub mod writer;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_bus::keys::{KeySpace, Role, StreamId, StreamKind};
use switchboard_bus::session;
use switchboard_bus::wire::control::{Heads, Watermarks};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zenoh::bytes::ZBytes;
use zenoh::query::ConsolidationMode;
use zenoh::Session;

use crate::config::CollectorConfig;
use crate::logs_table::{LogsTable, TABLE_VERSION};
use crate::sink::{LogsSink, ReplayRequest};
use crate::stats::CollectorStats;
use crate::writer::FileSettings;

/// Name of the logs table's directory below the data directory.
pub const LOGS_DIR: &str = "logs";

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
                        let input = Input::Data { stream: req.stream.clone(), payload: sample.payload().clone(), replayed: true };
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
    mut marks: tokio::sync::watch::Receiver<BTreeMap<String, u64>>,
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
        let current = marks.borrow_and_update().clone();
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
}

impl From<session::SessionError> for CollectorError {
    fn from(e: session::SessionError) -> Self {
        CollectorError::Bus(e.to_string())
    }
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
        let table_dir = config.collector.data_dir.join(LOGS_DIR);
        let recovered = {
            let dir = table_dir.clone();
            tokio::task::spawn_blocking(move || recovery::recover(&dir))
                .await
                .map_err(|e| CollectorError::Bus(format!("recovery task: {e}")))?
                .map_err(|source| CollectorError::Recovery { path: table_dir.clone(), source })?
        };
        tracing::info!(
            files = recovered.files,
            streams = recovered.committed.len(),
            removed_tmp = recovered.removed_tmp,
            unreadable = recovered.unreadable.len(),
            "recovered committed ranges from the dataset"
        );
        let table = LogsTable::new(config.logs.promote.clone());
        let blooms: Vec<String> = config.logs.promote.iter().filter(|p| p.bloom).map(|p| p.name.clone()).collect();
        let c = &config.collector;
        let settings = FileSettings {
            table: LOGS_DIR.to_owned(),
            table_version: TABLE_VERSION,
            writer: name.clone(),
            properties: FileSettings::properties(c.zstd_level, c.row_group_rows, &blooms),
            row_group_max_bytes: c.row_group_max_bytes,
        };
        let stats = Arc::new(CollectorStats::default());
        let mut sink =
            LogsSink::new(table, settings, table_dir, c.max_file_bytes, c.max_file_age(), recovered.committed, stats.clone());

        let session = session::open(&config.bus).await?;
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
            let (tx, keys, stats) = (tx.clone(), keys.clone(), stats.clone());
            session
                .declare_subscriber(keys.all_heads().map_err(|e| CollectorError::Bus(e.to_string()))?)
                .callback(move |sample| {
                    let node = keys.parse_head(sample.key_expr().as_str());
                    match (node, Heads::decode(&sample.payload().to_bytes())) {
                        (Some(node), Ok(heads)) => {
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
        let (marks_tx, marks_rx) = tokio::sync::watch::channel(BTreeMap::new());
        tracker.spawn(publish_watermarks(session.clone(), keys.clone(), name.clone(), marks_rx, cancel.clone()));
        drop(tx);
        tracker.spawn_blocking(move || {
            let take = |sink: &mut LogsSink, input: Input| match input {
                Input::Data { stream, payload, replayed } => sink.handle(&stream, &payload.to_bytes(), replayed),
                Input::Heads { node, heads } => {
                    for req in sink.on_heads(&node, &heads) {
                        let _ = replay_tx.send(req);
                    }
                }
            };
            while !cancel.is_cancelled() {
                match rx.recv_timeout(TICK) {
                    Ok(input) => take(&mut sink, input),
                    Err(flume::RecvTimeoutError::Timeout) => {}
                    Err(flume::RecvTimeoutError::Disconnected) => break,
                }
                sink.commit_aged();
                if sink.take_watermarks_changed() {
                    marks_tx.send_replace(sink.watermarks());
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
            marks_tx.send_replace(sink.watermarks());
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
