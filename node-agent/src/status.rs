//! The agent's status document (`<prefix>/status/node/<node>`, `switchboard status`, the status
//! page): its sources, its limit keys, its DLR records, with per-second rates from a sample
//! every second ([`switchboard_bus::status::sample_rates`]).

use std::sync::atomic::Ordering;

use switchboard_bus::http::Health;
use switchboard_bus::keys::Role;
use switchboard_bus::status::{
    DlrStatus, KeyStatus, NodeStatus, ProcessStatus, Rates, Sampled, SourceStatus, MAX_KEYS_PER_NODE,
};

use crate::report::{lags, AgentReport};

impl Sampled for AgentReport {
    fn rates(&self) -> &std::sync::Mutex<Rates> {
        &self.rates
    }

    fn counts(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> =
            lags(&self.journals).into_iter().map(|(name, (head, ..))| (format!("s:{name}"), head)).collect();
        if let Some(l) = &self.limits {
            for u in l.limiter.usage() {
                // A key whose state started again counts from zero: its id keeps the rates apart.
                out.push((format!("a:{}:{}", u.state_id, u.key), u.allowed));
                out.push((format!("d:{}:{}", u.state_id, u.key), u.denied));
            }
        }
        if let Some(d) = &self.dlr {
            let g = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            let s = &d.stats;
            out.push(("lookups".into(), g(&s.resolved_by_owner) + g(&s.resolved_by_replica) + g(&s.not_found)));
            out.push(("not_found".into(), g(&s.not_found)));
        }
        out
    }
}

impl AgentReport {
    /// This agent's status document.
    pub(crate) fn document(&self, health: &Health) -> ProcessStatus {
        let rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let sources = lags(&self.journals)
            .into_iter()
            .map(|(name, (head, acked, _, secs))| SourceStatus {
                lines_per_s: rates.get(&format!("s:{name}")),
                name,
                head,
                acked,
                lag_seconds: secs,
            })
            .collect();
        let mut limits: Vec<KeyStatus> = self
            .limits
            .iter()
            .flat_map(|l| l.limiter.usage())
            .map(|u| KeyStatus {
                allowed_per_s: rates.get(&format!("a:{}:{}", u.state_id, u.key)),
                denied_per_s: rates.get(&format!("d:{}:{}", u.state_id, u.key)),
                key: u.key,
                limit: u.limit,
                rate_per_sec: u.rate_per_sec,
                slots: u.slots.map(|(max, _)| max),
                held: u.slots.map(|(_, held)| held),
                share: u.share,
            })
            .collect();
        if limits.len() > MAX_KEYS_PER_NODE {
            let busy = |k: &KeyStatus| k.allowed_per_s + k.denied_per_s + k.held.unwrap_or(0) as f64;
            limits.sort_by(|a, b| busy(b).total_cmp(&busy(a)));
            limits.truncate(MAX_KEYS_PER_NODE);
        }
        let dlr = self.dlr.as_ref().map(|d| {
            let size = d.store().size();
            let census = d.census();
            DlrStatus {
                records: d.records_held(),
                own_open: census.map(|c| c.own_open),
                copies: census.map(|c| c.copies),
                oldest_open_ms: census.and_then(|c| c.oldest_open_ms),
                counted_at_ms: census.map(|c| c.at_ms),
                lookups_per_s: rates.get("lookups"),
                not_found_per_s: rates.get("not_found"),
                inbox: size.inbox,
                replica_queue: d.replica_queue().0 as u64,
            }
        });
        let mut doc =
            ProcessStatus::new(Role::Agent, &self.node, self.started_at_ms, health).with_membership(&self.membership);
        doc.node = Some(NodeStatus {
            serves_limits: self.limits.is_some(),
            limits_revision: self.limits.as_ref().map(|l| l.revisions.current()).filter(|r| *r > 0),
            limits_digest: self.limits.as_ref().and_then(|l| l.revisions.history().current().map(|r| r.digest())),
            sources,
            limits,
            dlr,
        });
        doc
    }
}
