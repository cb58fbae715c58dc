//! Request and answer types of the DLR index, its error, its counters, and the limits on what a
//! request may carry.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use switchboard_bus::dlr::wire::{DlrReport, Role as HolderRole};
use switchboard_bus::dlr::{id, DlrRecord};

use super::replicate;
use super::store::StoreError;

/// Longest destination, account or status accepted, in bytes.
pub const MAX_FIELD_BYTES: usize = 128;
/// Longest gateway reference accepted, in bytes.
pub const MAX_REF_BYTES: usize = 256;
/// Most records one register request may carry.
pub const MAX_BATCH: usize = 10_000;

/// A DLR request that failed.
#[derive(Debug, thiserror::Error)]
pub enum DlrError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// No live node holds the record.
    #[error("no record of message {msg_id:?} on connector {connector:?}")]
    NotFound {
        /// The connector asked for.
        connector: String,
        /// The id asked for.
        msg_id: String,
    },
    /// The record is held here only as a copy (close it through a report instead).
    #[error(
        "message {0:?} was registered by node {1:?}, not here: hand in its DLR as a report (REPORT, or /v1/dlr/report)"
    )]
    NotOwner(String, String),
    /// The store failed (e.g. the disk is full).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bus failed (a query or put could not be sent, a publisher not declared).
    #[error("bus: {0}")]
    Bus(zenoh::Error),
    /// Another node answered a lookup with an error.
    #[error("node {node}: {reason}")]
    Refused {
        /// The node that answered.
        node: String,
        /// What it said.
        reason: String,
    },
    /// No node holds the record that could be asked, but a node that may hold it could not be.
    #[error("{0}")]
    Unreachable(String),
    /// A replica did not take a closed record.
    #[error(transparent)]
    Replica(#[from] replicate::ReplicaError),
    /// A document could not be encoded.
    #[error("cannot encode: {0}")]
    Encode(#[from] serde_json::Error),
    /// The task that ran the request panicked.
    #[error("request task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What kind of failure a [`DlrError`] is, as each way in (HTTP, the gateway socket) reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed (HTTP 400, `ERR`); counted in `bad_requests`.
    BadRequest,
    /// No such record (404, `NOTFOUND`).
    NotFound,
    /// The record is another node's (409, `CONFLICT`).
    Conflict,
    /// The store or the bus failed (503, `UNAVAILABLE`).
    Unavailable,
}

impl DlrError {
    /// Its kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::BadRequest(_) => ErrorKind::BadRequest,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::NotOwner(..) => ErrorKind::Conflict,
            Self::Store(_)
            | Self::Bus(_)
            | Self::Refused { .. }
            | Self::Unreachable(_)
            | Self::Replica(_)
            | Self::Encode(_)
            | Self::Task(_) => ErrorKind::Unavailable,
        }
    }
}

impl From<id::IdError> for DlrError {
    fn from(e: id::IdError) -> Self {
        DlrError::BadRequest(e.to_string())
    }
}

/// Counters of the DLR index.
#[derive(Debug, Default)]
pub struct DlrStats {
    /// Records registered here.
    pub registered: AtomicU64,
    /// Lookups from here answered by the owner.
    pub resolved_by_owner: AtomicU64,
    /// Lookups from here answered by a replica.
    pub resolved_by_replica: AtomicU64,
    /// Resolves answered from this node's own store (its record or its copy), without the bus.
    pub answered_here: AtomicU64,
    /// Resolves the node that must hold the record answered alone.
    pub first_holder_hits: AtomicU64,
    /// Resolves that node did not answer, so every node was asked.
    pub first_holder_misses: AtomicU64,
    /// Lookups a node did not answer in time (hung or left): the ask of that node, or the query
    /// of every node.
    pub ask_timeouts: AtomicU64,
    /// Lookups from here no node answered.
    pub not_found: AtomicU64,
    /// Lookups that found nothing while a node that may hold the record could not be asked.
    pub unanswered: AtomicU64,
    /// Reports this node (as owner) queued for its gateway.
    pub delivered: AtomicU64,
    /// Reports for records already closed.
    pub duplicates: AtomicU64,
    /// Reports handed off again: their record was closed by a hand-off whose reporter is gone
    /// since, so its gateway may never have had the DLR.
    pub handed_again: AtomicU64,
    /// Own open records that expired.
    pub expired: AtomicU64,
    /// Records closed by the gateway.
    pub closed: AtomicU64,
    /// Lookups this node answered for others (and itself).
    pub lookups_answered: AtomicU64,
    /// Requests refused as malformed (HTTP and bus).
    pub bad_requests: AtomicU64,
    /// Record copies sent to replicas.
    pub replica_ops_sent: AtomicU64,
    /// Record copies taken as a replica.
    pub replica_ops_received: AtomicU64,
    /// Replica batches that failed (retried).
    pub replica_failures: AtomicU64,
    /// Own records taken back from other nodes' copies (this node was rebuilt empty).
    pub restored: AtomicU64,
    /// Pages of copies sent to nodes taking their records back.
    pub restore_pages_served: AtomicU64,
    /// Store operations that failed.
    pub store_errors: AtomicU64,
    /// Event lines that could not be written.
    pub event_errors: AtomicU64,
    /// Reports refused because the inbox held `dlr.max_inbox` DLRs.
    pub inbox_full: AtomicU64,
}

impl DlrStats {
    /// Every counter with its metric name and help.
    pub fn counters(&self) -> [(&'static str, &'static str, u64); 24] {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("registered", "Messages registered on this node.", g(&self.registered)),
            ("resolved_by_owner", "Lookups from this node answered by the owner.", g(&self.resolved_by_owner)),
            ("resolved_by_replica", "Lookups from this node answered by a copy.", g(&self.resolved_by_replica)),
            (
                "answered_here",
                "Resolves answered from this node's own store (its record or its copy), without the bus.",
                g(&self.answered_here),
            ),
            (
                "first_holder_hits",
                "Resolves answered by the one node that must hold the record.",
                g(&self.first_holder_hits),
            ),
            (
                "first_holder_misses",
                "Resolves that node did not answer (then every node was asked).",
                g(&self.first_holder_misses),
            ),
            (
                "ask_timeouts",
                "Lookups a node left unanswered within the timeout (the ask of the node that must hold the record, or the query of every node).",
                g(&self.ask_timeouts),
            ),
            ("not_found", "Lookups from this node that no node answered.", g(&self.not_found)),
            (
                "unanswered",
                "Lookups that found nothing while a node that may hold the record could not be asked.",
                g(&self.unanswered),
            ),
            ("delivered", "Reports this node took as owner for its gateway.", g(&self.delivered)),
            ("duplicates", "Reports for records already closed.", g(&self.duplicates)),
            (
                "handed_again",
                "Reports taken again (owner_down at a copy, delivered at the owner): their record was closed by a hand-off whose reporter is gone since.",
                g(&self.handed_again),
            ),
            ("expired", "Own open records that expired.", g(&self.expired)),
            ("closed", "Records closed by the gateway.", g(&self.closed)),
            ("lookups_answered", "Lookups this node answered.", g(&self.lookups_answered)),
            ("bad_requests", "Malformed DLR requests (HTTP and bus).", g(&self.bad_requests)),
            ("replica_ops_sent", "Record copies sent to replicas.", g(&self.replica_ops_sent)),
            ("replica_ops_received", "Record copies taken as a replica.", g(&self.replica_ops_received)),
            ("replica_failures", "Replica batches that failed (retried).", g(&self.replica_failures)),
            (
                "restored",
                "Own records taken back from other nodes' copies after this node started with an empty store.",
                g(&self.restored),
            ),
            (
                "restore_pages_served",
                "Pages of copies sent to nodes taking their records back.",
                g(&self.restore_pages_served),
            ),
            ("store_errors", "DLR store operations that failed.", g(&self.store_errors)),
            ("event_errors", "DLR event lines that could not be written.", g(&self.event_errors)),
            (
                "inbox_full",
                "Reports refused because the inbox held dlr.max_inbox DLRs its gateway had not taken.",
                g(&self.inbox_full),
            ),
        ]
    }
}

/// One registration, as the gateway sends it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The connector the message went out on.
    pub connector: String,
    /// The id the SMSC gave the message (e.g. from `submit_sm_resp`).
    pub msg_id: String,
    /// The destination address.
    #[serde(default)]
    pub destination: String,
    /// The customer account.
    #[serde(default)]
    pub account: String,
    /// The gateway's own reference.
    #[serde(default)]
    pub gateway_ref: String,
    /// Submit time, ms since the Unix epoch (default: now).
    #[serde(default)]
    pub submitted_at: Option<u64>,
    /// Expiry in seconds from now (default: `dlr.expiry_s`).
    #[serde(default)]
    pub expiry_s: Option<u64>,
}

/// A DLR as the gateway hands it in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    /// The connector the DLR came in on.
    pub connector: String,
    /// The message id in the DLR.
    pub msg_id: String,
    /// The DLR's status (e.g. `DELIVRD`).
    pub status: String,
    /// Whether the status is final (default true).
    #[serde(default = "yes", rename = "final")]
    pub is_final: bool,
    /// The DLR's error code.
    #[serde(default)]
    pub error: Option<String>,
    /// The DLR's text.
    #[serde(default)]
    pub text: Option<String>,
    /// How long to wait for a registration not there yet, ms (default: `dlr.report_wait_ms`).
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

fn yes() -> bool {
    true
}

/// What happened to a reported DLR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The owner took it: its gateway gets it from its inbox.
    Delivered,
    /// The record was closed already: a repeated DLR.
    Duplicate,
    /// The owner is down: the record came from its copy (and was closed there); the reporting
    /// gateway handles the DLR itself with the record returned.
    OwnerDown,
}

/// How a gateway wrote the `msg_id` it looks up: as its `submit_sm_resp` said (the connector's
/// `ids`), or as the DLR says (`report_ids`). They differ where a connector's SMSC writes ids in
/// two formats (hex in one, decimal in the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdForm {
    /// As registered (`ids`).
    Registered,
    /// As in the DLR (`report_ids`): the default of `resolve` and `report`.
    Report,
}

/// The answer to a lookup or report.
#[derive(Debug, Clone, Serialize)]
pub struct Resolution {
    /// The record (after the report, when one was taken).
    pub record: DlrRecord,
    /// The node that answered.
    pub answered_by: String,
    /// Whether the answer came from the owner or a copy.
    pub role: HolderRole,
    /// Whether the owner is live as this node sees it.
    pub owner_alive: bool,
    /// For reports: what happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Time the bus lookup took, µs.
    pub lookup_us: u64,
}

/// A report queued for this node's gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboxEntry {
    /// The record it belongs to (closed if the report was final).
    pub record: DlrRecord,
    /// The report.
    pub report: DlrReport,
}

/// Longest DLR text accepted, in bytes.
pub(super) const MAX_TEXT_BYTES: usize = 1024;

/// Refuse a report's fields as the HTTP API does: a status (non-empty), an error code and a text
/// within their lengths, no control characters.
pub(super) fn check_report_fields(status: &str, error: Option<&str>, text: Option<&str>) -> Result<(), DlrError> {
    check_status(status)?;
    check_field("error", error.unwrap_or(""), MAX_FIELD_BYTES)?;
    check_field("text", text.unwrap_or(""), MAX_TEXT_BYTES)
}

/// A report's or a close's `status`: a field that says something (not empty, not only spaces).
pub(super) fn check_status(status: &str) -> Result<(), DlrError> {
    check_field("status", status, MAX_FIELD_BYTES)?;
    if status.trim().is_empty() {
        return Err(DlrError::BadRequest("status must not be empty".into()));
    }
    Ok(())
}

/// Refuse a report that came over the bus unless the HTTP API would have taken it, from a
/// `reported_by` that can be a node's name, at a time that is not in the future (a minute of skew).
pub(super) fn check_bus_report(r: &DlrReport, now_ms: u64) -> Result<(), DlrError> {
    check_report_fields(&r.status, r.error.as_deref(), r.text.as_deref())?;
    switchboard_bus::keys::check_chunk(&r.reported_by)
        .map_err(|e| DlrError::BadRequest(format!("reported_by {:?}: {e}", r.reported_by)))?;
    check_field("reported_by", &r.reported_by, MAX_FIELD_BYTES)?;
    if r.reported_at > now_ms.saturating_add(60_000) {
        return Err(DlrError::BadRequest(format!("reported_at {} is in the future", r.reported_at)));
    }
    Ok(())
}

/// The latest `expires_at` a record from another node may carry now: what a registration with
/// the longest expiry allowed (`max_expiry_s`) on a node whose clock is a minute ahead would get.
pub(super) fn latest_expiry(max_expiry_s: u64) -> u64 {
    super::now_ms().saturating_add(max_expiry_s.saturating_mul(1000)).saturating_add(60_000)
}

/// Refuse a record from another node (a replica batch, or a holder's answer) whose fields the
/// register API would have refused, that expires after `latest_expiry` (ms since the Unix
/// epoch, [`latest_expiry`]), or whose version is ahead of any registration an hour from now.
pub(super) fn check_record(r: &DlrRecord, latest_expiry: u64) -> Result<(), DlrError> {
    id::check_connector(&r.connector).map_err(|e| DlrError::BadRequest(e.to_string()))?;
    switchboard_bus::keys::check_chunk(&r.owner).map_err(|e| DlrError::BadRequest(format!("owner: {e}")))?;
    for (name, value) in [("id", &r.id), ("msg_id", &r.msg_id)] {
        // As registered: 1 to 128 bytes, trimmed.
        if value.is_empty() || value.len() > id::MAX_ID_BYTES || value.trim() != value.as_str() {
            return Err(DlrError::BadRequest(format!(
                "{name} must be 1 to {} bytes without surrounding whitespace",
                id::MAX_ID_BYTES
            )));
        }
        check_field(name, value, id::MAX_ID_BYTES)?;
    }
    // A version ahead of any registration an hour from now outranks every real state of the
    // record for good (the owner's own registration and close included): a forgery.
    let latest_version =
        switchboard_bus::dlr::record::registration_version(None, super::now_ms().saturating_add(3_600_000));
    if r.version > latest_version {
        return Err(DlrError::BadRequest(format!(
            "version {} is from the future (a registration an hour from now has {latest_version})",
            r.version
        )));
    }
    if r.expires_at > latest_expiry {
        return Err(DlrError::BadRequest(format!(
            "expires_at {} is later than dlr.max_expiry_s allows ({latest_expiry})",
            r.expires_at
        )));
    }
    check_field("destination", &r.destination, MAX_FIELD_BYTES)?;
    check_field("account", &r.account, MAX_FIELD_BYTES)?;
    check_field("gateway_ref", &r.gateway_ref, MAX_REF_BYTES)?;
    check_field("status", r.status.as_deref().unwrap_or(""), MAX_FIELD_BYTES)
}

/// Refuse `value` (the field `name`) if it is longer than `max` bytes or holds a control character.
pub(super) fn check_field(name: &str, value: &str, max: usize) -> Result<(), DlrError> {
    if value.len() > max || value.chars().any(char::is_control) {
        return Err(DlrError::BadRequest(format!("{name} must be at most {max} bytes without control characters")));
    }
    Ok(())
}
