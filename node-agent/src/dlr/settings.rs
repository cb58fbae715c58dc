//! The `[dlr]` table and its `[[dlr.connector]]` tables: how long DLR records live, how long
//! lookups and reports wait, the record store, and how each connector writes message ids.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::config::AgentConfigError;

/// The `[dlr]` table: the node's part of the cluster's DLR index (docs/dlr-api.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlrSettings {
    /// Serve the DLR API and hold this node's records and copies. Default: true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How long a registered record lives unless the registration says otherwise, in seconds.
    /// Default: 172800 (48 h).
    #[serde(default = "default_dlr_expiry_s")]
    pub expiry_s: u64,
    /// The longest expiry a registration may ask for, in seconds. Default: 2592000 (30 days).
    #[serde(default = "default_dlr_max_expiry_s")]
    pub max_expiry_s: u64,
    /// How long a closed record is kept so that a repeated DLR is recognized as a duplicate, in
    /// seconds (never past its expiry). Default: 3600.
    #[serde(default = "default_dlr_closed_retention_s")]
    pub closed_retention_s: u64,
    /// How long after an agent left (killed, or cut off from every node that would say it is
    /// alive) and while it is not back a lookup that finds nothing answers `503` rather than
    /// `404`, in seconds: it may hold records no other node has (registered just before it
    /// died, or on it while it was cut off). Past it, such a record is answered `404` until the
    /// agent is back. 0 to `max_expiry_s`. Default: 300.
    #[serde(default = "default_dlr_departed_hold_s")]
    pub departed_hold_s: u64,
    /// How long a lookup or report waits for a registration that has not arrived yet (a DLR
    /// that overtakes its `submit_sm_resp`), in milliseconds, unless the request says otherwise.
    /// Default: 0 for lookups; reports use `report_wait_ms`.
    #[serde(default)]
    pub wait_ms: u64,
    /// The same for reports (DLRs handed in with `/v1/dlr/report`). Default: 2000.
    #[serde(default = "default_dlr_report_wait_ms")]
    pub report_wait_ms: u64,
    /// The longest wait a request may ask for, in milliseconds. Default: 30000.
    #[serde(default = "default_dlr_max_wait_ms")]
    pub max_wait_ms: u64,
    /// How long a lookup waits for replies beyond its wait, in milliseconds. Default: 2000.
    #[serde(default = "default_dlr_timeout_ms")]
    pub timeout_ms: u64,
    /// Block cache of the record store, in MiB. Default: 16.
    #[serde(default = "default_dlr_cache_mb")]
    pub cache_mb: u64,
    /// Force the store to disk this often, in milliseconds; 0 leaves it to the OS. Records
    /// reach the OS at once, so a killed agent loses nothing either way; this bounds what a
    /// power loss can take. Default: 1000.
    #[serde(default = "default_dlr_sync_ms")]
    pub sync_ms: u64,
    /// How many other live agents keep a copy of each of this node's records (the heaviest by
    /// rendezvous hashing). A node answers a resolve from its own store whenever it holds the
    /// record, so `copies` = the number of other agents (every node holds every record) makes
    /// every resolve local and lets records outlive that many nodes down, at the cost of disk,
    /// memory and replication traffic in proportion. Each owner decides for its own records:
    /// nodes may differ. 1 to 16. Default: 2 (a cluster of up to three agents holds every record
    /// on every node; records outlive two nodes down).
    #[serde(default = "default_dlr_copies")]
    pub copies: usize,
    /// Most DLRs the inbox holds that the gateway has not taken (read and acknowledged): past
    /// it, a report this node would queue there is refused with `503` (try again), so a gateway
    /// that stops reading, or a peer flooding reports, fills no disk. Default: 1000000.
    #[serde(default = "default_dlr_max_inbox")]
    pub max_inbox: u64,
    /// Most changed records held for their replicas (the replication queue). When no replica
    /// is live or replicas do not acknowledge for long enough to fill it, the queue is emptied
    /// and one pass over the store sends every own record once replicas answer again, so
    /// memory stays bounded and nothing is lost. Default: 100000.
    #[serde(default = "default_dlr_replica_queue")]
    pub replica_queue: usize,
    /// Write DLR events (registered, resolved, delivered, expired, ...) to the collector's
    /// `dlr` table. Default: true.
    #[serde(default = "default_true")]
    pub record_events: bool,
    /// How each connector writes message ids; connectors not listed use `text` (exact match).
    #[serde(default, rename = "connector")]
    pub connectors: Vec<ConnectorIds>,
}

/// One `[[dlr.connector]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorIds {
    /// The connector's name, as gateways pass it in requests.
    pub name: String,
    /// Format of the ids the gateway registers (from `submit_sm_resp`): `text`, `nocase`,
    /// `decimal` or `hex`. Default: `text`.
    #[serde(default)]
    pub ids: switchboard_bus::dlr::IdFormat,
    /// Format of the ids in this connector's DLRs. Default: the same as `ids`.
    #[serde(default)]
    pub report_ids: Option<switchboard_bus::dlr::IdFormat>,
}

fn default_dlr_expiry_s() -> u64 {
    48 * 3600
}
fn default_dlr_max_expiry_s() -> u64 {
    30 * 24 * 3600
}
fn default_dlr_closed_retention_s() -> u64 {
    3600
}
fn default_dlr_departed_hold_s() -> u64 {
    300
}
fn default_dlr_report_wait_ms() -> u64 {
    2000
}
fn default_dlr_max_wait_ms() -> u64 {
    30_000
}
fn default_dlr_timeout_ms() -> u64 {
    2000
}
fn default_dlr_cache_mb() -> u64 {
    16
}
fn default_dlr_sync_ms() -> u64 {
    1000
}
fn default_dlr_copies() -> usize {
    2
}
/// The most copies `[dlr] copies` may ask for.
pub(crate) const MAX_COPIES: usize = 16;
fn default_dlr_max_inbox() -> u64 {
    1_000_000
}
fn default_dlr_replica_queue() -> usize {
    100_000
}

impl Default for DlrSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            expiry_s: default_dlr_expiry_s(),
            max_expiry_s: default_dlr_max_expiry_s(),
            closed_retention_s: default_dlr_closed_retention_s(),
            departed_hold_s: default_dlr_departed_hold_s(),
            wait_ms: 0,
            report_wait_ms: default_dlr_report_wait_ms(),
            max_wait_ms: default_dlr_max_wait_ms(),
            timeout_ms: default_dlr_timeout_ms(),
            cache_mb: default_dlr_cache_mb(),
            sync_ms: default_dlr_sync_ms(),
            copies: default_dlr_copies(),
            max_inbox: default_dlr_max_inbox(),
            replica_queue: default_dlr_replica_queue(),
            record_events: true,
            connectors: Vec::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

impl DlrSettings {
    /// Check the rules of the `[dlr]` table: expiries, waits, and the connectors' names.
    pub fn validate(&self) -> Result<(), AgentConfigError> {
        let d = self;
        if d.expiry_s == 0 || d.expiry_s > d.max_expiry_s {
            return Err(AgentConfigError::Invalid(format!(
                "dlr.expiry_s = {} must be > 0 and at most dlr.max_expiry_s ({})",
                d.expiry_s, d.max_expiry_s
            )));
        }
        if d.departed_hold_s > d.max_expiry_s {
            return Err(AgentConfigError::Invalid(format!(
                "dlr.departed_hold_s = {} must be at most dlr.max_expiry_s ({}): no record outlives that",
                d.departed_hold_s, d.max_expiry_s
            )));
        }
        for (key, value) in [("dlr.wait_ms", d.wait_ms), ("dlr.report_wait_ms", d.report_wait_ms)] {
            if value > d.max_wait_ms {
                return Err(AgentConfigError::Invalid(format!(
                    "{key} = {value} must be at most dlr.max_wait_ms ({})",
                    d.max_wait_ms
                )));
            }
        }
        switchboard_bus::config::first_zero(&[("dlr.timeout_ms", d.timeout_ms), ("dlr.max_inbox", d.max_inbox)])
            .map_err(AgentConfigError::Invalid)?;
        if !(1..=MAX_COPIES).contains(&d.copies) {
            return Err(AgentConfigError::Invalid(format!(
                "dlr.copies = {} must be between 1 and {MAX_COPIES} (other agents keeping a copy of each record)",
                d.copies
            )));
        }
        let mut connectors = HashSet::new();
        for c in &d.connectors {
            switchboard_bus::dlr::id::check_connector(&c.name)
                .map_err(|e| AgentConfigError::Invalid(format!("dlr.connector {:?}: {e}", c.name)))?;
            if !connectors.insert(&c.name) {
                return Err(AgentConfigError::Invalid(format!("dlr.connector {:?} is listed twice", c.name)));
            }
        }
        Ok(())
    }
}
