//! The collector's status document (`<prefix>/status/collector/<name>`, `switchboard status`,
//! the status page): its role in the group, its commits and every stream it writes, with
//! per-second rates from a sample every second ([`switchboard_bus::status::sample_rates`]).

use std::sync::atomic::Ordering;

use switchboard_bus::http::Health;
use switchboard_bus::keys::Role;
use switchboard_bus::status::{CollectorStatus, ProcessStatus, Rates, Sampled, StreamStatus};

use crate::report::CollectorReport;

impl Sampled for CollectorReport {
    fn rates(&self) -> &std::sync::Mutex<Rates> {
        &self.rates
    }

    fn counts(&self) -> Vec<(String, u64)> {
        let st = self.status.borrow();
        let mut out: Vec<(String, u64)> = st.watermarks.iter().map(|(id, w)| (format!("w:{id}"), *w)).collect();
        // Rows taken into open files: they arrive all the time, while commits come in steps
        // (one per file age), which a rate between two one-second samples mostly sees as 0.
        out.push(("rows".into(), self.stats.rows_accepted.load(Ordering::Relaxed)));
        out
    }
}

impl CollectorReport {
    /// This collector's status document.
    pub(crate) fn document(&self, health: &Health) -> ProcessStatus {
        let rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let st = self.status.borrow().clone();
        let group = self.group.lock().map(|g| g.clone()).unwrap_or_default();
        let lags = self.lag(&st);
        // Every stream with a commit or with records announced (none committed yet: `committed` 0).
        let ids: std::collections::BTreeSet<&switchboard_bus::StreamId> =
            st.watermarks.keys().chain(lags.keys()).collect();
        let streams = ids
            .into_iter()
            .map(|id| {
                let committed = st.watermarks.get(id);
                let lag = lags.get(id).copied().unwrap_or_default();
                let (lag_records, lag_seconds) = (lag.records, lag.seconds());
                StreamStatus {
                    node: id.node.clone(),
                    stream: id.local(),
                    // A watermark is the highest committed sequence number; the document says
                    // the next one to commit, as the agents' heads do.
                    committed: committed.map_or(0, |w| w.saturating_add(1)),
                    lag_records,
                    lag_seconds,
                    committed_per_s: rates.get(&format!("w:{id}")),
                }
            })
            .collect();
        let mut doc = ProcessStatus::new(Role::Collector, &self.name, self.started_at_ms, health)
            .with_membership(&self.membership);
        doc.collector = Some(CollectorStatus {
            role: group.role.to_owned(),
            epoch: group.epoch,
            leader: group.leader.clone(),
            last_commit_age_s: group.last_commit.map(|t| t.elapsed().as_secs_f64()),
            store_error: group.store_problem().or(st.failing.clone()),
            open_files: st.open_files as u64,
            rows_per_s: rates.get("rows"),
            max_file_age_s: Some(self.max_file_age_s),
            streams,
        });
        doc
    }
}
