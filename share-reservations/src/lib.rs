//! Windows-style share reservations for lockfs.
//!
//! A share reservation is made when a file is opened: the opener states what
//! it will do (its *access*: read, write, both, or neither) and what it
//! forbids everyone else to do while it has the file open (its *deny*: none,
//! read, write, or both). A new reservation is refused when its access meets
//! the deny of a reservation another owner holds, or its deny meets their
//! access. This is the model of Windows `CreateFile` (`dwDesiredAccess` and
//! the inverse of `dwShareMode`) and of NLM `SHARE` (`fsh_access`,
//! `fsh_mode`).
//!
//! Reservations are keyed by the lock table's [`lock_table::FileId`] and owned by its
//! [`lock_table::Owner`]s, so a local open on the FUSE mount (owner: the open file) and
//! a remote NLM SHARE (owner: the client's host and owner handle) meet in the
//! same table. They are independent of byte-range locks, as on Windows.
//!
//! A second reservation of the same owner on the same file replaces the first
//! (NLM SHARE semantics); it is checked against other owners only. Grace
//! periods are the front door's business: it asks the lock table whether the
//! scope is in grace before admitting a non-reclaim SHARE.
//!
//! # Conflict matrix
//!
//! Each mode is written *access*/*deny* (`-` none, `R` read, `W` write, `RW`
//! both). ✗ marks a pair that cannot be held by two owners at once; the
//! relation is symmetric. A test checks every cell against the rule.
//!
#![doc = include_str!("matrix.md")]

pub mod mode;
pub mod table;

pub use mode::{ShareAccess, ShareDeny, ShareMode};
pub use table::{Reservation, ShareConflict, ShareInfo, ShareRequest, ShareTable};

#[cfg(test)]
mod tests;
