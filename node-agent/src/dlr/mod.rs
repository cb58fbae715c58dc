//! The node's part of the cluster's DLR index.
//!
//! A gateway registers each submitted message with its agent ([`Records::register`]); the
//! record goes to the node's [`store`] and a copy to one other live node ([`replicate`], chosen
//! by rendezvous hashing). A DLR that arrives at any node is resolved in one bus round trip:
//! asking the one node that must hold the record on the ask stream ([`ask`]), or with a query
//! every holder answers ([`lookup`]); when it carries the report, the owner takes
//! it in the same round trip: it queues the report for its gateway (the inbox), closes the
//! record and tells its replica. If the owner is down, the replica's copy answers and the
//! reporting node closes it there. Records expire everywhere on time ([`DlrService::sweep`]).
//! [`events`] records what happened for the collector's `dlr` table; [`http`] is the
//! gateway's API (docs/dlr-api.md).
//!
//! Layout:
//!
//! - this file: [`DlrService`] itself (its [`Records`] plus the bus) and its start;
//! - `types`: the request and answer types, [`DlrError`], [`DlrStats`] and the request limits;
//! - [`records`]: the records and their state machine, run under the store lock (register,
//!   close, taking a report, expiry), synchronous and tested without a bus;
//! - `service`: the async orchestration over the bus (resolve, report, the inbox);
//!   `reporting`: one report at a time per record on this node;
//! - `waiters`: lookups waiting for a registration not there yet;
//! - `sweep`: the loop that expires records and syncs the store;
//! - [`lookup`] and [`ask`]: lookups over the bus; `answerer`: the thread that answers them;
//! - [`requests`]: the gateway's requests, one contract for [`http`] and [`lines`] (the
//!   gateway socket);
//! - [`replicate`]: the copies on other nodes; [`restore`]: a node rebuilt empty taking its
//!   records back from them; [`store`]: the records on disk; [`events`]: the
//!   event log; [`http`]: the gateway's API; `settings`: the `[dlr]` config table.

mod answerer;
pub mod ask;
pub mod events;
pub mod http;
pub mod lines;
pub mod lookup;
pub mod outbox;
pub mod records;
pub mod replicate;
mod reporting;
pub mod requests;
pub mod restore;
mod service;
pub(crate) mod settings;
pub mod store;
pub mod sweep;
mod types;
mod waiters;
pub mod wake;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use switchboard_bus::keys::{KeySpace, Role};
use switchboard_bus::{Member, Membership};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::AgentConfig;
use crate::eventlog::EventLog;
use crate::AgentError;
pub use records::Records;
use store::DlrStore;
pub use types::{
    DlrError, DlrStats, ErrorKind, IdForm, InboxEntry, Outcome, Registration, ReportRequest, Resolution, MAX_BATCH,
    MAX_FIELD_BYTES, MAX_REF_BYTES,
};
pub use waiters::MAX_WAITERS;

/// The node's DLR index and what serves it: its [`Records`] (which it derefs to) and the bus
/// parts that serve them to other nodes and ask other nodes.
pub struct DlrService {
    records: Records,
    session: zenoh::Session,
    keys: KeySpace,
    /// The agents that serve DLRs.
    membership: Membership,
    /// Every process alive on the bus: an agent that leaves the DLR service while its process
    /// lives (it does not serve DLRs, or its tokens arrived in another order) did not go away.
    processes: Membership,
    /// Which agents others see alive but this node cannot reach (they may hold any record).
    mesh: switchboard_bus::mesh::Mesh,
    asker: ask::Asker,
    census: std::sync::Mutex<Option<sweep::Census>>,
    reporting: reporting::Reporting,
    wake: Arc<wake::Wake>,
    /// Reports whose first copy holder is being asked ([`MAX_LATE_CLAIMS`] at most).
    late_claims: tokio::sync::Semaphore,
    /// When this process started its DLR service, ms since the Unix epoch.
    started_ms: u64,
    /// Repeats of a hand-off waiting to look at a live reporter again ([`MAX_GONE_RECHECKS`]).
    gone_rechecks: tokio::sync::Semaphore,
}

/// How long an agent that left the DLR service and whose process is back may still be one
/// restarting over its records ([`DlrService::departed`]).
const RESTART_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Repeats of a hand-off whose reporter is still live that wait at once to look at it again
/// (`DlrService::hand_off_lost`); one past it decides on the live nodes it sees (a `duplicate`),
/// so a flood of such repeats holds no more than this many waiting tasks.
pub const MAX_GONE_RECHECKS: usize = 64;

/// Reports (read late, or just after this node woke) asked of their first copy holder at once
/// (`DlrService::claim`); one past it is answered as when the holder cannot be asked.
pub const MAX_LATE_CLAIMS: usize = 64;

impl std::ops::Deref for DlrService {
    type Target = Records;

    fn deref(&self) -> &Records {
        &self.records
    }
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

impl DlrService {
    /// Open the store and start serving lookups and replication for the agent in `config`.
    pub async fn start(
        config: &AgentConfig,
        session: &zenoh::Session,
        keys: &KeySpace,
        membership: &Membership,
        mesh: &switchboard_bus::mesh::Mesh,
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
        let events = settings.record_events.then(|| event_log(&config.agent.data_dir));
        let records = Records::new(config.bus.node.clone(), settings, store, events);
        let asker = ask::Asker::new(session, keys, &config.bus.node, records.stats.clone()).await?;
        let service = Arc::new(Self {
            records,
            session: session.clone(),
            keys: keys.clone(),
            membership: membership.clone(),
            processes: mesh.membership().clone(),
            mesh: mesh.clone(),
            asker,
            census: std::sync::Mutex::new(None),
            reporting: reporting::Reporting::default(),
            late_claims: tokio::sync::Semaphore::new(MAX_LATE_CLAIMS),
            started_ms: now_ms(),
            gone_rechecks: tokio::sync::Semaphore::new(MAX_GONE_RECHECKS),
            wake: Arc::new(wake::Wake::default()),
        });
        let size = service.store.size();
        if size.records > 0 {
            // Before anything is served: the first reports must not be taken on stale records.
            service.wake.started_over_records();
        } else {
            // Before anything is served too: `GET /v1/dlr` says a restore is under way from the
            // first answer (`restore::run` takes it over).
            service.wake.show_restoring(true);
        }
        tracing::info!(
            records_estimate = size.records,
            inbox = size.inbox,
            disk_bytes = size.disk_bytes,
            settling = service.wake.settling(),
            "DLR store open"
        );
        let answerer = answerer::Answerer::start()?;
        lookup::serve(service.clone(), answerer.clone(), tracker, cancel.clone()).await?;
        ask::serve(service.clone(), answerer, tracker, cancel.clone()).await?;
        replicate::serve(service.clone(), tracker, cancel.clone()).await?;
        restore::serve(service.clone(), tracker, cancel.clone()).await?;
        tracker.spawn(restore::run(service.clone(), restore::state_path(&dir), size.records == 0, cancel.clone()));
        let (wake, stop) = (service.wake.clone(), cancel.clone());
        tracker.spawn(async move { wake.run(stop).await });
        tracker.spawn(replicate::run(service.clone(), cancel.clone()));
        tracker.spawn(service.clone().sweep(cancel.clone()));
        tracker.spawn(service.clone().take_census(cancel.clone()));
        Ok(service)
    }

    /// Whether this node is settling after a start over its records or a time it did not run
    /// ([`wake::Wake::settling`]).
    pub fn settling(&self) -> bool {
        self.wake.settling()
    }

    /// Whether this node, rebuilt empty, is taking its records back from their copies on live
    /// agents ([`restore`]).
    pub fn restoring(&self) -> bool {
        self.wake.shown_restoring()
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The agents this node sees live (itself included once it has announced itself).
    pub fn live_nodes(&self) -> Vec<String> {
        self.membership.live_of(Role::Agent)
    }

    /// The agents that left the DLR service and whose process is gone too, or came back less
    /// than [`RESTART_GRACE`] ago without serving DLRs yet (with when they left): one that runs
    /// on without serving DLRs holds no record anyone asks it for, but one restarting (killed,
    /// started again) declares its process before its DLR service, and holds its records.
    fn departed(&self) -> Vec<(Member, u64)> {
        let alive = self.processes.live_of(Role::Agent);
        let now = now_ms();
        let grace = RESTART_GRACE.as_millis() as u64;
        self.membership
            .departed()
            .into_iter()
            .filter(|(m, at)| !alive.contains(&m.name) || now.saturating_sub(*at) < grace)
            .collect()
    }

    /// Why a lookup that found nothing cannot say the record does not exist: an agent that
    /// joined once and may hold it is alive but not reachable from here (its link to this node
    /// broke), or left this node's view after the mesh check's last poll began (stopped, or cut
    /// off: the next poll tells which) or less than `departed_hold_s` ago (a record registered
    /// there just before it died may not have reached a copy, as copies go out after the
    /// registration is answered, and one registered there while it was cut off from every other
    /// node has none), or no other agent is live although this node saw others leave (they
    /// died, or this node was cut off from them, or hung past its lease). `None` when every
    /// agent that ever joined is reachable, or long gone while others are live.
    fn cut_off(&self) -> Option<String> {
        if self.wake.just_woke() {
            return Some(format!("{} and may not reach every node yet", wake::STALE));
        }
        // Only agents seen here once: a view (anyone's, without TLS) naming an invented one
        // does not make every miss unknown.
        let unreachable = self.mesh.unreachable_now();
        if let Some((member, seen_by)) =
            unreachable.iter().find(|(m, _)| m.role == Role::Agent && self.membership.ever_joined(m))
        {
            return Some(format!(
                "node {} is alive (seen by {}/{}) but not reachable from here",
                member.name,
                seen_by.role.as_str(),
                seen_by.name
            ));
        }
        let now = now_ms();
        let departed: Vec<(Member, u64)> =
            self.departed().into_iter().filter(|(m, _)| m.role == Role::Agent && m.name != self.node).collect();
        // Alone: every node that went is named, not one of them.
        if !departed.is_empty() && self.membership.live_of(Role::Agent).iter().all(|n| *n == self.node) {
            let gone: Vec<&str> = departed.iter().map(|(m, _)| m.name.as_str()).collect();
            return Some(match gone.len().saturating_sub(5) {
                0 => format!("no other node is reachable (gone: {})", gone.join(", ")),
                more => format!("no other node is reachable (gone: {} and {more} more)", gone[..5].join(", ")),
            });
        }
        let hold_ms = self.settings.departed_hold_s.saturating_mul(1000);
        let recent =
            departed.iter().find(|(_, at)| !self.mesh.assessed_since(*at) || now.saturating_sub(*at) < hold_ms);
        let (m, at) = recent?;
        let ago = now.saturating_sub(*at);
        Some(if self.mesh.assessed_since(*at) {
            format!(
                "node {} left this node's view {ago} ms ago and may hold records no other node has (registered just \
                 before it left, or on it since if it runs on cut off)",
                m.name
            )
        } else {
            format!("node {} left this node's view {ago} ms ago (stopped, or cut off from here)", m.name)
        })
    }

    /// The record store.
    pub fn store(&self) -> &DlrStore {
        &self.store
    }
}
