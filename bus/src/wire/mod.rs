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

/// Decode an Arrow IPC stream that must hold exactly one record batch.
///
/// Arrow's reader validates what it reads; the call is also fenced with `catch_unwind` so that no
/// input, however hostile, can take the process down.
pub fn decode_ipc(bytes: &[u8]) -> Result<RecordBatch, WireError> {
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
