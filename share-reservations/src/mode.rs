//! Access and deny modes and the rule that decides whether two reservations
//! conflict.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a reservation does to the file: read, write, both, or neither
/// (NLM `fsh_access`: `fsa_NONE`, `fsa_R`, `fsa_W`, `fsa_RW`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShareAccess(u8);

/// What a reservation forbids others to do (NLM `fsh_mode`: `fsm_DN`,
/// `fsm_DR`, `fsm_DW`, `fsm_DRW`; Windows `dwShareMode` inverted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShareDeny(u8);

const R: u8 = 1;
const W: u8 = 2;

impl ShareAccess {
    pub const NONE: ShareAccess = ShareAccess(0);
    pub const READ: ShareAccess = ShareAccess(R);
    pub const WRITE: ShareAccess = ShareAccess(W);
    pub const READ_WRITE: ShareAccess = ShareAccess(R | W);
    pub const ALL: [ShareAccess; 4] = [Self::NONE, Self::READ, Self::WRITE, Self::READ_WRITE];

    /// From the NLM wire value (0..=3); `None` for anything else.
    pub fn from_wire(v: u32) -> Option<ShareAccess> {
        (v <= 3).then_some(ShareAccess(v as u8))
    }

    pub fn to_wire(self) -> u32 {
        self.0 as u32
    }

    /// From open(2) flags: O_RDONLY reads, O_WRONLY writes, O_RDWR both.
    pub fn from_open_flags(flags: i32) -> ShareAccess {
        match flags & 0o3 {
            0 => Self::READ,
            1 => Self::WRITE,
            _ => Self::READ_WRITE,
        }
    }

    pub fn reads(self) -> bool {
        self.0 & R != 0
    }

    pub fn writes(self) -> bool {
        self.0 & W != 0
    }
}

impl ShareDeny {
    pub const NONE: ShareDeny = ShareDeny(0);
    pub const READ: ShareDeny = ShareDeny(R);
    pub const WRITE: ShareDeny = ShareDeny(W);
    pub const READ_WRITE: ShareDeny = ShareDeny(R | W);
    pub const ALL: [ShareDeny; 4] = [Self::NONE, Self::READ, Self::WRITE, Self::READ_WRITE];

    /// From the NLM wire value (0..=3); `None` for anything else.
    pub fn from_wire(v: u32) -> Option<ShareDeny> {
        (v <= 3).then_some(ShareDeny(v as u8))
    }

    pub fn to_wire(self) -> u32 {
        self.0 as u32
    }
}

/// An access/deny pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShareMode {
    pub access: ShareAccess,
    pub deny: ShareDeny,
}

impl ShareMode {
    pub const fn new(access: ShareAccess, deny: ShareDeny) -> Self {
        ShareMode { access, deny }
    }

    /// Whether reservations of two different owners can coexist: neither
    /// may do what the other denies.
    pub fn conflicts_with(&self, other: &ShareMode) -> bool {
        (self.access.0 & other.deny.0) != 0 || (self.deny.0 & other.access.0) != 0
    }
}

fn letters(bits: u8) -> &'static str {
    match bits {
        0 => "-",
        R => "R",
        W => "W",
        _ => "RW",
    }
}

impl fmt::Display for ShareAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(letters(self.0))
    }
}

impl fmt::Display for ShareDeny {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(letters(self.0))
    }
}

impl fmt::Display for ShareMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.access, self.deny)
    }
}
