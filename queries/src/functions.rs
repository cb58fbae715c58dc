//! SQL functions for Switchboard's tables.
//!
//! | function | what it gives |
//! | --- | --- |
//! | `hdr_of(value)` | aggregate: an HDR histogram of plain values (from 0 up; a negative or non-finite one is an error) |
//! | `hdr_merge(histogram)` | aggregate: the bucket-wise sum of HDR histograms (exact, unlike averaging percentiles) |
//! | `hdr_quantile(histogram, q)` | the value at quantile `q` (0..1) of a histogram, in the unit samples were sent in (to 0.1%) |
//! | `hdr_count(histogram)` | samples in a histogram |
//! | `hdr_max(histogram)` | the largest sample (within 0.1%) |
//! | `tag(tags, key)` | the value of `key` in a `k:v,k2:v2` tag list; NULL when absent |
//!
//! Cluster-wide p99 of a timer per operator over a day:
//!
//! ```sql
//! SELECT tag(tags, 'operator') AS operator,
//!        hdr_quantile(hdr_merge(histogram), 0.99) AS p99_ms
//! FROM metrics WHERE name = 'dlr.latency' AND date = '2026-11-22' GROUP BY 1
//! ```
//!
//! Histograms are HDR V2 (DEFLATE or not), as [`switchboard_bus::histogram`] writes them; a
//! value that does not decode is an error naming the function.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::Field;
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::function::AccumulatorFactoryFunction;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, ColumnarValue, ScalarFunctionImplementation, ScalarUDF, Signature, SimpleAggregateUDF,
    SimpleScalarUDF, TypeSignature, Volatility,
};
use datafusion::prelude::SessionContext;
use hdrhistogram::Histogram;
use switchboard_bus::histogram::{self, SCALE};

/// A histogram argument: Parquet reads binary columns as any of these.
fn histogram_arg(rest: &[DataType]) -> Signature {
    let with = |t: DataType| TypeSignature::Exact(std::iter::once(t).chain(rest.iter().cloned()).collect());
    Signature::one_of(
        vec![with(DataType::Binary), with(DataType::BinaryView), with(DataType::LargeBinary)],
        Volatility::Immutable,
    )
}

fn scalar(name: &str, signature: Signature, returns: DataType, fun: ScalarFunctionImplementation) -> ScalarUDF {
    ScalarUDF::from(SimpleScalarUDF::new_with_signature(name, signature, returns, fun))
}

fn aggregate(name: &str, signature: Signature, accumulator: AccumulatorFactoryFunction) -> AggregateUDF {
    let state = vec![Arc::new(Field::new("histogram", DataType::Binary, true))];
    AggregateUDF::from(SimpleAggregateUDF::new_with_signature(name, signature, DataType::Binary, accumulator, state))
}

/// Register every function with `ctx`.
pub fn register(ctx: &SessionContext) {
    ctx.register_udaf(aggregate("hdr_merge", histogram_arg(&[]), Arc::new(|_| Ok(Box::<Merge>::default()))));
    ctx.register_udaf(aggregate(
        "hdr_of",
        Signature::exact(vec![DataType::Float64], Volatility::Immutable),
        Arc::new(|_| Ok(Box::<Record>::default())),
    ));
    ctx.register_udf(scalar(
        "hdr_quantile",
        histogram_arg(&[DataType::Float64]),
        DataType::Float64,
        Arc::new(quantile),
    ));
    ctx.register_udf(scalar(
        "hdr_count",
        histogram_arg(&[]),
        DataType::Int64,
        Arc::new(|args| per_histogram(args, "hdr_count", |h| h.len() as i64)),
    ));
    ctx.register_udf(scalar(
        "hdr_max",
        histogram_arg(&[]),
        DataType::Float64,
        Arc::new(|args| {
            // A value past `i64` (a histogram written elsewhere) reads as the largest, not
            // wrapped to a negative one.
            let maxima = per_histogram(args, "hdr_max", |h| i64::try_from(h.max()).unwrap_or(i64::MAX))?;
            // Same shape back, as scaled floats.
            let to_f = |v: &Int64Array| -> Float64Array { v.iter().map(|x| x.map(|x| x as f64 / SCALE)).collect() };
            Ok(match maxima {
                ColumnarValue::Array(a) => ColumnarValue::Array(Arc::new(to_f(a.as_primitive()))),
                ColumnarValue::Scalar(ScalarValue::Int64(v)) => {
                    ColumnarValue::Scalar(ScalarValue::Float64(v.map(|x| x as f64 / SCALE)))
                }
                other => other,
            })
        }),
    ));
    ctx.register_udf(scalar("tag", Signature::string(2, Volatility::Immutable), DataType::Utf8, Arc::new(tag)));
}

fn decode(bytes: &[u8], function: &str) -> Result<Histogram<u64>> {
    histogram::decode(bytes).map_err(|e| DataFusionError::Execution(format!("{function}: {e}")))
}

/// The `hdr_merge` accumulator: the bucket-wise sum of the encoded histograms added.
#[derive(Default)]
struct Merge(histogram::Merger);

impl std::fmt::Debug for Merge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Merge").field("buckets", &self.0.buckets()).finish()
    }
}

impl Merge {
    fn add_all(&mut self, values: &ArrayRef) -> Result<()> {
        for bytes in binary_values(values, "hdr_merge")?.flatten() {
            self.0.add(bytes).map_err(|e| DataFusionError::Execution(format!("hdr_merge: {e}")))?;
        }
        Ok(())
    }

    fn encoded(&self) -> Result<ScalarValue> {
        let error = |e: histogram::HistogramError| DataFusionError::Execution(e.to_string());
        let bytes = histogram::encode(&self.0.histogram().map_err(error)?).map_err(error)?;
        Ok(ScalarValue::Binary(Some(bytes)))
    }
}

impl Accumulator for Merge {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        values.first().map_or(Ok(()), |v| self.add_all(v))
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        states.first().map_or(Ok(()), |v| self.add_all(v))
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.encoded()?])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        if self.0.is_empty() {
            return Ok(ScalarValue::Binary(None));
        }
        self.encoded()
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.0.buckets() * 8
    }
}

/// The `hdr_of` accumulator: values in, a histogram out (states merge like `hdr_merge`).
#[derive(Debug, Default)]
struct Record(Merge);

impl Accumulator for Record {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let Some(values) = values.first() else { return Ok(()) };
        let values = values
            .as_primitive_opt::<datafusion::arrow::datatypes::Float64Type>()
            .ok_or_else(|| DataFusionError::Execution("hdr_of takes numbers".into()))?;
        for v in values.iter().flatten() {
            // A value no histogram holds would come out as a wrong percentile, so it is an
            // error that says how to leave it out.
            let Some(scaled) = histogram::recorded(v) else {
                return Err(DataFusionError::Execution(format!(
                    "hdr_of: {v} cannot be counted (a histogram holds finite values from 0 to below 9.2234e15): \
                     leave such rows out with a WHERE clause"
                )));
            };
            self.0 .0.record(scaled).map_err(|e| DataFusionError::Execution(format!("hdr_of: {e}")))?;
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.0.merge_batch(states)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.0.state()
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.0.evaluate()
    }

    fn size(&self) -> usize {
        self.0.size()
    }
}

/// The values of a histogram column as they are (Parquet gives binaries, large binaries or
/// views), without copying them.
fn binary_values<'a>(array: &'a ArrayRef, function: &str) -> Result<Box<dyn Iterator<Item = Option<&'a [u8]>> + 'a>> {
    if let Some(a) = array.as_binary_opt::<i32>() {
        return Ok(Box::new(a.iter()));
    }
    if let Some(a) = array.as_binary_view_opt() {
        return Ok(Box::new(a.iter()));
    }
    if let Some(a) = array.as_binary_opt::<i64>() {
        return Ok(Box::new(a.iter()));
    }
    Err(DataFusionError::Execution(format!("{function} takes a histogram (BINARY) column")))
}

/// The values of a text column as they are (strings, large strings or views).
fn string_values<'a>(array: &'a ArrayRef, function: &str) -> Result<Box<dyn Iterator<Item = Option<&'a str>> + 'a>> {
    if let Some(a) = array.as_string_opt::<i32>() {
        return Ok(Box::new(a.iter()));
    }
    if let Some(a) = array.as_string_view_opt() {
        return Ok(Box::new(a.iter()));
    }
    if let Some(a) = array.as_string_opt::<i64>() {
        return Ok(Box::new(a.iter()));
    }
    Err(DataFusionError::Execution(format!("{function} takes text")))
}

/// Apply `f` to each histogram of the first argument.
fn per_histogram(args: &[ColumnarValue], function: &str, f: impl Fn(&Histogram<u64>) -> i64) -> Result<ColumnarValue> {
    let Some(arg) = args.first() else {
        return Err(DataFusionError::Execution(format!("{function} takes one argument")));
    };
    let scalar = matches!(arg, ColumnarValue::Scalar(_));
    let array = arg.to_array(1)?;
    let out: Int64Array = binary_values(&array, function)?
        .map(|b| b.map(|b| decode(b, function).map(|h| f(&h))).transpose())
        .collect::<Result<_>>()?;
    answer(Arc::new(out), scalar)
}

/// Two arguments as arrays of one length, and whether both were scalars (then the answer is one).
fn two_arrays(args: &[ColumnarValue], usage: &str) -> Result<(ArrayRef, ArrayRef, bool)> {
    let [a, b] = args else {
        return Err(DataFusionError::Execution(usage.into()));
    };
    let n = match (a, b) {
        (ColumnarValue::Array(x), _) | (_, ColumnarValue::Array(x)) => x.len(),
        _ => 1,
    };
    let scalar = matches!((a, b), (ColumnarValue::Scalar(_), ColumnarValue::Scalar(_)));
    Ok((a.to_array(n)?, b.to_array(n)?, scalar))
}

/// `out` as a column, or as one value when the arguments were scalars.
fn answer(out: ArrayRef, scalar: bool) -> Result<ColumnarValue> {
    if scalar {
        return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?));
    }
    Ok(ColumnarValue::Array(out))
}

fn quantile(args: &[ColumnarValue]) -> Result<ColumnarValue> {
    let (h, q, scalar) = two_arrays(args, "hdr_quantile takes (histogram, quantile)")?;
    let q = cast(&q, &DataType::Float64)?;
    let q = q.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
    let mut out = Vec::with_capacity(h.len());
    for (h, q) in binary_values(&h, "hdr_quantile")?.zip(q.iter()) {
        let (Some(h), Some(quant)) = (h, q) else {
            out.push(None);
            continue;
        };
        if !(0.0..=1.0).contains(&quant) {
            return Err(DataFusionError::Execution(format!("hdr_quantile: quantile {quant} is not in 0..1")));
        }
        let hist = decode(h, "hdr_quantile")?;
        out.push((!hist.is_empty()).then(|| hist.value_at_quantile(quant) as f64 / SCALE));
    }
    answer(Arc::new(Float64Array::from(out)), scalar)
}

/// The value of `key` in a `k:v,k2:v2` list.
pub fn tag_value<'a>(tags: &'a str, key: &str) -> Option<&'a str> {
    tags.split(',').find_map(|t| match t.split_once(':') {
        Some((k, v)) if k == key => Some(v),
        None if t == key => Some(""),
        _ => None,
    })
}

fn tag(args: &[ColumnarValue]) -> Result<ColumnarValue> {
    // The usual call names one key for every row: no column of copies of it.
    if let [tags @ ColumnarValue::Array(_), ColumnarValue::Scalar(key)] = args {
        let key = match key {
            ScalarValue::Utf8(k) | ScalarValue::Utf8View(k) | ScalarValue::LargeUtf8(k) => k.as_deref(),
            _ => return Err(DataFusionError::Execution("tag takes (text, text)".into())),
        };
        let tags = tags.to_array(1)?;
        let out: StringArray = string_values(&tags, "tag")?.map(|t| tag_value(t?, key?)).collect();
        return Ok(ColumnarValue::Array(Arc::new(out)));
    }
    let (tags, key, scalar) = two_arrays(args, "tag takes (tags, key)")?;
    let out: StringArray =
        string_values(&tags, "tag")?.zip(string_values(&key, "tag")?).map(|(t, k)| tag_value(t?, k?)).collect();
    answer(Arc::new(out), scalar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_found_by_key() {
        assert_eq!(tag_value("node:a,operator:voda", "operator"), Some("voda"));
        assert_eq!(tag_value("flag,x:1", "flag"), Some(""));
        assert_eq!(tag_value("x:1", "operator"), None);
        assert_eq!(tag_value("", "x"), None);
        assert_eq!(tag_value("url:http://x", "url"), Some("http://x"));
    }
}
