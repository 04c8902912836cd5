//! The inode table: which backing file each FUSE inode number stands for.
//!
//! Each inode holds an `O_PATH` descriptor of its backing file, so every later
//! operation is made relative to that descriptor and no path is walked twice.
//! Inodes are keyed by the backing `(st_dev, st_ino)`, so all hard links of a file
//! share one inode number. The kernel's lookup count decides when an entry (and its
//! descriptor) goes away, which keeps the daemon's descriptor count bounded.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rustc_hash::FxHashMap;

use crate::options::IoMode;

/// The identity of a backing file: device and inode number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    /// `st_dev` of the backing file.
    pub dev: u64,
    /// `st_ino` of the backing file.
    pub ino: u64,
}

/// The root inode number FUSE reserves.
pub(crate) const ROOT_INO: u64 = 1;

/// Inode numbers handed out when the backing `st_ino` cannot be reused as is.
const SYNTHETIC_BASE: u64 = 1 << 63;

/// The passthrough/direct-I/O state of an inode while it has open files.
#[derive(Debug, Default)]
pub(crate) struct IoState {
    /// Open regular-file handles on this inode.
    pub(crate) opens: u64,
    /// The mode all current opens share.
    pub(crate) mode: Option<IoMode>,
    /// The kernel backing file shared by all passthrough opens of the inode.
    pub(crate) backing: Option<Arc<fuser::BackingId>>,
    /// Whether reads, writes and truncates are checked against the lock table
    /// (mandatory locking); only ever true while the mode is direct I/O.
    pub(crate) mandatory: bool,
}

/// One inode of the mount.
#[derive(Debug)]
pub(crate) struct Inode {
    /// The number the kernel knows this inode by.
    pub(crate) ino: u64,
    /// The backing file's identity.
    pub(crate) key: FileKey,
    /// `S_IFMT` bits of the backing file (they never change for one inode).
    pub(crate) kind: u32,
    /// `O_PATH | O_NOFOLLOW` descriptor of the backing file.
    pub(crate) fd: OwnedFd,
    /// Open-file state, see [`IoState`].
    pub(crate) io: Mutex<IoState>,
    /// What the kernel may cache of this inode, see [`CacheMarks`].
    pub(crate) cache: CacheMarks,
}

/// Whether the kernel may hold anything it learned from the daemon about an inode
/// (attributes, data, names in it) that no invalidation has covered yet, so that a
/// change made through another door can skip telling the kernel when nothing is cached.
/// Telling costs a write into `/dev/fuse` that may wait for a directory lock, which is
/// why another door wants to know it can skip it.
///
/// Every request about the inode adds one to `seen` before the daemon reads the
/// backing file. An invalidation takes the count before it begins and, once the kernel
/// has done it, raises `told` to that count. So when a change finds `seen` equal to
/// `told`, every answer the kernel was given came from a request counted before the last
/// invalidation began, and that invalidation dropped it: there is nothing to tell. A
/// request counted after the change looked reads what the change left.
#[derive(Debug, Default)]
pub(crate) struct CacheMarks {
    seen: AtomicU64,
    told: AtomicU64,
}

impl CacheMarks {
    /// A request about the inode is being answered.
    pub(crate) fn seen(&self) {
        self.seen.fetch_add(1, Ordering::SeqCst);
    }

    /// The count to invalidate up to, or `None` when the kernel caches nothing new.
    pub(crate) fn unseen_since_told(&self) -> Option<u64> {
        let seen = self.seen.load(Ordering::SeqCst);
        (seen != self.told.load(Ordering::SeqCst)).then_some(seen)
    }

    /// The kernel dropped what it had from requests counted up to `seen`.
    pub(crate) fn told(&self, seen: u64) {
        self.told.fetch_max(seen, Ordering::SeqCst);
    }
}

impl Inode {
    pub(crate) fn is_symlink(&self) -> bool {
        self.kind == libc::S_IFLNK
    }

    pub(crate) fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    pub(crate) fn io_state(&self) -> MutexGuard<'_, IoState> {
        self.io.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug)]
struct Entry {
    inode: Arc<Inode>,
    nlookup: u64,
}

#[derive(Debug, Default)]
struct Maps {
    by_ino: FxHashMap<u64, Entry>,
    by_key: FxHashMap<FileKey, u64>,
}

/// All inodes the kernel currently knows.
#[derive(Debug)]
pub(crate) struct InodeTable {
    maps: Mutex<Maps>,
    root_dev: u64,
    next_synthetic: AtomicU64,
}

impl InodeTable {
    /// A table whose root is the backing directory behind `fd`.
    pub(crate) fn new(fd: OwnedFd, st: &libc::stat) -> Self {
        let key = FileKey {
            dev: st.st_dev,
            ino: st.st_ino,
        };
        let root = Arc::new(Inode {
            ino: ROOT_INO,
            key,
            kind: st.st_mode & libc::S_IFMT,
            fd,
            io: Mutex::default(),
            cache: CacheMarks::default(),
        });
        let mut maps = Maps::default();
        maps.by_key.insert(key, ROOT_INO);
        // The root is never forgotten: its count starts at one and forget skips it.
        maps.by_ino.insert(
            ROOT_INO,
            Entry {
                inode: root,
                nlookup: 1,
            },
        );
        InodeTable {
            maps: Mutex::new(maps),
            root_dev: st.st_dev,
            next_synthetic: AtomicU64::new(SYNTHETIC_BASE),
        }
    }

    fn maps(&self) -> MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The inode the kernel calls `ino`, if it still knows it; counted as seen by the
    /// kernel ([`CacheMarks`]), since every request about an inode comes here.
    pub(crate) fn get(&self, ino: u64) -> Option<Arc<Inode>> {
        let inode = self.maps().by_ino.get(&ino).map(|e| e.inode.clone())?;
        inode.cache.seen();
        Some(inode)
    }

    /// Records one more kernel reference to the backing file behind `fd`.
    ///
    /// If the file is already known (another name, a hard link) the existing inode is
    /// returned and `fd` is closed, so one backing file never costs two descriptors.
    pub(crate) fn lookup(&self, fd: OwnedFd, st: &libc::stat) -> Arc<Inode> {
        let key = FileKey {
            dev: st.st_dev,
            ino: st.st_ino,
        };
        let mut maps = self.maps();
        if let Some(&ino) = maps.by_key.get(&key) {
            if let Some(e) = maps.by_ino.get_mut(&ino) {
                e.nlookup = e.nlookup.saturating_add(1);
                e.inode.cache.seen();
                return e.inode.clone();
            }
        }
        // The backing inode number is stable across lookups and remounts, which tools
        // comparing st_ino rely on. It is safe to reuse: while we hold the O_PATH
        // descriptor the backing file system cannot recycle that number.
        let ino = if key.dev == self.root_dev
            && key.ino != ROOT_INO
            && key.ino < SYNTHETIC_BASE
            && !maps.by_ino.contains_key(&key.ino)
        {
            key.ino
        } else {
            self.next_synthetic.fetch_add(1, Ordering::Relaxed)
        };
        let inode = Arc::new(Inode {
            ino,
            key,
            kind: st.st_mode & libc::S_IFMT,
            fd,
            io: Mutex::default(),
            cache: CacheMarks::default(),
        });
        // A new inode: `seen` one above `told`, so a change before any later request
        // still invalidates what this entry's answer told the kernel.
        inode.cache.seen();
        maps.by_key.insert(key, ino);
        maps.by_ino.insert(
            ino,
            Entry {
                inode: inode.clone(),
                nlookup: 1,
            },
        );
        inode
    }

    /// The inode of the backing file `key`, if the kernel knows it.
    pub(crate) fn by_key(&self, key: &FileKey) -> Option<Arc<Inode>> {
        let maps = self.maps();
        let ino = maps.by_key.get(key)?;
        maps.by_ino.get(ino).map(|e| e.inode.clone())
    }

    /// Drops `n` kernel references; the inode goes when none is left.
    /// Drops `n` lookups of `ino`; answers the backing file's key when that was
    /// the last one and the inode is gone from the table.
    pub(crate) fn forget(&self, ino: u64, n: u64) -> Option<FileKey> {
        if ino == ROOT_INO {
            return None;
        }
        let mut maps = self.maps();
        let gone = match maps.by_ino.get_mut(&ino) {
            Some(e) => {
                e.nlookup = e.nlookup.saturating_sub(n);
                e.nlookup == 0
            }
            None => {
                tracing::debug!(ino, "forget of an unknown inode");
                false
            }
        };
        if !gone {
            return None;
        }
        let e = maps.by_ino.remove(&ino)?;
        if maps.by_key.get(&e.inode.key) == Some(&ino) {
            maps.by_key.remove(&e.inode.key);
        }
        Some(e.inode.key)
    }

    /// Number of inodes currently known (the root included).
    pub(crate) fn len(&self) -> usize {
        self.maps().by_ino.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys;
    use std::os::fd::AsFd;

    fn open(path: &std::path::Path) -> (OwnedFd, libc::stat) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let fd = sys::openat(
            // SAFETY: AT_FDCWD is a valid directory handle for *at calls.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(libc::AT_FDCWD) },
            &c,
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
        )
        .unwrap();
        let st = sys::fstat(fd.as_fd()).unwrap();
        (fd, st)
    }

    #[test]
    fn hard_links_share_an_inode_and_forget_releases_it() {
        let dir = tempfile::tempdir().unwrap();
        let (rfd, rst) = open(dir.path());
        let table = InodeTable::new(rfd, &rst);
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();

        let (fa, sa) = open(&dir.path().join("a"));
        let (fb, sb) = open(&dir.path().join("b"));
        let a = table.lookup(fa, &sa);
        let b = table.lookup(fb, &sb);
        assert_eq!(a.ino, b.ino);
        assert_eq!(
            a.ino, sa.st_ino,
            "same-device files keep their backing number"
        );
        assert_eq!(table.len(), 2);

        table.forget(a.ino, 1);
        assert!(table.get(a.ino).is_some(), "one lookup left");
        table.forget(a.ino, 1);
        assert!(table.get(a.ino).is_none());
        assert_eq!(table.len(), 1);
        table.forget(ROOT_INO, 100);
        assert!(table.get(ROOT_INO).is_some(), "the root is never forgotten");
    }
}
