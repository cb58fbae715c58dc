//! The dataset's storage, local or on S3, with the few operations the commit protocol needs.
//!
//! Keys are `/`-separated paths below the dataset root (`logs/date=…/hour=…/part-….parquet`,
//! `_switchboard/log/…`). A [`Store`] is either:
//! - a local directory: every operation is a file-system call made durable with `fsync` (files,
//!   and every directory an operation created or changed), since a watermark may only go out for
//!   what survives a power loss; `put_new` is a temporary file linked to its name (the link fails
//!   if the name exists), `publish` a hard link;
//! - an S3 bucket and prefix: `put_new` is a conditional PUT (`If-None-Match: *`), `publish` a
//!   server-side copy, `stage` a multipart upload from a local spool file (an upload is visible
//!   only once complete). S3's own contract makes an acknowledged write durable.
//!
//! Calls on a local store block the calling thread (the collector calls them from its sink
//! thread); calls on S3 are async.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use switchboard_bus::dataset::{DatasetError, Location, StoreOptions};
use tokio::io::AsyncWriteExt;

/// A storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A local file-system call failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An object store request failed (after its retries).
    #[error("{what} {key}: {}", switchboard_bus::dataset::store_error_text(&.source))]
    Remote {
        /// The operation.
        what: &'static str,
        /// The object's key.
        key: String,
        /// Why.
        source: object_store::Error,
    },
}

/// Where the dataset is stored.
#[derive(Debug, Clone)]
pub enum Store {
    /// A local or mounted directory.
    Local {
        /// The dataset root.
        root: PathBuf,
    },
    /// An S3 bucket.
    Remote {
        /// The client.
        store: Arc<dyn ObjectStore>,
        /// The dataset root below the bucket (`""` or `a/b`).
        prefix: String,
        /// `s3://bucket[/prefix]`, for messages.
        url: String,
        /// Local directory for files being written before they go up.
        spool: PathBuf,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

/// fsync a file or directory.
fn sync_path(path: &Path) -> Result<(), StoreError> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(io(path))
}

/// Create `dir` and its missing parents, fsyncing each new directory into its parent.
fn create_dirs_durably(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.as_os_str().is_empty() && !at.exists() {
        missing.push(at.to_owned());
        match at.parent() {
            Some(p) => at = p,
            None => break,
        }
    }
    for d in missing.iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(StoreError::Io { path: d.clone(), source: e }),
        }
        let parent = d.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        sync_path(parent)?;
    }
    Ok(())
}

/// Remove the files an earlier run of this collector left in its spool (killed while writing
/// or uploading them): nothing refers to them, and their rows come again from the agents.
fn clear_spool(spool: &Path) {
    let Ok(entries) = std::fs::read_dir(spool) else { return };
    let mut removed = 0u64;
    for e in entries.flatten() {
        let name = e.file_name();
        if name.to_string_lossy().ends_with(".tmp") && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(removed, spool = %spool.display(), "removed files an earlier run left in the spool");
    }
}

impl Store {
    /// The store for `location`; `spool` is where an S3 store keeps files while they are written.
    pub fn open(location: &Location, options: &StoreOptions, spool: PathBuf) -> Result<Self, DatasetError> {
        Ok(match location {
            Location::Local(root) => Self::Local { root: root.clone() },
            Location::S3 { bucket, prefix } => {
                clear_spool(&spool);
                Self::Remote {
                    store: switchboard_bus::dataset::s3_store(bucket, options)?,
                    prefix: prefix.clone(),
                    url: location.display(),
                    spool,
                }
            }
        })
    }

    /// The location, for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Local { root } => root.display().to_string(),
            Self::Remote { url, .. } => url.clone(),
        }
    }

    /// The local directory of a local store.
    pub fn local_root(&self) -> Option<&Path> {
        match self {
            Self::Local { root } => Some(root),
            Self::Remote { .. } => None,
        }
    }

    fn object(prefix: &str, key: &str) -> ObjectPath {
        if prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{prefix}/{key}"))
        }
    }

    /// Where a file that will be staged under `key` is written while it is open: in place on a
    /// local store, in the spool directory on S3.
    pub fn writing_path(&self, key: &str) -> PathBuf {
        match self {
            Self::Local { root } => root.join(key),
            Self::Remote { spool, .. } => spool.join(key.replace('/', "%")),
        }
    }

    /// Make the finished, fsynced file at [`Store::writing_path`] available under `key`: on a
    /// local store, its directory entries are fsynced (up to the root), so that a commit record
    /// written next never names a file a power loss could take back; on S3, an upload (multipart
    /// when large), after which the spool file is removed.
    pub async fn stage(&self, key: &str) -> Result<(), StoreError> {
        let (store, prefix, spool) = match self {
            Self::Local { root } => {
                let mut dir = root.join(key);
                while dir.pop() && dir.starts_with(root) {
                    sync_path(&dir)?;
                }
                return Ok(());
            }
            Self::Remote { store, prefix, spool, .. } => (store, prefix, spool),
        };
        let local = spool.join(key.replace('/', "%"));
        let mut file = tokio::fs::File::open(&local).await.map_err(io(&local))?;
        let mut up = BufWriter::new(store.clone(), Self::object(prefix, key));
        let copied = tokio::io::copy(&mut file, &mut up).await;
        let done = match copied {
            Ok(_) => up.shutdown().await,
            Err(e) => {
                let _ = up.abort().await;
                Err(e)
            }
        };
        done.map_err(|e| StoreError::Remote {
            what: "uploading",
            key: key.to_owned(),
            source: object_store::Error::Generic { store: "S3", source: Box::new(e) },
        })?;
        let _ = tokio::fs::remove_file(&local).await;
        Ok(())
    }

    /// Create `key` with `bytes` only if it does not exist: `Ok(true)` when created, `Ok(false)`
    /// when the key was taken. Durable when it returns.
    pub async fn put_new(&self, key: &str, bytes: Vec<u8>) -> Result<bool, StoreError> {
        match self {
            Self::Local { root } => {
                let path = root.join(key);
                let dir = path.parent().unwrap_or(root).to_owned();
                create_dirs_durably(&dir)?;
                let tmp = dir.join(format!(
                    ".{}.{}.tmp",
                    path.file_name().and_then(|n| n.to_str()).unwrap_or("x"),
                    std::process::id()
                ));
                {
                    use std::io::Write;
                    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
                    f.write_all(&bytes).and_then(|_| f.sync_all()).map_err(io(&tmp))?;
                }
                let linked = std::fs::hard_link(&tmp, &path);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => {
                        sync_path(&dir)?;
                        Ok(true)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(StoreError::Io { path, source: e }),
                }
            }
            Self::Remote { store, prefix, .. } => {
                let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
                match store.put_opts(&Self::object(prefix, key), PutPayload::from(bytes), opts).await {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                        Ok(false)
                    }
                    Err(source) => Err(StoreError::Remote { what: "creating", key: key.to_owned(), source }),
                }
            }
        }
    }

    /// Write `key` whatever it holds (for hints that may be stale).
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        match self {
            Self::Local { root } => {
                let path = root.join(key);
                let tmp = path.with_extension("tmp");
                if let Some(dir) = path.parent() {
                    create_dirs_durably(dir)?;
                }
                std::fs::write(&tmp, &bytes).and_then(|_| std::fs::rename(&tmp, &path)).map_err(io(&path))
            }
            Self::Remote { store, prefix, .. } => store
                .put(&Self::object(prefix, key), PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(|source| StoreError::Remote { what: "writing", key: key.to_owned(), source }),
        }
    }

    /// The bytes of `key`, or `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Self::Local { root } => {
                let path = root.join(key);
                match std::fs::read(&path) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(StoreError::Io { path, source: e }),
                }
            }
            Self::Remote { store, prefix, .. } => match store.get(&Self::object(prefix, key)).await {
                Ok(r) => r.bytes().await.map(|b| Some(b.to_vec())).map_err(|source| StoreError::Remote {
                    what: "reading",
                    key: key.to_owned(),
                    source,
                }),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(source) => Err(StoreError::Remote { what: "reading", key: key.to_owned(), source }),
            },
        }
    }

    /// Whether `key` exists.
    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self {
            Self::Local { root } => Ok(root.join(key).exists()),
            Self::Remote { store, prefix, .. } => match store.head(&Self::object(prefix, key)).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(source) => Err(StoreError::Remote { what: "checking", key: key.to_owned(), source }),
            },
        }
    }

    /// Make the staged file `staging` visible under `key`, whole, durably. Idempotent: a second
    /// publish of the same file changes nothing, and a publish whose staged file is gone succeeds
    /// when `key` exists (someone published it first).
    pub async fn publish(&self, staging: &str, key: &str) -> Result<(), StoreError> {
        match self {
            Self::Local { root } => {
                let (from, to) = (root.join(staging), root.join(key));
                let dir = to.parent().unwrap_or(root).to_owned();
                create_dirs_durably(&dir)?;
                match std::fs::hard_link(&from, &to) {
                    Ok(()) => sync_path(&dir),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => sync_path(&dir),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && to.exists() => Ok(()),
                    Err(e) => Err(StoreError::Io { path: to, source: e }),
                }
            }
            Self::Remote { store, prefix, .. } => {
                let (from, to) = (Self::object(prefix, staging), Self::object(prefix, key));
                match store.copy(&from, &to).await {
                    Ok(()) => Ok(()),
                    Err(object_store::Error::NotFound { .. }) if self.exists(key).await? => Ok(()),
                    Err(source) => Err(StoreError::Remote { what: "publishing", key: key.to_owned(), source }),
                }
            }
        }
    }

    /// Delete `key`; a missing key is fine.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self {
            Self::Local { root } => {
                let path = root.join(key);
                match std::fs::remove_file(&path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(StoreError::Io { path, source: e }),
                }
            }
            Self::Remote { store, prefix, .. } => match store.delete(&Self::object(prefix, key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(source) => Err(StoreError::Remote { what: "deleting", key: key.to_owned(), source }),
            },
        }
    }

    /// Every key below `dir` (recursively) with its size, in no particular order.
    pub async fn list(&self, dir: &str) -> Result<Vec<(String, u64)>, StoreError> {
        match self {
            Self::Local { root } => {
                let mut out = Vec::new();
                let mut stack = vec![root.join(dir)];
                while let Some(d) = stack.pop() {
                    let entries = match std::fs::read_dir(&d) {
                        Ok(e) => e,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(StoreError::Io { path: d, source: e }),
                    };
                    for e in entries.flatten() {
                        let p = e.path();
                        match e.metadata() {
                            Ok(m) if m.is_dir() => stack.push(p),
                            Ok(m) => {
                                if let Ok(rel) = p.strip_prefix(root) {
                                    out.push((rel.to_string_lossy().into_owned(), m.len()));
                                }
                            }
                            Err(_) => {} // gone meanwhile
                        }
                    }
                }
                Ok(out)
            }
            Self::Remote { store, prefix, .. } => {
                let base = Self::object(prefix, dir);
                let strip = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
                store
                    .list(Some(&base))
                    .map_ok(|m| {
                        (m.location.as_ref().strip_prefix(&strip).unwrap_or(m.location.as_ref()).to_owned(), m.size)
                    })
                    .try_collect()
                    .await
                    .map_err(|source| StoreError::Remote { what: "listing", key: dir.to_owned(), source })
            }
        }
    }

    /// The footer key-value metadata of the Parquet file `key` of `size` bytes.
    pub async fn footer(&self, key: &str, size: u64) -> Result<Vec<(String, Option<String>)>, String> {
        let kv = |m: &parquet::file::metadata::ParquetMetaData| {
            m.file_metadata()
                .key_value_metadata()
                .map(|kv| kv.iter().map(|k| (k.key.clone(), k.value.clone())).collect())
                .unwrap_or_default()
        };
        match self {
            Self::Local { root } => {
                use parquet::file::reader::{FileReader, SerializedFileReader};
                let file = std::fs::File::open(root.join(key)).map_err(|e| e.to_string())?;
                let reader = SerializedFileReader::new(file).map_err(|e| e.to_string())?;
                Ok(kv(reader.metadata()))
            }
            Self::Remote { store, prefix, .. } => {
                let at = Self::object(prefix, key);
                if size < 12 {
                    return Err("too short for a Parquet file".into());
                }
                let tail = store.get_range(&at, size - 8..size).await.map_err(|e| e.to_string())?;
                if tail.len() != 8 || &tail[4..] != b"PAR1" {
                    return Err("not a Parquet file (no PAR1 at its end)".into());
                }
                let len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
                let start = (size - 8).checked_sub(len).ok_or("footer longer than the file")?;
                let meta = store.get_range(&at, start..size - 8).await.map_err(|e| e.to_string())?;
                let m = parquet::file::metadata::ParquetMetaDataReader::decode_metadata(&meta)
                    .map_err(|e| e.to_string())?;
                Ok(kv(&m))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earlier_runs_spool_files_are_removed_at_open() {
        let spool = tempfile::tempdir().unwrap();
        let left = spool.path().join("_switchboard%staging%c1%logs%.part-c1-1-000001.parquet.tmp");
        std::fs::write(&left, b"half a file").unwrap();
        std::fs::write(spool.path().join("notes.txt"), b"not ours").unwrap();
        let location = Location::parse("s3://bucket/prefix").unwrap();
        let options = StoreOptions {
            endpoint: Some("http://127.0.0.1:9".into()),
            allow_http: true,
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            ..StoreOptions::default()
        };
        Store::open(&location, &options, spool.path().to_owned()).unwrap();
        assert!(!left.exists());
        assert!(spool.path().join("notes.txt").exists());
    }
}
