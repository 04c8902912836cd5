//! An ordered map from segment start to segment that is a sorted vector
//! while small and a B-tree once large.
//!
//! Almost every file holds a handful of locks, where a binary search over a
//! short contiguous vector beats B-tree navigation several times over and a
//! lock/unlock pair allocates nothing (the vector keeps its capacity). Files
//! with many locks switch to a B-tree so that every operation stays
//! O(log n), and switch back once they shrink.

use crate::holdings::Segment;
use std::collections::btree_map;
use std::collections::BTreeMap;
use std::ops::Bound;

/// Above this many segments the map becomes a B-tree.
#[cfg(not(test))]
const SMALL_MAX: usize = 32;
/// At or below this many segments a B-tree becomes a vector again.
#[cfg(not(test))]
const DEMOTE_AT: usize = 8;
// Tests switch representations constantly, so the property test checks
// both and every transition between them.
#[cfg(test)]
const SMALL_MAX: usize = 4;
#[cfg(test)]
const DEMOTE_AT: usize = 2;

#[derive(Debug)]
pub(crate) enum SegMap {
    Small(Vec<(u64, Segment)>),
    Large(BTreeMap<u64, Segment>),
}

impl Default for SegMap {
    fn default() -> Self {
        SegMap::Small(Vec::new())
    }
}

/// Iterator over `(start, &segment)` in key order, either representation.
pub(crate) enum Iter<'a> {
    Small(std::slice::Iter<'a, (u64, Segment)>),
    Large(btree_map::Range<'a, u64, Segment>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = (u64, &'a Segment);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Small(it) => it.next().map(|(k, s)| (*k, s)),
            Iter::Large(it) => it.next().map(|(k, s)| (*k, s)),
        }
    }
}

impl DoubleEndedIterator for Iter<'_> {
    #[inline]
    fn next_back(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Small(it) => it.next_back().map(|(k, s)| (*k, s)),
            Iter::Large(it) => it.next_back().map(|(k, s)| (*k, s)),
        }
    }
}

/// Index range of a sorted vector covering keys within the bounds.
#[inline]
fn slice_bounds(v: &[(u64, Segment)], lo: Bound<u64>, hi: Bound<u64>) -> (usize, usize) {
    let a = match lo {
        Bound::Unbounded => 0,
        Bound::Included(x) => v.partition_point(|(k, _)| *k < x),
        Bound::Excluded(x) => v.partition_point(|(k, _)| *k <= x),
    };
    let b = match hi {
        Bound::Unbounded => v.len(),
        Bound::Included(x) => v.partition_point(|(k, _)| *k <= x),
        Bound::Excluded(x) => v.partition_point(|(k, _)| *k < x),
    };
    (a, b.max(a))
}

impl SegMap {
    #[inline]
    pub fn is_empty(&self) -> bool {
        match self {
            SegMap::Small(v) => v.is_empty(),
            SegMap::Large(m) => m.is_empty(),
        }
    }

    /// Entries with keys within the bounds, in order.
    #[inline]
    pub fn range(&self, lo: Bound<u64>, hi: Bound<u64>) -> Iter<'_> {
        match self {
            SegMap::Small(v) => {
                let (a, b) = slice_bounds(v, lo, hi);
                Iter::Small(v[a..b].iter())
            }
            SegMap::Large(m) => {
                // BTreeMap::range panics on an empty or inverted range.
                let empty = match (lo, hi) {
                    (Bound::Included(a), Bound::Included(b)) => a > b,
                    (Bound::Included(a), Bound::Excluded(b))
                    | (Bound::Excluded(a), Bound::Included(b)) => a >= b,
                    (Bound::Excluded(a), Bound::Excluded(b)) => a >= b,
                    _ => false,
                };
                if empty {
                    Iter::Small([].iter())
                } else {
                    Iter::Large(m.range((lo, hi)))
                }
            }
        }
    }

    pub fn iter(&self) -> Iter<'_> {
        self.range(Bound::Unbounded, Bound::Unbounded)
    }

    /// The entry with the greatest key below `x`.
    #[inline]
    pub fn last_before(&self, x: u64) -> Option<(u64, &Segment)> {
        self.range(Bound::Unbounded, Bound::Excluded(x)).next_back()
    }

    /// The entry with the greatest key at or below `x`.
    #[inline]
    pub fn last_at_or_before(&self, x: u64) -> Option<(u64, &Segment)> {
        self.range(Bound::Unbounded, Bound::Included(x)).next_back()
    }

    pub fn last_before_mut(&mut self, x: u64) -> Option<(u64, &mut Segment)> {
        match self {
            SegMap::Small(v) => {
                let i = v.partition_point(|(k, _)| *k < x);
                if i == 0 {
                    return None;
                }
                let (k, s) = &mut v[i - 1];
                Some((*k, s))
            }
            SegMap::Large(m) => m.range_mut(..x).next_back().map(|(k, s)| (*k, s)),
        }
    }

    #[inline]
    pub fn get(&self, k: u64) -> Option<&Segment> {
        match self {
            SegMap::Small(v) => v
                .binary_search_by_key(&k, |(key, _)| *key)
                .ok()
                .map(|i| &v[i].1),
            SegMap::Large(m) => m.get(&k),
        }
    }

    #[inline]
    pub fn get_mut(&mut self, k: u64) -> Option<&mut Segment> {
        match self {
            SegMap::Small(v) => match v.binary_search_by_key(&k, |(key, _)| *key) {
                Ok(i) => Some(&mut v[i].1),
                Err(_) => None,
            },
            SegMap::Large(m) => m.get_mut(&k),
        }
    }

    pub fn insert(&mut self, k: u64, seg: Segment) {
        match self {
            SegMap::Small(v) => {
                match v.binary_search_by_key(&k, |(key, _)| *key) {
                    Ok(i) => v[i].1 = seg,
                    Err(i) => v.insert(i, (k, seg)),
                }
                if v.len() > SMALL_MAX {
                    let m: BTreeMap<u64, Segment> = std::mem::take(v).into_iter().collect();
                    *self = SegMap::Large(m);
                }
            }
            SegMap::Large(m) => {
                m.insert(k, seg);
            }
        }
    }

    pub fn remove(&mut self, k: u64) -> Option<Segment> {
        match self {
            SegMap::Small(v) => match v.binary_search_by_key(&k, |(key, _)| *key) {
                Ok(i) => Some(v.remove(i).1),
                Err(_) => None,
            },
            SegMap::Large(m) => {
                let out = m.remove(&k);
                if m.len() <= DEMOTE_AT {
                    let v: Vec<(u64, Segment)> = std::mem::take(m).into_iter().collect();
                    *self = SegMap::Small(v);
                }
                out
            }
        }
    }

    pub fn clear(&mut self) {
        match self {
            SegMap::Small(v) => v.clear(),
            SegMap::Large(_) => *self = SegMap::Small(Vec::new()),
        }
    }

    /// Visit every entry mutably, in order.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(u64, &mut Segment)) {
        match self {
            SegMap::Small(v) => v.iter_mut().for_each(|(k, s)| f(*k, s)),
            SegMap::Large(m) => m.iter_mut().for_each(|(k, s)| f(*k, s)),
        }
    }

    /// Drop every entry for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&Segment) -> bool) {
        match self {
            SegMap::Small(v) => v.retain(|(_, s)| keep(s)),
            SegMap::Large(m) => {
                m.retain(|_, s| keep(s));
                if m.len() <= DEMOTE_AT {
                    let v: Vec<(u64, Segment)> = std::mem::take(m).into_iter().collect();
                    *self = SegMap::Small(v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smallvec::SmallVec;

    fn seg(end: u64) -> Segment {
        Segment {
            end,
            holders: SmallVec::new(),
        }
    }

    #[test]
    fn both_representations_answer_alike() {
        let mut m = SegMap::default();
        let mut reference = BTreeMap::new();
        // Grow past the switch, shrink below it, checking all queries.
        let keys: Vec<u64> = (0..100).map(|i| (i * 37) % 101 * 10).collect();
        let check = |m: &SegMap, r: &BTreeMap<u64, Segment>| {
            for x in [0u64, 5, 10, 15, 500, 505, 1000, 1010, u64::MAX] {
                assert_eq!(
                    m.last_before(x).map(|e| e.0),
                    r.range(..x).next_back().map(|e| *e.0)
                );
                assert_eq!(
                    m.last_at_or_before(x).map(|e| e.0),
                    r.range(..=x).next_back().map(|e| *e.0)
                );
                let got: Vec<u64> = m
                    .range(Bound::Excluded(x), Bound::Unbounded)
                    .map(|e| e.0)
                    .collect();
                let want: Vec<u64> = r
                    .range((Bound::Excluded(x), Bound::Unbounded))
                    .map(|e| *e.0)
                    .collect();
                assert_eq!(got, want);
                assert_eq!(m.get(x).map(|s| s.end), r.get(&x).map(|s| s.end));
            }
            let got: Vec<u64> = m
                .range(Bound::Included(200), Bound::Included(100))
                .map(|e| e.0)
                .collect();
            assert!(got.is_empty());
        };
        for k in &keys {
            m.insert(*k, seg(*k + 1));
            reference.insert(*k, seg(*k + 1));
            check(&m, &reference);
        }
        assert!(matches!(m, SegMap::Large(_)));
        for k in &keys {
            assert_eq!(
                m.remove(*k).map(|s| s.end),
                reference.remove(k).map(|s| s.end)
            );
            check(&m, &reference);
        }
        assert!(matches!(m, SegMap::Small(_)));
        assert!(m.is_empty());
    }
}
