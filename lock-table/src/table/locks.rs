//! Taking, converting, releasing and testing byte-range locks: the
//! decisions of LOCK, UNLOCK and TEST.

use super::{settle, FileState, LockTable, Waiter};
use crate::holdings::Presence;
use crate::ids::{FileId, HostId, LockKind, Owner, OwnerKind};
use crate::ops::*;
use crate::probe::{self, Probe};
use crate::range::Range;
use lockfs_probes::EventKind as ProbeKind;
use smallvec::SmallVec;

impl LockTable {
    /// Take, convert or extend a lock (F_SETLK/F_SETLKW, flock, NLM LOCK).
    ///
    /// A flock owner's conversion drops its old lock before the new one is
    /// decided, as Linux `flock_lock_inode` does: two shared holders upgrading
    /// at once then do not deadlock, waiters the drop lets through go first,
    /// and a conversion that is refused leaves the owner with no lock.
    ///
    /// This is the decision of a table that admits no I/O. Where I/O is
    /// admitted ([`Self::begin_io`]), front doors decide with
    /// [`crate::SharedTable::lock`], which waits for in-flight I/O that a
    /// non-blocking request or a reclaim meets (see [`Self::try_lock`]); here
    /// such a request is refused as a conflict with itself (the holding named
    /// is the request's own owner and range), since a bare table cannot wait.
    #[inline]
    pub fn lock(&mut self, req: &LockRequest) -> LockOutcome {
        match self.try_lock(req) {
            Some(out) => out,
            None => LockOutcome::Refused(Refusal::Conflict(Holding {
                owner: req.owner,
                kind: req.kind,
                range: req.range,
                pid: 0,
                since: self.wall(self.now()),
            })),
        }
    }

    /// [`Self::lock`], except that a non-blocking request or a reclaim that
    /// meets another owner's in-flight I/O (and no conflicting lock) is not
    /// decided: `None` says to decide it again after that I/O ends.
    #[inline]
    pub fn try_lock(&mut self, req: &LockRequest) -> Option<LockOutcome> {
        if req.owner.kind == OwnerKind::Flock {
            self.drop_flock_to_convert(req);
        }
        if !probe::contention_enabled() {
            return self.decide_lock(req);
        }
        let base = |kind| Probe::new(kind, req.file, req.owner, req.pid).range(req.range);
        if probe::all_enabled() {
            base(ProbeKind::LockRequested)
                .kind(req.kind)
                .fire(&self.registry);
        }
        let out = self.decide_lock(req)?;
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
        Some(out)
    }

    /// Drops the lock `req`'s flock owner holds on the file when `req` asks for
    /// the other kind.
    fn drop_flock_to_convert(&mut self, req: &LockRequest) {
        let Some(f) = self.files.get(&req.file) else {
            return;
        };
        if !f.holdings.holds(&req.owner) {
            return;
        }
        let held = if f.holdings.holds_exclusive_in(&req.owner, Range::WHOLE) {
            LockKind::Exclusive
        } else {
            LockKind::Shared
        };
        if held != req.kind {
            self.unlock(req.file, req.owner, Range::WHOLE);
        }
    }

    pub(super) fn decide_lock(&mut self, req: &LockRequest) -> Option<LockOutcome> {
        // A local program's blocking request waits the grace period out, as an
        // NFS client's lock manager does for its callers, so that it cannot
        // take a lock a remote client is about to reclaim. Everything else that
        // the gate stops is refused.
        let mut sit_out_grace = false;
        let scope = Self::scope_of(req.file, req.scope);
        if let Some(refusal) = self.grace_gate(scope, req.reclaim) {
            sit_out_grace = refusal == Refusal::Grace
                && req.owner.host == HostId::LOCAL
                && matches!(req.wait, Wait::Yes { .. });
            if !sit_out_grace {
                return Some(LockOutcome::Refused(refusal));
            }
        }
        let selves = [req.owner];
        let (conflict, queue_busy, io_busy) = {
            let file = self
                .files
                .entry(req.file)
                .or_insert_with(|| FileState::new(scope));
            if file.has_no_lock_state() {
                file.scope = scope;
            }
            let conflict = file.holdings.first_conflict(req.range, req.kind, &selves);
            // Another owner's admitted I/O still running on the range holds the
            // lock up (see `inflight`).
            let io_busy = conflict.is_none() && file.io_blocks(req.owner, req.kind, req.range);
            (conflict, !file.queue.is_empty(), io_busy)
        };
        let token = match (conflict, req.wait) {
            (None, Wait::No) if io_busy => return None,
            (None, Wait::Yes { .. }) if io_busy && req.reclaim => return None,
            (None, Wait::No) => {
                self.grant(req.file, req.owner, req.kind, req.range, req.pid);
                return Some(LockOutcome::Granted);
            }
            (None, Wait::Yes { token }) if sit_out_grace || io_busy => token,
            (None, Wait::Yes { token }) => {
                // A blocking request of an owner holding nothing yields to
                // earlier conflicting waiters (see the module doc).
                let yields = queue_busy
                    && !req.reclaim
                    && self.owner_holds_nothing(&req.owner)
                    && self.conflicts_with_queue(req.file, req.owner, req.kind, req.range);
                if !yields {
                    self.grant(req.file, req.owner, req.kind, req.range, req.pid);
                    return Some(LockOutcome::Granted);
                }
                token
            }
            (Some(run), Wait::No) => {
                return Some(LockOutcome::Refused(Refusal::Conflict(self.holding(run))));
            }
            (Some(run), Wait::Yes { .. }) if req.reclaim => {
                return Some(LockOutcome::Refused(Refusal::Conflict(self.holding(run))));
            }
            (Some(_), Wait::Yes { token }) => {
                if req.owner.kind.detects_deadlock()
                    && self.would_deadlock(&selves, req.file, req.range, req.kind)
                {
                    self.note_maybe_idle();
                    return Some(LockOutcome::Refused(Refusal::Deadlock));
                }
                token
            }
        };
        Some(LockOutcome::Queued(self.enqueue(Waiter {
            owner: req.owner,
            open_file: None,
            file: req.file,
            range: req.range,
            kind: req.kind,
            pid: req.pid,
            since: 0,
            token,
            waits_for: WaitFor::Lock,
        })))
    }

    /// Record a lock as held and keep the owner index in step.
    pub(super) fn grant(
        &mut self,
        file_id: FileId,
        owner: Owner,
        kind: LockKind,
        range: Range,
        pid: u32,
    ) {
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
    pub(super) fn note_gain(
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
        self.note_maybe_idle();
    }

    /// Who would block a lock (F_GETLK, NLM TEST). During grace a remote
    /// owner's answer is [`TestOutcome::Grace`], as NLM requires; a local
    /// program is told what is held now (F_GETLK has no way to say "later").
    pub fn test(&self, req: &TestRequest) -> TestOutcome {
        if self.in_grace(Self::scope_of(req.file, req.scope)) && req.owner.host != HostId::LOCAL {
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
}
