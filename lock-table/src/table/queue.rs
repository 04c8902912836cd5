//! Per-file wait queues: queueing, withdrawing, and granting waiters in
//! FIFO order as conflicts clear (see the module documentation of
//! [`super`] for who yields to whom).

use super::{settle, LockTable, Waiter};
use crate::ids::{FileId, LockKind, Owner};
use crate::ops::*;
use crate::probe::{self};
use crate::range::Range;
use lockfs_probes::WaitEndReason;
use smallvec::SmallVec;
use std::time::Duration;

impl LockTable {
    pub(super) fn owner_holds_nothing(&self, owner: &Owner) -> bool {
        self.owners.get(owner).is_none_or(|e| e.files.is_empty())
    }

    pub(super) fn conflicts_with_queue(
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
            waits_for: WaitFor::Lock,
        };
        self.files.get(&file).is_some_and(|f| {
            f.queue
                .iter()
                .filter_map(|id| self.waiters.get(id))
                .any(|w| w.conflicts_with(&probe))
        })
    }

    pub(super) fn enqueue(&mut self, mut w: Waiter) -> WaiterId {
        // A retransmitted or repeated identical request is the same waiter.
        if let Some(f) = self.files.get(&w.file) {
            for id in &f.queue {
                if let Some(x) = self.waiters.get(id) {
                    if x.owner == w.owner
                        && x.range == w.range
                        && x.kind == w.kind
                        && x.waits_for == w.waits_for
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
        self.note_maybe_idle();
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
            self.waiters.get(id).is_some_and(|w| {
                w.waits_for == WaitFor::Lock
                    && w.owner == owner
                    && w.kind == kind
                    && w.range == range
            })
        })
    }

    /// The request a waiter stands for.
    pub fn waiter(&self, id: WaiterId) -> Option<WaiterInfo> {
        self.waiters.get(&id).map(|w| WaiterInfo {
            file: w.file,
            owner: w.owner,
            kind: w.kind,
            range: w.range,
            waits_for: w.waits_for,
        })
    }

    /// Grant whatever queued requests on `file` can now be granted, in FIFO
    /// order, and follow the consequences to other files.
    pub(super) fn wake(&mut self, file: FileId) {
        let mut work: SmallVec<[FileId; 4]> = SmallVec::new();
        work.push(file);
        while let Some(f) = work.pop() {
            self.scan(f, &mut work);
        }
    }

    pub(super) fn scan(&mut self, file_id: FileId, work: &mut SmallVec<[FileId; 4]>) {
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
            if w.waits_for == WaitFor::Lock {
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
                io: w.waits_for == WaitFor::Io,
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
    pub(super) fn grantable(
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
        if w.waits_for == WaitFor::Lock && (in_grace || file.io_blocks(w.owner, w.kind, w.range)) {
            return false;
        }
        let yields = w.waits_for == WaitFor::Lock
            && self.owner_holds_nothing(&w.owner)
            && blocked
                .iter()
                .any(|b| self.waiters.get(b).is_some_and(|b| b.conflicts_with(w)));
        !yields
    }
}
