//! The free addresses of our own ranges, as a set of disjoint intervals.
//!
//! Allocation asks for the lowest free address in a subnet: with intervals that is one
//! ordered-map lookup, not a scan over the allocations (the bench allocates a /16).

use std::collections::BTreeMap;

/// Disjoint, non-adjacent half-open intervals `[start, end)` of free addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FreeSet {
    intervals: BTreeMap<u64, u64>,
    total: u64,
}

impl FreeSet {
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Adds `[start, end)`, which may touch or overlap existing intervals.
    pub(crate) fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        // Absorb an interval that reaches `start` from the left.
        if let Some((&s, &e)) = self.intervals.range(..=start).next_back()
            && e >= start
        {
            start = s;
            end = end.max(e);
            self.intervals.remove(&s);
            self.total -= e - s;
        }
        // Absorb intervals starting inside or right at the end of `[start, end]`.
        while let Some((&s, &e)) = self.intervals.range(start..=end).next() {
            end = end.max(e);
            self.intervals.remove(&s);
            self.total -= e - s;
        }
        self.intervals.insert(start, end);
        self.total += end - start;
    }

    /// Removes `[start, end)` from the set.
    pub(crate) fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let first = match self.intervals.range(..start).next_back() {
            Some((&s, &e)) if e > start => s,
            _ => start,
        };
        let hit: Vec<(u64, u64)> = self
            .intervals
            .range(first..end)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in hit {
            self.intervals.remove(&s);
            self.total -= e - s;
            if s < start {
                self.intervals.insert(s, start);
                self.total += start - s;
            }
            if e > end {
                self.intervals.insert(end, e);
                self.total += e - end;
            }
        }
    }

    pub(crate) fn contains(&self, addr: u64) -> bool {
        matches!(self.intervals.range(..=addr).next_back(), Some((_, &e)) if e > addr)
    }

    /// The lowest free address in `[lo, hi)`.
    pub(crate) fn first_in(&self, lo: u64, hi: u64) -> Option<u64> {
        if lo >= hi {
            return None;
        }
        if self.contains(lo) {
            return Some(lo);
        }
        self.intervals.range(lo..hi).next().map(|(&s, _)| s)
    }

    /// The free intervals overlapping `[lo, hi)`, clipped to it.
    pub(crate) fn intervals_in(&self, lo: u64, hi: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let first = match self.intervals.range(..lo).next_back() {
            Some((&s, &e)) if e > lo => s,
            _ => lo,
        };
        self.intervals
            .range(first..hi.max(first))
            .map(move |(&s, &e)| (s.max(lo), e.min(hi)))
            .filter(|(s, e)| s < e)
    }

    /// Free addresses within `[lo, hi)`.
    #[cfg(test)]
    pub(crate) fn count_in(&self, lo: u64, hi: u64) -> u64 {
        self.intervals_in(lo, hi).map(|(s, e)| e - s).sum()
    }

    #[cfg(test)]
    pub(crate) fn intervals(&self) -> Vec<(u64, u64)> {
        self.intervals.iter().map(|(&s, &e)| (s, e)).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn insert_merges_and_remove_splits() {
        let mut set = FreeSet::default();
        set.insert(10, 20);
        set.insert(20, 30);
        set.insert(5, 8);
        assert_eq!(set.intervals(), vec![(5, 8), (10, 30)]);
        assert_eq!(set.total(), 23);
        set.remove(12, 15);
        assert_eq!(set.intervals(), vec![(5, 8), (10, 12), (15, 30)]);
        assert_eq!(set.first_in(0, 100), Some(5));
        assert_eq!(set.first_in(12, 100), Some(15));
        assert_eq!(set.first_in(16, 100), Some(16));
        assert_eq!(set.first_in(30, 100), None);
        assert_eq!(set.count_in(6, 16), 2 + 2 + 1);
        set.remove(0, 100);
        assert_eq!(set.total(), 0);
    }

    proptest! {
        #[test]
        fn matches_a_plain_set(ops in prop::collection::vec((any::<bool>(), 0u64..64, 0u64..16), 0..60)) {
            let mut set = FreeSet::default();
            let mut model = BTreeSet::new();
            for (add, start, len) in ops {
                let end = start + len;
                if add {
                    set.insert(start, end);
                    model.extend(start..end);
                } else {
                    set.remove(start, end);
                    for a in start..end {
                        model.remove(&a);
                    }
                }
                prop_assert_eq!(set.total(), model.len() as u64);
                let ivs = set.intervals();
                for w in ivs.windows(2) {
                    prop_assert!(w[0].1 < w[1].0, "adjacent or overlapping {:?}", ivs);
                }
                for a in 0..90 {
                    prop_assert_eq!(set.contains(a), model.contains(&a));
                }
                prop_assert_eq!(set.first_in(7, 70), model.range(7..70).next().copied());
                prop_assert_eq!(set.count_in(3, 50), model.range(3..50).count() as u64);
            }
        }
    }
}
