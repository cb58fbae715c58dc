//! Re-reading journaled batches for a collector that lacks them.
//!
//! [`replay`] takes the journal entries overlapping the requested range and re-reads each
//! segment from its open file handle with a fresh framer at the segment's start position, parsing
//! each line exactly as the tailer did ([`crate::tailer::append_line`], same read time), so every
//! line gets back its original sequence number. Rows outside the requested range are skipped.
//! A segment whose file is gone, begins with other bytes than when it was cut, or yields another
//! number of lines (the file was truncated or written over) sends none of its rows: the rest of
//! the range is still sent, the failure is said in an error reply, and a segment that keeps
//! failing for a minute is given up for lost (counted, and passed over: [`crate::journal`]).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use switchboard_bus::refusals::{refuse, Reason};
use switchboard_bus::throttle::Throttle;
use switchboard_bus::wire::control::MAX_REPLAY_RECORDS;
use switchboard_bus::wire::log_batch::{self, LogBatchBuilder};

use crate::config::SourceConfig;
use crate::framing::LineFramer;
use crate::journal::BatchRecord;
use crate::tailer::{append_line, LineCounts, LineFormat};

/// Rows per replayed payload.
const REPLAY_BATCH_ROWS: usize = 8192;

/// Why a segment could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file of a segment is no longer open (the agent restarted after it was deleted).
    #[error("file {0} of seq {1} is gone")]
    FileGone(String, u64),
    /// Reading failed.
    #[error("reading {0}: {1}")]
    Io(String, std::io::Error),
    /// The file no longer begins with the bytes it had when the segment was read: it was
    /// written over (`cp app.log app.log.1` onto an older `app.log.1`, say).
    #[error("file {path} was written over: its first bytes are not those it had when seq {seq} was read from it")]
    Rewritten {
        /// The file.
        path: String,
        /// First sequence number of the segment.
        seq: u64,
    },
    /// The file no longer holds the same lines.
    #[error("file {path} changed: segment of seq {seq} gave {got} lines, expected {want}")]
    Changed {
        /// The file.
        path: String,
        /// First sequence number of the segment.
        seq: u64,
        /// Lines found.
        got: u64,
        /// Lines journaled.
        want: u64,
    },
    /// Encoding failed (a bug).
    #[error("encoding: {0}")]
    Encode(String),
}

/// A segment that could not be rebuilt: its numbers `first..end` and why.
#[derive(Debug)]
pub struct Unreplayable {
    /// Its first sequence number.
    pub first: u64,
    /// One past its last.
    pub end: u64,
    /// Why.
    pub error: ReplayError,
}

/// Rebuild the rows `from..=to` of `entries` as `log_batch` payloads, handing each to `emit`:
/// one or more per segment, each once the whole segment was read back and found as it was cut
/// (its file's first bytes, its line count), so a file written over since sends nothing in
/// place of its lines. Memory is one segment's rows (a batch at most). Returns the rows rebuilt
/// and the segments that could not be, which are skipped: the rest of the range still comes.
pub fn replay(
    config: &SourceConfig,
    entries: &[(BatchRecord, Vec<Option<Arc<File>>>)],
    from: u64,
    to: u64,
    emit: &mut dyn FnMut(Vec<u8>),
) -> (u64, Vec<Unreplayable>) {
    let mut rows = 0u64;
    let mut failed = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    for (entry, handles) in entries {
        let mut seq = entry.first_seq;
        for (segment, handle) in entry.segments.iter().zip(handles) {
            let seg_first = seq;
            seq = seq.saturating_add(segment.lines);
            if segment.lines == 0 || seq <= from || seg_first > to {
                continue;
            }
            let path = segment.path.to_string_lossy().into_owned();
            let rebuilt = match handle {
                Some(file) => rebuild_segment(config, segment, file, seg_first, from, to, &path, &mut buf),
                None => Err(ReplayError::FileGone(path, seg_first)),
            };
            match rebuilt.and_then(|(payloads, n)| {
                let encoded: Result<Vec<Vec<u8>>, _> = payloads
                    .into_iter()
                    .map(|b| log_batch::encode(&b).map_err(|e| ReplayError::Encode(e.to_string())))
                    .collect();
                encoded.map(|p| (p, n))
            }) {
                Ok((payloads, n)) => {
                    payloads.into_iter().for_each(&mut *emit);
                    rows += n;
                }
                Err(error) => failed.push(Unreplayable { first: seg_first, end: seq, error }),
            }
        }
    }
    (rows, failed)
}

/// Read `segment` back from `file` and parse the lines of `from..=to` in it, as batches of at
/// most [`REPLAY_BATCH_ROWS`] rows; an error if the file is not what it was when it was cut.
#[allow(clippy::too_many_arguments)]
fn rebuild_segment(
    config: &SourceConfig,
    segment: &crate::journal::Segment,
    file: &File,
    seg_first: u64,
    from: u64,
    to: u64,
    path: &str,
    buf: &mut [u8],
) -> Result<(Vec<arrow::record_batch::RecordBatch>, u64), ReplayError> {
    let same_start = |file: &File| {
        crate::checkpoint::Fingerprint::read(file, segment.fingerprint.len as usize)
            .map(|f| f == segment.fingerprint)
            .map_err(|e| ReplayError::Io(path.to_owned(), e))
    };
    if !same_start(file)? {
        return Err(ReplayError::Rewritten { path: path.to_owned(), seq: seg_first });
    }
    let mut batches = Vec::new();
    let mut builder = LogBatchBuilder::new();
    let mut counts = LineCounts::default();
    let mut framer = LineFramer::new(config.max_line_bytes, segment.start);
    let (mut produced, mut rows) = (0u64, 0u64);
    // Each line of the segment gets the next number; those in the range become rows.
    let mut take = |builder: &mut LogBatchBuilder, line: crate::framing::Line<'_>| {
        let s = seg_first.saturating_add(produced);
        produced += 1;
        if s >= from && s <= to {
            append_line(builder, s, line, path, segment.observed_micros, LineFormat::of(config), &mut counts);
            rows += 1;
        }
    };
    let mut at = segment.start.offset;
    while at < segment.end.offset {
        let want = ((segment.end.offset - at) as usize).min(buf.len());
        let n = match file.read_at(&mut buf[..want], at) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(ReplayError::Io(path.to_owned(), e)),
        };
        at += n as u64;
        framer.push(&buf[..n], |line| take(&mut builder, line));
        if builder.len() >= REPLAY_BATCH_ROWS {
            batches.push(builder.finish().map_err(|e| ReplayError::Encode(e.to_string()))?);
        }
    }
    // A segment that ends without a newline ended with its file (the tailer took the last line
    // as it was): so does this framing.
    if at == segment.end.offset {
        framer.finish(|line| take(&mut builder, line));
    }
    if !builder.is_empty() {
        batches.push(builder.finish().map_err(|e| ReplayError::Encode(e.to_string()))?);
    }
    if produced != segment.lines {
        return Err(ReplayError::Changed { path: path.to_owned(), seq: seg_first, got: produced, want: segment.lines });
    }
    // Written over while it was read: what was read may be the new bytes.
    if !same_start(file)? {
        return Err(ReplayError::Rewritten { path: path.to_owned(), seq: seg_first });
    }
    Ok((batches, rows))
}

/// Answer replay queries on `<prefix>/replay/<node>/log/*` until `cancel` fires. Parameters:
/// `from` (first sequence number, required) and `to` (last, inclusive; default: the head). The
/// reply is a series of `log_batch` payloads on the query's key, then, if the range could not be
/// rebuilt in full, an error reply saying why; a range that starts below the acknowledged
/// sequence number gets one naming the first sequence number that can be replayed.
pub(crate) async fn serve(
    session: zenoh::Session,
    keys: switchboard_bus::KeySpace,
    node: String,
    journals: crate::publisher::Journals,
    configs: Arc<std::collections::BTreeMap<String, SourceConfig>>,
    stats: Arc<crate::stats::AgentStats>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let key = match keys.replay_all_of(&node, switchboard_bus::StreamKind::Log) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = %e, "bad replay key");
            return;
        }
    };
    let queryable = match session.declare_queryable(key).await {
        Ok(q) => q,
        Err(e) => {
            tracing::error!(error = %e, "cannot declare the replay queryable; lost batches cannot be replayed");
            return;
        }
    };
    loop {
        let query = tokio::select! {
            _ = cancel.cancelled() => break,
            q = queryable.recv_async() => match q { Ok(q) => q, Err(_) => break },
        };
        let (keys, journals, configs, stats) = (keys.clone(), journals.clone(), configs.clone(), stats.clone());
        tokio::spawn(async move { answer(query, &keys, &journals, &configs, &stats).await });
    }
}

/// A failed replay query is logged at most once per [`switchboard_bus::refusals::LOG_EVERY`],
/// apart for what the asker got wrong and what failed here (so that a peer's junk does not hide
/// this node's own faults), a range replayed at most once a second, each with the count left
/// unsaid since.
static ASKER_FAILED_LOGGED: std::sync::Mutex<Throttle> =
    std::sync::Mutex::new(Throttle::new(switchboard_bus::refusals::LOG_EVERY));
static FAILED_HERE_LOGGED: std::sync::Mutex<Throttle> =
    std::sync::Mutex::new(Throttle::new(switchboard_bus::refusals::LOG_EVERY));
static REPLAYED_LOGGED: std::sync::Mutex<Throttle> =
    std::sync::Mutex::new(Throttle::new(std::time::Duration::from_secs(30)));

async fn answer(
    query: zenoh::query::Query,
    keys: &switchboard_bus::KeySpace,
    journals: &crate::publisher::Journals,
    configs: &std::collections::BTreeMap<String, SourceConfig>,
    stats: &crate::stats::AgentStats,
) {
    use std::sync::atomic::Ordering;
    // `here`: the failure is this node's (its journal, a file, the reply), not the asker's.
    let asked = &query;
    let fail = |msg: String, here: bool| async move {
        stats.replay_errors.fetch_add(1, Ordering::Relaxed);
        // Any peer may ask: a line per query would let it fill this node's log.
        let throttle = if here { &FAILED_HERE_LOGGED } else { &ASKER_FAILED_LOGGED };
        if let Some(unsaid) = throttle.lock().ok().and_then(|mut t| t.admit()) {
            tracing::warn!(key = %asked.key_expr(), error = %msg, failed_since_last_line = unsaid, "replay query not answered in full");
        }
        let _ = asked.reply_err(msg).await;
    };
    let Some(id) = keys.parse_replay(query.key_expr().as_str()) else {
        return fail("not a replay key of this node".into(), false).await;
    };
    let (Some(journal), Some(config)) = (journals.get(&id.name), configs.get(&id.name)) else {
        return fail(format!("no source named {:?}", id.name), false).await;
    };
    let params = query.parameters();
    let from = match params.get("from").map(|v| (v, v.parse::<u64>())) {
        Some((_, Ok(from))) => from,
        Some((v, Err(_))) => {
            let v: String = v.chars().take(32).collect();
            return fail(format!("parameter from=<seq> must be a sequence number, not {v:?}"), false).await;
        }
        None => return fail("parameter from=<seq> is required".into(), false).await,
    };
    let to = match params.get("to").map(|v| (v, v.parse::<u64>())) {
        None => u64::MAX,
        Some((_, Ok(to))) if to >= from => to,
        Some((_, Ok(to))) => return fail(format!("to={to} is below from={from}"), false).await,
        Some((v, Err(_))) => {
            return fail(format!("parameter to=<seq> must be a sequence number, not {v:?}"), false).await
        }
    };
    let sliced = journal.lock().map(|j| (j.slice(from, to), j.acked().next_seq, j.head())).ok();
    let Some((entries, acked, head)) = sliced else {
        return fail("journal unavailable".into(), true).await;
    };
    if from >= head {
        return fail(format!("nothing to replay from seq {from}: the stream's head is {head} (its next seq)"), false)
            .await;
    }
    // The range that exists (up to the head) is bounded, whatever the asker wrote.
    let to = to.min(head.saturating_sub(1));
    if to >= from && to - from >= MAX_REPLAY_RECORDS {
        let msg = format!("seq {from}..={to} is longer than {MAX_REPLAY_RECORDS} records: ask in parts");
        refuse(Reason::ReplayRange, format_args!("{}: {msg}", query.key_expr()));
        return fail(msg, false).await;
    }
    // Below `acked` a collector committed everything and the journal forgot how it was cut:
    // those records cannot be rebuilt, and the asker must hear so rather than get silence.
    let forgotten = (from < acked).then(|| forgotten_range(from, to, acked));
    let config = config.clone();
    // Payloads go out as they are built, a few at a time: memory stays one chunk, not the range.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let rebuild = tokio::task::spawn_blocking(move || {
        replay(&config, &entries, from, to, &mut |p| {
            let _ = tx.blocking_send(p);
        })
    });
    let mut sent = Ok(());
    while let Some(p) = rx.recv().await {
        if sent.is_ok() {
            sent = query.reply(query.key_expr().clone(), p).await;
        }
    }
    let (rows, failed) = match rebuild.await {
        Ok(r) => r,
        Err(e) => return fail(format!("replay task: {e}"), true).await,
    };
    if let Err(e) = sent {
        return fail(format!("reply: {e}"), true).await;
    }
    stats.replays.fetch_add(1, Ordering::Relaxed);
    stats.lines_replayed.fetch_add(rows, Ordering::Relaxed);
    if let Some(unsaid) = REPLAYED_LOGGED.lock().ok().and_then(|mut t| t.admit()) {
        tracing::info!(stream = %id, from, to, rows, ranges_since_last_line = unsaid, "replayed");
    }
    give_up_lost(journal, &id.name, &failed, stats);
    let problems: Vec<String> = forgotten.into_iter().chain(failed.iter().map(|f| f.error.to_string())).collect();
    if !problems.is_empty() {
        fail(problems.join("; "), !failed.is_empty()).await;
    }
}

/// Note each segment that could not be replayed; one that has failed for
/// [`crate::journal::LOST_AFTER`] is given up for lost, said once and counted, and the stream
/// goes on past it once a collector holds everything before it.
fn give_up_lost(
    journal: &std::sync::Mutex<crate::journal::SourceJournal>,
    source: &str,
    failed: &[Unreplayable],
    stats: &crate::stats::AgentStats,
) {
    let now = std::time::Instant::now();
    for f in failed {
        let lost = journal.lock().is_ok_and(|mut j| j.failed_replay(f.first, f.end, now));
        if lost {
            let n = f.end.saturating_sub(f.first);
            stats.lines_lost.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(
                source, first = f.first, last = f.end.saturating_sub(1), error = %f.error,
                "{n} lines of source {source} (seq {} to {}) cannot be sent again and are lost: {}; they were not \
                 acknowledged when their file changed, so a collector never stored them. The stream goes on past them",
                f.first, f.end.saturating_sub(1), f.error
            );
        }
    }
}

/// The error reply to a replay query whose range starts below `acked`.
fn forgotten_range(from: u64, to: u64, acked: u64) -> String {
    let last = to.min(acked.saturating_sub(1));
    format!(
        "seq {from}..={last} cannot be rebuilt: a collector acknowledged it and the agent no longer keeps it; \
         replay is possible from seq {acked}"
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use arrow::array::AsArray;
    use arrow::datatypes::UInt64Type;
    use switchboard_bus::{BusConfig, KeySpace, StreamId, StreamKind};
    use zenoh::query::ConsolidationMode;

    use super::*;
    use crate::checkpoint::{Fingerprint, Inode, SourceCheckpoint, FINGERPRINT_BYTES};
    use crate::framing::Position;
    use crate::journal::{Segment, SourceJournal};
    use crate::stats::AgentStats;

    /// Sequence numbers of the data replies and the texts of the error replies to one query.
    async fn ask(session: &zenoh::Session, key: &str, from: u64, to: u64) -> (Vec<u64>, Vec<String>) {
        ask_raw(session, &format!("{key}?from={from};to={to}")).await
    }

    /// Like [`ask`], for a selector written out.
    async fn ask_raw(session: &zenoh::Session, selector: &str) -> (Vec<u64>, Vec<String>) {
        let replies =
            session.get(selector).consolidation(ConsolidationMode::None).timeout(Duration::from_secs(5)).await.unwrap();
        let (mut seqs, mut errors) = (Vec::new(), Vec::new());
        while let Ok(reply) = replies.recv_async().await {
            match reply.result() {
                Ok(sample) => {
                    let batch = log_batch::decode(&sample.payload().to_bytes()).unwrap();
                    let seq = batch.column_by_name("seq").unwrap().as_primitive::<UInt64Type>();
                    seqs.extend(seq.values().iter().copied());
                }
                Err(e) => errors.push(String::from_utf8_lossy(&e.payload().to_bytes()).into_owned()),
            }
        }
        (seqs, errors)
    }

    /// A segment of all of `path`'s lines, as the tailer cut it.
    fn whole_file(path: &std::path::Path, lines: u64) -> (Segment, Option<Arc<File>>) {
        let file = Arc::new(File::open(path).unwrap());
        let len = file.metadata().unwrap().len();
        let segment = Segment {
            inode: Inode::of(&file.metadata().unwrap()),
            fingerprint: Fingerprint::read(&file, FINGERPRINT_BYTES).unwrap(),
            path: path.to_owned(),
            start: Position::default(),
            end: Position { offset: len, skipping: false },
            observed_micros: 1_795_000_000_000_000,
            lines,
            copy: false,
        };
        (segment, Some(file))
    }

    #[test]
    fn a_file_written_over_sends_none_of_its_lines_and_the_rest_still_comes() {
        let dir = tempfile::tempdir().unwrap();
        let [a, b, c] = ["a.log", "a.log.1", "a.log.2"].map(|n| dir.path().join(n));
        std::fs::write(&a, "a1\na2\na3\n").unwrap();
        std::fs::write(&b, "b1\nb2\n").unwrap();
        let long = "x".repeat(300);
        std::fs::write(&c, format!("{long}\nc2\n")).unwrap();
        let parts = [whole_file(&a, 3), whole_file(&b, 2), whole_file(&c, 2)];
        let entry = BatchRecord { first_seq: 0, count: 7, segments: parts.iter().map(|p| p.0.clone()).collect() };
        let entries = vec![(entry, parts.iter().map(|p| p.1.clone()).collect::<Vec<_>>())];
        let config: SourceConfig = toml::from_str("name = 'app'\npaths = ['a.log*']").unwrap();
        let run = |from, to| {
            let mut seqs = Vec::new();
            let (rows, failed) = replay(&config, &entries, from, to, &mut |p| {
                let batch = log_batch::decode(&p).unwrap();
                let seq = batch.column_by_name("seq").unwrap().as_primitive::<UInt64Type>();
                seqs.extend(seq.values().iter().copied());
            });
            assert_eq!(rows as usize, seqs.len());
            (seqs, failed)
        };
        assert_eq!(run(0, 6).0, [0, 1, 2, 3, 4, 5, 6]);
        // `cp a.log a.log.1` onto the older copy: the same inode, other lines (as many).
        std::fs::write(&b, "a1\na2\n").unwrap();
        let (seqs, failed) = run(0, 6);
        assert_eq!(seqs, [0, 1, 2, 5, 6], "none of the other file's lines under 3 and 4");
        assert_eq!(failed.len(), 1);
        assert_eq!((failed[0].first, failed[0].end), (3, 5));
        assert!(matches!(failed[0].error, ReplayError::Rewritten { seq: 3, .. }), "{}", failed[0].error);
        // The same first bytes but fewer lines: nothing of it either.
        std::fs::write(&c, format!("{long}xyz\n")).unwrap();
        let (seqs, failed) = run(4, 6);
        assert!(seqs.is_empty(), "{seqs:?}");
        assert_eq!(failed.iter().map(|f| (f.first, f.end)).collect::<Vec<_>>(), [(3, 5), (5, 7)]);
        assert!(matches!(failed[1].error, ReplayError::Changed { got: 1, want: 2, .. }), "{}", failed[1].error);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_range_below_acked_gets_an_error_reply_naming_where_replay_can_start() {
        // A source whose records below 100 were acknowledged; 100..=102 are journaled.
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        std::fs::write(&log, "one\ntwo\nthree\n").unwrap();
        let file = Arc::new(File::open(&log).unwrap());
        let inode = Inode::of(&file.metadata().unwrap());
        let fingerprint = Fingerprint::read(&file, FINGERPRINT_BYTES).unwrap();
        let acked = SourceCheckpoint { next_seq: 100, files: Vec::new() };
        let mut journal = SourceJournal::open(&dir.path().join("state"), "app", acked).unwrap();
        journal.register(inode, file.clone());
        let segment = Segment {
            inode,
            fingerprint,
            path: log.clone(),
            start: Position::default(),
            end: Position { offset: 14, skipping: false },
            observed_micros: 1_795_000_000_000_000,
            lines: 3,
            copy: false,
        };
        journal.record(BatchRecord { first_seq: 100, count: 3, segments: vec![segment] }).unwrap();
        let config: SourceConfig = toml::from_str("name = 'app'\npaths = ['app.log']").unwrap();
        let journal = Arc::new(Mutex::new(journal));
        let journals = Arc::new(BTreeMap::from([("app".to_owned(), journal.clone())]));
        let configs = Arc::new(BTreeMap::from([("app".to_owned(), config)]));

        let bus = BusConfig {
            cluster: format!("replay-test-{}", std::process::id()),
            node: "gw1".into(),
            ..BusConfig::default()
        };
        let keys = KeySpace::new(&bus.effective_prefix()).unwrap();
        let session = switchboard_bus::session::open(&bus, None).await.unwrap();
        let stats = Arc::new(AgentStats::default());
        let cancel = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(serve(
            session.clone(),
            keys.clone(),
            "gw1".into(),
            journals,
            configs,
            stats.clone(),
            cancel.clone(),
        ));
        let stream = StreamId { node: "gw1".into(), kind: StreamKind::Log, name: "app".into() };
        let key = keys.replay(&stream).unwrap().to_string();

        // What is journaled replays in full, with no error (and shows the queryable is up).
        let start = Instant::now();
        let mut whole = ask(&session, &key, 100, 102).await;
        while whole.0.is_empty() && start.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            whole = ask(&session, &key, 100, 102).await;
        }
        assert_eq!(whole, (vec![100, 101, 102], Vec::new()));

        // Wholly below acked: nothing to send, but an error reply instead of silence.
        let (seqs, errors) = ask(&session, &key, 10, 20).await;
        assert!(seqs.is_empty());
        assert_eq!(
            errors,
            ["seq 10..=20 cannot be rebuilt: a collector acknowledged it and the agent no longer keeps it; \
              replay is possible from seq 100"]
        );

        // Straddling acked: what is kept, then the error for the rest.
        let (seqs, errors) = ask(&session, &key, 98, 101).await;
        assert_eq!(seqs, [100, 101]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("seq 98..=99 cannot be rebuilt"), "{}", errors[0]);
        assert!(errors[0].ends_with("replay is possible from seq 100"), "{}", errors[0]);

        assert_eq!(stats.replay_errors.load(std::sync::atomic::Ordering::Relaxed), 2);

        // Wholly at or above the head (103): an error reply, not silence.
        let (seqs, errors) = ask(&session, &key, 103, 200).await;
        assert!(seqs.is_empty());
        assert_eq!(errors, ["nothing to replay from seq 103: the stream's head is 103 (its next seq)"]);
        // A `from` that is there but no number is named as such.
        let (_, errors) = ask_raw(&session, &format!("{key}?from=abc")).await;
        assert_eq!(errors, ["parameter from=<seq> must be a sequence number, not \"abc\""]);
        let (_, errors) = ask_raw(&session, &key).await;
        assert_eq!(errors, ["parameter from=<seq> is required"]);

        // A range past the cap (the head now 200,103 records on) gets an error reply, no rows.
        journal.lock().unwrap().record(BatchRecord { first_seq: 103, count: 200_000, segments: Vec::new() }).unwrap();
        let (seqs, errors) = ask(&session, &key, 100, u64::MAX).await;
        assert!(seqs.is_empty(), "{} rows", seqs.len());
        assert_eq!(errors, [format!("seq 100..=200102 is longer than {MAX_REPLAY_RECORDS} records: ask in parts")]);
        cancel.cancel();
        server.await.unwrap();
        session.close().await.unwrap();
    }
}
