//! Open-file and open-directory handle tables.
//!
//! A handle number (`fh`) is what the kernel passes back on every read, write,
//! flush, release and lock request. Handle numbers come from a 64-bit counter and are
//! never reused during the life of a mount, because they will identify OFD and flock
//! lock owners: a recycled number could inherit a dead file's locks.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rustc_hash::FxHashMap;

use crate::inode::Inode;
use crate::options::IoMode;

/// A regular file opened through the mount.
#[derive(Debug)]
pub(crate) struct OpenFile {
    /// The backing file, opened with the caller's flags.
    pub(crate) fd: OwnedFd,
    /// The inode the file belongs to.
    pub(crate) inode: Arc<Inode>,
    /// The open flags the kernel passed.
    pub(crate) flags: i32,
    /// How this file's reads and writes are served.
    pub(crate) mode: IoMode,
    /// The backing file's identity in the lock table.
    pub(crate) file_id: lock_table::FileId,
    /// Lock owner values (not flock) used through this open file; the OFD owner
    /// among them has its locks dropped when the file is released.
    pub(crate) lock_owners: Mutex<Vec<u64>>,
}

impl OpenFile {
    /// Remembers that `owner` locked through this open file.
    pub(crate) fn note_lock_owner(&self, owner: u64) {
        let mut v = self.lock_owners.lock().unwrap_or_else(|p| p.into_inner());
        if !v.contains(&owner) {
            v.push(owner);
        }
    }

    /// The lock owners used through this open file.
    pub(crate) fn lock_owners(&self) -> Vec<u64> {
        self.lock_owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A directory opened through the mount.
#[derive(Debug)]
pub(crate) struct OpenDir {
    /// The backing directory; its file position is the readdir cursor.
    pub(crate) fd: OwnedFd,
    /// Serialises seek + getdents on the shared cursor.
    pub(crate) cursor: Mutex<()>,
}

/// Handles of one kind, numbered from a counter that never wraps in practice.
#[derive(Debug)]
pub(crate) struct HandleTable<T> {
    next: AtomicU64,
    map: RwLock<FxHashMap<u64, Arc<T>>>,
}

impl<T> HandleTable<T> {
    pub(crate) fn new() -> Self {
        Self::with_base(0)
    }

    /// A table whose numbers start above `base`: mounts sharing one lock table
    /// number their files from different bases (the mount id in the top 16 bits),
    /// so that open-file lock owners of two mounts never coincide.
    pub(crate) fn with_base(base: u64) -> Self {
        HandleTable {
            // 0 is left unused so that an unset fh is never a live handle.
            next: AtomicU64::new(base + 1),
            map: RwLock::default(),
        }
    }

    /// A fresh handle number, for a value stored later with [`Self::insert_at`].
    pub(crate) fn allocate(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Stores `value` under a number from [`Self::allocate`].
    pub(crate) fn insert_at(&self, fh: u64, value: T) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(value));
    }

    /// Stores `value` under a fresh handle number.
    pub(crate) fn insert(&self, value: T) -> u64 {
        let fh = self.allocate();
        self.insert_at(fh, value);
        fh
    }

    pub(crate) fn get(&self, fh: u64) -> Option<Arc<T>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
    }

    pub(crate) fn remove(&self, fh: u64) -> Option<Arc<T>> {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh)
    }

    pub(crate) fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Removes and returns every handle.
    pub(crate) fn drain(&self) -> Vec<(u64, Arc<T>)> {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect()
    }

    /// Number of handles for which `pred` holds.
    pub(crate) fn count(&self, pred: impl Fn(&T) -> bool) -> usize {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|v| pred(v))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_numbers_are_never_reused() {
        let t = HandleTable::<u32>::new();
        let a = t.insert(1);
        assert!(t.remove(a).is_some());
        let b = t.insert(2);
        assert_ne!(a, b);
        assert_ne!(a, 0);
        assert!(t.get(a).is_none());
        assert_eq!(t.get(b).as_deref(), Some(&2));
        assert_eq!(t.len(), 1);
    }
}
