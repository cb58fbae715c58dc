//! Switchboard node agent: runs beside a gateway, tails its log files and publishes them on the bus.
//!
//! Layout (data flows top to bottom):
//! - [`config`]: the agent's TOML config (`[bus]`, `[agent]`, `[[source]]`);
//! - [`framing`]: bytes to lines (partial lines, CRLF, over-long lines);
//! - [`parse`]: lines to timestamp, level, message and fields (plain, JSON, syslog, key=value);
//! - [`tailer`]: one blocking thread per source: globs, files, sequence numbers, Arrow batches;
//! - [`publisher`]: puts batches on the bus, then advances the checkpoint ([`checkpoint`]);
//! - [`stats`]: counters.
//!
//! [`Agent::start`] wires them together; [`Agent::wait`] returns once a cancelled agent has
//! published what it read and stored its checkpoint.

pub mod checkpoint;
pub mod config;
pub mod framing;
pub mod parse;
pub mod publisher;
pub mod stats;
pub mod tailer;

use std::sync::Arc;
use std::time::Duration;

use switchboard_bus::keys::{KeySpace, Role};
use switchboard_bus::{session, Membership};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::checkpoint::Checkpoint;
use crate::config::AgentConfig;
use crate::publisher::PublisherTask;
use crate::stats::AgentStats;
use crate::tailer::SourceTailer;

/// The agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::AgentConfigError),
    /// The checkpoint could not be read.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// The bus session could not be set up.
    #[error("bus: {0}")]
    Bus(String),
}

impl From<session::SessionError> for AgentError {
    fn from(e: session::SessionError) -> Self {
        AgentError::Bus(e.to_string())
    }
}

/// Batches queued between the tailers and the publisher (back-pressure beyond that).
const QUEUE_BATCHES: usize = 16;

/// A running agent.
pub struct Agent {
    stats: Arc<AgentStats>,
    tracker: TaskTracker,
    session: zenoh::Session,
    _token: zenoh::liveliness::LivelinessToken,
}

impl Agent {
    /// Open the bus session, announce the node, restore the checkpoint and start tailing. The agent
    /// stops when `cancel` fires; then call [`Agent::wait`].
    pub async fn start(config: AgentConfig, cancel: CancellationToken) -> Result<Self, AgentError> {
        config.validate()?;
        let keys = KeySpace::new(&config.bus.effective_prefix()).map_err(|e| AgentError::Bus(e.to_string()))?;
        let checkpoint = {
            let dir = config.agent.data_dir.clone();
            tokio::task::spawn_blocking(move || Checkpoint::load(&dir))
                .await
                .map_err(|e| AgentError::Bus(format!("checkpoint task: {e}")))??
        };
        let session = session::open(&config.bus).await?;
        let node = config.bus.node.clone();
        let membership = Membership::watch(&session, &keys, cancel.clone()).await?;
        let publishers =
            publisher::declare_publishers(&session, &keys, &node, config.sources.iter().map(|s| s.name.as_str())).await?;
        let token = session::announce(&session, &keys, Role::Agent, &node).await?;
        let stats = Arc::new(AgentStats::default());
        let tracker = TaskTracker::new();
        let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
        for source in &config.sources {
            let cp = checkpoint.sources.get(&source.name).cloned().unwrap_or_default();
            let tailer = SourceTailer::new(source.clone(), config.agent.clone(), cp, stats.clone());
            let (tx, cancel) = (tx.clone(), cancel.clone());
            tracker.spawn_blocking(move || tailer.run(tx, cancel));
        }
        drop(tx);
        let task = PublisherTask {
            publishers,
            membership,
            wait_for_collector: config.agent.wait_for_collector,
            checkpoint,
            data_dir: config.agent.data_dir.clone(),
            checkpoint_interval: Duration::from_millis(config.agent.checkpoint_interval_ms),
            stats: stats.clone(),
        };
        tracker.spawn(task.run(rx, cancel));
        tracker.close();
        tracing::info!(%node, sources = config.sources.len(), "agent started");
        Ok(Self { stats, tracker, session, _token: token })
    }

    /// The agent's counters.
    pub fn stats(&self) -> Arc<AgentStats> {
        self.stats.clone()
    }

    /// Wait until the cancelled agent has published what it read and stored its checkpoint, then
    /// leave the bus.
    pub async fn wait(self) {
        self.tracker.wait().await;
        drop(self._token);
        if let Err(e) = self.session.close().await {
            tracing::debug!(error = %e, "closing the bus session");
        }
        tracing::info!("agent stopped");
    }
}
