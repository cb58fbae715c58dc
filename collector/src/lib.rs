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

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_bus::keys::{KeySpace, Role, StreamKind};
use switchboard_bus::session;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zenoh::handlers::FifoChannel;

use crate::config::CollectorConfig;
use crate::logs_table::{LogsTable, TABLE_VERSION};
use crate::sink::LogsSink;
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
        let subscriber = session
            .declare_subscriber(keys.all_streams(StreamKind::Log).map_err(|e| CollectorError::Bus(e.to_string()))?)
            .with(FifoChannel::new(c.queue_payloads))
            .await
            .map_err(|e| CollectorError::Bus(e.to_string()))?;
        let token = session::announce(&session, &keys, Role::Collector, &name).await?;

        let tracker = TaskTracker::new();
        {
            let cancel = cancel.clone();
            tracker.spawn(async move {
                cancel.cancelled().await;
                drop(token);
            });
        }
        let sink_stats = stats.clone();
        tracker.spawn_blocking(move || {
            let handle = |sink: &mut LogsSink, sample: zenoh::sample::Sample| match keys.parse_stream(sample.key_expr().as_str()) {
                Some(stream) => sink.handle(&stream, &sample.payload().to_bytes()),
                None => {
                    sink_stats.payloads_malformed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(key = %sample.key_expr(), "payload on a key outside the key space");
                }
            };
            while !cancel.is_cancelled() {
                match subscriber.recv_timeout(TICK) {
                    Ok(Some(sample)) => handle(&mut sink, sample),
                    Ok(None) => {}
                    Err(_) => break,
                }
                sink.commit_aged();
            }
            let started = Instant::now();
            while started.elapsed() < DRAIN_MAX {
                match subscriber.recv_timeout(DRAIN_QUIET) {
                    Ok(Some(sample)) => handle(&mut sink, sample),
                    _ => break,
                }
            }
            drop(subscriber);
            sink.commit_all();
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
