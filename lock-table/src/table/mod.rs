//! The lock table: every file's held locks and wait queue, the owner index
//! for bulk release, scopes with their grace gates, and value blocks.
//!
//! All methods are synchronous and never call out: wake-ups are queued as
//! [`Event`]s that the caller drains with [`LockTable::take_events`] after it
//! has released whatever lock protects the table (see [`crate::shared`]).
//!
//! Waiters are granted in FIFO order per file. A blocking request whose owner
//! holds no lock anywhere in the table also queues behind an earlier waiter it
//! conflicts with, even if no held lock is in its way, so a waiting writer is
//! not overtaken forever by a stream of readers. Owners that already hold
//! locks are exempt: queueing them behind a waiter that may be waiting for
//! their own locks would deadlock them, and because only owners holding
//! nothing ever yield, yielding can never close a cycle. Non-blocking
//! requests follow POSIX exactly: granted unless a held lock conflicts.
//!
//! The table's state and housekeeping live here; its operations are grouped
//! in private modules by what they decide: `locks` (take, convert, release,
//! test), `queue` (waiting and granting), `deadlock`, `mandatory` I/O, bulk
//! `release`, `grace`, `value_blocks` and `listing`.

mod deadlock;
mod grace;
mod inflight;
mod listing;
mod locks;
mod mandatory;
mod queue;
mod release;
mod value_blocks;

pub use inflight::IoTicket;

use crate::holdings::{Holdings, Run};
use crate::ids::{FileId, LockKind, Owner, ScopeId};
use crate::idset::IdSet;
use crate::lvb::LvbValue;
use crate::ops::*;
use crate::probe::Probe;
use crate::range::Range;
use crate::registry::Registry;
use inflight::InFlight;
use mandatory::io_selves;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use lockfs_probes::EventKind as ProbeKind;

/// Idle entries tolerated before the first sweep.
const SWEEP_MIN: usize = 1024;

/// A queued request.
#[derive(Debug)]
struct Waiter {
    owner: Owner,
    /// The open file of an I/O waiter, whose locks are the caller's own.
    open_file: Option<Owner>,
    file: FileId,
    range: Range,
    kind: LockKind,
    pid: u32,
    since: u64,
    /// The front door's tag, echoed in the event that ends the wait.
    token: u64,
    waits_for: WaitFor,
}

impl Waiter {
    fn selves(&self) -> SmallVec<[Owner; 3]> {
        io_selves(self.owner, self.open_file)
    }

    fn conflicts_with(&self, other: &Waiter) -> bool {
        self.owner != other.owner
            && self.range.overlaps(&other.range)
            && self.kind.conflicts_with(other.kind)
    }
}

/// One file's held locks, wait queue, admitted I/O, scope and value block.
#[derive(Debug)]
pub(crate) struct FileState {
    pub(crate) holdings: Holdings,
    queue: VecDeque<WaiterId>,
    /// Mandatory-locked I/O admitted and not yet finished (see `inflight`).
    inflight: SmallVec<[InFlight; 1]>,
    scope: ScopeId,
    pub(crate) lvb: Option<Box<LvbValue>>,
}

impl FileState {
    pub(crate) fn new(scope: ScopeId) -> Self {
        FileState {
            holdings: Holdings::default(),
            queue: VecDeque::new(),
            inflight: SmallVec::new(),
            scope,
            lvb: None,
        }
    }

    /// No locks, waiters or value block: nothing that belongs to a scope.
    fn has_no_lock_state(&self) -> bool {
        self.holdings.is_empty() && self.queue.is_empty() && self.lvb.is_none()
    }

    fn is_idle(&self) -> bool {
        self.has_no_lock_state() && self.inflight.is_empty()
    }

    pub(crate) fn invalidate_lvb(&mut self) {
        let lvb = self.lvb.get_or_insert_with(Default::default);
        lvb.valid = false;
    }
}

/// What an owner holds and waits for, for bulk release and deadlock search.
#[derive(Debug, Default)]
struct OwnerEntry {
    files: IdSet<FileId>,
    waiters: SmallVec<[WaiterId; 1]>,
}

impl OwnerEntry {
    fn is_empty(&self) -> bool {
        self.files.is_empty() && self.waiters.is_empty()
    }
}

/// A scope's state: whether it is in its grace period.
#[derive(Debug, Default, Clone, Copy)]
struct ScopeState {
    grace: bool,
}

/// The lock table. See the crate documentation for the model.
#[derive(Debug)]
pub struct LockTable {
    pub(crate) files: FxHashMap<FileId, FileState>,
    owners: FxHashMap<Owner, OwnerEntry>,
    waiters: FxHashMap<WaiterId, Waiter>,
    scopes: FxHashMap<ScopeId, ScopeState>,
    registry: Registry,
    /// Lock segments held by each remote host's owners, by host index (see
    /// [`LockTable::host_segments`]).
    host_segments: Vec<u64>,
    events: Vec<Event>,
    next_waiter: u64,
    next_io: u64,
    /// Threads waiting in [`crate::SharedTable::lock`] for in-flight I/O.
    pub(crate) io_sleepers: usize,
    idle_notes: usize,
    epoch: Instant,
    epoch_wall: SystemTime,
}

impl Default for LockTable {
    fn default() -> Self {
        Self::new()
    }
}

impl LockTable {
    pub fn new() -> Self {
        LockTable {
            files: FxHashMap::default(),
            owners: FxHashMap::default(),
            waiters: FxHashMap::default(),
            scopes: FxHashMap::default(),
            registry: Registry::default(),
            host_segments: Vec::new(),
            events: Vec::new(),
            next_waiter: 1,
            next_io: 1,
            io_sleepers: 0,
            idle_notes: 0,
            epoch: Instant::now(),
            epoch_wall: SystemTime::now(),
        }
    }

    /// Host and NLM owner interning.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    #[inline]
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn wall(&self, t: u64) -> SystemTime {
        self.epoch_wall + Duration::from_nanos(t)
    }

    fn holding(&self, run: Run) -> Holding {
        Holding {
            owner: run.owner,
            kind: run.kind,
            range: run.range,
            pid: run.pid,
            since: self.wall(run.since),
        }
    }

    /// Move the events produced so far into `out` (appending).
    pub fn take_events(&mut self, out: &mut Vec<Event>) {
        out.append(&mut self.events);
    }

    /// Whether events are waiting to be taken.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The pid (or svid) an owner's locks on a file were taken with, for
    /// release announcements (only looked up while a tracer wants them).
    fn holder_pid(&self, file: FileId, owner: &Owner) -> u32 {
        let mut runs = Vec::new();
        if let Some(f) = self.files.get(&file) {
            f.holdings.runs(&mut runs);
        }
        runs.iter().find(|r| r.owner == *owner).map_or(0, |r| r.pid)
    }

    /// The wait-ended announcement of a waiter leaving the queue.
    fn waiter_probe(&self, id: WaiterId, w: &Waiter) -> Probe {
        Probe::new(ProbeKind::WaitEnded, w.file, w.owner, w.pid)
            .kind(w.kind)
            .range(w.range)
            .waiter(id.0)
    }

    fn remove_waiter(&mut self, id: WaiterId) -> Option<Waiter> {
        let w = self.waiters.remove(&id)?;
        if let Some(f) = self.files.get_mut(&w.file) {
            if let Some(pos) = f.queue.iter().position(|x| *x == id) {
                f.queue.remove(pos);
            }
        }
        if let Some(e) = self.owners.get_mut(&w.owner) {
            if let Some(pos) = e.waiters.iter().position(|x| *x == id) {
                e.waiters.swap_remove(pos);
            }
            if e.is_empty() {
                self.idle_notes += 1;
            }
        }
        Some(w)
    }

    fn forget_owner_file(&mut self, owner: Owner, file: FileId) {
        if let Some(e) = self.owners.get_mut(&owner) {
            e.files.remove(&file);
            if e.is_empty() {
                self.idle_notes += 1;
            }
        }
    }

    /// Note that a file or owner entry may have become idle. Idle entries
    /// are kept for reuse (a lock and unlock pair then touches no hash map
    /// structure) and swept once the notes outnumber a fraction of the
    /// table, which keeps memory within a constant factor of the live state
    /// at amortised O(1) cost.
    fn note_maybe_idle(&mut self) {
        self.idle_notes += 1;
        if self.idle_notes > SWEEP_MIN.max((self.files.len() + self.owners.len()) / 2) {
            self.sweep();
        }
    }

    fn sweep(&mut self) {
        self.files.retain(|_, f| !f.is_idle());
        self.owners.retain(|_, e| !e.is_empty());
        self.idle_notes = 0;
    }

    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut per_host = vec![0u64; self.host_segments.len()];
        for f in self.files.values() {
            for o in f.holdings.owners() {
                if o.host != crate::ids::HostId::LOCAL {
                    per_host[o.host.0 as usize] += u64::from(f.holdings.segments_of(&o));
                }
            }
        }
        assert_eq!(
            self.host_segments, per_host,
            "per-host segment totals drifted"
        );
        for (id, f) in &self.files {
            f.holdings.check_invariants();
            for o in f.holdings.owners() {
                assert!(
                    self.owners
                        .get(&o)
                        .is_some_and(|e| e.files.to_vec().contains(id)),
                    "owner index misses {o:?} on {id:?}"
                );
            }
            for w in &f.queue {
                let wt = self.waiters.get(w).expect("queued waiter exists");
                assert_eq!(wt.file, *id);
            }
        }
        for (o, e) in &self.owners {
            for f in e.files.to_vec() {
                assert!(
                    self.files.get(&f).is_some_and(|fs| fs.holdings.holds(o)),
                    "owner index lists {f:?} for {o:?} but it holds nothing there"
                );
            }
            for w in &e.waiters {
                assert_eq!(self.waiters.get(w).map(|w| w.owner), Some(*o));
            }
        }
        let queued: usize = self.files.values().map(|f| f.queue.len()).sum();
        assert_eq!(queued, self.waiters.len(), "waiter map and queues disagree");
    }
}

/// Adds a file's per-host segment-count changes to the table's totals.
#[inline]
fn settle(totals: &mut Vec<u64>, holdings: &mut Holdings) {
    let Some(deltas) = holdings.take_host_deltas() else {
        return;
    };
    for (host, d) in deltas {
        let i = host.0 as usize;
        if i >= totals.len() {
            totals.resize(i + 1, 0);
        }
        totals[i] = totals[i].saturating_add_signed(d);
    }
}
