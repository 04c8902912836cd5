//! The table as the front doors share it: behind one mutex, with its waiter
//! registry, and with wake-ups delivered after the mutex is released.
//!
//! Every door decides a request that may wait the same way, through
//! [`SharedTable::lock_or_wait`] or [`SharedTable::io_or_wait`] (mandatory
//! I/O goes through [`SharedTable::gate`], which uses the latter): the table
//! decides, and a request that has to wait is registered with the door's
//! continuation in the same step (see [`crate::waiters`]). Grants and drops
//! of registered requests run their continuation; events of requests queued
//! directly on the [`LockTable`] with a token of the caller's own go to the
//! notifier. Neither is ever called while the table is locked, so both may
//! call back into the table.
//!
//! Admitted mandatory-locked I/O is held as an [`IoPass`] while it runs; a
//! non-blocking lock request that meets another owner's I/O in flight sleeps
//! in [`SharedTable::lock`] until that I/O ends and is then decided as usual
//! (see the `inflight` module of [`crate::table`]).

use crate::ids::{Access, FileId, Owner};
use crate::ops::{
    CancelReason, Event, IoOutcome, IoRequest, LockOutcome, LockRequest, Wait, WaitFor, WaiterId,
};
use crate::range::Range;
use crate::table::{IoTicket, LockTable};
use crate::waiters::{Admission, DoorId, Park, RequestKey, Waiters, Waiting, Wake};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Receives grant and drop events of requests queued with a token of the
/// caller's own (not through the waiter registry).
pub trait Notify: Send + Sync {
    fn notify(&self, event: Event);
}

impl<F: Fn(Event) + Send + Sync> Notify for F {
    fn notify(&self, event: Event) {
        self(event)
    }
}

/// A [`LockTable`] behind a mutex, with its waiter registry and a notifier.
pub struct SharedTable {
    table: Mutex<LockTable>,
    /// Signalled when I/O ends while a lock request sleeps for it.
    io_ended: Condvar,
    waiters: Waiters,
    notify: Box<dyn Notify>,
}

impl SharedTable {
    pub fn new(notify: impl Notify + 'static) -> Self {
        Self::from_table(LockTable::new(), notify)
    }

    pub fn from_table(table: LockTable, notify: impl Notify + 'static) -> Self {
        SharedTable {
            table: Mutex::new(table),
            io_ended: Condvar::new(),
            waiters: Waiters::default(),
            notify: Box::new(notify),
        }
    }

    pub(crate) fn guard(&self) -> MutexGuard<'_, LockTable> {
        // A panic while the table was locked leaves it as the panicking
        // operation left it; every operation keeps the table consistent
        // between its own steps, so carrying on is safer than failing every
        // front door forever.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `f` on the table, then deliver the events it produced.
    pub fn with<R>(&self, f: impl FnOnce(&mut LockTable) -> R) -> R {
        let mut events = Vec::new();
        let r = {
            let mut t = self.guard();
            let r = f(&mut t);
            if t.has_events() {
                t.take_events(&mut events);
            }
            r
        };
        self.dispatch(events);
        r
    }

    /// Hands events, after the table's mutex is released, to the registered
    /// requests they end, or else to the notifier.
    pub(crate) fn dispatch(&self, events: Vec<Event>) {
        for e in events {
            match self.waiters.on_event(&e) {
                Some(woken) => {
                    for (job, wake) in woken {
                        job.woken(wake);
                    }
                }
                None => self.notify.notify(e),
            }
        }
    }

    /// The registry of waiting requests.
    pub fn waiters(&self) -> &Waiters {
        &self.waiters
    }

    pub(crate) fn deliver(&self, t: &mut LockTable) -> Vec<Event> {
        let mut events = Vec::new();
        if t.has_events() {
            t.take_events(&mut events);
        }
        events
    }

    /// Decide a lock request ([`LockTable::try_lock`]), the one way front
    /// doors take locks. A non-blocking request or a reclaim that meets
    /// another owner's I/O still in flight on its range waits here for that
    /// I/O to end (the length of one read or write) and is then decided as
    /// usual: it is neither refused, since no lock conflicts, nor granted
    /// while conflicting I/O runs.
    pub fn lock(&self, req: &LockRequest) -> LockOutcome {
        let (out, events) = {
            let mut t = self.guard();
            let out = loop {
                if let Some(out) = t.try_lock(req) {
                    break out;
                }
                t.io_sleepers += 1;
                t = self.io_ended.wait(t).unwrap_or_else(|e| e.into_inner());
                t.io_sleepers -= 1;
            };
            (out, self.deliver(&mut t))
        };
        self.dispatch(events);
        out
    }

    /// Decide a lock request that may wait: granted or refused at once (the
    /// continuation `job` is handed back unrun), or queued with `job`
    /// registered for `park`'s door, to run when the wait ends. The request's
    /// own `wait` is ignored: it waits.
    pub fn lock_or_wait<J: Waiting>(&self, req: &LockRequest, park: Park, job: J) -> Admission<J> {
        self.decide_or_park(park, job, WaitFor::Lock, |t, wait| {
            let mut r = *req;
            r.wait = wait;
            t.try_lock(&r)
        })
    }

    /// Ask whether mandatory-locked I/O may run, waiting if it may not, as
    /// [`Self::lock_or_wait`] does for locks. Nothing is held once it is
    /// granted: [`Self::gate`] admits the I/O then, checking every range again.
    pub fn io_or_wait<J: Waiting>(&self, req: &IoRequest, park: Park, job: J) -> Admission<J> {
        self.decide_or_park(park, job, WaitFor::Io, |t, wait| {
            let mut r = *req;
            r.wait = wait;
            Some(match t.io(&r) {
                IoOutcome::Allowed => LockOutcome::Granted,
                IoOutcome::Queued(id) => LockOutcome::Queued(id),
                IoOutcome::Refused(r) => LockOutcome::Refused(r),
            })
        })
    }

    /// The one sequence for a request that may wait: decide under the
    /// table's mutex and, if it is queued, register it before the mutex is
    /// released, so its grant cannot come first.
    fn decide_or_park<J: Waiting>(
        &self,
        park: Park,
        job: J,
        waits_for: WaitFor,
        mut decide: impl FnMut(&mut LockTable, Wait) -> Option<LockOutcome>,
    ) -> Admission<J> {
        let token = park.token.unwrap_or_else(|| self.waiters.token());
        let wait = Wait::Yes { token };
        let (admission, events) = {
            let mut t = self.guard();
            let out = loop {
                if let Some(out) = decide(&mut t, wait) {
                    break out;
                }
                t.io_sleepers += 1;
                t = self.io_ended.wait(t).unwrap_or_else(|e| e.into_inner());
                t.io_sleepers -= 1;
            };
            let admission = match out {
                LockOutcome::Granted => Admission::Now(Wake::Granted, job),
                LockOutcome::Refused(r) => Admission::Now(Wake::Refused(r), job),
                LockOutcome::Queued(id) => {
                    match self.waiters.register(&park, token, id, waits_for, job) {
                        Ok(joined) => Admission::Queued {
                            waiter: id,
                            token,
                            joined,
                        },
                        // Interrupted before it got here: withdraw it now,
                        // unless another request of the owner waits on it too.
                        Err((job, joined)) => {
                            if !joined {
                                t.cancel_with(id, CancelReason::Interrupted);
                            }
                            Admission::Now(Wake::Cancelled(CancelReason::Interrupted), job)
                        }
                    }
                }
            };
            (admission, self.deliver(&mut t))
        };
        self.dispatch(events);
        admission
    }

    /// The door withdraws the request it registered under `key` (a signal
    /// interrupted its caller): its waiter is cancelled and it is woken with
    /// [`Wake::Cancelled`], or with [`Wake::Granted`] if the grant won the
    /// race. An interrupt for a request not registered yet is remembered and
    /// honoured when it queues.
    pub fn interrupt(&self, key: RequestKey) {
        let Some((entry, alone)) = self.waiters.take_by_key(key) else {
            return;
        };
        let cancelled =
            !alone || self.with(|t| t.cancel_with(entry.waiter(), CancelReason::Interrupted));
        entry.wake(if cancelled {
            Wake::Cancelled(CancelReason::Interrupted)
        } else {
            Wake::Granted
        });
    }

    /// Withdraw a queued request by its waiter id ([`LockTable::cancel_with`])
    /// and wake its registrations with [`Wake::Cancelled`]. False if it is not
    /// queued (it may have been granted: its grant is on its way).
    pub fn cancel_waiter(&self, waiter: WaiterId, reason: CancelReason) -> bool {
        if !self.with(|t| t.cancel_with(waiter, reason)) {
            return false;
        }
        for e in self.waiters.take_waiter(waiter) {
            e.wake(Wake::Cancelled(reason));
        }
        true
    }

    /// A door's session ends (a mount goes away): every request it
    /// registered under `session` is withdrawn and woken with
    /// [`Wake::Dropped`]. Returns how many.
    pub fn end_session(&self, door: DoorId, session: u64) -> usize {
        let gone = self.waiters.take_session(door, session);
        let n = gone.len();
        for e in gone {
            let w = e.waiter();
            if !self.waiters.has_waiter(w) {
                self.with(|t| t.cancel(w));
            }
            e.wake(Wake::Dropped);
        }
        n
    }

    /// Admit mandatory-locked I/O ([`LockTable::begin_io`]): the pass keeps
    /// it in flight, holding up conflicting locks, until it is dropped.
    /// `Err(i)` names the first check a lock forbids.
    pub fn begin_io(
        self: &Arc<Self>,
        file: FileId,
        owner: Owner,
        open_file: Option<Owner>,
        checks: &[(Access, Range)],
    ) -> Result<IoPass, usize> {
        let ticket = self.guard().begin_io(file, owner, open_file, checks)?;
        Ok(IoPass {
            table: self.clone(),
            ticket: Some(ticket),
        })
    }

    fn end_io(&self, ticket: IoTicket) {
        let events = {
            let mut t = self.guard();
            t.end_io(ticket);
            if t.io_sleepers > 0 {
                self.io_ended.notify_all();
            }
            self.deliver(&mut t)
        };
        self.dispatch(events);
    }

    /// Read-only access (snapshots, tests).
    pub fn read<R>(&self, f: impl FnOnce(&LockTable) -> R) -> R {
        f(&self.guard())
    }
}

/// Admitted I/O in flight: dropping it (when the I/O is done, failed or was
/// abandoned) lets the locks it held up be decided.
#[derive(Debug)]
#[must_use = "dropping the pass ends the I/O's admission at once"]
pub struct IoPass {
    pub(crate) table: Arc<SharedTable>,
    pub(crate) ticket: Option<IoTicket>,
}

impl Drop for IoPass {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            self.table.end_io(t);
        }
    }
}

impl std::fmt::Debug for SharedTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTable").finish_non_exhaustive()
    }
}
