//! A line said again and again (a refusal, an error a loop meets on every turn) said at most once
//! per interval, with how many were left unsaid since.

use std::time::{Duration, Instant};

/// When a repeated line was last said, and how many times it was left unsaid since.
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    unsaid: u64,
}

impl Throttle {
    /// Say the line at most once per `every`.
    pub const fn new(every: Duration) -> Self {
        Self { every, last: None, unsaid: 0 }
    }

    /// Whether to say the line now: `Some(times left unsaid since the last one)`, or `None` (and
    /// this one is counted as unsaid).
    pub fn admit(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            self.unsaid = self.unsaid.saturating_add(1);
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.unsaid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_said_then_the_rest_are_counted_until_the_interval_passes() {
        let mut t = Throttle::new(Duration::from_millis(50));
        assert_eq!(t.admit(), Some(0));
        assert_eq!(t.admit(), None);
        assert_eq!(t.admit(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.admit(), Some(2));
        assert_eq!(t.admit(), None);
    }
}
