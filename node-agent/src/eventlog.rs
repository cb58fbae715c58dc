//! JSON-lines files the agent writes about itself, for the collector's tables.
//!
//! The agent's own records (limit decisions, DLR events) go to a file in its data directory that
//! the agent tails as an internal source (`_limits`, `_dlr`), so they travel the same durable,
//! exactly-once path as gateway log lines. [`EventLog`] appends whole lines and renames the file
//! to `<name>.1` when it passes its size (the tailer follows the rename, so nothing is lost).

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::config::{BinaryFiles, SourceConfig, StartAt};

/// An append-only JSON-lines file with size-based rotation.
pub struct EventLog {
    path: PathBuf,
    rotate_bytes: u64,
    file: Mutex<Option<(File, u64)>>,
}

impl EventLog {
    /// A log at `dir/name`, rotated at `rotate_bytes`; the file is opened on the first write.
    pub fn new(dir: &Path, name: &str, rotate_bytes: u64) -> Self {
        Self { path: dir.join(name), rotate_bytes, file: Mutex::new(None) }
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append `lines` (each ending in `\n`) with one write.
    pub fn append(&self, lines: &[u8]) -> std::io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        // Nothing panics while the guard is held but I/O errors, which are returned; a poisoned
        // lock only means another thread's write failed midway, so it is taken over.
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_some_and(|(_, len)| *len >= self.rotate_bytes) {
            *guard = None;
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            std::fs::rename(&self.path, rotated)?;
        }
        if guard.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = OpenOptions::new().create(true).append(true).open(&self.path)?;
            let len = f.metadata()?.len();
            *guard = Some((f, len));
        }
        if let Some((f, len)) = guard.as_mut() {
            if let Err(e) = f.write_all(lines) {
                // Reopen next time: the file may have been removed or the disk filled.
                *guard = None;
                return Err(e);
            }
            *len += lines.len() as u64;
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
}
