//! The lock table of lockfs: one core that every front door locks against.
//!
//! FUSE callers (local processes), NLM clients (remote hosts) and the
//! administration socket all translate their requests into the operations of
//! [`LockTable`]; the table alone decides conflicts, queues waiters, grants
//! them in FIFO order, detects deadlocks, enforces grace periods per scope and
//! keeps lock value blocks. It does no I/O, knows no protocol, and never
//! calls out while it is locked: grants are returned as [`Event`]s that
//! [`SharedTable`] hands, after the table's mutex is released, to the waiting
//! request's door through the waiter registry ([`waiters`]), or to the
//! notifier for requests queued outside it.
//!
//! # Semantics
//! - **Owners** ([`Owner`]): local POSIX owners (FUSE `lock_owner`), open file
//!   descriptions (OFD locks), flock owners, NLM owners (host, svid, owner
//!   handle, interned by [`Registry`]). An owner's locks never conflict with
//!   each other.
//! - **Byte ranges** ([`Range`]): the whole `u64` space, inclusive ends,
//!   `u64::MAX` meaning "to end of file".
//! - **Locks**: shared and exclusive. A new lock by the same owner replaces,
//!   upgrades, downgrades, splits and merges that owner's locks exactly as
//!   Linux `fs/locks.c` does: adjacent or overlapping locks of the same type
//!   merge, locks of the other type are split around the new one, and
//!   unlocking the middle of a lock leaves two.
//! - **Conflicts**: two locks of different owners conflict when their ranges
//!   overlap and at least one is exclusive. A test reports the conflicting
//!   lock with the lowest offset, as that owner's whole lock.
//! - **Waiting**: blocking requests queue per file and are granted in FIFO
//!   order as conflicts clear, without starvation (see [`table`]); a request
//!   that would close a cycle of POSIX or NLM owners waiting for each other is
//!   refused with [`Refusal::Deadlock`]. Every door parks its waiting
//!   requests in one registry ([`waiters`]) through
//!   [`SharedTable::lock_or_wait`] and [`SharedTable::gate`].
//! - **Mandatory I/O**: [`LockTable::io`] decides whether a read (blocked by
//!   others' exclusive locks) or a write or truncate (blocked by any lock of
//!   another owner) may proceed; locks of the caller's owner or of the open
//!   file it uses are its own. Doors ask through one gate
//!   ([`SharedTable::gate`], [`GateRequest`]), which admits I/O with an
//!   [`IoPass`] that holds its range until it is done.
//! - **Scopes and grace**: every file belongs to a scope (a service group).
//!   While a scope is in grace only reclaims are admitted; a conflicting
//!   reclaim is refused; other requests get [`Refusal::Grace`]. A file's
//!   separate flock namespace ([`Namespace::Flock`]) belongs to
//!   [`ScopeId::LOCAL_ONLY`] whatever scope the request names: no client can
//!   reclaim there.
//! - **Lock value blocks** ([`LvbValue`]): DLM semantics, see [`lvb`].

pub mod gate;
mod holdings;
pub mod ids;
mod idset;
pub mod lvb;
pub mod ops;
mod probe;
pub mod range;
pub mod registry;
mod segmap;
pub mod shared;
pub mod snapshot;
pub mod table;
pub mod waiters;

pub use gate::GateRequest;
pub use ids::{Access, FileId, HostId, LockKind, Namespace, Owner, OwnerKind, ScopeId};
pub use lvb::{Claims, LvbError, LvbValue, LVB_LEN};
pub use ops::{
    CancelReason, DropReason, Event, Holding, IoOutcome, IoRequest, LockOutcome, LockRequest,
    Refusal, Release, Released, TestOutcome, TestRequest, Wait, WaitFor, WaiterId, WaiterInfo,
};
pub use range::{Range, RangeError};
pub use registry::Registry;
pub use shared::{IoPass, Notify, SharedTable};
pub use snapshot::{LockInfo, LockState};
pub use table::{IoTicket, LockTable};
pub use waiters::{Admission, DoorId, Park, RequestKey, Waiters, Waiting, Wake};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod model;
