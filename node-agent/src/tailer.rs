//! Tailing one source: its globs' files in, encoded `log_batch` payloads with checkpoints out.
//!
//! A [`SourceTailer`] runs on a blocking thread (file I/O never runs on the async reactor). Each
//! turn it re-evaluates the globs when due (new files are picked up; a checkpointed file is
//! recognised by inode and fingerprint and resumed at its offset), reads every file's new bytes
//! with `pread`, frames them into lines ([`crate::framing`]), parses each line
//! ([`crate::parse`]), gives it the stream's next sequence number and appends it to the Arrow
//! batch being built. A batch is cut by line count, size or age; it leaves as an [`OutBatch`]
//! carrying the source's checkpoint *as of its last line*, which the publisher stores only once
//! the batch is on the bus.

use std::borrow::Cow;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use switchboard_bus::wire::log_batch::{self, LogBatchBuilder, LogRow};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{FileCheckpoint, Fingerprint, Inode, SourceCheckpoint, FINGERPRINT_BYTES};
use crate::config::{AgentSettings, SourceConfig, StartAt};
use crate::framing::{LineFramer, Position};
use crate::parse::{self, ParseContext};
use crate::stats::AgentStats;

/// Bytes read from a file in one `pread`.
const READ_CHUNK: usize = 256 * 1024;
/// Chunks read from one file before moving on to the next (fairness between files).
const CHUNKS_PER_TURN: usize = 16;

/// One encoded batch, ready to publish, with the checkpoint to store once it is published.
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
    /// The source's checkpoint once this batch is published.
    pub checkpoint: SourceCheckpoint,
}

struct TailedFile {
    path: PathBuf,
    path_str: String,
    file: File,
    inode: Inode,
    fingerprint: Fingerprint,
    framer: LineFramer,
    /// When the path stopped leading to this file (renamed away or deleted).
    gone_since: Option<Instant>,
}

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
    read_buf: Vec<u8>,
    first_scan_done: bool,
    stats: Arc<AgentStats>,
}

impl SourceTailer {
    /// A tailer for `config`, resuming from its checkpoint.
    pub fn new(config: SourceConfig, settings: AgentSettings, checkpoint: SourceCheckpoint, stats: Arc<AgentStats>) -> Self {
        Self {
            config,
            settings,
            files: Vec::new(),
            restored: checkpoint.files,
            next_seq: checkpoint.next_seq,
            builder: LogBatchBuilder::new(),
            batch_first_seq: checkpoint.next_seq,
            batch_started: None,
            read_buf: vec![0; READ_CHUNK],
            first_scan_done: false,
            stats,
        }
    }

    /// Run until `cancel` fires (then flush the batch in progress) or the publisher goes away.
    pub fn run(mut self, out: mpsc::Sender<OutBatch>, cancel: CancellationToken) {
        let mut last_scan: Option<Instant> = None;
        loop {
            if cancel.is_cancelled() {
                let _ = self.flush(&out);
                return;
            }
            if last_scan.is_none_or(|t| t.elapsed() >= self.settings.glob_interval()) {
                self.scan();
                last_scan = Some(Instant::now());
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
                std::thread::sleep(self.settings.poll_interval());
            }
        }
    }

    /// Evaluate the globs: open new files, notice files whose path went away.
    fn scan(&mut self) {
        let mut seen = Vec::new();
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
                    Err(e) => tracing::debug!(error = %e, "unreadable glob entry"),
                }
            }
        }
        let mut live_inodes = Vec::with_capacity(seen.len());
        for path in seen {
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if !meta.is_file() {
                continue;
            }
            let inode = Inode::of(&meta);
            live_inodes.push(inode);
            if let Some(f) = self.files.iter_mut().find(|f| f.inode == inode) {
                f.gone_since = None;
                continue;
            }
            if let Err(e) = self.open(path.clone(), inode, meta.len()) {
                tracing::warn!(source = %self.config.name, path = %path.display(), error = %e, "cannot open file");
            }
        }
        for f in &mut self.files {
            if !live_inodes.contains(&f.inode) && f.gone_since.is_none() {
                tracing::info!(source = %self.config.name, path = %f.path.display(), "file was rotated away or deleted; reading it to its end");
                f.gone_since = Some(Instant::now());
            }
        }
        self.first_scan_done = true;
    }

    fn open(&mut self, path: PathBuf, inode: Inode, len: u64) -> std::io::Result<()> {
        let file = File::open(&path)?;
        let fingerprint = Fingerprint::read(&file, FINGERPRINT_BYTES)?;
        let mut position = None;
        if let Some(i) = self.restored.iter().position(|c| c.inode == inode) {
            let cp = self.restored.swap_remove(i);
            let now = Fingerprint::read(&file, cp.fingerprint.len as usize)?;
            if now != cp.fingerprint {
                tracing::info!(path = %path.display(), "inode reused by a different file; reading it from the start");
            } else if cp.offset > len {
                tracing::warn!(path = %path.display(), offset = cp.offset, len, "file is shorter than its checkpoint (truncated); reading it from the start");
            } else {
                position = Some(cp.position());
            }
        }
        let position = position.unwrap_or(match (self.config.start_at, self.first_scan_done) {
            (StartAt::End, false) => Position { offset: len, skipping: false },
            _ => Position::default(),
        });
        tracing::info!(source = %self.config.name, path = %path.display(), offset = position.offset, "tailing file");
        let path_str = path.to_string_lossy().into_owned();
        self.files.push(TailedFile {
            path,
            path_str,
            file,
            inode,
            fingerprint,
            framer: LineFramer::new(self.config.max_line_bytes, position),
            gone_since: None,
        });
        Ok(())
    }

    /// Read what is new in every file; cut batches as they fill. Returns whether anything was read.
    fn read_files(&mut self, out: &mpsc::Sender<OutBatch>, cancel: &CancellationToken) -> Result<bool, Closed> {
        let mut progressed = false;
        let mut i = 0;
        while i < self.files.len() && !cancel.is_cancelled() {
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
            let f = &self.files[i];
            let expired = f.gone_since.is_some_and(|t| t.elapsed() >= self.settings.glob_interval());
            if drained && expired {
                tracing::info!(path = %f.path.display(), "done with rotated file");
                self.files.swap_remove(i);
                continue;
            }
            i += 1;
        }
        Ok(progressed)
    }

    /// Read one chunk of file `i` and turn its complete lines into rows.
    fn read_chunk(&mut self, i: usize) -> std::io::Result<usize> {
        let f = &mut self.files[i];
        let at = f.framer.read_offset();
        let n = f.file.read_at(&mut self.read_buf, at)?;
        if n == 0 {
            let len = f.file.metadata()?.len();
            if len < at {
                tracing::warn!(path = %f.path.display(), len, offset = at, "file truncated in place; reading it from the start");
                f.framer = LineFramer::new(self.config.max_line_bytes, Position::default());
                self.stats.truncations.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(0);
        }
        if f.fingerprint.len < FINGERPRINT_BYTES as u32 {
            f.fingerprint = Fingerprint::read(&f.file, FINGERPRINT_BYTES)?;
        }
        let observed = now_micros();
        let ctx = ParseContext { now_micros: observed, kv_in_message: self.config.kv_in_message };
        let format = self.config.format;
        let (builder, next_seq, stats) = (&mut self.builder, &mut self.next_seq, &self.stats);
        let path_str = f.path_str.as_str();
        let mut lines = 0u64;
        let mut unmatched = 0u64;
        let mut truncated = 0u64;
        let mut invalid = 0u64;
        f.framer.push(&self.read_buf[..n], |line| {
            let text = String::from_utf8_lossy(line.bytes);
            let raw = matches!(text, Cow::Owned(_)).then_some(line.bytes);
            let parsed = parse::parse(format, &text, &ctx);
            let row = LogRow {
                seq: *next_seq,
                ts_micros: parsed.ts_micros.unwrap_or(observed),
                observed_micros: observed,
                file: path_str,
                offset: line.offset,
                level: parsed.level.map(|l| l.as_str()),
                message: &parsed.message,
                raw,
                truncated: line.truncated,
            };
            builder.append(&row, &parsed.fields);
            *next_seq += 1;
            lines += 1;
            unmatched += u64::from(!parsed.matched);
            truncated += u64::from(line.truncated);
            invalid += u64::from(raw.is_some());
        });
        stats.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        stats.lines_read.fetch_add(lines, Ordering::Relaxed);
        stats.lines_unmatched.fetch_add(unmatched, Ordering::Relaxed);
        stats.lines_truncated.fetch_add(truncated, Ordering::Relaxed);
        stats.lines_invalid_utf8.fetch_add(invalid, Ordering::Relaxed);
        if lines > 0 && self.batch_started.is_none() {
            self.batch_started = Some(Instant::now());
        }
        Ok(n)
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
        let checkpoint = SourceCheckpoint {
            next_seq: self.next_seq,
            files: self
                .files
                .iter()
                .map(|f| {
                    let p = f.framer.position();
                    FileCheckpoint {
                        path: f.path.clone(),
                        inode: f.inode,
                        fingerprint: f.fingerprint,
                        offset: p.offset,
                        skipping: p.skipping,
                    }
                })
                .collect(),
        };
        let first_seq = self.batch_first_seq;
        self.batch_first_seq = self.next_seq;
        self.batch_started = None;
        let batch = OutBatch { source: self.config.name.clone(), payload, first_seq, lines, checkpoint };
        out.blocking_send(batch).map_err(|_| Closed)
    }
}

/// The publisher is gone; the tailer stops.
#[derive(Debug)]
struct Closed;

fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}
