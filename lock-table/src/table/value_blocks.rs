//! The table's side of lock value blocks (see [`crate::lvb`]): who may read
//! and write a file's value block, decided by the locks held on it.

use super::{FileState, LockTable};
use crate::ids::{FileId, Owner};
use crate::lvb::{LvbError, LvbValue, LVB_LEN};
use crate::range::Range;

impl LockTable {
    /// Read the value block of a file; the caller must hold a lock on it.
    pub fn lvb_read(&self, file: FileId, owner: Owner) -> Result<LvbValue, LvbError> {
        let f = self.files.get(&file).ok_or(LvbError::NotHeld)?;
        if !f.holdings.holds(&owner) {
            return Err(LvbError::NotHeld);
        }
        Ok(f.lvb.as_deref().copied().unwrap_or_default())
    }

    /// Read the value block without holding a lock (administration).
    pub fn lvb_peek(&self, file: FileId) -> LvbValue {
        self.files
            .get(&file)
            .and_then(|f| f.lvb.as_deref().copied())
            .unwrap_or_default()
    }

    pub(super) fn lvb_writable(
        &mut self,
        file: FileId,
        owner: Owner,
    ) -> Result<&mut FileState, LvbError> {
        let f = self.files.get_mut(&file).ok_or(LvbError::NotHeld)?;
        if !f.holdings.holds(&owner) {
            return Err(LvbError::NotHeld);
        }
        if !f.holdings.holds_exclusive_in(&owner, Range::WHOLE) {
            return Err(LvbError::NotExclusive);
        }
        Ok(f)
    }

    /// Write a new value (shorter values are zero-padded); the block becomes
    /// valid. Returns the new sequence number.
    pub fn lvb_write(&mut self, file: FileId, owner: Owner, value: &[u8]) -> Result<u64, LvbError> {
        if value.len() > LVB_LEN {
            return Err(LvbError::TooLong { len: value.len() });
        }
        let f = self.lvb_writable(file, owner)?;
        let lvb = f.lvb.get_or_insert_with(Default::default);
        lvb.bytes = [0; LVB_LEN];
        lvb.bytes[..value.len()].copy_from_slice(value);
        lvb.valid = true;
        lvb.seq += 1;
        Ok(lvb.seq)
    }

    /// Mark the value not-valid explicitly (an exclusive holder gives up on
    /// keeping it current).
    pub fn lvb_invalidate(&mut self, file: FileId, owner: Owner) -> Result<(), LvbError> {
        self.lvb_writable(file, owner)?.invalidate_lvb();
        Ok(())
    }
}
