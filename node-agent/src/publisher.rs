//! Publishing batches on the bus, and the agent's side of acknowledgement.
//!
//! - [`PublisherTask`] takes [`OutBatch`]es from the tailers' queue (they are already journaled)
//!   and puts each payload on its stream key with `CongestionControl::Block`: a batch is never
//!   dropped by zenoh under load. While no collector is alive it publishes nothing (if so
//!   configured): the batches stay in the journal for a collector to pull when it is back.
//! - [`run_acks`] follows the collectors' watermarks for this node: each advance folds the covered
//!   journal entries into the acknowledged checkpoint, which is stored (atomically, at most every
//!   `checkpoint_interval_ms` and at shutdown) before the journal is compacted.
//! - [`run_heads`] announces, every second and whenever a collector joins, how far each source's
//!   sequence has got, so that a collector that lost data pulls it ([`crate::replay`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_bus::keys::{KeySpace, Role, StreamId};
use switchboard_bus::membership::{MemberEvent, STRAGGLER_WITHIN};
use switchboard_bus::refusals::{refuse, Reason};
use switchboard_bus::wire::control::{Heads, Watermarks};
use switchboard_bus::Member;
use switchboard_bus::Membership;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zenoh::bytes::Encoding;
use zenoh::pubsub::Publisher;
use zenoh::qos::{CongestionControl, Priority};
use zenoh::{Session, Wait};

use crate::checkpoint::Checkpoint;
use crate::journal::SourceJournal;
use crate::stats::AgentStats;
use crate::tailer::OutBatch;
use crate::AgentError;

/// How long a batch waits for a collector to come alive before the publisher stops publishing
/// and leaves the batches to the journal (see [`PublisherTask::run`]).
const HOLD_AFTER: Duration = Duration::from_secs(3);

/// The media type of sequenced payloads (Arrow IPC stream).
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// The journals of all sources, by source name.
pub type Journals = Arc<BTreeMap<String, Arc<Mutex<SourceJournal>>>>;

/// Everything the publisher task needs.
pub(crate) struct PublisherTask {
    pub(crate) publishers: Arc<HashMap<String, Publisher<'static>>>,
    pub(crate) membership: Membership,
    pub(crate) wait_for_collector: bool,
    /// Acknowledgements off: acknowledge each batch as soon as it is published.
    pub(crate) self_ack: Option<mpsc::UnboundedSender<(String, u64)>>,
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
        let id = StreamId::log(node, name);
        let key = keys.stream(&id)?;
        // Below the default priority: a put that waits for room toward a hung collector holds
        // its priority's queue of that link (up to zenoh's `wait_before_close`), and every other
        // message to it at that priority (heads, status answers, counters) would wait behind it.
        let publisher = session
            .declare_publisher(key)
            .congestion_control(CongestionControl::Block)
            .priority(Priority::DataLow)
            .encoding(Encoding::from(ARROW_STREAM))
            .await
            .map_err(|source| AgentError::Declare { what: "stream publisher", source })?;
        map.insert(name.to_owned(), publisher);
    }
    Ok(map)
}

impl PublisherTask {
    /// Publish until every tailer has finished (the queue closes), or until `cancel` fires while
    /// waiting for a collector (the batches stay in the journal).
    pub(crate) async fn run(self, mut rx: mpsc::Receiver<OutBatch>, cancel: CancellationToken) {
        let mut holding = false;
        while let Some(batch) = rx.recv().await {
            if self.wait_for_collector && self.membership.live_of(Role::Collector).is_empty() {
                // Without acknowledgements nothing is journaled: wait for a collector.
                if self.self_ack.is_some() {
                    if !self.collector_alive(&cancel).await {
                        tracing::warn!("stopping with batches unpublished: no collector alive");
                        break;
                    }
                } else if holding || !self.collector_within(HOLD_AFTER, &cancel).await {
                    // Journaled already: the tailers read on (keeping rotated files open, up to
                    // `max_unacked_batches`), and a collector that comes back finds the gap in
                    // the heads and pulls it from the journal. (A start usually meets a
                    // collector within milliseconds: the first batch waits for one a moment,
                    // so that live subscribers see the batches of a clean start.)
                    if !holding {
                        tracing::warn!("no collector alive: batches are journaled, not published; a collector pulls them when it is back");
                        holding = true;
                    }
                    self.stats.batches_held.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            if std::mem::take(&mut holding) {
                tracing::info!("a collector is alive: publishing again");
            }
            if !self.publishers.contains_key(&batch.source) {
                tracing::error!(source = %batch.source, "no publisher for source");
                continue;
            }
            // A put that waits for room blocks its thread: off the runtime's workers, which a
            // hung collector would otherwise take from every other task of the agent.
            let (publishers, source, payload) = (self.publishers.clone(), batch.source.clone(), batch.payload);
            let put = tokio::task::spawn_blocking(move || match publishers.get(&source) {
                Some(p) => p.put(payload).wait(),
                None => Ok(()),
            })
            .await
            .unwrap_or_else(|e| Err(format!("publishing task: {e}").into()));
            if let Err(e) = put {
                self.stats.publish_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(source = %batch.source, error = %e, "publish failed; the batch stays in the journal for replay");
                continue;
            }
            tracing::trace!(source = %batch.source, first_seq = batch.first_seq, lines = batch.lines, "published");
            self.stats.lines_published.fetch_add(batch.lines, Ordering::Relaxed);
            self.stats.batches_published.fetch_add(1, Ordering::Relaxed);
            if let Some(ack) = &self.self_ack {
                let _ = ack.send((batch.source, batch.first_seq + batch.lines - 1));
            }
        }
        rx.close();
    }

    /// Whether a collector is alive within `wait` (false at once when `cancel` fires).
    async fn collector_within(&self, wait: Duration, cancel: &CancellationToken) -> bool {
        tokio::select! {
            _ = cancel.cancelled() => false,
            alive = self.membership.wait_for_role(Role::Collector, wait) => alive,
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
}

/// The current heads of every source of `node`; `session` names this run of the agent
/// ([`Heads::instance`]).
pub(crate) fn heads(node: &str, journals: &Journals, session: &Session) -> Heads {
    let mut heads = Heads {
        version: switchboard_bus::wire::control::VERSION,
        instance: Some(session.zid().to_string()),
        ..Heads::default()
    };
    for (name, j) in journals.iter() {
        let Ok(j) = j.lock() else { continue };
        let stream = StreamId::log(node, name).local();
        heads.acked.insert(stream.clone(), j.floor());
        heads.streams.insert(stream, j.head());
    }
    heads
}

/// Publish heads every second, when a collector joins, and once more when `cancel` fires.
pub(crate) async fn run_heads(
    session: Session,
    keys: KeySpace,
    node: String,
    journals: Journals,
    membership: Membership,
    cancel: CancellationToken,
) {
    let Ok(key) = keys.head(&node) else { return };
    let mut events = membership.events();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
            ev = events.recv() => {
                if !matches!(ev, Ok(MemberEvent::Joined(ref m)) if m.role == Role::Collector) {
                    continue;
                }
            }
        }
        if let Err(e) = session.put(&key, heads(&node, &journals, &session).encode()).await {
            tracing::debug!(error = %e, "cannot publish heads");
        }
    }
}

/// A watermark of one of the agent's own streams up to which it goes on numbering above
/// ([`SourceJournal::skip_to`]); beyond it, one is refused as any other ahead.
const MAX_SKIP_TO: u64 = 1 << 48;

/// How long the writer's watermarks may stop before another live collector's are taken: the
/// writer sends one every second.
const WRITER_SILENT: Duration = Duration::from_secs(5);

/// Follows watermarks for this node; advances, stores and compacts.
pub(crate) struct AckTask {
    pub(crate) session: Session,
    pub(crate) keys: KeySpace,
    pub(crate) node: String,
    pub(crate) journals: Journals,
    pub(crate) checkpoint: Checkpoint,
    pub(crate) data_dir: PathBuf,
    pub(crate) interval: Duration,
    pub(crate) stats: Arc<AgentStats>,
    /// The live collectors: only one of them can raise the epoch watermarks are held to.
    pub(crate) membership: Membership,
    /// Sources whose lines after an emptied `data_dir` are new ones, not the same lines read
    /// again: the agent's own records, and log sources read from their end (`start_at = "end"`).
    /// A watermark ahead of such a fresh journal numbers it on above the earlier life's.
    pub(crate) numbered_on: std::collections::HashSet<String>,
}

/// How long a collector must have been live, without naming a held stream in a watermark,
/// before the stream is read and numbered from 0: the writer publishes every node's
/// watermarks each second, so one that holds the node's earlier life has said so by then.
pub(crate) const NUMBER_FROM_ZERO_AFTER: Duration = Duration::from_secs(5);

impl AckTask {
    /// Run until `cancel` fires; `self_acks` carries acknowledgements the publisher makes itself
    /// when acknowledgements are off.
    pub(crate) async fn run(self, mut self_acks: mpsc::UnboundedReceiver<(String, u64)>, cancel: CancellationToken) {
        let AckTask {
            session,
            keys,
            node,
            journals,
            mut checkpoint,
            data_dir,
            interval,
            stats,
            membership,
            numbered_on,
        } = self;
        let subscriber = match keys.watermarks_for(&node) {
            Ok(k) => match session.declare_subscriber(k).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot subscribe to watermarks; checkpoints will not advance");
                    return;
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "bad watermark key");
                return;
            }
        };
        let mut dirty = false;
        // The highest collector-group epoch seen and the collector that raised it: watermarks of
        // a replaced writer, or of another collector at the same epoch, are refused.
        let mut epoch = 0u64;
        let mut writer: Option<String> = None;
        // When a watermark was last taken: a writer whose watermarks stop (one gone, or a forged
        // epoch no collector holds, on a bus without TLS) gives way to the next live collector's.
        let mut writer_heard = Instant::now();
        let mut last_store = Instant::now();
        // Since when a collector has been live without interruption: held journals
        // (`SourceJournal::hold`) the writer has not named by then are read from 0.
        let mut collector_since: Option<Instant> = None;
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)).min(Duration::from_millis(500)));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
                Some((name, w)) = self_acks.recv() => {
                    if let Some(cp) = journals.get(&name).and_then(|j| j.lock().ok().and_then(|mut j| j.ack(w))) {
                        checkpoint.sources.insert(name, cp);
                        dirty = true;
                    }
                }
                sample = subscriber.recv_async() => {
                    let Ok(sample) = sample else { break };
                    let marks = match Watermarks::decode(&sample.payload().to_bytes()) {
                        Ok(m) => m,
                        Err(e) => {
                            refuse(Reason::WatermarkInvalid, format_args!("watermark on {}: {e}", sample.key_expr()));
                            continue;
                        }
                    };
                    let from = keys.parse_watermark(sample.key_expr().as_str()).map(|(c, _)| c).unwrap_or_default();
                    if !membership.live_of(Role::Collector).contains(&from) {
                        let member = Member { role: Role::Collector, name: from.clone() };
                        if membership.left_within(&member, STRAGGLER_WITHIN) {
                            // Its last watermark, after its last commit, may come after its token
                            // went: the writer's own, under its epoch, still says what is
                            // committed. Any other is dropped unsaid.
                            let last_of_writer = writer.as_deref() == Some(from.as_str()) && marks.epoch == Some(epoch);
                            if !last_of_writer {
                                tracing::debug!(collector = from, "a watermark of a collector that left just now: dropped");
                                continue;
                            }
                        } else {
                            refuse(
                                Reason::WatermarkNotLive,
                                format_args!("watermark from {from:?}, which is not a live collector"),
                            );
                            continue;
                        }
                    }
                    // Never past what this agent journaled: that would drop lines no collector
                    // has. The agent's own files, and what a source read from the end finds, are
                    // new after its data_dir was emptied, so a collector that holds more of one
                    // of their streams holds the node's earlier life: it is numbered on above
                    // that (`own_skip`, `numbered_on`). Any other stream ahead is
                    // refused alone, so that it does not stop the others' acknowledgements; a
                    // document with nothing but such streams is refused whole, its epoch too.
                    let is_ahead = |w: u64, head: u64| w.checked_add(1).is_none_or(|next| next > head);
                    let own_skip = |name: &str, w: u64| numbered_on.contains(name) && w < MAX_SKIP_TO;
                    // Per stream journaled here: whether it is refused as ahead, and why.
                    let journaled: Vec<(bool, String)> = marks
                        .streams
                        .iter()
                        .filter_map(|(stream, &w)| {
                            let id = StreamId::parse_local(&node, stream)?;
                            let j = journals.get(&id.name)?.lock().ok()?;
                            let refused = is_ahead(w, j.head()) && !(own_skip(&id.name, w) && j.is_fresh());
                            Some((refused, format!("{w} for {stream}, published up to {}", j.head())))
                        })
                        .collect();
                    let ahead: Vec<&str> = journaled.iter().filter(|s| s.0).map(|s| s.1.as_str()).collect();
                    if !ahead.is_empty() && ahead.len() == journaled.len() {
                        refuse(Reason::WatermarkAhead, format_args!("watermark {}, from {from}", ahead.join("; ")));
                        continue;
                    }
                    if writer_heard.elapsed() >= WRITER_SILENT {
                        if let Some(gone) = writer.take() {
                            let now = marks.epoch.map_or_else(|| "none".to_owned(), |e| e.to_string());
                            if gone == from {
                                tracing::warn!(
                                    "no watermark of {gone} for {} s (this agent or it did not run): taking its watermarks again (epoch {now})",
                                    WRITER_SILENT.as_secs()
                                );
                            } else {
                                tracing::warn!(
                                    "no watermark of {gone} (epoch {epoch}) for {} s: following {from} (epoch {now}) instead",
                                    WRITER_SILENT.as_secs()
                                );
                            }
                        }
                        epoch = 0;
                    }
                    match marks.epoch {
                        Some(e) if e < epoch => {
                            stats.watermarks_stale.fetch_add(1, Ordering::Relaxed);
                            refuse(Reason::WatermarkStale, format_args!("watermark of epoch {e} from {from}; the writer's epoch is {epoch}"));
                            continue;
                        }
                        // A higher epoch from a live collector: the writer of a newer claim.
                        Some(e) if e > epoch || writer.is_none() => {
                            epoch = e;
                            writer = Some(from.clone());
                        }
                        Some(_) if writer.as_deref() == Some(from.as_str()) => {}
                        None if writer.is_none() => {}
                        _ => {
                            refuse(Reason::WatermarkNotWriter, format_args!("watermark of epoch {:?} from {from}; that epoch's writer is {writer:?}", marks.epoch));
                            continue;
                        }
                    }
                    writer_heard = Instant::now();
                    for (stream, w) in marks.streams {
                        let Some(id) = StreamId::parse_local(&node, &stream) else { continue };
                        let Some(j) = journals.get(&id.name) else { continue };
                        let head = j.lock().map_or(0, |j| j.head());
                        if is_ahead(w, head) {
                            let skipped =
                                own_skip(&id.name, w).then(|| j.lock().ok().and_then(|mut j| j.skip_to(w + 1))).flatten();
                            match skipped {
                                Some(cp) => {
                                    let said = format!(
                                        "the collector holds stream {id} up to {w} from an earlier life of this node (its data_dir was emptied): \
                                         its lines are numbered from {} on",
                                        w + 1
                                    );
                                    if head == 0 {
                                        tracing::info!(stream = %id, from = %from, "{said}");
                                    } else {
                                        // Numbered before the first watermark (a journal not held).
                                        stats.lines_lost.fetch_add(head, Ordering::Relaxed);
                                        tracing::warn!(
                                            stream = %id, from = %from, lost = head,
                                            "{said}; the {head} lines numbered below since the start repeat numbers it holds and are not stored"
                                        );
                                    }
                                    checkpoint.sources.insert(id.name, cp);
                                    dirty = true;
                                }
                                None => refuse(
                                    Reason::WatermarkAhead,
                                    format_args!("watermark {w} for {stream}, published up to {head}, from {from}"),
                                ),
                            }
                            continue;
                        }
                        let advanced = j.lock().ok().and_then(|mut j| j.ack(w));
                        if let Some(cp) = advanced {
                            checkpoint.sources.insert(id.name, cp);
                            dirty = true;
                        }
                    }
                    // The writer has spoken: a stream it did not name ahead follows on from what
                    // it holds (nothing, or what it acknowledged), and no later watermark moves it.
                    for j in journals.values() {
                        if let Ok(mut j) = j.lock() {
                            j.named();
                        }
                    }
                }
            }
            if membership.live_of(Role::Collector).is_empty() {
                collector_since = None;
            } else if collector_since.get_or_insert_with(Instant::now).elapsed() >= NUMBER_FROM_ZERO_AFTER {
                for (name, j) in journals.iter() {
                    if j.lock().is_ok_and(|mut j| j.release()) {
                        tracing::info!(source = %name, "no watermark of a live collector named this stream: its lines are numbered from 0");
                    }
                }
            }
            let unacked: usize = journals.values().map(|j| j.lock().map_or(0, |j| j.unacked())).sum();
            stats.unacked_batches.store(unacked as u64, Ordering::Relaxed);
            if dirty && last_store.elapsed() >= interval {
                // A failed store (a full disk) is tried again at the next interval.
                dirty = !store(&journals, &checkpoint, &data_dir, &stats).await;
                last_store = Instant::now();
            }
        }
        // Acknowledgements off: the publisher's last self-acks may still be queued.
        while let Ok((name, w)) = self_acks.try_recv() {
            if let Some(cp) = journals.get(&name).and_then(|j| j.lock().ok().and_then(|mut j| j.ack(w))) {
                checkpoint.sources.insert(name, cp);
                dirty = true;
            }
        }
        if dirty {
            store(&journals, &checkpoint, &data_dir, &stats).await;
        }
    }
}

/// Store the acknowledged checkpoint, then compact journals that want it; whether it worked.
async fn store(journals: &Journals, checkpoint: &Checkpoint, data_dir: &std::path::Path, stats: &AgentStats) -> bool {
    let (cp, dir, js) = (checkpoint.clone(), data_dir.to_owned(), journals.clone());
    let result = tokio::task::spawn_blocking(move || -> Result<(), String> {
        // The journals' own locks are never held across a sync (see crate::journal).
        for j in js.values() {
            let Some(file) = j.lock().ok().map(|j| j.appender()) else { continue };
            file.lock().and_then(|f| f.sync()).map_err(|e| format!("syncing journal: {e}"))?;
        }
        cp.store(&dir).map_err(|e| e.to_string())?;
        for j in js.values() {
            if j.lock().is_ok_and(|j| j.wants_compaction()) {
                SourceJournal::compact_shared(j).map_err(|e| format!("compacting journal: {e}"))?;
            }
        }
        Ok(())
    })
    .await;
    let failed = match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(e) => Some(format!("the checkpoint task failed: {e}")),
    };
    let mut failing = stats.checkpoint_failing.lock().unwrap_or_else(|p| p.into_inner());
    match (&failed, failing.as_ref()) {
        // Logged when it starts failing, or fails otherwise, not at every try: each is counted.
        (Some(e), before) => {
            stats.checkpoint_errors.fetch_add(1, Ordering::Relaxed);
            if before != Some(e) {
                tracing::error!(error = %e, "cannot store the checkpoint (tried again every second; /health fails meanwhile)");
            }
        }
        (None, Some(_)) => tracing::info!("the checkpoint is stored again"),
        (None, None) => {}
    }
    let ok = failed.is_none();
    *failing = failed;
    ok
}
