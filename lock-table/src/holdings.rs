//! The held locks of one file, as a map of disjoint segments.
//!
//! The file's offset space is cut into disjoint segments; each segment lists
//! the owners holding it and how (shared or exclusive). Adjacent segments
//! whose holder sets are equal are always merged, so an owner's locks are
//! exactly the maximal runs of consecutive segments where it holds the same
//! kind. That is the normal form Linux `fs/locks.c` maintains for one owner's
//! POSIX locks (a new lock replaces the owner's lock in its range, merges with
//! adjacent or overlapping locks of the same type, and splits locks of the
//! other type), so per-byte reasoning gives exactly Linux's results.
//!
//! Segments are keyed by start offset in a B-tree, so finding the locks that
//! overlap a range costs O(log n + k) however many locks the file holds.

use crate::ids::{HostId, LockKind, Owner};
use crate::range::Range;
use crate::segmap::SegMap;
use rustc_hash::FxHashMap;
use smallvec::{smallvec, SmallVec};
use std::ops::Bound;

/// One owner's hold on one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Holder {
    pub owner: Owner,
    pub kind: LockKind,
    /// The pid (or NLM svid) that took the lock, for F_GETLK and listings.
    pub pid: u32,
    /// When the lock was taken, in table clock nanoseconds.
    pub since: u64,
}

/// Holders of a segment, sorted by owner.
pub(crate) type Holders = SmallVec<[Holder; 1]>;

#[derive(Clone, Debug)]
pub(crate) struct Segment {
    pub end: u64,
    pub holders: Holders,
}

/// How often each owner appears in the map; tells in O(1) whether an owner
/// still holds anything on this file.
#[derive(Debug)]
enum OwnerCounts {
    Small(SmallVec<[(Owner, u32); 2]>),
    Large(FxHashMap<Owner, u32>),
}

impl Default for OwnerCounts {
    fn default() -> Self {
        OwnerCounts::Small(SmallVec::new())
    }
}

impl OwnerCounts {
    fn get(&self, owner: &Owner) -> u32 {
        match self {
            OwnerCounts::Small(v) => v.iter().find(|(o, _)| o == owner).map_or(0, |&(_, n)| n),
            OwnerCounts::Large(m) => m.get(owner).copied().unwrap_or(0),
        }
    }

    fn add(&mut self, owner: Owner, n: u32, deltas: &mut HostDeltas) {
        note(deltas, owner.host, i64::from(n));
        match self {
            OwnerCounts::Small(v) => {
                if let Some(e) = v.iter_mut().find(|(o, _)| *o == owner) {
                    e.1 += n;
                } else if v.len() < 16 {
                    v.push((owner, n));
                } else {
                    let mut m: FxHashMap<Owner, u32> = v.iter().copied().collect();
                    m.insert(owner, n);
                    *self = OwnerCounts::Large(m);
                }
            }
            OwnerCounts::Large(m) => *m.entry(owner).or_insert(0) += n,
        }
    }

    fn sub(&mut self, owner: Owner, n: u32, deltas: &mut HostDeltas) {
        let taken = match self {
            OwnerCounts::Small(v) => match v.iter().position(|(o, _)| *o == owner) {
                Some(i) => {
                    let taken = v[i].1.min(n);
                    v[i].1 -= taken;
                    if v[i].1 == 0 {
                        v.swap_remove(i);
                    }
                    taken
                }
                None => 0,
            },
            OwnerCounts::Large(m) => match m.get_mut(&owner) {
                Some(c) => {
                    let taken = (*c).min(n);
                    *c -= taken;
                    if *c == 0 {
                        m.remove(&owner);
                    }
                    taken
                }
                None => 0,
            },
        };
        note(deltas, owner.host, -i64::from(taken));
    }

    /// Every owner with its count.
    fn entries(&self) -> Vec<(Owner, u32)> {
        match self {
            OwnerCounts::Small(v) => v.to_vec(),
            OwnerCounts::Large(m) => m.iter().map(|(o, n)| (*o, *n)).collect(),
        }
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        match self {
            OwnerCounts::Small(v) => v.is_empty(),
            OwnerCounts::Large(m) => m.is_empty(),
        }
    }
}

/// Net change of the segments each host's owners hold, since the table last took it.
pub(crate) type HostDeltas = SmallVec<[(HostId, i64); 2]>;

/// Local owners are not counted: the per-host totals serve a limit on remote clients,
/// and the local lock path is the table's hottest.
#[inline]
fn note(deltas: &mut HostDeltas, host: HostId, n: i64) {
    if host == HostId::LOCAL || n == 0 {
        return;
    }
    match deltas.iter_mut().find(|(h, _)| *h == host) {
        Some(e) => e.1 += n,
        None => deltas.push((host, n)),
    }
}

/// What a change did to one owner's presence on the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Presence {
    /// The owner held nothing here before and holds something now.
    Gained,
    /// The owner held something here before and holds nothing now.
    Lost,
    Unchanged,
}

/// A held lock reconstructed from segments: one owner's maximal run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub owner: Owner,
    pub kind: LockKind,
    pub range: Range,
    pub pid: u32,
    pub since: u64,
}

/// The held locks of one file.
#[derive(Debug, Default)]
pub(crate) struct Holdings {
    segs: SegMap,
    counts: OwnerCounts,
    /// Segment-count changes per host, for the table's per-host totals (NLM's limit
    /// on the locks one client may hold).
    host_deltas: HostDeltas,
}

#[inline]
fn conflicts(h: &Holder, kind: LockKind, selves: &[Owner]) -> bool {
    kind.conflicts_with(h.kind) && !selves.iter().any(|s| s.covers(&h.owner))
}

impl Holdings {
    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    /// Whether `owner` holds any lock on this file.
    pub fn holds(&self, owner: &Owner) -> bool {
        self.counts.get(owner) > 0
    }

    /// Owners holding anything on this file.
    #[cfg(test)]
    pub fn owners(&self) -> Vec<Owner> {
        self.counts.entries().into_iter().map(|(o, _)| o).collect()
    }

    /// Segments overlapping `r`, in offset order.
    fn overlapping(&self, r: Range) -> impl Iterator<Item = (u64, &Segment)> {
        let before = self
            .segs
            .last_before(r.start())
            .filter(|(_, s)| s.end >= r.start());
        before.into_iter().chain(
            self.segs
                .range(Bound::Included(r.start()), Bound::Included(r.end())),
        )
    }

    /// The first held lock (lowest offset) that conflicts with a `kind` lock
    /// on `r` by an owner other than `selves`, as that owner's whole run.
    /// Within one segment an exclusive holder is reported before shared ones,
    /// then the oldest.
    pub fn first_conflict(&self, r: Range, kind: LockKind, selves: &[Owner]) -> Option<Run> {
        for (start, seg) in self.overlapping(r) {
            let mut best: Option<&Holder> = None;
            for h in seg.holders.iter().filter(|h| conflicts(h, kind, selves)) {
                best = match best {
                    None => Some(h),
                    Some(b) => {
                        let better = (h.kind == LockKind::Exclusive && b.kind == LockKind::Shared)
                            || (h.kind == b.kind && h.since < b.since);
                        Some(if better { h } else { b })
                    }
                };
            }
            if let Some(h) = best {
                return Some(self.run_of(start, h));
            }
        }
        None
    }

    /// Whether any held lock conflicts (cheaper than [`Self::first_conflict`]).
    pub fn has_conflict(&self, r: Range, kind: LockKind, selves: &[Owner]) -> bool {
        self.overlapping(r)
            .any(|(_, seg)| seg.holders.iter().any(|h| conflicts(h, kind, selves)))
    }

    /// Every owner whose held locks conflict, for the wait-for graph.
    pub fn conflicting_owners(
        &self,
        r: Range,
        kind: LockKind,
        selves: &[Owner],
        out: &mut SmallVec<[Owner; 8]>,
    ) {
        for (_, seg) in self.overlapping(r) {
            for h in seg.holders.iter().filter(|h| conflicts(h, kind, selves)) {
                if !out.contains(&h.owner) {
                    out.push(h.owner);
                }
            }
        }
    }

    /// Whether `owner` holds an exclusive lock overlapping `r`.
    pub fn holds_exclusive_in(&self, owner: &Owner, r: Range) -> bool {
        self.overlapping(r).any(|(_, seg)| {
            seg.holders
                .iter()
                .any(|h| h.owner == *owner && h.kind == LockKind::Exclusive)
        })
    }

    /// The maximal run of `holder`'s owner around the segment at `start`.
    fn run_of(&self, start: u64, holder: &Holder) -> Run {
        let same = |seg: &Segment| {
            seg.holders
                .iter()
                .any(|h| h.owner == holder.owner && h.kind == holder.kind)
        };
        let mut run_start = start;
        let mut since = holder.since;
        let mut pid = holder.pid;
        for (k, seg) in self
            .segs
            .range(Bound::Unbounded, Bound::Excluded(start))
            .rev()
        {
            if seg.end.checked_add(1) != Some(run_start) || !same(seg) {
                break;
            }
            run_start = k;
            if let Some(h) = seg.holders.iter().find(|h| h.owner == holder.owner) {
                if h.since < since {
                    since = h.since;
                    pid = h.pid;
                }
            }
        }
        let mut run_end = self.segs.get(start).map_or(start, |s| s.end);
        if run_end < u64::MAX {
            for (k, seg) in self.segs.range(Bound::Excluded(start), Bound::Unbounded) {
                if run_end.checked_add(1) != Some(k) || !same(seg) {
                    break;
                }
                run_end = seg.end;
                if run_end == u64::MAX {
                    break;
                }
            }
        }
        Run {
            owner: holder.owner,
            kind: holder.kind,
            // run_start <= start <= run_end by construction.
            range: Range::new(run_start, run_end).unwrap_or(Range::WHOLE),
            pid,
            since,
        }
    }

    /// Cut the segment containing `at` (if it starts before `at`) in two.
    fn split_at(&mut self, at: u64) {
        let Some((k, seg)) = self.segs.last_before_mut(at) else {
            return;
        };
        if seg.end < at {
            return;
        }
        let right = Segment {
            end: seg.end,
            holders: seg.holders.clone(),
        };
        seg.end = at - 1;
        debug_assert!(k < at);
        for h in &right.holders {
            self.counts.add(h.owner, 1, &mut self.host_deltas);
        }
        self.segs.insert(at, right);
    }

    /// Set `owner`'s hold on every byte of `r` to `kind` (`None` unlocks),
    /// leaving other bytes and other owners untouched, then restore the
    /// normal form. The caller has already checked for conflicts.
    pub fn set(
        &mut self,
        owner: Owner,
        kind: Option<LockKind>,
        r: Range,
        pid: u32,
        since: u64,
    ) -> Presence {
        let before = self.counts.get(&owner) > 0;
        if kind.is_none() && !before {
            return Presence::Unchanged;
        }
        if let Some(p) = self.set_fast(owner, kind, r, pid, since, before) {
            return p;
        }
        self.split_at(r.start());
        if let Some(after_end) = r.end().checked_add(1) {
            self.split_at(after_end);
        }
        let starts: SmallVec<[u64; 8]> = self
            .segs
            .range(Bound::Included(r.start()), Bound::Included(r.end()))
            .map(|(k, _)| k)
            .collect();
        let new_holder = |kind| Holder {
            owner,
            kind,
            pid,
            since,
        };
        // The next offset of `r` not yet visited; None once past u64::MAX.
        let mut pos = Some(r.start());
        for k in starts {
            if let (Some(kind), Some(p)) = (kind, pos) {
                if k > p {
                    self.segs.insert(
                        p,
                        Segment {
                            end: k - 1,
                            holders: smallvec![new_holder(kind)],
                        },
                    );
                    self.counts.add(owner, 1, &mut self.host_deltas);
                }
            }
            let Some(seg) = self.segs.get_mut(k) else {
                continue;
            };
            pos = seg.end.checked_add(1);
            match (seg.holders.binary_search_by(|h| h.owner.cmp(&owner)), kind) {
                (Ok(i), None) => {
                    seg.holders.remove(i);
                    self.counts.sub(owner, 1, &mut self.host_deltas);
                }
                (Ok(i), Some(kind)) => {
                    if seg.holders[i].kind != kind {
                        seg.holders[i] = new_holder(kind);
                    }
                }
                (Err(i), Some(kind)) => {
                    seg.holders.insert(i, new_holder(kind));
                    self.counts.add(owner, 1, &mut self.host_deltas);
                }
                (Err(_), None) => {}
            }
            if seg.holders.is_empty() {
                self.segs.remove(k);
            }
        }
        if let (Some(kind), Some(p)) = (kind, pos) {
            if p <= r.end() {
                self.segs.insert(
                    p,
                    Segment {
                        end: r.end(),
                        holders: smallvec![new_holder(kind)],
                    },
                );
                self.counts.add(owner, 1, &mut self.host_deltas);
            }
        }
        self.coalesce(r);
        let after = self.counts.get(&owner) > 0;
        match (before, after) {
            (false, true) => Presence::Gained,
            (true, false) => Presence::Lost,
            _ => Presence::Unchanged,
        }
    }

    /// The two commonest changes without splitting or merging: a lock that
    /// neither overlaps nor touches any held byte, and the unlock of exactly
    /// one segment held by the owner alone. `None` when neither applies.
    #[inline]
    fn set_fast(
        &mut self,
        owner: Owner,
        kind: Option<LockKind>,
        r: Range,
        pid: u32,
        since: u64,
        before: bool,
    ) -> Option<Presence> {
        match kind {
            Some(kind) => {
                // Nothing may start at or before end + 1 and reach start - 1.
                let reach = r.end().saturating_add(1);
                if let Some((_, seg)) = self.segs.last_at_or_before(reach) {
                    if seg.end >= r.start().saturating_sub(1) {
                        return None;
                    }
                }
                // A neighbour starting exactly at end + 1 was found above
                // unless end is u64::MAX, where there is no such byte.
                self.segs.insert(
                    r.start(),
                    Segment {
                        end: r.end(),
                        holders: smallvec![Holder {
                            owner,
                            kind,
                            pid,
                            since,
                        }],
                    },
                );
                self.counts.add(owner, 1, &mut self.host_deltas);
                Some(if before {
                    Presence::Unchanged
                } else {
                    Presence::Gained
                })
            }
            None => {
                let seg = self.segs.get(r.start())?;
                if seg.end != r.end() || seg.holders.len() != 1 || seg.holders[0].owner != owner {
                    return None;
                }
                self.segs.remove(r.start());
                self.counts.sub(owner, 1, &mut self.host_deltas);
                Some(if self.counts.get(&owner) == 0 {
                    Presence::Lost
                } else {
                    Presence::Unchanged
                })
            }
        }
    }

    /// Merge equal adjacent segments from the one before `r` to the one after.
    fn coalesce(&mut self, r: Range) {
        let lo = self
            .segs
            .last_before(r.start())
            .map_or(r.start(), |(k, _)| k);
        let hi = r.end().saturating_add(1);
        let keys: SmallVec<[u64; 8]> = self
            .segs
            .range(Bound::Included(lo), Bound::Included(hi))
            .map(|(k, _)| k)
            .collect();
        self.coalesce_keys(&keys);
    }

    fn coalesce_keys(&mut self, keys: &[u64]) {
        let mut iter = keys.iter().copied();
        let Some(mut cur) = iter.next() else {
            return;
        };
        for next in iter {
            let mergeable = match (self.segs.get(cur), self.segs.get(next)) {
                (Some(a), Some(b)) => {
                    a.end.checked_add(1) == Some(next) && same_holders(&a.holders, &b.holders)
                }
                _ => false,
            };
            if !mergeable {
                cur = next;
                continue;
            }
            let Some(b) = self.segs.remove(next) else {
                continue;
            };
            for h in &b.holders {
                self.counts.sub(h.owner, 1, &mut self.host_deltas);
            }
            if let Some(a) = self.segs.get_mut(cur) {
                a.end = b.end;
                for (ha, hb) in a.holders.iter_mut().zip(b.holders.iter()) {
                    if hb.since < ha.since {
                        ha.since = hb.since;
                        ha.pid = hb.pid;
                    }
                }
            }
        }
    }

    /// Hands over the per-host segment-count changes made since the last call.
    #[inline]
    pub fn take_host_deltas(&mut self) -> Option<HostDeltas> {
        (!self.host_deltas.is_empty()).then(|| std::mem::take(&mut self.host_deltas))
    }

    /// Segments held by `owner` (at least its number of locks, more where other
    /// owners' locks cut its runs).
    #[cfg(test)]
    pub fn segments_of(&self, owner: &Owner) -> u32 {
        self.counts.get(owner)
    }

    /// Drop every lock of `owner`. Returns whether it held an exclusive lock.
    pub fn remove_owner(&mut self, owner: &Owner) -> bool {
        if self.counts.get(owner) == 0 {
            return false;
        }
        let mut had_exclusive = false;
        self.segs.for_each_mut(|_, seg| {
            if let Ok(i) = seg.holders.binary_search_by(|h| h.owner.cmp(owner)) {
                had_exclusive |= seg.holders[i].kind == LockKind::Exclusive;
                seg.holders.remove(i);
            }
        });
        self.segs.retain(|seg| !seg.holders.is_empty());
        self.counts.sub(*owner, u32::MAX, &mut self.host_deltas);
        let keys: Vec<u64> = self.segs.iter().map(|(k, _)| k).collect();
        self.coalesce_keys(&keys);
        had_exclusive
    }

    /// Drop every lock. Returns the owners that held something and whether
    /// any of them held an exclusive lock.
    pub fn clear(&mut self) -> (Vec<Owner>, bool) {
        let had_exclusive = self
            .segs
            .iter()
            .any(|(_, s)| s.holders.iter().any(|h| h.kind == LockKind::Exclusive));
        let entries = self.counts.entries();
        for &(o, n) in &entries {
            note(&mut self.host_deltas, o.host, -i64::from(n));
        }
        let owners = entries.into_iter().map(|(o, _)| o).collect();
        self.segs.clear();
        self.counts = OwnerCounts::default();
        (owners, had_exclusive)
    }

    /// Every held lock as (owner, kind, maximal run), in offset order of
    /// their starts.
    pub fn runs(&self, out: &mut Vec<Run>) {
        let mut open: FxHashMap<Owner, Run> = FxHashMap::default();
        for (start, seg) in self.segs.iter() {
            for h in &seg.holders {
                match open.get_mut(&h.owner) {
                    Some(run)
                        if run.kind == h.kind && run.range.end().checked_add(1) == Some(start) =>
                    {
                        run.range = Range::new(run.range.start(), seg.end).unwrap_or(run.range);
                        run.since = run.since.min(h.since);
                    }
                    _ => {
                        let run = Run {
                            owner: h.owner,
                            kind: h.kind,
                            range: Range::new(start, seg.end).unwrap_or(Range::WHOLE),
                            pid: h.pid,
                            since: h.since,
                        };
                        if let Some(prev) = open.insert(h.owner, run) {
                            out.push(prev);
                        }
                    }
                }
            }
            // Runs not continued by this segment are complete.
            open.retain(|_, run| {
                if run.range.end() < seg.end {
                    out.push(*run);
                    false
                } else {
                    true
                }
            });
        }
        out.extend(open.into_values());
        out.sort_by_key(|r| (r.range.start(), r.owner));
    }

    #[cfg(test)]
    pub fn check_invariants(&self) {
        let mut prev_end: Option<u64> = None;
        let mut counts: FxHashMap<Owner, u32> = FxHashMap::default();
        let mut prev: Option<&Segment> = None;
        for (k, seg) in self.segs.iter() {
            assert!(k <= seg.end, "segment {k} ends before it starts");
            if let Some(pe) = prev_end {
                assert!(k > pe, "segments overlap at {k}");
                if pe.checked_add(1) == Some(k) {
                    assert!(
                        !same_holders(&prev.unwrap().holders, &seg.holders),
                        "equal adjacent segments at {k} were not merged"
                    );
                }
            }
            assert!(!seg.holders.is_empty(), "empty segment at {k}");
            for w in seg.holders.windows(2) {
                assert!(w[0].owner < w[1].owner, "holders unsorted or repeated");
            }
            let excl = seg.holders.iter().any(|h| h.kind == LockKind::Exclusive);
            assert!(
                !excl || seg.holders.len() == 1,
                "exclusive lock shares segment {k} with another owner"
            );
            for h in &seg.holders {
                *counts.entry(h.owner).or_insert(0) += 1;
            }
            prev_end = Some(seg.end);
            prev = Some(seg);
        }
        for (o, n) in &counts {
            assert_eq!(self.counts.get(o), *n, "owner count drifted for {o:?}");
        }
        assert_eq!(self.counts.entries().len(), counts.len());
        assert_eq!(self.counts.is_empty(), counts.is_empty());
    }
}

fn same_holders(a: &Holders, b: &Holders) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|(x, y)| x.owner == y.owner && x.kind == y.kind)
}
