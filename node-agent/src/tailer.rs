//! Tailing one source: its globs' files in, encoded `log_batch` payloads with checkpoints out.
//!
//! A [`SourceTailer`] runs on a blocking thread (file I/O never runs on the async reactor). Each
//! turn it re-evaluates the globs when due (new files are picked up; a checkpointed file is
//! recognised by inode and fingerprint and resumed at its offset), reads every file's new bytes
//! with `pread`, frames them into lines ([`crate::framing`]), parses each line
//! ([`crate::parse`]), gives it the stream's next sequence number and appends it to the Arrow
//! batch being built, noting which byte range of which file each run of lines came from. A batch
//! is cut by line count, size or age; its segments go into the [`SourceJournal`] first, then the
//! encoded batch goes to the publisher as an [`OutBatch`]. Reading pauses while too many batches
//! wait for a collector's acknowledgement (memory and replay work stay bounded). A file whose
//! first block looks binary ([`looks_binary`]) is skipped with a warning and counted, unless its
//! source says `binary = "read"`.
//!
//! [`append_line`] turns one framed line into a row; replay ([`crate::replay`]) uses it too, so a
//! replayed batch is the same batch.

use std::borrow::Cow;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchboard_bus::throttle::Throttle;
use switchboard_bus::wire::log_batch::{self, LogBatchBuilder, LogRow};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{FileCheckpoint, Fingerprint, Inode, FINGERPRINT_BYTES};
use crate::config::{AgentSettings, BinaryFiles, SourceConfig, StartAt};
use crate::framing::{Line, LineFramer, Position};
use crate::journal::{BatchRecord, Segment, SourceJournal};
use crate::parse::{self, Format, ParseContext};
use crate::stats::AgentStats;

/// Bytes read from a file in one `pread`.
const READ_CHUNK: usize = 256 * 1024;
/// Chunks read from one file before moving on to the next (fairness between files).
const CHUNKS_PER_TURN: usize = 16;
/// Reads of one file this close together continue one segment (one read time for their lines).
const SAME_READ_MICROS: i64 = 1_000;
/// Bytes at the start of a file's first block that decide whether it looks binary.
const BINARY_SNIFF_BYTES: usize = 8192;

/// Whether `block`, the first bytes read of a file, looks binary, judged as log shippers and
/// `grep` do: it holds a NUL byte, or more than one byte in 20 is a control character that text
/// does not use (below 0x20 except tab, LF, VT, FF, CR and ESC, or DEL). Only the first
/// [`BINARY_SNIFF_BYTES`] count. Bytes from 0x80 up do not: text in UTF-8 or in a legacy
/// encoding is made of them.
pub fn looks_binary(block: &[u8]) -> bool {
    let sample = block.get(..BINARY_SNIFF_BYTES).unwrap_or(block);
    if memchr::memchr(0, sample).is_some() {
        return true;
    }
    let control = sample
        .iter()
        .filter(|&&b| (b < 0x20 && !matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0x1b)) || b == 0x7f)
        .count();
    // At most BINARY_SNIFF_BYTES * 20: no overflow.
    control * 20 > sample.len()
}

/// One encoded batch, ready to publish (already journaled).
#[derive(Debug)]
pub struct OutBatch {
    /// The source (stream) name.
    pub source: String,
    /// The `log_batch` payload.
    pub payload: Vec<u8>,
    /// Sequence number of the first line.
    pub first_seq: u64,
    /// Number of lines.
    pub lines: u64,
}

/// Counts of what [`append_line`] did, for the stats.
#[derive(Debug, Default, Clone, Copy)]
pub struct LineCounts {
    /// Lines appended.
    pub lines: u64,
    /// Lines that did not match the format.
    pub unmatched: u64,
    /// Lines cut at the cap.
    pub truncated: u64,
    /// Lines that were not valid UTF-8.
    pub invalid: u64,
}

/// How lines of a source are parsed.
#[derive(Debug, Clone, Copy)]
pub struct LineFormat {
    /// The format.
    pub format: Format,
    /// Also pull key=value pairs out of messages.
    pub kv_in_message: bool,
}

impl LineFormat {
    /// The line format of a source.
    pub fn of(config: &SourceConfig) -> Self {
        Self { format: config.format, kv_in_message: config.kv_in_message }
    }
}

/// Parse one framed line read at `observed` from `file` and append it as row `seq`.
pub fn append_line(
    builder: &mut LogBatchBuilder,
    seq: u64,
    line: Line<'_>,
    file: &str,
    observed: i64,
    how: LineFormat,
    counts: &mut LineCounts,
) {
    let (format, kv_in_message) = (how.format, how.kv_in_message);
    let ctx = ParseContext { now_micros: observed, kv_in_message };
    let text = String::from_utf8_lossy(line.bytes);
    let raw = matches!(text, Cow::Owned(_)).then_some(line.bytes);
    let parsed = parse::parse(format, &text, &ctx);
    let row = LogRow {
        seq,
        ts_micros: parsed.ts_micros.unwrap_or(observed),
        observed_micros: observed,
        file,
        offset: line.offset,
        level: parsed.level.map(|l| l.as_str()),
        message: &parsed.message,
        raw,
        truncated: line.truncated,
    };
    builder.append(&row, &parsed.fields);
    counts.lines += 1;
    counts.unmatched += u64::from(!parsed.matched);
    counts.truncated += u64::from(line.truncated);
    counts.invalid += u64::from(raw.is_some());
}

struct TailedFile {
    path: PathBuf,
    path_str: String,
    file: Arc<File>,
    inode: Inode,
    fingerprint: Fingerprint,
    framer: LineFramer,
    /// When the path stopped leading to this file (renamed away or deleted).
    gone_since: Option<Instant>,
    /// When the glob first found this file under another name than it was opened by (rotated
    /// by a rename, still among the source's paths).
    moved_since: Option<Instant>,
    /// When bytes were last read from it.
    last_read: Instant,
    /// Possibly a copy of another tracked file (same first bytes): held back for
    /// [`COPY_SUSPECT`]; if that file is truncated meanwhile (copytruncate) this one continues
    /// from where the original stood, otherwise it is read from its start.
    copy_of: Option<Inode>,
    /// When the tailer opened it.
    opened: Instant,
    /// The last read found no new bytes.
    at_eof: bool,
    /// Read to its end once: until then the files opened after it wait (copies excepted), so a
    /// source's files found together are read one after another, oldest first, and their lines
    /// numbered in the order they were written (a source read again from its start, with no
    /// checkpoint, numbers them as before).
    caught_up: bool,
    /// This file was truncated in place: its copy's remaining lines come first, so that the
    /// stream keeps writing order. Set when the truncation was seen.
    hold_for_copy: Option<Instant>,
    /// This file is the activated copy of a truncated file (that inode).
    copy_for: Option<Inode>,
    /// Resumed from a checkpoint that says it is a copy read from where its original stood
    /// (whose inode the checkpoint does not keep): it may be shorter than its position.
    restored_copy: bool,
    /// Whether the first block read from its start was looked at ([`looks_binary`]). A file
    /// resumed past its start was looked at when it was first read.
    first_block_checked: bool,
    /// Not read: its first block looked binary and the source skips such files.
    skipped_as_binary: bool,
    /// Emptied (or opened empty): once it holds bytes again, look whether they are a copy of
    /// another tailed file before reading them.
    recheck_copy: bool,
}

impl TailedFile {
    /// Read from where its original stood (now or before a restart): it may be shorter than its
    /// position without having been truncated.
    fn is_copy(&self) -> bool {
        self.copy_for.is_some() || self.restored_copy
    }
}

/// A file truncated in place whose copy has not been found yet: its old fingerprint and where
/// reading stood when it was truncated.
struct PendingCopy {
    original: Inode,
    path: PathBuf,
    fingerprint: Fingerprint,
    position: Position,
    since: Instant,
    /// Overwritten by a copy of another file rather than truncated by its writer: a rotated
    /// file nothing writes to, so no copy found loses nothing that was not read.
    overwritten: bool,
}

/// How long a file with the same first bytes as a tailed one is held back as a possible copy.
const COPY_SUSPECT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a file truncated in place waits for its copy to be read before it is read again
/// itself (the copy's lines go first). A copy that has not been *found* by the scan after the
/// truncation is not waited for: copytruncate makes the copy before it truncates.
const COPY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a file rotated away or deleted, and not written to, keeps its last line open for a
/// newline before that line is taken as it is (its writer may still finish it through a handle
/// opened before the rename).
const PARTIAL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// At most one warning this often that a directory of the source's paths cannot be listed.
const UNLISTED_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// Unreadable files remembered (so as to log each once), at most.
const MAX_UNOPENED_NOTED: usize = 1000;

/// Tails the files of one source; see the module docs.
pub struct SourceTailer {
    config: SourceConfig,
    settings: AgentSettings,
    files: Vec<TailedFile>,
    /// Checkpointed files not found yet.
    restored: Vec<FileCheckpoint>,
    next_seq: u64,
    builder: LogBatchBuilder,
    batch_first_seq: u64,
    batch_started: Option<Instant>,
    /// Segments of the batch in progress; the last one grows while lines come from its file.
    segments: Vec<Segment>,
    read_buf: Vec<u8>,
    first_scan_done: bool,
    pending_copies: Vec<PendingCopy>,
    rescan_now: bool,
    /// The warning that a directory of the paths could not be listed.
    unlisted_warned: Throttle,
    /// Files that could not be opened, each logged once until it opens (at most
    /// [`MAX_UNOPENED_NOTED`]).
    unopened: std::collections::BTreeSet<PathBuf>,
    /// Symbolic links to nothing the last scan found: one still so at the next scan is reported
    /// (a link switched to a new file at a rotation may point at nothing for a moment).
    dangling: std::collections::BTreeSet<PathBuf>,
    /// Files whose position moved without lines (opened, a copy taken over, truncated): the next
    /// batch records their position, so that a restart knows them.
    moved: Vec<Inode>,
    journal: Arc<Mutex<SourceJournal>>,
    stats: Arc<AgentStats>,
}

impl SourceTailer {
    /// A tailer for `config`, resuming after everything its journal holds.
    pub fn new(
        config: SourceConfig,
        settings: AgentSettings,
        journal: Arc<Mutex<SourceJournal>>,
        stats: Arc<AgentStats>,
    ) -> Self {
        let (restored, next_seq) = match journal.lock() {
            Ok(j) => (j.live_positions(), j.head()),
            Err(_) => (Vec::new(), 0),
        };
        Self {
            config,
            settings,
            files: Vec::new(),
            restored,
            next_seq,
            builder: LogBatchBuilder::new(),
            batch_first_seq: next_seq,
            batch_started: None,
            segments: Vec::new(),
            read_buf: vec![0; READ_CHUNK],
            first_scan_done: false,
            pending_copies: Vec::new(),
            rescan_now: false,
            unlisted_warned: Throttle::new(UNLISTED_WARN_EVERY),
            unopened: std::collections::BTreeSet::new(),
            dangling: std::collections::BTreeSet::new(),
            moved: Vec::new(),
            journal,
            stats,
        }
    }

    /// Run until `cancel` fires (then flush the batch in progress) or the publisher goes away.
    pub fn run(mut self, out: mpsc::Sender<OutBatch>, cancel: CancellationToken) {
        let mut last_scan: Option<Instant> = None;
        loop {
            self.stats.tailer_beat(&self.config.name);
            if cancel.is_cancelled() {
                let _ = self.flush(&out);
                return;
            }
            if self.journal.lock().map_or(0, |j| j.unacked()) >= self.settings.max_unacked_batches {
                // Wait for acknowledgements: the collector is slow, down or cannot write.
                nap(self.settings.poll_interval(), &cancel);
                continue;
            }
            if self.rescan_now || last_scan.is_none_or(|t| t.elapsed() >= self.settings.glob_interval()) {
                self.rescan_now = false;
                self.scan();
                last_scan = Some(Instant::now());
            }
            if self.journal.lock().is_ok_and(|j| j.held()) {
                // Its numbers wait for the writer's first watermark (SourceJournal::hold).
                nap(self.settings.poll_interval(), &cancel);
                continue;
            }
            let progressed = match self.read_files(&out, &cancel) {
                Ok(p) => p,
                Err(Closed) => return,
            };
            let due = self.batch_started.is_some_and(|t| t.elapsed() >= self.settings.batch_max_delay());
            if due && self.flush(&out).is_err() {
                return;
            }
            if !progressed {
                nap(self.settings.poll_interval(), &cancel);
            }
        }
    }

    /// A file the paths match that cannot be opened, and why: said once while it stays so (every
    /// scan finds it again); `/health` says it meanwhile.
    fn note_unopened(
        &mut self,
        path: &Path,
        why: String,
        unreadable: &mut Vec<(String, String)>,
        failing: &mut std::collections::BTreeSet<PathBuf>,
    ) {
        if self.unopened.len() < MAX_UNOPENED_NOTED && self.unopened.insert(path.to_path_buf()) {
            tracing::warn!(source = %self.config.name, path = %path.display(), error = %why, "cannot open file; it is tried again at every scan");
        }
        unreadable.push((path.display().to_string(), why));
        failing.insert(path.to_path_buf());
    }

    /// Evaluate the globs: open new files, notice files whose path went away.
    fn scan(&mut self) {
        let started = Instant::now();
        let mut seen = Vec::new();
        // A directory of the paths that could not be listed (out of file descriptors, say) hides
        // its files from this scan: none of them is then taken as rotated away or deleted, as a
        // file given up for gone and found again would be read again from its start.
        let mut unlisted = None;
        for pattern in &self.config.paths {
            let paths = match glob::glob(pattern) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(source = %self.config.name, %pattern, error = %e, "bad glob");
                    continue;
                }
            };
            for entry in paths {
                match entry {
                    Ok(path) => seen.push(path),
                    Err(e) => unlisted = Some(e),
                }
            }
        }
        // Files known from the checkpoint first, so that a copy of one of them is recognised as
        // a copy whatever order the glob lists them in.
        // New files oldest first (rotated files before the live one), so that lines of files
        // found in one scan keep the order they were written in (best effort: see below).
        seen.sort_by_key(|p| {
            let meta = std::fs::metadata(p).ok();
            let known = meta.as_ref().map(Inode::of).is_some_and(|i| self.restored.iter().any(|c| c.inode == i));
            let ino = meta.as_ref().map_or(0, |m| Inode::of(m).ino);
            let mtime = meta.and_then(|m| m.modified().ok()).unwrap_or(std::time::UNIX_EPOCH);
            // Modification times are coarse (a clock tick); the inode breaks ties: files made
            // later mostly get higher numbers.
            (!known, mtime, ino)
        });
        let mut live_inodes = Vec::with_capacity(seen.len());
        let mut unreadable: Vec<(String, String)> = Vec::new();
        let mut failing = std::collections::BTreeSet::new();
        let mut dangling = std::collections::BTreeSet::new();
        for path in seen {
            let meta = match std::fs::metadata(&path) {
                Ok(meta) => meta,
                // Gone between the listing and now.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::fs::read_link(&path).is_err() => continue,
                // A symbolic link to nothing (or to a place this process may not look) reads
                // nothing, as a file it cannot open.
                Err(e) => {
                    let why = match std::fs::read_link(&path) {
                        Ok(to) => {
                            dangling.insert(path.clone());
                            if !self.dangling.contains(&path) {
                                continue;
                            }
                            format!("a symbolic link to {}: {e}", to.display())
                        }
                        Err(_) => e.to_string(),
                    };
                    self.note_unopened(&path, why, &mut unreadable, &mut failing);
                    continue;
                }
            };
            if !meta.is_file() {
                continue;
            }
            let inode = Inode::of(&meta);
            live_inodes.push(inode);
            if let Some(f) = self.files.iter_mut().find(|f| f.inode == inode) {
                f.gone_since = None;
                if f.path != path && f.moved_since.is_none() {
                    f.moved_since = Some(Instant::now());
                }
                continue;
            }
            match self.open(path.clone(), inode, meta.len()) {
                Ok(()) => {
                    if self.unopened.remove(&path) {
                        tracing::info!(source = %self.config.name, path = %path.display(), "file can be read again");
                    }
                }
                // Gone between the listing and the open: nothing to read.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => self.note_unopened(&path, e.to_string(), &mut unreadable, &mut failing),
            }
        }
        self.unopened.retain(|p| failing.contains(p));
        self.dangling = dangling;
        self.stats.set_unreadable(&self.config.name, &unreadable);
        if let Some(e) = unlisted {
            if let Some(unsaid) = self.unlisted_warned.admit() {
                tracing::warn!(source = %self.config.name, error = %e, failed_since_last_line = unsaid, "cannot list a directory of the source's paths; no file is taken as rotated away or deleted until it can be listed");
            }
            return;
        }
        for f in &mut self.files {
            if !live_inodes.contains(&f.inode) && f.gone_since.is_none() {
                tracing::info!(source = %self.config.name, path = %f.path.display(), "file was rotated away or deleted; reading it to its end");
                f.gone_since = Some(Instant::now());
            }
        }
        // A copy written over a file the source tails already is found by its first bytes.
        let mut k = 0;
        while k < self.pending_copies.len() {
            let p = &self.pending_copies[k];
            match self.rewritten_copy_of(&p.fingerprint, p.original) {
                Some(j) => {
                    let p = self.pending_copies.swap_remove(k);
                    self.adopt_copy(j, p.original, p.fingerprint, p.position, &p.path);
                }
                None => k += 1,
            }
        }
        // A copy is made before its original is truncated: a truncation this scan found no copy
        // for has none in the source's paths (one found while opening files in this scan gets
        // the next scan too, as files are opened in an order of their own).
        let source = &self.config.name;
        self.pending_copies.retain(|p| {
            let keep = p.since >= started;
            if !keep && p.overwritten {
                tracing::debug!(%source, path = %p.path.display(), "no copy of an overwritten file's earlier content found");
            } else if !keep {
                tracing::warn!(%source, path = %p.path.display(), offset = p.position.offset, "no copy of a truncated file found: lines written between the last read and the truncation, if any, are lost; include the rotated names in the source's paths to keep them");
            }
            keep
        });
        self.first_scan_done = true;
    }

    fn open(&mut self, path: PathBuf, inode: Inode, len: u64) -> std::io::Result<()> {
        let file = File::open(&path)?;
        let fingerprint = Fingerprint::read(&file, FINGERPRINT_BYTES)?;
        let mut position = None;
        let mut hold = None;
        let mut copy_for = None;
        let mut rewritten_while_down = false;
        let mut restored_copy = false;
        // Known under another name before: rotated by a rename (while the agent ran or was down).
        let mut moved = false;
        if let Some(i) = self.restored.iter().position(|c| c.inode == inode) {
            let cp = self.restored.swap_remove(i);
            moved = cp.path != path;
            let now = Fingerprint::read(&file, cp.fingerprint.len as usize)?;
            // A copy read from where its original stood may be shorter than its offset.
            restored_copy = cp.copy && now == cp.fingerprint;
            if now != cp.fingerprint || (cp.offset > len && !restored_copy) {
                // Rewritten or truncated while the agent was down: if a copy of the old content
                // shows up (copytruncate), it continues from the checkpoint.
                tracing::warn!(path = %path.display(), offset = cp.offset, len, "file was truncated or replaced while the agent was down; reading it from the start");
                self.pending_copies.push(PendingCopy {
                    original: inode,
                    path: path.clone(),
                    fingerprint: cp.fingerprint,
                    position: cp.position(),
                    since: Instant::now(),
                    overwritten: false,
                });
                hold = Some(Instant::now());
                rewritten_while_down = true;
            } else {
                position = Some(cp.position());
            }
        }
        let mut copy_of = None;
        // The original's first bytes before its truncation, when this file is its copy.
        let mut copy_of_fingerprint = None;
        if position.is_none() {
            // The copy of a file truncated in place (copytruncate): continue where it stood.
            let mut found = None;
            for (i, p) in self.pending_copies.iter().enumerate() {
                if Fingerprint::read(&file, p.fingerprint.len as usize)? == p.fingerprint && p.fingerprint.len > 0 {
                    found = Some(i);
                    break;
                }
            }
            if let Some(i) = found {
                let p = self.pending_copies.swap_remove(i);
                tracing::info!(path = %path.display(), offset = p.position.offset, "copy of a truncated file: reading it from where the original stood");
                position = Some(p.position);
                copy_for = Some(p.original);
                copy_of_fingerprint = Some(p.fingerprint);
            } else {
                // Same first bytes as a tailed file: maybe the copy half of a copytruncate. Hold
                // it back for a moment; if the original is truncated meanwhile, the copy continues
                // where the original stood, otherwise it is read as a file of its own.
                for f in self.files.iter().filter(|f| f.copy_of.is_none() && f.fingerprint.len > 0) {
                    if Fingerprint::read(&file, f.fingerprint.len as usize)? == f.fingerprint {
                        copy_of = Some(f.inode);
                        break;
                    }
                }
                if copy_of.is_some() {
                    tracing::debug!(path = %path.display(), "same first bytes as a tailed file: held back as a possible copy");
                }
            }
        }
        // Rewritten while the agent was down and not (yet) known as a copy: its first bytes are
        // not the ones it was read with, so a truncated file found later in this scan whose
        // first bytes it now holds adopts it as its copy ([`Self::rewritten_copy_of`]), and
        // when it is first read it is looked at as a possible copy of a tailed file.
        let fingerprint = if rewritten_while_down && position.is_none() && copy_of.is_none() {
            Fingerprint::of_bytes(&[])
        } else {
            fingerprint
        };
        let resumed_past_start = position.is_some_and(|p| p.offset > 0);
        let position = position.unwrap_or(match (self.config.start_at, self.first_scan_done) {
            (StartAt::End, false) => Position { offset: len, skipping: false },
            _ => Position::default(),
        });
        tracing::info!(source = %self.config.name, path = %path.display(), offset = position.offset, "tailing file");
        let path_str = path.to_string_lossy().into_owned();
        let file = Arc::new(file);
        if let Ok(mut j) = self.journal.lock() {
            j.register(inode, file.clone());
            // Unacknowledged batches cut from the original before its truncation are replayed
            // from this copy (the original no longer holds those bytes).
            if let (Some(original), Some(fingerprint)) = (copy_for, copy_of_fingerprint) {
                j.register_copy(original, fingerprint, file.clone());
            }
        }
        if copy_of.is_none() {
            self.moved.push(inode);
        }
        self.files.push(TailedFile {
            path,
            path_str,
            file,
            inode,
            fingerprint,
            framer: LineFramer::new(self.config.max_line_bytes, position),
            gone_since: None,
            copy_of,
            opened: Instant::now(),
            moved_since: moved.then(Instant::now),
            last_read: Instant::now(),
            at_eof: false,
            caught_up: false,
            hold_for_copy: hold,
            copy_for,
            restored_copy,
            first_block_checked: resumed_past_start,
            skipped_as_binary: false,
            recheck_copy: (len == 0 || fingerprint.len == 0) && copy_for.is_none(),
        });
        Ok(())
    }

    /// Read what is new in every file; cut batches as they fill. Returns whether anything was read.
    fn read_files(&mut self, out: &mpsc::Sender<OutBatch>, cancel: &CancellationToken) -> Result<bool, Closed> {
        let mut progressed = false;
        let mut i = 0;
        // Files opened after one that waits for its copy wait too, copies excepted: a file
        // truncated in place and then renamed away has lines that go before the new live file's.
        let mut holding = false;
        // Files opened after one not yet read to its end wait too, copies excepted.
        let mut behind = false;
        while i < self.files.len() && !cancel.is_cancelled() {
            if (holding || behind) && self.files[i].copy_for.is_none() {
                i += 1;
                continue;
            }
            holding |= self.held_for_copy(i);
            let mut drained = false;
            for _ in 0..CHUNKS_PER_TURN {
                if cancel.is_cancelled() {
                    break;
                }
                let n = match self.read_chunk(i) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(path = %self.files[i].path.display(), error = %e, "read failed");
                        0
                    }
                };
                if n == 0 {
                    drained = true;
                    break;
                }
                progressed = true;
                if self.builder.len() >= self.settings.batch_max_lines
                    || self.builder.approx_bytes() >= self.settings.batch_max_bytes
                {
                    self.flush(out)?;
                }
            }
            if drained {
                self.files[i].caught_up = true;
            }
            behind |= !self.files[i].caught_up;
            // A file rotated away or deleted whose last line never got its newline: once it has
            // been gone a while (its writer may still finish the line through an open handle),
            // that line ends where the file ends.
            let f = &self.files[i];
            let away = f.gone_since.or(f.moved_since).is_some_and(|t| t.elapsed() >= PARTIAL_WAIT);
            if drained && away && f.framer.pending() > 0 && f.last_read.elapsed() >= PARTIAL_WAIT {
                tracing::info!(path = %f.path.display(), bytes = f.framer.pending(), "the last line of a rotated file has no newline: taken as it is");
                self.take_lines(i, None);
                progressed = true;
            }
            let f = &self.files[i];
            let expired = f.gone_since.is_some_and(|t| t.elapsed() >= self.settings.glob_interval());
            if drained && expired && f.framer.pending() == 0 && !self.segments.iter().any(|s| s.inode == f.inode) {
                tracing::info!(path = %f.path.display(), "done with rotated file");
                let inode = f.inode;
                self.files.remove(i);
                if let Ok(mut j) = self.journal.lock() {
                    j.retire(inode);
                }
                continue;
            }
            i += 1;
        }
        Ok(progressed)
    }

    /// Whether file `i`, truncated in place, still waits for its copy to be found and read (the
    /// copy holds the lines written before the truncation, which go first), for at most
    /// [`COPY_WAIT`].
    fn held_for_copy(&self, i: usize) -> bool {
        let Some(since) = self.files[i].hold_for_copy else { return false };
        let inode = self.files[i].inode;
        let copy_busy = self.files.iter().any(|c| c.copy_for == Some(inode) && !c.at_eof);
        let pending = self.pending_copies.iter().any(|p| p.original == inode);
        (copy_busy || pending) && since.elapsed() < COPY_WAIT
    }

    /// Read one chunk of file `i` and turn its complete lines into rows.
    fn read_chunk(&mut self, i: usize) -> std::io::Result<usize> {
        if self.files[i].skipped_as_binary {
            return Ok(0);
        }
        if self.files[i].copy_of.is_some() {
            if self.files[i].opened.elapsed() < COPY_SUSPECT {
                return Ok(0);
            }
            tracing::info!(path = %self.files[i].path.display(), "not a copy after all (its original was not truncated): reading it");
            self.files[i].copy_of = None;
        }
        if self.files[i].hold_for_copy.is_some() {
            if self.held_for_copy(i) {
                return Ok(0);
            }
            self.files[i].hold_for_copy = None;
        }
        // Emptied in place and written again (its first bytes not known yet): what it holds now
        // may be a copy of another tailed file (`cp` truncates its target before writing it).
        if self.files[i].recheck_copy && self.files[i].file.metadata()?.len() > 0 {
            self.files[i].recheck_copy = false;
            if self.files[i].copy_for.is_none() && self.files[i].framer.read_offset() == 0 {
                self.rewritten_as_copy(i);
                if self.files[i].copy_of.is_some() || self.files[i].copy_for.is_some() {
                    return Ok(0);
                }
            }
        }
        let f = &mut self.files[i];
        let at = f.framer.read_offset();
        // Make sure the file was not truncated and written again past our offset meanwhile
        // (one small pread per chunk: its first bytes must still be the ones we know).
        let rewritten =
            f.fingerprint.len > 0 && Fingerprint::read(&f.file, f.fingerprint.len as usize)? != f.fingerprint;
        let n = if rewritten { 0 } else { f.file.read_at(&mut self.read_buf, at)? };
        if n == 0 {
            let len = f.file.metadata()?.len();
            f.at_eof = true;
            // A copy read from where its original stood may be shorter than that (the original
            // grew between the copy and its truncation, and those lines were read from it):
            // nothing of it is left to read, and it was not truncated. A copy written over
            // changes its first bytes (`rewritten`).
            if rewritten || (len < at && !f.is_copy()) {
                self.truncated(i, len);
            }
            return Ok(0);
        }
        f.at_eof = false;
        f.last_read = Instant::now();
        if f.fingerprint.len < FINGERPRINT_BYTES as u32 {
            f.fingerprint = Fingerprint::read(&f.file, FINGERPRINT_BYTES)?;
        }
        if !f.first_block_checked {
            f.first_block_checked = true;
            if self.config.binary == BinaryFiles::Skip && looks_binary(&self.read_buf[..n]) {
                tracing::warn!(source = %self.config.name, path = %f.path.display(), "file looks binary (a NUL byte or control characters in its first block): not reading it; binary = \"read\" on the source reads such files as lines");
                f.skipped_as_binary = true;
                f.at_eof = true;
                self.stats.binary_files_skipped.fetch_add(1, Ordering::Relaxed);
                return Ok(0);
            }
        }
        self.take_lines(i, Some(n));
        self.stats.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    /// Frame the `n` bytes just read into `read_buf` from file `i` into rows (`None`: the line
    /// its framer holds back, ended by the end of the file), extending or starting its segment.
    fn take_lines(&mut self, i: usize, n: Option<usize>) {
        if self.next_seq == self.batch_first_seq {
            // A new batch: it starts where the journal asks, if it asks (SourceJournal::skip_to).
            if let Some(next) = self.journal.lock().ok().and_then(|mut j| j.take_skip()) {
                self.next_seq = self.next_seq.max(next);
                self.batch_first_seq = self.next_seq;
            }
        }
        let f = &mut self.files[i];
        // Lines continue the last segment if it is this file's; otherwise a new one starts here.
        let start = f.framer.position();
        // ... and were read within a millisecond of it (one read of a burst): every line is
        // observed when it was read, to within that.
        let now = now_micros();
        let continues = self.segments.last().is_some_and(|s| {
            s.inode == f.inode && s.end == start && now.saturating_sub(s.observed_micros) < SAME_READ_MICROS
        });
        let observed = if continues { self.segments.last().map_or(now, |s| s.observed_micros) } else { now };
        let how = LineFormat::of(&self.config);
        let (builder, next_seq) = (&mut self.builder, &mut self.next_seq);
        let path_str = f.path_str.as_str();
        let mut counts = LineCounts::default();
        let emit = |line: crate::framing::Line<'_>| {
            append_line(builder, *next_seq, line, path_str, observed, how, &mut counts);
            *next_seq += 1;
        };
        match n {
            Some(n) => f.framer.push(&self.read_buf[..n], emit),
            None => f.framer.finish(emit),
        }
        if counts.lines > 0 {
            let end = f.framer.position();
            match self.segments.last_mut() {
                Some(s) if continues => {
                    s.end = end;
                    s.lines += counts.lines;
                    s.fingerprint = f.fingerprint;
                    s.copy = f.is_copy();
                }
                _ => self.segments.push(Segment {
                    inode: f.inode,
                    fingerprint: f.fingerprint,
                    path: f.path.clone(),
                    start,
                    end,
                    observed_micros: observed,
                    lines: counts.lines,
                    copy: f.is_copy(),
                }),
            }
        }
        let stats = &self.stats;
        stats.lines_read.fetch_add(counts.lines, Ordering::Relaxed);
        stats.lines_unmatched.fetch_add(counts.unmatched, Ordering::Relaxed);
        stats.lines_truncated.fetch_add(counts.truncated, Ordering::Relaxed);
        stats.lines_invalid_utf8.fetch_add(counts.invalid, Ordering::Relaxed);
        if counts.lines > 0 && self.batch_started.is_none() {
            self.batch_started = Some(Instant::now());
        }
    }

    /// File `i` was truncated in place: its copy (if any) continues from where it stood, the
    /// file itself from its start.
    fn truncated(&mut self, i: usize, len: u64) {
        let f = &mut self.files[i];
        let (inode, position, fingerprint) = (f.inode, f.framer.position(), f.fingerprint);
        // A copy (of an earlier rotation) rewritten in place: a rotated file nothing writes to,
        // whose lines were read.
        let was_copy = f.is_copy();
        tracing::warn!(path = %f.path.display(), len, offset = position.offset, "file truncated in place (copytruncate); reading it from the start");
        f.framer = LineFramer::new(self.config.max_line_bytes, Position::default());
        f.fingerprint = Fingerprint::of_bytes(&[]);
        f.at_eof = false;
        // New content from the start: its first block is looked at again.
        f.first_block_checked = false;
        f.hold_for_copy = Some(Instant::now());
        // New content: whatever it was a copy of, it is not any more.
        f.copy_for = None;
        f.restored_copy = false;
        f.recheck_copy = true;
        self.moved.push(inode);
        self.stats.truncations.fetch_add(1, Ordering::Relaxed);
        if !self.resume_held_copy(inode, fingerprint, position) {
            if let Some(j) = self.rewritten_copy_of(&fingerprint, inode) {
                // The copy went over a file the source tails (read below, not again from its start).
                let original = self.files[i].path.clone();
                self.adopt_copy(j, inode, fingerprint, position, &original);
            } else {
                self.await_copy(i, fingerprint, position, was_copy);
            }
        }
        self.rewritten_as_copy(i);
    }

    /// What `original` held (first bytes `fingerprint`, read up to `position`) is gone from it
    /// (truncated in place, or written over): the file held back as its possible copy, if any,
    /// continues from there, and replays of the original's unacknowledged segments read from it.
    /// Returns whether there was one.
    fn resume_held_copy(&mut self, original: Inode, fingerprint: Fingerprint, position: Position) -> bool {
        let Some(copy) = self.files.iter_mut().find(|c| c.copy_of == Some(original)) else { return false };
        tracing::info!(path = %copy.path.display(), offset = position.offset, "reading the copy of a truncated or overwritten file from where that file stood");
        copy.copy_of = None;
        copy.copy_for = Some(original);
        copy.at_eof = false;
        copy.first_block_checked = true;
        copy.framer = LineFramer::new(self.config.max_line_bytes, position);
        let (copy_inode, copy_file) = (copy.inode, copy.file.clone());
        self.moved.push(copy_inode);
        if let Ok(mut j) = self.journal.lock() {
            j.register_copy(original, fingerprint, copy_file);
        }
        true
    }

    /// What file `i` held (first bytes `fingerprint`, read up to `position`) is gone and no copy
    /// of it is known yet: the next scans look for one ([`PendingCopy`]).
    fn await_copy(&mut self, i: usize, fingerprint: Fingerprint, position: Position, overwritten: bool) {
        let (original, path) = (self.files[i].inode, self.files[i].path.clone());
        self.pending_copies.push(PendingCopy {
            original,
            path,
            fingerprint,
            position,
            since: Instant::now(),
            overwritten,
        });
        self.rescan_now = true;
    }

    /// A tailed file other than `original` whose first bytes on disk are now `fingerprint` (the
    /// original's before its truncation) although it was read with others: the copy written
    /// over it.
    fn rewritten_copy_of(&self, fingerprint: &Fingerprint, original: Inode) -> Option<usize> {
        if fingerprint.len == 0 {
            return None;
        }
        // Rewritten: its first bytes on disk are no longer the ones it was read with (whatever
        // it was before, a copy of an earlier rotation included).
        let rewritten = |f: &TailedFile| {
            f.fingerprint.len == 0
                || Fingerprint::read(&f.file, f.fingerprint.len as usize).is_ok_and(|now| now != f.fingerprint)
        };
        self.files.iter().position(|f| {
            f.inode != original
                && Fingerprint::read(&f.file, fingerprint.len as usize).is_ok_and(|now| now == *fingerprint)
                && rewritten(f)
        })
    }

    /// File `j` is the copy of `original` (truncated at `position`, its first bytes were
    /// `fingerprint`): read it from there, before the original's new lines.
    fn adopt_copy(&mut self, j: usize, original: Inode, fingerprint: Fingerprint, position: Position, from: &Path) {
        self.overwritten(j);
        let f = &mut self.files[j];
        tracing::info!(path = %f.path.display(), original = %from.display(), offset = position.offset, "rewritten with the first bytes of a truncated file: its copy, read from where the original stood");
        f.framer = LineFramer::new(self.config.max_line_bytes, position);
        f.fingerprint = Fingerprint::read(&f.file, FINGERPRINT_BYTES).unwrap_or(fingerprint);
        f.copy_of = None;
        f.copy_for = Some(original);
        f.hold_for_copy = None;
        f.at_eof = false;
        f.first_block_checked = true;
        let (inode, file) = (f.inode, f.file.clone());
        self.moved.push(inode);
        if let Ok(mut j) = self.journal.lock() {
            j.register_copy(original, fingerprint, file);
        }
    }

    /// File `j`, read up to its position, was found overwritten by a copy of another file (`cp
    /// app.log app.log.1` over a tailed `app.log.1`): what it held before may have been copied
    /// under another name first (`cp app.log.1 app.log.2`, numbered copies shifted with `cp`).
    /// That copy continues from where `j` stood, as the copy of a file truncated in place does:
    /// the one held back as a possible copy of `j`, or one found later.
    fn overwritten(&mut self, j: usize) {
        let f = &self.files[j];
        let (inode, old, position) = (f.inode, f.fingerprint, f.framer.position());
        if old.len == 0 || position.offset == 0 {
            return;
        }
        if !self.resume_held_copy(inode, old, position) {
            self.await_copy(j, old, position, true);
        }
    }

    /// File `i` was just found truncated or rewritten in place: if its new first bytes are those
    /// of another tailed file, it may be that file's copy written over an older rotated file (`cp
    /// app.log app.log.1` where `app.log.1` is tailed too). Of a file already truncated (a
    /// pending copy), it continues from where that file stood; of one not truncated yet, it is
    /// held back as a possible copy, as a new file with those first bytes is. Otherwise it is
    /// read from its start.
    fn rewritten_as_copy(&mut self, i: usize) {
        let (inode, file) = (self.files[i].inode, self.files[i].file.clone());
        let same =
            |fp: &Fingerprint| fp.len > 0 && Fingerprint::read(&file, fp.len as usize).is_ok_and(|now| now == *fp);
        if let Some(k) = self.pending_copies.iter().position(|p| p.original != inode && same(&p.fingerprint)) {
            let p = self.pending_copies.swap_remove(k);
            self.adopt_copy(i, p.original, p.fingerprint, p.position, &p.path);
            return;
        }
        let original = self
            .files
            .iter()
            .find(|o| o.inode != inode && o.copy_of.is_none() && same(&o.fingerprint))
            .map(|o| o.inode);
        if let Some(original) = original {
            let f = &mut self.files[i];
            tracing::debug!(path = %f.path.display(), "rewritten with the first bytes of a tailed file: held back as a possible copy");
            f.copy_of = Some(original);
            f.opened = Instant::now();
            f.hold_for_copy = None;
        }
    }

    /// Encode the batch in progress and hand it to the publisher (blocking while its queue is
    /// full: back-pressure, so memory stays bounded while the bus or collector is slow).
    fn flush(&mut self, out: &mpsc::Sender<OutBatch>) -> Result<(), Closed> {
        if self.builder.is_empty() {
            return Ok(());
        }
        let lines = self.builder.len() as u64;
        let batch = match self.builder.finish() {
            Ok(b) => b,
            Err(e) => {
                // Only a bug in the builder can get here; the lines are re-read after a restart.
                tracing::error!(error = %e, "cannot build a log batch");
                return Err(Closed);
            }
        };
        let payload = match log_batch::encode(&batch) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a log batch");
                return Err(Closed);
            }
        };
        let first_seq = self.batch_first_seq;
        let mut segments = std::mem::take(&mut self.segments);
        // Positions that moved without lines travel as empty segments at the batch's end.
        for inode in std::mem::take(&mut self.moved) {
            if segments.iter().any(|s| s.inode == inode) {
                continue;
            }
            if let Some(f) = self.files.iter().find(|f| f.inode == inode && f.copy_of.is_none()) {
                let at = f.framer.position();
                segments.push(Segment {
                    inode,
                    fingerprint: f.fingerprint,
                    path: f.path.clone(),
                    start: at,
                    end: at,
                    observed_micros: 0,
                    lines: 0,
                    copy: f.is_copy(),
                });
            }
        }
        let entry = BatchRecord { first_seq, count: lines, segments };
        debug_assert_eq!(entry.segments.iter().map(|s| s.lines).sum::<u64>(), lines);
        let recorded = self.journal_batch(entry);
        if let Err(e) = recorded {
            // Without its journal entry the batch could not be replayed: stop, and let a
            // restart re-read from the last journaled position.
            tracing::error!(source = %self.config.name, error = %e, "cannot write the journal; stopping this source");
            self.stats.journal_errors.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut failed) = self.stats.journal_failed.lock() {
                failed.push((self.config.name.clone(), e.to_string()));
            }
            return Err(Closed);
        }
        self.batch_first_seq = self.next_seq;
        self.batch_started = None;
        let batch = OutBatch { source: self.config.name.clone(), payload, first_seq, lines };
        out.blocking_send(batch).map_err(|_| Closed)
    }
}

impl SourceTailer {
    /// Append `entry` to the journal and sync it, then keep it in the journal with every file it
    /// needs held open for replays. The journal's own lock is held only for the last step:
    /// whoever reads the journal meanwhile does not wait for the sync.
    fn journal_batch(&self, entry: BatchRecord) -> std::io::Result<()> {
        let appender = self.journal.lock().map_err(|_| std::io::Error::other("journal lock poisoned"))?.appender();
        let mut file = appender.lock()?;
        file.append(&entry)?;
        let mut j = self.journal.lock().map_err(|_| std::io::Error::other("journal lock poisoned"))?;
        for seg in &entry.segments {
            if let Some(f) = self.files.iter().find(|f| f.inode == seg.inode) {
                j.register(seg.inode, f.file.clone());
            }
        }
        j.push(entry);
        drop(file);
        Ok(())
    }
}

/// Sleep `d`, or less once `cancel` fires (looked at every 100 ms), so that a stop never waits
/// out a long poll interval.
fn nap(d: Duration, cancel: &CancellationToken) {
    let until = Instant::now() + d;
    while !cancel.is_cancelled() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// The publisher is gone; the tailer stops.
#[derive(Debug)]
struct Closed;

fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

#[cfg(test)]
mod tests {

    use arrow::array::AsArray;

    use super::*;

    #[test]
    fn a_nap_ends_when_the_stop_comes() {
        let cancel = CancellationToken::new();
        let t = Instant::now();
        let c = cancel.clone();
        let napping = std::thread::spawn(move || nap(Duration::from_secs(60), &c));
        std::thread::sleep(Duration::from_millis(50));
        cancel.cancel();
        napping.join().unwrap();
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    use crate::checkpoint::SourceCheckpoint;

    /// Bytes of a fixed pseudo-random sequence (xorshift), like a file of binary garbage.
    fn garbage(len: usize, avoid_nul: bool) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = (x >> 24) as u8;
            if !(avoid_nul && b == 0) {
                out.push(b);
            }
        }
        out
    }

    #[test]
    fn text_in_any_encoding_is_text_and_garbage_is_binary() {
        for text in [
            &b"2026-11-22 10:00:01 INFO submit id=1 operator=o2\n"[..],
            "2026-11-22 10:00:02 WARN Zustellung verz\u{f6}gert \u{2013} \u{41f}\u{440}\u{438}\u{432}\u{435}\u{442}\r\n".as_bytes(),
            b"latin-1: Zustellung verz\xf6gert\tcp1251: \xcf\xf0\xe8\xe2\xe5\xf2\n",
            b"\x1b[31mERROR\x1b[0m colored\x0c\x0b\n",
            b"",
        ] {
            assert!(!looks_binary(text), "{text:?}");
        }
        assert!(looks_binary(b"text, then one NUL\0 byte\n"));
        assert!(looks_binary(&garbage(65536, false)));
        // Without a NUL byte, garbage still has about 10% of control bytes.
        assert!(looks_binary(&garbage(4096, true)));
        // A gzip-compressed rotation.
        assert!(looks_binary(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xed\xbd"));
        // A few stray control characters in text do not make it binary; many do.
        let mut line = b"x".repeat(100);
        line[10] = 0x08;
        assert!(!looks_binary(&line));
        line[..6].copy_from_slice(b"\x01\x02\x03\x04\x05\x06");
        assert!(looks_binary(&line));
    }

    /// Run a tailer over `dir/*.log` until it published `want` lines (or 5 s passed), and a
    /// little longer; the messages it published and its counters.
    fn tail(dir: &std::path::Path, binary: BinaryFiles, want: usize) -> (Vec<String>, Arc<AgentStats>) {
        let (batches, stats) = tail_batches(dir, binary, want, 5, || {});
        let messages = batches
            .iter()
            .flat_map(|batch| {
                let message = batch.column_by_name("message").unwrap().as_string::<i32>();
                (0..batch.num_rows()).map(|i| message.value(i).to_owned()).collect::<Vec<_>>()
            })
            .collect();
        (messages, stats)
    }

    /// [`tail`] with batches cut after `delay_ms`, while `write` runs on a thread of its own;
    /// the batches it published.
    fn tail_batches(
        dir: &std::path::Path,
        binary: BinaryFiles,
        want: usize,
        delay_ms: u64,
        write: impl FnOnce() + Send + 'static,
    ) -> (Vec<arrow::record_batch::RecordBatch>, Arc<AgentStats>) {
        let config = SourceConfig {
            name: "app".into(),
            paths: vec![dir.join("*.log").to_string_lossy().into_owned()],
            format: Format::Plain,
            start_at: StartAt::Beginning,
            max_line_bytes: 4096,
            kv_in_message: false,
            binary,
        };
        let settings = AgentSettings {
            data_dir: dir.join("state"),
            batch_max_delay_ms: delay_ms,
            poll_interval_ms: 2,
            glob_interval_ms: 10,
            ..AgentSettings::default()
        };
        let journal = SourceJournal::open(&settings.data_dir, "app", SourceCheckpoint::default()).unwrap();
        let stats = Arc::new(AgentStats::default());
        let tailer = SourceTailer::new(config, settings, Arc::new(Mutex::new(journal)), stats.clone());
        let (tx, mut rx) = mpsc::channel(1024);
        let cancel = CancellationToken::new();
        let thread = {
            let cancel = cancel.clone();
            std::thread::spawn(move || tailer.run(tx, cancel))
        };
        let writer = std::thread::spawn(write);
        let mut batches = Vec::new();
        let mut collect = |b: OutBatch| batches.push(log_batch::decode(&b.payload).unwrap());
        let start = Instant::now();
        let mut seen = 0;
        while seen < want && start.elapsed() < Duration::from_secs(5) {
            while let Ok(b) = rx.try_recv() {
                seen += b.lines as usize;
                collect(b);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        cancel.cancel();
        thread.join().unwrap();
        writer.join().unwrap();
        while let Ok(b) = rx.try_recv() {
            collect(b);
        }
        (batches, stats)
    }

    /// Files found together are read one after another, oldest first, each to its end: their
    /// lines are numbered in the order they were written (each file here is more than a turn's
    /// reading, so reading them in turns would interleave them).
    #[test]
    fn a_file_that_cannot_be_opened_is_said_once_and_kept_for_health_until_it_can() {
        // Root opens any file whatever its mode: only a user without that right can see this.
        let uid = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("Uid:").and_then(|u| u.split_whitespace().nth(1)).map(str::to_owned));
        if uid.as_deref() == Some("0") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.log"), "one\ntwo\n").unwrap();
        let locked = dir.path().join("b.log");
        std::fs::write(&locked, "three\n").unwrap();
        std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
        let (messages, stats) = tail(dir.path(), BinaryFiles::Read, 2);
        assert_eq!(messages, ["one", "two"]);
        let u = stats.unreadable.lock().unwrap().get("app").cloned().expect("b.log is unreadable");
        assert!(u.path.ends_with("b.log") && u.error.contains("denied"), "{u:?}");
    }

    /// A symbolic link the paths match whose target does not exist (at two scans in a row) is a
    /// file the source cannot open (said in `/health`), not a file it passes over in silence; a
    /// link to a file is read.
    #[test]
    fn a_symbolic_link_to_nothing_is_reported_as_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "one\ntwo\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("a.txt"), dir.path().join("a.log")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("gone.txt"), dir.path().join("b.log")).unwrap();
        let (messages, stats) = tail(dir.path(), BinaryFiles::Read, 2);
        assert_eq!(messages, ["one", "two"]);
        let u = stats.unreadable.lock().unwrap().get("app").cloned().expect("b.log is unreadable");
        assert!(
            u.path.ends_with("b.log") && u.error.contains("a symbolic link to") && u.error.contains("gone.txt"),
            "{u:?}"
        );
        assert_eq!(u.files, 1, "{u:?}");
    }

    #[test]
    fn files_found_together_are_read_oldest_first_one_after_another() {
        let dir = tempfile::tempdir().unwrap();
        let filler = "x".repeat(1000);
        let now = std::time::SystemTime::now();
        // The glob lists a, b, c; they were written c, b, a.
        for (name, hours_ago) in [("a", 1), ("b", 2), ("c", 3)] {
            let text: String = (0..5000).map(|i| format!("{name} {i:05} {filler}\n")).collect();
            let path = dir.path().join(format!("{name}.log"));
            std::fs::write(&path, text).unwrap();
            let file = File::options().write(true).open(&path).unwrap();
            file.set_modified(now - Duration::from_secs(3600 * hours_ago)).unwrap();
        }
        let (lines, _) = tail(dir.path(), BinaryFiles::Skip, 15_000);
        assert_eq!(lines.len(), 15_000);
        let order: Vec<String> = lines.iter().map(|l| l[..7].to_owned()).collect();
        let expected: Vec<String> =
            ["c", "b", "a"].iter().flat_map(|n| (0..5000).map(move |i| format!("{n} {i:05}"))).collect();
        let first_off = order.iter().zip(&expected).position(|(got, want)| got != want);
        assert_eq!(first_off, None, "line {first_off:?} out of writing order");
    }

    #[test]
    fn each_line_is_observed_when_it_was_read_not_when_its_batch_began() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let file = logs.join("app.log");
        std::fs::write(&file, "").unwrap();
        // Ten lines 40 ms apart, each naming when it was written, into batches of up to 1 s.
        let write = move || {
            for _ in 0..10 {
                let line = format!("{}\n", now_micros());
                let mut f = std::fs::OpenOptions::new().append(true).open(&file).unwrap();
                std::io::Write::write_all(&mut f, line.as_bytes()).unwrap();
                std::thread::sleep(Duration::from_millis(40));
            }
        };
        let (batches, _) = tail_batches(&logs, BinaryFiles::Skip, 10, 1000, write);
        let mut lines = 0;
        for batch in &batches {
            let message = batch.column_by_name("message").unwrap().as_string::<i32>();
            let observed = batch.column_by_name("observed_ts").unwrap();
            let observed = observed.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
            for i in 0..batch.num_rows() {
                let written: i64 = message.value(i).parse().unwrap();
                assert!(observed.value(i) >= written, "line {i} observed before it was written");
                lines += 1;
            }
        }
        assert_eq!(lines, 10);
    }

    #[test]
    fn a_binary_file_is_skipped_with_a_count_unless_the_source_reads_binary_files() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let mut bytes = b"one\ntwo ".to_vec();
        bytes.push(0xff);
        bytes.extend_from_slice(b"\nthree\n");
        std::fs::write(logs.join("app.log"), &bytes).unwrap();
        // About 4000 "lines" of garbage, as one of 1 MiB would be stored without the check.
        std::fs::write(logs.join("garbage.log"), garbage(1 << 20, false)).unwrap();

        let (messages, stats) = tail(&logs, BinaryFiles::Skip, 3);
        // The text file's lines, its invalid UTF-8 kept as today (replaced in the message, the
        // raw bytes alongside); nothing of the garbage.
        assert_eq!(messages, ["one", "two \u{fffd}", "three"]);
        assert_eq!(AgentStats::get(&stats.binary_files_skipped), 1);
        assert_eq!(AgentStats::get(&stats.lines_invalid_utf8), 1);

        std::fs::remove_dir_all(logs.join("state")).unwrap();
        let (messages, stats) = tail(&logs, BinaryFiles::Read, 3000);
        assert!(messages.len() > 3000, "the garbage is read as lines: {}", messages.len());
        assert_eq!(AgentStats::get(&stats.binary_files_skipped), 0);
    }
}
