//! Two processes publishing as one node: detected from the instance id in their heads.
//!
//! Every agent names its own run in its heads (`instance`: its zenoh session id, new at every
//! start). A restarted agent replaces its old instance for good; two agents started with the same
//! node name take turns instead, so an instance that comes back after another one was seen is a
//! conflict: their sequence numbers collide and the collector would keep whichever line came first
//! and drop the other as a duplicate. [`WriterCheck::observe`] finds that; the collector counts it,
//! logs it (at most once a minute per node) and reports it in `/health` for
//! [`CONFLICT_REPORTED_FOR`] after the last one.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use switchboard_bus::wire::control::MAX_INSTANCE_BYTES;

/// How long `/health` reports a conflict after it was last seen.
pub const CONFLICT_REPORTED_FOR: Duration = Duration::from_secs(60);
/// Instances remembered per node.
const REMEMBERED: usize = 8;
/// Nodes tracked at most (the first by name is forgotten beyond it): with [`REMEMBERED`]
/// instances of at most [`MAX_INSTANCE_BYTES`] each, about 10 MiB whatever peers send.
const MAX_NODES: usize = 10_000;

#[derive(Debug, Default)]
struct NodeWriters {
    /// Most recent instance last.
    instances: VecDeque<String>,
    last_conflict: Option<Instant>,
    last_logged: Option<Instant>,
}

/// Per node, the instances seen in its heads.
#[derive(Debug, Default)]
pub struct WriterCheck {
    nodes: BTreeMap<String, NodeWriters>,
}

impl WriterCheck {
    /// Note heads from `node` by `instance`; `true` when that shows two live writers. An
    /// instance id over [`MAX_INSTANCE_BYTES`] is not taken (the caller counts it).
    pub fn observe(&mut self, node: &str, instance: &str, now: Instant) -> bool {
        if instance.len() > MAX_INSTANCE_BYTES {
            return false;
        }
        if !self.nodes.contains_key(node) && self.nodes.len() >= MAX_NODES {
            if let Some(oldest) = self.nodes.keys().next().cloned() {
                self.nodes.remove(&oldest);
            }
        }
        let w = self.nodes.entry(node.to_owned()).or_default();
        if w.instances.back().is_some_and(|last| last == instance) {
            return false;
        }
        let came_back = w.instances.iter().any(|i| i == instance);
        w.instances.retain(|i| i != instance);
        w.instances.push_back(instance.to_owned());
        if w.instances.len() > REMEMBERED {
            w.instances.pop_front();
        }
        if !came_back {
            return false;
        }
        w.last_conflict = Some(now);
        if w.last_logged.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(60)) {
            w.last_logged = Some(now);
            tracing::error!(
                %node,
                "two processes publish as node {node}: their lines share sequence numbers, so one's are \
                 dropped as duplicates of the other's; give each agent its own `node` name in [bus]"
            );
        }
        true
    }

    /// Nodes with a conflict in the last [`CONFLICT_REPORTED_FOR`].
    pub fn conflicted(&self, now: Instant) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, w)| w.last_conflict.is_some_and(|t| now.saturating_duration_since(t) < CONFLICT_REPORTED_FOR))
            .map(|(n, _)| n.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_is_not_a_conflict_but_taking_turns_is() {
        let mut w = WriterCheck::default();
        let t = Instant::now();
        assert!(!w.observe("gw1", "a", t));
        assert!(!w.observe("gw1", "a", t));
        // Restarted: a new instance, the old one never comes back.
        assert!(!w.observe("gw1", "b", t));
        assert!(!w.observe("gw1", "b", t));
        assert!(w.conflicted(t).is_empty());
        // A second process with the same name: c and b take turns.
        assert!(!w.observe("gw1", "c", t));
        assert!(w.observe("gw1", "b", t));
        assert!(w.observe("gw1", "c", t));
        assert_eq!(w.conflicted(t), vec!["gw1".to_owned()]);
        assert!(w.conflicted(t + CONFLICT_REPORTED_FOR).is_empty());
        // Other nodes are independent.
        assert!(!w.observe("gw2", "b", t));
        // An oversized instance id is not remembered.
        assert!(!w.observe("gw3", &"x".repeat(MAX_INSTANCE_BYTES + 1), t));
        assert!(!w.observe("gw3", "y", t));
    }
}
