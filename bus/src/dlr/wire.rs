//! The JSON documents of the DLR protocol (all carry `"version": 1`).
//!
//! - A lookup is a query on `<prefix>/dlr/at/*/<connector>/<id>` (see
//!   [`crate::keys::KeySpace::dlr_at_every`]; `dlr/at/<node>/...` asks one node, and
//!   `dlr/id/<connector>/<id>` every node, replying on the query's key)
//!   with the optional parameter `wait_ms=N`: a node that does not hold the record yet keeps the
//!   query open up to N ms and answers if the record is registered with it meanwhile. Its payload
//!   is empty, or a [`DlrReport`]: the DLR itself, which the owner then takes, hands to its gateway
//!   and closes the record with. Every holder answers with a [`LookupReply`] on the key of its own
//!   name, `<prefix>/dlr/at/<node>/<connector>/<id>`.
//! - Many lookups may also go as a stream: a [`DlrAsk`] published on `<prefix>/dlr/ask/<node>`
//!   is answered by that node with a [`DlrAnswer`] on `<prefix>/dlr/answer/<reply_to>/<node>`. It costs
//!   less per lookup than a query (no per-query timers or completion messages, and zenoh batches
//!   the puts of busy clients on the wire).
//! - Replication is a query on `<prefix>/dlr/replica/<node>` carrying a [`ReplicaBatch`]; the node
//!   answers with a [`ReplicaAck`].

use serde::{Deserialize, Serialize};

use crate::dlr::record::DlrRecord;

/// The schema version of every document here.
pub const DOC_VERSION: u32 = 1;

/// How the error reply to a lookup starts when the answering node's record store failed (a
/// full disk): a node that owns the record and answers so is live but cannot take a report.
pub const STORE_FAILED: &str = "DLR store";

/// A document of this protocol, read with [`decode`].
pub trait Doc: serde::de::DeserializeOwned {
    /// The `version` it carries.
    fn version(&self) -> u32;
}

macro_rules! doc {
    ($($t:ty),*) => {
        $(impl Doc for $t {
            fn version(&self) -> u32 {
                self.version
            }
        })*
    };
}
doc!(DlrReport, LookupReply, DlrAsk, DlrAnswer, ReplicaBatch, ReplicaAck, RestorePage);

/// A document that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    /// Not JSON of the expected shape.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// A version this build does not read: acting on it could misread what it means.
    #[error("unknown version {0} (this build reads version {DOC_VERSION})")]
    Version(u32),
}

/// Read a document from `bytes`, refusing one of a version other than [`DOC_VERSION`].
pub fn decode<T: Doc>(bytes: &[u8]) -> Result<T, DocError> {
    let doc: T = serde_json::from_slice(bytes)?;
    match doc.version() {
        DOC_VERSION => Ok(doc),
        v => Err(DocError::Version(v)),
    }
}

/// A delivery report, as the node that received it hands it on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlrReport {
    /// Always [`DOC_VERSION`].
    pub version: u32,
    /// The status the DLR carries (e.g. `DELIVRD`, `UNDELIV`, `ENROUTE`).
    pub status: String,
    /// Whether the status is final (closes the record). Intermediate reports are handed on only.
    #[serde(default = "yes")]
    pub r#final: bool,
    /// When the DLR arrived, ms since the Unix epoch.
    pub reported_at: u64,
    /// The node that received the DLR.
    pub reported_by: String,
    /// The error code the DLR carries, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The DLR's text, if the gateway passes it on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The last moment (ms since the Unix epoch, by the reporting node's clock) at which the
    /// owner may still take the report. After it the reporting node has stopped waiting for the
    /// owner and its gateway handles the DLR itself (`owner_down`), so an owner that only now
    /// reads the query (it was hung) must not queue the DLR again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_by: Option<u64>,
}

fn yes() -> bool {
    true
}

/// What a holder did with a lookup that carried a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportOutcome {
    /// The owner queued the report for its gateway (and closed the record if it was final).
    Delivered,
    /// The record was already closed: the report is a repeat and was not handed on.
    Duplicate,
}

/// Whose copy a reply comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The node that registered the record.
    Owner,
    /// A node holding a copy.
    Replica,
}

/// One holder's answer to a lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupReply {
    /// Always [`DOC_VERSION`].
    pub version: u32,
    /// The answering node.
    pub node: String,
    /// Owner or replica.
    pub role: Role,
    /// The record as this node holds it (after the report, if one was taken).
    pub record: DlrRecord,
    /// Set when the lookup carried a report and the owner took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<ReportOutcome>,
}

/// A lookup sent as a stream message to the one node that must hold the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlrAsk {
    /// Always [`DOC_VERSION`].
    pub version: u32,
    /// The asker's answer chunk: node `N` answers on `<prefix>/dlr/answer/<reply_to>/N`.
    pub reply_to: String,
    /// The asker's number for this lookup, echoed in the answer.
    pub n: u64,
    /// The connector.
    pub connector: String,
    /// The canonical id.
    pub id: String,
}

impl DlrAsk {
    /// The JSON of an ask, without owning its fields (one is sent per lookup).
    pub fn encode(reply_to: &str, n: u64, connector: &str, id: &str) -> Result<Vec<u8>, serde_json::Error> {
        /// The same fields as [`DlrAsk`], borrowed.
        #[derive(Serialize)]
        struct Borrowed<'a> {
            version: u32,
            reply_to: &'a str,
            n: u64,
            connector: &'a str,
            id: &'a str,
        }
        serde_json::to_vec(&Borrowed { version: DOC_VERSION, reply_to, n, connector, id })
    }
}

/// A node's answer to a [`DlrAsk`]: always sent, so the asker need not wait out a timeout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlrAnswer {
    /// Always [`DOC_VERSION`].
    pub version: u32,
    /// The ask's number.
    pub n: u64,
    /// The record as this node holds it; `null` when it holds none.
    pub reply: Option<LookupReply>,
    /// Why the lookup failed (bad connector or id, a store error); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One change for a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(clippy::large_enum_variant)] // Ops are built once and serialized; boxing buys nothing.
pub enum ReplicaOp {
    /// Store this copy unless a higher version is held.
    Put(DlrRecord),
    /// Forget the copy of `(connector, id)`.
    Drop {
        /// The connector.
        connector: String,
        /// The canonical id.
        id: String,
    },
}

/// Changes sent to one replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaBatch {
    /// Always [`DOC_VERSION`].
    pub version: u32,
    /// The sending node.
    pub from: String,
    /// The changes, applied in order.
    pub ops: Vec<ReplicaOp>,
}

impl ReplicaBatch {
    /// The JSON of a batch of `ops` from `from`, without owning them (the sender keeps its ops
    /// to queue again if the batch fails).
    pub fn encode(from: &str, ops: &[ReplicaOp]) -> Result<Vec<u8>, serde_json::Error> {
        /// The same fields as [`ReplicaBatch`], borrowed.
        #[derive(Serialize)]
        struct Borrowed<'a> {
            version: u32,
            from: &'a str,
            ops: &'a [ReplicaOp],
        }
        serde_json::to_vec(&Borrowed { version: DOC_VERSION, from, ops })
    }
}

/// A replica's answer to a [`ReplicaBatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaAck {
    /// Always [`DOC_VERSION`].
    pub version: u32,
    /// Operations applied.
    pub applied: u64,
    /// Puts not applied because the replica holds a higher or equal, different version: those
    /// copies (the sender adopts them; a record closed while its owner was down comes back so).
    #[serde(default)]
    pub newer: Vec<DlrRecord>,
}

/// Records a node rebuilt with an empty store takes back in one [`RestorePage`], at most.
pub const RESTORE_PAGE_RECORDS: usize = 2000;

/// One answer to a restore query (`<prefix>/dlr/restore/<holder>/<owner>`): copies the holder
/// keeps of `owner`'s records, in the holder's store order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePage {
    /// Always [`DOC_VERSION`].
    pub version: u32,
    /// At most [`RESTORE_PAGE_RECORDS`] records, each naming the asker its owner.
    pub records: Vec<DlrRecord>,
    /// Where to go on (the `after` parameter of the next query, lowercase hex), or `None` when
    /// the holder has no more.
    pub next: Option<String>,
}

#[cfg(test)]
mod tests {

    #[test]
    fn documents_of_another_version_are_refused() {
        let ask = br#"{"version":2,"reply_to":"a","n":1,"connector":"c","id":"1"}"#;
        assert!(matches!(decode::<DlrAsk>(ask), Err(DocError::Version(2))));
        let batch = br#"{"version":2,"from":"a","ops":[]}"#;
        assert!(matches!(decode::<ReplicaBatch>(batch), Err(DocError::Version(2))));
        assert!(decode::<ReplicaBatch>(br#"{"version":1,"from":"a","ops":[]}"#).is_ok());
        assert!(matches!(decode::<DlrAsk>(b"{"), Err(DocError::Json(_))));
    }

    use super::*;

    #[test]
    fn reports_default_to_final() {
        let r: DlrReport =
            serde_json::from_str(r#"{"version":1,"status":"DELIVRD","reported_at":5,"reported_by":"b"}"#).unwrap();
        assert!(r.r#final);
        let text = serde_json::to_string(&ReplicaOp::Drop { connector: "c".into(), id: "1".into() }).unwrap();
        assert_eq!(text, r#"{"drop":{"connector":"c","id":"1"}}"#);
    }

    #[test]
    fn borrowed_asks_encode_as_owned_ones() {
        let owned =
            DlrAsk { version: DOC_VERSION, reply_to: "gw1.c0".into(), n: 17, connector: "c".into(), id: "26".into() };
        let borrowed = DlrAsk::encode("gw1.c0", 17, "c", "26").unwrap();
        assert_eq!(borrowed, serde_json::to_vec(&owned).unwrap());
        assert_eq!(serde_json::from_slice::<DlrAsk>(&borrowed).unwrap(), owned);
    }

    #[test]
    fn borrowed_batches_encode_as_owned_ones() {
        let ops = vec![ReplicaOp::Drop { connector: "c".into(), id: "1".into() }];
        let owned = ReplicaBatch { version: DOC_VERSION, from: "a".into(), ops: ops.clone() };
        let borrowed = ReplicaBatch::encode("a", &ops).unwrap();
        assert_eq!(serde_json::from_slice::<ReplicaBatch>(&borrowed).unwrap(), owned);
        assert_eq!(borrowed, serde_json::to_vec(&owned).unwrap());
    }
}
