//! Lock value blocks: a small value attached to a file resource, with DLM
//! semantics.
//!
//! As in VMS, Tru64 and the Linux DLM, the value is written only by a holder
//! of an exclusive lock, starts as zeros and valid, and is marked not-valid
//! when an exclusive holder is lost abnormally (host crash, service group
//! failover): the holder may have been half way through changing the state the
//! value describes. Reads while not-valid succeed and say so; the next write
//! makes it valid again. A sequence number counts writes so readers can tell
//! whether anything changed since they last looked.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Size of a value block, as the Linux DLM's user-space LVB.
pub const LVB_LEN: usize = 32;

/// A value block as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LvbValue {
    pub bytes: [u8; LVB_LEN],
    /// False after an exclusive holder was lost abnormally, until rewritten.
    pub valid: bool,
    /// Number of writes since the resource was created.
    pub seq: u64,
}

impl Default for LvbValue {
    fn default() -> Self {
        LvbValue {
            bytes: [0; LVB_LEN],
            valid: true,
            seq: 0,
        }
    }
}

/// Why a value-block operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum LvbError {
    #[error("the caller holds no lock on the file")]
    NotHeld,
    #[error("only a holder of an exclusive lock may change the value block")]
    NotExclusive,
    #[error("value of {len} bytes exceeds the {LVB_LEN}-byte value block")]
    TooLong { len: usize },
}
