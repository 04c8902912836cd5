//! The one gate every door's mandatory-locked I/O passes: a read, a write, a
//! truncate, an `O_TRUNC` open, either end of a copy.
//!
//! A door describes the I/O once ([`GateRequest`]: file, owner, open file,
//! the bytes and how each is touched, whether it may wait) and gets either an
//! [`IoPass`] that keeps the I/O in flight until the pass is dropped, or the
//! reason it must not run. A request that may wait parks in the waiter
//! registry under the door's name for it and is admitted later, on whichever
//! thread cleared the conflict; one that may not (an `O_NONBLOCK` open, an
//! NFS READ from a client that will retry) is refused with the conflicting
//! lock instead. The door only translates the answer (errno, NFS status).

use crate::ids::{Access, FileId, Owner};
use crate::ops::{IoRequest, Refusal, Wait};
use crate::range::Range;
use crate::shared::{IoPass, SharedTable};
use crate::waiters::{Admission, Park, Waiting, Wake};
use smallvec::SmallVec;
use std::sync::Arc;

/// Mandatory-locked I/O asking to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateRequest {
    pub file: FileId,
    /// The caller's lock owner: a FUSE `lock_owner`, an NLM host's owner.
    pub owner: Owner,
    /// The open file the I/O goes through, whose OFD and flock locks are the
    /// caller's own too (none for a door without open files).
    pub open_file: Option<Owner>,
    pub pid: u32,
    /// Each range the I/O touches and how (a copy reads one file and writes
    /// another: two requests, one per file).
    pub checks: SmallVec<[(Access, Range); 2]>,
    /// Whether a conflict parks the request (true) or refuses it at once.
    pub wait: bool,
}

impl GateRequest {
    /// I/O on `file` by `owner` touching nothing yet, refused on conflict.
    pub fn new(file: FileId, owner: Owner, open_file: Option<Owner>, pid: u32) -> Self {
        GateRequest {
            file,
            owner,
            open_file,
            pid,
            checks: SmallVec::new(),
            wait: false,
        }
    }

    /// Also touches `range` with `access`.
    pub fn touching(mut self, access: Access, range: Range) -> Self {
        self.checks.push((access, range));
        self
    }

    /// Parks on conflict when `wait` is true.
    pub fn waiting(mut self, wait: bool) -> Self {
        self.wait = wait;
        self
    }
}

impl SharedTable {
    /// Admit the I/O now or refuse it, never waiting: the first conflicting
    /// lock is named in the refusal.
    pub fn admit(self: &Arc<Self>, req: &GateRequest) -> Result<IoPass, Refusal> {
        let r = {
            let mut t = self.guard();
            match t.begin_io(req.file, req.owner, req.open_file, &req.checks) {
                Ok(ticket) => Ok(ticket),
                Err(i) => {
                    let (access, range) = req.checks[i];
                    match t.io_check(req.file, access, range, req.owner, req.open_file) {
                        Some(h) => Err(Refusal::Conflict(h)),
                        // begin_io and io_check apply one rule under one
                        // lock; should they ever disagree, admitting nothing
                        // is the safe answer.
                        None => Err(Refusal::Deadlock),
                    }
                }
            }
        };
        r.map(|ticket| IoPass {
            table: self.clone(),
            ticket: Some(ticket),
        })
    }

    /// Admit the I/O, refuse it, or (if `req.wait`) park it under `park`
    /// until the conflicting locks are gone and admit it then. `done` gets
    /// the pass, or why the I/O must not run (never `Err(Wake::Granted)`);
    /// it runs exactly once, at once or on the thread that ends the wait.
    pub fn gate<F>(self: &Arc<Self>, req: GateRequest, park: Park, done: F)
    where
        F: FnOnce(Result<IoPass, Wake>) + Send + 'static,
    {
        let conflict = match self.admit(&req) {
            Ok(pass) => return done(Ok(pass)),
            Err(r) => r,
        };
        if !req.wait {
            return done(Err(Wake::Refused(conflict)));
        }
        // Wait for the first conflict to clear, then check everything again.
        let Some(&(access, range)) = req.checks.iter().find(|(a, r)| {
            matches!(conflict, Refusal::Conflict(h) if h.range.overlaps(r) && a.as_lock_kind().conflicts_with(h.kind))
        }) else {
            return done(Err(Wake::Refused(conflict)));
        };
        let io = IoRequest {
            file: req.file,
            access,
            range,
            owner: req.owner,
            open_file: req.open_file,
            pid: req.pid,
            wait: Wait::No,
        };
        let job = Retry {
            table: self.clone(),
            req,
            park,
            done,
        };
        if let Admission::Now(wake, job) = self.io_or_wait(&io, park, job) {
            Box::new(job).woken(wake);
        }
    }
}

/// A parked gate request: admitted once its wait ends with a grant.
struct Retry<F> {
    table: Arc<SharedTable>,
    req: GateRequest,
    park: Park,
    done: F,
}

impl<F> Waiting for Retry<F>
where
    F: FnOnce(Result<IoPass, Wake>) + Send + 'static,
{
    fn woken(self: Box<Self>, wake: Wake) {
        let Retry {
            table,
            req,
            park,
            done,
        } = *self;
        match wake {
            Wake::Granted => table.gate(req, park, done),
            other => done(Err(other)),
        }
    }
}
