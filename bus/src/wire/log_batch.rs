//! `log_batch` v1: a batch of log lines of one stream, as an Arrow IPC stream.
//!
//! Published by a node agent on `<prefix>/stream/<node>/log/<stream>`; the key names the stream,
//! the `seq` column orders the records (gap-free per stream, starting at 0). Columns:
//!
//! | column | Arrow type | null | meaning |
//! | --- | --- | --- | --- |
//! | `seq` | UInt64 | no | sequence number within the stream |
//! | `ts` | Timestamp(µs, UTC) | no | event time from the line; the read time where the line has none |
//! | `observed_ts` | Timestamp(µs, UTC) | no | when the agent read the line |
//! | `file` | Utf8 | no | path of the source file |
//! | `offset` | UInt64 | no | byte offset of the line's start in that file |
//! | `level` | Utf8 | yes | normalized level: trace, debug, info, notice, warn, error, critical, alert, emergency |
//! | `message` | Utf8 | no | the message (invalid UTF-8 replaced by U+FFFD) |
//! | `raw` | Binary | yes | the line's original bytes, only where they were not valid UTF-8 |
//! | `truncated` | Boolean | no | the line was longer than the agent's cap and was cut |
//! | `invalid_utf8` | Boolean | no | the line was not valid UTF-8 |
//! | `fields` | Map(Utf8 → Utf8) | no | the other fields the parser found |
//!
//! [`LogBatchBuilder`] appends rows straight into Arrow builders (no per-row allocation) and
//! [`encode`]s them; [`decode`] checks payload type, version and schema.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, BinaryBuilder, BooleanBuilder, MapBuilder, MapFieldNames, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

use super::{decode_ipc, encode_ipc, WireError, META_PAYLOAD, META_VERSION};

/// The payload type name.
pub const PAYLOAD: &str = "log_batch";
/// The schema version this build writes and reads.
pub const VERSION: u32 = 1;

/// The earliest `ts` or `observed_ts` a batch may carry: 0000-01-01T00:00:00Z, in µs.
pub const TS_MIN_MICROS: i64 = -62_167_219_200_000_000;
/// The latest: 9999-12-31T23:59:59.999999Z, in µs (every reader prints and partitions these).
pub const TS_MAX_MICROS: i64 = 253_402_300_799_999_999;
/// The largest `seq` or `offset` a batch may carry: they are Int64 at rest.
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// The Arrow type of the `ts` and `observed_ts` columns.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The Arrow type of the `fields` column: a map of Utf8 keys to nullable Utf8 values, with the
/// entry names Arrow's `MapBuilder` uses (`entries`, `keys`, `values`).
pub fn fields_type() -> DataType {
    let entries = Field::new(
        "entries",
        DataType::Struct(
            vec![Field::new("keys", DataType::Utf8, false), Field::new("values", DataType::Utf8, true)].into(),
        ),
        false,
    );
    DataType::Map(Arc::new(entries), false)
}

/// The v1 schema, with its metadata.
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let fields = vec![
                Field::new("seq", DataType::UInt64, false),
                Field::new("ts", timestamp_type(), false),
                Field::new("observed_ts", timestamp_type(), false),
                Field::new("file", DataType::Utf8, false),
                Field::new("offset", DataType::UInt64, false),
                Field::new("level", DataType::Utf8, true),
                Field::new("message", DataType::Utf8, false),
                Field::new("raw", DataType::Binary, true),
                Field::new("truncated", DataType::Boolean, false),
                Field::new("invalid_utf8", DataType::Boolean, false),
                Field::new("fields", fields_type(), false),
            ];
            let meta = HashMap::from([
                (META_PAYLOAD.to_owned(), PAYLOAD.to_owned()),
                (META_VERSION.to_owned(), VERSION.to_string()),
            ]);
            Arc::new(Schema::new_with_metadata(fields, meta))
        })
        .clone()
}

/// One log line to append, borrowed from the reader's buffers.
#[derive(Debug, Clone, Copy)]
pub struct LogRow<'a> {
    /// Sequence number within the stream.
    pub seq: u64,
    /// Event time (µs since the epoch); the read time where the line has none.
    pub ts_micros: i64,
    /// Read time (µs since the epoch).
    pub observed_micros: i64,
    /// Source file path.
    pub file: &'a str,
    /// Byte offset of the line in the file.
    pub offset: u64,
    /// Normalized level, if any.
    pub level: Option<&'a str>,
    /// Message text.
    pub message: &'a str,
    /// Original bytes, only where the line was not valid UTF-8.
    pub raw: Option<&'a [u8]>,
    /// The line was cut at the length cap.
    pub truncated: bool,
}

/// Builds one `log_batch` from rows, straight into Arrow arrays.
pub struct LogBatchBuilder {
    seq: UInt64Builder,
    ts: TimestampMicrosecondBuilder,
    observed: TimestampMicrosecondBuilder,
    file: StringBuilder,
    offset: UInt64Builder,
    level: StringBuilder,
    message: StringBuilder,
    raw: BinaryBuilder,
    truncated: BooleanBuilder,
    invalid_utf8: BooleanBuilder,
    fields: MapBuilder<StringBuilder, StringBuilder>,
    rows: usize,
    bytes: usize,
}

impl Default for LogBatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LogBatchBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        let names = MapFieldNames { entry: "entries".into(), key: "keys".into(), value: "values".into() };
        Self {
            seq: UInt64Builder::new(),
            ts: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            observed: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            file: StringBuilder::new(),
            offset: UInt64Builder::new(),
            level: StringBuilder::new(),
            message: StringBuilder::new(),
            raw: BinaryBuilder::new(),
            truncated: BooleanBuilder::new(),
            invalid_utf8: BooleanBuilder::new(),
            fields: MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new()),
            rows: 0,
            bytes: 0,
        }
    }

    /// Append one row with its parsed fields.
    pub fn append<K: AsRef<str>, V: AsRef<str>>(&mut self, row: &LogRow<'_>, fields: &[(K, V)]) {
        self.seq.append_value(row.seq);
        self.ts.append_value(row.ts_micros);
        self.observed.append_value(row.observed_micros);
        self.file.append_value(row.file);
        self.offset.append_value(row.offset);
        self.level.append_option(row.level);
        self.message.append_value(row.message);
        self.raw.append_option(row.raw);
        self.truncated.append_value(row.truncated);
        self.invalid_utf8.append_value(row.raw.is_some());
        let mut field_bytes = 0;
        for (k, v) in fields {
            let (k, v) = (k.as_ref(), v.as_ref());
            field_bytes += k.len() + v.len() + 8;
            self.fields.keys().append_value(k);
            self.fields.values().append_value(v);
        }
        // Appending the entries' end cannot fail: keys and values were appended in pairs above.
        let _ = self.fields.append(true);
        self.rows += 1;
        self.bytes += 64 + row.file.len() + row.message.len() + row.raw.map_or(0, <[u8]>::len) + field_bytes;
    }

    /// Rows appended since the last [`Self::finish`].
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row was appended since the last [`Self::finish`].
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Approximate encoded size of the rows appended so far, for batching by size.
    pub fn approx_bytes(&self) -> usize {
        self.bytes
    }

    /// Take the rows appended so far as a record batch; the builder is empty afterwards.
    pub fn finish(&mut self) -> Result<RecordBatch, WireError> {
        let columns: Vec<Arc<dyn Array>> = vec![
            Arc::new(self.seq.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.observed.finish()),
            Arc::new(self.file.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.level.finish()),
            Arc::new(self.message.finish()),
            Arc::new(self.raw.finish()),
            Arc::new(self.truncated.finish()),
            Arc::new(self.invalid_utf8.finish()),
            Arc::new(self.fields.finish()),
        ];
        self.rows = 0;
        self.bytes = 0;
        Ok(RecordBatch::try_new(schema(), columns)?)
    }
}

/// Encode a batch built by [`LogBatchBuilder`] as a `log_batch` payload.
pub fn encode(batch: &RecordBatch) -> Result<Vec<u8>, WireError> {
    encode_ipc(batch)
}

/// Decode a `log_batch` payload, checking payload type, version and schema.
pub fn decode(bytes: &[u8]) -> Result<RecordBatch, WireError> {
    let batch = decode_ipc(bytes)?;
    let meta = batch.schema_ref().metadata();
    match meta.get(META_PAYLOAD) {
        Some(p) if p == PAYLOAD => {}
        other => return Err(WireError::WrongPayload { expected: PAYLOAD, found: other.cloned().unwrap_or_default() }),
    }
    match meta.get(META_VERSION).map(|v| v.parse::<u32>()) {
        Some(Ok(VERSION)) => {}
        other => {
            let found = match other {
                Some(_) => meta.get(META_VERSION).cloned().unwrap_or_default(),
                None => "(none)".to_owned(),
            };
            return Err(WireError::UnknownVersion { payload: PAYLOAD, found, known: VERSION });
        }
    }
    let expected = schema();
    if batch.schema_ref().fields() != expected.fields() {
        let found = batch.schema_ref().fields();
        let detail = columns_difference(found, expected.fields())
            .unwrap_or_else(|| format!("columns {:?}", found.iter().map(|f| f.name()).collect::<Vec<_>>()));
        return Err(WireError::Schema { payload: PAYLOAD, version: VERSION, detail });
    }
    check_ranges(batch)
}

/// Refuse values the tables cannot hold: a `seq` or `offset` past [`MAX_SEQ`], an `observed_ts`
/// outside years 0000-9999 ([`TS_MIN_MICROS`], [`TS_MAX_MICROS`]). A `ts` outside them is the
/// read time instead, `observed_ts`, as an agent takes it (an agent of an earlier version may
/// have parsed one from a line, e.g. nanoseconds taken for microseconds): the line is kept.
fn check_ranges(batch: RecordBatch) -> Result<RecordBatch, WireError> {
    use arrow::array::{AsArray as _, PrimitiveArray};
    use arrow::datatypes::{TimestampMicrosecondType, UInt64Type};
    let in_range = |v: i64| (TS_MIN_MICROS..=TS_MAX_MICROS).contains(&v);
    let index = |name: &str| {
        batch.schema_ref().index_of(name).map_err(|_| WireError::Malformed(format!("log_batch without column {name}")))
    };
    for name in ["seq", "offset"] {
        let values: &PrimitiveArray<UInt64Type> = batch
            .column(index(name)?)
            .as_primitive_opt()
            .ok_or_else(|| WireError::Malformed(format!("log_batch column {name} is not UInt64")))?;
        if let Some(v) = values.iter().flatten().find(|v| *v > MAX_SEQ) {
            return Err(WireError::Malformed(format!("log_batch {name} {v} is past {MAX_SEQ} (2^63 - 1)")));
        }
    }
    let timestamps = |name: &str| -> Result<&PrimitiveArray<TimestampMicrosecondType>, WireError> {
        batch
            .column(index(name)?)
            .as_primitive_opt()
            .ok_or_else(|| WireError::Malformed(format!("log_batch column {name} is not a µs timestamp")))
    };
    let (ts, observed) = (timestamps("ts")?, timestamps("observed_ts")?);
    if let Some(v) = observed.iter().flatten().find(|v| !in_range(*v)) {
        return Err(WireError::Malformed(format!(
            "log_batch observed_ts {v} µs is outside the years 0000-9999 ({TS_MIN_MICROS}..={TS_MAX_MICROS})"
        )));
    }
    if ts.iter().flatten().all(in_range) {
        return Ok(batch);
    }
    // Both columns are non-null by the schema checked before.
    let fixed: PrimitiveArray<TimestampMicrosecondType> = ts
        .iter()
        .zip(observed.iter())
        .map(|(t, o)| t.filter(|t| in_range(*t)).or(o))
        .collect::<PrimitiveArray<TimestampMicrosecondType>>()
        .with_timezone("UTC");
    let mut columns = batch.columns().to_vec();
    columns[index("ts")?] = Arc::new(fixed);
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// The first difference between a payload's columns and the schema's, said so that a publisher of
/// its own can fix it: which column or nested field (a path such as `fields.entries`), and whether
/// its name, type, nullability or field metadata differs. `None` if they are equal.
fn columns_difference(found: &Fields, expected: &Fields) -> Option<String> {
    for i in 0..found.len().max(expected.len()) {
        match (found.get(i), expected.get(i)) {
            (Some(f), Some(e)) if f.name() != e.name() => {
                return Some(format!("column {i} is named `{}`, expected `{}`", f.name(), e.name()));
            }
            (Some(f), Some(e)) => {
                if let Some(d) = field_difference(f.name(), f, e) {
                    return Some(d);
                }
            }
            (Some(f), None) => {
                return Some(format!(
                    "unexpected column {i} `{}` (version {VERSION} has {})",
                    f.name(),
                    expected.len()
                ));
            }
            (None, Some(e)) => {
                return Some(format!("column {i} `{}` ({}) is missing", e.name(), e.data_type()));
            }
            (None, None) => {}
        }
    }
    None
}

/// The first difference between two fields of the same name at `path`, looking inside maps,
/// structs and lists, so that the field named is the innermost one that differs.
fn field_difference(path: &str, found: &Field, expected: &Field) -> Option<String> {
    let children = match (found.data_type(), expected.data_type()) {
        (DataType::Map(f, f_sorted), DataType::Map(e, e_sorted)) => {
            if f_sorted != e_sorted {
                let sorted = |s: &bool| if *s { "sorted" } else { "unsorted" };
                return Some(format!("`{path}` is a {} map, expected {}", sorted(f_sorted), sorted(e_sorted)));
            }
            Some((Fields::from(vec![f.clone()]), Fields::from(vec![e.clone()])))
        }
        (DataType::Struct(f), DataType::Struct(e)) => Some((f.clone(), e.clone())),
        (DataType::List(f), DataType::List(e)) | (DataType::LargeList(f), DataType::LargeList(e)) => {
            Some((Fields::from(vec![f.clone()]), Fields::from(vec![e.clone()])))
        }
        (f, e) if f != e => return Some(format!("`{path}` has type {f}, expected {e}")),
        _ => None,
    };
    if let Some((f, e)) = children {
        for i in 0..f.len().max(e.len()) {
            match (f.get(i), e.get(i)) {
                (Some(fc), Some(ec)) if fc.name() != ec.name() => {
                    return Some(format!("`{path}`: field {i} is named `{}`, expected `{}`", fc.name(), ec.name()));
                }
                (Some(fc), Some(ec)) => {
                    if let Some(d) = field_difference(&format!("{path}.{}", fc.name()), fc, ec) {
                        return Some(d);
                    }
                }
                (Some(fc), None) => return Some(format!("`{path}`: unexpected field {i} `{}`", fc.name())),
                (None, Some(ec)) => return Some(format!("`{path}`: field {i} `{}` is missing", ec.name())),
                (None, None) => {}
            }
        }
    }
    if found.is_nullable() != expected.is_nullable() {
        let nullable = |n: bool| if n { "nullable" } else { "not nullable" };
        return Some(format!(
            "`{path}` is {}, expected {}",
            nullable(found.is_nullable()),
            nullable(expected.is_nullable())
        ));
    }
    if found.metadata() != expected.metadata() {
        return Some(format!("`{path}` has field metadata {:?}, expected {:?}", found.metadata(), expected.metadata()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, MapArray};
    use arrow::datatypes::UInt64Type;

    fn sample(n: u64) -> RecordBatch {
        let mut b = LogBatchBuilder::new();
        for seq in 0..n {
            let row = LogRow {
                seq,
                ts_micros: 1_700_000_000_000_000 + seq as i64,
                observed_micros: 1_700_000_000_000_001,
                file: "/var/log/gw/smsc.log",
                offset: seq * 100,
                level: if seq % 2 == 0 { Some("info") } else { None },
                message: "submit ok",
                raw: if seq == 3 { Some(b"\xff\xfe") } else { None },
                truncated: seq == 4,
            };
            b.append(&row, &[("msg_id", format!("m{seq}")), ("operator", "op1".to_owned())]);
        }
        assert_eq!(b.len(), n as usize);
        b.finish().unwrap()
    }

    #[test]
    fn round_trip_keeps_every_value() {
        let batch = sample(10);
        let bytes = encode(&batch).unwrap();
        let back = decode(&bytes).unwrap();
        assert_eq!(back, batch);
        let seq = back.column(0).as_primitive::<UInt64Type>();
        assert_eq!(seq.values().iter().copied().collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
        let fields = back.column_by_name("fields").unwrap().as_any().downcast_ref::<MapArray>().unwrap();
        let first = fields.value(7);
        let keys = first.column(0).as_string::<i32>();
        let vals = first.column(1).as_string::<i32>();
        assert_eq!((keys.value(0), vals.value(0)), ("msg_id", "m7"));
        assert!(back.column_by_name("invalid_utf8").unwrap().as_boolean().value(3));
    }

    #[test]
    fn values_the_tables_cannot_hold_are_malformed() {
        let one = |seq: u64, ts_micros: i64, offset: u64| {
            let mut b = LogBatchBuilder::new();
            let row = LogRow {
                seq,
                ts_micros,
                observed_micros: 0,
                file: "f",
                offset,
                level: None,
                message: "m",
                raw: None,
                truncated: false,
            };
            b.append::<&str, &str>(&row, &[]);
            decode(&encode(&b.finish().unwrap()).unwrap())
        };
        assert!(one(MAX_SEQ, TS_MAX_MICROS, MAX_SEQ).is_ok());
        assert!(one(0, TS_MIN_MICROS, 0).is_ok());
        for (seq, offset) in [(MAX_SEQ + 1, 0), (0, u64::MAX)] {
            assert!(matches!(one(seq, 0, offset), Err(WireError::Malformed(_))), "{seq} {offset}");
        }
        // A time past the tables' years is the read time (observed_ts, 0 here), as an agent takes it.
        for ts in [TS_MAX_MICROS + 1, TS_MIN_MICROS - 1, i64::MAX, i64::MIN] {
            let batch = one(0, ts, 0).unwrap();
            let stored =
                batch.column_by_name("ts").unwrap().as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
            assert_eq!(stored.value(0), 0, "{ts}");
            assert_eq!(batch.schema_ref().fields(), schema().fields(), "the type, time zone included, stays");
        }
    }

    #[test]
    fn builder_is_reusable_after_finish() {
        let mut b = LogBatchBuilder::new();
        let row = LogRow {
            seq: 0,
            ts_micros: 0,
            observed_micros: 0,
            file: "f",
            offset: 0,
            level: None,
            message: "m",
            raw: None,
            truncated: false,
        };
        b.append::<&str, &str>(&row, &[]);
        assert_eq!(b.finish().unwrap().num_rows(), 1);
        assert!(b.is_empty());
        assert_eq!(b.approx_bytes(), 0);
        assert_eq!(b.finish().unwrap().num_rows(), 0);
    }

    #[test]
    fn garbage_and_truncated_payloads_are_errors() {
        let bytes = encode(&sample(5)).unwrap();
        for cut in [0, 1, 7, 8, 100, bytes.len() / 2, bytes.len() - 9] {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut state = 0x1234_5678_u32;
        for _ in 0..200 {
            let mut noisy = bytes.clone();
            for _ in 0..8 {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let i = state as usize % noisy.len();
                noisy[i] ^= (state >> 16) as u8 | 1;
            }
            // Must return, Ok or Err, without panicking.
            let _ = decode(&noisy);
        }
        assert!(decode(b"not arrow at all").is_err());
    }

    #[test]
    fn unknown_version_and_wrong_payload_are_named() {
        let batch = sample(2);
        let mut meta = batch.schema_ref().metadata().clone();
        meta.insert(META_VERSION.into(), "99".into());
        let v99 = RecordBatch::try_new(
            Arc::new(Schema::new_with_metadata(batch.schema_ref().fields().clone(), meta.clone())),
            batch.columns().to_vec(),
        )
        .unwrap();
        let err = decode(&encode(&v99).unwrap()).unwrap_err();
        assert!(matches!(err, WireError::UnknownVersion { ref found, .. } if found == "99"), "{err}");
        meta.insert(META_PAYLOAD.into(), "metric_batch".into());
        let other = RecordBatch::try_new(
            Arc::new(Schema::new_with_metadata(batch.schema_ref().fields().clone(), meta)),
            batch.columns().to_vec(),
        )
        .unwrap();
        assert!(matches!(decode(&encode(&other).unwrap()), Err(WireError::WrongPayload { .. })));
    }
}
