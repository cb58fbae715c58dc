//! One agent per data directory: an exclusive lock on `<data_dir>/agent.lock`, taken before
//! anything in the directory is opened or replaced (journals, checkpoint, the gateway socket,
//! `bus.listen`) and held for the process's life. A second agent on the same directory (a
//! double start by a supervisor, a copied config) is refused before it can touch the first
//! one's files; the lock goes with the process, however it ends.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The lock file's name in the data directory; it holds the pid of the agent that locked it.
pub const LOCK_FILE: &str = "agent.lock";

/// The data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum DirLockError {
    /// Another process holds the lock.
    #[error(
        "agent.data_dir {path} is in use by another agent{holder} (it holds {LOCK_FILE} there): give each agent its own data_dir"
    )]
    InUse {
        /// The data directory.
        path: PathBuf,
        /// ` (pid N)` when the lock file names the holder.
        holder: String,
    },
    /// The directory or the lock file could not be made or opened.
    #[error("agent.data_dir {path}: {source}")]
    Io {
        /// The data directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct DirLock(#[allow(dead_code)] File);

impl DirLock {
    /// Make `dir` if needed and lock it for this process.
    pub fn acquire(dir: &Path) -> Result<Self, DirLockError> {
        let io = |source| DirLockError::Io { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(in_use(dir)),
            // A file system without locks (some network ones): say so and go on unguarded.
            Err(TryLockError::Error(e)) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot lock the data directory: make sure no other agent uses it");
                return Ok(Self(file));
            }
        }
        file.set_len(0).map_err(io)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes()).map_err(io)?;
        Ok(Self(file))
    }

    /// Whether `dir` is free for an agent, without making anything there: an error when another
    /// process holds its lock (what `agent --check` asks).
    pub fn check_free(dir: &Path) -> Result<(), DirLockError> {
        let Ok(file) = OpenOptions::new().read(true).write(true).open(dir.join(LOCK_FILE)) else {
            // No lock file (or none this process may open): nobody holds it, or the start says why.
            return Ok(());
        };
        match file.try_lock() {
            Err(TryLockError::WouldBlock) => Err(in_use(dir)),
            _ => Ok(()),
        }
    }
}

/// The error for `dir` locked by another process, with its pid when the lock file gives it.
fn in_use(dir: &Path) -> DirLockError {
    // The holder writes its pid right after it locks: a file read empty in between is read again
    // once, a moment later.
    let mut holder = String::new();
    for attempt in 0..2 {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let mut text = String::new();
        // A pid is a few bytes; whatever else the file holds is not read.
        let _ = File::open(dir.join(LOCK_FILE)).map(|f| f.take(32).read_to_string(&mut text));
        if let Ok(pid) = text.trim().parse::<u32>() {
            holder = format!(" (pid {pid})");
            break;
        }
    }
    DirLockError::InUse { path: dir.to_path_buf(), holder }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_directory_is_refused_until_the_first_goes() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("agent");
        let first = DirLock::acquire(&data).unwrap();
        let err = DirLock::acquire(&data).unwrap_err().to_string();
        let pid = std::process::id();
        assert!(err.contains(&format!("in use by another agent (pid {pid})")) && err.contains("own data_dir"), "{err}");
        assert!(DirLock::check_free(&data).is_err_and(|e| e.to_string() == err));
        drop(first);
        DirLock::check_free(&data).unwrap();
        DirLock::acquire(&data).unwrap();
        assert!(DirLock::check_free(&dir.path().join("never-made")).is_ok());
        assert!(!dir.path().join("never-made").exists(), "a check makes nothing");
    }
}
