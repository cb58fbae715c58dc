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

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    writer: Option<File>,
    acked: SourceCheckpoint,
    entries: VecDeque<BatchRecord>,
    handles: HashMap<Inode, Arc<File>>,
    /// The copies of files truncated in place (copytruncate), by the original's inode and
    /// fingerprint before the truncation: segments cut from the original before it was truncated
    /// are read back from its copy, which holds those bytes at the same offsets.
    copies: HashMap<(Inode, Fingerprint), Arc<File>>,
    acked_since_compaction: usize,
    durable: bool,
}

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
                if entry.first_seq != expect {
                    tracing::warn!(path = %path.display(), first_seq = entry.first_seq, expect, "journal entry out of sequence; ignoring the rest");
                    break;
                }
                expect = entry.end_seq();
                entries.push_back(entry);
            }
        }
        let mut journal = Self {
            path,
            writer: None,
            acked,
            entries,
            handles: HashMap::new(),
            copies: HashMap::new(),
            acked_since_compaction: 0,
            durable: true,
        };
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
        self.entries.back().map_or(self.acked.next_seq, BatchRecord::end_seq)
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

    /// Append a batch before it is published.
    pub fn record(&mut self, entry: BatchRecord) -> std::io::Result<()> {
        if self.durable {
            let mut line = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
            line.push(b'\n');
            if let Some(w) = &mut self.writer {
                w.write_all(&line)?;
                w.sync_data()?;
            }
        }
        self.entries.push_back(entry);
        Ok(())
    }

    /// Keep entries in memory only (acknowledgements off: each batch is acknowledged as soon as
    /// it is published, so nothing needs to survive a restart).
    pub fn set_durable(&mut self, durable: bool) {
        self.durable = durable;
    }

    /// Fold every entry wholly at or below `watermark` into the acknowledged checkpoint. Returns
    /// the new checkpoint if it moved.
    pub fn ack(&mut self, watermark: u64) -> Option<SourceCheckpoint> {
        let mut moved = false;
        while self.entries.front().is_some_and(|e| e.end_seq() <= watermark.saturating_add(1)) {
            let Some(e) = self.entries.pop_front() else { break };
            apply(&mut self.acked.files, &e);
            self.acked.next_seq = e.end_seq();
            self.acked_since_compaction += 1;
            moved = true;
        }
        if !moved {
            return None;
        }
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
    pub fn compact(&mut self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("jsonl.tmp");
        {
            let mut f = std::io::BufWriter::new(File::create(&tmp)?);
            for e in &self.entries {
                serde_json::to_writer(&mut f, e).map_err(std::io::Error::other)?;
                f.write_all(b"\n")?;
            }
            f.flush()?;
            f.get_ref().sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        // The rename is durable only with its directory: without this, a power loss could bring
        // back the old journal beside a checkpoint that already moved past its entries.
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
            File::open(dir)?.sync_all()?;
        }
        self.writer = Some(std::fs::OpenOptions::new().append(true).open(&self.path)?);
        self.acked_since_compaction = 0;
        Ok(())
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

    /// Sync the journal file (called before the checkpoint is stored).
    pub fn sync(&self) -> std::io::Result<()> {
        match &self.writer {
            Some(w) => w.sync_data(),
            None => Ok(()),
        }
    }
}

/// Advance file positions by an entry's segments.
fn apply(files: &mut Vec<FileCheckpoint>, entry: &BatchRecord) {
    for s in &entry.segments {
        match files.iter_mut().find(|f| f.inode == s.inode) {
            Some(f) => {
                f.offset = s.end.offset;
                f.skipping = s.end.skipping;
                f.path.clone_from(&s.path);
                if s.fingerprint.len >= f.fingerprint.len {
                    f.fingerprint = s.fingerprint;
                }
            }
            None => files.push(FileCheckpoint {
                path: s.path.clone(),
                inode: s.inode,
                fingerprint: s.fingerprint,
                offset: s.end.offset,
                skipping: s.end.skipping,
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
        }
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
