//! The table as the front doors share it: behind one mutex, with wake-ups
//! delivered to a notifier after the mutex is released.
//!
//! The notifier is the front doors' business (a channel per FUSE waiter, an
//! NLM GRANTED callback queue); the table never calls it while locked, so a
//! notifier may call back into the table without deadlocking.

use crate::ops::Event;
use crate::table::LockTable;
use std::sync::{Mutex, MutexGuard};

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
    notify: Box<dyn Notify>,
}

impl SharedTable {
    pub fn new(notify: impl Notify + 'static) -> Self {
        Self::from_table(LockTable::new(), notify)
    }

    pub fn from_table(table: LockTable, notify: impl Notify + 'static) -> Self {
        SharedTable {
            table: Mutex::new(table),
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

    /// Read-only access (snapshots, tests).
    pub fn read<R>(&self, f: impl FnOnce(&LockTable) -> R) -> R {
        f(&self.guard())
    }
}

impl std::fmt::Debug for SharedTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTable").finish_non_exhaustive()
    }
}
