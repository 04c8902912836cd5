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

use crate::ids::{FileId, Owner, ScopeId};
use crate::range::Range;
use crate::table::{FileState, LockTable};

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

impl LvbValue {
    /// The block after a write of `value` (zero-padded): valid, sequence
    /// advanced.
    pub fn written(&self, value: &[u8]) -> Result<LvbValue, LvbError> {
        if value.len() > LVB_LEN {
            return Err(LvbError::TooLong { len: value.len() });
        }
        let mut bytes = [0; LVB_LEN];
        bytes[..value.len()].copy_from_slice(value);
        Ok(LvbValue {
            bytes,
            valid: true,
            seq: self.seq.wrapping_add(1),
        })
    }

    /// The same value, not-valid.
    pub fn invalidated(&self) -> LvbValue {
        LvbValue {
            valid: false,
            ..*self
        }
    }
}

/// The lock owners acting for one caller, each with the table file its locks
/// live on.
///
/// A front door knows several owners for one caller (a local process has a
/// POSIX owner and, through the file it calls on, an OFD and a flock owner;
/// flock locks may live in a namespace of their own), and a value block is
/// the file's whatever kind of lock protects it.
pub type Claims = [(FileId, Owner)];

/// Value blocks as front doors that keep them on storage use them.
///
/// The table holds each block in memory once a door has loaded it (or an
/// abnormal release marked it not-valid before anyone loaded it); the door
/// stores every change before it puts it here, so what the table shows is
/// always on storage too. The rules (who may write, what makes a block
/// not-valid) stay here.
impl LockTable {
    /// Whether the caller may change the value block: one of its owners holds
    /// an exclusive lock on the file ([`LvbError::NotExclusive`] if it holds
    /// only shared ones, [`LvbError::NotHeld`] if none).
    pub fn lvb_authority(&self, claims: &Claims) -> Result<(), LvbError> {
        let mut held = false;
        for (file, owner) in claims {
            let Some(f) = self.files.get(file) else {
                continue;
            };
            if !f.holdings.holds(owner) {
                continue;
            }
            if f.holdings.holds_exclusive_in(owner, Range::WHOLE) {
                return Ok(());
            }
            held = true;
        }
        Err(if held {
            LvbError::NotExclusive
        } else {
            LvbError::NotHeld
        })
    }

    /// Whether one of the caller's owners holds any lock on the file.
    pub fn lvb_holds(&self, claims: &Claims) -> bool {
        claims.iter().any(|(file, owner)| {
            self.files
                .get(file)
                .is_some_and(|f| f.holdings.holds(owner))
        })
    }

    /// The block in memory, if a door loaded it or an abnormal release marked
    /// it not-valid since the table started.
    pub fn lvb_block(&self, file: FileId) -> Option<LvbValue> {
        self.files
            .get(&file)
            .and_then(|f| f.lvb.as_deref().copied())
    }

    /// Installs the block a door read from storage. The value and sequence
    /// number are storage's; it is valid only if storage says so and no
    /// abnormal release marked it not-valid before it was loaded. Returns the
    /// block as installed.
    pub fn lvb_load(&mut self, file: FileId, scope: ScopeId, stored: LvbValue) -> LvbValue {
        let f = self
            .files
            .entry(file)
            .or_insert_with(|| FileState::new(scope));
        let valid = stored.valid && f.lvb.as_ref().is_none_or(|b| b.valid);
        let v = LvbValue { valid, ..stored };
        f.lvb = Some(Box::new(v));
        v
    }

    /// Replaces the block with one the door has stored (a write, an
    /// invalidation).
    pub fn lvb_put(&mut self, file: FileId, scope: ScopeId, value: LvbValue) {
        let f = self
            .files
            .entry(file)
            .or_insert_with(|| FileState::new(scope));
        f.lvb = Some(Box::new(value));
    }

    /// An exclusive holder of the file was lost abnormally (its process died
    /// holding the lock): the block is not-valid until rewritten.
    pub fn lvb_lost(&mut self, file: FileId, scope: ScopeId) {
        self.files
            .entry(file)
            .or_insert_with(|| FileState::new(scope))
            .invalidate_lvb();
    }

    /// Every block in memory, for listings and for storing invalidations.
    pub fn lvb_blocks(&self) -> Vec<(FileId, LvbValue)> {
        let mut v: Vec<_> = self
            .files
            .iter()
            .filter_map(|(id, f)| f.lvb.as_deref().map(|b| (*id, *b)))
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }
}

#[cfg(test)]
mod tests {
    use crate::*;

    const F: FileId = FileId::new(1, 100);
    const FLOCK_F: FileId = FileId::new(1 | (1 << 63), 100);
    const S: ScopeId = ScopeId::DEFAULT;

    fn lock(t: &mut LockTable, file: FileId, owner: Owner, kind: LockKind) {
        let out = t.lock(&LockRequest {
            file,
            scope: S,
            owner,
            pid: 1,
            kind,
            range: Range::WHOLE,
            wait: Wait::No,
            reclaim: false,
        });
        assert_eq!(out, LockOutcome::Granted);
    }

    fn stored(bytes: &[u8], seq: u64, valid: bool) -> LvbValue {
        let mut v = LvbValue::default().written(bytes).unwrap();
        v.seq = seq;
        v.valid = valid;
        v
    }

    #[test]
    fn authority_needs_an_exclusive_lock_of_one_of_the_claims() {
        let mut t = LockTable::new();
        let claims = [(F, Owner::posix(1)), (FLOCK_F, Owner::flock(9))];
        assert_eq!(t.lvb_authority(&claims), Err(LvbError::NotHeld));
        assert!(!t.lvb_holds(&claims));
        lock(&mut t, F, Owner::posix(1), LockKind::Shared);
        assert!(t.lvb_holds(&claims));
        assert_eq!(t.lvb_authority(&claims), Err(LvbError::NotExclusive));
        // Another owner's exclusive lock gives the caller nothing.
        lock(&mut t, FLOCK_F, Owner::flock(8), LockKind::Exclusive);
        assert_eq!(t.lvb_authority(&claims), Err(LvbError::NotExclusive));
        t.unlock(FLOCK_F, Owner::flock(8), Range::WHOLE);
        // An exclusive flock lock in its own namespace counts for the file.
        lock(&mut t, FLOCK_F, Owner::flock(9), LockKind::Exclusive);
        assert_eq!(t.lvb_authority(&claims), Ok(()));
    }

    #[test]
    fn loading_keeps_an_invalidation_made_before_the_load() {
        let mut t = LockTable::new();
        assert_eq!(t.lvb_block(F), None);
        // A writer was lost before any door loaded the stored block.
        t.lvb_lost(F, S);
        let b = t.lvb_block(F).unwrap();
        assert!(!b.valid);
        let v = t.lvb_load(F, S, stored(b"kept", 7, true));
        assert_eq!((&v.bytes[..4], v.seq, v.valid), (&b"kept"[..], 7, false));
        assert_eq!(t.lvb_block(F), Some(v));
        // A load over a valid block takes storage's word.
        let mut t = LockTable::new();
        let v = t.lvb_load(F, S, stored(b"x", 3, true));
        assert!(v.valid);
        let v = t.lvb_load(F, S, stored(b"x", 3, false));
        assert!(!v.valid);
    }

    #[test]
    fn writes_advance_the_sequence_and_restore_validity() {
        let base = stored(b"old", 41, false);
        let w = base.written(b"new").unwrap();
        assert_eq!((&w.bytes[..3], w.seq, w.valid), (&b"new"[..], 42, true));
        assert!(w.bytes[3..].iter().all(|b| *b == 0));
        assert_eq!(
            base.written(&[0; LVB_LEN + 1]),
            Err(LvbError::TooLong { len: LVB_LEN + 1 })
        );
        let i = w.invalidated();
        assert_eq!((i.bytes, i.seq, i.valid), (w.bytes, 42, false));
    }

    #[test]
    fn blocks_in_memory_are_listed_and_keep_the_file() {
        let mut t = LockTable::new();
        lock(&mut t, F, Owner::posix(1), LockKind::Exclusive);
        t.lvb_put(F, S, stored(b"v", 1, true));
        t.unlock(F, Owner::posix(1), Range::WHOLE);
        assert_eq!(t.lvb_blocks(), vec![(F, stored(b"v", 1, true))]);
        assert_eq!(t.file_count(), 1);
    }
}
