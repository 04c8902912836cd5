//! The table as the front doors share it: behind one mutex, with wake-ups
//! delivered to a notifier after the mutex is released.
//!
//! The notifier is the front doors' business (a channel per FUSE waiter, an
//! NLM GRANTED callback queue); the table never calls it while locked, so a
//! notifier may call back into the table without deadlocking.
//!
//! Admitted mandatory-locked I/O is held as an [`IoPass`] while it runs; a
//! non-blocking lock request that meets another owner's I/O in flight sleeps
//! in [`SharedTable::lock`] until that I/O ends and is then decided as usual
//! (see the `inflight` module of [`crate::table`]).

use crate::ids::{Access, FileId, Owner};
use crate::ops::{Event, LockOutcome, LockRequest};
use crate::range::Range;
use crate::table::{IoTicket, LockTable};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Receives grant and drop events for queued requests.
pub trait Notify: Send + Sync {
    fn notify(&self, event: Event);
}

impl<F: Fn(Event) + Send + Sync> Notify for F {
    fn notify(&self, event: Event) {
        self(event)
    }
}

/// A [`LockTable`] behind a mutex, with a notifier.
pub struct SharedTable {
    table: Mutex<LockTable>,
    /// Signalled when I/O ends while a lock request sleeps for it.
    io_ended: Condvar,
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
            notify: Box::new(notify),
        }
    }

    fn guard(&self) -> MutexGuard<'_, LockTable> {
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
        for e in events {
            self.notify.notify(e);
        }
        r
    }

    fn deliver(&self, t: &mut LockTable) -> Vec<Event> {
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
        for e in events {
            self.notify.notify(e);
        }
        out
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
        for e in events {
            self.notify.notify(e);
        }
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
    table: Arc<SharedTable>,
    ticket: Option<IoTicket>,
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
