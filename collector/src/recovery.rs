//! Start-up recovery: what the dataset already holds, read from the data files themselves.
//!
//! There is no manifest to drift from the data: each committed Parquet file's footer names the
//! sequence ranges it holds ([`crate::writer::META_RANGES`]), so [`recover`] walks a table's
//! directory (or [`recover_store`] lists it on S3), reads only the footers, and returns the
//! committed ranges per stream. Temporary files in a table directory left by a crash of an
//! earlier version (`.*.parquet.tmp`) were never committed; they are removed. What the commit log
//! holds beyond the footers (a commit recorded, not yet published) is added by the caller.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};

use switchboard_bus::StreamId;

use crate::ranges::RangeSet;
use crate::store::{Store, StoreError};
use crate::writer::META_RANGES;

/// What recovery found in one table directory.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Committed sequence ranges per stream (`<node>/<kind>/<stream>`).
    pub committed: BTreeMap<StreamId, RangeSet>,
    /// Committed files read.
    pub files: usize,
    /// Leftover temporary files removed.
    pub removed_tmp: usize,
    /// Files that could not be read (named in the log; left in place for a person to inspect).
    pub unreadable: Vec<PathBuf>,
}

/// Read the footers of every `*.parquet` below `table_dir` and remove `*.parquet.tmp` leftovers.
pub fn recover(table_dir: &Path) -> std::io::Result<Recovered> {
    let mut out = Recovered::default();
    for file in switchboard_bus::tables::table_files(table_dir)? {
        let path = file.path;
        if !file.committed {
            tracing::warn!(path = %path.display(), "removing an uncommitted file left by a crash");
            std::fs::remove_file(&path)?;
            out.removed_tmp += 1;
            continue;
        }
        match read_ranges(&path) {
            Ok(ranges) => {
                for (stream, set) in ranges {
                    out.committed.entry(stream).or_default().extend(&set);
                }
                out.files += 1;
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot read the footer of a data file");
                out.unreadable.push(path);
            }
        }
    }
    Ok(out)
}

/// What `store` holds of `table`: [`recover`] on a local directory; on S3 the listing's
/// `*.parquet` keys and their footers (a key whose name starts with `.` is not a data file).
pub async fn recover_store(store: &Store, table: &str) -> Result<Recovered, StoreError> {
    if let Some(root) = store.local_root() {
        let dir = root.join(table);
        return recover(&dir).map_err(|source| StoreError::Io { path: dir, source });
    }
    let mut out = Recovered::default();
    for (key, size) in store.list(table).await? {
        let name = key.rsplit('/').next().unwrap_or_default();
        if !name.ends_with(".parquet") || name.starts_with('.') {
            continue;
        }
        let ranges = store.footer(&key, size).await.and_then(|kv| {
            let value = kv.into_iter().find(|(k, _)| k == META_RANGES).and_then(|(_, v)| v);
            let value = value.ok_or_else(|| format!("no {META_RANGES} in the footer"))?;
            serde_json::from_str::<BTreeMap<StreamId, RangeSet>>(&value).map_err(|e| format!("bad {META_RANGES}: {e}"))
        });
        match ranges {
            Ok(ranges) => {
                for (stream, set) in ranges {
                    out.committed.entry(stream).or_default().extend(&set);
                }
                out.files += 1;
            }
            Err(e) => {
                tracing::error!(%key, error = %e, "cannot read the footer of a data file");
                out.unreadable.push(key.into());
            }
        }
    }
    Ok(out)
}

/// The sequence ranges recorded in one file's footer.
pub fn read_ranges(path: &Path) -> Result<BTreeMap<StreamId, RangeSet>, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let reader = SerializedFileReader::new(file).map_err(|e| e.to_string())?;
    let kv = reader.metadata().file_metadata().key_value_metadata();
    let Some(value) = kv.and_then(|kv| kv.iter().find(|k| k.key == META_RANGES)).and_then(|k| k.value.clone()) else {
        return Err(format!("no {META_RANGES} in the footer"));
    };
    serde_json::from_str(&value).map_err(|e| format!("bad {META_RANGES}: {e}"))
}
