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

/// A histogram from HDR V2 bytes (with or without DEFLATE).
pub fn decode(bytes: &[u8]) -> Result<Histogram<u64>, HistogramError> {
    let mut h: Histogram<u64> =
        Deserializer::new().deserialize(&mut &bytes[..]).map_err(|e| HistogramError(format!("{e:?}")))?;
    h.auto(true);
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

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
