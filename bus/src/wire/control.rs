//! Control messages between agents and collectors, as small JSON documents.
//!
//! - [`Heads`] (`<prefix>/head/<node>`, from each agent every second and when a collector joins):
//!   per stream, the next sequence number the agent will assign; everything below it was
//!   published. A collector that lacks part of that range pulls it from the agent's replay
//!   queryable.
//! - [`Watermarks`] (`<prefix>/watermark/<collector>/<node>`, from each collector every second and
//!   after each commit): per stream of that node, the highest sequence number up to which every
//!   record is committed to Parquet. An agent advances its durable checkpoint, and forgets its
//!   journal, only up to it.
//!
//! Streams are named `<kind>/<stream>` (e.g. `log/smsgw`) within a node. Both documents carry
//! `"version": 1`; unknown fields are ignored, an unknown version is rejected.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the control documents.
pub const VERSION: u32 = 1;

/// An agent's heads: per stream, the next sequence number it will assign, and the floor below
/// which it has forgotten everything (acknowledged by a collector; not replayable any more).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heads {
    /// Always [`VERSION`].
    pub version: u32,
    /// `<kind>/<stream>` → next sequence number.
    pub streams: BTreeMap<String, u64>,
    /// `<kind>/<stream>` → first sequence number still replayable (absent: 0).
    #[serde(default)]
    pub acked: BTreeMap<String, u64>,
    /// This run of the agent (its zenoh session id, new at every start): two processes that
    /// publish as one node show up as two instances taking turns. Absent in older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// Most records one replay query may ask for (`to - from + 1`); an agent refuses a longer range
/// with an error reply, and a collector asks for a longer gap in parts.
pub const MAX_REPLAY_RECORDS: u64 = 100_000;

impl Heads {
    /// Refuse heads out of bounds: more than `max_streams` streams, a stream name longer than a
    /// key allows, or an `acked` above its head.
    pub fn check(&self, max_streams: usize) -> Result<(), String> {
        if self.streams.len() > max_streams || self.acked.len() > max_streams {
            return Err(format!("{} streams (at most {max_streams})", self.streams.len().max(self.acked.len())));
        }
        if let Some(s) = self.streams.keys().chain(self.acked.keys()).find(|s| s.len() > 256) {
            return Err(format!("a stream name of {} bytes", s.len()));
        }
        if let Some(i) = self.instance.as_ref().filter(|i| i.len() > MAX_INSTANCE_BYTES) {
            return Err(format!("an instance of {} bytes (at most {MAX_INSTANCE_BYTES})", i.len()));
        }
        for (s, acked) in &self.acked {
            if let Some(head) = self.streams.get(s).filter(|head| acked > *head) {
                return Err(format!("{s}: acked {acked} above head {head}"));
            }
        }
        Ok(())
    }
}

/// The longest `instance` a heads document may carry.
pub const MAX_INSTANCE_BYTES: usize = 128;

/// A collector's watermarks for one node: per stream, the committed contiguous prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermarks {
    /// Always [`VERSION`].
    pub version: u32,
    /// `<kind>/<stream>` → highest sequence number `n` such that `0..=n` are all committed.
    pub streams: BTreeMap<String, u64>,
    /// The epoch of the collector group's writer that published it (the commit log slot of its
    /// claim). An agent ignores watermarks of an epoch below the highest it has seen. Absent in
    /// older collectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// A control document that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Not JSON of the expected shape.
    #[error("malformed control document: {0}")]
    Malformed(String),
    /// A version this build does not know.
    #[error("unknown control document version {0} (this build reads {VERSION})")]
    UnknownVersion(u32),
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], version: impl Fn(&T) -> u32) -> Result<T, ControlError> {
    let doc: T = serde_json::from_slice(bytes).map_err(|e| ControlError::Malformed(e.to_string()))?;
    match version(&doc) {
        VERSION => Ok(doc),
        v => Err(ControlError::UnknownVersion(v)),
    }
}

impl Heads {
    /// Encode as JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&Self { version: VERSION, ..self.clone() }).unwrap_or_default()
    }
    /// Decode and check the version.
    pub fn decode(bytes: &[u8]) -> Result<Self, ControlError> {
        decode(bytes, |d: &Self| d.version)
    }
}

impl Watermarks {
    /// Encode as JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&Self { version: VERSION, streams: self.streams.clone(), epoch: self.epoch })
            .unwrap_or_default()
    }
    /// Decode and check the version.
    pub fn decode(bytes: &[u8]) -> Result<Self, ControlError> {
        decode(bytes, |d: &Self| d.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_out_of_bounds_are_refused() {
        let heads = |n: usize, acked: u64| Heads {
            version: VERSION,
            streams: (0..n).map(|i| (format!("log/s{i}"), 10)).collect(),
            acked: BTreeMap::from([("log/s0".into(), acked)]),
            instance: None,
        };
        assert!(heads(3, 10).check(3).is_ok());
        assert!(heads(4, 10).check(3).unwrap_err().contains("4 streams"));
        assert!(heads(1, 11).check(3).unwrap_err().contains("above head"));
        let mut long = heads(1, 0);
        long.streams.insert("x".repeat(300), 1);
        assert!(long.check(3).unwrap_err().contains("300 bytes"));
        let mut named = heads(1, 10);
        named.instance = Some("i".repeat(MAX_INSTANCE_BYTES));
        assert!(named.check(3).is_ok());
        named.instance = Some("i".repeat(MAX_INSTANCE_BYTES + 1));
        assert!(named.check(3).unwrap_err().contains("an instance of 129 bytes"));
    }

    #[test]
    fn round_trip_and_errors() {
        let h = Heads {
            version: VERSION,
            streams: BTreeMap::from([("log/app".into(), 42)]),
            acked: BTreeMap::new(),
            instance: None,
        };
        assert_eq!(Heads::decode(&h.encode()).unwrap(), h);
        assert_eq!(std::str::from_utf8(&h.encode()).unwrap(), r#"{"version":1,"streams":{"log/app":42},"acked":{}}"#);
        assert_eq!(Heads::decode(br#"{"version":1,"streams":{}}"#).unwrap().acked.len(), 0);
        assert!(matches!(Watermarks::decode(br#"{"version":2,"streams":{}}"#), Err(ControlError::UnknownVersion(2))));
        assert!(matches!(Watermarks::decode(b"\xff"), Err(ControlError::Malformed(_))));
        assert!(Watermarks::decode(br#"{"version":1,"streams":{"log/a":1},"extra":true}"#).is_ok());
    }
}
