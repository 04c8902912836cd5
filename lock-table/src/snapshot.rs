//! A point-in-time listing of the table, for `lockfs locks` and tests.

use crate::ids::{FileId, LockKind, Owner, ScopeId};
use crate::ops::WaiterId;
use crate::range::Range;
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// Held or waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockState {
    Held,
    /// Queued for a lock (`io: false`) or for mandatory-locked I/O.
    Waiting {
        waiter: WaiterId,
        io: bool,
    },
}

/// One held lock or queued request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub file: FileId,
    pub scope: ScopeId,
    pub owner: Owner,
    /// The remote host's name for NLM owners.
    pub host: Option<String>,
    /// Process id, or svid for NLM owners.
    pub pid: u32,
    pub kind: LockKind,
    pub range: Range,
    pub state: LockState,
    pub since: SystemTime,
}
