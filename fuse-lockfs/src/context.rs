//! The state a lockfs mount shares with every other front door of the daemon: the
//! lock table (whose waiter registry wakes parked FUSE requests) and the
//! share-reservation table.
//!
//! The file system never creates these itself: a daemon builds one
//! [`LockContext`] and hands clones of it to each mount (and the same tables to
//! its NLM server), so all of them enforce one set of locks.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use lock_table::{FileId, ScopeId, SharedTable};
use share_reservations::ShareTable;

use crate::fs::Shared;

/// Handles to the shared tables; cheap to clone.
#[derive(Clone)]
pub struct LockContext {
    /// The lock table every front door locks against; parked FUSE requests
    /// wait in its registry ([`SharedTable::waiters`]).
    pub table: Arc<SharedTable>,
    /// Share reservations of every open file and NLM SHARE.
    pub shares: Arc<Mutex<ShareTable>>,
    /// The scope (service group) of the files these mounts serve.
    pub scope: ScopeId,
    mounts: Arc<Mutex<Vec<MountEntry>>>,
    next_mount: Arc<AtomicU64>,
}

struct MountEntry {
    id: u64,
    shared: Weak<Shared>,
    source: PathBuf,
    mountpoint: PathBuf,
}

impl std::fmt::Debug for LockContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockContext")
            .field("scope", &self.scope)
            .field("waiters", self.table.waiters())
            .finish_non_exhaustive()
    }
}

impl Default for LockContext {
    fn default() -> Self {
        Self::new()
    }
}

impl LockContext {
    /// A fresh lock table and share table for FUSE mounts only.
    pub fn new() -> Self {
        // Every FUSE wait is registered; an event reaching the notifier is one
        // whose request has already been answered (an interrupt won the race).
        let table = Arc::new(SharedTable::new(move |e: lock_table::Event| {
            tracing::debug!(token = e.token(), "event of a request already answered");
        }));
        Self::from_parts(table, Arc::new(Mutex::new(ShareTable::new())))
    }

    /// A context over tables built elsewhere (shared with other front doors).
    pub fn from_parts(table: Arc<SharedTable>, shares: Arc<Mutex<ShareTable>>) -> Self {
        LockContext {
            table,
            shares,
            scope: ScopeId::DEFAULT,
            mounts: Arc::default(),
            next_mount: Arc::new(AtomicU64::new(1)),
        }
    }

    pub(crate) fn shares(&self) -> MutexGuard<'_, ShareTable> {
        self.shares.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mounts(&self) -> MutexGuard<'_, Vec<MountEntry>> {
        self.mounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers mount `id` for path lookups in listings.
    pub(crate) fn add_mount(
        &self,
        id: u64,
        shared: &Arc<Shared>,
        source: PathBuf,
        mountpoint: PathBuf,
    ) {
        let mut m = self.mounts();
        m.retain(|e| e.shared.strong_count() > 0);
        m.push(MountEntry {
            id,
            shared: Arc::downgrade(shared),
            source,
            mountpoint,
        });
    }

    pub(crate) fn remove_mount(&self, id: u64) {
        self.mounts().retain(|e| e.id != id);
    }

    /// A new mount's id, for mounts that are not registered (tests).
    pub(crate) fn mount_id(&self) -> u64 {
        self.next_mount.fetch_add(1, Ordering::Relaxed)
    }

    /// Where a file of a mount's source directory is seen through the mount, if one serves
    /// that directory now: for files named by another door (NFS, NLM), which no mount
    /// may have looked up.
    pub fn mounted_path_of(&self, source_path: &std::path::Path) -> Option<PathBuf> {
        self.mounts().iter().find_map(|m| {
            m.shared.upgrade()?;
            let rel = source_path.strip_prefix(&m.source).ok()?;
            Some(m.mountpoint.join(rel))
        })
    }

    /// Where `file` can be reached now: its path under a mount point that knows it.
    ///
    /// The path is read from the daemon's descriptor of the backing file, so it
    /// follows renames; a file the kernel no longer caches has no path.
    pub fn path_of(&self, file: FileId) -> Option<PathBuf> {
        let key = crate::inode::FileKey {
            dev: file.dev,
            ino: file.ino,
        };
        for m in self.mounts().iter() {
            let Some(shared) = m.shared.upgrade() else {
                continue;
            };
            let Some(inode) = shared.inodes.by_key(&key) else {
                continue;
            };
            let Some(backing) = crate::sys::fd_path(&inode.fd) else {
                continue;
            };
            if let Ok(rel) = backing.strip_prefix(&m.source) {
                return Some(m.mountpoint.join(rel));
            }
        }
        None
    }
}
