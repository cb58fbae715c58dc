//! File identity and the agent's checkpoint.
//!
//! A file is identified by device + inode + a fingerprint of its first bytes ([`FileIdentity`]):
//! the inode alone is reused by the file system after a delete, and a path alone changes on
//! rotation. The checkpoint ([`Checkpoint`]) records per source the next sequence number and, per
//! file, where reading stands; it is written atomically (temporary file, fsync, rename, fsync of
//! the directory), so after a crash it is either the old or the new one, never a mix.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::framing::Position;

/// How many leading bytes make a file's fingerprint.
pub const FINGERPRINT_BYTES: usize = 256;

/// Device and inode of an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Inode {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl Inode {
    /// The inode of file metadata.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        Self { dev: meta.dev(), ino: meta.ino() }
    }
}

/// A hash of a file's first `len` bytes (FNV-1a, 64 bit: stable across builds and platforms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint {
    /// How many bytes were hashed (fewer than [`FINGERPRINT_BYTES`] while the file was shorter).
    pub len: u32,
    /// The hash.
    pub hash: u64,
}

impl Fingerprint {
    /// Fingerprint the first `len` bytes.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        let mut hash = 0xcbf2_9ce4_8422_2325_u64;
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Self { len: bytes.len() as u32, hash }
    }

    /// Read and fingerprint the first `want` bytes of `file` (fewer if it is shorter), from
    /// offset 0 without moving the file's cursor for other readers (`pread`).
    pub fn read(file: &File, want: usize) -> std::io::Result<Self> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; FINGERPRINT_BYTES];
        let want = want.min(FINGERPRINT_BYTES);
        let mut got = 0;
        while got < want {
            let n = file.read_at(&mut buf[got..want], got as u64)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok(Self::of_bytes(&buf[..got]))
    }
}

/// Where reading of one file stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheckpoint {
    /// The path the file was last seen under (for people; identity is `inode` + `fingerprint`).
    pub path: PathBuf,
    /// Device and inode.
    pub inode: Inode,
    /// Fingerprint of the first bytes.
    pub fingerprint: Fingerprint,
    /// Offset of the first byte not yet published.
    pub offset: u64,
    /// The bytes from `offset` on are the rest of a line already published as truncated.
    #[serde(default)]
    pub skipping: bool,
    /// A copy read from where its original stood (see [`crate::journal::Segment::copy`]): shorter
    /// than `offset` is no truncation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub copy: bool,
}

impl FileCheckpoint {
    /// The framing position recorded.
    pub fn position(&self) -> Position {
        Position { offset: self.offset, skipping: self.skipping }
    }
}

/// The checkpoint of one source (stream).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCheckpoint {
    /// The sequence number the next published line gets.
    pub next_seq: u64,
    /// Every file of the source that is being read.
    pub files: Vec<FileCheckpoint>,
}

/// The agent's checkpoint file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Format version of this file.
    pub version: u32,
    /// Per source name.
    pub sources: BTreeMap<String, SourceCheckpoint>,
}

/// The checkpoint file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// I/O on the file or its directory.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file exists but is not a checkpoint this build can read.
    #[error("checkpoint {path} is unreadable ({detail}); move it away to start over")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

const VERSION: u32 = 1;

impl Checkpoint {
    /// The checkpoint's file name inside the data directory.
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join("checkpoint.json")
    }

    /// Load the checkpoint from `data_dir`; an absent file is an empty checkpoint.
    pub fn load(data_dir: &Path) -> Result<Self, CheckpointError> {
        let path = Self::path_in(data_dir);
        let mut text = String::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_string(&mut text).map_err(|source| CheckpointError::Io { path: path.clone(), source })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self { version: VERSION, ..Self::default() })
            }
            Err(source) => return Err(CheckpointError::Io { path, source }),
        };
        let cp: Self = serde_json::from_str(&text)
            .map_err(|e| CheckpointError::Corrupt { path: path.clone(), detail: e.to_string() })?;
        if cp.version != VERSION {
            return Err(CheckpointError::Corrupt {
                path,
                detail: format!("version {} (this build reads {VERSION})", cp.version),
            });
        }
        Ok(cp)
    }

    /// Write the checkpoint atomically into `data_dir` (created if missing).
    pub fn store(&self, data_dir: &Path) -> Result<(), CheckpointError> {
        let path = Self::path_in(data_dir);
        let io = |source| CheckpointError::Io { path: path.clone(), source };
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let mut body = serde_json::to_vec_pretty(&Self { version: VERSION, sources: self.sources.clone() })
            .map_err(|e| CheckpointError::Corrupt { path: path.clone(), detail: e.to_string() })?;
        body.push(b'\n');
        switchboard_bus::config::write_atomically(&path, &body).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap().sources.len(), 0);
        let mut cp = Checkpoint::default();
        cp.sources.insert(
            "smsc".into(),
            SourceCheckpoint {
                next_seq: 42,
                files: vec![FileCheckpoint {
                    path: "/var/log/a.log".into(),
                    inode: Inode { dev: 1, ino: 2 },
                    fingerprint: Fingerprint::of_bytes(b"hello"),
                    offset: 100,
                    skipping: false,
                    copy: false,
                }],
            },
        );
        cp.store(dir.path()).unwrap();
        let back = Checkpoint::load(dir.path()).unwrap();
        assert_eq!(back.sources, cp.sources);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["checkpoint.json"], "no temporary file left");
    }

    #[test]
    fn corrupt_checkpoint_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(Checkpoint::path_in(dir.path()), b"{not json").unwrap();
        let err = Checkpoint::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("unreadable"), "{err}");
    }

    #[test]
    fn fingerprint_reads_only_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abcdef").unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(Fingerprint::read(&f, 3).unwrap(), Fingerprint::of_bytes(b"abc"));
        assert_eq!(Fingerprint::read(&f, 1000).unwrap(), Fingerprint::of_bytes(b"abcdef"));
        assert_ne!(Fingerprint::of_bytes(b"abc"), Fingerprint::of_bytes(b"abd"));
    }
}
