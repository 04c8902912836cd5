//! Mandatory-locked I/O: whether a read, write or truncate may proceed past
//! the locks of other owners, and queueing it when it has to wait.

use super::{LockTable, Waiter};
use crate::ids::{Access, FileId, Owner};
use crate::ops::*;
use crate::probe::{self, Probe};
use crate::range::Range;
use lockfs_probes::EventKind as ProbeKind;
use smallvec::SmallVec;

impl LockTable {
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

    pub(super) fn decide_io(&mut self, req: &IoRequest) -> IoOutcome {
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
            waits_for: WaitFor::Io,
        }))
    }
}

/// The owners whose locks count as the caller's own for I/O through an open
/// file: its lock owner, and every lock taken through that open file (OFD
/// and flock locks alike).
pub(super) fn io_selves(owner: Owner, open_file: Option<Owner>) -> SmallVec<[Owner; 3]> {
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
