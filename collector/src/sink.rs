//! The `logs` sink: decoded payloads in, deduplicated rows into hourly Parquet files, commits out.
//!
//! For each payload the sink: names the stream from the key; decodes and checks the `log_batch`
//! (a malformed or unknown-version payload is counted and dropped, never fatal); drops rows whose
//! sequence number it already accepted (committed in a file, or buffered in an open one); turns
//! the rest into table rows ([`crate::logs_table`]); and appends them to the open file of their
//! `date=/hour=` partition (by `ts`). Files are finished when they reach `max_file_bytes`, when
//! they are older than `max_file_age`, and at shutdown ([`LogsSink::finish_due`]); the commit
//! protocol (`crate::group`) commits them and tells the sink the outcome ([`LogsSink::settle`]).
//!
//! State per stream: `committed` (in a committed file; rebuilt from footers and the commit log at
//! start, and from the log's records while a standby) and `accepted` (committed or in an open
//! file). If a file cannot be committed its ranges are forgotten from `accepted`, so a resend of
//! those rows is taken again. A standby sink (`set_leading(false)`) takes heads but asks for no
//! replays.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{TimestampMicrosecondType, UInt64Type};
use switchboard_bus::refusals::{refuse, Reason};
use switchboard_bus::tables;
use switchboard_bus::wire::control::Heads;
use switchboard_bus::wire::log_batch;
use switchboard_bus::StreamId;

use crate::log::{FileEntry, STAGING_DIR};
use crate::logs_table::LogsTable;
use crate::ranges::RangeSet;
use crate::stats::CollectorStats;
use crate::store::Store;
use crate::writer::{FileSettings, PartitionFile, WriteError};

const MICROS_PER_HOUR: i64 = 3_600_000_000;
/// A gap must be seen this long before it is pulled: records in flight are not gaps.
const GAP_GRACE: Duration = Duration::from_millis(1500);
/// A replay request is repeated after this long if the gap is still there.
const REPLAY_RETRY: Duration = Duration::from_secs(5);
/// Rows asked for in one replay request; the rest follows with the next heads.
pub const MAX_REPLAY_ROWS: u64 = 262_144;

/// Per stream: what is committed and what is accepted, and gap repair state.
#[derive(Debug, Default)]
struct StreamState {
    committed: RangeSet,
    accepted: RangeSet,
    /// When the current gap was first seen.
    gap_since: Option<Instant>,
    /// When a replay was last asked for.
    replay_asked: Option<Instant>,
    /// The agent's last announced head (next sequence number).
    head: u64,
    /// The agent's last announced `acked`: the first record it can still send. Below it, a
    /// record not committed here never will be (another collector took it, or the dataset was
    /// restored from an older backup): the watermark goes on past such a gap, or the agent
    /// could never acknowledge anything again.
    floor: u64,
    /// The end of the gaps given up for good: holes between committed records that were below
    /// an agent's `acked` (a restore). They stay given up when a later `acked` is lower (the
    /// node rebuilt empty numbers its own records on above what is held, not into the hole).
    given_up: u64,
    /// Heads not yet committed, oldest first, each with when it was first announced: the lag
    /// is the age of the first one past the committed prefix (the oldest record not committed).
    /// Under steady traffic the prefix is always behind the newest head, never for long.
    behind: VecDeque<(u64, Instant)>,
}

/// Most heads [`StreamState::behind`] keeps; past it the newest entry takes the new head (and
/// the lag of the newest records reads a little high, never low).
const MAX_BEHIND: usize = 64;

impl StreamState {
    /// The committed contiguous prefix's end (the next sequence number to commit).
    fn done(&self) -> u64 {
        self.committed.contiguous_above(self.floor_here()).map_or(0, |w| w.saturating_add(1))
    }

    /// The floor below which records not committed here count as done: the agent's `acked`,
    /// but never past a record this collector holds and has not committed yet (a forged heads
    /// document must not make it acknowledge what a crash would lose).
    fn floor_here(&self) -> u64 {
        let pending = self.accepted.first_not_in(&self.committed).unwrap_or(u64::MAX);
        self.floor.min(self.head).max(self.given_up).min(pending)
    }

    /// When the oldest record not committed was first announced (`None` if none).
    fn behind_since(&self) -> Option<Instant> {
        let done = self.done();
        self.behind.iter().find(|(head, _)| *head > done).map(|(_, t)| *t)
    }

    /// Take a new head.
    fn announce(&mut self, head: u64) {
        self.head = head;
        let done = self.done();
        while self.behind.front().is_some_and(|(h, _)| *h <= done) {
            self.behind.pop_front();
        }
        // An agent's heads only grow: one above the newest head was not its own (a forged heads
        // document), and would keep the lag aging for good.
        while self.behind.back().is_some_and(|(h, _)| *h > head) {
            self.behind.pop_back();
        }
        let full = self.behind.len() >= MAX_BEHIND;
        match self.behind.back_mut() {
            _ if head <= done => {}
            Some((newest, _)) if head <= *newest => {}
            Some((newest, _)) if full => *newest = head,
            _ => self.behind.push_back((head, Instant::now())),
        }
    }
}

/// What the sink reports for health and metrics.
#[derive(Debug, Clone, Default)]
pub struct SinkStatus {
    /// Per stream: committed contiguous prefix.
    pub watermarks: BTreeMap<StreamId, u64>,
    /// Per stream: how far behind the agent's head its commits are.
    pub lag: BTreeMap<StreamId, Lag>,
    /// The last write or commit error, while it is not followed by a successful commit.
    pub failing: Option<String>,
    /// Files open (uncommitted).
    pub open_files: usize,
    /// The epoch this collector writes under; `None` for a standby (which publishes no
    /// watermarks).
    pub epoch: Option<u64>,
    /// When the status was taken.
    pub at: Option<Instant>,
}

/// How far one stream's commits are behind its agent's head.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Lag {
    /// Records announced and not committed, as of the status.
    pub records: u64,
    /// The committed prefix's end (the next sequence number to commit), as of the status.
    pub done: u64,
    /// When the oldest record not committed was first announced. An instant, not an age, so the
    /// age read from a status keeps growing while the intake is held up (a commit retrying
    /// against a failing store publishes no new status).
    pub since: Option<Instant>,
}

impl Lag {
    /// The age of the oldest record not committed, now (0 if none).
    pub fn seconds(&self) -> f64 {
        self.since.map_or(0.0, |t| t.elapsed().as_secs_f64())
    }

    /// The lag now, given the newest head the bus has delivered since (`announced`, which moves
    /// while the sink is held up and takes no heads) and when the status was taken (`at`):
    /// records announced after the status count as waiting since then (high, never low).
    pub fn now(&self, announced: u64, at: Option<Instant>) -> Lag {
        let records = self.records.max(announced.saturating_sub(self.done));
        let since = self.since.or(at.filter(|_| records > self.records));
        Lag { records, since, done: self.done }
    }
}

/// A range of one stream to pull from its agent's replay queryable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRequest {
    /// The stream.
    pub stream: StreamId,
    /// First sequence number.
    pub from: u64,
    /// Last sequence number (inclusive).
    pub to: u64,
}

/// Most partition files a sink keeps open (each buffers up to a row group): rows for one more hour
/// finish the file opened first, which goes out with the next commit. Rows spread over many
/// hours (late data, or a peer's made-up timestamps) make more, smaller files, never more memory.
pub const MAX_OPEN_FILES: usize = 32;

/// Writes the `logs` table; see the module docs.
pub struct LogsSink {
    table: LogsTable,
    settings: FileSettings,
    store: Store,
    leading: bool,
    max_file_bytes: usize,
    max_file_age: Duration,
    streams: HashMap<StreamId, StreamState>,
    /// Streams opened by batches and heads in this run, per node and in all, for the caps:
    /// those of the dataset (recovered at start, or committed by another writer) do not count,
    /// so a flood of made-up names refused at the cap does not keep new nodes out for good.
    per_node: HashMap<String, usize>,
    opened: usize,
    /// Open files by hour since the epoch.
    open: BTreeMap<i64, PartitionFile>,
    /// Files finished early to keep at most [`MAX_OPEN_FILES`] open, for the next commit.
    finished_early: Vec<FileEntry>,
    files_created: u64,
    watermarks_changed: bool,
    failing: Option<String>,
    /// A store that stays down fails every commit: said at most once a minute.
    commit_failures: switchboard_bus::throttle::Throttle,
    /// Data file writes that failed are logged at most once a minute (a full disk fails each).
    write_failures: switchboard_bus::throttle::Throttle,
    /// A gap asked for again and again (an agent that cannot answer, a store that is down so
    /// that every pulled range is lost again) is said at most once per 30 s.
    gap_lines: switchboard_bus::throttle::Throttle,
    stats: Arc<CollectorStats>,
}

impl LogsSink {
    /// A sink writing table `settings.table` of `store`, knowing what is already `committed`.
    /// It starts leading (writing); see [`LogsSink::set_leading`].
    pub fn new(
        table: LogsTable,
        settings: FileSettings,
        store: Store,
        max_file_bytes: usize,
        max_file_age: Duration,
        committed: BTreeMap<StreamId, RangeSet>,
        stats: Arc<CollectorStats>,
    ) -> Self {
        let streams: HashMap<StreamId, StreamState> = committed
            .into_iter()
            .map(|(k, set)| (k, StreamState { accepted: set.clone(), committed: set, ..StreamState::default() }))
            .collect();
        Self {
            table,
            settings,
            store,
            leading: true,
            max_file_bytes,
            max_file_age,
            streams,
            per_node: HashMap::new(),
            opened: 0,
            open: BTreeMap::new(),
            finished_early: Vec::new(),
            files_created: 0,
            watermarks_changed: true,
            failing: None,
            commit_failures: switchboard_bus::throttle::Throttle::new(Duration::from_secs(60)),
            write_failures: switchboard_bus::throttle::Throttle::new(Duration::from_secs(60)),
            gap_lines: switchboard_bus::throttle::Throttle::new(Duration::from_secs(30)),
            stats,
        }
    }

    /// Since when the oldest record an agent announced and no collector committed has waited.
    pub fn oldest_waiting(&self) -> Option<Instant> {
        self.streams.values().filter_map(StreamState::behind_since).min()
    }

    /// Health and lag figures.
    pub fn status(&self) -> SinkStatus {
        let lag = self
            .streams
            .iter()
            .filter(|(_, s)| s.head > 0)
            .map(|(k, s)| {
                let lag = Lag { records: s.head.saturating_sub(s.done()), done: s.done(), since: s.behind_since() };
                (k.clone(), lag)
            })
            .collect();
        SinkStatus {
            watermarks: self.watermarks(),
            lag,
            failing: self.failing.clone(),
            open_files: self.open.len(),
            epoch: None,
            at: Some(Instant::now()),
        }
    }

    /// The table's name (its directory below the dataset root).
    pub fn table_name(&self) -> &str {
        &self.settings.table
    }

    /// Whether this sink writes (the collector leads) or only follows (a standby: heads are
    /// taken, replays are not asked for).
    pub fn set_leading(&mut self, leading: bool) {
        self.leading = leading;
    }

    /// Whether a commit moved a watermark since the last call.
    pub fn take_watermarks_changed(&mut self) -> bool {
        std::mem::take(&mut self.watermarks_changed)
    }

    /// The state of `id`, opened if the caps leave room: [`crate::MAX_STREAMS_PER_NODE`] of one
    /// node, [`crate::MAX_STREAMS`] in all, opened in this run (names come from peers, and any
    /// zenoh client may publish under a node name of its own). `None` (refused, counted) past them.
    fn open_stream(&mut self, id: &StreamId) -> Option<&mut StreamState> {
        if !self.streams.contains_key(id) {
            let of_node = self.per_node.get(&id.node).copied().unwrap_or(0);
            if of_node >= crate::MAX_STREAMS_PER_NODE {
                refuse(
                    Reason::StreamsTooMany,
                    format_args!("{id}: node {} already opened {} streams", id.node, crate::MAX_STREAMS_PER_NODE),
                );
                return None;
            }
            if self.opened >= crate::MAX_STREAMS {
                refuse(Reason::StreamsTooMany, format_args!("{id}: {} streams were opened in all", crate::MAX_STREAMS));
                return None;
            }
            *self.per_node.entry(id.node.clone()).or_default() += 1;
            self.opened += 1;
        }
        Some(self.known_stream(id))
    }

    /// The state of `id`, which is in the dataset already (committed here or by another writer).
    fn known_stream(&mut self, id: &StreamId) -> &mut StreamState {
        self.streams.entry(id.clone()).or_default()
    }

    /// Compare a node's heads with what is accepted; return the ranges to pull. A gap is pulled
    /// once it has been seen for [`GAP_GRACE`] (so that batches in flight are not asked for
    /// twice), and again every [`REPLAY_RETRY`] while it stays.
    pub fn on_heads(&mut self, node: &str, heads: &Heads) -> Vec<ReplayRequest> {
        let mut out = Vec::new();
        for (stream, &head) in &heads.streams {
            let Some(id) = StreamId::parse_local(node, stream) else { continue };
            let floor = heads.acked.get(stream).copied().unwrap_or(0);
            let (leading, stats) = (self.leading, self.stats.clone());
            let Some(state) = self.open_stream(&id) else { continue };
            (state.floor, state.head) = (floor.min(head), head);
            // Given up: a hole below committed records. Past all of them a number may still come
            // (in flight; or a forged `acked`), so it is neither counted nor kept as given up.
            let top = state.committed.max().map_or(0, |m| m.saturating_add(1));
            let passed = state.floor_here().min(top);
            let from = state.committed.contiguous_from_zero().map_or(0, |w| w.saturating_add(1)).max(state.given_up);
            let missing = passed.saturating_sub(from).saturating_sub(state.committed.count_in(from, passed));
            // Counted by the writer only: a standby may not have read the writer's last commits.
            if missing > 0 && leading {
                stats.records_given_up.fetch_add(missing, Ordering::Relaxed);
                tracing::error!(
                    stream = %id,
                    "{missing} of the records {from} to {} were never committed here and the agent can no longer send \
                     them (it acknowledged them to another collector, the dataset was restored from an older \
                     backup, or the agent lost them before any collector held them: its log says so): the \
                     watermark goes on past them",
                    passed - 1
                );
            }
            if leading {
                state.given_up = state.given_up.max(passed);
            }
            state.announce(head);
            let gaps = state.accepted.gaps(floor, head);
            if gaps.is_empty() {
                state.gap_since = None;
                continue;
            }
            let since = *state.gap_since.get_or_insert_with(Instant::now);
            if !leading {
                continue;
            }
            let retry_due = state.replay_asked.is_none_or(|t| t.elapsed() >= REPLAY_RETRY);
            if since.elapsed() < GAP_GRACE || !retry_due {
                continue;
            }
            state.replay_asked = Some(Instant::now());
            let mut budget = MAX_REPLAY_ROWS;
            for (a, b) in gaps {
                if budget == 0 {
                    break;
                }
                let to = b.min(a + budget - 1);
                budget -= to - a + 1;
                out.push(ReplayRequest { stream: id.clone(), from: a, to });
            }
            self.stats.gaps_detected.fetch_add(1, Ordering::Relaxed);
            if let Some(unsaid) = self.gap_lines.admit() {
                tracing::info!(stream = %id, ranges = out.len(), head, gaps_since_last_line = unsaid, "gap detected; pulling it from the agent");
            }
        }
        out
    }

    /// The highest sequence number up to which each stream is committed without a gap.
    pub fn watermarks(&self) -> BTreeMap<StreamId, u64> {
        self.streams.iter().filter_map(|(k, s)| Some((k.clone(), s.done().checked_sub(1)?))).collect()
    }

    /// Take one `log_batch` payload of `stream` (`replayed`: an answer to a replay query).
    pub fn handle(&mut self, stream: &StreamId, payload: &[u8], replayed: bool) {
        let stats = self.stats.clone();
        stats.payloads_received.fetch_add(1, Ordering::Relaxed);
        let batch = match log_batch::decode(payload) {
            Ok(b) => b,
            Err(e) => {
                stats.payloads_malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%stream, error = %e, "dropping a malformed payload");
                return;
            }
        };
        let n = batch.num_rows();
        stats.rows_received.fetch_add(n as u64, Ordering::Relaxed);
        if replayed {
            stats.rows_replayed.fetch_add(n as u64, Ordering::Relaxed);
        }
        let Some(state) = self.open_stream(stream) else { return };
        let seqs = batch.column(0).as_primitive::<UInt64Type>();
        // Which rows are new, and their sequence numbers.
        let mut fresh = RangeSet::new();
        let all_new = state.accepted.max().is_none_or(|m| seqs.values().iter().all(|&s| s > m))
            && seqs.values().windows(2).all(|w| w[0] < w[1]);
        let batch = if all_new {
            for &s in seqs.values() {
                fresh.insert(s, s);
            }
            batch
        } else {
            let mask: BooleanArray = seqs
                .values()
                .iter()
                .map(|&s| {
                    let new = !state.accepted.contains(s) && !fresh.contains(s);
                    if new {
                        fresh.insert(s, s);
                    }
                    Some(new)
                })
                .collect();
            match filter_record_batch(&batch, &mask) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot filter a batch");
                    return;
                }
            }
        };
        let dups = n - batch.num_rows();
        stats.rows_duplicate.fetch_add(dups as u64, Ordering::Relaxed);
        if batch.num_rows() == 0 {
            return;
        }
        state.accepted.extend(&fresh);
        let (rows, failures) = match self.table.to_rows(stream, &batch) {
            Ok(r) => r,
            Err(e) => {
                stats.payloads_malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%stream, error = %e, "dropping a payload that does not fit the table");
                self.forget(stream);
                return;
            }
        };
        stats.promote_failures.fetch_add(failures, Ordering::Relaxed);
        for (hour, part, seqs) in split_by_hour(&rows) {
            self.write(hour, stream, &part, &seqs);
        }
    }

    fn forget(&mut self, stream: &StreamId) {
        // Rebuild `accepted` from what is committed and what the open files still hold.
        let Some(state) = self.streams.get_mut(stream) else { return };
        let mut accepted = state.committed.clone();
        for f in self.open.values() {
            if let Some(r) = f.ranges().get(stream) {
                accepted.extend(r);
            }
        }
        state.accepted = accepted;
    }

    fn write(&mut self, hour: i64, stream: &StreamId, rows: &RecordBatch, seqs: &RangeSet) {
        if !self.open.contains_key(&hour) {
            if self.open.len() >= MAX_OPEN_FILES {
                let oldest = self.open.iter().min_by_key(|(_, f)| f.opened()).map(|(h, _)| *h);
                if let Some(entry) = oldest.and_then(|h| self.finish(h)) {
                    self.finished_early.push(entry);
                }
            }
            match self.create(hour) {
                Ok(f) => {
                    self.open.insert(hour, f);
                }
                Err(e) => {
                    self.write_failed("create", "rows dropped until a resend", &e);
                    self.forget(stream);
                    return;
                }
            }
        }
        let Some(file) = self.open.get_mut(&hour) else { return };
        if let Err(e) = file.write(rows, stream, seqs, &self.settings) {
            self.write_failed("write", "abandoning it", &e);
            self.abandon(hour);
            return;
        }
        self.stats.rows_accepted.fetch_add(rows.num_rows() as u64, Ordering::Relaxed);
    }

    fn create(&mut self, hour: i64) -> Result<PartitionFile, WriteError> {
        self.files_created += 1;
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let (table, writer) = (&self.settings.table, &self.settings.writer);
        let name = format!("part-{writer}-{now_ms}-{:06}.parquet", self.files_created);
        let entry = FileEntry {
            table: table.clone(),
            staging: format!("{STAGING_DIR}/{writer}/{table}/.{name}.tmp"),
            path: format!("{}/{name}", tables::partition_dir(table, hour)),
            rows: 0,
            ranges: BTreeMap::new(),
        };
        let local = self.store.writing_path(&entry.staging);
        PartitionFile::create(local, entry, self.table.schema(), &self.settings)
    }

    /// Finish the open files that are due (past `max_file_age`, or all of them with `all`) and
    /// return them for the commit protocol. A file that cannot be finished is dropped and its
    /// rows forgotten (pulled again).
    pub fn finish_due(&mut self, all: bool) -> Vec<FileEntry> {
        let due: Vec<i64> = self
            .open
            .iter()
            .filter(|(_, f)| {
                all || f.opened().elapsed() >= self.max_file_age || f.approx_bytes() >= self.max_file_bytes
            })
            .map(|(h, _)| *h)
            .collect();
        let mut out = std::mem::take(&mut self.finished_early);
        out.extend(due.into_iter().filter_map(|hour| self.finish(hour)));
        out
    }

    /// A data file could not be `what` (created, written, finished): counted, logged at most once
    /// a minute with what happens `then`, and said in `/health` until a commit succeeds.
    fn write_failed(&mut self, what: &str, then: &str, e: &WriteError) {
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        if let Some(unsaid) = self.write_failures.admit() {
            tracing::error!(error = %e, failed_since_last_line = unsaid, "cannot {what} a data file; {then}");
        }
        self.failing = Some(format!("cannot {what} a data file: {e}"));
    }

    /// Finish the file of `hour`; `None` if it cannot be (its rows are forgotten, pulled again).
    fn finish(&mut self, hour: i64) -> Option<FileEntry> {
        let file = self.open.remove(&hour)?;
        let streams: Vec<StreamId> = file.ranges().keys().cloned().collect();
        match file.finish(&self.settings) {
            Ok(entry) => Some(entry),
            Err(e) => {
                // Writing the footer and syncing the file are writes of the data file (a full
                // disk fails here): counted as such, not as a commit.
                self.write_failed("finish", "its rows are pulled again from the agents", &e);
                for s in streams {
                    self.forget(&s);
                }
                None
            }
        }
    }

    /// The commit protocol's outcome for files of this table that [`LogsSink::finish_due`]
    /// returned: committed (`Ok`), or not (`Err(why)`: their rows are forgotten, and pulled again).
    pub fn settle(&mut self, files: &[FileEntry], outcome: Result<(), &str>) {
        match outcome {
            Ok(()) => {
                for f in files {
                    for (stream, set) in &f.ranges {
                        self.known_stream(stream).committed.extend(set);
                    }
                    self.stats.rows_committed.fetch_add(f.rows, Ordering::Relaxed);
                    self.stats.files_committed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(path = %f.path, rows = f.rows, "committed");
                }
                self.watermarks_changed = true;
                if self.failing.take().is_some() {
                    tracing::info!("commits succeed again");
                }
            }
            Err(why) => {
                self.stats.commit_errors.fetch_add(1, Ordering::Relaxed);
                let rows: u64 = files.iter().map(|f| f.rows).sum();
                if let Some(unsaid) = self.commit_failures.admit() {
                    tracing::error!(
                        error = why,
                        rows,
                        failed_since_last_line = unsaid,
                        "commit failed; the rows are pulled again from the agents"
                    );
                }
                self.failing = Some(format!("commit failed: {why}"));
                // The files themselves are the commit protocol's: a commit whose outcome is
                // unknown must leave its staged file for the next writer to publish.
                for f in files {
                    for stream in f.ranges.keys() {
                        self.forget(stream);
                    }
                }
            }
        }
    }

    /// Ranges another writer committed (read from the commit log).
    pub fn apply_committed(&mut self, ranges: &BTreeMap<StreamId, RangeSet>) {
        for (stream, set) in ranges {
            let state = self.known_stream(stream);
            state.committed.extend(set);
            state.accepted.extend(set);
        }
        self.watermarks_changed = true;
    }

    /// Drop every open file (this collector stopped writing): their rows are forgotten.
    pub fn abandon_all(&mut self) {
        let hours: Vec<i64> = self.open.keys().copied().collect();
        for hour in hours {
            self.abandon(hour);
        }
        for f in std::mem::take(&mut self.finished_early) {
            for stream in f.ranges.keys() {
                self.forget(stream);
            }
            let _ = std::fs::remove_file(self.store.writing_path(&f.staging));
        }
        self.failing = None;
    }

    fn abandon(&mut self, hour: i64) {
        if let Some(file) = self.open.remove(&hour) {
            let streams: Vec<StreamId> = file.ranges().keys().cloned().collect();
            file.abandon();
            for s in streams {
                self.forget(&s);
            }
        }
    }

    /// Finish the due open files (every one with `all`) and publish them straight, without the
    /// commit log: for a tool that writes a dataset no collector shares (a benchmark's generator,
    /// a test) on a local store.
    pub fn commit_standalone(&mut self, all: bool) {
        let files = self.finish_due(all);
        let mut published = Vec::new();
        for f in files {
            let done = futures::executor::block_on(async {
                self.store.publish(&f.staging, &f.path).await?;
                self.store.delete(&f.staging).await
            });
            match done {
                Ok(()) => published.push(f),
                Err(e) => {
                    let why = e.to_string();
                    let _ = std::fs::remove_file(self.store.writing_path(&f.staging));
                    self.settle(std::slice::from_ref(&f), Err(&why));
                }
            }
        }
        self.settle(&published, Ok(()));
    }
}

/// Split table rows by the hour of `ts`: `(hour since epoch, rows, their sequence numbers)`.
fn split_by_hour(rows: &RecordBatch) -> Vec<(i64, RecordBatch, RangeSet)> {
    let ts = rows.column(3).as_primitive::<TimestampMicrosecondType>();
    let seq = rows.column(2).as_primitive::<arrow::datatypes::Int64Type>();
    let hour_of = |t: i64| t.div_euclid(MICROS_PER_HOUR);
    let seqs_of = |rows: &RecordBatch| {
        let mut set = RangeSet::new();
        for &s in rows.column(2).as_primitive::<arrow::datatypes::Int64Type>().values() {
            set.insert(s as u64, s as u64);
        }
        set
    };
    let first = ts.values().first().map_or(0, |&t| hour_of(t));
    if ts.values().iter().all(|&t| hour_of(t) == first) {
        let mut set = RangeSet::new();
        for &s in seq.values() {
            set.insert(s as u64, s as u64);
        }
        return vec![(first, rows.clone(), set)];
    }
    let mut hours: Vec<i64> = ts.values().iter().map(|&t| hour_of(t)).collect();
    hours.sort_unstable();
    hours.dedup();
    let mut out = Vec::with_capacity(hours.len());
    for h in hours {
        let mask: BooleanArray = ts.values().iter().map(|&t| Some(hour_of(t) == h)).collect();
        match filter_record_batch(rows, &mask) {
            Ok(part) => {
                let set = seqs_of(&part);
                out.push((h, part, set));
            }
            Err(e) => tracing::error!(error = %e, "cannot split a batch by hour"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogsTableConfig;
    use crate::recovery::recover;
    use crate::store::Store;
    use crate::writer::FileSettings;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use switchboard_bus::wire::log_batch::{LogBatchBuilder, LogRow};
    use switchboard_bus::StreamKind;

    const HOUR: i64 = MICROS_PER_HOUR;
    const T0: i64 = 1_795_000_000_000_000 / HOUR * HOUR;

    fn sink(dir: &std::path::Path, max_file_bytes: usize) -> (LogsSink, Arc<CollectorStats>) {
        let promote = LogsTableConfig::default().promote;
        let settings = FileSettings {
            table: "logs".into(),
            table_version: 1,
            writer: "t".into(),
            properties: FileSettings::properties(1, 1024, &["msg_id".to_owned()]),
            row_group_max_bytes: 1 << 20,
        };
        let stats = Arc::new(CollectorStats::default());
        let committed = recover(&dir.join("logs")).unwrap().committed;
        let s = LogsSink::new(
            LogsTable::new(promote),
            settings,
            Store::Local { root: dir.to_owned() },
            max_file_bytes,
            Duration::from_secs(3600),
            committed,
            stats.clone(),
        );
        (s, stats)
    }

    fn payload(seqs: impl IntoIterator<Item = u64>, ts: impl Fn(u64) -> i64) -> Vec<u8> {
        let mut b = LogBatchBuilder::new();
        for s in seqs {
            let row = LogRow {
                seq: s,
                ts_micros: ts(s),
                observed_micros: ts(s),
                file: "/var/log/x.log",
                offset: s * 10,
                level: Some("info"),
                message: "hello",
                raw: None,
                truncated: false,
            };
            b.append(&row, &[("msg_id", format!("m{s}"))]);
        }
        log_batch::encode(&b.finish().unwrap()).unwrap()
    }

    fn id() -> StreamId {
        StreamId { node: "gw".into(), kind: StreamKind::Log, name: "app".into() }
    }

    /// Under steady traffic the committed prefix is always behind the newest head; the lag is
    /// the age of the oldest record not committed, not how long the prefix has been behind.
    #[test]
    fn heads_the_bus_delivered_after_the_status_count_in_the_lag_now() {
        let at = Instant::now();
        let caught_up = Lag { records: 0, done: 100, since: None };
        assert_eq!(caught_up.now(100, Some(at)), caught_up);
        let held_up = caught_up.now(150, Some(at));
        assert_eq!((held_up.records, held_up.since), (50, Some(at)), "waiting since the status at most");
        let earlier = at.checked_sub(Duration::from_secs(1));
        let behind = Lag { records: 10, done: 100, since: earlier };
        assert_eq!((behind.now(150, Some(at)).records, behind.now(150, Some(at)).since), (50, earlier));
        assert_eq!(behind.now(90, Some(at)), behind, "an older head changes nothing");
    }

    #[test]
    fn the_lag_is_the_age_of_the_oldest_record_not_committed() {
        let lag = |st: &StreamState| Lag { records: 0, done: 0, since: st.behind_since() };
        let mut st = StreamState::default();
        st.announce(100);
        std::thread::sleep(Duration::from_millis(60));
        assert!(lag(&st).seconds() >= 0.06);
        // A status taken once keeps aging (the intake may be held up by a commit retrying).
        let taken = lag(&st);
        std::thread::sleep(Duration::from_millis(30));
        assert!(taken.seconds() >= 0.09, "{} s", taken.seconds());
        for round in 1..=10u64 {
            st.committed.insert(0, round * 100 - 1); // what was announced before is committed
            st.announce((round + 1) * 100);
            std::thread::sleep(Duration::from_millis(30));
        }
        assert!(lag(&st).seconds() < 0.3, "{} s", lag(&st).seconds());
        st.committed.insert(0, 1099);
        assert_eq!(lag(&st).seconds(), 0.0);
        // Bounded whatever the heads: the newest entry takes the head past the bound.
        for h in 1200..1200 + 10 * MAX_BEHIND as u64 {
            st.announce(h);
        }
        assert_eq!(st.behind.len(), MAX_BEHIND);
        assert_eq!(st.behind.back().map(|b| b.0), Some(1199 + 10 * MAX_BEHIND as u64));
        // A forged head far ahead ages the lag only until the agent's next head.
        st.committed.insert(0, 1199 + 10 * MAX_BEHIND as u64);
        st.announce(u64::MAX);
        std::thread::sleep(Duration::from_millis(30));
        assert!(lag(&st).seconds() >= 0.03);
        st.announce(1200 + 10 * MAX_BEHIND as u64);
        assert_eq!(lag(&st).seconds(), 0.0, "{:?}", st.behind);
    }

    #[test]
    fn malformed_payloads_are_counted_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, stats) = sink(dir.path(), 1 << 30);
        s.handle(&id(), b"\xff\x00garbage", false);
        s.handle(&id(), &[], false);
        assert_eq!(CollectorStats::get(&stats.payloads_malformed), 2);
        s.handle(&id(), &payload(0..3, |_| T0), false);
        assert_eq!(CollectorStats::get(&stats.rows_accepted), 3);
    }

    /// `payload(0..n)` with column `i` replaced, as a publisher of its own might send it.
    fn with_column(n: u64, i: usize, field: arrow::datatypes::Field, column: arrow::array::ArrayRef) -> Vec<u8> {
        let batch = log_batch::decode(&payload(0..n, |_| T0)).unwrap();
        let schema = batch.schema();
        let mut fields: Vec<arrow::datatypes::FieldRef> = schema.fields().iter().cloned().collect();
        fields[i] = Arc::new(field);
        let mut columns = batch.columns().to_vec();
        columns[i] = column;
        let schema = arrow::datatypes::Schema::new_with_metadata(fields, schema.metadata().clone());
        log_batch::encode(&RecordBatch::try_new(Arc::new(schema), columns).unwrap()).unwrap()
    }

    #[test]
    fn a_schema_mismatch_names_the_field_that_differs() {
        use arrow::array::{LargeStringArray, MapBuilder, MapFieldNames, StringBuilder};
        use arrow::datatypes::{DataType, Field};
        // pyarrow's default map entry names (and the names it reads back whatever the wire said).
        let names = MapFieldNames { entry: "entries".into(), key: "key".into(), value: "value".into() };
        let mut map = MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new());
        for _ in 0..3 {
            map.keys().append_value("msg_id");
            map.values().append_value("m");
            map.append(true).unwrap();
        }
        let map = map.finish();
        let field = Field::new("fields", arrow::array::Array::data_type(&map).clone(), false);
        let err = log_batch::decode(&with_column(3, 10, field, Arc::new(map))).unwrap_err().to_string();
        assert!(err.contains("`fields.entries`: field 0 is named `key`, expected `keys`"), "{err}");

        let level = LargeStringArray::from(vec![Some("info"); 3]);
        let field = Field::new("level", DataType::LargeUtf8, true);
        let err = log_batch::decode(&with_column(3, 5, field, Arc::new(level))).unwrap_err().to_string();
        assert!(err.contains("`level` has type LargeUtf8, expected Utf8"), "{err}");

        let seq = arrow::array::UInt64Array::from(vec![0, 1, 2]);
        let field = Field::new("seq", DataType::UInt64, true);
        let err = log_batch::decode(&with_column(3, 0, field, Arc::new(seq))).unwrap_err().to_string();
        assert!(err.contains("`seq` is nullable, expected not nullable"), "{err}");

        let message = arrow::array::StringArray::from(vec!["m"; 3]);
        let field = Field::new("msg", DataType::Utf8, false);
        let err = log_batch::decode(&with_column(3, 6, field, Arc::new(message))).unwrap_err().to_string();
        assert!(err.contains("column 6 is named `msg`, expected `message`"), "{err}");

        // The sink counts such a payload as malformed and stores nothing of it.
        let dir = tempfile::tempdir().unwrap();
        let (mut s, stats) = sink(dir.path(), 1 << 30);
        let level = LargeStringArray::from(vec![Some("info"); 3]);
        s.handle(&id(), &with_column(3, 5, Field::new("level", DataType::LargeUtf8, true), Arc::new(level)), false);
        assert_eq!(CollectorStats::get(&stats.payloads_malformed), 1);
        assert_eq!(CollectorStats::get(&stats.rows_accepted), 0);
    }

    #[test]
    fn duplicates_are_dropped_across_open_files_commits_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, stats) = sink(dir.path(), 1 << 30);
        s.handle(&id(), &payload(0..100, |_| T0), false);
        s.handle(&id(), &payload(50..150, |_| T0), false); // half already open
        assert_eq!(CollectorStats::get(&stats.rows_duplicate), 50);
        s.commit_standalone(true);
        s.handle(&id(), &payload(0..150, |_| T0), false); // all committed
        assert_eq!(CollectorStats::get(&stats.rows_duplicate), 200);
        assert_eq!(s.watermarks().get(&StreamId::log("gw", "app")), Some(&149));
        s.commit_standalone(true);
        drop(s);
        // A new sink over the same directory knows it all from the footers.
        let (mut s, stats) = sink(dir.path(), 1 << 30);
        s.handle(&id(), &payload(140..160, |_| T0), false);
        assert_eq!(CollectorStats::get(&stats.rows_duplicate), 10);
        assert_eq!(CollectorStats::get(&stats.rows_accepted), 10);
    }

    #[test]
    fn rows_split_by_hour_and_files_roll_by_size_with_bloom_filters() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, stats) = sink(dir.path(), 4096);
        // Two hours in one batch, then enough rows to pass the size limit several times.
        s.handle(&id(), &payload(0..10, |q| if q < 5 { T0 } else { T0 + HOUR }), false);
        for k in 0..20u64 {
            s.handle(&id(), &payload(10 + k * 500..10 + (k + 1) * 500, |_| T0), false);
            s.commit_standalone(false);
        }
        s.commit_standalone(true);
        assert!(CollectorStats::get(&stats.files_committed) >= 3, "size roll");
        let hour_dir = |t: i64| dir.path().join(tables::partition_dir("logs", t / 3_600_000_000));
        assert!(hour_dir(T0).is_dir());
        assert!(hour_dir(T0 + HOUR).is_dir());
        let table = dir.path().join("logs");
        let rec = recover(&table).unwrap();
        assert_eq!(rec.committed[&StreamId::log("gw", "app")].ranges(), &[(0, 10_009)]);
        // Every file has a Bloom filter on msg_id and none on message.
        let mut stack = vec![table.clone()];
        let mut files = 0;
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                files += 1;
                let r = SerializedFileReader::new(std::fs::File::open(&p).unwrap()).unwrap();
                let rg = r.metadata().row_group(0);
                let col = |name: &str| rg.columns().iter().find(|c| c.column_path().string() == name).unwrap();
                assert!(col("msg_id").bloom_filter_offset().is_some(), "{}", p.display());
                assert!(col("message").bloom_filter_offset().is_none());
            }
        }
        assert_eq!(files as u64, CollectorStats::get(&stats.files_committed));
    }

    #[test]
    fn rows_over_many_hours_keep_at_most_the_cap_of_files_open() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, stats) = sink(dir.path(), 1 << 30);
        // 100 rows, each in an hour of its own.
        s.handle(&id(), &payload(0..100, |q| T0 + q as i64 * HOUR), false);
        assert!(s.status().open_files <= MAX_OPEN_FILES, "{}", s.status().open_files);
        s.commit_standalone(true);
        assert_eq!(CollectorStats::get(&stats.files_committed), 100);
        let rec = recover(&dir.path().join("logs")).unwrap();
        assert_eq!(rec.committed[&StreamId::log("gw", "app")].ranges(), &[(0, 99)]);
    }

    #[test]
    fn a_node_opens_at_most_the_cap_of_streams() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, stats) = sink(dir.path(), 1 << 30);
        let one = payload(0..1, |_| T0);
        let refused = || switchboard_bus::refusals::count(Reason::StreamsTooMany);
        let before = refused();
        for i in 0..crate::MAX_STREAMS_PER_NODE + 500 {
            s.handle(&StreamId::log("gw", &format!("s{i}")), &one, false);
        }
        s.handle(&StreamId::log("gw2", "app"), &one, false);
        s.handle(&StreamId::log("gw", "s0"), &payload(1..2, |_| T0), false);
        // Refused as such, not counted as malformed too (they were well formed).
        // (Other tests refuse streams in this process at the same time: at least ours.)
        assert!(refused() - before >= 500, "the streams past the cap are refused");
        assert_eq!(CollectorStats::get(&stats.payloads_malformed), 0);
        s.commit_standalone(true);
        let rec = recover(&dir.path().join("logs")).unwrap();
        assert_eq!(rec.committed.len(), crate::MAX_STREAMS_PER_NODE + 1, "gw's first streams and gw2's");
        assert_eq!(rec.committed[&StreamId::log("gw", "s0")].ranges(), &[(0, 1)], "known streams go on");
        // The streams of the dataset do not count against the cap of a collector started on it.
        let (mut again, _) = sink(dir.path(), 1 << 30);
        again.handle(&StreamId::log("gw", "new"), &one, false);
        again.commit_standalone(true);
        let rec = recover(&dir.path().join("logs")).unwrap();
        assert_eq!(rec.committed[&StreamId::log("gw", "new")].ranges(), &[(0, 0)], "a new stream after a restart");
    }

    #[test]
    fn nodes_open_at_most_the_cap_of_streams_in_all() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, stats) = sink(dir.path(), 1 << 30);
        let refused = || switchboard_bus::refusals::count(Reason::StreamsTooMany);
        let before = refused();
        // Node names a peer makes up, one stream each: heads, then a log batch.
        let heads = Heads { streams: [("log/app".to_owned(), 5)].into(), ..Heads::default() };
        for i in 0..crate::MAX_STREAMS + 50 {
            s.on_heads(&format!("n{i}"), &heads);
        }
        s.handle(&StreamId::log("one-more", "app"), &payload(0..1, |_| T0), false);
        // (Other tests refuse streams in this process at the same time: at least ours.)
        assert!(refused() - before >= 51, "the streams past the cap are refused");
        assert_eq!(s.streams.len(), crate::MAX_STREAMS);
        assert_eq!(s.status().lag.len(), crate::MAX_STREAMS);
        assert_eq!(CollectorStats::get(&stats.rows_accepted), 0);
    }

    #[test]
    fn a_gap_the_agent_can_no_longer_send_is_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, stats) = sink(dir.path(), 1 << 30);
        // Committed 0..9 and 20..29 (a restore lost 10..19, which the agent acknowledged before).
        s.handle(&id(), &payload(0..10, |_| T0), false);
        s.handle(&id(), &payload(20..30, |_| T0), false);
        s.commit_standalone(true);
        assert_eq!(s.watermarks().get(&id()), Some(&9));
        let heads = |acked: u64| Heads {
            streams: [("log/app".to_owned(), 30)].into(),
            acked: [("log/app".to_owned(), acked)].into(),
            ..Heads::default()
        };
        // The agent can still send 15..: only 10..14 are given up, and 15..19 are pulled.
        let asked = s.on_heads("gw", &heads(15));
        assert_eq!(asked.iter().map(|r| (r.from, r.to)).collect::<Vec<_>>(), []);
        assert_eq!(s.watermarks().get(&id()), Some(&14));
        assert_eq!(CollectorStats::get(&stats.records_given_up), 5);
        s.on_heads("gw", &heads(20));
        assert_eq!(s.watermarks().get(&id()), Some(&29));
        assert_eq!(CollectorStats::get(&stats.records_given_up), 10, "each record counted once");
        s.on_heads("gw", &heads(20));
        assert_eq!(CollectorStats::get(&stats.records_given_up), 10);
        // The node rebuilt empty (acked 0 again): the hole stays given up, so the writer's
        // watermark tells it to number on above 29, not into the hole.
        s.on_heads("gw", &heads(0));
        assert_eq!(s.watermarks().get(&id()), Some(&29));
        // Records held here but not committed yet are never passed over, whatever heads say
        // (a forged document must not make the agent forget what a crash would lose).
        s.handle(&id(), &payload(30..40, |_| T0), false);
        let forged = Heads {
            streams: [("log/app".to_owned(), 40)].into(),
            acked: [("log/app".to_owned(), 40)].into(),
            ..Heads::default()
        };
        s.on_heads("gw", &forged);
        assert_eq!(s.watermarks().get(&id()), Some(&29));
        assert_eq!(CollectorStats::get(&stats.records_given_up), 10);
        s.commit_standalone(true);
        assert_eq!(s.watermarks().get(&id()), Some(&39));
        // An `acked` past every committed record (in flight, or forged) is not counted as lost,
        // however often it comes, and replays are asked from it.
        let ahead = Heads {
            streams: [("log/app".to_owned(), 60)].into(),
            acked: [("log/app".to_owned(), 50)].into(),
            ..Heads::default()
        };
        for _ in 0..3 {
            s.on_heads("gw", &ahead);
        }
        assert_eq!(CollectorStats::get(&stats.records_given_up), 10);
    }

    #[test]
    fn a_failed_commit_leaves_nothing_visible_and_forgets_the_rows() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, stats) = sink(dir.path(), 1 << 30);
        s.handle(&id(), &payload(0..10, |_| T0), false);
        // A file where the table directory should be: the publish fails.
        std::fs::write(dir.path().join("logs"), b"").unwrap();
        s.commit_standalone(true);
        assert_eq!(CollectorStats::get(&stats.commit_errors), 1);
        assert!(s.watermarks().is_empty());
        std::fs::remove_file(dir.path().join("logs")).unwrap();
        // The same rows sent again are taken, not dropped as duplicates.
        s.handle(&id(), &payload(0..10, |_| T0), false);
        assert_eq!(CollectorStats::get(&stats.rows_duplicate), 0);
        s.commit_standalone(true);
        assert_eq!(s.watermarks().get(&StreamId::log("gw", "app")), Some(&9));
    }
}
