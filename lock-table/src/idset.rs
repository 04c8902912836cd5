//! A set of small `Copy` ids that stays inline while small.
//!
//! Most owners hold locks on one or two files and most files have one or two
//! lockers, so the index sets are tiny; a few are huge (a server process with
//! thousands of files). Inline storage keeps the common case allocation-free,
//! and a hash set keeps the rare case O(1).

use rustc_hash::FxHashSet;
use smallvec::SmallVec;
use std::hash::Hash;

const INLINE_MAX: usize = 16;

#[derive(Debug, Clone)]
pub(crate) enum IdSet<T: Copy + Eq + Hash> {
    Small(SmallVec<[T; 2]>),
    Large(FxHashSet<T>),
}

impl<T: Copy + Eq + Hash> Default for IdSet<T> {
    fn default() -> Self {
        IdSet::Small(SmallVec::new())
    }
}

impl<T: Copy + Eq + Hash> IdSet<T> {
    pub fn insert(&mut self, v: T) {
        match self {
            IdSet::Small(s) => {
                if s.contains(&v) {
                    return;
                }
                if s.len() < INLINE_MAX {
                    s.push(v);
                } else {
                    let mut set: FxHashSet<T> = s.iter().copied().collect();
                    set.insert(v);
                    *self = IdSet::Large(set);
                }
            }
            IdSet::Large(set) => {
                set.insert(v);
            }
        }
    }

    pub fn remove(&mut self, v: &T) {
        match self {
            IdSet::Small(s) => {
                if let Some(i) = s.iter().position(|x| x == v) {
                    s.swap_remove(i);
                }
            }
            IdSet::Large(set) => {
                set.remove(v);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            IdSet::Small(s) => s.is_empty(),
            IdSet::Large(set) => set.is_empty(),
        }
    }

    pub fn to_vec(&self) -> Vec<T> {
        match self {
            IdSet::Small(s) => s.to_vec(),
            IdSet::Large(set) => set.iter().copied().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_shrinks() {
        let mut s: IdSet<u32> = IdSet::default();
        for i in 0..100 {
            s.insert(i);
            s.insert(i);
        }
        assert!(matches!(s, IdSet::Large(_)));
        assert_eq!(s.to_vec().len(), 100);
        for i in 0..100 {
            s.remove(&i);
        }
        assert!(s.is_empty());
    }
}
