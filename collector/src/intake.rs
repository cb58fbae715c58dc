//! The sink thread: takes live payloads, replayed payloads and heads in arrival order, feeds
//! them to the tables, commits aged files, publishes the tables' status; on shutdown drains
//! what is still in flight and commits every open file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_bus::wire::control::Heads;
use switchboard_bus::StreamId;
use tokio_util::sync::CancellationToken;
use zenoh::bytes::ZBytes;

use crate::latest::LatestMetrics;
use crate::sink::{ReplayRequest, SinkStatus};
use crate::tables::Tables;

/// How often the sink wakes up to commit aged files when no data arrives.
const TICK: Duration = Duration::from_millis(200);
/// After cancellation, keep taking what is still in flight until the bus is quiet this long.
const DRAIN_QUIET: Duration = Duration::from_millis(50);
/// ... but no longer than this.
const DRAIN_MAX: Duration = Duration::from_secs(5);

/// What the sink thread takes in, in arrival order.
pub(crate) enum Input {
    /// A `log_batch` payload of a stream, live or replayed.
    Data {
        /// The stream.
        stream: StreamId,
        /// The `log_batch` payload.
        payload: ZBytes,
        /// Whether it answers a replay query.
        replayed: bool,
    },
    /// A node's heads.
    Heads {
        /// The node.
        node: String,
        /// Its heads.
        heads: Heads,
    },
}

/// Everything the sink thread works with.
pub(crate) struct Intake<G> {
    /// The tables.
    pub(crate) tables: Tables,
    /// What the bus callbacks and the replay client send.
    pub(crate) rx: flume::Receiver<Input>,
    /// The cluster's latest gateway metrics, fed from the `_metrics` streams.
    pub(crate) latest: Arc<LatestMetrics>,
    /// Where the ranges to replay go.
    pub(crate) replays: tokio::sync::mpsc::UnboundedSender<ReplayRequest>,
    /// The tables' status, for watermarks and `/health`.
    pub(crate) status: tokio::sync::watch::Sender<SinkStatus>,
    /// The subscriptions feeding `rx`, dropped once the intake has drained.
    pub(crate) subscriptions: G,
}

impl<G> Intake<G> {
    /// Run until `cancel` fires (or every sender is gone), then drain and commit everything.
    pub(crate) fn run(mut self, cancel: CancellationToken) {
        let mut last_status = Instant::now();
        while !cancel.is_cancelled() {
            match self.rx.recv_timeout(TICK) {
                Ok(input) => self.take(input),
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => break,
            }
            self.tables.commit_aged();
            if self.tables.take_watermarks_changed() || last_status.elapsed() >= TICK {
                self.status.send_replace(self.tables.status());
                last_status = Instant::now();
            }
        }
        let started = Instant::now();
        while started.elapsed() < DRAIN_MAX {
            match self.rx.recv_timeout(DRAIN_QUIET) {
                Ok(input) => self.take(input),
                _ => break,
            }
        }
        drop(self.subscriptions);
        self.tables.commit_all();
        self.status.send_replace(self.tables.status());
        tracing::info!(watermarks = ?self.tables.watermarks(), "collector sink stopped");
    }

    fn take(&mut self, input: Input) {
        match input {
            Input::Data { stream, payload, replayed } => {
                let bytes = payload.to_bytes();
                if stream.name == switchboard_bus::tables::METRICS.stream {
                    self.latest.take(&stream.node, &bytes);
                }
                self.tables.handle(&stream, &bytes, replayed)
            }
            Input::Heads { node, heads } => {
                for req in self.tables.on_heads(&node, &heads) {
                    let _ = self.replays.send(req);
                }
            }
        }
    }
}
