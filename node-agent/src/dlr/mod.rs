//! The node's part of the cluster's DLR index.
//!
//! A gateway registers each submitted message with its agent ([`DlrService::register`]); the
//! record goes to the node's [`store`] and a copy to one other live node ([`replicate`], chosen
//! by rendezvous hashing). A DLR that arrives at any node is resolved in one bus round trip:
//! asking the one node that must hold the record on the ask stream ([`ask`]), or with a query
//! every holder answers ([`lookup`]); when it carries the report, the owner takes
//! it in the same round trip: it queues the report for its gateway (the inbox), closes the
//! record and tells its replica. If the owner is down, the replica's copy answers and the
//! reporting node closes it there. Records expire everywhere on time ([`DlrService::sweep`]).
//! [`events`] records what happened for the collector's `dlr` table; [`http`] is the
//! gateway's API (docs/dlr-api.md).

mod answerer;
pub mod ask;
pub mod events;
pub mod http;
pub mod lookup;
pub mod replicate;
pub mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use switchboard_bus::dlr::wire::{DlrReport, LookupReply, ReportOutcome, Role as HolderRole, DOC_VERSION};
use switchboard_bus::dlr::{id, DlrRecord, IdFormat, RecordState};
use switchboard_bus::keys::{KeySpace, Role};
use switchboard_bus::Membership;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AgentConfig, DlrSettings};
use crate::eventlog::EventLog;
use crate::AgentError;
use events::{DlrEvent, EventKind};
use store::{DlrStore, StoreError, Write};

/// Longest destination, account or status accepted, in bytes.
pub const MAX_FIELD_BYTES: usize = 128;
/// Longest gateway reference accepted, in bytes.
pub const MAX_REF_BYTES: usize = 256;
/// Most records one register request may carry.
pub const MAX_BATCH: usize = 10_000;
/// Most lookups that may wait for a registration at once on this node.
pub const MAX_WAITERS: usize = 10_000;

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
    #[error("message {0:?} was registered by node {1:?}, not here: hand in its DLR with /v1/dlr/report")]
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
    /// Resolves the node that must hold the record answered alone.
    pub first_holder_hits: AtomicU64,
    /// Resolves that node did not answer, so every node was asked.
    pub first_holder_misses: AtomicU64,
    /// Asks of that node that got no answer in time (the node hung or left).
    pub ask_timeouts: AtomicU64,
    /// Lookups from here no node answered.
    pub not_found: AtomicU64,
    /// Reports this node (as owner) queued for its gateway.
    pub delivered: AtomicU64,
    /// Reports for records already closed.
    pub duplicates: AtomicU64,
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
    /// Store operations that failed.
    pub store_errors: AtomicU64,
    /// Event lines that could not be written.
    pub event_errors: AtomicU64,
}

impl DlrStats {
    /// Every counter with its metric name and help.
    pub fn counters(&self) -> [(&'static str, &'static str, u64); 18] {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("registered", "Messages registered on this node.", g(&self.registered)),
            ("resolved_by_owner", "Lookups from this node answered by the owner.", g(&self.resolved_by_owner)),
            ("resolved_by_replica", "Lookups from this node answered by a copy.", g(&self.resolved_by_replica)),
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
                "Asks of the node that must hold a record left unanswered within the timeout.",
                g(&self.ask_timeouts),
            ),
            ("not_found", "Lookups from this node that no node answered.", g(&self.not_found)),
            ("delivered", "Reports this node took as owner for its gateway.", g(&self.delivered)),
            ("duplicates", "Reports for records already closed.", g(&self.duplicates)),
            ("expired", "Own open records that expired.", g(&self.expired)),
            ("closed", "Records closed by the gateway.", g(&self.closed)),
            ("lookups_answered", "Lookups this node answered.", g(&self.lookups_answered)),
            ("bad_requests", "Malformed DLR requests (HTTP and bus).", g(&self.bad_requests)),
            ("replica_ops_sent", "Record copies sent to replicas.", g(&self.replica_ops_sent)),
            ("replica_ops_received", "Record copies taken as a replica.", g(&self.replica_ops_received)),
            ("replica_failures", "Replica batches that failed (retried).", g(&self.replica_failures)),
            ("store_errors", "DLR store operations that failed.", g(&self.store_errors)),
            ("event_errors", "DLR event lines that could not be written.", g(&self.event_errors)),
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

/// The node's DLR index and what serves it.
pub struct DlrService {
    node: String,
    settings: DlrSettings,
    formats: HashMap<String, (IdFormat, IdFormat)>,
    store: Arc<DlrStore>,
    session: zenoh::Session,
    keys: KeySpace,
    membership: Membership,
    waiters: Mutex<HashMap<Vec<u8>, Vec<oneshot::Sender<()>>>>,
    waiting: AtomicU64,
    changes: mpsc::UnboundedSender<DlrRecord>,
    events: Option<EventLog>,
    inbox_ready: Notify,
    asker: ask::Asker,
    /// Counters.
    pub stats: Arc<DlrStats>,
}

/// ms since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The agent's DLR directory: the store and the event log.
pub fn dlr_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("dlr")
}

/// The event log the `_dlr` source tails.
pub fn event_log(data_dir: &Path) -> EventLog {
    EventLog::new(&dlr_dir(data_dir), events::FILE_NAME, events::ROTATE_BYTES)
}

/// The internal source that carries DLR events to the collector.
pub fn events_source(data_dir: &Path) -> crate::config::SourceConfig {
    event_log(data_dir).source(switchboard_bus::tables::DLR.stream)
}

fn check_field(name: &str, value: &str, max: usize) -> Result<(), DlrError> {
    if value.len() > max || value.chars().any(char::is_control) {
        return Err(DlrError::BadRequest(format!("{name} must be at most {max} bytes without control characters")));
    }
    Ok(())
}

impl DlrService {
    /// Open the store and start serving lookups and replication for the agent in `config`.
    pub async fn start(
        config: &AgentConfig,
        session: &zenoh::Session,
        keys: &KeySpace,
        membership: &Membership,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Result<Arc<Self>, AgentError> {
        let settings = config.dlr.clone();
        let dir = dlr_dir(&config.agent.data_dir);
        let store = {
            let (path, cache) = (dir.join("store"), settings.cache_mb << 20);
            tokio::task::spawn_blocking(move || DlrStore::open(&path, cache))
                .await?
                .map_err(|source| AgentError::Dlr { path: dir.join("store"), source })?
        };
        let formats =
            settings.connectors.iter().map(|c| (c.name.clone(), (c.ids, c.report_ids.unwrap_or(c.ids)))).collect();
        let (changes, changes_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(DlrStats::default());
        let asker = ask::Asker::new(session, keys, &config.bus.node, stats.clone()).await?;
        let service = Arc::new(Self {
            node: config.bus.node.clone(),
            events: settings.record_events.then(|| event_log(&config.agent.data_dir)),
            settings,
            formats,
            store: Arc::new(store),
            session: session.clone(),
            keys: keys.clone(),
            membership: membership.clone(),
            waiters: Mutex::new(HashMap::new()),
            waiting: AtomicU64::new(0),
            changes,
            inbox_ready: Notify::new(),
            asker,
            stats,
        });
        let size = service.store.size();
        tracing::info!(records = size.records, inbox = size.inbox, disk_bytes = size.disk_bytes, "DLR store open");
        let answerer = answerer::Answerer::start()?;
        lookup::serve(service.clone(), answerer.clone(), tracker, cancel.clone()).await?;
        ask::serve(service.clone(), answerer, tracker, cancel.clone()).await?;
        replicate::serve(service.clone(), tracker, cancel.clone()).await?;
        tracker.spawn(replicate::run(service.clone(), changes_rx, cancel.clone()));
        tracker.spawn(service.clone().sweep(cancel.clone()));
        Ok(service)
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The agents this node sees live (itself included once it has announced itself).
    pub fn live_nodes(&self) -> Vec<String> {
        self.membership.live_of(Role::Agent)
    }

    /// The record store.
    pub fn store(&self) -> &DlrStore {
        &self.store
    }

    /// The id formats of `connector`: (registered ids, DLR ids).
    fn formats(&self, connector: &str) -> Result<(IdFormat, IdFormat), DlrError> {
        id::check_connector(connector)?;
        Ok(self.formats.get(connector).copied().unwrap_or_default())
    }

    fn count_store_error<T>(&self, r: Result<T, StoreError>) -> Result<T, DlrError> {
        r.map_err(|e| {
            self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "DLR store");
            DlrError::Store(e)
        })
    }

    /// Register messages (one atomic write for the whole request); returns the stored records.
    pub fn register(&self, regs: &[Registration]) -> Result<Vec<DlrRecord>, DlrError> {
        if regs.is_empty() || regs.len() > MAX_BATCH {
            return Err(DlrError::BadRequest(format!("a request registers 1 to {MAX_BATCH} records")));
        }
        let now = now_ms();
        let mut fresh = Vec::with_capacity(regs.len());
        for (i, r) in regs.iter().enumerate() {
            let at = |e: DlrError| {
                DlrError::BadRequest(if regs.len() > 1 { format!("record {i}: {e}") } else { e.to_string() })
            };
            let (ids, _) = self.formats(&r.connector).map_err(at)?;
            let canonical = ids.canonical(&r.msg_id).map_err(|e| at(e.into()))?;
            check_field("destination", &r.destination, MAX_FIELD_BYTES).map_err(at)?;
            check_field("account", &r.account, MAX_FIELD_BYTES).map_err(at)?;
            check_field("gateway_ref", &r.gateway_ref, MAX_REF_BYTES).map_err(at)?;
            let expiry_s = r.expiry_s.unwrap_or(self.settings.expiry_s);
            if expiry_s == 0 || expiry_s > self.settings.max_expiry_s {
                return Err(at(DlrError::BadRequest(format!(
                    "expiry_s must be 1 to {} (dlr.max_expiry_s)",
                    self.settings.max_expiry_s
                ))));
            }
            fresh.push(DlrRecord {
                connector: r.connector.clone(),
                id: canonical,
                msg_id: r.msg_id.trim().to_owned(),
                account: r.account.clone(),
                destination: r.destination.clone(),
                submitted_at: r.submitted_at.unwrap_or(now),
                owner: self.node.clone(),
                gateway_ref: r.gateway_ref.clone(),
                expires_at: now.saturating_add(expiry_s.saturating_mul(1000)),
                version: 1,
                state: RecordState::Open,
                status: None,
                closed_at: None,
                closed_by: None,
            });
        }
        {
            let _guard = self.store.lock();
            let mut previous = Vec::with_capacity(fresh.len());
            for r in &mut fresh {
                let prev = self.count_store_error(self.store.get(&r.connector, &r.id))?;
                // Re-registering an id (a retry, or an id the SMSC reused) replaces the record.
                r.version = prev.as_ref().map_or(1, |p| p.version.saturating_add(1));
                previous.push(prev);
            }
            let writes: Vec<Write<'_>> =
                fresh.iter().zip(&previous).map(|(record, p)| Write::Put { record, previous: p.as_ref() }).collect();
            self.count_store_error(self.store.write(&writes))?;
        }
        self.stats.registered.fetch_add(fresh.len() as u64, Ordering::Relaxed);
        let mut lines = Vec::new();
        for r in &fresh {
            self.wake(&r.store_key());
            let _ = self.changes.send(r.clone());
            DlrEvent::of(EventKind::Registered, r, &self.node).write_to(&mut lines);
        }
        self.log_events(&lines);
        Ok(fresh)
    }

    /// Close a record this node owns, with `status` (e.g. when the gateway learned the outcome
    /// some other way). Closing a closed record returns it unchanged.
    pub fn close(&self, connector: &str, msg_id: &str, status: &str) -> Result<DlrRecord, DlrError> {
        let (ids, _) = self.formats(connector)?;
        let canonical = ids.canonical(msg_id)?;
        check_field("status", status, MAX_FIELD_BYTES)?;
        let closed = {
            let _guard = self.store.lock();
            let Some(current) = self.count_store_error(self.store.get(connector, &canonical))? else {
                return Err(DlrError::NotFound { connector: connector.into(), msg_id: msg_id.into() });
            };
            if current.owner != self.node {
                return Err(DlrError::NotOwner(msg_id.into(), current.owner));
            }
            if !current.is_open() {
                return Ok(current);
            }
            let closed = self.closed(&current, status, now_ms(), &self.node);
            self.count_store_error(self.store.write(&[Write::Put { record: &closed, previous: Some(&current) }]))?;
            closed
        };
        self.stats.closed.fetch_add(1, Ordering::Relaxed);
        let _ = self.changes.send(closed.clone());
        let mut line = Vec::new();
        DlrEvent::of(EventKind::Closed, &closed, &self.node).write_to(&mut line);
        self.log_events(&line);
        Ok(closed)
    }

    /// `record` closed with `status` at `at` by `by`: kept until its expiry or the closed
    /// retention, whichever comes first.
    fn closed(&self, record: &DlrRecord, status: &str, at: u64, by: &str) -> DlrRecord {
        let keep = at.saturating_add(self.settings.closed_retention_s.saturating_mul(1000));
        DlrRecord {
            version: record.version.saturating_add(1),
            state: RecordState::Closed,
            status: Some(status.to_owned()),
            closed_at: Some(at),
            closed_by: Some(by.to_owned()),
            expires_at: record.expires_at.min(keep),
            ..record.clone()
        }
    }

    /// The canonical id of `msg_id`, read in the connector's format for `form`.
    fn canonical(&self, connector: &str, msg_id: &str, form: IdForm) -> Result<String, DlrError> {
        let (ids, dlr_ids) = self.formats(connector)?;
        Ok(match form {
            IdForm::Registered => ids.canonical(msg_id)?,
            IdForm::Report => dlr_ids.canonical(msg_id)?,
        })
    }

    /// Look up `msg_id` (read as `form` says) on the bus (waiting up to `wait_ms` for a
    /// registration not there yet):
    /// first at the one node that must hold it (whose copy may trail the owner by the
    /// replication delay), then at every node; with `owner`, at every node at once, waiting for
    /// the owner's answer while it is live.
    pub async fn resolve(
        &self,
        connector: &str,
        msg_id: &str,
        form: IdForm,
        wait_ms: Option<u64>,
        owner: bool,
    ) -> Result<Resolution, DlrError> {
        let canonical = self.canonical(connector, msg_id, form)?;
        let wait = self.wait(wait_ms.unwrap_or(self.settings.wait_ms))?;
        let mut found = None;
        if !owner {
            found = lookup::query_first_holder(self, connector, &canonical).await?;
            let counter = if found.is_some() { &self.stats.first_holder_hits } else { &self.stats.first_holder_misses };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if found.is_none() {
            found = lookup::query(self, connector, &canonical, wait, None).await?;
        }
        self.after_lookup(connector, msg_id, found, None)
    }

    /// Look up `msg_id` in this node's own store only (no bus): what node-by-node forwarding
    /// asks each node.
    pub fn resolve_local(&self, connector: &str, msg_id: &str, form: IdForm) -> Result<Resolution, DlrError> {
        let canonical = self.canonical(connector, msg_id, form)?;
        let Some(reply) = self.answer(connector, &canonical, None)? else {
            return Err(DlrError::NotFound { connector: connector.into(), msg_id: msg_id.into() });
        };
        Ok(Resolution {
            owner_alive: reply.record.owner == self.node
                || self.membership.live_of(Role::Agent).contains(&reply.record.owner),
            record: reply.record,
            answered_by: reply.node,
            role: reply.role,
            outcome: None,
            lookup_us: 0,
        })
    }

    /// Hand in a DLR that arrived at this node: resolve it, let the owner take it (or close the
    /// owner's copy when the owner is down), recognize repeats.
    pub async fn report(&self, req: &ReportRequest) -> Result<Resolution, DlrError> {
        let (_, dlr_ids) = self.formats(&req.connector)?;
        let canonical = dlr_ids.canonical(&req.msg_id)?;
        check_field("status", &req.status, MAX_FIELD_BYTES)?;
        if req.status.is_empty() {
            return Err(DlrError::BadRequest("status must not be empty".into()));
        }
        check_field("error", req.error.as_deref().unwrap_or(""), MAX_FIELD_BYTES)?;
        check_field("text", req.text.as_deref().unwrap_or(""), 1024)?;
        let wait = self.wait(req.wait_ms.unwrap_or(self.settings.report_wait_ms))?;
        let report = DlrReport {
            version: DOC_VERSION,
            status: req.status.clone(),
            r#final: req.is_final,
            reported_at: now_ms(),
            reported_by: self.node.clone(),
            error: req.error.clone(),
            text: req.text.clone(),
        };
        let found = lookup::query(self, &req.connector, &canonical, wait, Some(&report)).await?;
        let mut res = self.after_lookup(&req.connector, &req.msg_id, found, Some(&report))?;
        if res.role == HolderRole::Replica {
            self.report_to_replica(&mut res, &report).await?;
        }
        Ok(res)
    }

    /// The owner did not answer: close the copy on the replica that did (for a final report),
    /// so a repeat is recognized; the reporting gateway handles the DLR with the record.
    async fn report_to_replica(&self, res: &mut Resolution, report: &DlrReport) -> Result<(), DlrError> {
        if !res.record.is_open() {
            res.outcome = Some(Outcome::Duplicate);
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        res.outcome = Some(Outcome::OwnerDown);
        if !report.r#final {
            return Ok(());
        }
        let closed = self.closed(&res.record, &report.status, report.reported_at, &self.node);
        let ack =
            replicate::send(self, &res.answered_by, &[switchboard_bus::dlr::wire::ReplicaOp::Put(closed.clone())])
                .await?;
        if let Some(newer) = ack.newer.into_iter().next() {
            // Another node closed it first.
            res.record = newer;
            res.outcome = Some(Outcome::Duplicate);
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        res.record = closed;
        let mut line = Vec::new();
        DlrEvent::of(EventKind::Delivered, &res.record, &self.node)
            .with_report(report)
            .answered_by(&res.answered_by, res.lookup_us)
            .write_to(&mut line);
        self.log_events(&line);
        Ok(())
    }

    fn wait(&self, ms: u64) -> Result<Duration, DlrError> {
        if ms > self.settings.max_wait_ms {
            return Err(DlrError::BadRequest(format!(
                "wait_ms must be at most {} (dlr.max_wait_ms)",
                self.settings.max_wait_ms
            )));
        }
        Ok(Duration::from_millis(ms))
    }

    fn after_lookup(
        &self,
        connector: &str,
        msg_id: &str,
        found: Option<(LookupReply, Duration)>,
        report: Option<&DlrReport>,
    ) -> Result<Resolution, DlrError> {
        let mut line = Vec::new();
        let Some((reply, took)) = found else {
            self.stats.not_found.fetch_add(1, Ordering::Relaxed);
            DlrEvent::not_found(connector, msg_id, &self.node).write_to(&mut line);
            self.log_events(&line);
            return Err(DlrError::NotFound { connector: connector.into(), msg_id: msg_id.into() });
        };
        let owner_alive =
            reply.record.owner == self.node || self.membership.live_of(Role::Agent).contains(&reply.record.owner);
        let counter = match reply.role {
            HolderRole::Owner => &self.stats.resolved_by_owner,
            HolderRole::Replica => &self.stats.resolved_by_replica,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let lookup_us = took.as_micros() as u64;
        let mut ev = DlrEvent::of(EventKind::Resolved, &reply.record, &self.node).answered_by(&reply.node, lookup_us);
        if let Some(r) = report {
            ev = ev.with_report(r);
        }
        ev.write_to(&mut line);
        self.log_events(&line);
        Ok(Resolution {
            outcome: reply.outcome.map(|o| match o {
                ReportOutcome::Delivered => Outcome::Delivered,
                ReportOutcome::Duplicate => Outcome::Duplicate,
            }),
            record: reply.record,
            answered_by: reply.node,
            role: reply.role,
            owner_alive,
            lookup_us,
        })
    }

    /// What this node answers to a lookup of `(connector, id)`, taking `report` if it owns the
    /// record; `None` if it holds no record.
    pub fn answer(
        &self,
        connector: &str,
        id: &str,
        report: Option<&DlrReport>,
    ) -> Result<Option<LookupReply>, DlrError> {
        let reply = |record: DlrRecord, outcome| {
            let role = if record.owner == self.node { HolderRole::Owner } else { HolderRole::Replica };
            LookupReply { version: DOC_VERSION, node: self.node.clone(), role, record, outcome }
        };
        let Some(report) = report else {
            return Ok(self.count_store_error(self.store.get(connector, id))?.map(|r| reply(r, None)));
        };
        let (record, outcome) = {
            let _guard = self.store.lock();
            let Some(current) = self.count_store_error(self.store.get(connector, id))? else { return Ok(None) };
            if current.owner != self.node {
                return Ok(Some(reply(current, None)));
            }
            if !current.is_open() {
                (current, ReportOutcome::Duplicate)
            } else {
                let next = if report.r#final {
                    self.closed(&current, &report.status, report.reported_at, &report.reported_by)
                } else {
                    current.clone()
                };
                let entry = serde_json::to_vec(&InboxEntry { record: next.clone(), report: report.clone() })?;
                let mut writes = vec![Write::Inbox(&entry)];
                if report.r#final {
                    writes.push(Write::Put { record: &next, previous: Some(&current) });
                }
                self.count_store_error(self.store.write(&writes))?;
                (next, ReportOutcome::Delivered)
            }
        };
        let mut line = Vec::new();
        let kind = match outcome {
            ReportOutcome::Delivered => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                self.inbox_ready.notify_waiters();
                if report.r#final {
                    let _ = self.changes.send(record.clone());
                }
                EventKind::Delivered
            }
            ReportOutcome::Duplicate => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                EventKind::Duplicate
            }
        };
        DlrEvent::of(kind, &record, &self.node).with_report(report).write_to(&mut line);
        self.log_events(&line);
        Ok(Some(reply(record, Some(outcome))))
    }

    /// Reports queued for this node's gateway after `after`, waiting up to `wait` for one.
    pub async fn inbox(&self, after: u64, max: usize, wait: Duration) -> Result<Vec<(u64, InboxEntry)>, DlrError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.inbox_ready.notified();
            let raw = self.count_store_error(self.store.inbox_after(after, max))?;
            if !raw.is_empty() || tokio::time::Instant::now() >= deadline {
                let mut out = Vec::with_capacity(raw.len());
                for (seq, doc) in raw {
                    match serde_json::from_slice(&doc) {
                        Ok(entry) => out.push((seq, entry)),
                        Err(e) => tracing::warn!(seq, error = %e, "skipping an unreadable inbox entry"),
                    }
                }
                return Ok(out);
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// Drop inbox entries up to `upto` (the gateway has them).
    pub fn ack(&self, upto: u64) -> Result<u64, DlrError> {
        self.count_store_error(self.store.ack_inbox(upto))
    }

    /// Wait for `key` to be registered here, up to `wait`; false if it was not.
    async fn wait_for(&self, key: &[u8], wait: Duration) -> bool {
        if self.waiting.load(Ordering::Relaxed) >= MAX_WAITERS as u64 {
            return false;
        }
        let (tx, rx) = oneshot::channel();
        self.lock_waiters().entry(key.to_vec()).or_default().push(tx);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        // Registered between the caller's miss and the line above: do not wait.
        let present = matches!(self.store.get_key(key), Ok(Some(_)));
        let woken = present || tokio::time::timeout(wait, rx).await.is_ok_and(|r| r.is_ok());
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let mut waiters = self.lock_waiters();
        if let Some(list) = waiters.get_mut(key) {
            list.retain(|t| !t.is_closed());
            if list.is_empty() {
                waiters.remove(key);
            }
        }
        woken
    }

    fn wake(&self, key: &[u8]) {
        if self.waiting.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Some(list) = self.lock_waiters().remove(key) {
            for tx in list {
                let _ = tx.send(());
            }
        }
    }

    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Vec<oneshot::Sender<()>>>> {
        // Only map operations run under this lock; nothing in them panics.
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn log_events(&self, lines: &[u8]) {
        if let Some(log) = &self.events {
            if let Err(e) = log.append(lines) {
                self.stats.event_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %log.path().display(), error = %e, "cannot write DLR events");
            }
        }
    }

    /// Drop records past their expiry, every second, until `cancel` fires; then sync the store.
    pub async fn sweep(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let sync_every = (self.settings.sync_ms > 0).then(|| Duration::from_millis(self.settings.sync_ms));
        let mut last_sync = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.expire_due(now_ms())).await {
                Ok(Err(e)) => tracing::warn!(error = %e, "DLR expiry"),
                Err(e) => tracing::warn!(error = %e, "DLR expiry task"),
                Ok(Ok(_)) => {}
            }
            if sync_every.is_some_and(|every| last_sync.elapsed() >= every) {
                last_sync = tokio::time::Instant::now();
                let me = self.clone();
                let _ = tokio::task::spawn_blocking(move || me.count_store_error(me.store.sync())).await;
            }
        }
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.count_store_error(me.store.sync())).await;
    }

    /// Remove every record due at `now`; returns how many (own open ones are logged as expired).
    pub fn expire_due(&self, now: u64) -> Result<usize, DlrError> {
        let mut total = 0;
        loop {
            let due = self.count_store_error(self.store.due(now, 10_000))?;
            if due.is_empty() {
                return Ok(total);
            }
            let mut lines = Vec::new();
            let due = {
                let _guard = self.store.lock();
                // A record re-registered or closed since it was read keeps its newer self.
                let mut still = Vec::with_capacity(due.len());
                for r in due {
                    let current = self.count_store_error(self.store.get_key(&r.store_key()))?;
                    if current.is_some_and(|c| c.version == r.version) {
                        still.push(r);
                    }
                }
                let writes: Vec<Write<'_>> = still.iter().map(Write::Remove).collect();
                self.count_store_error(self.store.write(&writes))?;
                still
            };
            if due.is_empty() {
                return Ok(total);
            }
            for r in due.iter().filter(|r| r.owner == self.node && r.is_open()) {
                self.stats.expired.fetch_add(1, Ordering::Relaxed);
                DlrEvent::of(EventKind::Expired, r, &self.node).write_to(&mut lines);
            }
            self.log_events(&lines);
            total += due.len();
        }
    }
}
