//! Where lock value blocks live between daemon runs: on the export's own
//! storage, so they survive restarts and move with the storage when a service
//! group moves.
//!
//! - Each export keeps its files' blocks in one store file, `.lockfs/lvb`
//!   under its root, which the daemon maps shared ([`crate::lvb_slots`]):
//!   storing a block is a write to memory, with no system call.
//! - A file whose block is in the store carries a marker, the extended
//!   attribute [`LVB_XATTR`] of its backing file: a random token, the same as
//!   in the store's slot, and the block as it was when the file got its slot.
//!   It is written once per file, synchronously, on its first store. The token
//!   ties a slot to one file, not to an inode number that a later file may
//!   reuse; and a file with a marker but no readable slot (a store damaged or
//!   lost) reads not-valid, never as a file that never had a value.
//! - Files on another device than the export's root (a file system mounted
//!   inside the source) keep their whole block in [`LVB_XATTR`], written on
//!   every store, as every file did before the store existed. A file still
//!   holding such a block on the export's device is moved into the store the
//!   first time it is read ([`Blocks::load`]).
//! - Each export's root directory carries [`EPOCH_XATTR`]: the export's crash
//!   epoch and whether its last run ended cleanly ([`Epoch`]).
//!
//! A stored block reads valid only if it was stored valid *in the current
//! epoch*. Opening an export ([`Epoch::begin`]) advances the epoch unless the
//! previous run ended with [`Epoch::end_clean`], so after a crash every stored
//! block of the export reads not-valid until rewritten, without visiting a
//! single file; a clean restart keeps every block as it was. The same pair of
//! calls serves any unit that comes and goes as a whole (a service group
//! coming online calls `begin` on each of its exports).
//!
//! # Durability
//! - A block is in the page cache of the backing file system before the
//!   request that changed it is answered (a write into the shared mapping of
//!   the store, or `setxattr`): once a set returns, a crash of the daemon,
//!   SIGKILL included, loses nothing (the value, its sequence number and
//!   validity stay in the store file and reach the disk with the kernel's
//!   ordinary writeback).
//! - Blocks are not synced one by one. A crash of the machine may lose the
//!   most recent sets (or tear a slot, whose other copy then reads); but
//!   [`Epoch::begin`] fsyncs the "running" mark before the export serves
//!   anything, so the restart after a machine crash is always unclean and
//!   every block, lost write or not, reads not-valid with whatever value and
//!   sequence number the disk kept (possibly older ones).
//! - A clean stop ([`Blocks::flush`], then [`Epoch::end_clean`]) syncs the
//!   store and runs `syncfs` on the export before it writes and fsyncs the
//!   clean mark, so a clean mark is never on disk ahead of the blocks it
//!   vouches for.
//! - A file that never had a block stored reads the initial block (zeros,
//!   valid, sequence 0), also after a crash: no value was ever there to be
//!   stale. A machine crash within seconds of a file's very first store may
//!   lose its marker with the store's page, and the file then reads as one
//!   that never had a value.
//!
//! The `trusted.` namespace needs `CAP_SYS_ADMIN` to read or write, so no
//! unprivileged program can forge a marker through the mount or the source
//! directory; root sees them (`getfattr -n trusted.lockfs.lvb -e hex FILE`).
//! The store's directory is hidden from the mount and is root's alone (0700).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use lock_table::{LvbValue, LVB_LEN};
use rustc_hash::FxHashMap;

use crate::lvb_slots::Store;
use crate::sys;

/// Extended attribute of a backing file holding its value block.
pub const LVB_XATTR: &str = "trusted.lockfs.lvb";
/// Extended attribute of an export's root directory holding its crash epoch.
pub const EPOCH_XATTR: &str = "trusted.lockfs.lvb-epoch";

const LVB_NAME: &CStr = c"trusted.lockfs.lvb";
const EPOCH_NAME: &CStr = c"trusted.lockfs.lvb-epoch";

const VERSION: u8 = 1;
const F_VALID: u8 = 1;
const F_CLEAN: u8 = 1;

/// Size of a stored block.
pub const RECORD_LEN: usize = 24 + LVB_LEN;
const EPOCH_LEN: usize = 16;

/// A block as stored: the value with the epoch it was stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub value: LvbValue,
    pub epoch: u64,
}

impl Record {
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[0] = VERSION;
        b[1] = if self.value.valid { F_VALID } else { 0 };
        b[8..16].copy_from_slice(&self.value.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.epoch.to_le_bytes());
        b[24..].copy_from_slice(&self.value.bytes);
        b
    }

    /// `None` for anything but a well-formed record of this version.
    pub fn decode(b: &[u8]) -> Option<Record> {
        if b.len() != RECORD_LEN || b[0] != VERSION {
            return None;
        }
        let mut bytes = [0u8; LVB_LEN];
        bytes.copy_from_slice(&b[24..]);
        Some(Record {
            value: LvbValue {
                bytes,
                valid: b[1] & F_VALID != 0,
                seq: u64::from_le_bytes(b[8..16].try_into().ok()?),
            },
            epoch: u64::from_le_bytes(b[16..24].try_into().ok()?),
        })
    }

    /// The block as a reader in `epoch` sees it: not-valid if it was stored in
    /// an earlier epoch (a crash came between).
    pub fn as_of(&self, epoch: u64) -> LvbValue {
        LvbValue {
            valid: self.value.valid && self.epoch == epoch,
            ..self.value
        }
    }
}

fn fd_xattr_get(fd: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: valid descriptor and C string; `buf` writable for its length.
    let n = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn fd_xattr_set(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: valid descriptor and C string; `value` readable for its length.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether `fd` was opened with `O_PATH` (xattr calls need the path then).
fn is_o_path(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: F_GETFL on a valid descriptor.
    let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    fl >= 0 && fl & libc::O_PATH != 0
}

fn get(fd: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    if is_o_path(fd) {
        sys::xattr::get(fd, name, buf)
    } else {
        fd_xattr_get(fd, name, buf)
    }
}

fn set(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    if is_o_path(fd) {
        sys::xattr::set(fd, name, value, 0)
    } else {
        fd_xattr_set(fd, name, value)
    }
}

/// Reads the block stored for the file behind `fd` (an open file, or an
/// `O_PATH` descriptor). `None` if it never had one; a malformed attribute
/// (written by someone else) counts as none, and is logged.
pub fn load(fd: BorrowedFd<'_>) -> io::Result<Option<Record>> {
    // One byte more than a record, so a longer foreign value is noticed.
    let mut buf = [0u8; RECORD_LEN + 1];
    match get(fd, LVB_NAME, &mut buf) {
        Ok(n) => {
            let r = Record::decode(&buf[..n]);
            if r.is_none() {
                tracing::warn!(len = n, "ignoring a malformed {LVB_XATTR} attribute");
            }
            Ok(r)
        }
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
        // A larger attribute than any record: not ours.
        Err(e) if e.raw_os_error() == Some(libc::ERANGE) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Stores `record` as the block of the file behind `fd`.
pub fn store(fd: BorrowedFd<'_>, record: &Record) -> io::Result<()> {
    set(fd, LVB_NAME, &record.encode())
}

const MARKER_VERSION: u8 = 2;
/// Size of a marker: a record and the file's token.
pub const MARKER_LEN: usize = RECORD_LEN + 8;

/// What a backing file's [`LVB_XATTR`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attr {
    /// Nothing (or something not ours, logged).
    None,
    /// A whole block, kept on the file itself.
    Block(Record),
    /// The file's block is in the store under `token`; `first` is the block
    /// it was given its slot with.
    Marker { token: u64, first: Record },
}

fn encode_marker(token: u64, first: &Record) -> [u8; MARKER_LEN] {
    let mut b = [0u8; MARKER_LEN];
    b[..RECORD_LEN].copy_from_slice(&first.encode());
    b[0] = MARKER_VERSION;
    b[RECORD_LEN..].copy_from_slice(&token.to_le_bytes());
    b
}

fn decode_attr(b: &[u8]) -> Attr {
    if let Some(r) = Record::decode(b) {
        return Attr::Block(r);
    }
    if b.len() == MARKER_LEN && b[0] == MARKER_VERSION {
        let mut rec = [0u8; RECORD_LEN];
        rec.copy_from_slice(&b[..RECORD_LEN]);
        rec[0] = VERSION;
        if let (Some(first), Ok(t)) = (Record::decode(&rec), b[RECORD_LEN..].try_into()) {
            return Attr::Marker {
                token: u64::from_le_bytes(t),
                first,
            };
        }
    }
    tracing::warn!(len = b.len(), "ignoring a malformed {LVB_XATTR} attribute");
    Attr::None
}

/// Reads the backing file's [`LVB_XATTR`].
pub fn load_attr(fd: BorrowedFd<'_>) -> io::Result<Attr> {
    // One byte more than the longest, so a longer foreign value is noticed.
    let mut buf = [0u8; MARKER_LEN + 1];
    match get(fd, LVB_NAME, &mut buf) {
        Ok(n) => Ok(decode_attr(&buf[..n])),
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(Attr::None),
        // A larger attribute than any of ours.
        Err(e) if e.raw_os_error() == Some(libc::ERANGE) => Ok(Attr::None),
        Err(e) => Err(e),
    }
}

/// A random token for a file's slot.
fn new_token() -> u64 {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    // RandomState's keys come from the operating system's random source.
    std::collections::hash_map::RandomState::new().hash_one(N.fetch_add(1, Ordering::Relaxed))
}

/// The value blocks of one export: its store file, opened on the first
/// store if it did not exist, and the tokens of the files seen so far.
#[derive(Debug)]
pub struct Blocks {
    root: OwnedFd,
    dev: u64,
    store: Option<Store>,
    /// Files of the export's device known to have a slot, by inode number.
    tokens: FxHashMap<u64, u64>,
}

impl Blocks {
    /// The blocks of the export whose root directory is `root`, on device
    /// `dev`. A store that cannot be read is logged and started afresh on the
    /// first store; its files read not-valid.
    pub fn open(root: BorrowedFd<'_>, dev: u64) -> io::Result<Blocks> {
        let root = sys::reopen(root, libc::O_RDONLY | libc::O_DIRECTORY)?;
        let store = match Store::open(root.as_fd()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot open the value-block store; trying again at the first set");
                None
            }
        };
        Ok(Blocks {
            root,
            dev,
            store,
            tokens: FxHashMap::default(),
        })
    }

    /// The block stored for file (`dev`, `ino`) behind `fd`, `None` if it
    /// never had one.
    pub fn load(&mut self, fd: BorrowedFd<'_>, dev: u64, ino: u64) -> io::Result<Option<Record>> {
        let attr = load_attr(fd)?;
        if dev != self.dev {
            return Ok(match attr {
                Attr::Block(r) => Some(r),
                Attr::Marker { first, .. } => Some(Record {
                    value: first.value.invalidated(),
                    ..first
                }),
                Attr::None => None,
            });
        }
        match attr {
            Attr::None => {
                // No marker: no slot is this file's, whatever its number.
                self.tokens.remove(&ino);
                Ok(None)
            }
            Attr::Block(r) => {
                self.tokens.remove(&ino);
                // Kept on the file by an earlier version: move it into the
                // store, as it is (its epoch decides its validity). Should
                // that fail, the file keeps it, and the next store retries.
                match self.store(fd, dev, ino, &r) {
                    Ok(()) => tracing::debug!(ino, "value block moved into the store"),
                    Err(e) => {
                        tracing::warn!(ino, error = %e, "could not move a value block into the store")
                    }
                }
                Ok(Some(r))
            }
            Attr::Marker { token, first } => {
                self.tokens.insert(ino, token);
                match self.store.as_ref().and_then(|s| s.get(ino, token)) {
                    Some(r) => Ok(Some(r)),
                    None => {
                        tracing::warn!(
                            ino,
                            "value block missing from the store (damaged or lost): not-valid"
                        );
                        Ok(Some(Record {
                            value: first.value.invalidated(),
                            ..first
                        }))
                    }
                }
            }
        }
    }

    /// Stores `r` as the block of file (`dev`, `ino`) behind `fd`. Call
    /// [`Blocks::load`] for the file first: it learns the file's token.
    pub fn store(&mut self, fd: BorrowedFd<'_>, dev: u64, ino: u64, r: &Record) -> io::Result<()> {
        if dev != self.dev {
            return store(fd, r);
        }
        if self.store.is_none() {
            // Absent so far, or not openable at start: never replace a store
            // that may still be there.
            let s = match Store::open(self.root.as_fd())? {
                Some(s) => s,
                None => Store::create(self.root.as_fd())?,
            };
            self.store = Some(s);
        }
        let Some(store) = self.store.as_mut() else {
            return Err(io::ErrorKind::NotFound.into());
        };
        match self.tokens.get(&ino) {
            Some(&token) => store.put(ino, token, r),
            None => {
                let token = new_token();
                store.put(ino, token, r)?;
                set(fd, LVB_NAME, &encode_marker(token, r))?;
                self.tokens.insert(ino, token);
                Ok(())
            }
        }
    }

    /// Forgets what was learnt of file (`dev`, `ino`): its inode number may
    /// be reused by another file.
    pub fn forget(&mut self, dev: u64, ino: u64) {
        if dev == self.dev {
            self.tokens.remove(&ino);
        }
    }

    /// Writes the store back to disk and syncs it.
    pub fn flush(&self) -> io::Result<()> {
        self.store.as_ref().map_or(Ok(()), Store::flush)
    }
}

/// An export's crash epoch, opened for one run of the daemon.
#[derive(Debug)]
pub struct Epoch {
    epoch: u64,
    previous_clean: bool,
    dir: OwnedFd,
}

fn encode_epoch(epoch: u64, clean: bool) -> [u8; EPOCH_LEN] {
    let mut b = [0u8; EPOCH_LEN];
    b[0] = VERSION;
    b[1] = if clean { F_CLEAN } else { 0 };
    b[8..16].copy_from_slice(&epoch.to_le_bytes());
    b
}

fn decode_epoch(b: &[u8]) -> Option<(u64, bool)> {
    if b.len() != EPOCH_LEN || b[0] != VERSION {
        return None;
    }
    Some((
        u64::from_le_bytes(b[8..16].try_into().ok()?),
        b[1] & F_CLEAN != 0,
    ))
}

impl Epoch {
    /// Starts a run on the export (or group) whose root directory is `dir`:
    /// reads the stored epoch, advances it unless the last run ended cleanly,
    /// and durably marks the export as running before returning.
    pub fn begin(dir: BorrowedFd<'_>) -> io::Result<Epoch> {
        let dir = sys::reopen(dir, libc::O_RDONLY | libc::O_DIRECTORY)?;
        let mut buf = [0u8; EPOCH_LEN + 1];
        let stored = match fd_xattr_get(dir.as_fd(), EPOCH_NAME, &mut buf) {
            Ok(n) => match decode_epoch(&buf[..n]) {
                Some(s) => Some(s),
                None => {
                    // Unreadable: assume the worst, with an epoch no stored
                    // block can carry.
                    tracing::warn!("malformed {EPOCH_XATTR}; treating the last run as a crash");
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(u64::MAX / 2, |d| d.as_nanos() as u64);
                    Some((now, false))
                }
            },
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => None,
            Err(e) => return Err(e),
        };
        let (epoch, previous_clean) = match stored {
            // A fresh export: nothing can have been lost.
            None => (1, true),
            Some((e, true)) => (e, true),
            Some((e, false)) => (e.wrapping_add(1).max(1), false),
        };
        fd_xattr_set(dir.as_fd(), EPOCH_NAME, &encode_epoch(epoch, false))?;
        sys::fsync(dir.as_fd(), false)?;
        if !previous_clean {
            tracing::warn!(
                epoch,
                "the export's last run did not end cleanly: its lock value blocks are not-valid until rewritten"
            );
        }
        Ok(Epoch {
            epoch,
            previous_clean,
            dir,
        })
    }

    /// The current epoch: blocks stored in it are valid if stored valid.
    pub fn current(&self) -> u64 {
        self.epoch
    }

    /// Whether the run before this one ended cleanly.
    pub fn previous_clean(&self) -> bool {
        self.previous_clean
    }

    /// Ends the run cleanly: flushes the export's file system, then marks the
    /// epoch clean, durably. Call it only once every change of a block has
    /// been stored.
    pub fn end_clean(&self) -> io::Result<()> {
        // SAFETY: syncfs on a valid descriptor.
        if unsafe { libc::syncfs(self.dir.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        fd_xattr_set(
            self.dir.as_fd(),
            EPOCH_NAME,
            &encode_epoch(self.epoch, true),
        )?;
        sys::fsync(self.dir.as_fd(), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_reject_foreign_bytes() {
        let mut bytes = [0u8; LVB_LEN];
        bytes[..5].copy_from_slice(b"hello");
        let r = Record {
            value: LvbValue {
                bytes,
                valid: true,
                seq: 0x0102_0304_0506_0708,
            },
            epoch: 9,
        };
        let b = r.encode();
        assert_eq!(Record::decode(&b), Some(r));
        assert_eq!(Record::decode(&b[..RECORD_LEN - 1]), None);
        let mut other = b;
        other[0] = 2;
        assert_eq!(Record::decode(&other), None);
        assert!(r.as_of(9).valid);
        let stale = r.as_of(10);
        assert!(!stale.valid);
        assert_eq!((stale.bytes, stale.seq), (bytes, r.value.seq));
        assert_eq!(decode_epoch(&encode_epoch(7, true)), Some((7, true)));
        assert_eq!(decode_epoch(&[1, 0, 0]), None);
    }

    fn root_of(dir: &std::path::Path) -> OwnedFd {
        OwnedFd::from(std::fs::File::open(dir).unwrap())
    }

    /// Skips (loudly) where the temporary directory has no trusted xattrs.
    fn xattrs_work(dir: &std::path::Path) -> bool {
        let fd = root_of(dir);
        match fd_xattr_set(fd.as_fd(), c"trusted.lockfs.probe", b"1") {
            Ok(()) => true,
            Err(e) => {
                lockfs_testkit::skipping!("no trusted xattrs in {}: {e}", dir.display());
                false
            }
        }
    }

    #[test]
    fn the_epoch_advances_only_after_an_unclean_run() {
        let dir = tempfile::tempdir().unwrap();
        if !xattrs_work(dir.path()) {
            return;
        }
        let root = root_of(dir.path());
        let e1 = Epoch::begin(root.as_fd()).unwrap();
        assert!(e1.previous_clean());
        let first = e1.current();
        e1.end_clean().unwrap();
        let e2 = Epoch::begin(root.as_fd()).unwrap();
        assert_eq!((e2.current(), e2.previous_clean()), (first, true));
        // e2 is dropped without end_clean: a crash.
        drop(e2);
        let e3 = Epoch::begin(root.as_fd()).unwrap();
        assert_eq!((e3.current(), e3.previous_clean()), (first + 1, false));
        // A crash while recovering from a crash advances it again.
        let e4 = Epoch::begin(root.as_fd()).unwrap();
        assert_eq!(e4.current(), first + 2);
    }

    #[test]
    fn blocks_are_stored_on_the_backing_file() {
        let dir = tempfile::tempdir().unwrap();
        if !xattrs_work(dir.path()) {
            return;
        }
        let p = dir.path().join("f");
        std::fs::write(&p, b"").unwrap();
        let f = OwnedFd::from(std::fs::File::open(&p).unwrap());
        assert_eq!(load(f.as_fd()).unwrap(), None);
        let r = Record {
            value: LvbValue::default().written(b"v").unwrap(),
            epoch: 3,
        };
        store(f.as_fd(), &r).unwrap();
        assert_eq!(load(f.as_fd()).unwrap(), Some(r));
        // Through an O_PATH descriptor too.
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: valid C string; the descriptor is owned below.
        let raw = unsafe { libc::open(c.as_ptr(), libc::O_PATH) };
        assert!(raw >= 0);
        // SAFETY: just opened, owned by nobody else.
        let opath = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        assert_eq!(load(opath.as_fd()).unwrap(), Some(r));
    }
}
