//! The sink thread: takes live payloads, replayed payloads and heads in arrival order, feeds
//! them to the tables while this collector leads, commits due files through the group's commit
//! protocol, follows the commit log (taking over, stepping down), publishes the tables' status;
//! on shutdown drains what is still in flight and commits every open file.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_bus::wire::control::Heads;
use switchboard_bus::StreamId;
use tokio_util::sync::CancellationToken;
use zenoh::bytes::ZBytes;

use crate::group::{Commit, Group, TICK as GROUP_TICK};
use crate::latest::LatestMetrics;
use crate::sink::{ReplayRequest, SinkStatus};
use crate::stats::CollectorStats;
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

/// The newest head of every stream as the bus delivered it, kept before the intake queue: the
/// lag in records keeps moving while the sink is held up (a commit retrying against a store
/// that is down) and its queue sheds heads. One entry per stream the sink has state for too.
#[derive(Debug, Default)]
pub(crate) struct Announced(std::sync::Mutex<std::collections::HashMap<StreamId, u64>>);

impl Announced {
    fn take(&self, node: &str, heads: &Heads) {
        let Ok(mut m) = self.0.lock() else { return };
        for (local, &head) in &heads.streams {
            if let Some(id) = StreamId::parse_local(node, local) {
                m.insert(id, head);
            }
        }
    }

    /// The newest head announced for `id` (0 if none).
    pub(crate) fn head(&self, id: &StreamId) -> u64 {
        self.0.lock().ok().and_then(|m| m.get(id).copied()).unwrap_or(0)
    }
}

/// How long a bus callback waits for room in a full intake queue before it sheds: long enough
/// that a commit or a busy moment does not shed (a shed payload lives only in the agent's journal
/// until pulled again), well under the bus lease (3 s) so a link held this long stays up.
const OFFER_WAIT: Duration = Duration::from_secs(1);

/// At most one line per this long that the queue began to shed (with how many times since).
const SHED_LOG_EVERY: Duration = Duration::from_secs(60);

/// The bus side of the intake queue: zenoh's callbacks hand their inputs to the sink here, and
/// never hold a link for long. A short burst waits for room (up to [`OFFER_WAIT`]: back-pressure
/// to the publishers); a sink that stays behind (a store that is down, a slow disk) makes the
/// queue shed live inputs, counted, until it has room again. A shed payload is a gap the sink
/// pulls again from the agent's journal; a shed heads document is followed by the next one a
/// second later. Waiting longer would stall the link's receive thread and with it every other
/// message on that link (liveliness, query replies, the mesh check) until zenoh closes the link.
#[derive(Clone)]
pub(crate) struct Offer {
    tx: flume::Sender<Input>,
    shedding: Arc<std::sync::atomic::AtomicBool>,
    /// Sheds begun, said at most once per [`SHED_LOG_EVERY`] (a store that is down makes the
    /// queue shed and catch up every second or two), and whether the last begun was said (its
    /// end is said only then).
    shed_log: Arc<std::sync::Mutex<(switchboard_bus::throttle::Throttle, bool)>>,
    stats: Arc<CollectorStats>,
    announced: Arc<Announced>,
}

impl Offer {
    /// An offer into `tx`, counting what it sheds in `stats` and noting heads in `announced`.
    pub(crate) fn new(tx: flume::Sender<Input>, stats: Arc<CollectorStats>, announced: Arc<Announced>) -> Self {
        let shed_log =
            Arc::new(std::sync::Mutex::new((switchboard_bus::throttle::Throttle::new(SHED_LOG_EVERY), false)));
        Self { tx, shedding: Arc::default(), shed_log, stats, announced }
    }

    /// Queue `input` for the sink, or shed it if the queue stays full (see [`Offer`]).
    pub(crate) fn offer(&self, input: Input) {
        if let Input::Heads { node, heads } = &input {
            self.announced.take(node, heads);
        }
        let full = if self.shedding.load(Ordering::Relaxed) {
            matches!(self.tx.try_send(input), Err(flume::TrySendError::Full(_)))
        } else {
            matches!(self.tx.send_timeout(input, OFFER_WAIT), Err(flume::SendTimeoutError::Timeout(_)))
        };
        if full {
            self.stats.inputs_shed.fetch_add(1, Ordering::Relaxed);
            if !self.shedding.swap(true, Ordering::Relaxed) {
                if let Some(unsaid) = self.say_shedding() {
                    tracing::warn!(
                        times_since_last_line = unsaid,
                        "the sink is behind: shedding live payloads until it catches up; they are pulled again from the \
                         agents' journals"
                    );
                }
            }
        } else if self.shedding.swap(false, Ordering::Relaxed) && self.say_caught_up() {
            tracing::info!("the sink caught up: taking live payloads again");
        }
    }

    /// Whether to say that shedding began: `Some(times left unsaid since the last line)`.
    fn say_shedding(&self) -> Option<u64> {
        let mut log = self.shed_log.lock().ok()?;
        let (throttle, said) = &mut *log;
        let admitted = throttle.admit();
        *said = admitted.is_some();
        admitted
    }

    /// Whether to say that shedding ended: only when its beginning was said.
    fn say_caught_up(&self) -> bool {
        self.shed_log.lock().is_ok_and(|mut log| std::mem::take(&mut log.1))
    }
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
    pub(crate) subscriptions: Option<G>,
    /// This collector's part in the collector group.
    pub(crate) group: Group,
    /// The runtime the group's storage calls run on (this thread blocks on them).
    pub(crate) runtime: tokio::runtime::Handle,
    /// Counters.
    pub(crate) stats: Arc<CollectorStats>,
    /// While a standby: the newest payloads seen, up to `standby_cap` bytes.
    pub(crate) standby: std::collections::VecDeque<(StreamId, ZBytes)>,
    /// Bytes in `standby`.
    pub(crate) standby_bytes: usize,
    /// `collector.standby_buffer_bytes`.
    pub(crate) standby_cap: usize,
    /// When the last live payload came (not a replay): data the writer should be committing.
    pub(crate) last_live: Option<Instant>,
}

impl<G> Intake<G> {
    /// Run until `cancel` fires (or every sender is gone), then drain and commit everything.
    pub(crate) fn run(mut self, cancel: CancellationToken) {
        let mut last_status = Instant::now();
        let mut last_tick = Instant::now() - GROUP_TICK;
        self.tables.set_leading(self.group.is_leader());
        while !cancel.is_cancelled() {
            match self.rx.recv_timeout(TICK) {
                Ok(input) => self.take(input),
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => break,
            }
            if last_tick.elapsed() >= GROUP_TICK {
                last_tick = Instant::now();
                self.follow();
            }
            self.commit(false);
            if self.tables.take_watermarks_changed() || last_status.elapsed() >= TICK {
                self.publish_status();
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
        drop(self.subscriptions.take());
        self.commit(true);
        self.publish_status();
        if let Some(why) = self.tables.status().failing.filter(|_| self.group.is_leader()) {
            // The agents keep those rows; the process says so with its exit code.
            if let Ok(mut last) = self.stats.stopped_uncommitted.lock() {
                *last = Some(why);
            }
        }
        tracing::info!(watermarks = ?self.tables.watermarks(), "collector sink stopped");
    }

    fn publish_status(&mut self) {
        let mut status = self.tables.status();
        status.epoch = self.group.epoch();
        self.status.send_replace(status);
    }

    /// Read the commit log: apply others' commits, take over or step down.
    fn follow(&mut self) {
        let waiting = self.tables.oldest_waiting();
        let tick = self.runtime.block_on(self.group.tick_waiting(waiting, self.last_live));
        self.apply(&tick.records);
        if tick.stepped_down {
            self.tables.abandon_all();
            self.tables.set_leading(self.group.is_leader());
        }
        if tick.took_over {
            self.tables.set_leading(true);
            // What the old writer had not committed, as far as this standby saw it, is written
            // now (rows already committed are dropped as duplicates); the rest is pulled.
            let buffered = std::mem::take(&mut self.standby);
            self.standby_bytes = 0;
            self.stats.payloads_standby_taken.fetch_add(buffered.len() as u64, Ordering::Relaxed);
            for (stream, payload) in buffered {
                self.tables.handle(&stream, &payload.to_bytes(), false);
            }
        }
    }

    fn apply(&mut self, records: &[crate::log::Record]) {
        for r in records {
            self.tables.apply_committed(&r.files);
        }
    }

    /// Commit the files that are due (all of them with `all`), while leading.
    fn commit(&mut self, all: bool) {
        if !self.group.is_leader() {
            return;
        }
        let files = self.tables.finish_due(all);
        if files.is_empty() {
            return;
        }
        match self.runtime.block_on(self.group.commit(&files)) {
            Commit::Done => self.tables.settle(&files, Ok(())),
            Commit::Failed(why) => self.tables.settle(&files, Err(&why)),
            Commit::Fenced(records) => {
                self.tables.settle(&files, Err("another collector took over the dataset"));
                self.tables.abandon_all();
                self.tables.set_leading(self.group.is_leader());
                self.apply(&records);
            }
        }
    }

    fn take(&mut self, input: Input) {
        match input {
            Input::Data { stream, payload, replayed } => {
                if !replayed {
                    self.last_live = Some(Instant::now());
                }
                if stream.name == switchboard_bus::tables::METRICS.stream {
                    self.latest.take(&stream.node, &payload.to_bytes());
                }
                if self.group.is_leader() {
                    self.tables.handle(&stream, &payload.to_bytes(), replayed)
                } else {
                    // The leader writes it; a standby keeps the newest, for a takeover.
                    self.stats.payloads_standby.fetch_add(1, Ordering::Relaxed);
                    self.standby_bytes += payload.len();
                    self.standby.push_back((stream, payload));
                    while self.standby_bytes > self.standby_cap {
                        let Some((_, old)) = self.standby.pop_front() else { break };
                        self.standby_bytes -= old.len();
                        self.stats.payloads_standby_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Input::Heads { node, heads } => {
                for req in self.tables.on_heads(&node, &heads) {
                    let _ = self.replays.send(req);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_that_come_and_go_are_said_once_a_minute_with_their_end() {
        let (tx, _rx) = flume::bounded(1);
        let offer = Offer::new(tx, Arc::default(), Arc::default());
        // A store that is down: the queue sheds and catches up every second or two.
        assert_eq!(offer.say_shedding(), Some(0));
        assert!(offer.say_caught_up());
        for _ in 0..10 {
            assert_eq!(offer.say_shedding(), None);
            assert!(!offer.say_caught_up(), "an end said whose beginning was not");
        }
    }
}
