//! Sets of sequence numbers as sorted, disjoint, inclusive ranges.
//!
//! The collector keeps one [`RangeSet`] per stream for what it has committed and one for what it
//! has accepted (committed or buffered); Parquet footers carry them as JSON
//! (`[[first, last], …]`). Sequences are mostly contiguous, so a set is a handful of ranges.

use serde::{Deserialize, Serialize};

/// A set of `u64`, stored as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The ranges, sorted.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// How many numbers the set holds.
    pub fn count(&self) -> u64 {
        self.ranges.iter().map(|(a, b)| b - a + 1).sum()
    }

    /// The largest number in the set.
    pub fn max(&self) -> Option<u64> {
        self.ranges.last().map(|r| r.1)
    }

    /// The highest `n` such that every number from 0 to `n` is in the set (the watermark).
    pub fn contiguous_from_zero(&self) -> Option<u64> {
        match self.ranges.first() {
            Some(&(0, end)) => Some(end),
            _ => None,
        }
    }

    /// The highest `n` such that every number from 0 to `n` is in the set or below `floor`
    /// (numbers below it count as present: see the caller).
    pub fn contiguous_above(&self, floor: u64) -> Option<u64> {
        let mut end = floor.checked_sub(1);
        for &(a, b) in &self.ranges {
            let next = end.map_or(0, |e| e.saturating_add(1));
            if a > next {
                break;
            }
            end = Some(end.map_or(b, |e| e.max(b)));
        }
        end
    }

    /// The smallest number in this set that `other` does not hold.
    pub fn first_not_in(&self, other: &RangeSet) -> Option<u64> {
        for &(a, b) in &self.ranges {
            let mut x = a;
            // Each step jumps past one range of `other`: at most as many steps as it has ranges.
            while x <= b {
                let i = other.ranges.partition_point(|r| r.1 < x);
                match other.ranges.get(i) {
                    Some(&(oa, ob)) if oa <= x => match ob.checked_add(1) {
                        Some(next) => x = next,
                        None => break,
                    },
                    _ => return Some(x),
                }
            }
        }
        None
    }

    /// How many numbers of `from..to` the set holds.
    pub fn count_in(&self, from: u64, to: u64) -> u64 {
        self.ranges
            .iter()
            .map(|&(a, b)| {
                let (lo, hi) = (a.max(from), b.saturating_add(1).min(to));
                hi.saturating_sub(lo)
            })
            .sum()
    }

    /// Whether `x` is in the set.
    pub fn contains(&self, x: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.1 < x);
        self.ranges.get(i).is_some_and(|r| r.0 <= x)
    }

    /// Add the inclusive range `first..=last` (ignored when `first > last`).
    pub fn insert(&mut self, first: u64, last: u64) {
        if first > last {
            return;
        }
        // Fast path: appending at the end, the usual case for a sequence.
        if let Some(tail) = self.ranges.last_mut() {
            if first > tail.1 {
                if first == tail.1 + 1 {
                    tail.1 = last;
                } else {
                    self.ranges.push((first, last));
                }
                return;
            }
        } else {
            self.ranges.push((first, last));
            return;
        }
        // General case: merge with every range that overlaps or touches.
        let lo = self.ranges.partition_point(|r| r.1.saturating_add(1) < first);
        let hi = self.ranges.partition_point(|r| r.0 <= last.saturating_add(1));
        let (mut a, mut b) = (first, last);
        if lo < hi {
            a = a.min(self.ranges[lo].0);
            b = b.max(self.ranges[hi - 1].1);
        }
        self.ranges.splice(lo..hi, [(a, b)]);
    }

    /// The ranges of `lo..end` (end exclusive) that are not in the set.
    pub fn gaps(&self, lo: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut next = lo;
        for &(a, b) in &self.ranges {
            if b < next {
                continue;
            }
            if a >= end {
                break;
            }
            if a > next {
                out.push((next, a - 1));
            }
            next = b.saturating_add(1);
            if next >= end {
                break;
            }
        }
        if next < end {
            out.push((next, end - 1));
        }
        out
    }

    /// Add every number of `other`.
    pub fn extend(&mut self, other: &RangeSet) {
        for &(a, b) in &other.ranges {
            self.insert(a, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn matches_a_model_set() {
        let mut state = 99_u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            state >> 33
        };
        for _ in 0..50 {
            let mut set = RangeSet::new();
            let mut model = BTreeSet::new();
            for _ in 0..40 {
                let a = next() % 200;
                let b = a + next() % 10;
                set.insert(a, b);
                model.extend(a..=b);
            }
            for x in 0..220 {
                assert_eq!(set.contains(x), model.contains(&x), "x = {x}, set = {set:?}");
            }
            assert_eq!(set.count(), model.len() as u64);
            for w in set.ranges().windows(2) {
                assert!(w[0].1 + 1 < w[1].0, "ranges must be disjoint and not adjacent: {set:?}");
            }
        }
    }

    #[test]
    fn gaps_are_the_complement_within_bounds() {
        let mut s = RangeSet::new();
        assert_eq!(s.gaps(0, 10), vec![(0, 9)]);
        s.insert(2, 3);
        s.insert(6, 20);
        assert_eq!(s.gaps(0, 10), vec![(0, 1), (4, 5)]);
        assert_eq!(s.gaps(3, 30), vec![(4, 5), (21, 29)]);
        assert_eq!(s.gaps(7, 8), vec![]);
        assert_eq!(s.gaps(5, 5), vec![]);
    }

    #[test]
    fn watermark_is_the_contiguous_prefix() {
        let mut s = RangeSet::new();
        assert_eq!(s.contiguous_from_zero(), None);
        s.insert(5, 9);
        assert_eq!(s.contiguous_from_zero(), None);
        s.insert(0, 3);
        assert_eq!(s.contiguous_from_zero(), Some(3));
        s.insert(4, 4);
        assert_eq!(s.contiguous_from_zero(), Some(9));
        assert_eq!(serde_json::to_string(&s).unwrap(), "[[0,9]]");
    }

    #[test]
    fn numbers_below_a_floor_count_as_present() {
        let mut s = RangeSet::new();
        assert_eq!(s.contiguous_above(0), None);
        assert_eq!(s.contiguous_above(5), Some(4));
        s.insert(0, 9);
        s.insert(20, 29);
        assert_eq!(s.contiguous_above(0), Some(9));
        assert_eq!(s.contiguous_above(15), Some(14), "15..19 can still be sent: not past them");
        assert_eq!(s.contiguous_above(20), Some(29));
        assert_eq!(s.contiguous_above(40), Some(39));
        assert_eq!((s.count_in(5, 25), s.count_in(10, 20), s.count_in(0, u64::MAX)), (10, 0, 20));
        let mut more = s.clone();
        assert_eq!(more.first_not_in(&s), None);
        more.insert(10, 12);
        more.insert(40, 41);
        assert_eq!(more.first_not_in(&s), Some(10));
        s.insert(10, 12);
        assert_eq!(more.first_not_in(&s), Some(40));
    }
}
