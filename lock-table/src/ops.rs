//! The requests front doors make of the table and the decisions it returns.
//!
//! Front doors translate their protocol (FUSE setlk, NLM LOCK, a read on a
//! mandatory file) into these types and translate the outcome back (EAGAIN,
//! `NLM4_DENIED`, EDEADLK, ...). Nothing here knows a protocol.

use crate::ids::{Access, FileId, LockKind, Owner, ScopeId};
use crate::range::Range;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

/// Whether a request may wait for conflicting locks to go away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Refuse at once on conflict (F_SETLK, NLM LOCK with `block = false`).
    No,
    /// Queue on conflict (F_SETLKW, NLM LOCK with `block = true`). The token is
    /// echoed in the grant event; doors take it from the waiter registry
    /// ([`crate::SharedTable::lock_or_wait`] does), a caller of the bare
    /// table may use its own.
    Yes { token: u64 },
}

/// Take or change a byte-range lock.
#[derive(Clone, Copy, Debug)]
pub struct LockRequest {
    pub file: FileId,
    /// The scope (service group) of the export the file is reached through.
    pub scope: ScopeId,
    pub owner: Owner,
    /// The process id (or NLM svid) reported to others who meet this lock.
    pub pid: u32,
    pub kind: LockKind,
    pub range: Range,
    pub wait: Wait,
    /// A reclaim of a lock held before a server crash or failover. Admitted
    /// only while the scope is in grace; refused (never queued) on conflict.
    pub reclaim: bool,
}

/// Ask who, if anyone, would block a lock (F_GETLK, NLM TEST).
#[derive(Clone, Copy, Debug)]
pub struct TestRequest {
    pub file: FileId,
    pub scope: ScopeId,
    pub owner: Owner,
    pub kind: LockKind,
    pub range: Range,
}

/// A read, write or truncate on a file under mandatory locking.
#[derive(Clone, Copy, Debug)]
pub struct IoRequest {
    pub file: FileId,
    pub access: Access,
    pub range: Range,
    /// The caller's lock owner (FUSE `lock_owner`, or the open file when the
    /// kernel gives no lock owner).
    pub owner: Owner,
    /// The open file the I/O goes through: locks taken through it (OFD and
    /// flock) are the caller's own too.
    pub open_file: Option<Owner>,
    pub pid: u32,
    pub wait: Wait,
}

/// A lock as another party sees it: in a conflict, a listing or a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    pub owner: Owner,
    pub kind: LockKind,
    pub range: Range,
    /// Process id, or svid for NLM owners, of whoever took the lock.
    pub pid: u32,
    pub since: SystemTime,
}

/// What a queued request waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitFor {
    /// A lock, held by the request's owner once granted.
    Lock,
    /// Permission for mandatory-locked I/O; nothing is held once granted.
    Io,
}

/// A queued request as the table keeps it ([`crate::LockTable::waiter`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaiterInfo {
    pub file: FileId,
    pub owner: Owner,
    pub kind: LockKind,
    pub range: Range,
    pub waits_for: WaitFor,
}

/// Identifies a queued request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WaiterId(pub u64);

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A held lock of another owner conflicts; here is the first one.
    Conflict(Holding),
    /// Waiting would close a cycle of owners waiting on each other.
    Deadlock,
    /// The scope is in its grace period and this is not a reclaim.
    Grace,
    /// A reclaim arrived while the scope is not in grace.
    NotInGrace,
}

/// The decision on a [`LockRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockOutcome {
    Granted,
    /// Queued; a [`Event::Granted`] with this id follows when it is granted.
    Queued(WaiterId),
    Refused(Refusal),
}

/// The answer to a [`TestRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestOutcome {
    Free,
    Conflict(Holding),
    /// The scope is in grace: the answer could change as clients reclaim.
    Grace,
}

/// The decision on an [`IoRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOutcome {
    Allowed,
    /// Queued; an [`Event::Granted`] with `io: true` follows when the I/O may
    /// proceed. No lock is taken.
    Queued(WaiterId),
    /// `Conflict` for a non-waiting request, or `Deadlock`.
    Refused(Refusal),
}

/// How holders are being released, which decides the fate of value blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Unlock, close, orderly FREE_ALL: value blocks keep their validity.
    Normal,
    /// Crash, reboot notification, failover, administrative clear: value
    /// blocks of files where an exclusive lock is lost become not-valid.
    Abnormal,
}

/// What a bulk release removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Owners' presences removed, one per (owner, file).
    pub files: usize,
    pub waiters: usize,
}

/// Why a front door withdraws a queued request ([`crate::LockTable::cancel_with`]).
/// The table treats every reason alike; tracers report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelReason {
    /// The client withdrew it (NLM CANCEL) or the front door gave up on it.
    Cancelled,
    /// The waiting process was interrupted by a signal.
    Interrupted,
    /// The wait outlived the front door's time limit.
    TimedOut,
}

/// Why a queued request left the queue without being granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Its owner, host or scope was released in bulk.
    Released,
}

/// Wake-ups the table hands to the front doors after an operation, never
/// while the table is locked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A queued request was granted (its lock is now held, or for `io`
    /// requests, the I/O may proceed).
    Granted {
        waiter: WaiterId,
        token: u64,
        file: FileId,
        owner: Owner,
        kind: LockKind,
        range: Range,
        io: bool,
        waited: Duration,
    },
    /// A queued request was removed by a bulk release.
    Dropped {
        waiter: WaiterId,
        token: u64,
        file: FileId,
        owner: Owner,
        reason: DropReason,
    },
}

impl Event {
    pub fn waiter(&self) -> WaiterId {
        match self {
            Event::Granted { waiter, .. } | Event::Dropped { waiter, .. } => *waiter,
        }
    }

    pub fn token(&self) -> u64 {
        match self {
            Event::Granted { token, .. } | Event::Dropped { token, .. } => *token,
        }
    }
}
