//! JSON-lines files the agent writes about itself, for the collector's tables.
//!
//! The agent's own records (limit decisions, DLR events, metric snapshots) go to a file in its
//! data directory that the agent tails as an internal source (`_limits`, `_dlr`, `_metrics`), so
//! they travel the same durable, exactly-once path as gateway log lines. [`EventLog`] appends
//! whole lines and renames the file to `<name>.1` when it passes its size (the tailer follows the
//! rename, so nothing is lost).
//!
//! A write that fails (a full disk) keeps what it wrote; the rest waits in memory and is written
//! ahead of the next lines, from the byte where the file stopped (so a line the disk cut is
//! finished, never doubled nor glued to another), up to [`MAX_WAITING_BYTES`]; past that the
//! oldest whole lines are dropped and counted ([`dropped_lines`]).

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::config::{BinaryFiles, SourceConfig, StartAt};

/// Most bytes of lines one log keeps in memory while its file cannot be written.
pub const MAX_WAITING_BYTES: usize = 16 << 20;

/// Lines dropped by every event log of this process because their file could not be written
/// for longer than [`MAX_WAITING_BYTES`] of lines took.
static DROPPED_LINES: AtomicU64 = AtomicU64::new(0);

/// Lines the agent's own logs dropped (their files could not be written, and too many waited).
pub fn dropped_lines() -> u64 {
    DROPPED_LINES.load(Ordering::Relaxed)
}

/// An append-only JSON-lines file with size-based rotation.
pub struct EventLog {
    path: PathBuf,
    rotate_bytes: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The open file and its length.
    file: Option<(File, u64)>,
    /// Bytes not written yet (a write failed), oldest first: whole lines, but the first may be
    /// the rest of a line the file ends with.
    waiting: Vec<u8>,
    /// The file ends inside a line (a write stopped there): its rest comes first in `waiting`.
    mid_line: bool,
}

/// Lines that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{error} ({waiting} bytes of lines wait in memory for the next write{})", dropped_note(*.dropped))]
pub struct AppendError {
    /// Why the write failed.
    pub error: std::io::Error,
    /// Bytes of lines waiting.
    pub waiting: usize,
    /// Lines dropped by this call to keep the wait bounded.
    pub dropped: u64,
}

fn dropped_note(dropped: u64) -> String {
    if dropped == 0 {
        String::new()
    } else {
        format!("; {dropped} older lines dropped")
    }
}

impl EventLog {
    /// A log at `dir/name`, rotated at `rotate_bytes`; the file is opened on the first write.
    pub fn new(dir: &Path, name: &str, rotate_bytes: u64) -> Self {
        Self { path: dir.join(name), rotate_bytes, state: Mutex::new(State::default()) }
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append `lines` (each ending in `\n`) behind any bytes still waiting from a failed write
    /// (an empty `lines` only tries those again).
    pub fn append(&self, lines: &[u8]) -> Result<(), AppendError> {
        // Nothing panics while the guard is held but I/O errors, which are returned; a poisoned
        // lock only means another thread's write failed midway, so it is taken over.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mid_line = state.mid_line;
        let dropped = bound(&mut state.waiting, lines, mid_line);
        if state.waiting.is_empty() && lines.is_empty() {
            return Ok(());
        }
        state.waiting.extend_from_slice(lines);
        let State { file, waiting, mid_line } = &mut *state;
        let result = (|| {
            // A file that ends inside a line is not rotated: the rest of the line goes there.
            self.open(file, *mid_line)?;
            // `open` leaves a file open.
            let Some((f, len)) = file.as_mut() else { return Err(std::io::Error::other("no file")) };
            // Whatever part was written stays, and the rest follows it later: no byte is written
            // twice and no line is cut, whatever the disk takes.
            let mut done = 0;
            let outcome = loop {
                if done == waiting.len() {
                    break Ok(());
                }
                match f.write(&waiting[done..]) {
                    Ok(0) => break Err(std::io::Error::from(std::io::ErrorKind::WriteZero)),
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            *len += done as u64;
            if done > 0 {
                *mid_line = waiting[done - 1] != b'\n';
            }
            waiting.drain(..done);
            outcome
        })();
        result.map_err(|error| AppendError { error, waiting: state.waiting.len(), dropped })
    }

    /// Open the file (rotating it first when it passed its size and ends with a whole line)
    /// unless open.
    fn open(&self, file: &mut Option<(File, u64)>, mid_line: bool) -> std::io::Result<()> {
        if !mid_line && file.as_ref().is_some_and(|(_, len)| *len >= self.rotate_bytes) {
            *file = None;
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            std::fs::rename(&self.path, rotated)?;
        }
        if file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = OpenOptions::new().create(true).append(true).open(&self.path)?;
            let len = f.metadata()?.len();
            *file = Some((f, len));
        }
        Ok(())
    }

    /// The internal source that tails this log as stream `name`.
    pub fn source(&self, name: &str) -> SourceConfig {
        let mut pattern = self.path.clone().into_os_string();
        pattern.push("*");
        SourceConfig {
            name: name.to_owned(),
            paths: vec![pattern.to_string_lossy().into_owned()],
            format: crate::parse::Format::Json,
            start_at: StartAt::Beginning,
            max_line_bytes: 64 << 10,
            kv_in_message: false,
            // Written by the agent itself: always text.
            binary: BinaryFiles::Read,
        }
    }
}

/// Drop the oldest whole lines of `waiting` until it and `lines` fit in [`MAX_WAITING_BYTES`]
/// (the rest of a line the file ends with, when `mid_line`, is kept: it ends that line); how many
/// were dropped (counted in [`dropped_lines`]).
fn bound(waiting: &mut Vec<u8>, lines: &[u8], mid_line: bool) -> u64 {
    let over = (waiting.len() + lines.len()).saturating_sub(MAX_WAITING_BYTES);
    if over == 0 {
        return 0;
    }
    let keep = if mid_line { waiting.iter().position(|&b| b == b'\n').map_or(waiting.len(), |i| i + 1) } else { 0 };
    let rest = &waiting[keep..];
    // Cut after the newline at or past `over` bytes (all of `rest` if there is none).
    let cut = rest.iter().skip(over.saturating_sub(1)).position(|&b| b == b'\n').map_or(rest.len(), |i| over + i);
    let cut = cut.min(rest.len());
    let dropped = rest[..cut].iter().filter(|&&b| b == b'\n').count() as u64;
    waiting.drain(keep..keep + cut);
    DROPPED_LINES.fetch_add(dropped, Ordering::Relaxed);
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_and_rotates_without_losing_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::new(&dir.path().join("sub"), "events.log", 10);
        for i in 0..5 {
            log.append(format!("line{i}\n").as_bytes()).unwrap();
        }
        let cur = std::fs::read_to_string(dir.path().join("sub/events.log")).unwrap();
        let old = std::fs::read_to_string(dir.path().join("sub/events.log.1")).unwrap();
        assert_eq!(cur, "line4\n");
        assert_eq!(old, "line2\nline3\n", "rotated once past 10 bytes; the first file was replaced by the second");
        assert!(log.source("_x").paths[0].ends_with("events.log*"));
    }

    #[test]
    fn lines_a_failed_write_leaves_wait_in_order_and_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        // The log's directory is a file: every write fails until it is a directory.
        let sub = dir.path().join("sub");
        std::fs::write(&sub, "").unwrap();
        let log = EventLog::new(&sub, "events.log", 1 << 20);
        let e = log.append(b"a1\na2\n").unwrap_err();
        assert_eq!((e.waiting, e.dropped), (6, 0));
        assert!(e.to_string().contains("6 bytes of lines wait"), "{e}");
        assert_eq!(log.append(b"").unwrap_err().waiting, 6, "an empty append tries again");
        std::fs::remove_file(&sub).unwrap();
        log.append(b"b1\n").unwrap();
        assert_eq!(std::fs::read_to_string(sub.join("events.log")).unwrap(), "a1\na2\nb1\n");

        // A device that is always full: nothing is left half-written, and what waits is bounded.
        let full = EventLog::new(Path::new("/dev"), "full", u64::MAX);
        let line = vec![b'x'; (1 << 20) - 1];
        let mut dropped = 0;
        for _ in 0..20 {
            let mut l = line.clone();
            l.push(b'\n');
            let e = full.append(&l).unwrap_err();
            assert!(e.waiting <= MAX_WAITING_BYTES, "{} bytes wait", e.waiting);
            dropped += e.dropped;
        }
        assert_eq!(dropped, 4, "the oldest whole lines were dropped");
        assert!(dropped_lines() >= 4);
    }

    #[test]
    fn the_rest_of_a_line_the_file_ends_with_is_never_dropped() {
        let line = [vec![b'x'; 1023], vec![b'\n']].concat();
        let mut waiting = b"rest of a cut line\n".to_vec();
        for _ in 0..(MAX_WAITING_BYTES / 1024) {
            waiting.extend_from_slice(&line);
        }
        let dropped = bound(&mut waiting, &line, true);
        assert_eq!(dropped, 2, "the two oldest whole lines make room for one");
        assert!(waiting.starts_with(b"rest of a cut line\nxxx"));
        assert!(waiting.len() + line.len() <= MAX_WAITING_BYTES);
    }
}
