//! Splitting a cluster-wide limit among nodes by demand.
//!
//! Each node knows every live node's recent demand for a key (units asked for per second,
//! allowed or not). [`share_of`] gives a node a small floor (so a node that just became busy is
//! not shut out until the next update) plus the rest in proportion to demand. Shares of all
//! nodes sum to exactly 1, so the cluster as a whole stays within the limit while each node
//! decides alone; when demand shifts, shares follow at the next update. Nodes tell each other
//! their demand in a [`DemandReport`] on `<prefix>/counter/<node>`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A node's demand report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DemandReport {
    /// Always 1.
    pub version: u32,
    /// Limit key → units asked for per second (smoothed); for concurrency keys plus the slots
    /// held.
    pub demand: BTreeMap<String, f64>,
    /// Concurrency key → slots held on the node now.
    #[serde(default)]
    pub held: BTreeMap<String, u64>,
    /// Concurrency key → slots the node lets itself hold now (its allotment), also for keys it
    /// has no slot taken of yet.
    #[serde(default)]
    pub allotted: BTreeMap<String, u64>,
    /// The share of a concurrency key's slots the node takes at its first use of a key not in
    /// `allotted` (`1/n` of the `n` nodes it knows).
    #[serde(default)]
    pub first_use_share: Option<f64>,
    /// Rate key → the share of its limit the node applies now (published after applying): the
    /// others grow their shares only into what these leave (make before break).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shares: BTreeMap<String, f64>,
    /// The coordination tick it was made at: milliseconds since the Unix epoch divided by the
    /// interval. Every node works out the shares of tick `t` from the reports of tick `t - 1`,
    /// so all of them split by the same demand (absent: taken as soon as it arrives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick: Option<u64>,
    /// The node is stopping: its last report. Its token going next is an exit, not a cut link
    /// (absent: `false`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
    /// The agents the node splits with: those it sees live, itself included (absent: not
    /// said). A node back from a cut takes a share again only once every agent it sees has
    /// named it here since, and it sees every agent they name: all of those split with it then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
}

impl DemandReport {
    /// Refuse a report out of bounds: another version, more keys than a revision may hold, a
    /// key too long, a demand that is negative or not a number.
    pub fn check(&self) -> Result<(), String> {
        if self.version != 1 {
            return Err(format!("version {} (expected 1)", self.version));
        }
        if [self.demand.len(), self.held.len(), self.allotted.len(), self.shares.len()]
            .iter()
            .any(|&n| n > super::MAX_LIMITS)
        {
            return Err(format!(
                "{} demands, {} held counts, {} allotments and {} shares",
                self.demand.len(),
                self.held.len(),
                self.allotted.len(),
                self.shares.len()
            ));
        }
        for (k, s) in &self.shares {
            if k.len() > super::MAX_KEY_BYTES || !(0.0..=1.0).contains(s) {
                return Err(format!("share {s} for a key of {} bytes (expected 0 to 1)", k.len()));
            }
        }
        if let Some(s) = self.first_use_share.filter(|s| !(0.0..=1.0).contains(s)) {
            return Err(format!("first-use share {s} (expected 0 to 1)"));
        }
        for (k, d) in &self.demand {
            if k.len() > super::MAX_KEY_BYTES || !d.is_finite() || *d < 0.0 {
                return Err(format!("demand {d} for a key of {} bytes", k.len()));
            }
        }
        if let Some(k) = self.held.keys().chain(self.allotted.keys()).find(|k| k.len() > super::MAX_KEY_BYTES) {
            return Err(format!("held or allotted slots for a key of {} bytes", k.len()));
        }
        if self.agents.len() > super::MAX_AGENTS {
            return Err(format!("{} agents (at most {})", self.agents.len(), super::MAX_AGENTS));
        }
        if let Some((name, e)) = self.agents.iter().find_map(|n| crate::keys::check_name(n).err().map(|e| (n, e))) {
            return Err(format!("agent {name:?}: {e}"));
        }
        Ok(())
    }
}

impl DemandReport {
    /// The most slots of concurrency key `key` (of `max` in the cluster) the node may hold by
    /// its own report: what it holds or its allotment, whichever is larger; for a key it has no
    /// allotment for, what its first use would take (all of `max` if it did not say).
    pub fn claim(&self, key: &str, max: u64) -> u64 {
        let held = self.held.get(key).copied().unwrap_or(0);
        let allotted = self
            .allotted
            .get(key)
            .copied()
            .unwrap_or_else(|| ((max as f64) * self.first_use_share.unwrap_or(1.0)).floor() as u64);
        held.max(allotted.min(max))
    }

    /// The share of rate key `key` the node may apply by its own report: the share it applies,
    /// or for a key it applies none of yet, what its first use would take (the whole limit if it
    /// did not say).
    pub fn rate_claim(&self, key: &str) -> f64 {
        self.shares.get(key).copied().unwrap_or_else(|| self.first_use_share.unwrap_or(1.0))
    }
}

/// Fraction of the limit reserved for each node whatever its demand, at most half the limit in
/// all: `min(FLOOR, 1 / (2n))`.
pub const FLOOR: f64 = 0.02;

/// The share of `node` given every known node's demand (`node` must be among them).
pub fn share_of(node: &str, demands: &BTreeMap<String, f64>) -> f64 {
    let n = demands.len();
    if n == 0 || !demands.contains_key(node) {
        return 0.0;
    }
    let floor = FLOOR.min(1.0 / (2.0 * n as f64));
    let total: f64 = demands.values().map(|d| d.max(0.0)).sum();
    if total <= 0.0 || !total.is_finite() {
        return 1.0 / n as f64;
    }
    let mine = demands.get(node).copied().unwrap_or(0.0).max(0.0);
    floor + (1.0 - floor * n as f64) * mine / total
}

/// Smoothed demand: units asked per second. A fast exponentially weighted moving average (half
/// of it the newest interval) follows a burst within an interval or two; below
/// [`Demand::SPARSE`] a slow one (over about [`Demand::SLOW_SECS`]) speaks for it too, so a node
/// that asks now and then (once a second, say) reads as its average rate between its requests.
/// With the fast one alone such a node read as idle most of the time, got the floor share, and
/// was refused well below the limit; a node whose demand falls from a high rate is not held up
/// by the slow one beyond [`Demand::SPARSE`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Demand {
    fast: f64,
    slow: f64,
    last_count: u64,
    primed: bool,
}

impl Demand {
    /// Weight of the newest interval in the fast average.
    const ALPHA: f64 = 0.5;
    /// Time constant of the slow average, in seconds.
    pub const SLOW_SECS: f64 = 1.0;
    /// Up to this rate (units per second: fewer than one per 100 ms interval) the slow average
    /// counts as demand.
    pub const SPARSE: f64 = 10.0;
    /// A smoothed rate below this (units per second) is none.
    const IDLE: f64 = 1e-3;

    /// Feed the running count of units asked for, observed `dt_secs` after the previous one;
    /// returns the smoothed rate.
    pub fn update(&mut self, count: u64, dt_secs: f64) -> f64 {
        let delta = count.saturating_sub(self.last_count) as f64;
        self.last_count = count;
        if dt_secs > 0.0 {
            let now = delta / dt_secs;
            if self.primed {
                let slow_weight = 1.0 - (-dt_secs / Self::SLOW_SECS).exp();
                self.fast = Self::ALPHA * now + (1.0 - Self::ALPHA) * self.fast;
                self.slow = slow_weight * now + (1.0 - slow_weight) * self.slow;
            } else {
                (self.fast, self.slow) = (now, now);
            }
            // A key gone idle decays to 0, not to ever smaller fractions (1e-227 in a report).
            for r in [&mut self.fast, &mut self.slow] {
                if *r < Self::IDLE {
                    *r = 0.0;
                }
            }
            self.primed = true;
        }
        self.rate()
    }

    /// The current smoothed rate. The slow average speaks only while the fast one has not
    /// decayed to none (about 2 s after the last request): a node that stops asking reads as
    /// idle as soon as it did with the fast one alone.
    pub fn rate(&self) -> f64 {
        if self.fast > 0.0 {
            self.fast.max(self.slow.min(Self::SPARSE))
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demands(v: &[(&str, f64)]) -> BTreeMap<String, f64> {
        v.iter().map(|(k, d)| (k.to_string(), *d)).collect()
    }

    #[test]
    fn shares_sum_to_one_and_follow_demand() {
        let d = demands(&[("a", 900.0), ("b", 100.0), ("c", 0.0), ("d", 0.0)]);
        let s: Vec<f64> = ["a", "b", "c", "d"].iter().map(|n| share_of(n, &d)).collect();
        assert!((s.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{s:?}");
        assert!(s[0] > 0.8 && s[1] > 0.09 && (s[2] - FLOOR).abs() < 1e-9, "{s:?}");
        // No demand anywhere: equal split.
        let idle = demands(&[("a", 0.0), ("b", 0.0)]);
        assert_eq!(share_of("a", &idle), 0.5);
        // Unknown node, or nobody: nothing.
        assert_eq!(share_of("z", &idle), 0.0);
        assert_eq!(share_of("a", &BTreeMap::new()), 0.0);
    }

    #[test]
    fn a_node_asking_once_a_second_keeps_its_average_between_requests() {
        // Reports every 100 ms; one request a second.
        let mut d = Demand::default();
        let mut count = 0;
        let mut lowest = f64::MAX;
        for tick in 0..100 {
            if tick % 10 == 0 {
                count += 1;
            }
            let rate = d.update(count, 0.1);
            if tick >= 50 {
                lowest = lowest.min(rate);
            }
        }
        assert!(lowest > 0.5, "a steady 1/s reads as {lowest}/s at its lowest");
        // A burst shows at once, and an idle key still decays to none.
        let burst = d.update(count + 100, 0.1);
        assert!(burst > 400.0, "{burst}");
        let mut rate = burst;
        for _ in 0..30 {
            rate = d.update(count + 100, 0.1);
        }
        assert_eq!(rate, 0.0, "idle within 3 s of a burst");
    }

    #[test]
    fn many_nodes_keep_the_floor_below_half_the_limit() {
        let d: BTreeMap<String, f64> = (0..100).map(|i| (format!("n{i}"), if i == 0 { 1.0 } else { 0.0 })).collect();
        let busy = share_of("n0", &d);
        assert!(busy >= 0.5, "{busy}");
        let total: f64 = d.keys().map(|k| share_of(k, &d)).sum();
        assert!((total - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_claim_is_what_a_node_holds_or_may_take() {
        let mut r = DemandReport { version: 1, first_use_share: Some(0.25), ..Default::default() };
        assert_eq!(r.claim("k", 20), 5, "no allotment yet: its first use");
        r.allotted.insert("k".into(), 2);
        r.held.insert("k".into(), 7);
        assert_eq!(r.claim("k", 20), 7, "held above the allotment counts");
        r.held.clear();
        assert_eq!(r.claim("k", 20), 2);
        assert_eq!(DemandReport::default().claim("k", 20), 20, "a node that does not say may take it all");
        assert!(r.check().is_ok());
        for bad in [f64::NAN, -0.1, 1.5] {
            r.first_use_share = Some(bad);
            assert!(r.check().is_err(), "{bad}");
        }
    }

    #[test]
    fn demand_is_smoothed_per_second() {
        let mut d = Demand::default();
        assert_eq!(d.update(100, 0.1), 1000.0);
        // No request since: the fast average halves (the slow one speaks only below 10/s).
        assert_eq!(d.update(100, 0.1), 500.0);
        assert_eq!(d.update(300, 0.1), 1250.0);
        assert_eq!(d.update(250, 0.1), 625.0, "a counter reset counts as no demand");
        let idle = (0..30).map(|_| d.update(250, 0.1)).last();
        assert_eq!(idle, Some(0.0), "an idle key's demand reaches 0");
    }
}
