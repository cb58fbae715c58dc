//! Publishing batches on the bus and storing the checkpoint behind them.
//!
//! The publisher task takes [`OutBatch`]es from the tailers' queue, waits (if configured) until a
//! collector is alive, puts each payload on its stream key with `CongestionControl::Block` (a
//! batch is never dropped by zenoh under load), and only then advances the in-memory checkpoint.
//! The checkpoint is written to disk at most every `checkpoint_interval_ms` and once more at the
//! end, on a blocking thread. Whatever was read but not yet published is simply read again after
//! a restart: the log files are the journal.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_bus::keys::{KeySpace, Role, StreamId, StreamKind};
use switchboard_bus::Membership;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zenoh::bytes::Encoding;
use zenoh::pubsub::Publisher;
use zenoh::qos::CongestionControl;
use zenoh::Session;

use crate::checkpoint::Checkpoint;
use crate::stats::AgentStats;
use crate::tailer::OutBatch;
use crate::AgentError;

/// The media type of sequenced payloads (Arrow IPC stream).
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// Everything the publisher task needs.
pub(crate) struct PublisherTask {
    pub(crate) publishers: HashMap<String, Publisher<'static>>,
    pub(crate) membership: Membership,
    pub(crate) wait_for_collector: bool,
    pub(crate) checkpoint: Checkpoint,
    pub(crate) data_dir: PathBuf,
    pub(crate) checkpoint_interval: Duration,
    pub(crate) stats: Arc<AgentStats>,
}

/// Declare one publisher per source.
pub(crate) async fn declare_publishers(
    session: &Session,
    keys: &KeySpace,
    node: &str,
    sources: impl Iterator<Item = &str>,
) -> Result<HashMap<String, Publisher<'static>>, AgentError> {
    let mut map = HashMap::new();
    for name in sources {
        let id = StreamId { node: node.to_owned(), kind: StreamKind::Log, name: name.to_owned() };
        let key = keys.stream(&id).map_err(|e| AgentError::Bus(e.to_string()))?;
        let publisher = session
            .declare_publisher(key)
            .congestion_control(CongestionControl::Block)
            .encoding(Encoding::from(ARROW_STREAM))
            .await
            .map_err(|e| AgentError::Bus(e.to_string()))?;
        map.insert(name.to_owned(), publisher);
    }
    Ok(map)
}

impl PublisherTask {
    /// Publish until every tailer has finished (the queue closes), or until `cancel` fires while
    /// waiting for a collector. Stores the final checkpoint either way.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<OutBatch>, cancel: CancellationToken) {
        let mut last_store = Instant::now();
        let mut dirty = false;
        while let Some(batch) = rx.recv().await {
            if self.wait_for_collector && !self.collector_alive(&cancel).await {
                tracing::warn!("stopping with batches unpublished: no collector alive; they are read again after a restart");
                break;
            }
            let Some(publisher) = self.publishers.get(&batch.source) else {
                tracing::error!(source = %batch.source, "no publisher for source");
                continue;
            };
            if let Err(e) = publisher.put(batch.payload).await {
                self.stats.publish_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(source = %batch.source, error = %e, "publish failed; stopping so that the batch is re-read after a restart");
                break;
            }
            tracing::trace!(source = %batch.source, first_seq = batch.first_seq, lines = batch.lines, "published");
            self.stats.lines_published.fetch_add(batch.lines, Ordering::Relaxed);
            self.stats.batches_published.fetch_add(1, Ordering::Relaxed);
            self.checkpoint.sources.insert(batch.source, batch.checkpoint);
            dirty = true;
            if last_store.elapsed() >= self.checkpoint_interval {
                self.store().await;
                last_store = Instant::now();
                dirty = false;
            }
        }
        // Make the tailers stop if we left early, then store what was published.
        rx.close();
        if dirty {
            self.store().await;
        }
    }

    async fn collector_alive(&self, cancel: &CancellationToken) -> bool {
        if !self.membership.live_of(Role::Collector).is_empty() {
            return true;
        }
        tracing::info!("waiting for a collector to come alive before publishing");
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return false,
                alive = self.membership.wait_for_role(Role::Collector, Duration::from_secs(5)) => {
                    if alive {
                        tracing::info!("a collector is alive; publishing");
                        return true;
                    }
                }
            }
        }
    }

    async fn store(&mut self) {
        let checkpoint = self.checkpoint.clone();
        let dir = self.data_dir.clone();
        let result = tokio::task::spawn_blocking(move || checkpoint.store(&dir)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.stats.checkpoint_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot write checkpoint");
            }
            Err(e) => {
                self.stats.checkpoint_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "checkpoint task failed");
            }
        }
    }
}
