//! Histograms as they travel and rest: HdrHistogram V2 with DEFLATE ("compressed" V2), the
//! interchange format every HdrHistogram library (Java, Go, Python, Rust, C) reads.
//!
//! Timer samples are recorded as integers `value × SCALE` with 3 significant digits, so a
//! quantile read back and divided by [`SCALE`] is within 0.1% of the true sample. Histograms
//! from many nodes merge exactly (bucket counts add), which averaging per-node percentiles
//! cannot do.

use hdrhistogram::serialization::{Deserializer, Serializer as _, V2DeflateSerializer};
use hdrhistogram::Histogram;

/// Samples are recorded as `value × SCALE`.
pub const SCALE: f64 = 1000.0;

/// `value` as it is recorded (`value × SCALE`, rounded), or `None` for a value no histogram
/// here holds: negative, not finite, or recorded at 2^63 or more (about 9.2234e15 before
/// scaling), which HdrHistogram libraries that read values as signed 64-bit integers (Java's,
/// so Spark's) could not read.
pub fn recorded(value: f64) -> Option<u64> {
    // Checked before rounding: -0.0004 would round to -0.0, which the range below takes.
    if value < 0.0 {
        return None;
    }
    let scaled = (value * SCALE).round();
    // The range check makes the cast exact: 0 ≤ scaled < 2^63, an integer (rounded).
    (0.0..i64::MAX as f64).contains(&scaled).then_some(scaled as u64)
}

/// A histogram could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("histogram: {0}")]
pub struct HistogramError(String);

/// A new, empty histogram as every node uses it (3 significant digits, growing as needed).
pub fn new_histogram() -> Histogram<u64> {
    // `new` fails only for more than 5 significant digits; 3 cannot fail.
    let mut h = Histogram::<u64>::new(3).expect("3 significant digits are valid");
    h.auto(true);
    h
}

/// `h` as HDR V2 + DEFLATE bytes.
pub fn encode(h: &Histogram<u64>) -> Result<Vec<u8>, HistogramError> {
    let mut out = Vec::new();
    V2DeflateSerializer::new().serialize(h, &mut out).map_err(|e| HistogramError(format!("{e:?}")))?;
    Ok(out)
}

/// A histogram from HDR V2 bytes (with or without DEFLATE). Inflating stops at
/// [`MAX_INFLATED_BYTES`]: a small payload cannot make the reader allocate without bound.
pub fn decode(bytes: &[u8]) -> Result<Histogram<u64>, HistogramError> {
    let mut unpacker = Unpacker::new();
    let plain = unpacker.plain(bytes)?;
    let mut h: Histogram<u64> =
        Deserializer::new().deserialize(&mut &plain[..]).map_err(|e| HistogramError(format!("{e:?}")))?;
    h.auto(true);
    Ok(h)
}

/// Cookie of an HDR V2 encoding (bits 4..8 hold a word size, which V2 ignores).
const V2_COOKIE: u32 = 0x1c84_9303;
/// Cookie of an HDR V2 encoding compressed with DEFLATE (zlib).
const V2_DEFLATE_COOKIE: u32 = 0x1c84_9304;
/// The cookie bits that name the encoding.
const COOKIE_MASK: u32 = 0xffff_ff0f;
/// Bytes of the V2 header before the counts.
const V2_HEADER: usize = 40;
/// Most bytes a compressed histogram may inflate to (a V2 encoding of the most buckets a merge
/// keeps flat, [`MAX_FLAT_BUCKETS`], at up to 9 bytes each, fits); more is refused.
pub const MAX_INFLATED_BYTES: usize = 16 << 20;

/// Turns HDR V2 + DEFLATE into plain HDR V2 (and checks plain V2), keeping its inflater and
/// buffer from one histogram to the next. Plain V2 is what the collector stores: the Parquet
/// file compresses it anyway, and readers then skip inflating every row.
pub struct Unpacker {
    inflate: flate2::Decompress,
    payload: Vec<u8>,
}

impl Default for Unpacker {
    fn default() -> Self {
        Self::new()
    }
}

impl Unpacker {
    /// An unpacker with an empty buffer.
    pub fn new() -> Self {
        Self { inflate: flate2::Decompress::new(true), payload: Vec::new() }
    }

    /// The plain V2 encoding of `bytes` (V2, DEFLATE or not); its header is checked.
    pub fn plain<'a>(&'a mut self, bytes: &'a [u8]) -> Result<&'a [u8], HistogramError> {
        let payload: &[u8] = match be_u32(bytes, 0).ok_or_else(|| bad("too short"))? & COOKIE_MASK {
            V2_COOKIE => bytes,
            V2_DEFLATE_COOKIE => {
                let len = be_u32(bytes, 4).ok_or_else(|| bad("too short"))? as usize;
                let z = bytes.get(8..8 + len).ok_or_else(|| bad("compressed length beyond the end"))?;
                self.inflate_into(z)?;
                &self.payload
            }
            _ => return Err(bad("unknown cookie")),
        };
        if be_u32(payload, 0).map(|c| c & COOKIE_MASK) != Some(V2_COOKIE) {
            return Err(bad("unknown inner cookie"));
        }
        let len = be_u32(payload, 4).ok_or_else(|| bad("header too short"))? as usize;
        payload.get(..V2_HEADER + len).ok_or_else(|| bad("counts beyond the end"))
    }

    /// Inflate the zlib stream `z` into `self.payload`.
    fn inflate_into(&mut self, z: &[u8]) -> Result<(), HistogramError> {
        self.inflate.reset(true);
        self.payload.clear();
        self.payload.reserve((z.len().saturating_mul(4) + 64).min(MAX_INFLATED_BYTES));
        loop {
            let before = (self.inflate.total_in(), self.inflate.total_out());
            let read = self.inflate.total_in() as usize;
            let status = self
                .inflate
                .decompress_vec(&z[read.min(z.len())..], &mut self.payload, flate2::FlushDecompress::None)
                .map_err(|e| HistogramError(format!("inflate: {e}")))?;
            if status == flate2::Status::StreamEnd {
                return Ok(());
            }
            if self.payload.len() >= MAX_INFLATED_BYTES {
                return Err(HistogramError(format!("inflate: more than {MAX_INFLATED_BYTES} bytes")));
            }
            if self.payload.len() == self.payload.capacity() {
                self.payload.reserve(self.payload.capacity().min(MAX_INFLATED_BYTES - self.payload.len()));
            } else if (self.inflate.total_in(), self.inflate.total_out()) == before {
                return Err(HistogramError("inflate: truncated stream".into()));
            }
        }
    }
}

fn bad(what: &str) -> HistogramError {
    HistogramError(format!("not an HDR V2 histogram: {what}"))
}

/// Most buckets kept as a flat array (8 MiB of counts); a histogram reaching further is added
/// bucket by bucket into a histogram instead.
const MAX_FLAT_BUCKETS: usize = 1 << 20;

/// The bucket-wise sum of encoded histograms, without a histogram per row: bucket counts are
/// read straight from each V2 payload and added into a flat array of counts by bucket index,
/// in the layout (lowest discernible value, significant digits) of the first histogram added.
/// (Decoding allocates and zeroes every bucket up to a histogram's maximum, and adding one
/// walks them all; recording each bucket into a histogram recomputes where its value falls.)
/// Histograms of another layout, and single values, go into a histogram beside the array.
pub struct Merger {
    unpacker: Unpacker,
    /// The layout of `counts`, set by the first histogram added.
    layout: Option<(u64, u32, Layout)>,
    /// Counts by bucket index; every index below its length is a valid bucket of `layout`.
    counts: Vec<u64>,
    /// What does not fit the array.
    rest: Histogram<u64>,
}

impl Default for Merger {
    fn default() -> Self {
        Self::new()
    }
}

impl Merger {
    /// An empty sum.
    pub fn new() -> Self {
        Self { unpacker: Unpacker::new(), layout: None, counts: Vec::new(), rest: new_histogram() }
    }

    /// Add the histogram in `bytes` (HDR V2, DEFLATE or not); the samples it held. A histogram
    /// refused midway may have added some of its buckets.
    pub fn add(&mut self, bytes: &[u8]) -> Result<u64, HistogramError> {
        let payload = self.unpacker.plain(bytes)?;
        let header = |at| be_u32(payload, at).ok_or_else(|| bad("header too short"));
        let (offset, digits) = (header(8)?, header(12)?);
        let lowest = be_u64(payload, 16).ok_or_else(|| bad("header too short"))?;
        if offset != 0 || !(1..=5).contains(&digits) {
            return Err(bad("unsupported normalizing offset or significant digits"));
        }
        let counts = &payload[V2_HEADER..];
        let (first_lowest, first_digits, _) =
            self.layout.get_or_insert_with(|| (lowest, digits, Layout::new(lowest, digits)));
        let flat = (*first_lowest, *first_digits) == (lowest, digits);
        let layout = Layout::new(lowest, digits);
        let (mut pos, mut index, mut total) = (0usize, 0u64, 0u64);
        while pos < counts.len() {
            let (raw, used) = next_varint(counts, pos).ok_or_else(|| bad("truncated count"))?;
            pos += used;
            // ZigZag: an odd number is a run of `(raw >> 1) + 1` empty buckets, an even one the
            // count `raw >> 1` of the next bucket. (`raw >> 1` < 2^63: the `+ 1` cannot overflow.)
            let n = raw >> 1;
            if raw & 1 == 1 {
                index = index.checked_add(n + 1).ok_or_else(|| bad("bucket index overflows"))?;
                continue;
            }
            if n > 0 {
                match self.counts.get_mut(index as usize) {
                    Some(count) if flat => {
                        *count = count.checked_add(n).ok_or_else(|| bad("a bucket's count overflows"))?;
                    }
                    _ => {
                        let value = layout.value_at(index).ok_or_else(|| bad("bucket index out of range"))?;
                        if flat && (index as usize) < MAX_FLAT_BUCKETS {
                            // Every index up to a valid one is valid: values grow with the index.
                            self.counts.resize(index as usize + 1, 0);
                            self.counts[index as usize] = n;
                        } else {
                            self.rest.record_n(value, n).map_err(|e| HistogramError(format!("{e:?}")))?;
                        }
                    }
                }
                total = total.checked_add(n).ok_or_else(|| bad("the sample count overflows"))?;
            }
            index = index.checked_add(1).ok_or_else(|| bad("bucket index overflows"))?;
        }
        Ok(total)
    }

    /// Add one sample.
    pub fn record(&mut self, value: u64) -> Result<(), HistogramError> {
        self.rest.record(value).map_err(|e| HistogramError(format!("{e:?}")))
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty() && self.counts.iter().all(|&c| c == 0)
    }

    /// Buckets held (a measure of the memory used).
    pub fn buckets(&self) -> usize {
        self.counts.len() + self.rest.distinct_values()
    }

    /// The sum as a histogram.
    pub fn histogram(&self) -> Result<Histogram<u64>, HistogramError> {
        let mut h = self.rest.clone();
        if let Some((_, _, layout)) = &self.layout {
            for (index, &n) in self.counts.iter().enumerate().filter(|(_, &n)| n > 0) {
                // Indices below the array's length were checked when it grew.
                let value = layout.value_at(index as u64).ok_or_else(|| bad("bucket index out of range"))?;
                h.record_n(value, n).map_err(|e| HistogramError(format!("{e:?}")))?;
            }
        }
        Ok(h)
    }
}

/// Where values fall in an HDR histogram of given lowest discernible value and precision.
struct Layout {
    unit_magnitude: u32,
    half_count_magnitude: u32,
    half_count: u64,
}

impl Layout {
    fn new(lowest: u64, digits: u32) -> Self {
        let unit_magnitude = 63 - lowest.max(1).leading_zeros();
        // Buckets hold 2 × 10^digits values at unit resolution, rounded up to a power of 2.
        let single_unit = 2 * 10u64.pow(digits);
        let count_magnitude = 64 - (single_unit - 1).leading_zeros();
        let half_count_magnitude = count_magnitude.saturating_sub(1);
        Self { unit_magnitude, half_count_magnitude, half_count: 1 << half_count_magnitude }
    }

    /// The lowest value counted at `index`; `None` beyond `u64`.
    fn value_at(&self, index: u64) -> Option<u64> {
        let bucket = (index >> self.half_count_magnitude) as i64 - 1;
        let mut sub = (index & (self.half_count - 1)) + self.half_count;
        let bucket = if bucket < 0 {
            sub -= self.half_count;
            0
        } else {
            // Past `u32` (a hostile index) is no bucket, not one wrapped back into range.
            u32::try_from(bucket).ok()?
        };
        let shift = bucket.checked_add(self.unit_magnitude)?;
        (shift < 64 && (sub.leading_zeros() >= shift)).then(|| sub << shift)
    }
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The variable-length integer at `b[pos..]` (see [`varint`]), with the one- and two-byte
/// integers that make up almost all of a histogram's counts read without a loop: a merge spends
/// most of its time here, and the loop's exit cannot be predicted from one integer to the next.
#[inline(always)]
fn next_varint(b: &[u8], pos: usize) -> Option<(u64, usize)> {
    let first = *b.get(pos)?;
    if first < 0x80 {
        return Some((u64::from(first), 1));
    }
    match b.get(pos + 1) {
        Some(&second) if second < 0x80 => Some((u64::from(first & 0x7f) | (u64::from(second) << 7), 2)),
        _ => varint(b.get(pos..)?),
    }
}

/// HDR's LEB128 variant: up to 8 bytes of 7 bits, a 9th of 8 bits. The value and bytes used.
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for i in 0..9 {
        let byte = *b.get(i)?;
        if i == 8 {
            return Some((v | (u64::from(byte) << 56), 9));
        }
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_merger_adds_exactly_what_decoding_and_adding_gives() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let (mut by_decode, mut merger) = (new_histogram(), Merger::new());
        for round in 0..200u64 {
            let mut h = new_histogram();
            for _ in 0..(round % 50) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Values over many magnitudes, some in the first bucket, some huge.
                let v = (x >> (x % 60)) % 10_000_000_000_000;
                h.record_n(v, x % 3 + 1).unwrap();
            }
            let bytes = encode(&h).unwrap();
            by_decode.add(decode(&bytes).unwrap()).unwrap();
            assert_eq!(merger.add(&bytes).unwrap(), h.len(), "round {round}");
        }
        let by_merger = merger.histogram().unwrap();
        assert_eq!(by_merger, by_decode);
        for q in [0.0, 0.5, 0.99, 0.999, 1.0] {
            assert_eq!(by_merger.value_at_quantile(q), by_decode.value_at_quantile(q));
        }
        // Plain V2 (no DEFLATE) too.
        let mut plain = Vec::new();
        hdrhistogram::serialization::V2Serializer::new().serialize(&by_decode, &mut plain).unwrap();
        let mut again = Merger::new();
        again.add(&plain).unwrap();
        assert_eq!(again.histogram().unwrap(), by_decode);
        // Another layout (5 digits, lowest 10) goes beside the array, and sums the same.
        let mut other = Histogram::<u64>::new_with_bounds(10, u64::MAX, 5).unwrap();
        other.auto(true);
        for v in [15u64, 7_777, 123_456_789] {
            other.record_n(v, 3).unwrap();
        }
        assert_eq!(again.add(&encode(&other).unwrap()).unwrap(), 9);
        let mut want = by_decode.clone();
        want.add(&other).unwrap();
        assert_eq!(again.histogram().unwrap(), want);
    }

    /// Dense histograms (latencies of a few milliseconds in microseconds): one-byte counts and
    /// runs.
    #[test]
    fn dense_histograms_merge_exactly() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let (mut by_decode, mut merger) = (new_histogram(), Merger::new());
        for round in 0..300u64 {
            let mut h = new_histogram();
            for _ in 0..(round % 200) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                h.record_n(1_000 + x % (1_000 * (round % 60 + 1)), x % 40 + 1).unwrap();
            }
            let bytes = encode(&h).unwrap();
            by_decode.add(decode(&bytes).unwrap()).unwrap();
            assert_eq!(merger.add(&bytes).unwrap(), h.len(), "round {round}");
        }
        assert_eq!(merger.histogram().unwrap(), by_decode);
    }

    #[test]
    fn one_byte_counts_that_overflow_a_bucket_are_refused() {
        let mut merger = Merger::new();
        // Bucket 1000 reaches u64::MAX through multi-byte counts...
        for n in [1u64 << 62, 1 << 62, 1 << 62, (1 << 62) - 1] {
            let mut big = new_histogram();
            big.record_n(1_000, n).unwrap();
            merger.add(&encode(&big).unwrap()).unwrap();
        }
        // ... then one-byte counts from 1000 up pass it.
        let mut dense = new_histogram();
        for v in 1_000..1_016 {
            dense.record(v).unwrap();
        }
        let error = merger.add(&encode(&dense).unwrap()).unwrap_err();
        assert!(error.to_string().contains("overflows"), "{error}");
    }

    #[test]
    fn a_bucket_index_past_u32_buckets_is_out_of_range_not_wrapped() {
        let layout = Layout::new(1, 3);
        // Bucket 2^32 would wrap to bucket 0 if cast.
        assert!(layout.value_at(((1u64 << 32) + 1) << layout.half_count_magnitude).is_none());
    }

    /// Found by the `histogram` fuzz target: counts whose sum passes `u64::MAX` panicked on an
    /// addition (an overflow check in debug builds; a wrong total in release ones).
    #[test]
    fn counts_that_overflow_are_refused_not_a_panic() {
        let input = include_bytes!("../testdata/fuzz/histogram-count-overflow");
        let _ = decode(input);
        let mut m = Merger::new();
        let _ = m.add(input);
        let second = m.add(input);
        assert!(second.is_err(), "{second:?}");
    }

    #[test]
    fn a_compressed_payload_that_inflates_past_the_cap_is_refused() {
        use std::io::Write as _;
        // 64 MiB of zeros behind a valid inner cookie: about 64 KiB compressed.
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&V2_COOKIE.to_be_bytes()).unwrap();
        z.write_all(&u32::MAX.to_be_bytes()).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            z.write_all(&zeros).unwrap();
        }
        let z = z.finish().unwrap();
        let mut bomb = V2_DEFLATE_COOKIE.to_be_bytes().to_vec();
        bomb.extend_from_slice(&(z.len() as u32).to_be_bytes());
        bomb.extend_from_slice(&z);
        let err = decode(&bomb).unwrap_err().to_string();
        assert!(err.contains("more than"), "{err}");
        let mut unpacker = Unpacker::new();
        assert!(unpacker.plain(&bomb).is_err());
        assert!(unpacker.payload.capacity() <= 2 * MAX_INFLATED_BYTES, "{}", unpacker.payload.capacity());
    }

    #[test]
    fn unpacked_histograms_decode_to_the_same_histogram() {
        let mut h = new_histogram();
        for v in [3u64, 999, 65_000, 7_000_000] {
            h.record_n(v, 2).unwrap();
        }
        let packed = encode(&h).unwrap();
        let mut unpacker = Unpacker::new();
        let plain = unpacker.plain(&packed).unwrap().to_vec();
        assert_ne!(plain, packed);
        assert_eq!(decode(&plain).unwrap(), h);
        assert_eq!(unpacker.plain(&plain).unwrap(), &plain[..], "plain V2 stays as it is");
        assert!(unpacker.plain(&packed[..packed.len() - 1]).is_err());
    }

    #[test]
    fn the_merger_refuses_garbage_without_panicking() {
        let mut h = new_histogram();
        h.record(12345).unwrap();
        let good = encode(&h).unwrap();
        let mut merger = Merger::new();
        for cut in 0..good.len() {
            assert!(merger.add(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(merger.add(b"not a histogram").is_err());
        let mut flipped = good.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0x5a;
            let _ = merger.add(&flipped);
            flipped[i] ^= 0x5a;
        }
        assert_eq!(Merger::new().add(&good).unwrap(), 1);
    }

    #[test]
    fn round_trip_is_exact_and_garbage_is_an_error() {
        let mut h = new_histogram();
        for v in [1u64, 7, 1000, 123_456, 9_999_999_999] {
            h.record_n(v, v % 5 + 1).unwrap();
        }
        let back = decode(&encode(&h).unwrap()).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.len(), h.len());
        assert!(decode(b"not a histogram").is_err());
        assert!(decode(&[]).is_err());
        let mut merged = back.clone();
        merged.add(&h).unwrap();
        assert_eq!(merged.len(), 2 * h.len());
    }
}
