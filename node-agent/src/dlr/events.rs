//! DLR events for the collector's `dlr` table.
//!
//! Each event is one JSON line in `<data_dir>/dlr/events.log` (tailed as the agent's own source
//! `_dlr`, so it reaches the table exactly once). Events: `registered` (on the owner),
//! `resolved` and `not_found` (on the node that looked up), `delivered` (on the owner that took
//! the report, or on the reporting node when the owner was down), `duplicate`, `closed` (by the
//! gateway) and `expired` (an open record on its owner). `latency_ms` on `delivered` is the
//! time from submit to DLR: what analysts measure per operator.

use serde::Serialize;
use switchboard_bus::dlr::wire::DlrReport;
use switchboard_bus::dlr::DlrRecord;

/// Name of the event log in the DLR directory.
pub const FILE_NAME: &str = "events.log";
/// Size at which the event log is rotated.
pub const ROTATE_BYTES: u64 = 64 << 20;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A message was registered.
    Registered,
    /// A lookup found the record.
    Resolved,
    /// A lookup found no record.
    NotFound,
    /// A report was taken (queued for the owner's gateway, or handled with the owner down).
    Delivered,
    /// A report for a record already closed.
    Duplicate,
    /// The gateway closed the record.
    Closed,
    /// An open record passed its expiry.
    Expired,
}

/// One line of the event log.
#[derive(Debug, Clone, Serialize)]
pub struct DlrEvent<'a> {
    /// When, ms since the Unix epoch.
    pub ts: u64,
    /// Always `info`.
    pub level: &'static str,
    /// Always `dlr`.
    pub msg: &'static str,
    /// What happened.
    pub event: EventKind,
    /// The connector.
    pub connector: &'a str,
    /// The canonical id (or the id asked for, for `not_found`).
    pub id: &'a str,
    /// The owner.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub owner: &'a str,
    /// The account.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub account: &'a str,
    /// The destination.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub destination: &'a str,
    /// The gateway's reference.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub gateway_ref: &'a str,
    /// Submit time, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<u64>,
    /// The DLR's status (or the record's final status).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'a str>,
    /// Submit to DLR, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// The node whose copy answered a lookup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<&'a str>,
    /// How long the bus lookup took, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lookup_us: Option<u64>,
    /// The node the event happened on (also the stream's node).
    pub at_node: &'a str,
}

switchboard_bus::record_columns!(switchboard_bus::tables::DLR, DlrEvent<'_> {
    layout: ts, level, msg;
    columns: event, connector, id, owner, account, destination, gateway_ref, submitted_at, status, latency_ms,
        answered_by, lookup_us, at_node
});

impl<'a> DlrEvent<'a> {
    /// An event about `record` on `node`.
    pub fn of(event: EventKind, record: &'a DlrRecord, node: &'a str) -> Self {
        Self {
            ts: super::now_ms(),
            level: "info",
            msg: "dlr",
            event,
            connector: &record.connector,
            id: &record.id,
            owner: &record.owner,
            account: &record.account,
            destination: &record.destination,
            gateway_ref: &record.gateway_ref,
            submitted_at: Some(record.submitted_at),
            status: record.status.as_deref(),
            latency_ms: None,
            answered_by: None,
            lookup_us: None,
            at_node: node,
        }
    }

    /// A lookup of `(connector, id)` on `node` that nobody answered.
    pub fn not_found(connector: &'a str, id: &'a str, node: &'a str) -> Self {
        Self {
            ts: super::now_ms(),
            level: "info",
            msg: "dlr",
            event: EventKind::NotFound,
            connector,
            id,
            owner: "",
            account: "",
            destination: "",
            gateway_ref: "",
            submitted_at: None,
            status: None,
            latency_ms: None,
            answered_by: None,
            lookup_us: None,
            at_node: node,
        }
    }

    /// With the report's status and the submit-to-DLR latency.
    pub fn with_report(mut self, report: &'a DlrReport) -> Self {
        self.status = Some(&report.status);
        self.latency_ms = self.submitted_at.map(|s| report.reported_at.saturating_sub(s));
        self
    }

    /// With who answered the lookup and how long it took.
    pub fn answered_by(mut self, node: &'a str, lookup_us: u64) -> Self {
        self.answered_by = Some(node);
        self.lookup_us = Some(lookup_us);
        self
    }

    /// Append the event as one JSON line.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        // Serializing plain strings and numbers into a Vec cannot fail.
        if serde_json::to_writer(&mut *out, self).is_ok() {
            out.push(b'\n');
        }
    }
}
