//! Switchboard node agent: runs beside a gateway, tails its log files and publishes them on the bus.
//!
//! Layout (data flows top to bottom):
//! - [`config`]: the agent's TOML config file; each table's settings live with their part
//!   (`source_config` for `[[source]]`, `limits::settings`, `dlr::settings`, `metrics::settings`,
//!   `gateway`);
//! - [`framing`]: bytes to lines (partial lines, CRLF, over-long lines);
//! - [`parse`]: lines to timestamp, level, message and fields (plain, JSON, syslog, key=value);
//! - [`tailer`]: one blocking thread per source: globs, files, sequence numbers, Arrow batches;
//! - [`journal`]: per source, how each unacknowledged batch was cut from the files;
//! - [`publisher`]: puts batches on the bus; follows watermarks to advance the checkpoint;
//!   announces heads;
//! - [`checkpoint`]: per source, how far its files are published, stored atomically;
//! - [`replay`]: re-reads journaled batches for a collector that lacks them;
//! - [`limits`]: cluster-wide limits: the local API for gateways, the node's part in sharing
//!   each limit (`limits::coord`) and in keeping the cluster's revision (`limits::sync`);
//! - [`dlr`]: the node's part of the DLR index: register, resolve, deliver, replicate, expire;
//! - [`cluster_config`]: the cluster's configuration repository on this node: hold, serve,
//!   materialize and reload (the limits take `global/limits.toml` from it);
//! - [`gateway`]: the gateway socket, one pipelined line protocol for limits and DLRs (Unix
//!   socket, and TCP on loopback);
//! - [`metrics`]: the gateways' StatsD metrics, aggregated per interval into snapshots;
//! - [`eventlog`]: the JSON-lines files of the agent's own records (`_limits`, `_dlr`,
//!   `_metrics`);
//! - [`body_limit`]: the size limit on the HTTP APIs' request bodies;
//! - `report`: the agent's `/health` and `/metrics`;
//! - [`stats`] holds the counters.
//!
//! [`Agent::start`] wires them together; [`Agent::wait`] returns once a cancelled agent has
//! published what it read and stored its checkpoint.

pub mod body_limit;
pub mod checkpoint;
pub mod cluster_config;
pub mod config;
pub mod dir_lock;
pub mod dlr;
pub mod eventlog;
pub mod framing;
pub mod gateway;
pub mod journal;
pub mod limits;
pub mod metrics;
mod off;
pub mod parse;
mod peers;
pub mod publisher;
pub mod replay;
mod report;
mod source_config;
pub mod stats;
mod status;
pub mod tailer;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_bus::keys::{KeySpace, Role, Service};
use switchboard_bus::mesh::{self, Mesh};
use switchboard_bus::{session, Member, Membership};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::checkpoint::Checkpoint;
use crate::config::AgentConfig;
use crate::journal::SourceJournal;
use crate::publisher::{Journals, PublisherTask};
use crate::stats::AgentStats;
use crate::tailer::SourceTailer;

/// The agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::AgentConfigError),
    /// The checkpoint could not be read.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// A journal could not be opened.
    #[error("journal in {path}: {source}")]
    Journal {
        /// The data directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bus session could not be opened, or this node's name is taken.
    #[error("bus: {0}")]
    Session(#[from] session::SessionError),
    /// A key expression could not be made from a configured name.
    #[error("bus: {0}")]
    Key(#[from] switchboard_bus::keys::KeyError),
    /// zenoh refused to declare a subscriber, queryable or publisher.
    #[error("bus: cannot declare the {what}: {source}")]
    Declare {
        /// What was declared.
        what: &'static str,
        /// Why.
        source: zenoh::Error,
    },
    /// The limits revision could not be restored or followed.
    #[error("limits: {0}")]
    Limits(#[from] limits::sync::SyncError),
    /// The DLR store could not be opened.
    #[error("DLR index {path}: {source}")]
    Dlr {
        /// The store's directory.
        path: std::path::PathBuf,
        /// Why.
        source: dlr::store::StoreError,
    },
    /// A startup task panicked.
    #[error("startup task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Another agent uses the data directory, or it cannot be made.
    #[error(transparent)]
    DirLock(#[from] dir_lock::DirLockError),
    /// A thread could not be started.
    #[error("cannot start the {name} thread: {source}")]
    Thread {
        /// The thread's name.
        name: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// An address could not be bound (the HTTP endpoint, the gateway socket, the StatsD intake).
    #[error("{what}: {source}")]
    Listen {
        /// The setting and its value.
        what: String,
        /// Why (e.g. the address is in use).
        source: std::io::Error,
    },
}

/// Batches queued between the tailers and the publisher (back-pressure beyond that).
const QUEUE_BATCHES: usize = 16;

/// A running agent.
pub struct Agent {
    stats: Arc<AgentStats>,
    tracker: TaskTracker,
    session: zenoh::Session,
    links: switchboard_bus::links::Links,
    _token: zenoh::liveliness::LivelinessToken,
    /// The tokens of the services it takes part in (`<prefix>/serves/<service>/<node>`).
    serving: Vec<zenoh::liveliness::LivelinessToken>,
    /// Held until the agent is dropped: one agent per data directory.
    _dir_lock: dir_lock::DirLock,
}

impl Agent {
    /// Open the bus session, announce the node, restore the checkpoint and start tailing. The agent
    /// stops when `cancel` fires; then call [`Agent::wait`].
    pub async fn start(config: AgentConfig, cancel: CancellationToken) -> Result<Self, AgentError> {
        let (tracker, own) = (TaskTracker::new(), cancel.child_token());
        match Self::start_with(config, own.clone(), tracker.clone()).await {
            Ok(agent) => Ok(agent),
            Err(e) => {
                // What started before the failure stops before the error goes up: a task left
                // running would meet a runtime that is shutting down.
                own.cancel();
                tracker.close();
                let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
                Err(e)
            }
        }
    }

    async fn start_with(
        mut config: AgentConfig,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> Result<Self, AgentError> {
        config.validate()?;
        // Before anything in the directory is opened or replaced.
        let dir_lock = dir_lock::DirLock::acquire(&config.agent.data_dir)?;
        let log_sources = config.sources.len();
        if config.limits.enabled && config.limits.record_decisions {
            config.sources.push(limits::decisions_source(&config.agent.data_dir));
        }
        if config.dlr.enabled && config.dlr.record_events {
            config.sources.push(dlr::events_source(&config.agent.data_dir));
        }
        if config.metrics.enabled {
            config.sources.push(metrics::snapshots_source(&config.agent.data_dir));
        }
        let keys = KeySpace::new(&config.bus.effective_prefix())?;
        let data_dir = config.agent.data_dir.clone();
        // Sources whose lines after an emptied `data_dir` are new ones, not the same lines read
        // again: the agent's own records, and log sources read from their end.
        let numbered_on: std::collections::HashSet<String> = config
            .sources
            .iter()
            .filter(|s| {
                switchboard_bus::tables::internal_of(&s.name).is_some() || s.start_at == source_config::StartAt::End
            })
            .map(|s| s.name.clone())
            .collect();
        let (checkpoint, journals) = {
            let (dir, sources, acknowledged) = (data_dir.clone(), config.sources.clone(), config.agent.acknowledged);
            let numbered_on = numbered_on.clone();
            tokio::task::spawn_blocking(move || -> Result<(Checkpoint, Journals), AgentError> {
                let checkpoint = Checkpoint::load(&dir)?;
                let mut journals = BTreeMap::new();
                for s in &sources {
                    let acked = checkpoint.sources.get(&s.name).cloned().unwrap_or_default();
                    let mut j = SourceJournal::open(&dir, &s.name, acked)
                        .map_err(|source| AgentError::Journal { path: dir.clone(), source })?;
                    j.set_durable(acknowledged);
                    if acknowledged && numbered_on.contains(&s.name) && j.hold() {
                        tracing::info!(
                            source = %s.name,
                            "new journal: its lines are read once a collector has said how far it holds the stream \
                             (its first watermark, or {} s of a live collector that holds none of it)",
                            publisher::NUMBER_FROM_ZERO_AFTER.as_secs()
                        );
                    }
                    if j.unacked() > 0 {
                        tracing::info!(source = %s.name, batches = j.unacked(), head = j.head(), "resuming with unacknowledged batches in the journal");
                    }
                    journals.insert(s.name.clone(), Arc::new(Mutex::new(j)));
                }
                Ok((checkpoint, Arc::new(journals)))
            })
            .await
            ??
        };
        // The local ports first: a port that is taken fails the start before this node joins the
        // bus and takes the cluster's configuration.
        let http = if config.agent.http_listen.is_empty() {
            None
        } else {
            let addr: std::net::SocketAddr = config.agent.http_listen.parse().map_err(|e| {
                AgentError::Config(config::AgentConfigError::Invalid(format!("agent.http_listen: {e}")))
            })?;
            let access = switchboard_bus::http::Access { token: config.agent.http_token.clone() };
            let listener = switchboard_bus::http::bind(addr, &access)
                .map_err(|source| AgentError::Listen { what: format!("agent.http_listen {addr}"), source })?;
            Some((addr, listener, access))
        };
        let gateway_listeners = gateway::Listeners::bind(&config.gateway, &config.agent.data_dir)?;
        config.bus.listen = config.bus.effective_listen();
        if let Some(w) = config.bus.unreachable_warning() {
            tracing::warn!("{w}");
        }
        let remembered = peers::remembered(&config.agent.data_dir, &config.bus.connect, &config.bus.listen);
        if !remembered.is_empty() {
            tracing::info!(endpoints = ?remembered, "also connecting to the endpoints of the cluster's processes as last seen ({})", switchboard_bus::config::PEERS_FILE);
            // A remembered process may have been stopped on purpose: failing to reach it is
            // said without a warning.
            switchboard_bus::connect_failures::remembered(&remembered);
            config.bus.connect.extend(remembered);
        }
        let (session, links) = session::open_linked(&config.bus, switchboard_bus::tls::IdRole::Agent).await?;
        let joined = session::LeaveOnDrop::new(&session, &links, &tracker);
        let node = config.bus.node.clone();
        let me = Member { role: Role::Agent, name: node.clone() };
        mesh::check_name_free(&session, &keys, &me, std::time::Duration::from_millis(config.bus.lease_ms)).await?;
        tracing::info!(listen = ?config.bus.listen, connect = ?config.bus.connect, "joined the bus");
        if let Err(e) = switchboard_bus::config::write_listening(&config.agent.data_dir, &config.bus.listen) {
            tracing::warn!(error = %e, "cannot write {}: `status --config` with this agent's file reaches only its `connect` endpoints", switchboard_bus::config::LISTENING_FILE);
        }
        let membership = Membership::watch(&session, &keys, Some(me.clone()), cancel.clone()).await?;
        tracker.spawn(peers::remember(
            session.clone(),
            keys.clone(),
            config.agent.data_dir.clone(),
            switchboard_bus::config::advertised(&config.bus.listen, &config.bus.connect),
            config.bus.connect.clone(),
            cancel.clone(),
        ));
        let mesh = Mesh::start(&session, &keys, me.clone(), membership.clone(), links.clone(), cancel.clone()).await?;
        let publishers =
            publisher::declare_publishers(&session, &keys, &node, config.sources.iter().map(|s| s.name.as_str()))
                .await?;
        let stats = Arc::new(AgentStats::default());
        let configs = Arc::new(config.sources.iter().map(|s| (s.name.clone(), s.clone())).collect::<BTreeMap<_, _>>());
        tracker.spawn(replay::serve(
            session.clone(),
            keys.clone(),
            node.clone(),
            journals.clone(),
            configs,
            stats.clone(),
            cancel.clone(),
        ));
        let (self_ack_tx, self_ack_rx) = mpsc::unbounded_channel();
        let acks = publisher::AckTask {
            session: session.clone(),
            keys: keys.clone(),
            node: node.clone(),
            journals: journals.clone(),
            checkpoint,
            data_dir: data_dir.clone(),
            interval: Duration::from_millis(config.agent.checkpoint_interval_ms),
            stats: stats.clone(),
            membership: membership.clone(),
            numbered_on,
        };
        tracker.spawn(acks.run(self_ack_rx, cancel.clone()));
        // Heads and demand reports name this node, and peers refuse them from a node that is not
        // live: they begin once the token below is declared, after everything it stands for.
        let (announced_tx, announced) = tokio::sync::watch::channel(false);
        tracker.spawn(once_announced(
            announced.clone(),
            publisher::run_heads(
                session.clone(),
                keys.clone(),
                node.clone(),
                journals.clone(),
                membership.clone(),
                cancel.clone(),
            ),
        ));
        // Limits are shared, and DLR records placed, among the agents that serve them: an agent
        // that runs without one is alive but takes no part in it.
        let limits = if config.limits.enabled {
            let limits =
                limits::LimitsService::start(&config, &session, &keys, &membership, &tracker, &announced, &cancel);
            Some(limits.await?)
        } else {
            None
        };
        let cluster_config = if config.cluster_config.enabled {
            let hook: Option<cluster_config::HeadHook> = limits
                .clone()
                .map(|l| -> cluster_config::HeadHook { Arc::new(move |head, file| l.revisions.take(head, file)) });
            Some(cluster_config::ClusterConfig::start(&config, &session, &keys, hook, &tracker, &cancel).await?)
        } else {
            None
        };
        let dlr = if config.dlr.enabled {
            let holders =
                Membership::watch_service(&session, &keys, Service::Dlr, Some(me.clone()), cancel.clone()).await?;
            Some(dlr::DlrService::start(&config, &session, &keys, &holders, &mesh, &tracker, &cancel).await?)
        } else {
            None
        };
        let gateway = gateway::Gateway::start(
            gateway_listeners,
            config.gateway.busy_poll(),
            limits.clone(),
            dlr.clone(),
            &tracker,
            &cancel,
        )?;
        let metrics = if config.metrics.enabled {
            Some(metrics::MetricsService::start(&config.metrics, &config.agent.data_dir, &tracker, &cancel).await?)
        } else {
            None
        };
        let report = Arc::new(report::AgentReport {
            node: node.clone(),
            started_at_ms: switchboard_bus::status::now_ms(),
            // A limit key's decisions (`a:`, `d:`) count from 0 when its state appears.
            rates: std::sync::Mutex::new(
                switchboard_bus::status::Rates::default()
                    .counting_new_from_zero(|n| n.starts_with("a:") || n.starts_with("d:")),
            ),
            stats: stats.clone(),
            journals: journals.clone(),
            membership: membership.clone(),
            mesh: mesh.clone(),
            max_lag: Duration::from_millis(config.agent.health_max_lag_ms),
            max_unacked: config.agent.max_unacked_batches,
            limits: limits.clone(),
            dlr: dlr.clone(),
            metrics: metrics.clone(),
            gateway,
            cluster_config,
        });
        tracker.spawn(switchboard_bus::status::sample_rates(report.clone(), cancel.clone()));
        switchboard_bus::status::serve(&session, &keys, Role::Agent, &node, report.clone(), cancel.clone()).await?;
        if let Some((addr, listener, access)) = http {
            let mut routes = limits.clone().map_or_else(limits::http::off_router, limits::http::router);
            routes = routes.merge(match dlr.clone() {
                Some(d) => dlr::http::router(d),
                None => dlr::http::off_router(),
            });
            if let Some(m) = metrics.clone() {
                routes = routes.merge(metrics::http::router(m));
            }
            let page =
                switchboard_bus::status::page::StatusPage::new(session.clone(), keys.clone(), format!("node {node}"));
            routes = routes.merge(page.router());
            let routes = body_limit::limit_bodies(routes, config.agent.http_max_body_bytes, stats.clone());
            let listen_error = |source| AgentError::Listen { what: format!("agent.http_listen {addr}"), source };
            // Gateways ask here one request at a time: their connections are served on a thread
            // of their own, so that each request is read and answered on one thread.
            let (busy_poll, stop) = (config.gateway.busy_poll(), cancel.clone());
            let task = switchboard_bus::apart::spawn("sb-http", move || {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                Ok(switchboard_bus::http::run(listener, access, report, routes, busy_poll, stop))
            })
            .map_err(listen_error)?;
            switchboard_bus::vital::watch(&tracker, "the HTTP API".into(), task, cancel.clone());
        }
        // What it serves first, then that it is alive: an agent alive without a word of what it
        // serves is counted in every service (one of a version before these tokens).
        let mut serving = Vec::new();
        for (service, on) in [(Service::Limits, limits.is_some()), (Service::Dlr, dlr.is_some())] {
            if on {
                serving.push(session::announce_service(&session, &keys, Some(service), &node).await?);
            }
        }
        if serving.is_empty() {
            serving.push(session::announce_service(&session, &keys, None, &node).await?);
        }
        let token = session::announce(&session, &keys, Role::Agent, &node).await?;
        announced_tx.send_replace(true);
        let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
        for source in &config.sources {
            let Some(journal) = journals.get(&source.name).cloned() else { continue };
            let tailer = SourceTailer::new(source.clone(), config.agent.clone(), journal, stats.clone());
            let (tx, stop) = (tx.clone(), cancel.clone());
            let thread = tracker.spawn_blocking(move || tailer.run(tx, stop));
            switchboard_bus::vital::watch(
                &tracker,
                format!("the tailer of source {:?}", source.name),
                thread,
                cancel.clone(),
            );
        }
        drop(tx);
        let task = PublisherTask {
            publishers: Arc::new(publishers),
            membership,
            wait_for_collector: config.agent.wait_for_collector,
            self_ack: (!config.agent.acknowledged).then_some(self_ack_tx),
            stats: stats.clone(),
        };
        let (s2, k2, n2, j2) = (session.clone(), keys.clone(), node.clone(), journals.clone());
        tracker.spawn(async move {
            task.run(rx, cancel).await;
            // Say once more how far every source got, now that everything is published.
            if let Ok(key) = k2.head(&n2) {
                let _ = s2.put(key, publisher::heads(&n2, &j2, &s2).encode()).await;
            }
        });
        tracker.close();
        let streams = config.sources.len();
        tracing::info!(%node, log_sources, streams, "agent started");
        joined.keep();
        Ok(Self { stats, tracker, session, links, _token: token, serving, _dir_lock: dir_lock })
    }

    /// The agent's counters.
    pub fn stats(&self) -> Arc<AgentStats> {
        self.stats.clone()
    }

    /// Wait until the cancelled agent has published what it read and stored its checkpoint, then
    /// leave the bus.
    pub async fn wait(self) {
        self.tracker.wait().await;
        drop(self._token);
        drop(self.serving);
        switchboard_bus::session::leave(&self.session, &self.links).await;
        tracing::info!("agent stopped");
    }
}

/// Run `work` once `announced` turns true (this node's liveliness token is out); never, if its
/// sender goes first (a start that failed).
pub(crate) async fn once_announced(mut announced: tokio::sync::watch::Receiver<bool>, work: impl std::future::Future) {
    if announced.wait_for(|up| *up).await.is_ok() {
        work.await;
    }
}
