//! Admitted mandatory-locked I/O that is still running.
//!
//! Checking a read or write against the locks and then doing it are two steps;
//! if the table forgot the I/O between them, another owner could be granted a
//! conflicting lock in the gap and the write would land inside a range that
//! owner believes it holds exclusively. So an admitted I/O stays recorded on
//! its range from [`LockTable::begin_io`] until [`LockTable::end_io`], and a
//! lock that conflicts with it is not granted before it ends:
//!
//! - a blocking request queues behind it as behind a lock, and is granted (in
//!   FIFO order) once the I/O and every conflicting lock are gone;
//! - a non-blocking request or a reclaim is not refused (no lock conflicts,
//!   `EAGAIN` or `NLM4_DENIED` would be wrong) and not queued: it is decided
//!   again once the I/O ends. [`crate::SharedTable::lock`] does that waiting,
//!   which lasts one read or write.
//!
//! I/O never waits for I/O, and an owner's own I/O never holds up its own lock.

use super::mandatory::io_selves;
use super::{FileState, LockTable};
use crate::ids::{Access, FileId, LockKind, Owner, ScopeId};
use crate::range::Range;

/// One range of an admitted I/O.
#[derive(Debug, Clone, Copy)]
pub(super) struct InFlight {
    id: u64,
    owner: Owner,
    open_file: Option<Owner>,
    kind: LockKind,
    range: Range,
}

/// Names an admitted I/O until it is handed back to [`LockTable::end_io`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "an admitted I/O blocks conflicting locks until its ticket is ended"]
pub struct IoTicket {
    file: FileId,
    id: u64,
}

impl LockTable {
    /// Admit mandatory-locked I/O on `file` (each check an access and its
    /// bytes) if no other owner's lock forbids any of it, and record it as in
    /// flight until [`Self::end_io`]. `Err(i)` names the first check that a
    /// lock forbids; nothing is recorded then.
    pub fn begin_io(
        &mut self,
        file: FileId,
        owner: Owner,
        open_file: Option<Owner>,
        checks: &[(Access, Range)],
    ) -> Result<IoTicket, usize> {
        let selves = io_selves(owner, open_file);
        let f = self
            .files
            .entry(file)
            .or_insert_with(|| FileState::new(ScopeId::DEFAULT));
        if let Some(i) = checks
            .iter()
            .position(|&(a, r)| f.holdings.has_conflict(r, a.as_lock_kind(), &selves))
        {
            if f.is_idle() {
                self.note_maybe_idle();
            }
            return Err(i);
        }
        let id = self.next_io;
        self.next_io += 1;
        for &(access, range) in checks {
            f.inflight.push(InFlight {
                id,
                owner,
                open_file,
                kind: access.as_lock_kind(),
                range,
            });
        }
        Ok(IoTicket { file, id })
    }

    /// The admitted I/O is done (or failed): locks it held up are decided now.
    pub fn end_io(&mut self, ticket: IoTicket) {
        let Some(f) = self.files.get_mut(&ticket.file) else {
            return;
        };
        f.inflight.retain(|io| io.id != ticket.id);
        let (wake, idle) = (!f.queue.is_empty(), f.is_idle());
        if wake {
            self.wake(ticket.file);
        }
        if idle {
            self.note_maybe_idle();
        }
    }

    /// Number of I/O ranges in flight (for tests and listings).
    pub fn io_in_flight(&self) -> usize {
        self.files.values().map(|f| f.inflight.len()).sum()
    }
}

impl FileState {
    /// Whether I/O in flight on this file of an owner other than `owner` would be
    /// overtaken by granting it a `kind` lock on `range`.
    pub(super) fn io_blocks(&self, owner: Owner, kind: LockKind, range: Range) -> bool {
        self.inflight.iter().any(|io| {
            io.range.overlaps(&range)
                && kind.conflicts_with(io.kind)
                && !io_selves(io.owner, io.open_file)
                    .iter()
                    .any(|s| s.covers(&owner))
        })
    }
}
