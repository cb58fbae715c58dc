//! Switchboard collector: subscribes to the cluster's streams and materializes them to a
//! Hive-partitioned Parquet dataset, each record exactly once.
//!
//! Layout (data flows top to bottom):
//! - [`config`]: the collector's TOML config;
//! - [`store`]: the dataset's storage, a local directory or S3, with durable operations;
//! - [`log`]: the dataset's commit log (claims and commits, put-if-absent slots);
//! - [`group`]: the collector group: who writes, taking over, committing under the fence;
//! - [`recovery`]: at start, committed sequence ranges read back from the data files' footers;
//! - [`tables`]: opens each table (recovery, then its sink) and routes each stream to it (the
//!   tables are defined in `switchboard_bus::tables`);
//! - [`sink`]: payloads to deduplicated rows in hourly partition files;
//! - [`logs_table`]: the `logs` table schema and the wire-to-row conversion;
//! - [`writer`]: one Parquet file, finished with its ranges in the footer;
//! - [`writers`]: two processes publishing as one node, found from their heads;
//! - [`ranges`]: sequence number sets; [`stats`]: counters;
//! - [`latest`]: the cluster's latest value per gateway metric series, for `/metrics`;
//! - `intake`: the sink thread (payloads, replays and heads in arrival order; drain at stop);
//! - `replay`: the replay client that fetches missing ranges from agents;
//! - `watermarks`: publishing what is committed, per node;
//! - `report`: `/health` and `/metrics`; `starting`: `/health` until the collector has joined
//!   (and while the store does not answer at start).
//!
//! [`Collector::start`] finds the end of the commit log, runs recovery, subscribes, then announces
//! the collector on the bus (so agents that wait for a collector only publish once the
//! subscription exists); it starts as a standby and claims the log when no live collector holds it.

pub mod config;
pub mod group;
mod intake;
pub mod latest;
pub mod log;
pub mod logs_table;
pub mod ranges;
pub mod recovery;
mod replay;
mod report;
pub mod sink;
mod starting;
pub mod stats;
mod status;
pub mod store;
pub mod tables;
mod watermarks;
pub mod writer;
pub mod writers;

/// Rows the unit tests feed the sinks.
#[cfg(test)]
pub(crate) mod test_rows {
    use switchboard_bus::wire::log_batch::LogRow;

    /// A line of an agent's `metrics.log` (its fields are the caller's).
    pub(crate) fn metrics_row(seq: u64, ts_micros: i64) -> LogRow<'static> {
        LogRow {
            seq,
            ts_micros,
            observed_micros: ts_micros,
            file: "metrics.log",
            offset: 0,
            level: None,
            message: "",
            raw: None,
            truncated: false,
        }
    }
}

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use switchboard_bus::keys::{KeySpace, Role, StreamKind};
use switchboard_bus::membership::STRAGGLER_WITHIN;
use switchboard_bus::mesh::{self, Mesh};
use switchboard_bus::refusals::{refuse, Reason};
use switchboard_bus::wire::control::Heads;
use switchboard_bus::{session, Member, Membership};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::CollectorConfig;
use crate::intake::{Announced, Input, Intake, Offer};
use crate::sink::{ReplayRequest, SinkStatus};
use crate::stats::CollectorStats;
use crate::tables::Tables;
use crate::writers::WriterCheck;

/// Series of the cluster's latest metrics kept for `/metrics` (see [`latest`]).
pub const LATEST_SERIES: usize = 10_000;
/// Most streams of one node that heads may name (more: `head_invalid`) and that log batches may
/// open in one table (more: `streams_too_many`).
pub const MAX_STREAMS_PER_NODE: usize = 1024;
/// Most streams one table's writer keeps state for, of all nodes (more: `streams_too_many`).
pub const MAX_STREAMS: usize = 65_536;

/// The collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::CollectorConfigError),
    /// The dataset's location cannot be used (e.g. S3 without a region or credentials).
    #[error(transparent)]
    Dataset(#[from] switchboard_bus::dataset::DatasetError),
    /// The dataset could not be read at start.
    #[error("collector.data_dir: recovering table {table}: {source}")]
    Recovery {
        /// The table.
        table: String,
        /// Why.
        source: store::StoreError,
    },
    /// The commit log could not be read at start.
    #[error("collector.data_dir: reading the commit log: {0}")]
    Log(store::StoreError),
    /// A stop was asked before the collector had opened the dataset (a store that does not
    /// answer is waited for): nothing was claimed, nothing is left to do.
    #[error("stopped before the dataset was opened")]
    StoppedStarting,
    /// The bus session could not be opened, or this collector's name is taken.
    #[error("bus: {0}")]
    Session(#[from] session::SessionError),
    /// A key expression could not be made from a configured name.
    #[error("bus: {0}")]
    Key(#[from] switchboard_bus::keys::KeyError),
    /// zenoh refused to declare a subscriber.
    #[error("bus: cannot declare the {what}: {source}")]
    Declare {
        /// What was declared.
        what: &'static str,
        /// Why.
        source: zenoh::Error,
    },
    /// A startup task panicked.
    #[error("startup task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The health and metrics endpoint could not be started (e.g. its address is in use).
    #[error("collector.http_listen {addr} (/health and /metrics): {source}")]
    Http {
        /// The address of `collector.http_listen`.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl CollectorError {
    /// Whether the dataset's store did not answer (worth another try), as opposed to a refusal
    /// that another try would meet again.
    fn store_unreachable(&self) -> bool {
        matches!(
            self,
            Self::Log(store::StoreError::Remote { .. })
                | Self::Recovery { source: store::StoreError::Remote { .. }, .. }
        )
    }
}

/// The commit log's end and every table, recovered from the store. The end of the log first,
/// then the footers: a commit made in between is in the log.
async fn open_dataset(
    config: &CollectorConfig,
    store: &store::Store,
    stats: &Arc<CollectorStats>,
) -> Result<(log::CommitLog, Tables), CollectorError> {
    let (commit_log, recent) = log::CommitLog::open(store).await.map_err(CollectorError::Log)?;
    tracing::info!(dataset = %store.describe(), log_end = commit_log.next(), holder = ?commit_log.last().map(|r| &r.writer), "found the end of the commit log");
    let logs =
        tables::open(config, store, switchboard_bus::tables::LOGS, config.logs.promote.clone(), stats.clone()).await?;
    let mut internal = Vec::new();
    for t in switchboard_bus::tables::INTERNAL {
        internal.push((t.stream, tables::open(config, store, t.name, tables::promoted(&t), stats.clone()).await?));
    }
    let mut sink = Tables { logs, internal };
    for r in &recent {
        sink.apply_committed(&r.files);
    }
    Ok((commit_log, sink))
}

/// How long a stopping collector waits after its last watermarks before it leaves the bus.
const LAST_WORDS: std::time::Duration = std::time::Duration::from_millis(200);

/// A running collector.
pub struct Collector {
    stats: Arc<CollectorStats>,
    tracker: TaskTracker,
    session: zenoh::Session,
    links: switchboard_bus::links::Links,
    /// Its membership, held until its last commit: a standby that saw it leave earlier would
    /// claim the commit log first and fence that commit.
    token: zenoh::liveliness::LivelinessToken,
}

impl Collector {
    /// Recover, subscribe, announce. The collector stops when `cancel` fires: it takes what is
    /// still in flight and commits every open file; [`Collector::wait`] then leaves the
    /// membership and the bus.
    pub async fn start(config: CollectorConfig, cancel: CancellationToken) -> Result<Self, CollectorError> {
        let (leaving, own) = (TaskTracker::new(), cancel.child_token());
        let started = Self::start_with(config, own.clone(), &leaving).await;
        if started.is_err() {
            // A start that failed after joining the bus stops what it started and leaves the
            // bus before the error goes up.
            own.cancel();
            leaving.close();
            let _ = tokio::time::timeout(switchboard_bus::session::CLOSE_TIMEOUT * 2, leaving.wait()).await;
        }
        started
    }

    async fn start_with(
        config: CollectorConfig,
        cancel: CancellationToken,
        leaving: &TaskTracker,
    ) -> Result<Self, CollectorError> {
        config.validate()?;
        let keys = KeySpace::new(&config.bus.effective_prefix())?;
        let name = config.bus.node.clone();
        let stats = Arc::new(CollectorStats::default());
        let c = &config.collector;
        // The HTTP port is bound before anything others see, the claim of the dataset above all:
        // a collector that cannot serve it exits without having fenced a healthy leader.
        let http = match c.http_listen.as_str() {
            "" => None,
            listen => {
                let addr: std::net::SocketAddr = listen.parse().map_err(|e| {
                    CollectorError::Config(config::CollectorConfigError::Invalid(format!("collector.http_listen: {e}")))
                })?;
                let access = switchboard_bus::http::Access { token: c.http_token.clone() };
                let listener = switchboard_bus::http::bind(addr, &access)
                    .map_err(|source| CollectorError::Http { addr, source })?;
                Some((addr, listener, access))
            }
        };
        let spool =
            c.spool_dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("switchboard-spool-{name}")));
        let store = store::Store::open(&c.location()?, &c.store, spool)?;
        // Until it has joined, `/health` fails with what it is doing (a store that does not
        // answer is waited for).
        let starting = match &http {
            Some((addr, listener, access)) => Some(
                starting::Starting::serve(&name, listener, access, &cancel)
                    .map_err(|source| CollectorError::Http { addr: *addr, source })?,
            ),
            None => None,
        };
        let set_problem = |why: String, store_failing: bool| {
            if let Some((report, _)) = &starting {
                report.set_problem(why, store_failing);
            }
        };
        // Said at most once a minute, with the tries left unsaid since (`/health` says it meanwhile).
        let mut unanswered = switchboard_bus::throttle::Throttle::new(std::time::Duration::from_secs(60));
        let (commit_log, mut sink) = loop {
            let opened = tokio::select! {
                _ = cancel.cancelled() => return Err(CollectorError::StoppedStarting),
                opened = open_dataset(&config, &store, &stats) => opened,
            };
            match opened {
                Ok(opened) => break opened,
                Err(e) if e.store_unreachable() => {
                    let text = e.to_string();
                    // A store that answers "no such bucket" did answer: say what to fix, not
                    // the XML of its answer.
                    let (what, text) = if text.contains("NoSuchBucket") || text.contains("the bucket does not exist") {
                        ("the dataset's bucket does not exist", "create it, or fix data_dir".to_owned())
                    } else {
                        ("the dataset's store does not answer", text)
                    };
                    let why = format!("{text} (trying again in {} s)", starting::RETRY.as_secs());
                    if let Some(unsaid) = unanswered.admit() {
                        tracing::warn!(tries_unsaid_since_last_line = unsaid, "{what} at start: {why}");
                    }
                    set_problem(format!("{what}: {why}"), true);
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(CollectorError::StoppedStarting),
                        _ = tokio::time::sleep(starting::RETRY) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        };
        set_problem("joining the bus".to_owned(), false);
        let latest = Arc::new(latest::LatestMetrics::new(LATEST_SERIES));

        let mut bus = config.bus.clone();
        bus.listen = bus.effective_listen();
        if let Some(w) = bus.unreachable_warning() {
            tracing::warn!("{w}");
        }
        let (session, links) = session::open_linked(&bus, switchboard_bus::tls::IdRole::Collector).await?;
        let joined = session::LeaveOnDrop::new(&session, &links, leaving);
        let me = Member { role: Role::Collector, name: name.clone() };
        mesh::check_name_free(&session, &keys, &me, std::time::Duration::from_millis(bus.lease_ms)).await?;
        let membership = Membership::watch(&session, &keys, Some(me.clone()), cancel.clone()).await?;
        let mesh = Mesh::start(&session, &keys, me, membership.clone(), links.clone(), cancel.clone()).await?;
        // Claim the dataset (or stand by) before subscribing and announcing: agents that wait for
        // a collector then publish to one that already knows whether it writes.
        let group_status = Arc::new(Mutex::new(group::GroupStatus::default()));
        let mut group = group::Group::new(
            name.clone(),
            session.zid().to_string(),
            store,
            commit_log,
            membership.clone(),
            c.notify.clone(),
            group_status.clone(),
            std::time::Duration::from_millis(config.bus.lease_ms.saturating_mul(2)),
            config.logs.promote.iter().map(|p| (p.name.clone(), p.kind)).collect(),
            cancel.clone(),
        );
        group.set_stall(std::time::Duration::from_millis(c.max_file_age_ms));
        // A stop asked by now leaves the dataset unclaimed.
        if cancel.is_cancelled() {
            return Err(CollectorError::StoppedStarting);
        }
        // The first tick may claim, and a claim's write is retried until the store takes it (a
        // full disk): meanwhile `/health` says the store's error, not that the bus is joined.
        let first = {
            let tick = group.first_tick();
            tokio::pin!(tick);
            let mut every = tokio::time::interval(std::time::Duration::from_millis(500));
            loop {
                tokio::select! {
                    first = &mut tick => break first,
                    _ = every.tick() => match group_status.lock().ok().and_then(|s| s.store_error.clone()) {
                        Some(e) => set_problem(format!("{e} (retrying)"), true),
                        None => set_problem("joining the bus".to_owned(), false),
                    },
                }
            }
        };
        for r in &first.records {
            sink.apply_committed(&r.files);
        }
        sink.set_leading(group.is_leader());
        let writers = Arc::new(Mutex::new(WriterCheck::default()));
        let (tx, rx) = flume::bounded::<Input>(c.queue_payloads);
        let announced = Arc::new(Announced::default());
        let offer = Offer::new(tx.clone(), stats.clone(), announced.clone());
        let subscriber = {
            let (offer, keys, stats) = (offer.clone(), keys.clone(), stats.clone());
            session
                .declare_subscriber(keys.all_streams(StreamKind::Log)?)
                .callback(move |sample| match keys.parse_stream(sample.key_expr().as_str()) {
                    Some(stream) => {
                        offer.offer(Input::Data { stream, payload: sample.payload().clone(), replayed: false });
                    }
                    None => {
                        stats.payloads_malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(key = %sample.key_expr(), "payload on a key outside the key space");
                    }
                })
                .await
                .map_err(|source| CollectorError::Declare { what: "stream subscriber", source })?
        };
        let heads_subscriber = {
            let (offer, keys, stats, writers) = (offer.clone(), keys.clone(), stats.clone(), writers.clone());
            let membership = membership.clone();
            session
                .declare_subscriber(keys.all_heads()?)
                .callback(move |sample| {
                    let node = keys.parse_head(sample.key_expr().as_str());
                    match (node, Heads::decode(&sample.payload().to_bytes())) {
                        (Some(node), Ok(heads)) => {
                            // A node that is not live makes no state here (its token comes before
                            // its heads; a stranger's never does).
                            if !membership.live_of(Role::Agent).contains(&node) {
                                let member = Member { role: Role::Agent, name: node.clone() };
                                if membership.left_within(&member, STRAGGLER_WITHIN) {
                                    tracing::debug!(node, "heads of an agent that left just now: dropped");
                                    return;
                                }
                                refuse(
                                    Reason::HeadNotLive,
                                    format_args!("heads of {node:?}, which is not a live agent"),
                                );
                                return;
                            }
                            if let Err(e) = heads.check(MAX_STREAMS_PER_NODE) {
                                refuse(Reason::HeadInvalid, format_args!("heads of {node}: {e}"));
                                return;
                            }
                            if let (Some(instance), Ok(mut w)) = (heads.instance.as_deref(), writers.lock()) {
                                if w.observe(&node, instance, Instant::now()) {
                                    stats.conflicting_writers.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            offer.offer(Input::Heads { node, heads });
                        }
                        (_, Err(e)) => {
                            stats.control_malformed.fetch_add(1, Ordering::Relaxed);
                            refuse(Reason::HeadInvalid, format_args!("heads on {}: {e}", sample.key_expr()));
                        }
                        (None, Ok(_)) => {
                            stats.control_malformed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
                .await
                .map_err(|source| CollectorError::Declare { what: "heads subscriber", source })?
        };
        let token = session::announce(&session, &keys, Role::Collector, &name).await?;

        let tracker = TaskTracker::new();
        let (replay_tx, replay_rx) = tokio::sync::mpsc::unbounded_channel::<ReplayRequest>();
        tracker.spawn(replay::run(session.clone(), keys.clone(), replay_rx, tx.clone(), stats.clone(), cancel.clone()));
        let (status_tx, status_rx) = tokio::sync::watch::channel(SinkStatus::default());

        tracker.spawn(watermarks::publish(
            session.clone(),
            keys.clone(),
            name.clone(),
            status_rx.clone(),
            cancel.clone(),
        ));
        let report = Arc::new(report::CollectorReport {
            name: name.clone(),
            started_at_ms: switchboard_bus::status::now_ms(),
            max_file_age_s: c.max_file_age().as_secs_f64(),
            // Watermarks move a file at a time: rates over two file ages see whole steps (10 s
            // to 60 s: a sample a second is kept per stream for the window).
            rates: Mutex::new(switchboard_bus::status::Rates::over(
                c.max_file_age()
                    .saturating_mul(2)
                    .clamp(std::time::Duration::from_secs(10), std::time::Duration::from_secs(60)),
            )),
            membership: membership.clone(),
            group: group_status.clone(),
            stats: stats.clone(),
            status: status_rx,
            latest: latest.clone(),
            mesh,
            writers,
            announced,
        });
        tracker.spawn(switchboard_bus::status::sample_rates(report.clone(), cancel.clone()));
        switchboard_bus::status::serve(&session, &keys, Role::Collector, &name, report.clone(), cancel.clone()).await?;
        if let Some((_, stop)) = starting {
            stop.cancel();
        }
        if let Some((addr, listener, access)) = http {
            let page = switchboard_bus::status::page::StatusPage::new(
                session.clone(),
                keys.clone(),
                format!("collector {name}"),
            );
            let listener =
                tokio::net::TcpListener::from_std(listener).map_err(|source| CollectorError::Http { addr, source })?;
            // Scrapes and pages, not a request stream: no busy polling.
            let serve = switchboard_bus::http::run(
                listener,
                access,
                report,
                page.router(),
                std::time::Duration::ZERO,
                cancel.clone(),
            );
            tracker.spawn(serve);
        }
        drop(tx);
        let intake = Intake {
            tables: sink,
            rx,
            latest,
            replays: replay_tx,
            status: status_tx,
            subscriptions: Some((subscriber, heads_subscriber)),
            group,
            runtime: tokio::runtime::Handle::current(),
            stats: stats.clone(),
            standby: std::collections::VecDeque::new(),
            standby_bytes: 0,
            standby_cap: c.standby_buffer_bytes,
            last_live: None,
        };
        let intake = tracker.spawn_blocking({
            let cancel = cancel.clone();
            move || intake.run(cancel)
        });
        let stopping = cancel.is_cancelled();
        switchboard_bus::vital::watch(&tracker, "the collector's intake thread".into(), intake, cancel);
        tracker.close();
        if stopping {
            tracing::info!(%name, "collector stopping as it starts: a stop was asked while it joined the group");
        } else {
            tracing::info!(%name, "collector started");
        }
        joined.keep();
        Ok(Self { stats, tracker, session, links, token })
    }

    /// The collector's counters.
    pub fn stats(&self) -> Arc<CollectorStats> {
        self.stats.clone()
    }

    /// Wait until the cancelled collector has committed everything, then leave the bus. Returns
    /// why its stop left rows uncommitted (its last commit failed: the agents keep them).
    pub async fn wait(self) -> Option<String> {
        self.tracker.wait().await;
        // The last watermarks were handed to the session, not sent: let them leave before the
        // token does, or an agent may hear of the leaving first (a liveliness change travels
        // apart from data) and take them for a straggler's.
        tokio::time::sleep(LAST_WORDS).await;
        drop(self.token);
        switchboard_bus::session::leave(&self.session, &self.links).await;
        tracing::info!("collector stopped");
        self.stats.stopped_uncommitted.lock().ok().and_then(|mut w| w.take())
    }
}
