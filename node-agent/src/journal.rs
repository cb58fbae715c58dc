//! The journal of one source: how each unacknowledged batch was cut from the files.
//!
//! The log files are the data; the journal only records, per batch, its first sequence number,
//! its line count and its *segments*: which byte range of which file (device, inode,
//! fingerprint) its lines came from, in order, and the read time used for them. Re-reading the
//! segments reproduces the batch exactly, with the same sequence numbers, which is what makes a
//! replay (to a collector that lost data) and a restart (after kill -9) idempotent even when
//! several files of a source grow at once.
//!
//! An entry is appended to `journal-<source>.jsonl` and made durable (`fdatasync`) *before* the
//! batch is handed to the publisher: after an OS crash or a power loss the agent then numbers
//! every line it ever published exactly as it did before (without it, a journal tail lost in the
//! page cache would make a restart cut the lines of several growing files into different batches
//! under sequence numbers the collector already holds, and drop them as duplicates).
//! When a collector's watermark covers entries, [`SourceJournal::ack`] folds them into the
//! acknowledged checkpoint (the position every file has reached at that boundary); once that
//! checkpoint is stored, [`SourceJournal::compact`] rewrites the journal without them. The open
//! file handles of unacknowledged segments are kept, so a rotated or deleted file can still be
//! replayed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{FileCheckpoint, Fingerprint, Inode, SourceCheckpoint};
use crate::framing::Position;

/// A contiguous byte range of one file whose lines belong to a batch, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// The file's device and inode.
    pub inode: Inode,
    /// Its fingerprint when the segment was cut (verifies the file after a restart).
    pub fingerprint: Fingerprint,
    /// The path it was read under.
    pub path: PathBuf,
    /// Framing position before the segment's first line.
    pub start: Position,
    /// Framing position after its last line.
    pub end: Position,
    /// The read time given to every line of the segment (µs since the epoch).
    pub observed_micros: i64,
    /// Number of lines.
    pub lines: u64,
    /// The file is a copy read from where its original stood: it may be shorter than these
    /// positions, and is not taken for a truncated file when it is (after a restart too).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub copy: bool,
}

/// One batch: its sequence numbers and where its lines came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRecord {
    /// Sequence number of the first line.
    pub first_seq: u64,
    /// Number of lines.
    pub count: u64,
    /// The segments, in order.
    pub segments: Vec<Segment>,
}

impl BatchRecord {
    /// One past the last sequence number.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + self.count
    }
}

/// The journal of one source; see the module docs. Shared between the tailer (appends), the
/// acknowledgement task (acks, compacts) and replay (reads).
#[derive(Debug)]
pub struct SourceJournal {
    path: PathBuf,
    file: Appender,
    acked: SourceCheckpoint,
    entries: VecDeque<BatchRecord>,
    handles: HashMap<Inode, Arc<File>>,
    /// The copies of files truncated in place (copytruncate), by the original's inode and
    /// fingerprint before the truncation: segments cut from the original before it was truncated
    /// are read back from its copy, which holds those bytes at the same offsets.
    copies: HashMap<(Inode, Fingerprint), Arc<File>>,
    acked_since_compaction: usize,
    /// The sequence number the tailer goes on from at its next batch ([`SourceJournal::skip_to`]).
    skip: Option<u64>,
    /// Never acknowledged when opened, and no watermark document of the writer taken since
    /// ([`SourceJournal::named`]): only then may [`SourceJournal::skip_to`] move its numbers.
    fresh: bool,
    /// Its tailer reads nothing while it is fresh ([`SourceJournal::hold`]).
    held: bool,
    /// Ranges `first..end` a replay could not rebuild, by first number: end and first failure.
    unreplayable: BTreeMap<u64, (u64, Instant)>,
    /// Ranges given up for lost ([`SourceJournal::failed_replay`]), by first number: end.
    lost: BTreeMap<u64, u64>,
    /// The first number not lost above the acknowledged ones: the floor announced in heads.
    passed: u64,
}

/// How long a range must fail to replay before it is given up for lost: a truncated file's
/// copy (copytruncate) is found within seconds, and its segments replay again from it.
pub const LOST_AFTER: Duration = Duration::from_secs(60);

impl SourceJournal {
    /// The journal file of `source` in `data_dir`.
    pub fn path_in(data_dir: &Path, source: &str) -> PathBuf {
        data_dir.join(format!("journal-{source}.jsonl"))
    }

    /// Open the journal of a source whose acknowledged checkpoint is `acked`; entries at or after
    /// `acked.next_seq` are loaded (older ones were acknowledged before a compaction).
    pub fn open(data_dir: &Path, source: &str, acked: SourceCheckpoint) -> std::io::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let path = Self::path_in(data_dir, source);
        let mut entries = VecDeque::new();
        if let Ok(f) = File::open(&path) {
            let mut expect = acked.next_seq;
            for (n, line) in BufReader::new(f).lines().enumerate() {
                let line = line?;
                let Ok(entry) = serde_json::from_str::<BatchRecord>(&line) else {
                    tracing::warn!(path = %path.display(), line = n + 1, "journal ends in a torn entry; ignoring the rest");
                    break;
                };
                if entry.end_seq() <= acked.next_seq {
                    continue;
                }
                // A jump forward is a skip ([`SourceJournal::skip_to`]), and the first entry kept
                // may begin below the acknowledged position (a batch cut across a skip); any other
                // step back is damage.
                if entry.first_seq < expect && !entries.is_empty() {
                    tracing::warn!(path = %path.display(), first_seq = entry.first_seq, expect, "journal entry out of sequence; ignoring the rest");
                    break;
                }
                expect = entry.end_seq();
                entries.push_back(entry);
            }
        }
        let mut journal = Self {
            path,
            file: Appender::default(),
            acked,
            entries,
            handles: HashMap::new(),
            copies: HashMap::new(),
            acked_since_compaction: 0,
            skip: None,
            fresh: false,
            held: false,
            unreplayable: BTreeMap::new(),
            lost: BTreeMap::new(),
            passed: 0,
        };
        // Never acknowledged: no collector has said how far it holds the stream yet (entries
        // may have been journaled before a restart, or after a skip whose checkpoint was lost).
        journal.fresh = journal.acked.next_seq == 0;
        // Start from a clean file holding exactly the loaded entries.
        journal.compact()?;
        Ok(journal)
    }

    /// The acknowledged checkpoint.
    pub fn acked(&self) -> &SourceCheckpoint {
        &self.acked
    }

    /// The next sequence number after every journaled batch.
    pub fn head(&self) -> u64 {
        self.entries.back().map_or(self.acked.next_seq, |e| e.end_seq().max(self.acked.next_seq))
    }

    /// Number this source's lines from `next` on, from the tailer's next batch: every line
    /// journaled so far counts as acknowledged. For a source whose lines are new by construction
    /// (the agent's own files, emptied with its `data_dir`) when the writing collector already
    /// holds every number below `next` from the node's earlier life: lines numbered again from 0
    /// would be dropped as duplicates of those. Nothing happens when `next` is not past
    /// [`head`](Self::head), or when the journal is not fresh: it had a position when it was
    /// opened, or a watermark named the stream since ([`SourceJournal::named`]), so its numbers
    /// follow on from the collector's already. Returns the acknowledged checkpoint to store.
    pub fn skip_to(&mut self, next: u64) -> Option<SourceCheckpoint> {
        if !self.fresh || next <= self.head() {
            return None;
        }
        self.fresh = false;
        let _ = self.ack(next - 1);
        self.acked.next_seq = next;
        self.skip = Some(next);
        Some(self.acked.clone())
    }

    /// Whether a watermark may still move its numbers ([`SourceJournal::skip_to`]).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Read no new lines of this source while the journal is fresh: for a source whose lines
    /// are new by construction, numbered on from the writer's first watermark
    /// ([`SourceJournal::skip_to`]), lines numbered before it would repeat numbers the writer
    /// holds of the node's earlier life. Whether it was fresh, so held.
    pub fn hold(&mut self) -> bool {
        self.held = self.fresh;
        self.held
    }

    /// Whether the tailer waits: held, and no watermark of the writer taken yet.
    pub fn held(&self) -> bool {
        self.held && self.fresh
    }

    /// Read on without a watermark (the writer holds nothing of the stream); whether it was held.
    pub fn release(&mut self) -> bool {
        std::mem::replace(&mut self.held, false) && self.fresh
    }

    /// The writer's watermarks were taken (naming the stream within what it has journaled, or
    /// not naming it): its numbers follow on from the collector's, and no later watermark may
    /// move them ([`SourceJournal::skip_to`]).
    pub fn named(&mut self) {
        self.fresh = false;
    }

    /// The sequence number [`skip_to`](Self::skip_to) asked the tailer to go on from, once.
    pub fn take_skip(&mut self) -> Option<u64> {
        self.skip.take()
    }

    /// Batches journaled but not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.entries.len()
    }

    /// The unacknowledged entries.
    pub fn entries(&self) -> impl Iterator<Item = &BatchRecord> {
        self.entries.iter()
    }

    /// Where every file stands after all journaled batches: the acknowledged positions advanced
    /// by every entry's segments. A restarted tailer continues from here.
    pub fn live_positions(&self) -> Vec<FileCheckpoint> {
        let mut files = self.acked.files.clone();
        for e in &self.entries {
            apply(&mut files, e);
        }
        files
    }

    /// Read time of the oldest unacknowledged line (µs since the epoch), if any.
    pub fn oldest_unacked_micros(&self) -> Option<i64> {
        self.entries.front().and_then(|e| e.segments.first()).map(|s| s.observed_micros)
    }

    /// Keep `file` open for replays of its segments.
    pub fn register(&mut self, inode: Inode, file: Arc<File>) {
        self.handles.entry(inode).or_insert(file);
    }

    /// `copy` is the copy of the file `original` whose first bytes were `fingerprint` before it
    /// was truncated in place: replays of the original's segments cut before the truncation read
    /// from the copy.
    pub fn register_copy(&mut self, original: Inode, fingerprint: Fingerprint, copy: Arc<File>) {
        self.copies.insert((original, fingerprint), copy);
    }

    /// Append a batch before it is published (write, sync, then keep it): [`JournalFile::append`]
    /// and [`SourceJournal::push`] in one step, for an owner that holds the journal alone.
    #[cfg(test)]
    pub fn record(&mut self, entry: BatchRecord) -> std::io::Result<()> {
        self.appender().lock()?.append(&entry)?;
        self.push(entry);
        Ok(())
    }

    /// The journal's file, to append to without holding the journal: lock it, append, then
    /// [`push`](Self::push) the entry while still holding the file's lock (a compaction holds it
    /// too, so it never runs between the two and misses the entry).
    pub fn appender(&self) -> Appender {
        self.file.clone()
    }

    /// Keep an entry that was appended to the file.
    pub fn push(&mut self, entry: BatchRecord) {
        self.entries.push_back(entry);
    }

    /// Keep entries in memory only (acknowledgements off: each batch is acknowledged as soon as
    /// it is published, so nothing needs to survive a restart).
    pub fn set_durable(&mut self, durable: bool) {
        self.file.durable.store(durable, Ordering::Relaxed);
    }

    /// The first number the agent can still send: the acknowledged position, or past it the
    /// end of lost ranges that follow the collector's watermark (announced as `acked`, so the
    /// collector goes on past them: docs/architecture.md, "Durability").
    pub fn floor(&self) -> u64 {
        self.acked.next_seq.max(self.passed)
    }

    /// A replay could not rebuild `first..end` at `now` (its file was rewritten or is gone).
    /// Returns `true` when that range has failed for [`LOST_AFTER`] and is now given up for
    /// lost: the caller says so, once.
    pub fn failed_replay(&mut self, first: u64, end: u64, now: Instant) -> bool {
        if end <= first || self.lost.get(&first).is_some_and(|e| *e >= end) {
            return false;
        }
        let (known_end, since) = *self.unreplayable.entry(first).or_insert((end, now));
        if known_end != end {
            // Another cut of the range: its clock starts again.
            self.unreplayable.insert(first, (end, now));
            return false;
        }
        if now.saturating_duration_since(since) < LOST_AFTER {
            return false;
        }
        self.unreplayable.remove(&first);
        self.lost.insert(first, end);
        true
    }

    /// `watermark` carried over the lost ranges that follow it.
    fn past_lost(&mut self, watermark: u64) -> u64 {
        let mut carried = watermark;
        for (&first, &end) in &self.lost {
            if first <= carried.saturating_add(1) && end > carried.saturating_add(1) {
                carried = end - 1;
            }
        }
        if carried != watermark {
            self.passed = self.passed.max(carried.saturating_add(1));
        }
        carried
    }

    /// Fold every entry wholly at or below `watermark` (carried over lost ranges that follow it)
    /// into the acknowledged checkpoint. Returns the new checkpoint if it moved.
    pub fn ack(&mut self, watermark: u64) -> Option<SourceCheckpoint> {
        let watermark = self.past_lost(watermark);
        let mut moved = false;
        while self.entries.front().is_some_and(|e| e.end_seq() <= watermark.saturating_add(1)) {
            let Some(e) = self.entries.pop_front() else { break };
            apply(&mut self.acked.files, &e);
            // An entry cut before a skip ends below it: the number never goes back.
            self.acked.next_seq = self.acked.next_seq.max(e.end_seq());
            self.acked_since_compaction += 1;
            moved = true;
        }
        if !moved {
            return None;
        }
        let next = self.acked.next_seq;
        self.lost.retain(|_, end| *end > next);
        self.unreplayable.retain(|_, (end, _)| *end > next);
        // Release handles no unacknowledged segment needs.
        let needed: std::collections::HashSet<Inode> =
            self.entries.iter().flat_map(|e| e.segments.iter().map(|s| s.inode)).collect();
        self.handles.retain(|inode, _| needed.contains(inode));
        self.copies.retain(|(inode, _), _| needed.contains(inode));
        Some(self.acked.clone())
    }

    /// Forget a file the tailer is done with (rotated away and read to its end), once no
    /// unacknowledged segment refers to it.
    pub fn retire(&mut self, inode: Inode) {
        let referenced = self.entries.iter().any(|e| e.segments.iter().any(|s| s.inode == inode));
        if !referenced {
            self.acked.files.retain(|f| f.inode != inode);
            self.handles.remove(&inode);
            self.copies.retain(|(original, _), _| *original != inode);
        }
    }

    /// Whether enough was acknowledged since the last compaction to rewrite the journal.
    pub fn wants_compaction(&self) -> bool {
        self.acked_since_compaction >= 32
    }

    /// Rewrite the journal file with only the unacknowledged entries (temporary file + rename).
    /// Call only after the acknowledged checkpoint is stored.
    fn compact(&mut self) -> std::io::Result<()> {
        let file = self.file.clone();
        let mut file = file.lock()?;
        let body = self.unacked_lines()?;
        file.writer = Some(rewrite(&self.path, &body)?);
        self.acked_since_compaction = 0;
        Ok(())
    }

    /// [`compact`](Self::compact) a shared journal, holding its lock only to read the entries:
    /// the rewrite and its syncs hold the file's lock alone.
    pub fn compact_shared(journal: &Mutex<SourceJournal>) -> std::io::Result<()> {
        let (file, path) = {
            let j = journal.lock().map_err(|_| poisoned())?;
            (j.appender(), j.path.clone())
        };
        let mut file = file.lock()?;
        // No entry is appended while the file's lock is held: these are all of them.
        let body = journal.lock().map_err(|_| poisoned())?.unacked_lines()?;
        file.writer = Some(rewrite(&path, &body)?);
        journal.lock().map_err(|_| poisoned())?.acked_since_compaction = 0;
        Ok(())
    }

    /// The unacknowledged entries as the journal file's lines.
    fn unacked_lines(&self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        for e in &self.entries {
            serde_json::to_writer(&mut body, e).map_err(std::io::Error::other)?;
            body.push(b'\n');
        }
        Ok(body)
    }

    /// The entries overlapping `from..=to` with the open files they need; `None` for a file
    /// whose handle is gone (it cannot be replayed).
    pub fn slice(&self, from: u64, to: u64) -> Vec<(BatchRecord, Vec<Option<Arc<File>>>)> {
        self.entries
            .iter()
            .filter(|e| e.end_seq() > from && e.first_seq <= to)
            .map(|e| {
                let files = e
                    .segments
                    .iter()
                    .map(|s| self.copies.get(&(s.inode, s.fingerprint)).or_else(|| self.handles.get(&s.inode)).cloned())
                    .collect();
                (e.clone(), files)
            })
            .collect()
    }
}

/// The journal file of one source, shared: see the module docs.
#[derive(Debug, Clone)]
pub struct Appender {
    file: Arc<Mutex<JournalFile>>,
    durable: Arc<AtomicBool>,
}

impl Default for Appender {
    fn default() -> Self {
        let durable = Arc::new(AtomicBool::new(true));
        Self { file: Arc::new(Mutex::new(JournalFile { writer: None, durable: durable.clone() })), durable }
    }
}

impl Appender {
    /// Hold the file (for an append, a compaction or a sync).
    pub fn lock(&self) -> std::io::Result<MutexGuard<'_, JournalFile>> {
        self.file.lock().map_err(|_| poisoned())
    }
}

/// The open journal file, under its lock.
#[derive(Debug)]
pub struct JournalFile {
    writer: Option<File>,
    /// Whether appends are written and synced (acknowledgements on) or kept in memory only.
    durable: Arc<AtomicBool>,
}

impl JournalFile {
    /// Write `entry` as one line and sync it (nothing when the journal is in memory only).
    pub fn append(&mut self, entry: &BatchRecord) -> std::io::Result<()> {
        if !self.durable.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if let Some(w) = &mut self.writer {
            w.write_all(&line)?;
            w.sync_data()?;
        }
        Ok(())
    }

    /// Sync the file (before the checkpoint is stored).
    pub fn sync(&self) -> std::io::Result<()> {
        match &self.writer {
            Some(w) => w.sync_data(),
            None => Ok(()),
        }
    }
}

fn poisoned() -> std::io::Error {
    std::io::Error::other("journal lock poisoned")
}

/// Replace the file at `path` by `body` (temporary file, sync, rename, sync of the directory);
/// the new file opened for appending.
fn rewrite(path: &Path, body: &[u8]) -> std::io::Result<File> {
    let tmp = path.with_extension("jsonl.tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // The rename is durable only with its directory: without this, a power loss could bring
    // back the old journal beside a checkpoint that already moved past its entries.
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        File::open(dir)?.sync_all()?;
    }
    std::fs::OpenOptions::new().append(true).open(path)
}

/// Advance file positions by an entry's segments.
fn apply(files: &mut Vec<FileCheckpoint>, entry: &BatchRecord) {
    for s in &entry.segments {
        match files.iter_mut().find(|f| f.inode == s.inode) {
            Some(f) => {
                f.offset = s.end.offset;
                f.skipping = s.end.skipping;
                f.path.clone_from(&s.path);
                // The latest segment's: a file's fingerprint only grows while its content stays,
                // and starts again (empty) when the file is truncated, which the position also
                // does. Keeping the older, longer one would pair the new position with the old
                // content, and a restart would take the file for truncated while it was down.
                f.fingerprint = s.fingerprint;
                f.copy = s.copy;
            }
            None => files.push(FileCheckpoint {
                path: s.path.clone(),
                inode: s.inode,
                fingerprint: s.fingerprint,
                offset: s.end.offset,
                skipping: s.end.skipping,
                copy: s.copy,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(ino: u64, start: u64, end: u64) -> Segment {
        Segment {
            inode: Inode { dev: 1, ino },
            fingerprint: Fingerprint::of_bytes(b"x"),
            path: format!("/f{ino}").into(),
            start: Position { offset: start, skipping: false },
            end: Position { offset: end, skipping: false },
            observed_micros: 0,
            lines: 1,
            copy: false,
        }
    }

    #[test]
    fn a_range_that_fails_to_replay_for_a_minute_is_passed_over_once_the_collector_reaches_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = SourceJournal::open(dir.path(), "app", SourceCheckpoint::default()).unwrap();
        // Three batches: 0..10, 10..20 (its first segment rewritten, 10..15), 20..30.
        j.record(BatchRecord { first_seq: 0, count: 10, segments: vec![seg(1, 0, 100)] }).unwrap();
        let (mut a, mut b) = (seg(2, 0, 50), seg(3, 0, 50));
        (a.lines, b.lines) = (5, 5);
        j.record(BatchRecord { first_seq: 10, count: 10, segments: vec![a, b] }).unwrap();
        j.record(BatchRecord { first_seq: 20, count: 10, segments: vec![seg(4, 0, 100)] }).unwrap();
        let t0 = Instant::now();
        assert!(!j.failed_replay(10, 15, t0), "not at the first failure");
        assert!(!j.failed_replay(10, 15, t0 + LOST_AFTER / 2));
        assert_eq!(j.ack(9).map(|c| c.next_seq), Some(10));
        assert_eq!(j.floor(), 10, "not lost yet: the collector waits for it");
        assert!(j.failed_replay(10, 15, t0 + LOST_AFTER), "given up after a minute");
        assert!(!j.failed_replay(10, 15, t0 + LOST_AFTER * 2), "and said once");
        // The collector's watermark stays below the lost range: the floor goes past it, and the
        // batch holding it is folded once the collector has the rest of it.
        assert_eq!(j.ack(9), None);
        assert_eq!(j.floor(), 15);
        assert_eq!(j.ack(19).map(|c| c.next_seq), Some(20));
        assert_eq!((j.floor(), j.unacked()), (20, 1));
        assert!(j.lost.is_empty() && j.unreplayable.is_empty(), "forgotten once acknowledged");
        // A lost range the watermark has not reached moves nothing.
        j.record(BatchRecord { first_seq: 30, count: 10, segments: vec![seg(5, 0, 100)] }).unwrap();
        j.lost.insert(35, 40);
        assert_eq!(j.ack(25), None);
        assert_eq!(j.floor(), 20);
    }

    #[test]
    fn a_held_journal_waits_until_a_watermark_names_it_or_it_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = SourceJournal::open(dir.path(), "_dlr", SourceCheckpoint::default()).unwrap();
        assert!(j.is_fresh() && j.hold() && j.held(), "a new journal is held");
        j.named();
        assert!(!j.held(), "the writer's watermark came");
        let mut j = SourceJournal::open(dir.path(), "_limits", SourceCheckpoint::default()).unwrap();
        assert!(j.hold() && j.release() && !j.held() && !j.release(), "released once");
        assert!(j.is_fresh(), "a later watermark may still number it on");
        let mut j = SourceJournal::open(dir.path(), "_metrics", SourceCheckpoint::default()).unwrap();
        j.hold();
        assert!(j.skip_to(10).is_some() && !j.held(), "numbered on");
        let acked = SourceCheckpoint { next_seq: 5, ..SourceCheckpoint::default() };
        let mut j = SourceJournal::open(dir.path(), "app", acked).unwrap();
        assert!(!j.hold() && !j.held(), "a journal acknowledged before is never held");
    }

    #[test]
    fn a_skip_numbers_on_above_it_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = SourceJournal::open(dir.path(), "_limits", SourceCheckpoint::default()).unwrap();
        j.record(BatchRecord { first_seq: 0, count: 3, segments: vec![seg(1, 0, 30)] }).unwrap();
        let cp = j.skip_to(309).unwrap();
        assert_eq!((cp.next_seq, j.head(), j.unacked()), (309, 309, 0));
        assert_eq!(j.take_skip(), Some(309));
        assert_eq!(j.take_skip(), None, "taken once");
        // A batch cut before the tailer took the skip ends below it: the numbers never go back.
        j.record(BatchRecord { first_seq: 3, count: 2, segments: vec![seg(1, 30, 50)] }).unwrap();
        assert_eq!(j.head(), 309);
        j.record(BatchRecord { first_seq: 309, count: 4, segments: vec![seg(1, 50, 90)] }).unwrap();
        assert_eq!(j.ack(5).map(|c| c.next_seq), Some(309));
        // A restart from the checkpoint stored at the skip finds the entries after the jump.
        let mut j2 = SourceJournal::open(dir.path(), "_limits", cp).unwrap();
        assert_eq!((j2.unacked(), j2.head()), (1, 313));
        // Once: a journal that had a position, or whose stream a watermark named, never skips.
        assert!(j.skip_to(10_000).is_none() && j2.skip_to(10_000).is_none());
        // A batch cut across the skip (begun at 313 below a skip to 315, 5 lines) is kept at a
        // restart from the checkpoint of the skip, not taken for damage.
        let mut j3 = SourceJournal::open(dir.path(), "_limits", j2.acked().clone()).unwrap();
        j3.fresh = true;
        let cp = j3.skip_to(315).unwrap();
        j3.record(BatchRecord { first_seq: 313, count: 5, segments: vec![seg(1, 90, 140)] }).unwrap();
        j3.record(BatchRecord { first_seq: 318, count: 1, segments: vec![seg(1, 140, 150)] }).unwrap();
        let j4 = SourceJournal::open(dir.path(), "_limits", cp).unwrap();
        assert_eq!((j4.unacked(), j4.head()), (2, 319));
        let dir = tempfile::tempdir().unwrap();
        let mut named = SourceJournal::open(dir.path(), "_dlr", SourceCheckpoint::default()).unwrap();
        named.named();
        assert!(named.skip_to(10_000).is_none());
        let mut behind = SourceJournal::open(dir.path(), "_metrics", SourceCheckpoint::default()).unwrap();
        behind.record(BatchRecord { first_seq: 0, count: 3, segments: vec![seg(1, 0, 30)] }).unwrap();
        assert!(behind.skip_to(2).is_none(), "not past the head: nothing to skip");
        // Restarted before any watermark came: still fresh (never acknowledged), entries and all.
        let mut restarted = SourceJournal::open(dir.path(), "_metrics", SourceCheckpoint::default()).unwrap();
        assert_eq!(restarted.unacked(), 1);
        assert!(restarted.skip_to(100).is_some());
    }

    #[test]
    fn ack_folds_entries_and_reopen_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = SourceJournal::open(dir.path(), "app", SourceCheckpoint::default()).unwrap();
        j.record(BatchRecord { first_seq: 0, count: 10, segments: vec![seg(1, 0, 100)] }).unwrap();
        j.record(BatchRecord { first_seq: 10, count: 5, segments: vec![seg(1, 100, 150), seg(2, 0, 40)] }).unwrap();
        j.record(BatchRecord { first_seq: 15, count: 5, segments: vec![seg(2, 40, 90)] }).unwrap();
        assert_eq!(j.head(), 20);
        assert!(j.ack(8).is_none(), "a batch is acknowledged only whole");
        let cp = j.ack(14).unwrap();
        assert_eq!(cp.next_seq, 15);
        assert_eq!(cp.files.iter().map(|f| (f.inode.ino, f.offset)).collect::<Vec<_>>(), vec![(1, 150), (2, 40)]);
        assert_eq!(
            j.live_positions().iter().map(|f| (f.inode.ino, f.offset)).collect::<Vec<_>>(),
            vec![(1, 150), (2, 90)]
        );
        // A restart with the stored checkpoint finds the one unacknowledged entry, whether or
        // not the journal was compacted.
        let j2 = SourceJournal::open(dir.path(), "app", cp.clone()).unwrap();
        assert_eq!(j2.unacked(), 1);
        assert_eq!(j2.head(), 20);
        assert_eq!(j2.slice(16, 16).len(), 1);
        assert_eq!(j2.slice(0, 14).len(), 0);
    }

    #[test]
    fn a_truncation_without_lines_leaves_the_checkpoint_with_the_new_content() {
        let mut files = Vec::new();
        let long = Segment { fingerprint: Fingerprint::of_bytes(&[b'a'; 300]), ..seg(1, 0, 500) };
        apply(&mut files, &BatchRecord { first_seq: 0, count: 1, segments: vec![long] });
        // Truncated in place, nothing written since: an empty segment at 0, empty fingerprint.
        let emptied = Segment { fingerprint: Fingerprint::of_bytes(&[]), lines: 0, ..seg(1, 0, 0) };
        apply(&mut files, &BatchRecord { first_seq: 1, count: 0, segments: vec![emptied] });
        assert_eq!((files[0].offset, files[0].fingerprint), (0, Fingerprint::of_bytes(&[])));
    }

    /// An append holds the journal's file, not the journal: its state stays readable during the
    /// sync, and a compaction waits for the append and keeps its entry.
    #[test]
    fn an_append_in_progress_blocks_no_reader_and_no_compaction_loses_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = SourceJournal::open(dir.path(), "app", SourceCheckpoint::default()).unwrap();
        for n in 0..40 {
            j.record(BatchRecord { first_seq: n, count: 1, segments: vec![seg(1, n, n + 1)] }).unwrap();
        }
        j.ack(31).unwrap();
        assert!(j.wants_compaction());
        let j = Arc::new(Mutex::new(j));
        let appender = j.lock().unwrap().appender();
        let mut file = appender.lock().unwrap();
        let entry = BatchRecord { first_seq: 40, count: 2, segments: vec![seg(1, 40, 42)] };
        file.append(&entry).unwrap();
        // The sync is done; the entry is not kept yet. Readers go on meanwhile.
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = {
            let j = j.clone();
            std::thread::spawn(move || tx.send(j.lock().unwrap().head()).unwrap())
        };
        assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(5)), Ok(40), "a reader waited for the append");
        reader.join().unwrap();
        let compaction = {
            let j = j.clone();
            std::thread::spawn(move || SourceJournal::compact_shared(&j))
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!compaction.is_finished(), "a compaction ran between an append and its entry");
        j.lock().unwrap().push(entry);
        drop(file);
        compaction.join().unwrap().unwrap();
        // Appends go on in the new file.
        let after = j.lock().unwrap().appender();
        after.lock().unwrap().append(&BatchRecord { first_seq: 42, count: 1, segments: vec![seg(1, 42, 43)] }).unwrap();
        let acked = j.lock().unwrap().acked().clone();
        let reopened = SourceJournal::open(dir.path(), "app", acked).unwrap();
        assert_eq!((reopened.unacked(), reopened.head()), (10, 43), "the compacted file holds every entry appended");
    }

    #[test]
    fn handles_live_as_long_as_unacknowledged_segments_need_them() {
        let dir = tempfile::tempdir().unwrap();
        let f = Arc::new(File::create(dir.path().join("f")).unwrap());
        let mut j = SourceJournal::open(dir.path(), "app", SourceCheckpoint::default()).unwrap();
        j.register(Inode { dev: 1, ino: 1 }, f.clone());
        j.record(BatchRecord { first_seq: 0, count: 10, segments: vec![seg(1, 0, 100)] }).unwrap();
        j.ack(9).unwrap();
        assert!(j.slice(0, 100).is_empty());
        // The next batch of the same file registers it again: it must be replayable.
        j.register(Inode { dev: 1, ino: 1 }, f);
        j.record(BatchRecord { first_seq: 10, count: 5, segments: vec![seg(1, 100, 150)] }).unwrap();
        let s = j.slice(10, 14);
        assert!(s[0].1[0].is_some(), "handle kept for replay");
    }

    #[test]
    fn a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = SourceJournal::open(dir.path(), "app", SourceCheckpoint::default()).unwrap();
        j.record(BatchRecord { first_seq: 0, count: 3, segments: vec![seg(1, 0, 30)] }).unwrap();
        drop(j);
        let p = SourceJournal::path_in(dir.path(), "app");
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(br#"{"first_seq":3,"cou"#).unwrap();
        let j = SourceJournal::open(dir.path(), "app", SourceCheckpoint::default()).unwrap();
        assert_eq!(j.head(), 3);
    }
}
