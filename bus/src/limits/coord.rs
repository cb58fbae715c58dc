//! Coordination of cluster-wide limits over the bus.
//!
//! Every `interval` each node publishes its smoothed demand per limit key on
//! `<prefix>/counter/<node>` (one small JSON document for all keys: batched, not per decision),
//! and sets its share of every key from the latest reports of the live nodes ([`super::share`]).
//! A report older than three intervals counts as no demand; a node that leaves the membership
//! drops out of the split at the next tick, so its share goes to the others.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use zenoh::Session;

use super::share::{share_of, Demand};
use super::Limiter;
use crate::keys::{KeySpace, Role};
use crate::membership::Membership;

/// A node's demand report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DemandReport {
    /// Always 1.
    pub version: u32,
    /// Limit key → units asked for per second (smoothed).
    pub demand: BTreeMap<String, f64>,
}

/// Publish demand and apply shares until `cancel` fires.
pub async fn run(
    session: Session,
    keys: KeySpace,
    node: String,
    limiter: Arc<Limiter>,
    membership: Membership,
    interval: Duration,
    cancel: CancellationToken,
) {
    let (Ok(my_key), Ok(all)) = (keys.counter(&node), keys.all_counters()) else { return };
    let subscriber = match session.declare_subscriber(all).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to demand reports; limits stay at this node's last shares");
            return;
        }
    };
    let mut reports: HashMap<String, (Instant, DemandReport)> = HashMap::new();
    let mut demands: HashMap<String, Demand> = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            sample = subscriber.recv_async() => {
                let Ok(sample) = sample else { break };
                let Some(from) = keys.parse_counter(sample.key_expr().as_str()) else { continue };
                match serde_json::from_slice::<DemandReport>(&sample.payload().to_bytes()) {
                    Ok(r) if r.version == 1 => { reports.insert(from, (Instant::now(), r)); }
                    Ok(r) => tracing::warn!(version = r.version, "ignoring a demand report of an unknown version"),
                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed demand report"),
                }
            }
            _ = tick.tick() => {
                let dt = last.elapsed().as_secs_f64();
                last = Instant::now();
                let mut mine = DemandReport { version: 1, demand: BTreeMap::new() };
                for (key, asked) in limiter.asked() {
                    let rate = demands.entry(key.clone()).or_default().update(asked, dt);
                    mine.demand.insert(key, rate);
                }
                if let Ok(body) = serde_json::to_vec(&mine) {
                    if let Err(e) = session.put(&my_key, body).await {
                        tracing::debug!(error = %e, "cannot publish demand");
                    }
                }
                reports.insert(node.clone(), (Instant::now(), mine));
                apply(&node, &limiter, &membership, &reports, interval * 3);
            }
        }
    }
}

/// Set this node's share of every key from the fresh reports of the live nodes.
fn apply(
    node: &str,
    limiter: &Limiter,
    membership: &Membership,
    reports: &HashMap<String, (Instant, DemandReport)>,
    max_age: Duration,
) {
    let mut live = membership.live_of(Role::Agent);
    if !live.iter().any(|n| n == node) {
        live.push(node.to_owned());
    }
    limiter.set_default_share(1.0 / live.len() as f64);
    let mut per_key: BTreeMap<&str, BTreeMap<String, f64>> = BTreeMap::new();
    for n in &live {
        let fresh = reports.get(n).filter(|(at, _)| at.elapsed() <= max_age);
        for (key, d) in fresh.map(|(_, r)| &r.demand).into_iter().flatten() {
            per_key.entry(key.as_str()).or_default().insert(n.clone(), *d);
        }
    }
    for (key, mut demands) in per_key {
        // Every live node takes part in every key's split, with no demand if it reported none.
        for n in &live {
            demands.entry(n.clone()).or_insert(0.0);
        }
        limiter.set_share(key, share_of(node, &demands));
    }
}
