//! SQL over Switchboard's Parquet dataset, with DataFusion.
//!
//! [`Dataset::open`] finds the tables below the dataset root (`logs/`, `limits/`, `dlr/`,
//! `metrics/`); the first statement that names one registers it (lists its files and reads
//! their footers; a file that cannot be read fails the statements of its table only) as a listing
//! table with its Hive partition columns (`date` as text `YYYY-MM-DD`, `hour` as an integer), so
//! that `WHERE date = '2026-11-22' AND hour = 10` reads only that hour's files. Parquet reading
//! uses footer statistics, page indexes and Bloom filters, with filters pushed into the scan.
//! [`Dataset::sql`] runs a query; [`render`] prints the result as an aligned table, CSV, JSON or
//! JSON lines, [`write_parquet`] writes it to a file. [`Dataset::open_location`] reads a dataset on
//! S3 (`s3://bucket/prefix`) as well as a directory. [`Dataset::open_window`] shows only the
//! rows of a time window ([`window`]); [`functions`] adds HDR histogram and tag functions.
//!
//! A dataset is read-only unless [`Dataset::allow_writes`] says otherwise: statements that write
//! files or define tables (`COPY ... TO`, `INSERT`, `CREATE EXTERNAL TABLE`, ...) are refused
//! with [`QueryError::ReadOnly`] before anything runs.
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchboard_queries::QueryError> {
//! let ds = switchboard_queries::Dataset::open("switchboard-data".as_ref()).await?;
//! let batches = ds.sql("SELECT node, count(*) FROM logs GROUP BY node").await?;
//! switchboard_queries::render(&batches, switchboard_queries::OutputFormat::Table, &mut std::io::stdout())?;
//! # Ok(()) }
//! ```

pub mod functions;
mod hours;
pub mod plot;
pub mod reports;
pub mod window;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
pub use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionConfig, SessionContext};
use switchboard_bus::dataset::{Location, StoreOptions};
use switchboard_bus::tables;
pub use window::TimeWindow;

/// The Arrow record batch type results come in.
pub mod datafusion_batch {
    pub use datafusion::arrow::array::RecordBatch;
}

/// The tables a dataset may hold, by directory name.
pub use switchboard_bus::tables::ALL as TABLES;

/// A query could not run or its result could not be written.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The dataset root does not exist.
    #[error("no dataset at {0}: not a directory (a dataset is the directory a collector writes, its data_dir)")]
    NoDataset(PathBuf),
    /// DataFusion rejected or failed the query; its own message.
    #[error("{0}")]
    Sql(String),
    /// The statement would write files or define tables, and the dataset is read-only; DataFusion's
    /// reason (e.g. `DML not supported: COPY`).
    #[error(
        "refused ({0}): queries are read-only; statements that write files or define tables (COPY ... TO, \
         INSERT, CREATE EXTERNAL TABLE, ...) need --allow-write"
    )]
    ReadOnly(String),
    /// The result could not be formatted.
    #[error("cannot format the result: {0}")]
    Format(#[from] ArrowError),
    /// The result could not be written.
    #[error("cannot write the result: {0}")]
    Io(#[from] std::io::Error),
    /// The dataset's object store cannot be reached or listed.
    #[error("dataset store: {0}")]
    Store(String),
}

impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        // DataFusion wraps errors in context layers; the innermost message is the useful one.
        QueryError::Sql(e.find_root().to_string())
    }
}

/// How to print a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// An aligned text table.
    #[default]
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
}

/// A dataset root with its tables registered.
pub struct Dataset {
    ctx: SessionContext,
    tables: Vec<String>,
    /// Tables found but not yet registered, with where their files are: the first statement
    /// that names one registers it (lists its files and reads their footers), so that a query
    /// of one table does not read every table's footers.
    unopened: tokio::sync::Mutex<Vec<(String, url::Url)>>,
    window: TimeWindow,
    writes_allowed: bool,
    /// Whether a collector has written here (its commit log is there), tables or not.
    collector_wrote: bool,
}

impl Dataset {
    /// Register every table present below `root`.
    pub async fn open(root: &Path) -> Result<Self, QueryError> {
        Self::open_window(root, TimeWindow::default()).await
    }

    /// Register every table present below `root`, each showing only the rows of `window` (and
    /// reading only the files of its hours).
    pub async fn open_window(root: &Path, window: TimeWindow) -> Result<Self, QueryError> {
        if !root.is_dir() {
            return Err(QueryError::NoDataset(root.to_owned()));
        }
        let mut found = Vec::new();
        for table in TABLES {
            let dir = root.join(table);
            if !has_parquet(&dir) {
                continue;
            }
            let url = url::Url::from_directory_path(dir.canonicalize()?)
                .map_err(|()| QueryError::Sql(format!("{} is not a path a URL can name", dir.display())))?;
            found.push(((*table).to_owned(), url));
        }
        let collector_wrote = root.join(switchboard_bus::dataset::META_DIR).is_dir();
        Ok(Self::with_tables(Self::context_for_reading(), found, window, collector_wrote))
    }

    fn with_tables(
        ctx: SessionContext,
        found: Vec<(String, url::Url)>,
        window: TimeWindow,
        collector_wrote: bool,
    ) -> Self {
        let tables = found.iter().map(|(name, _)| name.clone()).collect();
        Self { ctx, tables, unopened: tokio::sync::Mutex::new(found), window, writes_allowed: false, collector_wrote }
    }

    /// Whether this looks like no dataset at all: no table and no collector's commit log (a
    /// mistyped `--data`, or a directory of something else).
    pub fn is_not_a_dataset(&self) -> bool {
        self.tables.is_empty() && !self.collector_wrote
    }

    /// The dataset at `location` (a directory, or `s3://bucket/prefix` reached as `options` and
    /// the `AWS_*` environment variables say), each table showing only the rows of `window`.
    pub async fn open_location(
        location: &Location,
        options: &StoreOptions,
        window: TimeWindow,
    ) -> Result<Self, QueryError> {
        let (bucket, prefix) = match location {
            Location::Local(root) => return Self::open_window(root, window).await,
            Location::S3 { bucket, prefix } => (bucket, prefix),
        };
        let store =
            switchboard_bus::dataset::s3_store(bucket, options).map_err(|e| QueryError::Store(e.to_string()))?;
        let ctx = Self::context_for_reading();
        let base = url::Url::parse(&format!("s3://{bucket}")).map_err(|e| QueryError::Store(e.to_string()))?;
        ctx.register_object_store(&base, store.clone());
        let mut found = Vec::new();
        for table in TABLES {
            let dir = if prefix.is_empty() { (*table).to_owned() } else { format!("{prefix}/{table}") };
            let listed: Vec<object_store::ObjectMeta> =
                futures::TryStreamExt::try_collect(store.list(Some(&object_store::path::Path::from(dir.as_str()))))
                    .await
                    .map_err(|e| {
                        QueryError::Store(format!(
                            "listing {}: {}",
                            location.display(),
                            switchboard_bus::dataset::store_error_text(&e)
                        ))
                    })?;
            let committed = listed
                .iter()
                .any(|m| m.location.filename().is_some_and(|n| n.ends_with(".parquet") && !n.starts_with('.')));
            if !committed {
                continue;
            }
            let url =
                url::Url::parse(&format!("s3://{bucket}/{dir}/")).map_err(|e| QueryError::Store(e.to_string()))?;
            found.push(((*table).to_owned(), url));
        }
        let meta = if prefix.is_empty() {
            switchboard_bus::dataset::META_DIR.to_owned()
        } else {
            format!("{prefix}/{}", switchboard_bus::dataset::META_DIR)
        };
        let first =
            futures::StreamExt::next(&mut store.list(Some(&object_store::path::Path::from(meta.as_str())))).await;
        let collector_wrote = match first {
            Some(Err(e)) => {
                return Err(QueryError::Store(format!(
                    "listing {}: {}",
                    location.display(),
                    switchboard_bus::dataset::store_error_text(&e)
                )))
            }
            found => found.is_some(),
        };
        Ok(Self::with_tables(ctx, found, window, collector_wrote))
    }

    /// Register the tables `statement` names that are not registered yet (every one, for a
    /// statement that reads the catalog: `SHOW TABLES`, `information_schema`).
    async fn open_named(&self, named: &[datafusion::common::TableReference]) -> Result<(), QueryError> {
        let mut unopened = self.unopened.lock().await;
        if unopened.is_empty() {
            return Ok(());
        }
        let catalog = named.iter().any(|r| r.schema() == Some("information_schema"));
        let mut i = 0;
        while i < unopened.len() {
            let name = &unopened[i].0;
            if catalog || named.iter().any(|r| r.table() == name) {
                // A table that cannot be registered stays to be tried (and said) again.
                let (name, url) = &unopened[i];
                register(&self.ctx, name, url.clone(), &self.window).await?;
                unopened.remove(i);
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    fn context_for_reading() -> SessionContext {
        let mut config = SessionConfig::new().with_information_schema(true);
        let opts = config.options_mut();
        opts.execution.parquet.pushdown_filters = true;
        opts.execution.parquet.reorder_filters = true;
        opts.execution.parquet.bloom_filter_on_read = true;
        opts.execution.parquet.metadata_size_hint = Some(FOOTER_READ_BYTES);
        let ctx = SessionContext::new_with_config(config);
        functions::register(&ctx);
        ctx
    }

    /// Whether statements may write files or define tables (DDL such as `CREATE EXTERNAL TABLE`,
    /// DML such as `COPY ... TO` and `INSERT`). Off by default: a dataset opens read-only.
    pub fn allow_writes(mut self, allowed: bool) -> Self {
        self.writes_allowed = allowed;
        self
    }

    /// What [`Dataset::sql`] lets run. Statements (`SET`, transactions) stay allowed when
    /// read-only: they change only this session, never a file.
    fn sql_options(&self) -> SQLOptions {
        SQLOptions::new().with_allow_ddl(self.writes_allowed).with_allow_dml(self.writes_allowed)
    }

    /// The tables that were found.
    pub fn tables(&self) -> &[String] {
        &self.tables
    }

    /// The DataFusion context, for callers that register more (with every table of the
    /// dataset registered: a statement planned through it directly sees them all).
    pub async fn context(&self) -> Result<&SessionContext, QueryError> {
        let all: Vec<_> = self.tables.iter().map(|t| datafusion::common::TableReference::bare(t.as_str())).collect();
        self.open_named(&all).await?;
        Ok(&self.ctx)
    }

    /// Run one SQL statement and collect its result. The result always holds at least one
    /// batch, so that an empty result still has its columns (a zero-row batch).
    ///
    /// A statement that writes is refused with [`QueryError::ReadOnly`] unless
    /// [`Dataset::allow_writes`] allowed it; the check is on the planned statement, before it runs.
    pub async fn sql(&self, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
        let df = self.frame(sql).await?;
        collect_with_columns(df).await.map_err(|e| self.explain(e))
    }

    /// Plan one statement, refusing one that writes unless writes are allowed.
    async fn frame(&self, sql: &str) -> Result<DataFrame, QueryError> {
        let state = self.ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(sql, &dialect).map_err(|e| self.explain(e))?;
        self.open_named(&state.resolve_table_references(&statement).map_err(|e| self.explain(e))?).await?;
        let plan = self.ctx.state().statement_to_plan(statement).await.map_err(|e| self.explain(e))?;
        self.sql_options().verify_plan(&plan).map_err(|e| {
            QueryError::ReadOnly(match e.find_root() {
                DataFusionError::Plan(reason) => reason.clone(),
                other => other.to_string(),
            })
        })?;
        self.ctx.execute_logical_plan(plan).await.map_err(|e| self.explain(e))
    }

    /// Run one SQL statement (checked as [`Dataset::sql`] checks it) and return its rows as a
    /// stream, batch by batch as they are made: a result larger than memory goes through.
    pub async fn sql_stream(&self, sql: &str) -> Result<SendableRecordBatchStream, QueryError> {
        let df = self.frame(sql).await?;
        df.execute_stream().await.map_err(|e| self.explain(e))
    }

    fn explain(&self, e: DataFusionError) -> QueryError {
        let root = e.find_root();
        let mut msg = match root {
            // `SQL error: ParserError("Expected: ...")` said plainly, with where to look.
            DataFusionError::SQL(parse, _) => {
                use datafusion::sql::sqlparser::parser::ParserError;
                let said = match parse.as_ref() {
                    ParserError::TokenizerError(m) | ParserError::ParserError(m) => m.clone(),
                    other => other.to_string(),
                };
                format!(
                    "SQL syntax: {said}\nhint: statements are DataFusion's SQL (close to PostgreSQL's); SHOW TABLES \
                     and SHOW COLUMNS FROM <table> list what there is to query"
                )
            }
            other => other.to_string(),
        };
        if let Some(t) = self.tables.iter().find(|t| msg.contains(&format!("Table '{t}' doesn't exist"))) {
            msg = format!(
                "{t} is a table of the dataset, written by the collector alone: DROP does not apply to it (it \
                 removes only what a statement of the same session defined, and this command runs one statement)"
            );
        }
        if msg.contains("Insert into not implemented") {
            msg.push_str(
                "\nhint: the dataset's tables are written by the collector alone and take no INSERT; write a \
                 result to files with COPY (...) TO '<file>' (with --allow-write) or --format parquet --output",
            );
        }
        if msg.contains("Cast error") && msg.contains("to value of Int") && msg.contains('-') {
            msg.push_str(
                "\nhint: `date` is text ('YYYY-MM-DD'): quote it, as in WHERE date = '2026-11-22' (an unquoted \
                 2026-11-22 is a subtraction)",
            );
        }
        if msg.contains("not found") && msg.contains("table") {
            if self.is_not_a_dataset() {
                msg.push_str(&format!(
                    "\nhint: this is no dataset: neither a table nor a collector's commit log ({}/) is here; pass \
                     the collector's data_dir",
                    switchboard_bus::dataset::META_DIR
                ));
            } else if self.tables.is_empty() {
                msg.push_str(
                    "\nhint: the dataset has no tables yet (no committed Parquet files): a collector commits \
                     a file max_file_age_ms (30 s by default) after opening it, or once it is full",
                );
            } else {
                msg.push_str(&format!(
                    "\nhint: tables here: {} (a table appears with its first committed file)",
                    self.tables.join(", ")
                ));
            }
        }
        QueryError::Sql(msg)
    }
}

/// Run `df` and collect its rows; when there are none, one empty batch with its columns, so that
/// an empty result can still be shown with its header.
async fn collect_with_columns(df: DataFrame) -> Result<Vec<RecordBatch>, DataFusionError> {
    let task = Arc::new(df.task_ctx());
    let plan = df.create_physical_plan().await?;
    let schema = plan.schema();
    let mut batches = datafusion::physical_plan::collect(plan, task).await?;
    if batches.is_empty() {
        batches.push(RecordBatch::new_empty(schema));
    }
    Ok(batches)
}

/// Register `table` over the files below `url`, with its Hive partition columns, showing only the
/// rows of `window`.
async fn register(ctx: &SessionContext, table: &str, url: url::Url, window: &TimeWindow) -> Result<(), QueryError> {
    let options = ParquetReadOptions::default().table_partition_cols(vec![
        (tables::DATE.to_owned(), DataType::Utf8),
        (tables::HOUR.to_owned(), DataType::Int32),
    ]);
    if window.is_all() {
        register_files(ctx, table, url, options).await?;
    } else {
        let all = format!("{table}_all");
        register_files(ctx, &all, url, options).await?;
        let view = ctx.sql(&format!("SELECT * FROM {all} WHERE {}", window.condition())).await?.into_view();
        ctx.register_table(table, view)?;
    }
    Ok(())
}

/// The committed files of a table: `*.parquet` in its partition directories, not the collector's
/// files in the making nor any other name that starts with a dot (docs/protocol.md, "At rest").
const COMMITTED: &str = "[!.]*.parquet";

/// Register the committed Parquet files below the directory `url` as `name`, hours spelled as on
/// disk ([`hours`]). A file that is not readable Parquet is named in the error.
async fn register_files(
    ctx: &SessionContext,
    name: &str,
    url: url::Url,
    options: ParquetReadOptions<'_>,
) -> Result<(), QueryError> {
    use datafusion::datasource::file_format::options::ReadOptions as _;
    use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};
    let pattern = glob::Pattern::new(COMMITTED).map_err(|e| QueryError::Sql(e.to_string()))?;
    let table_url = ListingTableUrl::try_new(url, Some(pattern))?;
    let listing = options.to_listing_options(&ctx.copied_config(), ctx.copied_table_options());
    let state = ctx.state();
    let schema = match listing.infer_schema(&state, &table_url).await {
        Ok(schema) => schema,
        Err(e) => return Err(unreadable_file(&state, &listing, &table_url).await.unwrap_or_else(|| e.into())),
    };
    let config = ListingTableConfig::new(table_url).with_listing_options(listing).with_schema(schema);
    let files = ListingTable::try_new(config)?.with_cache(ctx.runtime_env().cache_manager.get_file_statistic_cache());
    ctx.register_table(name, Arc::new(hours::PaddedHours(Arc::new(files))))?;
    Ok(())
}

/// The first file of `url` whose footer cannot be read, as an error that names it (a table's
/// schema comes from every file's footer, so one bad file stops every query of the table).
async fn unreadable_file(
    state: &datafusion::execution::SessionState,
    listing: &datafusion::datasource::listing::ListingOptions,
    url: &datafusion::datasource::listing::ListingTableUrl,
) -> Option<QueryError> {
    use futures::TryStreamExt as _;
    let store = state.runtime_env().object_store(url).ok()?;
    let files: Vec<_> =
        url.list_all_files(state, store.as_ref(), &listing.file_extension).await.ok()?.try_collect().await.ok()?;
    for file in files {
        if let Err(e) = listing.format.infer_schema(state, &store, std::slice::from_ref(&file)).await {
            return Some(QueryError::Sql(format!(
                "{}: {} (not a readable Parquet file: move it out of the dataset, or give it a name \
                 that starts with a dot, to query the rest)",
                file.location,
                e.find_root()
            )));
        }
    }
    None
}

fn has_parquet(dir: &Path) -> bool {
    switchboard_bus::tables::table_files(dir).is_ok_and(|files| files.iter().any(|f| f.committed))
}

/// Write the rows of `stream` to `out` in `format` as they come (the table format, which
/// aligns columns over the whole result, takes at most [`TABLE_MAX_ROWS`]); the rows written.
/// Output as [`render`] gives it.
pub async fn write_stream(
    mut stream: SendableRecordBatchStream,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<u64, QueryError> {
    use futures::StreamExt as _;
    let schema = stream.schema();
    let mut rows = 0u64;
    let mut next = async || stream.next().await.transpose().map_err(QueryError::from);
    match format {
        OutputFormat::Table => {
            let mut batches = Vec::new();
            while let Some(b) = next().await? {
                rows += b.num_rows() as u64;
                if rows > TABLE_MAX_ROWS {
                    return Err(QueryError::Sql(format!(
                        "the result has more than {TABLE_MAX_ROWS} rows, more than a table is made for (it is \
                         held whole to align its columns): use --format csv, json or ndjson, which stream, or \
                         add a LIMIT"
                    )));
                }
                batches.push(b);
            }
            if batches.is_empty() {
                batches.push(RecordBatch::new_empty(schema));
            }
            render(&batches, format, out)?;
        }
        OutputFormat::Csv => {
            let mut w = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(&mut *out);
            let mut any = false;
            while let Some(b) = next().await? {
                rows += b.num_rows() as u64;
                w.write(&flatten_for_csv(&b)?)?;
                any = true;
            }
            if !any {
                w.write(&flatten_for_csv(&RecordBatch::new_empty(schema))?)?;
            }
        }
        OutputFormat::Json | OutputFormat::Ndjson => {
            let mut w = JsonRows::new(&mut *out, format == OutputFormat::Json);
            while let Some(b) = next().await? {
                rows += b.num_rows() as u64;
                w.write(&b)?;
            }
            w.finish()?;
        }
    }
    Ok(rows)
}

/// Rows as JSON objects with every column (a null as `null`), one row per line: a JSON array
/// (`[`, the rows separated by commas, `]`) or NDJSON. A line per row lets `head` and `jq
/// --stream` start on the first rows of a large result.
struct JsonRows<'a> {
    out: &'a mut dyn Write,
    array: bool,
    rows: u64,
}

impl<'a> JsonRows<'a> {
    fn new(out: &'a mut dyn Write, array: bool) -> Self {
        Self { out, array, rows: 0 }
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), QueryError> {
        use datafusion::arrow::json::{writer::LineDelimited, WriterBuilder};
        let mut lines = Vec::new();
        let mut w = WriterBuilder::new().with_explicit_nulls(true).build::<_, LineDelimited>(&mut lines);
        w.write(batch)?;
        w.finish()?;
        drop(w);
        // JSON text holds no raw newline (strings escape it): each line is one row.
        for line in lines.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
            if self.array {
                self.out.write_all(if self.rows == 0 { b"[\n" } else { b",\n" })?;
            }
            self.out.write_all(line)?;
            if !self.array {
                self.out.write_all(b"\n")?;
            }
            self.rows += 1;
        }
        Ok(())
    }

    fn finish(self) -> Result<(), QueryError> {
        if self.array {
            self.out.write_all(if self.rows == 0 { b"[]\n" } else { b"\n]\n" })?;
        }
        Ok(())
    }
}

/// `batches` (at least one) as a stream, for [`write_stream`].
pub fn stream_of(batches: Vec<RecordBatch>) -> Result<SendableRecordBatchStream, QueryError> {
    let schema = batches.first().map(RecordBatch::schema).ok_or_else(|| QueryError::Sql("no result".into()))?;
    let rows = datafusion::physical_plan::memory::MemoryStream::try_new(batches, schema.clone(), None)?;
    Ok(Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, rows)))
}

/// How many bytes at a file's end are read to find its footer. The collector's footers (with
/// their page index) take a few KiB; DataFusion's default of 512 KiB read and zeroed half a
/// megabyte per file at every open, most of an analyst query's fixed cost. A larger footer
/// costs a second read.
const FOOTER_READ_BYTES: usize = 64 * 1024;

/// The most rows the table format shows: it holds the whole result to align its columns.
pub const TABLE_MAX_ROWS: u64 = 100_000;

/// Rows in `batches`.
pub fn row_count(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

/// Write `batches` to `out` in `format`.
///
/// An empty result keeps its columns: the table shows its header and `0 rows`, CSV its header
/// line, JSON `[]`, JSON lines nothing.
pub fn render(batches: &[RecordBatch], format: OutputFormat, out: &mut dyn Write) -> Result<(), QueryError> {
    match format {
        OutputFormat::Table => {
            if batches.is_empty() {
                writeln!(out, "0 rows")?;
                return Ok(());
            }
            let table = datafusion::arrow::util::pretty::pretty_format_batches(batches)?;
            writeln!(out, "{table}")?;
            if row_count(batches) == 0 {
                writeln!(out, "0 rows")?;
            }
        }
        OutputFormat::Csv => {
            let mut w = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(&mut *out);
            for b in batches {
                w.write(&flatten_for_csv(b)?)?;
            }
        }
        OutputFormat::Json | OutputFormat::Ndjson => {
            let mut w = JsonRows::new(&mut *out, format == OutputFormat::Json);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
    }
    Ok(())
}

/// Write `batches` to a Parquet file at `path` (zstd), readable by any Parquet reader. Text and
/// bytes are written as Utf8 and Binary, the types of the dataset's own files (the engine reads
/// them as views, which readers would otherwise be handed back).
pub fn write_parquet(batches: &[RecordBatch], path: &Path) -> Result<u64, QueryError> {
    let Some(first) = batches.first() else {
        return Err(QueryError::Sql("the query returned no columns to write".into()));
    };
    let mut w = ParquetOut::create(path, &first.schema())?;
    for b in batches {
        w.write(b)?;
    }
    w.close()
}

/// Write the rows of `stream` to a Parquet file at `path` as they come; the rows written.
pub async fn write_parquet_stream(mut stream: SendableRecordBatchStream, path: &Path) -> Result<u64, QueryError> {
    use futures::StreamExt as _;
    let mut out = ParquetOut::create(path, &stream.schema())?;
    while let Some(b) = stream.next().await {
        out.write(&b?)?;
    }
    out.close()
}

/// Run a statement's stream to its end, for a statement whose result is not shown (one without
/// columns: SET, CREATE VIEW).
pub async fn run_to_end(mut stream: SendableRecordBatchStream) -> Result<(), QueryError> {
    use futures::StreamExt as _;
    while let Some(b) = stream.next().await {
        b?;
    }
    Ok(())
}

/// A Parquet file written batch by batch ([`write_parquet`] whole, or a stream as it comes).
pub struct ParquetOut {
    path: PathBuf,
    schema: Arc<Schema>,
    writer: datafusion::parquet::arrow::ArrowWriter<std::fs::File>,
    rows: u64,
}

impl ParquetOut {
    /// Create the file at `path` for rows of `schema`.
    pub fn create(path: &Path, schema: &Schema) -> Result<Self, QueryError> {
        use datafusion::parquet::arrow::ArrowWriter;
        use datafusion::parquet::basic::{Compression, ZstdLevel};
        use datafusion::parquet::file::properties::WriterProperties;
        let plain = |t: &DataType| match t {
            DataType::Utf8View => DataType::Utf8,
            DataType::BinaryView => DataType::Binary,
            other => other.clone(),
        };
        let schema = Arc::new(Schema::new_with_metadata(
            schema.fields().iter().map(|f| f.as_ref().clone().with_data_type(plain(f.data_type()))).collect::<Vec<_>>(),
            schema.metadata().clone(),
        ));
        let props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default())).build();
        let file = std::fs::File::create(path)?;
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| failed(path, &e))?;
        Ok(Self { path: path.to_owned(), schema, writer, rows: 0 })
    }

    /// Append the rows of `b`.
    pub fn write(&mut self, b: &RecordBatch) -> Result<(), QueryError> {
        let columns = b
            .columns()
            .iter()
            .zip(self.schema.fields())
            .map(|(c, f)| datafusion::arrow::compute::cast(c, f.data_type()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| failed(&self.path, &e))?;
        let b = RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| failed(&self.path, &e))?;
        self.writer.write(&b).map_err(|e| failed(&self.path, &e))?;
        self.rows += b.num_rows() as u64;
        Ok(())
    }

    /// Finish the file; the rows written.
    pub fn close(self) -> Result<u64, QueryError> {
        self.writer.close().map_err(|e| failed(&self.path, &e))?;
        Ok(self.rows)
    }
}

fn failed(path: &Path, e: &dyn std::fmt::Display) -> QueryError {
    QueryError::Sql(format!("{}: {e}", path.display()))
}

/// CSV has no nested or binary values: a map, list or struct column is written as JSON text
/// (as `--format json` writes it: a value may hold `, ` or `: ` of its own), a binary one as hex.
fn flatten_for_csv(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    use datafusion::arrow::json::writer::{make_encoder, EncoderOptions};
    let nested = |t: &DataType| {
        matches!(t, DataType::Map(..) | DataType::List(_) | DataType::LargeList(_) | DataType::Struct(_))
    };
    let binary = |t: &DataType| matches!(t, DataType::Binary | DataType::LargeBinary | DataType::BinaryView);
    if !batch.schema().fields().iter().any(|f| nested(f.data_type()) || binary(f.data_type())) {
        return Ok(batch.clone());
    }
    let (opts, json_opts) = (FormatOptions::default(), EncoderOptions::default());
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (f, col) in batch.schema().fields().iter().zip(batch.columns()) {
        let text: StringArray = if nested(f.data_type()) {
            let mut encoder = make_encoder(f, col.as_ref(), &json_opts)?;
            let mut buf = Vec::new();
            (0..col.len())
                .map(|i| {
                    (!col.is_null(i)).then(|| {
                        buf.clear();
                        encoder.encode(i, &mut buf);
                        String::from_utf8_lossy(&buf).into_owned()
                    })
                })
                .collect()
        } else if binary(f.data_type()) {
            let fmt = ArrayFormatter::try_new(col.as_ref(), &opts)?;
            (0..col.len()).map(|i| (!col.is_null(i)).then(|| fmt.value(i).to_string())).collect()
        } else {
            fields.push(f.as_ref().clone());
            columns.push(col.clone());
            continue;
        };
        fields.push(Field::new(f.name(), DataType::Utf8, true));
        columns.push(Arc::new(text));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;

    fn write_file(dir: &Path, rows: &[(i64, &str)]) {
        std::fs::create_dir_all(dir).unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("seq", DataType::Int64, false),
            Field::new("message", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap();
        let f = std::fs::File::create(dir.join("part-0.parquet")).unwrap();
        let mut w = parquet_writer(f, schema);
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    fn parquet_writer(f: std::fs::File, schema: Arc<Schema>) -> datafusion::parquet::arrow::ArrowWriter<std::fs::File> {
        datafusion::parquet::arrow::ArrowWriter::try_new(f, schema, None).unwrap()
    }

    async fn dataset() -> (tempfile::TempDir, Dataset) {
        let root = tempfile::tempdir().unwrap();
        write_file(&root.path().join("logs/date=2026-11-22/hour=10"), &[(1, "a"), (2, "b")]);
        write_file(&root.path().join("logs/date=2026-11-22/hour=11"), &[(3, "c")]);
        let ds = Dataset::open(root.path()).await.unwrap();
        (root, ds)
    }

    #[tokio::test]
    async fn names_starting_with_a_dot_are_not_read_and_a_bad_file_is_named() {
        let root = tempfile::tempdir().unwrap();
        let hour = root.path().join("logs/date=2026-11-22/hour=10");
        write_file(&hour, &[(1, "a"), (2, "b")]);
        std::fs::write(hour.join(".hidden.parquet"), b"junk").unwrap();
        std::fs::write(hour.join(".part-1.parquet.tmp"), b"junk").unwrap();
        let ds = Dataset::open(root.path()).await.unwrap();
        let b = ds.sql("SELECT count(*) FROM logs").await.unwrap();
        assert_eq!(b[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0), 2);
        // A truncated file in another hour: the error says which file, wherever the query looks.
        let other = root.path().join("logs/date=2026-11-22/hour=11");
        std::fs::create_dir_all(&other).unwrap();
        let good = std::fs::read(hour.join("part-0.parquet")).unwrap();
        std::fs::write(other.join("part-9.parquet"), &good[..good.len() / 2]).unwrap();
        let ds = Dataset::open(root.path()).await.unwrap();
        let Err(e) = ds.sql("SELECT count(*) FROM logs WHERE hour = 10").await else {
            panic!("a truncated file was read")
        };
        assert!(e.to_string().contains("hour=11/part-9.parquet"), "{e}");
    }

    /// A table's files are listed and their footers read by the first statement that names it:
    /// a query of one table does not read another's (here, one that cannot be read).
    #[tokio::test]
    async fn a_query_reads_only_the_tables_it_names() {
        let root = tempfile::tempdir().unwrap();
        write_file(&root.path().join("metrics/date=2026-11-22/hour=10"), &[(1, "a")]);
        let logs = root.path().join("logs/date=2026-11-22/hour=10");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(logs.join("part-0.parquet"), b"not parquet").unwrap();
        let ds = Dataset::open(root.path()).await.unwrap();
        assert_eq!(ds.tables(), ["logs", "metrics"]);
        let count = |b: Vec<RecordBatch>| b[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0);
        assert_eq!(count(ds.sql("SELECT count(*) FROM metrics").await.unwrap()), 1);
        for _ in 0..2 {
            let e = ds.sql("SELECT count(*) FROM logs").await.unwrap_err();
            assert!(e.to_string().contains("not a readable Parquet file"), "{e}");
        }
        // The catalog names every table, and an unreadable one is said there too.
        let e = ds.sql("SHOW TABLES").await.unwrap_err();
        assert!(e.to_string().contains("part-0.parquet"), "{e}");
        std::fs::remove_dir_all(root.path().join("logs")).unwrap();
        write_file(&logs, &[(5, "e"), (6, "f")]);
        let ds = Dataset::open(root.path()).await.unwrap();
        let b = ds
            .sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1")
            .await
            .unwrap();
        let mut out = Vec::new();
        render(&b, OutputFormat::Csv, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "table_name\nlogs\nmetrics\n");
        // Named in a subquery or a join, a table is found as well.
        let sql = "SELECT count(*) FROM logs l JOIN (SELECT seq FROM metrics) m ON l.seq > m.seq";
        assert_eq!(count(ds.sql(sql).await.unwrap()), 2);
    }

    #[tokio::test]
    async fn partition_columns_are_typed_and_filterable() {
        let (_root, ds) = dataset().await;
        let b = ds.sql("SELECT count(*) AS n FROM logs WHERE date = '2026-11-22' AND hour = 11").await.unwrap();
        let n = b[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0);
        assert_eq!(n, 1);
        let mut out = Vec::new();
        let b = ds.sql("SELECT seq, message, hour FROM logs ORDER BY seq").await.unwrap();
        render(&b, OutputFormat::Csv, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "seq,message,hour\n1,a,10\n2,b,10\n3,c,11\n");
        let mut out = Vec::new();
        render(&b, OutputFormat::Ndjson, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 3);
    }

    #[tokio::test]
    async fn csv_writes_maps_as_json_and_bytes_as_hex() {
        let (_root, ds) = dataset().await;
        let sql = "SELECT map(['host', 'note'], ['mx1', 'a, b: c']) AS fields, X'01ff' AS histogram, \
                   CAST(NULL AS BYTEA) AS none";
        let mut out = Vec::new();
        render(&ds.sql(sql).await.unwrap(), OutputFormat::Csv, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "fields,histogram,none\n\"{\"\"host\"\":\"\"mx1\"\",\"\"note\"\":\"\"a, b: c\"\"}\",01ff,\n"
        );
    }

    #[tokio::test]
    async fn a_partition_filter_never_opens_other_partitions_files() {
        let (root, ds) = dataset().await;
        assert!(ds.sql("SELECT count(*) FROM logs").await.is_ok());
        // Corrupt hour 10's file after registration: only a query that reads it can fail.
        std::fs::write(root.path().join("logs/date=2026-11-22/hour=10/part-0.parquet"), b"not parquet").unwrap();
        let b = ds.sql("SELECT count(*) FROM logs WHERE hour = 11").await.unwrap();
        assert_eq!(b[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0), 1);
        assert!(ds.sql("SELECT count(*) FROM logs WHERE message <> ''").await.is_err());
    }

    #[tokio::test]
    async fn hours_written_with_two_digits_are_found_by_date_and_hour() {
        // As the collector writes them: `hour=03`, and a query that says `hour = 3`.
        let root = tempfile::tempdir().unwrap();
        write_file(&root.path().join("logs/date=2026-11-22/hour=03"), &[(1, "a"), (2, "b")]);
        write_file(&root.path().join("logs/date=2026-11-22/hour=10"), &[(3, "c")]);
        let ds = Dataset::open(root.path()).await.unwrap();
        let count = |b: Vec<RecordBatch>| b[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0);
        let sql = "SELECT count(*) FROM logs WHERE date = '2026-11-22' AND hour = 3";
        assert_eq!(count(ds.sql(sql).await.unwrap()), 2);
        assert_eq!(count(ds.sql("SELECT count(*) FROM logs WHERE hour = 3 AND date = '2026-11-22'").await.unwrap()), 2);
        assert_eq!(count(ds.sql("SELECT count(*) FROM logs WHERE 3 = hour").await.unwrap()), 2);
        // Still only that hour's files are opened.
        std::fs::write(root.path().join("logs/date=2026-11-22/hour=10/part-0.parquet"), b"not parquet").unwrap();
        assert_eq!(
            count(
                ds.sql("SELECT count(*) FROM logs WHERE date = '2026-11-22' AND hour = 3 AND message <> ''")
                    .await
                    .unwrap()
            ),
            2
        );
    }

    #[tokio::test]
    async fn bad_sql_is_a_plain_error() {
        let (_root, ds) = dataset().await;
        let err = ds.sql("SELEC nonsense").await.unwrap_err();
        assert!(matches!(err, QueryError::Sql(_)));
        let said = err.to_string();
        assert!(said.contains("SQL syntax: Expected: an SQL statement, found: SELEC"), "{said}");
        assert!(!said.contains("ParserError(") && said.contains("hint: statements are"), "{said}");
        let columns = ds.sql("SHOW COLUMNS FROM logs").await.unwrap();
        assert!(columns.iter().map(|b| b.num_rows()).sum::<usize>() >= 4, "the hint's SHOW COLUMNS works");
        let err = ds.sql("SELECT * FROM nope").await.unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("hint: tables here: logs"), "{err}");
    }

    #[tokio::test]
    async fn hdr_of_refuses_a_value_a_histogram_cannot_hold() {
        let (_root, ds) = dataset().await;
        let sql = |v: &str| format!("SELECT hdr_count(hdr_of(v)) FROM (VALUES (3.0), ({v})) t(v)");
        let ok = ds.sql(&sql("NULL")).await.unwrap();
        assert_eq!(ok[0].column(0).as_any().downcast_ref::<Int64Array>().map(|a| a.value(0)), Some(1));
        for bad in ["-5.0", "-0.0004", "CAST('NaN' AS DOUBLE)", "CAST('inf' AS DOUBLE)", "1e16", "1e300"] {
            let err = ds.sql(&sql(bad)).await.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("hdr_of:") && err.contains("cannot be counted"), "{bad}: {err:?}");
        }
    }

    #[tokio::test]
    async fn missing_dataset_is_named() {
        let err = Dataset::open(Path::new("/nonexistent/sb")).await.err().unwrap();
        assert!(err.to_string().contains("no dataset at /nonexistent/sb"));
    }

    #[tokio::test]
    async fn an_empty_result_keeps_its_header_in_every_format() {
        let (_root, ds) = dataset().await;
        let b = ds.sql("SELECT seq, message FROM logs WHERE seq > 100").await.unwrap();
        let text = |format| {
            let mut out = Vec::new();
            render(&b, format, &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        let table = text(OutputFormat::Table);
        assert!(table.contains("| seq | message |") && table.ends_with("0 rows\n"), "{table}");
        assert_eq!(text(OutputFormat::Csv), "seq,message\n");
        assert_eq!(text(OutputFormat::Json), "[]\n");
        assert_eq!(text(OutputFormat::Ndjson), "");
        // Rows print a line each, nulls included.
        let some =
            ds.sql("SELECT 1 AS n, CAST(NULL AS VARCHAR) AS op UNION ALL SELECT 2, 'x' ORDER BY n").await.unwrap();
        let mut out = Vec::new();
        render(&some, OutputFormat::Json, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "[\n{\"n\":1,\"op\":null},\n{\"n\":2,\"op\":\"x\"}\n]\n");
        let mut out = Vec::new();
        render(&some, OutputFormat::Ndjson, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "{\"n\":1,\"op\":null}\n{\"n\":2,\"op\":\"x\"}\n");
        // A result with rows has no count line; a Parquet file of no rows still has the columns.
        let rows = ds.sql("SELECT seq FROM logs").await.unwrap();
        let mut out = Vec::new();
        render(&rows, OutputFormat::Table, &mut out).unwrap();
        assert!(!String::from_utf8(out).unwrap().contains("rows"));
        let file = _root.path().join("empty.parquet");
        assert_eq!(write_parquet(&b, &file).unwrap(), 0);
        let reader = datafusion::parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&file).unwrap());
        use datafusion::parquet::file::reader::FileReader as _;
        assert_eq!(reader.unwrap().metadata().file_metadata().schema_descr().num_columns(), 2);
        // Text comes back as Utf8, as in the dataset's files, not as the engine's views.
        let rows = ds.sql("SELECT seq, message FROM logs").await.unwrap();
        assert_eq!(rows[0].schema().field(1).data_type(), &DataType::Utf8View, "the engine reads views");
        let file = _root.path().join("rows.parquet");
        assert!(write_parquet(&rows, &file).unwrap() > 0);
        let back = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&file).unwrap(),
        )
        .unwrap();
        assert_eq!(back.schema().field(1).data_type(), &DataType::Utf8);
    }

    #[tokio::test]
    async fn statements_that_write_are_refused_unless_allowed() {
        let (root, ds) = dataset().await;
        let out = root.path().join("out");
        let writes = [
            format!("COPY (SELECT * FROM logs) TO '{}/copy.csv' STORED AS CSV", out.display()),
            format!("CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{}/t/'", out.display()),
            "INSERT INTO logs VALUES (9, 'x', '2026-11-22', 10)".to_owned(),
            format!("EXPLAIN ANALYZE COPY (SELECT 1) TO '{}/explained.csv' STORED AS CSV", out.display()),
            "CREATE VIEW v AS SELECT 1".to_owned(),
        ];
        for sql in &writes {
            let err = ds.sql(sql).await.unwrap_err();
            assert!(matches!(err, QueryError::ReadOnly(_)), "{sql}: {err:?}");
            let text = err.to_string();
            assert!(text.starts_with("refused (D") && text.contains("--allow-write"), "{text}");
        }
        assert!(!out.exists(), "nothing was written");
        // Reading and session settings stay allowed.
        ds.sql("SET datafusion.execution.batch_size = 1024").await.unwrap();
        ds.sql("SELECT count(*) FROM logs").await.unwrap();
        // Allowed on request.
        let ds = ds.allow_writes(true);
        ds.sql(&writes[0]).await.unwrap();
        assert!(out.join("copy.csv").exists());
    }
}
