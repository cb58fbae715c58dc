//! The `logs` table: its schema, and the conversion of a `log_batch` payload into its rows.
//!
//! A row is a wire record plus its stream identity (`node`, `stream`), with the configured
//! promoted fields taken out of the `fields` map into typed columns of their own. Unsigned wire
//! integers become `Int64` so that every Parquet reader (Spark included) reads them as plain
//! BIGINT. Schema (v1), partitioned by `date=YYYY-MM-DD/hour=HH` of `ts`:
//!
//! `node, stream, seq, ts, observed_ts, file, offset, level, message, raw, truncated,
//! invalid_utf8, <promoted columns…>, fields`.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder, MapArray, MapBuilder,
    MapFieldNames, RecordBatch, StringArray, StringBuilder,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use switchboard_bus::wire::log_batch;
use switchboard_bus::StreamId;

use crate::config::{ColumnType, PromotedColumn};

/// Version of the `logs` table schema, recorded in each file's footer.
pub const TABLE_VERSION: u32 = 1;

/// The `logs` table as configured.
#[derive(Debug, Clone)]
pub struct LogsTable {
    schema: SchemaRef,
    promote: Vec<PromotedColumn>,
}

/// Builds the value column of one promoted field.
enum PromotedBuilder {
    String(StringBuilder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Bool(BooleanBuilder),
    Binary(BinaryBuilder),
    Histogram(BinaryBuilder, Box<switchboard_bus::histogram::Unpacker>),
}

impl PromotedBuilder {
    fn new(kind: ColumnType) -> Self {
        match kind {
            ColumnType::String => Self::String(StringBuilder::new()),
            ColumnType::Int64 => Self::Int64(Int64Builder::new()),
            ColumnType::Float64 => Self::Float64(Float64Builder::new()),
            ColumnType::Bool => Self::Bool(BooleanBuilder::new()),
            ColumnType::Binary => Self::Binary(BinaryBuilder::new()),
            ColumnType::Histogram => Self::Histogram(BinaryBuilder::new(), Box::default()),
        }
    }

    /// Append `v` converted to the column type; `false` if it does not convert.
    fn append(&mut self, v: &str) -> bool {
        match self {
            Self::String(b) => b.append_value(v),
            Self::Int64(b) => match v.trim().parse() {
                Ok(x) => b.append_value(x),
                Err(_) => return false,
            },
            // NaN and the infinities do not convert: no sum, average or bound means anything with one.
            Self::Float64(b) => match v.trim().parse::<f64>() {
                Ok(x) if x.is_finite() => b.append_value(x),
                _ => return false,
            },
            Self::Bool(b) => match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => b.append_value(true),
                "false" | "0" | "no" => b.append_value(false),
                _ => return false,
            },
            Self::Binary(b) => {
                use base64::Engine as _;
                match base64::engine::general_purpose::STANDARD.decode(v.trim()) {
                    Ok(bytes) => b.append_value(bytes),
                    Err(_) => return false,
                }
            }
            Self::Histogram(b, unpacker) => {
                use base64::Engine as _;
                let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(v.trim()) else { return false };
                match unpacker.plain(&bytes) {
                    Ok(plain) => b.append_value(plain),
                    Err(_) => return false,
                }
            }
        }
        true
    }

    fn append_null(&mut self) {
        match self {
            Self::String(b) => b.append_null(),
            Self::Int64(b) => b.append_null(),
            Self::Float64(b) => b.append_null(),
            Self::Bool(b) => b.append_null(),
            Self::Binary(b) | Self::Histogram(b, _) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::String(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::Float64(b) => Arc::new(b.finish()),
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Binary(b) | Self::Histogram(b, _) => Arc::new(b.finish()),
        }
    }
}

impl LogsTable {
    /// The table with these promoted columns.
    pub fn new(promote: Vec<PromotedColumn>) -> Self {
        let ts = log_batch::timestamp_type();
        let mut fields = vec![
            Field::new("node", DataType::Utf8, false),
            Field::new("stream", DataType::Utf8, false),
            Field::new("seq", DataType::Int64, false),
            Field::new("ts", ts.clone(), false),
            Field::new("observed_ts", ts, false),
            Field::new("file", DataType::Utf8, false),
            Field::new("offset", DataType::Int64, false),
            Field::new("level", DataType::Utf8, true),
            Field::new("message", DataType::Utf8, false),
            Field::new("raw", DataType::Binary, true),
            Field::new("truncated", DataType::Boolean, false),
            Field::new("invalid_utf8", DataType::Boolean, false),
        ];
        for p in &promote {
            fields.push(Field::new(&p.name, p.kind.arrow_type(), true));
        }
        fields.push(Field::new("fields", log_batch::fields_type(), false));
        Self { schema: Arc::new(Schema::new(fields)), promote }
    }

    /// The table's Arrow schema.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The promoted columns.
    pub fn promoted(&self) -> &[PromotedColumn] {
        &self.promote
    }

    /// Turn (deduplicated) wire rows of `stream` into table rows. Returns the rows and how many
    /// promoted values did not convert to their column's type (left in `fields`).
    pub fn to_rows(&self, stream: &StreamId, wire: &RecordBatch) -> Result<(RecordBatch, u64), ArrowError> {
        let n = wire.num_rows();
        let col = |name: &str| {
            wire.column_by_name(name)
                .cloned()
                .ok_or_else(|| ArrowError::SchemaError(format!("log_batch without column {name}")))
        };
        let node: ArrayRef = Arc::new(StringArray::from_iter_values(std::iter::repeat_n(stream.node.as_str(), n)));
        let name: ArrayRef = Arc::new(StringArray::from_iter_values(std::iter::repeat_n(stream.name.as_str(), n)));
        let mut columns: Vec<ArrayRef> = vec![
            node,
            name,
            cast(&col("seq")?, &DataType::Int64)?,
            col("ts")?,
            col("observed_ts")?,
            col("file")?,
            cast(&col("offset")?, &DataType::Int64)?,
            col("level")?,
            col("message")?,
            col("raw")?,
            col("truncated")?,
            col("invalid_utf8")?,
        ];
        let fields = col("fields")?;
        let map = fields
            .as_any()
            .downcast_ref::<MapArray>()
            .ok_or_else(|| ArrowError::SchemaError("log_batch fields is not a map".into()))?;
        let (promoted, rest, failures) = self.promote_fields(map)?;
        columns.extend(promoted);
        columns.push(rest);
        Ok((RecordBatch::try_new(self.schema.clone(), columns)?, failures))
    }

    /// Split the promoted fields out of the map: typed columns, the remaining map, conversion
    /// failures.
    fn promote_fields(&self, map: &MapArray) -> Result<(Vec<ArrayRef>, ArrayRef, u64), ArrowError> {
        let n = map.len();
        if self.promote.is_empty() || map.entries().is_empty() {
            let nulls = self.promote.iter().map(|p| arrow::array::new_null_array(&p.kind.arrow_type(), n)).collect();
            return Ok((nulls, Arc::new(map.clone()), 0));
        }
        let keys =
            map.keys().as_string_opt::<i32>().ok_or_else(|| ArrowError::SchemaError("map keys are not utf8".into()))?;
        let values = map
            .values()
            .as_string_opt::<i32>()
            .ok_or_else(|| ArrowError::SchemaError("map values are not utf8".into()))?;
        let mut builders: Vec<PromotedBuilder> = self.promote.iter().map(|p| PromotedBuilder::new(p.kind)).collect();
        let names = MapFieldNames { entry: "entries".into(), key: "keys".into(), value: "values".into() };
        let mut rest = MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new());
        let mut filled = vec![false; self.promote.len()];
        let mut failures = 0;
        let offsets = map.value_offsets();
        for row in 0..n {
            filled.iter_mut().for_each(|f| *f = false);
            for e in offsets[row] as usize..offsets[row + 1] as usize {
                let k = keys.value(e);
                let v = (!values.is_null(e)).then(|| values.value(e));
                let slot = self.promote.iter().position(|p| p.name == k);
                match (slot, v) {
                    (Some(j), Some(v)) if !filled[j] => {
                        if builders[j].append(v) {
                            filled[j] = true;
                            continue;
                        }
                        failures += 1;
                    }
                    _ => {}
                }
                rest.keys().append_value(k);
                rest.values().append_option(v);
            }
            for (j, b) in builders.iter_mut().enumerate() {
                if !filled[j] {
                    b.append_null();
                }
            }
            rest.append(true)?;
        }
        let promoted = builders.iter_mut().map(PromotedBuilder::finish).collect();
        Ok((promoted, Arc::new(rest.finish()), failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Int64Type;
    use switchboard_bus::wire::log_batch::{LogBatchBuilder, LogRow};
    use switchboard_bus::StreamKind;

    #[test]
    fn promoted_fields_leave_the_map_and_bad_values_stay() {
        let table = LogsTable::new(vec![
            PromotedColumn { name: "msg_id".into(), kind: ColumnType::String, bloom: true },
            PromotedColumn { name: "latency_ms".into(), kind: ColumnType::Int64, bloom: false },
            PromotedColumn { name: "value".into(), kind: ColumnType::Float64, bloom: false },
        ]);
        let mut b = LogBatchBuilder::new();
        let row = |seq| LogRow {
            seq,
            ts_micros: 1,
            observed_micros: 2,
            file: "f",
            offset: seq * 10,
            level: Some("info"),
            message: "m",
            raw: None,
            truncated: false,
        };
        b.append(&row(0), &[("msg_id", "a1"), ("latency_ms", "12"), ("x", "y")]);
        b.append(&row(1), &[("latency_ms", "slow")]);
        b.append::<&str, &str>(&row(2), &[]);
        b.append(&row(3), &[("value", "NaN")]);
        b.append(&row(4), &[("value", "-inf")]);
        b.append(&row(5), &[("value", "2.5")]);
        let wire = b.finish().unwrap();
        let id = StreamId { node: "gw1".into(), kind: StreamKind::Log, name: "smsc".into() };
        let (rows, failures) = table.to_rows(&id, &wire).unwrap();
        assert_eq!(failures, 3, "slow, NaN and -inf do not convert");
        let value = rows.column_by_name("value").unwrap().as_primitive::<arrow::datatypes::Float64Type>();
        assert!(value.is_null(3) && value.is_null(4));
        assert_eq!(value.value(5), 2.5);
        assert_eq!(rows.schema(), table.schema());
        let msg_id = rows.column_by_name("msg_id").unwrap().as_string::<i32>();
        assert_eq!(msg_id.value(0), "a1");
        assert!(msg_id.is_null(1));
        let lat = rows.column_by_name("latency_ms").unwrap().as_primitive::<Int64Type>();
        assert_eq!(lat.value(0), 12);
        assert!(lat.is_null(1));
        let rest = rows.column_by_name("fields").unwrap().as_map();
        assert_eq!(rest.value(0).len(), 1, "only x=y stays in the map");
        assert_eq!(rest.value(1).len(), 1, "the unconvertible latency stays in the map");
        assert_eq!(rest.value(2).len(), 0);
        assert_eq!(rows.column_by_name("node").unwrap().as_string::<i32>().value(2), "gw1");
        assert_eq!(rows.column_by_name("offset").unwrap().as_primitive::<Int64Type>().value(2), 20);
    }

    #[test]
    fn histograms_are_stored_as_plain_v2_and_garbage_stays_in_the_map() {
        use base64::Engine as _;
        use switchboard_bus::histogram;
        let table = LogsTable::new(vec![PromotedColumn {
            name: "histogram".into(),
            kind: ColumnType::Histogram,
            bloom: false,
        }]);
        let mut h = histogram::new_histogram();
        h.record_n(1234, 3).unwrap();
        let packed = base64::engine::general_purpose::STANDARD.encode(histogram::encode(&h).unwrap());
        let mut b = LogBatchBuilder::new();
        b.append(&crate::test_rows::metrics_row(0, 1), &[("histogram", packed.as_str())]);
        b.append(&crate::test_rows::metrics_row(1, 1), &[("histogram", "bm90IGEgaGlzdG9ncmFt")]);
        let id = StreamId {
            node: "gw1".into(),
            kind: StreamKind::Log,
            name: switchboard_bus::tables::METRICS.stream.into(),
        };
        let (rows, failures) = table.to_rows(&id, &b.finish().unwrap()).unwrap();
        assert_eq!(failures, 1);
        let stored = rows.column_by_name("histogram").unwrap().as_binary::<i32>();
        assert_eq!(&stored.value(0)[..4], &[0x1c, 0x84, 0x93, 0x13], "plain V2 cookie");
        assert_eq!(histogram::decode(stored.value(0)).unwrap(), h);
        assert!(stored.is_null(1));
        assert_eq!(rows.column_by_name("fields").unwrap().as_map().value(1).len(), 1);
    }
}
