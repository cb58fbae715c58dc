//! Versioned wire schemas of the payloads on the bus.
//!
//! Every sequenced payload is one Arrow IPC *stream* (schema message, one record batch,
//! end-of-stream marker): self-describing, readable by any Arrow implementation (pyarrow's
//! `pa.ipc.open_stream(payload)`), and decoded by the collector without a copy of the column
//! data. The schema's metadata names the payload type and its version:
//!
//! | metadata key | value |
//! | --- | --- |
//! | `switchboard.payload` | the payload type, e.g. `log_batch` |
//! | `switchboard.version` | its schema version, a decimal integer |
//!
//! A decoder accepts the versions it knows and rejects others with [`WireError::UnknownVersion`];
//! malformed bytes give [`WireError::Malformed`]. Neither ever panics.
//!
//! Payload types: [`log_batch`]. Control documents (heads, watermarks) are JSON: [`control`].

pub mod control;
pub mod log_batch;

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;

/// Schema metadata key naming the payload type.
pub const META_PAYLOAD: &str = "switchboard.payload";
/// Schema metadata key holding the payload's schema version.
pub const META_VERSION: &str = "switchboard.version";

/// A payload that could not be decoded or encoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Not a readable Arrow IPC stream of exactly one record batch.
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// A payload type other than the one expected.
    #[error("unexpected payload type {found:?}, expected {expected:?}")]
    WrongPayload {
        /// What the decoder expected.
        expected: &'static str,
        /// What the payload said it is.
        found: String,
    },
    /// A schema version this build does not know.
    #[error("unknown {payload} schema version {found:?} (this build reads version {known})")]
    UnknownVersion {
        /// The payload type.
        payload: &'static str,
        /// The version the payload carries.
        found: String,
        /// The version this build reads.
        known: u32,
    },
    /// The columns do not match the schema of the declared version.
    #[error("schema mismatch for {payload} v{version}: {detail}")]
    Schema {
        /// The payload type.
        payload: &'static str,
        /// The declared version.
        version: u32,
        /// What differs.
        detail: String,
    },
    /// Arrow refused to encode a batch (a bug, not bad input).
    #[error("cannot encode payload: {0}")]
    Encode(#[from] arrow::error::ArrowError),
}

/// Encode one record batch as an Arrow IPC stream.
pub fn encode_ipc(batch: &RecordBatch) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(batch.get_array_memory_size() + 1024);
    {
        let mut w = StreamWriter::try_new(&mut out, &batch.schema())?;
        w.write(batch)?;
        w.finish()?;
    }
    Ok(out)
}

/// Walk the stream's message framing before Arrow's reader does: every message's metadata and
/// body must lie within `bytes`. Arrow's reader allocates what a length prefix says before it
/// reads, so four bytes claiming a 2 GiB message cost 2 GiB (found by the `log_batch` fuzz
/// target: a 4-byte payload took 1.9 GB and 170 ms). A declared length past the end is
/// malformed, whatever it says.
fn check_framing(bytes: &[u8]) -> Result<(), WireError> {
    let word = |at: usize| -> Option<u32> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let past_end = |what: &str, n: u64| {
        WireError::Malformed(format!("{what} of {n} bytes runs past the end of a {}-byte payload", bytes.len()))
    };
    let mut at = 0usize;
    // Each message advances `at` by at least four bytes, so this ends within `bytes.len() / 4` rounds.
    while let Some(first) = word(at) {
        let (len, head) = if first == 0xFFFF_FFFF {
            (word(at + 4).ok_or_else(|| past_end("a message length", 4))?, 8)
        } else {
            (first, 4)
        };
        if len == 0 {
            return Ok(()); // end of stream
        }
        let meta_start = at + head;
        let meta_end = meta_start
            .checked_add(len as usize)
            .filter(|e| *e <= bytes.len())
            .ok_or_else(|| past_end("message metadata", u64::from(len)))?;
        let message = arrow::ipc::root_as_message(&bytes[meta_start..meta_end])
            .map_err(|e| WireError::Malformed(format!("message metadata: {e}")))?;
        let body = u64::try_from(message.bodyLength())
            .map_err(|_| WireError::Malformed(format!("a negative body length {}", message.bodyLength())))?;
        at = usize::try_from(body)
            .ok()
            .and_then(|b| meta_end.checked_add(b))
            .filter(|e| *e <= bytes.len())
            .ok_or_else(|| past_end("a message body", body))?;
    }
    Ok(())
}

/// Decode an Arrow IPC stream that must hold exactly one record batch.
///
/// Arrow's reader validates what it reads; the call is also fenced with `catch_unwind` so that no
/// input, however hostile, can take the process down.
pub fn decode_ipc(bytes: &[u8]) -> Result<RecordBatch, WireError> {
    check_framing(bytes)?;
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<RecordBatch, WireError> {
        let mut reader =
            StreamReader::try_new(Cursor::new(bytes), None).map_err(|e| WireError::Malformed(e.to_string()))?;
        let batch = match reader.next() {
            Some(Ok(b)) => b,
            Some(Err(e)) => return Err(WireError::Malformed(e.to_string())),
            None => return Err(WireError::Malformed("no record batch in the stream".into())),
        };
        match reader.next() {
            None => Ok(batch),
            Some(Err(e)) => Err(WireError::Malformed(e.to_string())),
            Some(Ok(_)) => Err(WireError::Malformed("more than one record batch".into())),
        }
    }));
    result.unwrap_or_else(|_| Err(WireError::Malformed("the Arrow reader panicked on this input".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `log_batch` fuzz target: length prefixes that claim more than the payload
    /// holds made Arrow's reader allocate what they claim (up to 2 GiB for 4 bytes).
    #[test]
    fn a_length_prefix_past_the_end_is_malformed_before_anything_is_allocated() {
        for input in [
            &[0x0a, 0x2d, 0xf6, 0x0a][..],
            &[0x0a, 0xf6, 0xf2, 0xf6],
            &[0x00, 0x00, 0x00, 0x00, 0xda],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
            &[0xff, 0xff, 0xff, 0xff, 0x10],
        ] {
            let t = std::time::Instant::now();
            let r = decode_ipc(input);
            assert!(matches!(r, Err(WireError::Malformed(_))) || input[..4] == [0, 0, 0, 0], "{input:02x?}: {r:?}");
            // Allocating what a prefix claims (up to 2 GiB) and filling it would take seconds.
            assert!(t.elapsed() < std::time::Duration::from_millis(250), "{input:02x?} took {:?}", t.elapsed());
        }
        let found = include_bytes!("../../testdata/fuzz/log-batch-length-past-end");
        assert!(matches!(decode_ipc(found), Err(WireError::Malformed(_))));
        // A schema without fields makes arrow-ipc 59.3.2 panic (`fb.fields().unwrap()`): caught.
        let no_fields = include_bytes!("../../testdata/fuzz/log-batch-schema-without-fields");
        let err = decode_ipc(no_fields).unwrap_err().to_string();
        assert!(err.contains("malformed"), "{err}");
        let huge = [0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x70, 1, 2, 3];
        let err = decode_ipc(&huge).unwrap_err().to_string();
        assert!(err.contains("runs past the end of a 11-byte payload"), "{err}");
    }

    /// Valid metadata whose body length claims more than the payload holds (here: a stream cut
    /// inside its record batch's body) is malformed before the reader allocates that body.
    #[test]
    fn a_body_length_past_the_end_is_malformed() {
        use arrow::array::StringArray;
        use std::sync::Arc;
        let text = "x".repeat(1 << 20);
        let column = Arc::new(StringArray::from(vec![text.as_str()]));
        let batch = RecordBatch::try_from_iter([("msg", column as arrow::array::ArrayRef)]).unwrap();
        let bytes = encode_ipc(&batch).unwrap();
        assert_eq!(decode_ipc(&bytes).unwrap().num_rows(), 1);
        let cut = &bytes[..bytes.len() - 4096];
        let err = decode_ipc(cut).unwrap_err().to_string();
        assert!(err.contains("a message body of") && err.contains("runs past the end"), "{err}");
    }
}
