//! GCRA (generic cell rate algorithm): a rate limit as one atomic timestamp.
//!
//! A rate of `amount` per `period` becomes an emission interval `T = period / amount`; the state
//! is the theoretical arrival time `tat` of the next unit. A request for `n` units at `now` is
//! allowed when `max(tat, now) + n·T - now <= burst·T`, and then moves `tat` forward by `n·T`.
//! This is a token bucket of capacity `burst` refilled continuously, without a fixed window:
//! over any interval of length `d` at most `burst + d/T` units pass, so with the default burst
//! (1% of the amount) no window of one period ever admits more than 101% of the limit, where a
//! fixed window admits up to 200% across its boundary.
//!
//! The decision is one atomic load and one compare-and-swap: lock-free, allocation-free. The
//! interval can be changed at any time (the node's share of a cluster-wide limit moves); the
//! next decision uses the new value.

use std::sync::atomic::{AtomicU64, Ordering};

/// Outcome of a rate decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Go ahead.
    Allowed,
    /// Not now; a request for the same amount would pass after this many nanoseconds.
    Denied {
        /// Nanoseconds until the same request would be allowed.
        retry_after_ns: u64,
    },
}

/// One rate limit's state.
#[derive(Debug)]
pub struct Gcra {
    /// Theoretical arrival time of the next unit, ns on the caller's clock.
    tat: AtomicU64,
    /// Emission interval in ns per unit (`u64::MAX`: nothing passes).
    interval_ns: AtomicU64,
    /// Burst in units (at least 1).
    burst: AtomicU64,
}

impl Gcra {
    /// A limiter emitting one unit every `interval_ns` with a burst of `burst` units.
    pub fn new(interval_ns: u64, burst: u64) -> Self {
        Self { tat: AtomicU64::new(0), interval_ns: AtomicU64::new(interval_ns), burst: AtomicU64::new(burst.max(1)) }
    }

    /// Emission interval for `amount` units per `period_ns` (`u64::MAX` when `amount` is 0),
    /// rounded up to whole nanoseconds: rounded down, `amount` intervals would end a nanosecond
    /// inside the period and let one unit more into it.
    pub fn interval_for(amount: f64, period_ns: u64) -> u64 {
        if amount <= 0.0 {
            u64::MAX
        } else {
            ((period_ns as f64) / amount).ceil().max(1.0) as u64
        }
    }

    /// Whether nothing passes (a rate of 0: an interval no unit ever reaches).
    pub fn is_closed(&self) -> bool {
        self.interval_ns.load(Ordering::Relaxed) == u64::MAX
    }

    /// Change the rate (and burst) at `now_ns`; takes effect for the next decision. The units
    /// owed (the theoretical arrival time's lead on `now_ns`, in intervals) are kept and paid at
    /// the new rate: a unit admitted while the rate was low (a node's share at its floor for a
    /// moment) would otherwise hold the old interval's lead long after the rate rose again.
    pub fn set(&self, interval_ns: u64, burst: u64, now_ns: u64) {
        let old = self.interval_ns.swap(interval_ns, Ordering::Relaxed);
        self.burst.store(burst.max(1), Ordering::Relaxed);
        if old == interval_ns || old == u64::MAX || interval_ns == u64::MAX || old == 0 {
            return;
        }
        let tat = self.tat.load(Ordering::Relaxed);
        let Some(lead) = tat.checked_sub(now_ns).filter(|l| *l > 0) else { return };
        // lead × new / old, in 128 bits: no overflow, and a lead never grows past the new
        // interval's count of the units owed.
        let scaled = (u128::from(lead) * u128::from(interval_ns) / u128::from(old)).min(u128::from(u64::MAX)) as u64;
        // A decision that moved it meanwhile counted at the new interval already: keep it.
        let _ = self.tat.compare_exchange(tat, now_ns.saturating_add(scaled), Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Whether the bucket is full at `now_ns` (no units owed): a fresh state would decide the
    /// same from here on.
    pub fn is_rested(&self, now_ns: u64) -> bool {
        self.tat.load(Ordering::Relaxed) <= now_ns
    }

    /// The most units that pass at once (after a quiet spell).
    pub fn burst(&self) -> u64 {
        self.burst.load(Ordering::Relaxed)
    }

    /// The current emission interval.
    pub fn interval_ns(&self) -> u64 {
        self.interval_ns.load(Ordering::Relaxed)
    }

    /// Decide on `n` units at time `now_ns` (a monotonic clock in ns).
    #[inline]
    pub fn try_acquire(&self, n: u64, now_ns: u64) -> RateDecision {
        let t = self.interval_ns.load(Ordering::Relaxed);
        if t == u64::MAX {
            return RateDecision::Denied { retry_after_ns: u64::MAX };
        }
        let limit = self.burst.load(Ordering::Relaxed).saturating_mul(t);
        let cost = n.saturating_mul(t);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now_ns);
            let new_tat = start.saturating_add(cost);
            let ahead = new_tat - now_ns;
            if ahead > limit {
                return RateDecision::Denied { retry_after_ns: ahead - limit };
            }
            match self.tat.compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return RateDecision::Allowed,
                Err(current) => tat = current,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;

    /// Brute-force check: no window of length `period` admits more than `max` units.
    fn max_in_any_window(times: &[u64], period: u64) -> usize {
        let mut best = 0;
        let mut lo = 0;
        for hi in 0..times.len() {
            while times[hi] - times[lo] >= period {
                lo += 1;
            }
            best = best.max(hi - lo + 1);
        }
        best
    }

    #[test]
    fn sliding_window_never_exceeds_limit_plus_burst() {
        // 500/s, burst 5 (1%): hammer it every 100 µs for 10 s.
        let g = Gcra::new(Gcra::interval_for(500.0, S), 5);
        let mut admitted = Vec::new();
        let mut now = 1_000 * S;
        while now < 1_010 * S {
            if g.try_acquire(1, now) == RateDecision::Allowed {
                admitted.push(now);
            }
            now += 100_000;
        }
        let worst = max_in_any_window(&admitted, S);
        assert!(worst <= 505, "a window admitted {worst}");
        // And it uses the limit: ~500/s over 10 s.
        assert!((4_990..=5_010).contains(&admitted.len()), "{}", admitted.len());
    }

    #[test]
    fn fixed_window_boundary_does_not_double() {
        // Idle, then a storm right before and after a second boundary.
        let g = Gcra::new(Gcra::interval_for(100.0, S), 1);
        let mut admitted = Vec::new();
        for t in (999 * MS..1_001 * MS).step_by(10_000) {
            if g.try_acquire(1, 10 * S + t) == RateDecision::Allowed {
                admitted.push(t);
            }
        }
        assert!(admitted.len() <= 2, "{} admitted in 2 ms at 100/s", admitted.len());
    }

    #[test]
    fn retry_after_is_exact() {
        let g = Gcra::new(10 * MS, 1); // 100/s, no burst
        assert_eq!(g.try_acquire(1, S), RateDecision::Allowed);
        match g.try_acquire(1, S + 4 * MS) {
            RateDecision::Denied { retry_after_ns } => assert_eq!(retry_after_ns, 6 * MS),
            other => panic!("{other:?}"),
        }
        assert_eq!(g.try_acquire(1, S + 10 * MS), RateDecision::Allowed);
        // n units cost n intervals.
        let g = Gcra::new(10 * MS, 3);
        assert_eq!(g.try_acquire(3, S), RateDecision::Allowed);
        assert!(matches!(g.try_acquire(1, S), RateDecision::Denied { .. }));
        assert!(matches!(g.try_acquire(4, 10 * S), RateDecision::Denied { .. }), "more than the burst never passes");
    }

    #[test]
    fn rate_changes_apply_at_once_and_zero_denies() {
        let g = Gcra::new(10 * MS, 1);
        g.set(Gcra::interval_for(0.0, S), 1, 0);
        assert_eq!(g.try_acquire(1, S), RateDecision::Denied { retry_after_ns: u64::MAX });
        g.set(MS, 1, S);
        assert_eq!(g.try_acquire(1, 2 * S), RateDecision::Allowed);
    }

    #[test]
    fn a_unit_taken_at_a_low_rate_is_paid_at_the_new_one() {
        // 1 unit per 10 s: one passes, and the next owes 10 s.
        let g = Gcra::new(10 * S, 1);
        assert_eq!(g.try_acquire(1, S), RateDecision::Allowed);
        assert!(matches!(g.try_acquire(1, S + 1), RateDecision::Denied { .. }));
        // The rate rises to 1 per 500 ms half a second later: what is owed is 9.5 s of 10 s,
        // 0.95 of a unit, now 475 ms.
        g.set(500 * MS, 1, S + 500 * MS);
        assert_eq!(g.try_acquire(1, S + 500 * MS + 475 * MS), RateDecision::Allowed);
        // And falling, the lead grows with it (a unit at 500 ms owed, now at 1 s: 1 s).
        g.set(S, 1, S + 975 * MS);
        assert!(matches!(g.try_acquire(1, S + 975 * MS + 990 * MS), RateDecision::Denied { .. }));
        assert_eq!(g.try_acquire(1, S + 975 * MS + S), RateDecision::Allowed);
    }

    #[test]
    fn concurrent_callers_never_overshoot() {
        use std::sync::Arc;
        let g = Arc::new(Gcra::new(Gcra::interval_for(1000.0, S), 10));
        let now = 100 * S; // frozen clock: only the burst may pass
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || {
                    (0..10_000).filter(|_| g.try_acquire(1, now) == RateDecision::Allowed).count()
                })
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 10);
    }
}
