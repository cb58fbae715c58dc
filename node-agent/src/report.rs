//! The agent's `/health` and `/metrics`: counters, and per source how far the collectors'
//! acknowledgements lag behind what was read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchboard_bus::http::{Health, Metrics, Report};
use switchboard_bus::keys::Role;
use switchboard_bus::mesh::Mesh;
use switchboard_bus::Membership;

use crate::dlr::DlrService;
use crate::limits::LimitsService;
use crate::metrics::MetricsService;
use crate::publisher::Journals;
use crate::stats::AgentStats;

/// How long a tailer may go without a round of its loop before `/health` says so.
const TAILER_QUIET: Duration = Duration::from_secs(30);

pub(crate) struct AgentReport {
    pub(crate) node: String,
    /// When the agent started, ms since the Unix epoch.
    pub(crate) started_at_ms: u64,
    /// Per-second rates for the status document ([`crate::status`]).
    pub(crate) rates: std::sync::Mutex<switchboard_bus::status::Rates>,
    pub(crate) stats: Arc<AgentStats>,
    pub(crate) journals: Journals,
    pub(crate) membership: Membership,
    pub(crate) mesh: Mesh,
    pub(crate) max_lag: Duration,
    /// `agent.max_unacked_batches`: a source with this many batches unacknowledged pauses.
    pub(crate) max_unacked: usize,
    pub(crate) limits: Option<Arc<LimitsService>>,
    pub(crate) dlr: Option<Arc<DlrService>>,
    pub(crate) metrics: Option<Arc<MetricsService>>,
    pub(crate) gateway: Option<Arc<crate::gateway::Gateway>>,
    pub(crate) cluster_config: Option<Arc<crate::cluster_config::ClusterConfig>>,
}

/// Per source: (head, acked, unacked batches, lag seconds).
pub(crate) fn lags(journals: &Journals) -> BTreeMap<String, (u64, u64, usize, f64)> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
    journals
        .iter()
        .filter_map(|(name, j)| {
            let j = j.lock().ok()?;
            let secs = j.oldest_unacked_micros().map_or(0.0, |t| (now - t).max(0) as f64 / 1e6);
            Some((name.clone(), (j.head(), j.acked().next_seq, j.unacked(), secs)))
        })
        .collect()
}

impl Report for AgentReport {
    fn health(&self) -> Health {
        let mut h = Health::default();
        for (source, e) in self.stats.journal_failed.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            h.failing.push(format!(
                "source {source} stopped: its journal cannot be written ({e}); its lines wait in its files until a restart"
            ));
        }
        if let Some(e) = self.stats.checkpoint_failing.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            h.failing.push(format!("cannot store the checkpoint ({e}); acknowledged lines stay in the journal"));
        }
        if let Some(e) = self.dlr.as_ref().and_then(|d| d.store().broken()) {
            h.failing.push(format!(
                "the DLR store failed a write ({e}) and refuses every change until the agent restarts: free disk space, then restart the agent"
            ));
        }
        let collectors = self.membership.live_of(Role::Collector);
        if collectors.is_empty() {
            // On TLS a collector that runs but refuses this node (its members file does not
            // list it yet) is not seen either, and the operator must be told where to look. A
            // collector seen leaving (stopped, or its link lost) says more than any guess.
            let left: Vec<String> = self
                .membership
                .departed()
                .into_iter()
                .filter(|(m, _)| m.role == Role::Collector)
                .map(|(m, _)| m.name)
                .collect();
            let tls = if !left.is_empty() {
                format!("; seen leaving: collector {}", left.join(", collector "))
            } else if switchboard_bus::refusals::tls() {
                "; if a collector runs, check that this node's certificate and ca are of the cluster's CA (`switchboard certs show`), that the collector's members file lists this node's identity and that it was restarted since (docs/security.md, Rotation)".to_owned()
            } else {
                "; if the cluster runs TLS, this node needs [bus.tls] and tls/ or quic/ endpoints (docs/security.md)"
                    .to_owned()
            };
            h.degraded.push(format!(
                "no collector is alive: lines are read and journaled (up to max_unacked_batches, then reading pauses) and pulled by a collector when one is back{tls}"
            ));
        }
        let lags = lags(&self.journals);
        for (source, (_, _, unacked, _)) in &lags {
            if *unacked >= self.max_unacked {
                h.degraded.push(format!(
                    "source {source}: reading paused: {unacked} batches wait for a collector (max_unacked_batches); the files are the buffer now, and a file rotated away and deleted before it is read is lost"
                ));
            }
        }
        for (source, (_, _, _, secs)) in &lags {
            if *secs > self.max_lag.as_secs_f64() {
                h.degraded.push(format!(
                    "source {source}: its oldest uncommitted line is {secs:.0} s old (health_max_lag_ms = {})",
                    self.max_lag.as_millis()
                ));
            }
        }
        // A tailer blocks while the publisher waits for a collector; only then is silence normal.
        if !collectors.is_empty() {
            let stopped = self.stats.journal_failed.lock().unwrap_or_else(|p| p.into_inner()).clone();
            // A source stopped on its journal's error is reported above, not as stuck.
            for (source, quiet) in self
                .stats
                .silent_tailers(TAILER_QUIET)
                .into_iter()
                .filter(|(s, _)| !stopped.iter().any(|(f, _)| f == s))
            {
                h.degraded.push(format!(
                    "source {source}: its reader has not advanced for {} s (stuck on a file system?)",
                    quiet.as_secs()
                ));
            }
        }
        if let Some(me) = self.limits.as_ref().and_then(|l| l.peers.borrow().get(&self.node).cloned()) {
            if me.state == crate::limits::coord::CUT_OFF {
                h.degraded.push(format!(
                    "limits: this node lost every other process at once and may be the one cut off: it admits nothing \
                     (every limited key answers limited) until it sees the other agents again, or for {} s more",
                    me.forget_in_ms.unwrap_or(0) / 1000
                ));
            }
        }
        let unreadable = self.stats.unreadable.lock().map(|u| u.clone()).unwrap_or_default();
        for (source, u) in unreadable {
            let more = match u.files {
                1 => String::new(),
                n => format!(" (and {} more file(s))", n - 1),
            };
            h.degraded.push(format!(
                "source {source}: cannot open {}{more}: {} (for {} s; tried again at every scan)",
                u.path,
                u.error,
                u.since.elapsed().as_secs()
            ));
        }
        h.degraded.extend(self.mesh.problems().iter().map(|p| format!("bus mesh: {p}")));
        let repo = self.cluster_config.as_ref().map(|c| c.state());
        if let Some(e) = self.cluster_config.as_ref().and_then(|c| c.store_error()) {
            h.degraded.push(e);
        }
        if let Some(r) = &repo {
            if let Some(b) = &r.blocked {
                h.degraded.push(format!("configuration revision {} not applied: {}", b.number, b.why));
            }
            if !r.local_edits.is_empty() {
                let paths: Vec<&str> = r.local_edits.iter().map(|e| e.path.as_str()).collect();
                h.degraded.push(format!("local edits in {}: {}", r.dir, paths.join(", ")));
            }
        }
        let sources: BTreeMap<String, serde_json::Value> = lags
            .into_iter()
            .map(|(k, (head, acked, unacked, secs))| {
                (k, serde_json::json!({"head": head, "acked": acked, "lag_records": head.saturating_sub(acked), "unacked_batches": unacked, "lag_seconds": secs}))
            })
            .collect();
        let details = serde_json::json!({
            "node": self.node,
            "collectors_alive": collectors,
            "sources": sources,
            "mesh": self.mesh.health(),
            "cluster_config": repo.as_ref().map(|r| serde_json::json!({
                "applied": r.applied,
                "heads": r.heads.iter().map(|h| h.number).collect::<Vec<_>>(),
                "local_edits": r.local_edits,
                "blocked": r.blocked,
                "reload": r.reload,
            })),
            "limits": self.limits.as_ref().map(|l| serde_json::json!({
                "revision": l.revisions.current(),
                "nodes": l.peers.borrow().clone(),
            })),
            "dlr": self.dlr.as_ref().map(|d| {
                let size = d.store().size();
                serde_json::json!({
                    "records": d.records_held(),
                    "inbox": size.inbox,
                    "disk_bytes": size.disk_bytes,
                    "store_errors": d.stats.store_errors.load(Ordering::Relaxed),
                })
            }),
        });
        if let serde_json::Value::Object(map) = details {
            h.details = map;
        }
        h
    }

    fn metrics(&self) -> String {
        let s = &self.stats;
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let lags = lags(&self.journals);
        let mut m = Metrics::new();
        m.counter("switchboard_agent_read_bytes_total", "Bytes read from log files.", g(&s.bytes_read))
            .counter("switchboard_agent_lines_total", "Lines framed and parsed.", g(&s.lines_read))
            .counter(
                "switchboard_agent_unmatched_lines_total",
                "Lines that did not match their format.",
                g(&s.lines_unmatched),
            )
            .counter("switchboard_agent_truncated_lines_total", "Lines cut at max_line_bytes.", g(&s.lines_truncated))
            .counter(
                "switchboard_agent_invalid_utf8_lines_total",
                "Lines that were not valid UTF-8.",
                g(&s.lines_invalid_utf8),
            )
            .counter("switchboard_agent_file_truncations_total", "Files truncated in place.", g(&s.truncations))
            .counter(
                "switchboard_agent_skipped_binary_files_total",
                "Files not read because their first block looked binary.",
                g(&s.binary_files_skipped),
            )
            .counter("switchboard_agent_published_lines_total", "Lines published on the bus.", g(&s.lines_published))
            .counter(
                "switchboard_agent_published_batches_total",
                "Batches published on the bus.",
                g(&s.batches_published),
            )
            .counter(
                "switchboard_agent_held_batches_total",
                "Batches journaled and not published while no collector was alive (a collector pulls them when back).",
                g(&s.batches_held),
            )
            .counter("switchboard_agent_publish_errors_total", "Failed publications.", g(&s.publish_errors))
            .counter("switchboard_agent_checkpoint_errors_total", "Failed checkpoint writes.", g(&s.checkpoint_errors))
            .counter(
                "switchboard_agent_event_lines_dropped_total",
                "Lines of the agent's own logs (limit decisions, DLR events, metric snapshots) dropped: their file could not be written and 16 MiB of them waited.",
                crate::eventlog::dropped_lines(),
            )
            .counter("switchboard_agent_journal_errors_total", "Failed journal writes.", g(&s.journal_errors))
            .counter("switchboard_agent_replays_total", "Replay queries answered.", g(&s.replays))
            .counter("switchboard_agent_replayed_lines_total", "Lines sent again for replays.", g(&s.lines_replayed))
            .counter("switchboard_agent_replay_errors_total", "Replays not answered in full.", g(&s.replay_errors))
            .counter(
                "switchboard_agent_lost_lines_total",
                "Lines given up for lost: not acknowledged when their file was written over or went away, or numbered on a node rebuilt empty below what the collector held of its earlier life.",
                g(&s.lines_lost),
            )
            .counter(
                "switchboard_agent_watermarks_stale_total",
                "Watermarks ignored because a newer collector-group writer had spoken.",
                g(&s.watermarks_stale),
            )
            .counter(
                "switchboard_agent_http_oversized_requests_total",
                "HTTP requests refused with 413: body over agent.http_max_body_bytes.",
                g(&s.http_oversized_requests),
            )
            .counter(
                "switchboard_agent_http_slow_requests_total",
                "HTTP requests refused with 408: body slower than 10 s plus 1 s per MiB.",
                g(&s.http_slow_requests),
            )
            .counter(
                "switchboard_agent_http_busy_requests_total",
                "HTTP requests refused with 503: the bodies being read held their whole budget.",
                g(&s.http_busy_requests),
            )
            .counter(
                "switchboard_agent_http_malformed_bodies_total",
                "HTTP requests refused with 400: the body could not be read (malformed chunked encoding, cut short).",
                g(&s.http_malformed_bodies),
            )
            .gauge(
                "switchboard_agent_collectors_alive",
                "Collectors alive on the bus.",
                self.membership.live_of(Role::Collector).len() as f64,
            )
            .gauge_series(
                "switchboard_agent_source_lag_records",
                "Lines read but not yet acknowledged as committed.",
                lags.iter().map(|(k, v)| (vec![("source", k.clone())], v.0.saturating_sub(v.1) as f64)),
            )
            .gauge_series(
                "switchboard_agent_source_lag_seconds",
                "Age of the oldest line not yet acknowledged.",
                lags.iter().map(|(k, v)| (vec![("source", k.clone())], v.3)),
            )
            .gauge_series(
                "switchboard_agent_source_paused",
                "1 while a source's reading is paused: max_unacked_batches batches wait for a collector.",
                lags.iter().map(|(k, v)| (vec![("source", k.clone())], f64::from(u8::from(v.2 >= self.max_unacked)))),
            );
        // A source stopped by a failed journal write reads nothing until a restart, while its
        // lag says 0 (nothing read waits): a gauge of its own, for an alert.
        let stopped: Vec<String> =
            s.journal_failed.lock().map(|f| f.iter().map(|(name, _)| name.clone()).collect()).unwrap_or_default();
        m.gauge_series(
            "switchboard_agent_source_stopped",
            "1 while a source has stopped reading until a restart: its journal could not be written (a full disk).",
            lags.keys().map(|k| (vec![("source", k.clone())], f64::from(u8::from(stopped.contains(k))))),
        );
        if let Some(c) = &self.cluster_config {
            let st = c.state();
            m.gauge(
                "switchboard_agent_config_revision",
                "Configuration revision applied to the working directory (0: none).",
                st.applied.as_ref().map_or(0.0, |a| a.number as f64),
            )
            .gauge(
                "switchboard_agent_config_heads",
                "Heads of the configuration repository (2 or more: a conflict).",
                st.heads.len() as f64,
            )
            .gauge(
                "switchboard_agent_config_local_edits",
                "Files of the working directory changed by hand.",
                st.local_edits.len() as f64,
            )
            .gauge(
                "switchboard_agent_config_blocked",
                "1 when the repository's head is not applied (conflict, local edits, failed reload).",
                if st.blocked.is_some() { 1.0 } else { 0.0 },
            );
        }
        if let Some(l) = &self.limits {
            let usage = l.limiter.usage();
            let key = |k: &str| vec![("key", k.to_owned())];
            m.gauge("switchboard_agent_limits_revision", "Limits revision in force.", l.revisions.current() as f64)
                .counter(
                    "switchboard_agent_limits_http_requests_total",
                    "Limits API requests over HTTP.",
                    g(&l.stats.http_requests),
                )
                .counter(
                    "switchboard_agent_limits_socket_requests_total",
                    "Limits requests over the gateway socket.",
                    g(&l.stats.socket_requests),
                )
                .counter(
                    "switchboard_agent_limits_bad_requests_total",
                    "Malformed limits API requests.",
                    g(&l.stats.bad_requests),
                )
                .counter(
                    "switchboard_agent_limits_unmatched_releases_total",
                    "Releases of slots that were not held.",
                    g(&l.stats.unmatched_releases),
                )
                .counter(
                    "switchboard_agent_limits_keys_full_total",
                    "Requests for a new key refused because the node held the state of its most keys (10,000), none at rest.",
                    l.limiter.refused_keys_full(),
                )
                .gauge("switchboard_agent_limits_keys", "Concrete keys this node holds state for.", l.limiter.keys_in_use() as f64)
                .counter_series(
                    "switchboard_agent_limits_allowed_units_total",
                    "Units allowed per key (since the key's limit last changed).",
                    usage.iter().map(|u| (key(&u.key), u.allowed as f64)),
                )
                .counter_series(
                    "switchboard_agent_limits_denied_units_total",
                    "Units denied per key (since the key's limit last changed).",
                    usage.iter().map(|u| (key(&u.key), u.denied as f64)),
                )
                .gauge_series(
                    "switchboard_agent_limits_share",
                    "This node's share of each key's cluster-wide limit.",
                    usage.iter().map(|u| (key(&u.key), u.share)),
                )
                .gauge(
                    "switchboard_agent_limits_known_nodes",
                    "Nodes this node shares limits with (itself and silent ones included).",
                    l.peers.borrow().len() as f64,
                );
        }
        if let Some(gw) = &self.gateway {
            let s = &gw.stats;
            m.counter(
                "switchboard_agent_gateway_requests_total",
                "Request lines on the gateway socket.",
                g(&s.requests),
            )
            .counter(
                "switchboard_agent_gateway_connections_total",
                "Connections accepted on the gateway socket.",
                g(&s.connections),
            )
            .counter(
                "switchboard_agent_gateway_connections_refused_total",
                "Connections closed at once because gateway.max_connections were open.",
                g(&s.connections_refused),
            )
            .counter(
                "switchboard_agent_gateway_unknown_requests_total",
                "Request lines with a verb the protocol does not have.",
                g(&s.unknown_requests),
            )
            .counter(
                "switchboard_agent_gateway_lines_too_long_total",
                "Request lines over 64 KiB (the connection is closed).",
                g(&s.lines_too_long),
            )
            .counter(
                "switchboard_agent_gateway_unterminated_lines_total",
                "Connections that ended inside a request (no newline after it): not carried out.",
                g(&s.unterminated_lines),
            );
        }
        if let Some(d) = &self.dlr {
            let size = d.store().size();
            m.gauge(
                "switchboard_agent_dlr_records",
                "DLR records held (own and copies), as of the last census (the store's estimate before the first).",
                d.records_held() as f64,
            )
            .gauge("switchboard_agent_dlr_inbox", "Reports waiting for this node's gateway.", size.inbox as f64)
            .gauge(
                "switchboard_agent_dlr_store_bytes",
                "Disk used by the DLR store.",
                size.disk_bytes as f64,
            );
            let (queued, overflows) = d.replica_queue();
            m.gauge(
                "switchboard_agent_dlr_replica_queue",
                "Changes of own records waiting for their replicas.",
                queued as f64,
            )
            .counter(
                "switchboard_agent_dlr_replica_queue_overflows_total",
                "Times the replication queue was full and a pass over the store replaced it.",
                overflows,
            );
            for (name, help, value) in d.stats.counters() {
                m.counter(&format!("switchboard_agent_dlr_{name}_total"), help, value);
            }
        }
        if let Some(s) = &self.metrics {
            for (name, help, value) in s.stats.counters() {
                m.counter(&format!("switchboard_agent_metrics_{name}_total"), help, value);
            }
        }
        self.mesh.metrics(&mut m);
        self.health().gauge(&mut m);
        m.finish()
    }

    fn status(&self, health: &Health) -> switchboard_bus::status::ProcessStatus {
        self.document(health)
    }
}
