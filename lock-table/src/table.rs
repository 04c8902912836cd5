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

use crate::holdings::{Holdings, Presence, Run};
use crate::ids::{Access, FileId, HostId, LockKind, Owner, ScopeId};
use crate::idset::IdSet;
use crate::lvb::{LvbError, LvbValue, LVB_LEN};
use crate::ops::*;
use crate::probe::{self, Probe};
use crate::range::Range;
use crate::registry::Registry;
use crate::snapshot::{LockInfo, LockState};
use rustc_hash::{FxHashMap, FxHashSet};
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use lockfs_probes::{EventKind as ProbeKind, WaitEndReason};

/// Bound on the owners visited by one deadlock search; past it the search
/// gives up and reports no deadlock (as Linux bounds its walk).
const DEADLOCK_SEARCH_LIMIT: usize = 4096;

/// Idle entries tolerated before the first sweep.
const SWEEP_MIN: usize = 1024;

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
    token: u64,
    io: bool,
}

/// The owners whose locks count as the caller's own for I/O through an open
/// file: its lock owner, and every lock taken through that open file (OFD
/// and flock locks alike).
fn io_selves(owner: Owner, open_file: Option<Owner>) -> SmallVec<[Owner; 3]> {
    let mut s = SmallVec::new();
    s.push(owner);
    match open_file.and_then(|o| o.open_file().map(|fh| (o, fh))) {
        Some((_, fh)) => {
            for o in [Owner::ofd(fh), Owner::flock(fh)] {
                if !s.contains(&o) {
                    s.push(o);
                }
            }
        }
        None => s.extend(open_file),
    }
    s
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

#[derive(Debug)]
pub(crate) struct FileState {
    pub(crate) holdings: Holdings,
    queue: VecDeque<WaiterId>,
    scope: ScopeId,
    pub(crate) lvb: Option<Box<LvbValue>>,
}

impl FileState {
    pub(crate) fn new(scope: ScopeId) -> Self {
        FileState {
            holdings: Holdings::default(),
            queue: VecDeque::new(),
            scope,
            lvb: None,
        }
    }

    fn is_idle(&self) -> bool {
        self.holdings.is_empty() && self.queue.is_empty() && self.lvb.is_none()
    }

    pub(crate) fn invalidate_lvb(&mut self) {
        let lvb = self.lvb.get_or_insert_with(Default::default);
        lvb.valid = false;
    }
}

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

    // ----- scopes -------------------------------------------------------

    /// Start the grace period of a scope: from now until [`Self::end_grace`],
    /// only reclaims are granted in it. Local blocking requests queue until it
    /// ends; other requests are refused with [`Refusal::Grace`].
    pub fn begin_grace(&mut self, scope: ScopeId) {
        self.scopes.entry(scope).or_default().grace = true;
    }

    /// End the grace period of a scope; local requests that waited it out
    /// are decided now.
    pub fn end_grace(&mut self, scope: ScopeId) {
        self.scopes.entry(scope).or_default().grace = false;
        let waiting: Vec<FileId> = self
            .files
            .iter()
            .filter(|(_, f)| f.scope == scope && !f.queue.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for f in waiting {
            self.wake(f);
        }
    }

    pub fn in_grace(&self, scope: ScopeId) -> bool {
        self.scopes.get(&scope).is_some_and(|s| s.grace)
    }

    fn grace_gate(&self, scope: ScopeId, reclaim: bool) -> Option<Refusal> {
        match (self.in_grace(scope), reclaim) {
            (true, false) => Some(Refusal::Grace),
            (false, true) => Some(Refusal::NotInGrace),
            _ => None,
        }
    }

    // ----- locks --------------------------------------------------------

    /// Take, convert or extend a lock (F_SETLK/F_SETLKW, NLM LOCK).
    pub fn lock(&mut self, req: &LockRequest) -> LockOutcome {
        if !probe::contention_enabled() {
            return self.decide_lock(req);
        }
        let base = |kind| Probe::new(kind, req.file, req.owner, req.pid).range(req.range);
        if probe::all_enabled() {
            base(ProbeKind::LockRequested)
                .kind(req.kind)
                .fire(&self.registry);
        }
        let out = self.decide_lock(req);
        let announce = match out {
            LockOutcome::Granted if probe::all_enabled() => {
                Some(base(ProbeKind::LockGranted).kind(req.kind))
            }
            LockOutcome::Granted => None,
            LockOutcome::Queued(id) => {
                Some(base(ProbeKind::LockBlocked).kind(req.kind).waiter(id.0))
            }
            // Grace refusals are not contention: nothing conflicts.
            LockOutcome::Refused(Refusal::Conflict(_) | Refusal::Deadlock) => {
                Some(base(ProbeKind::LockRefused).kind(req.kind))
            }
            LockOutcome::Refused(Refusal::Grace | Refusal::NotInGrace) => None,
        };
        if let Some(p) = announce {
            p.fire(&self.registry);
        }
        out
    }

    fn decide_lock(&mut self, req: &LockRequest) -> LockOutcome {
        // A local program's blocking request waits the grace period out, as an
        // NFS client's lock manager does for its callers, so that it cannot
        // take a lock a remote client is about to reclaim. Everything else that
        // the gate stops is refused.
        let mut sit_out_grace = false;
        if let Some(refusal) = self.grace_gate(req.scope, req.reclaim) {
            sit_out_grace = refusal == Refusal::Grace
                && req.owner.host == HostId::LOCAL
                && matches!(req.wait, Wait::Yes { .. });
            if !sit_out_grace {
                return LockOutcome::Refused(refusal);
            }
        }
        let selves = [req.owner];
        let (conflict, queue_busy) = {
            let file = self
                .files
                .entry(req.file)
                .or_insert_with(|| FileState::new(req.scope));
            if file.is_idle() {
                file.scope = req.scope;
            }
            (
                file.holdings.first_conflict(req.range, req.kind, &selves),
                !file.queue.is_empty(),
            )
        };
        let token = match (conflict, req.wait) {
            (None, Wait::No) => {
                self.grant(req.file, req.owner, req.kind, req.range, req.pid);
                return LockOutcome::Granted;
            }
            (None, Wait::Yes { token }) if sit_out_grace => token,
            (None, Wait::Yes { token }) => {
                // A blocking request of an owner holding nothing yields to
                // earlier conflicting waiters (see the module doc).
                let yields = queue_busy
                    && !req.reclaim
                    && self.owner_holds_nothing(&req.owner)
                    && self.conflicts_with_queue(req.file, req.owner, req.kind, req.range);
                if !yields {
                    self.grant(req.file, req.owner, req.kind, req.range, req.pid);
                    return LockOutcome::Granted;
                }
                token
            }
            (Some(run), Wait::No) => {
                return LockOutcome::Refused(Refusal::Conflict(self.holding(run)));
            }
            (Some(run), Wait::Yes { .. }) if req.reclaim => {
                return LockOutcome::Refused(Refusal::Conflict(self.holding(run)));
            }
            (Some(_), Wait::Yes { token }) => {
                if req.owner.kind.detects_deadlock()
                    && self.would_deadlock(&selves, req.file, req.range, req.kind)
                {
                    self.drop_if_idle(req.file);
                    return LockOutcome::Refused(Refusal::Deadlock);
                }
                token
            }
        };
        LockOutcome::Queued(self.enqueue(Waiter {
            owner: req.owner,
            open_file: None,
            file: req.file,
            range: req.range,
            kind: req.kind,
            pid: req.pid,
            since: 0,
            token,
            io: false,
        }))
    }

    fn owner_holds_nothing(&self, owner: &Owner) -> bool {
        self.owners.get(owner).is_none_or(|e| e.files.is_empty())
    }

    fn conflicts_with_queue(
        &self,
        file: FileId,
        owner: Owner,
        kind: LockKind,
        range: Range,
    ) -> bool {
        let probe = Waiter {
            owner,
            open_file: None,
            file,
            range,
            kind,
            pid: 0,
            since: 0,
            token: 0,
            io: false,
        };
        self.files.get(&file).is_some_and(|f| {
            f.queue
                .iter()
                .filter_map(|id| self.waiters.get(id))
                .any(|w| w.conflicts_with(&probe))
        })
    }

    /// Record a lock as held and keep the owner index in step.
    fn grant(&mut self, file_id: FileId, owner: Owner, kind: LockKind, range: Range, pid: u32) {
        let now = self.now();
        let Some(file) = self.files.get_mut(&file_id) else {
            return;
        };
        let downgrade = kind == LockKind::Shared
            && !file.queue.is_empty()
            && file.holdings.holds_exclusive_in(&owner, range);
        let presence = file.holdings.set(owner, Some(kind), range, pid, now);
        settle(&mut self.host_segments, &mut file.holdings);
        for f in self.note_gain(owner, file_id, presence) {
            self.wake(f);
        }
        if downgrade {
            self.wake(file_id);
        }
    }

    /// Record in the owner index that `owner` now holds something on
    /// `file_id` (when `presence` says it gained). Returns the files whose
    /// queues must be examined again: when this is the owner's first lock
    /// anywhere, it stops yielding to other waiters in every queue it waits
    /// in, this file's included.
    fn note_gain(
        &mut self,
        owner: Owner,
        file_id: FileId,
        presence: Presence,
    ) -> SmallVec<[FileId; 4]> {
        let mut files = SmallVec::new();
        if presence != Presence::Gained {
            return files;
        }
        let entry = self.owners.entry(owner).or_default();
        let first_anywhere = entry.files.is_empty();
        entry.files.insert(file_id);
        if first_anywhere {
            for w in entry.waiters.iter().filter_map(|w| self.waiters.get(w)) {
                if !files.contains(&w.file) {
                    files.push(w.file);
                }
            }
        }
        files
    }

    fn enqueue(&mut self, mut w: Waiter) -> WaiterId {
        // A retransmitted or repeated identical request is the same waiter.
        if let Some(f) = self.files.get(&w.file) {
            for id in &f.queue {
                if let Some(x) = self.waiters.get(id) {
                    if x.owner == w.owner
                        && x.range == w.range
                        && x.kind == w.kind
                        && x.io == w.io
                        && x.open_file == w.open_file
                    {
                        return *id;
                    }
                }
            }
        }
        let id = WaiterId(self.next_waiter);
        self.next_waiter += 1;
        w.since = self.now();
        self.owners.entry(w.owner).or_default().waiters.push(id);
        if let Some(f) = self.files.get_mut(&w.file) {
            f.queue.push_back(id);
        }
        self.waiters.insert(id, w);
        id
    }

    /// Release the bytes of `range` held by `owner` (F_UNLCK, NLM UNLOCK).
    /// Unlocking what is not held is not an error.
    pub fn unlock(&mut self, file_id: FileId, owner: Owner, range: Range) {
        if probe::all_enabled() {
            let pid = self.holder_pid(file_id, &owner);
            for kind in [ProbeKind::LockRequested, ProbeKind::LockReleased] {
                Probe::new(kind, file_id, owner, pid)
                    .range(range)
                    .fire(&self.registry);
            }
        }
        let Some(file) = self.files.get_mut(&file_id) else {
            return;
        };
        let presence = file.holdings.set(owner, None, range, 0, 0);
        settle(&mut self.host_segments, &mut file.holdings);
        let wake = !file.queue.is_empty();
        if presence == Presence::Lost {
            self.forget_owner_file(owner, file_id);
        }
        if wake {
            self.wake(file_id);
        }
        self.drop_if_idle(file_id);
    }

    /// Who would block a lock (F_GETLK, NLM TEST). During grace a remote
    /// owner's answer is [`TestOutcome::Grace`], as NLM requires; a local
    /// program is told what is held now (F_GETLK has no way to say "later").
    pub fn test(&self, req: &TestRequest) -> TestOutcome {
        if self.in_grace(req.scope) && req.owner.host != HostId::LOCAL {
            return TestOutcome::Grace;
        }
        match self
            .files
            .get(&req.file)
            .and_then(|f| f.holdings.first_conflict(req.range, req.kind, &[req.owner]))
        {
            Some(run) => TestOutcome::Conflict(self.holding(run)),
            None => TestOutcome::Free,
        }
    }

    /// Withdraw a queued request. Returns false if it is not queued (it may
    /// have been granted already: the caller then owns the lock and must
    /// unlock it if it no longer wants it).
    pub fn cancel(&mut self, id: WaiterId) -> bool {
        self.cancel_with(id, CancelReason::Cancelled)
    }

    /// [`Self::cancel`], saying why the front door withdraws the request
    /// (a signal, a timeout, an NLM CANCEL); tracers report the reason.
    pub fn cancel_with(&mut self, id: WaiterId, reason: CancelReason) -> bool {
        let Some(w) = self.remove_waiter(id) else {
            return false;
        };
        if probe::contention_enabled() {
            let reason = match reason {
                CancelReason::Cancelled => WaitEndReason::Cancelled,
                CancelReason::Interrupted => WaitEndReason::Interrupted,
                CancelReason::TimedOut => WaitEndReason::TimedOut,
            };
            self.waiter_probe(id, &w)
                .reason(reason)
                .fire(&self.registry);
        }
        // Later waiters may have been yielding to this one.
        self.wake(w.file);
        self.drop_if_idle(w.file);
        true
    }

    /// The queued lock request of `owner` matching exactly (NLM CANCEL names
    /// the request by its arguments, not by an id).
    pub fn find_waiter(
        &self,
        file: FileId,
        owner: Owner,
        kind: LockKind,
        range: Range,
    ) -> Option<WaiterId> {
        let f = self.files.get(&file)?;
        f.queue.iter().copied().find(|id| {
            self.waiters
                .get(id)
                .is_some_and(|w| !w.io && w.owner == owner && w.kind == kind && w.range == range)
        })
    }

    /// The request a waiter stands for: (file, owner, kind, range, io).
    pub fn waiter(&self, id: WaiterId) -> Option<(FileId, Owner, LockKind, Range, bool)> {
        self.waiters
            .get(&id)
            .map(|w| (w.file, w.owner, w.kind, w.range, w.io))
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
    fn drop_if_idle(&mut self, _file: FileId) {
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

    /// Grant whatever queued requests on `file` can now be granted, in FIFO
    /// order, and follow the consequences to other files.
    fn wake(&mut self, file: FileId) {
        let mut work: SmallVec<[FileId; 4]> = SmallVec::new();
        work.push(file);
        while let Some(f) = work.pop() {
            self.scan(f, &mut work);
        }
    }

    fn scan(&mut self, file_id: FileId, work: &mut SmallVec<[FileId; 4]>) {
        // Earlier waiters still blocked; later ones that conflict with them
        // may have to yield.
        let mut blocked: SmallVec<[WaiterId; 8]> = SmallVec::new();
        // Lock waiters wait out their scope's grace period (see `decide_lock`).
        let in_grace = self
            .files
            .get(&file_id)
            .is_some_and(|f| self.in_grace(f.scope));
        let mut i = 0;
        loop {
            let Some(id) = self
                .files
                .get(&file_id)
                .and_then(|f| f.queue.get(i).copied())
            else {
                return;
            };
            if !self.grantable(file_id, id, &blocked, in_grace) {
                blocked.push(id);
                i += 1;
                continue;
            }
            let Some(w) = self.remove_waiter(id) else {
                i += 1;
                continue;
            };
            let now = self.now();
            let waited = Duration::from_nanos(now.saturating_sub(w.since));
            let mut restart = false;
            if !w.io {
                let Some(fs) = self.files.get_mut(&file_id) else {
                    return;
                };
                // A shared grant over the owner's own exclusive lock is a
                // downgrade, which may unblock waiters already passed over.
                restart =
                    w.kind == LockKind::Shared && fs.holdings.holds_exclusive_in(&w.owner, w.range);
                let presence = fs.holdings.set(w.owner, Some(w.kind), w.range, w.pid, now);
                settle(&mut self.host_segments, &mut fs.holdings);
                for f in self.note_gain(w.owner, file_id, presence) {
                    if !work.contains(&f) {
                        work.push(f);
                    }
                }
            }
            if probe::contention_enabled() {
                self.waiter_probe(id, &w)
                    .reason(WaitEndReason::Granted)
                    .fire(&self.registry);
            }
            self.events.push(Event::Granted {
                waiter: id,
                token: w.token,
                file: file_id,
                owner: w.owner,
                kind: w.kind,
                range: w.range,
                io: w.io,
                waited,
            });
            if restart {
                blocked.clear();
                i = 0;
            }
        }
    }

    /// Whether a queued request can be granted now, given the earlier
    /// waiters of the same file that are still blocked.
    fn grantable(
        &self,
        file_id: FileId,
        id: WaiterId,
        blocked: &[WaiterId],
        in_grace: bool,
    ) -> bool {
        let (Some(file), Some(w)) = (self.files.get(&file_id), self.waiters.get(&id)) else {
            return false;
        };
        if file.holdings.has_conflict(w.range, w.kind, &w.selves()) {
            return false;
        }
        if !w.io && in_grace {
            return false;
        }
        let yields = !w.io
            && self.owner_holds_nothing(&w.owner)
            && blocked
                .iter()
                .any(|b| self.waiters.get(b).is_some_and(|b| b.conflicts_with(w)));
        !yields
    }

    /// Whether a request by `selves[0]` that is blocked on `file` would
    /// close a cycle in the wait-for graph: the owners holding the
    /// conflicting locks wait (transitively) for the requester. Only held
    /// locks make edges; OFD and flock owners are not followed, as in Linux.
    fn would_deadlock(&self, selves: &[Owner], file: FileId, range: Range, kind: LockKind) -> bool {
        let Some(f) = self.files.get(&file) else {
            return false;
        };
        let mut stack: SmallVec<[Owner; 8]> = SmallVec::new();
        f.holdings
            .conflicting_owners(range, kind, selves, &mut stack);
        let mut visited: FxHashSet<Owner> = FxHashSet::default();
        while let Some(o) = stack.pop() {
            if selves.contains(&o) {
                return true;
            }
            if !o.kind.detects_deadlock() || !visited.insert(o) {
                continue;
            }
            if visited.len() > DEADLOCK_SEARCH_LIMIT {
                return false;
            }
            let Some(entry) = self.owners.get(&o) else {
                continue;
            };
            for wid in &entry.waiters {
                let Some(w) = self.waiters.get(wid) else {
                    continue;
                };
                if let Some(wf) = self.files.get(&w.file) {
                    wf.holdings
                        .conflicting_owners(w.range, w.kind, &w.selves(), &mut stack);
                }
            }
        }
        false
    }

    // ----- mandatory I/O -----------------------------------------------

    /// The first lock that forbids this I/O, if any, without queueing.
    pub fn io_check(
        &self,
        file: FileId,
        access: Access,
        range: Range,
        owner: Owner,
        open_file: Option<Owner>,
    ) -> Option<Holding> {
        let selves = io_selves(owner, open_file);
        self.files
            .get(&file)?
            .holdings
            .first_conflict(range, access.as_lock_kind(), &selves)
            .map(|run| self.holding(run))
    }

    /// May this read, write or truncate of a mandatory-locked file proceed?
    /// A waiting request is queued like a lock request (FIFO, deadlock
    /// detection for POSIX owners) but takes no lock when granted.
    pub fn io(&mut self, req: &IoRequest) -> IoOutcome {
        let out = self.decide_io(req);
        if !matches!(out, IoOutcome::Allowed) && probe::contention_enabled() {
            let waiter = match out {
                IoOutcome::Queued(id) => id.0,
                _ => 0,
            };
            Probe::new(ProbeKind::IoBlocked, req.file, req.owner, req.pid)
                .kind(req.access.as_lock_kind())
                .range(req.range)
                .waiter(waiter)
                .fire(&self.registry);
        }
        out
    }

    fn decide_io(&mut self, req: &IoRequest) -> IoOutcome {
        let Some(conflict) =
            self.io_check(req.file, req.access, req.range, req.owner, req.open_file)
        else {
            return IoOutcome::Allowed;
        };
        let Wait::Yes { token } = req.wait else {
            return IoOutcome::Refused(Refusal::Conflict(conflict));
        };
        let selves = io_selves(req.owner, req.open_file);
        let kind = req.access.as_lock_kind();
        if req.owner.kind.detects_deadlock()
            && self.would_deadlock(&selves, req.file, req.range, kind)
        {
            return IoOutcome::Refused(Refusal::Deadlock);
        }
        IoOutcome::Queued(self.enqueue(Waiter {
            owner: req.owner,
            open_file: req.open_file,
            file: req.file,
            range: req.range,
            kind,
            pid: req.pid,
            since: 0,
            token,
            io: true,
        }))
    }

    // ----- bulk release -------------------------------------------------

    /// Drop every lock and queued request of `owner` on every file.
    pub fn release_owner(&mut self, owner: Owner, how: Release) -> Released {
        let Some(entry) = self.owners.remove(&owner) else {
            return Released::default();
        };
        let mut out = Released::default();
        let mut touched: SmallVec<[FileId; 4]> = SmallVec::new();
        for wid in entry.waiters {
            if let Some(w) = self.waiters.remove(&wid) {
                if let Some(f) = self.files.get_mut(&w.file) {
                    if let Some(pos) = f.queue.iter().position(|x| *x == wid) {
                        f.queue.remove(pos);
                    }
                }
                if probe::contention_enabled() {
                    self.waiter_probe(wid, &w)
                        .reason(WaitEndReason::Cancelled)
                        .fire(&self.registry);
                }
                self.events.push(Event::Dropped {
                    waiter: wid,
                    token: w.token,
                    file: w.file,
                    owner,
                    reason: DropReason::Released,
                });
                out.waiters += 1;
                if !touched.contains(&w.file) {
                    touched.push(w.file);
                }
            }
        }
        for file_id in entry.files.to_vec() {
            let pid = if probe::all_enabled() {
                self.holder_pid(file_id, &owner)
            } else {
                0
            };
            if let Some(f) = self.files.get_mut(&file_id) {
                let had_exclusive = f.holdings.remove_owner(&owner);
                settle(&mut self.host_segments, &mut f.holdings);
                if had_exclusive && how == Release::Abnormal {
                    f.invalidate_lvb();
                }
                if probe::all_enabled() {
                    Probe::new(ProbeKind::LockReleased, file_id, owner, pid).fire(&self.registry);
                }
                out.files += 1;
                if !touched.contains(&file_id) {
                    touched.push(file_id);
                }
            }
        }
        for f in touched {
            self.wake(f);
            self.drop_if_idle(f);
        }
        out
    }

    /// Drop `owner`'s locks on one file, leaving its queued requests (the
    /// POSIX rule: any close of the file by the process drops its locks on
    /// that file; another thread's pending F_SETLKW is unaffected, as in
    /// Linux).
    pub fn release_owner_on_file(&mut self, owner: Owner, file_id: FileId) {
        let pid = if probe::all_enabled() {
            self.holder_pid(file_id, &owner)
        } else {
            0
        };
        let Some(f) = self.files.get_mut(&file_id) else {
            return;
        };
        if !f.holdings.holds(&owner) {
            return;
        }
        f.holdings.remove_owner(&owner);
        settle(&mut self.host_segments, &mut f.holdings);
        if probe::all_enabled() {
            Probe::new(ProbeKind::LockReleased, file_id, owner, pid).fire(&self.registry);
        }
        self.forget_owner_file(owner, file_id);
        self.wake(file_id);
        self.drop_if_idle(file_id);
    }

    /// Drop the OFD and flock locks and requests of an open file (its last
    /// close).
    pub fn release_open_file(&mut self, open_file: u64) -> Released {
        let a = self.release_owner(Owner::ofd(open_file), Release::Normal);
        let b = self.release_owner(Owner::flock(open_file), Release::Normal);
        Released {
            files: a.files + b.files,
            waiters: a.waiters + b.waiters,
        }
    }

    /// Drop everything a remote host holds or waits for (NLM FREE_ALL, the
    /// host rebooted, an administrator cleared it), and forget its owners.
    pub fn release_host(&mut self, host: HostId, how: Release) -> Released {
        let owners: Vec<Owner> = self
            .owners
            .keys()
            .filter(|o| o.host == host)
            .copied()
            .collect();
        let mut out = Released::default();
        for o in owners {
            let r = self.release_owner(o, how);
            out.files += r.files;
            out.waiters += r.waiters;
        }
        self.registry.forget_owners(host);
        out
    }

    /// Drop every lock and request on the files of a scope (the scope's
    /// service group leaves this node).
    pub fn release_scope(&mut self, scope: ScopeId, how: Release) -> Released {
        let files: Vec<FileId> = self
            .files
            .iter()
            .filter(|(_, f)| f.scope == scope)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Released::default();
        for file_id in files {
            let queued: Vec<WaiterId> = self
                .files
                .get(&file_id)
                .map(|f| f.queue.iter().copied().collect())
                .unwrap_or_default();
            for wid in queued {
                if let Some(w) = self.remove_waiter(wid) {
                    if probe::contention_enabled() {
                        self.waiter_probe(wid, &w)
                            .reason(WaitEndReason::Cancelled)
                            .fire(&self.registry);
                    }
                    self.events.push(Event::Dropped {
                        waiter: wid,
                        token: w.token,
                        file: file_id,
                        owner: w.owner,
                        reason: DropReason::Released,
                    });
                    out.waiters += 1;
                }
            }
            let mut held = Vec::new();
            if probe::all_enabled() {
                if let Some(f) = self.files.get(&file_id) {
                    f.holdings.runs(&mut held);
                }
            }
            let Some(f) = self.files.get_mut(&file_id) else {
                continue;
            };
            let (owners, had_exclusive) = f.holdings.clear();
            settle(&mut self.host_segments, &mut f.holdings);
            if had_exclusive && how == Release::Abnormal {
                f.invalidate_lvb();
            }
            out.files += owners.len();
            for o in owners {
                if probe::all_enabled() {
                    let pid = held.iter().find(|r| r.owner == o).map_or(0, |r| r.pid);
                    Probe::new(ProbeKind::LockReleased, file_id, o, pid).fire(&self.registry);
                }
                self.forget_owner_file(o, file_id);
            }
            self.drop_if_idle(file_id);
        }
        out
    }

    // ----- lock value blocks --------------------------------------------

    /// Read the value block of a file; the caller must hold a lock on it.
    pub fn lvb_read(&self, file: FileId, owner: Owner) -> Result<LvbValue, LvbError> {
        let f = self.files.get(&file).ok_or(LvbError::NotHeld)?;
        if !f.holdings.holds(&owner) {
            return Err(LvbError::NotHeld);
        }
        Ok(f.lvb.as_deref().copied().unwrap_or_default())
    }

    /// Read the value block without holding a lock (administration).
    pub fn lvb_peek(&self, file: FileId) -> LvbValue {
        self.files
            .get(&file)
            .and_then(|f| f.lvb.as_deref().copied())
            .unwrap_or_default()
    }

    fn lvb_writable(&mut self, file: FileId, owner: Owner) -> Result<&mut FileState, LvbError> {
        let f = self.files.get_mut(&file).ok_or(LvbError::NotHeld)?;
        if !f.holdings.holds(&owner) {
            return Err(LvbError::NotHeld);
        }
        if !f.holdings.holds_exclusive_in(&owner, Range::WHOLE) {
            return Err(LvbError::NotExclusive);
        }
        Ok(f)
    }

    /// Write a new value (shorter values are zero-padded); the block becomes
    /// valid. Returns the new sequence number.
    pub fn lvb_write(&mut self, file: FileId, owner: Owner, value: &[u8]) -> Result<u64, LvbError> {
        if value.len() > LVB_LEN {
            return Err(LvbError::TooLong { len: value.len() });
        }
        let f = self.lvb_writable(file, owner)?;
        let lvb = f.lvb.get_or_insert_with(Default::default);
        lvb.bytes = [0; LVB_LEN];
        lvb.bytes[..value.len()].copy_from_slice(value);
        lvb.valid = true;
        lvb.seq += 1;
        Ok(lvb.seq)
    }

    /// Mark the value not-valid explicitly (an exclusive holder gives up on
    /// keeping it current).
    pub fn lvb_invalidate(&mut self, file: FileId, owner: Owner) -> Result<(), LvbError> {
        self.lvb_writable(file, owner)?.invalidate_lvb();
        Ok(())
    }

    // ----- listing ------------------------------------------------------

    /// Every held lock and queued request.
    pub fn snapshot(&self) -> Vec<LockInfo> {
        let mut out = Vec::new();
        let mut runs = Vec::new();
        let info = |owner: Owner| {
            let host = self.registry.host_name(owner.host).map(str::to_owned);
            host
        };
        for (&file_id, f) in &self.files {
            runs.clear();
            f.holdings.runs(&mut runs);
            for run in &runs {
                out.push(LockInfo {
                    file: file_id,
                    scope: f.scope,
                    owner: run.owner,
                    host: info(run.owner),
                    pid: run.pid,
                    kind: run.kind,
                    range: run.range,
                    state: LockState::Held,
                    since: self.wall(run.since),
                });
            }
            for id in &f.queue {
                if let Some(w) = self.waiters.get(id) {
                    out.push(LockInfo {
                        file: file_id,
                        scope: f.scope,
                        owner: w.owner,
                        host: info(w.owner),
                        pid: w.pid,
                        kind: w.kind,
                        range: w.range,
                        state: LockState::Waiting {
                            waiter: *id,
                            io: w.io,
                        },
                        since: self.wall(w.since),
                    });
                }
            }
        }
        out
    }

    /// Held locks of one file in normal form, ordered by start.
    pub fn held_on(&self, file: FileId) -> Vec<Holding> {
        let mut runs = Vec::new();
        if let Some(f) = self.files.get(&file) {
            f.holdings.runs(&mut runs);
        }
        runs.into_iter().map(|r| self.holding(r)).collect()
    }

    /// Queued requests of one file in FIFO order.
    pub fn queued_on(&self, file: FileId) -> Vec<WaiterId> {
        self.files
            .get(&file)
            .map(|f| f.queue.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Number of files with any state (held locks, waiters or a value
    /// block).
    pub fn file_count(&self) -> usize {
        self.files.values().filter(|f| !f.is_idle()).count()
    }

    /// Lock segments the owners of `host` hold over all files: at least the number of
    /// their locks, more where other owners' locks cut a lock into pieces. What the
    /// table's memory grows with, so what a per-client limit should count.
    /// Local owners are not counted (always 0).
    pub fn host_segments(&self, host: HostId) -> u64 {
        self.host_segments
            .get(host.0 as usize)
            .copied()
            .unwrap_or(0)
    }

    /// Number of queued requests.
    pub fn waiter_count(&self) -> usize {
        self.waiters.len()
    }

    /// Whether `owner` holds anything anywhere.
    pub fn owner_holds(&self, owner: &Owner) -> bool {
        !self.owner_holds_nothing(owner)
    }

    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut per_host = vec![0u64; self.host_segments.len()];
        for f in self.files.values() {
            for o in f.holdings.owners() {
                if o.host != HostId::LOCAL {
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
