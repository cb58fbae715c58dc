//! Which sink each stream's payloads and heads go to.
//!
//! Gateway log streams go to `logs`; the agents' own streams to the internal tables defined in
//! [`switchboard_bus::tables`]. Each table is written by a [`LogsSink`] of its own in
//! `<data_dir>/<table>`; [`Tables`] routes payloads, heads and commit outcomes to the right one
//! and merges their status.

use std::collections::BTreeMap;

use std::sync::Arc;
use std::time::Instant;

use switchboard_bus::tables::InternalTable;
use switchboard_bus::wire::control::Heads;
use switchboard_bus::StreamId;

use crate::config::{CollectorConfig, PromotedColumn};
use crate::log::FileEntry;
use crate::logs_table::{LogsTable, TABLE_VERSION};
use crate::sink::{LogsSink, ReplayRequest, SinkStatus};
use crate::stats::CollectorStats;
use crate::store::Store;
use crate::writer::FileSettings;
use crate::{ranges, recovery, CollectorError};

/// An internal table's typed columns as the sink takes them.
pub fn promoted(table: &InternalTable) -> Vec<PromotedColumn> {
    table.columns.iter().map(|c| PromotedColumn { name: c.name.into(), kind: c.kind, bloom: c.bloom }).collect()
}

/// Recover one table's committed ranges from its files, and make its sink.
pub(crate) async fn open(
    config: &CollectorConfig,
    store: &Store,
    dir_name: &str,
    promote: Vec<PromotedColumn>,
    stats: Arc<CollectorStats>,
) -> Result<LogsSink, CollectorError> {
    let recovered = {
        let (store, table) = (store.clone(), dir_name.to_owned());
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || handle.block_on(recovery::recover_store(&store, &table)))
            .await?
            .map_err(|source| CollectorError::Recovery { table: dir_name.to_owned(), source })?
    };
    tracing::info!(
        table = dir_name,
        files = recovered.files,
        streams = recovered.committed.len(),
        removed_tmp = recovered.removed_tmp,
        unreadable = recovered.unreadable.len(),
        "recovered committed ranges from the dataset"
    );
    Ok(table_sink(config, store.clone(), dir_name, promote, recovered.committed, stats))
}

/// The sink that writes table `dir_name` of `store` as `config` says, knowing what is already
/// `committed`: what the collector writes each table with.
pub fn table_sink(
    config: &CollectorConfig,
    store: Store,
    dir_name: &str,
    promote: Vec<PromotedColumn>,
    committed: BTreeMap<StreamId, ranges::RangeSet>,
    stats: Arc<CollectorStats>,
) -> LogsSink {
    let blooms: Vec<String> = promote.iter().filter(|p| p.bloom).map(|p| p.name.clone()).collect();
    let c = &config.collector;
    let settings = FileSettings {
        table: dir_name.to_owned(),
        table_version: TABLE_VERSION,
        writer: config.bus.node.clone(),
        properties: FileSettings::properties(c.zstd_level, c.row_group_rows, &blooms),
        row_group_max_bytes: c.row_group_max_bytes,
    };
    LogsSink::new(LogsTable::new(promote), settings, store, c.max_file_bytes, c.max_file_age(), committed, stats)
}

/// Every table the collector writes.
pub struct Tables {
    /// The `logs` table.
    pub logs: LogsSink,
    /// The internal tables, by stream name.
    pub internal: Vec<(&'static str, LogsSink)>,
}

impl Tables {
    fn sink_for(&mut self, stream_name: &str) -> &mut LogsSink {
        match self.internal.iter_mut().find(|(s, _)| *s == stream_name) {
            Some((_, sink)) => sink,
            None => &mut self.logs,
        }
    }

    fn all(&mut self) -> impl Iterator<Item = &mut LogsSink> {
        std::iter::once(&mut self.logs).chain(self.internal.iter_mut().map(|(_, s)| s))
    }

    /// Take one payload of `stream`.
    pub fn handle(&mut self, stream: &StreamId, payload: &[u8], replayed: bool) {
        self.sink_for(&stream.name).handle(stream, payload, replayed);
    }

    /// Give each table the heads of its own streams; the ranges to pull from the agent.
    pub fn on_heads(&mut self, node: &str, heads: &Heads) -> Vec<ReplayRequest> {
        let stream_of = |k: &str| StreamId::parse_local(node, k).map(|id| id.name).unwrap_or_default();
        let part = |keep: &dyn Fn(&str) -> bool| Heads {
            version: heads.version,
            streams: heads.streams.iter().filter(|(k, _)| keep(&stream_of(k))).map(|(k, v)| (k.clone(), *v)).collect(),
            acked: heads.acked.iter().filter(|(k, _)| keep(&stream_of(k))).map(|(k, v)| (k.clone(), *v)).collect(),
            instance: heads.instance.clone(),
        };
        let internal: Vec<&str> = self.internal.iter().map(|(s, _)| *s).collect();
        let mut out = self.logs.on_heads(node, &part(&|s| !internal.contains(&s)));
        for (stream, sink) in &mut self.internal {
            let stream: &str = stream;
            out.extend(sink.on_heads(node, &part(&|s| s == stream)));
        }
        out
    }

    /// Whether the tables write (this collector leads) or only follow.
    pub fn set_leading(&mut self, leading: bool) {
        self.all().for_each(|s| s.set_leading(leading));
    }

    /// Finish the files that are due (or all of them) in every table, for one commit.
    pub fn finish_due(&mut self, all: bool) -> Vec<FileEntry> {
        self.all().flat_map(|s| s.finish_due(all)).collect()
    }

    /// Tell each table the outcome of the commit of `files`.
    pub fn settle(&mut self, files: &[FileEntry], outcome: Result<(), &str>) {
        for sink in self.all() {
            let mine: Vec<FileEntry> = files.iter().filter(|f| f.table == sink.table_name()).cloned().collect();
            if !mine.is_empty() {
                sink.settle(&mine, outcome);
            }
        }
    }

    /// Files another writer committed (read from the commit log).
    pub fn apply_committed(&mut self, files: &[FileEntry]) {
        for f in files {
            if let Some(sink) = self.all().find(|s| s.table_name() == f.table) {
                sink.apply_committed(&f.ranges);
            }
        }
    }

    /// Drop every open file of every table (this collector stopped writing).
    pub fn abandon_all(&mut self) {
        self.all().for_each(LogsSink::abandon_all);
    }

    /// Whether a commit moved a watermark since the last call.
    pub fn take_watermarks_changed(&mut self) -> bool {
        // Every table: each call clears its table's flag.
        self.all().fold(false, |changed, s| s.take_watermarks_changed() | changed)
    }

    /// Watermarks of every stream (each stream lives in one table).
    pub fn watermarks(&self) -> BTreeMap<StreamId, u64> {
        let mut w = self.logs.watermarks();
        for (_, s) in &self.internal {
            w.extend(s.watermarks());
        }
        w
    }

    /// Since when the oldest record an agent announced and no collector committed has waited,
    /// over every table.
    pub fn oldest_waiting(&self) -> Option<Instant> {
        std::iter::once(&self.logs).chain(self.internal.iter().map(|(_, s)| s)).filter_map(|s| s.oldest_waiting()).min()
    }

    /// Health and lag of every table together.
    pub fn status(&self) -> SinkStatus {
        let mut a = self.logs.status();
        for (_, s) in &self.internal {
            let b = s.status();
            a.watermarks.extend(b.watermarks);
            a.lag.extend(b.lag);
            a.failing = a.failing.or(b.failing);
            a.open_files += b.open_files;
        }
        a
    }
}
