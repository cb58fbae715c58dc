//! Concurrency limits: at most `max` slots held at once, acquired and released explicitly.
//!
//! One atomic counter; acquiring is a compare-and-swap that never takes the count past the
//! current maximum (which the node's share of a cluster-wide limit may move), releasing never
//! takes it below zero (a release without an acquire is counted by the caller, not obeyed).

use std::sync::atomic::{AtomicU64, Ordering};

/// One concurrency limit's state.
#[derive(Debug)]
pub struct Slots {
    held: AtomicU64,
    max: AtomicU64,
}

impl Slots {
    /// At most `max` held at once.
    pub fn new(max: u64) -> Self {
        Self { held: AtomicU64::new(0), max: AtomicU64::new(max) }
    }

    /// Take `n` slots if they are free.
    #[inline]
    pub fn try_acquire(&self, n: u64) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        let mut held = self.held.load(Ordering::Relaxed);
        loop {
            let Some(next) = held.checked_add(n).filter(|&x| x <= max) else { return false };
            match self.held.compare_exchange_weak(held, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(current) => held = current,
            }
        }
    }

    /// Give back `n` slots; returns how many were actually held and given back.
    pub fn release(&self, n: u64) -> u64 {
        let mut held = self.held.load(Ordering::Relaxed);
        loop {
            let give = n.min(held);
            match self.held.compare_exchange_weak(held, held - give, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return give,
                Err(current) => held = current,
            }
        }
    }

    /// Slots held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Change the maximum (slots already held above it stay held until released).
    pub fn set_max(&self, max: u64) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Set the count of held slots (slots carried over from a previous definition of the limit).
    pub fn force_held(&self, held: u64) {
        self.held.store(held, Ordering::Relaxed);
    }

    /// The current maximum.
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn never_more_than_max_under_contention() {
        let s = Arc::new(Slots::new(20));
        let peak = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (s, peak) = (s.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if s.try_acquire(1) {
                            peak.fetch_max(s.held(), Ordering::Relaxed);
                            s.release(1);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= 20);
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn release_never_goes_below_zero_and_max_can_shrink() {
        let s = Slots::new(3);
        assert!(s.try_acquire(2));
        assert!(!s.try_acquire(2));
        assert_eq!(s.release(5), 2);
        assert_eq!(s.held(), 0);
        assert!(s.try_acquire(3));
        s.set_max(1);
        assert!(!s.try_acquire(1));
        s.release(3);
        assert!(s.try_acquire(1));
        assert!(!s.try_acquire(1));
    }
}
