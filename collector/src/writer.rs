//! Writing one table partition's Parquet file.
//!
//! A [`PartitionFile`] is written in the staging area (`_switchboard/staging/…`, outside every
//! table directory, under a `.tmp` name) or, for a dataset on S3, in the local spool directory,
//! while rows stream into it. [`PartitionFile::finish`] records in the footer the sequence ranges
//! per stream the file holds, closes the file and fsyncs it; the commit protocol
//! (`crate::group`) then stages, records and publishes it.
//!
//! Writer properties: zstd (level from the config), dictionary encoding, page statistics, row
//! groups of `row_group_rows` rows (or fewer when buffered rows exceed the memory budget), and
//! Bloom filters on the configured id columns.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use switchboard_bus::StreamId;

use crate::log::FileEntry;
use crate::ranges::RangeSet;

/// Footer key: the table name.
pub const META_TABLE: &str = "switchboard.table";
/// Footer key: the table's schema version.
pub const META_TABLE_VERSION: &str = "switchboard.table_version";
/// Footer key: the sequence ranges the file holds, as JSON `{"<node>/<kind>/<stream>": [[a, b], …]}`.
pub const META_RANGES: &str = "switchboard.ranges";
/// Footer key: the collector that wrote the file.
pub const META_WRITER: &str = "switchboard.writer";

/// A writer or commit failure.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// File system error, with the path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The Parquet encoder failed.
    #[error("{path}: parquet: {source}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// Why.
        source: parquet::errors::ParquetError,
    },
}

/// How files of one table are written.
#[derive(Debug, Clone)]
pub struct FileSettings {
    /// The table name, recorded in footers.
    pub table: String,
    /// The table schema version, recorded in footers.
    pub table_version: u32,
    /// The collector's name, recorded in footers and file names.
    pub writer: String,
    /// Parquet writer properties.
    pub properties: WriterProperties,
    /// Flush a row group once buffered rows take this many bytes.
    pub row_group_max_bytes: usize,
}

impl FileSettings {
    /// Writer properties: zstd at `level`, row groups of `row_group_rows`, Bloom filters on
    /// `bloom_columns`.
    pub fn properties(level: i32, row_group_rows: usize, bloom_columns: &[String]) -> WriterProperties {
        let zstd = ZstdLevel::try_new(level).unwrap_or_default();
        let mut b = WriterProperties::builder()
            .set_compression(Compression::ZSTD(zstd))
            .set_max_row_group_row_count(Some(row_group_rows))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_created_by(format!("switchboard {}", env!("CARGO_PKG_VERSION")));
        for c in bloom_columns {
            let path = ColumnPath::from(c.as_str());
            b = b
                .set_column_bloom_filter_enabled(path.clone(), true)
                .set_column_bloom_filter_fpp(path.clone(), 0.01)
                .set_column_bloom_filter_max_ndv(path, row_group_rows as u64);
        }
        b.build()
    }
}

/// One open, uncommitted Parquet file of a partition.
pub struct PartitionFile {
    /// Where the file is written (a local path).
    local: PathBuf,
    /// Its entry in the commit log once finished (`ranges` and `rows` grow as rows come).
    entry: FileEntry,
    writer: ArrowWriter<File>,
    opened: Instant,
}

impl PartitionFile {
    /// Create the file at `local` (and its directory) for `entry` (table, staging and final
    /// keys; no rows yet).
    pub fn create(
        local: PathBuf,
        entry: FileEntry,
        schema: SchemaRef,
        settings: &FileSettings,
    ) -> Result<Self, WriteError> {
        if let Some(dir) = local.parent() {
            std::fs::create_dir_all(dir).map_err(|source| WriteError::Io { path: dir.to_owned(), source })?;
        }
        let file = File::create(&local).map_err(|source| WriteError::Io { path: local.clone(), source })?;
        let writer = ArrowWriter::try_new(file, schema, Some(settings.properties.clone()))
            .map_err(|source| WriteError::Parquet { path: local.clone(), source })?;
        Ok(Self { local, entry, writer, opened: Instant::now() })
    }

    /// Append rows of `stream` holding the sequence numbers `seqs`.
    pub fn write(
        &mut self,
        batch: &RecordBatch,
        stream: &StreamId,
        seqs: &RangeSet,
        settings: &FileSettings,
    ) -> Result<(), WriteError> {
        let path = &self.local;
        self.writer.write(batch).map_err(|source| WriteError::Parquet { path: path.clone(), source })?;
        if self.writer.in_progress_size() >= settings.row_group_max_bytes {
            self.writer.flush().map_err(|source| WriteError::Parquet { path: path.clone(), source })?;
        }
        self.entry.ranges.entry(stream.clone()).or_default().extend(seqs);
        self.entry.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.entry.rows
    }

    /// Approximate file size so far (flushed bytes plus buffered rows).
    pub fn approx_bytes(&self) -> usize {
        self.writer.bytes_written() + self.writer.in_progress_size()
    }

    /// When the file was opened.
    pub fn opened(&self) -> Instant {
        self.opened
    }

    /// The sequence ranges per stream the file holds.
    pub fn ranges(&self) -> &BTreeMap<StreamId, RangeSet> {
        &self.entry.ranges
    }

    /// Write the footer (with the ranges), close and fsync the file. Returns its commit log
    /// entry; the file is then ready to be staged. On failure the file is removed.
    pub fn finish(mut self, settings: &FileSettings) -> Result<FileEntry, WriteError> {
        let path = self.local.clone();
        let ranges_json = serde_json::to_string(&self.entry.ranges).unwrap_or_else(|_| "{}".into());
        for (k, v) in [
            (META_TABLE, settings.table.clone()),
            (META_TABLE_VERSION, settings.table_version.to_string()),
            (META_WRITER, settings.writer.clone()),
            (META_RANGES, ranges_json),
        ] {
            self.writer.append_key_value_metadata(KeyValue::new(k.to_owned(), v));
        }
        let done =
            self.writer.finish().map_err(|source| WriteError::Parquet { path: path.clone(), source }).and_then(|_| {
                self.writer.inner().sync_all().map_err(|source| WriteError::Io { path: path.clone(), source })
            });
        if let Err(e) = done {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(self.entry)
    }

    /// Give up on the file: remove it (its rows were never committed).
    pub fn abandon(self) {
        drop(self.writer);
        let _ = std::fs::remove_file(&self.local);
    }
}

/// fsync a directory so that a rename in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|source| WriteError::Io { path: dir.to_owned(), source })
}
