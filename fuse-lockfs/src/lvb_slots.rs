//! The value-block store file of an export: `.lockfs/lvb` under its root,
//! mapped shared into the daemon, so that storing a block is a write to memory
//! and no system call.
//!
//! A value written into a shared file mapping is in the page cache the moment
//! the write retires: a crash of the daemon (even SIGKILL) loses nothing, and
//! the kernel writes the pages back on its own schedule. What a crash of the
//! machine may lose is covered by the crash epoch (see [`crate::lvb_store`]).
//!
//! # Layout
//! The file is a sequence of 128-byte slots. Slot 0 is the header (magic,
//! version, slot size, checksum). Every other slot holds one file's block:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | inode number (0: the slot is free) |
//! | 8..16 | the file's token (the same number is in the file's marker attribute) |
//! | 16..72 | copy 0 |
//! | 72..128 | copy 1 |
//!
//! and each copy is the sequence number (8), the epoch (8), the value (32), a
//! flags byte (valid), a reserved byte, a write counter (2) and a CRC-32 (4)
//! over the slot's inode and token and the copy's first 52 bytes.
//!
//! A store overwrites the copy that does not hold the latest block, so a write
//! torn by a crash (of the daemon mid-store, or of the machine mid-writeback)
//! fails its checksum and the other copy, the previous block, still reads.
//! The write counters say which of two good copies is newer.
//!
//! Anything that does not check out (a bad header, a slot whose copies both
//! fail their checksums, a length that is not a whole number of slots) is
//! logged and ignored, never trusted: a bad header sets the whole file aside
//! (renamed `lvb.corrupt`) and a fresh one is started; a bad slot is freed.
//! The files whose blocks were lost that way still carry their marker, and
//! read not-valid (see [`crate::lvb_store::Blocks`]).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use lock_table::{LvbValue, LVB_LEN};
use rustc_hash::FxHashMap;

use crate::lvb_store::Record;
use crate::sys;

/// The directory under an export's root that holds lockfs's own state.
pub const STATE_DIR: &str = ".lockfs";
/// The store file, in [`STATE_DIR`].
pub const STORE_FILE: &str = "lvb";

const DIR_NAME: &CStr = c".lockfs";
const FILE_NAME: &CStr = c"lvb";
const CORRUPT_NAME: &CStr = c"lvb.corrupt";

/// Size of a slot, the header included.
pub const SLOT: usize = 128;
const MAGIC: &[u8; 8] = b"LOCKFSLV";
const STORE_VERSION: u32 = 1;
/// Slots a new store starts with (the header included).
const INITIAL_SLOTS: usize = 64;
const COPY: usize = 56;
const COPY_AT: [usize; 2] = [16, 16 + COPY];
const F_VALID: u8 = 1;

/// Where a file's block lives in the mapping.
#[derive(Clone, Copy, Debug)]
struct Slot {
    index: usize,
    token: u64,
    /// The copy holding the latest block.
    current: usize,
    /// Its write counter.
    count: u16,
}

/// An open, mapped store file.
pub struct Store {
    file: OwnedFd,
    map: *mut u8,
    len: usize,
    by_ino: FxHashMap<u64, Slot>,
    free: Vec<usize>,
}

// SAFETY: the mapping is owned by the store alone and only reached through
// `&mut self` (or `&self` for reads); the store is moved between threads, never
// shared without the caller's lock.
unsafe impl Send for Store {}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("slots", &(self.len / SLOT))
            .field("used", &self.by_ino.len())
            .finish_non_exhaustive()
    }
}

fn header() -> [u8; SLOT] {
    let mut h = [0u8; SLOT];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&STORE_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(SLOT as u32).to_le_bytes());
    let crc = crc32fast::hash(&h[..SLOT - 4]);
    h[SLOT - 4..].copy_from_slice(&crc.to_le_bytes());
    h
}

fn header_ok(h: &[u8]) -> bool {
    h.len() >= SLOT && h[..SLOT] == header()
}

fn copy_crc(key: &[u8], copy: &[u8]) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(key);
    c.update(&copy[..COPY - 4]);
    c.finalize()
}

fn encode_copy(key: &[u8; 16], r: &Record, count: u16) -> [u8; COPY] {
    let mut c = [0u8; COPY];
    c[0..8].copy_from_slice(&r.value.seq.to_le_bytes());
    c[8..16].copy_from_slice(&r.epoch.to_le_bytes());
    c[16..48].copy_from_slice(&r.value.bytes);
    c[48] = if r.value.valid { F_VALID } else { 0 };
    c[50..52].copy_from_slice(&count.to_le_bytes());
    let crc = copy_crc(key, &c);
    c[52..56].copy_from_slice(&crc.to_le_bytes());
    c
}

/// `(record, write counter)` of a copy whose checksum holds.
fn decode_copy(key: &[u8], c: &[u8]) -> Option<(Record, u16)> {
    let crc = u32::from_le_bytes(c[52..56].try_into().ok()?);
    if crc != copy_crc(key, c) {
        return None;
    }
    let mut bytes = [0u8; LVB_LEN];
    bytes.copy_from_slice(&c[16..48]);
    let r = Record {
        value: LvbValue {
            bytes,
            valid: c[48] & F_VALID != 0,
            seq: u64::from_le_bytes(c[0..8].try_into().ok()?),
        },
        epoch: u64::from_le_bytes(c[8..16].try_into().ok()?),
    };
    Some((r, u16::from_le_bytes(c[50..52].try_into().ok()?)))
}

/// What a slot holds: `None` if free, `Some(None)` if unreadable.
#[allow(clippy::type_complexity)]
fn decode_slot(s: &[u8]) -> Option<Option<(u64, u64, usize, u16, Record)>> {
    let ino = u64::from_le_bytes(s[0..8].try_into().ok()?);
    if ino == 0 {
        return None;
    }
    let token = u64::from_le_bytes(s[8..16].try_into().ok()?);
    let key = &s[..16];
    let a = decode_copy(key, &s[COPY_AT[0]..COPY_AT[0] + COPY]);
    let b = decode_copy(key, &s[COPY_AT[1]..COPY_AT[1] + COPY]);
    let (current, (r, count)) = match (a, b) {
        (None, None) => return Some(None),
        (Some(a), None) => (0, a),
        (None, Some(b)) => (1, b),
        // Two good copies: the newer is the one written right after the other.
        (Some(a), Some(b)) => {
            if b.1 == a.1.wrapping_add(1) {
                (1, b)
            } else {
                (0, a)
            }
        }
    };
    Some(Some((ino, token, current, count, r)))
}

fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<*mut u8> {
    // SAFETY: a fresh shared mapping of a file we opened read-write; the kernel
    // picks the address. The result is checked below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(p.cast())
    }
}

/// Makes the file `len` bytes long with its blocks allocated, so a store into
/// the mapping never faults for space (a full disk would otherwise kill the
/// daemon with SIGBUS, not fail a request).
fn allocate(fd: BorrowedFd<'_>, len: usize) -> io::Result<()> {
    // SAFETY: fallocate on a valid descriptor.
    let r = unsafe { libc::fallocate(fd.as_raw_fd(), 0, 0, len as libc::off_t) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(e);
    }
    // No fallocate: write the zeros out instead.
    let st = sys::fstat(fd)?;
    let mut at = st.st_size.max(0) as usize;
    let zeros = [0u8; 4096];
    while at < len {
        let n = (len - at).min(zeros.len());
        // SAFETY: `zeros` is readable for `n` bytes.
        let w =
            unsafe { libc::pwrite(fd.as_raw_fd(), zeros.as_ptr().cast(), n, at as libc::off_t) };
        if w < 0 {
            return Err(io::Error::last_os_error());
        }
        at += w as usize;
    }
    Ok(())
}

impl Store {
    /// Opens the store of the export whose root directory is `root`, if it
    /// has one. A store with a bad header is set aside (logged) and `None`
    /// returned, as if there were none.
    pub fn open(root: BorrowedFd<'_>) -> io::Result<Option<Store>> {
        let dir = match sys::openat(
            root,
            DIR_NAME,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        ) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let file = match sys::openat(dir.as_fd(), FILE_NAME, libc::O_RDWR | libc::O_NOFOLLOW, 0) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        claim(file.as_fd())?;
        let st = sys::fstat(file.as_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{STATE_DIR}/{STORE_FILE} is not a regular file"),
            ));
        }
        let size = st.st_size.max(0) as usize;
        let mut h = [0u8; SLOT];
        // SAFETY: `h` is writable for its length.
        let n = unsafe { libc::pread(file.as_raw_fd(), h.as_mut_ptr().cast(), SLOT, 0) };
        if n != SLOT as isize || !header_ok(&h) {
            tracing::error!(
                size,
                "the value-block store {STATE_DIR}/{STORE_FILE} has a bad header: set aside as \
                 {STATE_DIR}/lvb.corrupt; files whose blocks it held read not-valid"
            );
            set_aside(dir.as_fd())?;
            return Ok(None);
        }
        let whole = size / SLOT;
        if size % SLOT != 0 {
            tracing::warn!(
                size,
                "the value-block store {STATE_DIR}/{STORE_FILE} ends in a partial slot: ignored"
            );
        }
        let len = whole.max(INITIAL_SLOTS) * SLOT;
        allocate(file.as_fd(), len)?;
        let map = map(file.as_fd(), len)?;
        let mut store = Store {
            file,
            map,
            len,
            by_ino: FxHashMap::default(),
            free: Vec::new(),
        };
        store.scan();
        Ok(Some(store))
    }

    /// Creates a new, empty store for the export at `root`, durably (the
    /// directory entry and the header are synced). Fails `EEXIST` if there is
    /// one: a store is never overwritten.
    pub fn create(root: BorrowedFd<'_>) -> io::Result<Store> {
        match sys::mkdirat(root, DIR_NAME, 0o700) {
            Ok(()) => sys::fsync(root, false)?,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        let dir = sys::openat(
            root,
            DIR_NAME,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        let file = sys::openat(
            dir.as_fd(),
            FILE_NAME,
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
        )?;
        claim(file.as_fd())?;
        let len = INITIAL_SLOTS * SLOT;
        allocate(file.as_fd(), len)?;
        let map = map(file.as_fd(), len)?;
        let mut store = Store {
            file,
            map,
            len,
            by_ino: FxHashMap::default(),
            free: Vec::new(),
        };
        store.write(0, &header());
        store.free = (1..INITIAL_SLOTS).rev().collect();
        store.flush()?;
        sys::fsync(dir.as_fd(), false)?;
        Ok(store)
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `map` is a live mapping of `len` bytes for as long as `self`.
        unsafe { std::slice::from_raw_parts(self.map, self.len) }
    }

    fn write(&mut self, at: usize, b: &[u8]) {
        assert!(at + b.len() <= self.len, "store write past the mapping");
        // SAFETY: in bounds of the live mapping (checked above), which no
        // Rust reference aliases while `&mut self` is held.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), self.map.add(at), b.len()) };
    }

    /// Indexes every slot; frees unreadable ones and duplicates.
    fn scan(&mut self) {
        let slots = self.len / SLOT;
        let mut bad = 0usize;
        let mut dropped = Vec::new();
        for i in (1..slots).rev() {
            let s = &self.bytes()[i * SLOT..(i + 1) * SLOT];
            match decode_slot(s) {
                None => self.free.push(i),
                Some(None) => {
                    bad += 1;
                    dropped.push(i);
                }
                Some(Some((ino, token, current, count, r))) => {
                    let slot = Slot {
                        index: i,
                        token,
                        current,
                        count,
                    };
                    match self.by_ino.get(&ino).copied() {
                        Some(old) if self.record_at(&old).value.seq >= r.value.seq => {
                            dropped.push(i);
                        }
                        Some(old) => {
                            dropped.push(old.index);
                            self.by_ino.insert(ino, slot);
                        }
                        None => {
                            self.by_ino.insert(ino, slot);
                        }
                    }
                }
            }
        }
        if bad > 0 {
            tracing::warn!(
                slots = bad,
                "ignoring unreadable slots of the value-block store; their files read not-valid"
            );
        }
        for i in dropped {
            self.write(i * SLOT, &[0u8; SLOT]);
            self.free.push(i);
        }
    }

    fn record_at(&self, s: &Slot) -> Record {
        let at = s.index * SLOT;
        let slot = &self.bytes()[at..at + SLOT];
        let c = COPY_AT[s.current];
        decode_copy(&slot[..16], &slot[c..c + COPY])
            .map(|(r, _)| r)
            .unwrap_or(Record {
                value: LvbValue::default().invalidated(),
                epoch: 0,
            })
    }

    /// The block stored for inode `ino` under `token`, if any.
    pub fn get(&self, ino: u64, token: u64) -> Option<Record> {
        let s = self.by_ino.get(&ino).filter(|s| s.token == token)?;
        Some(self.record_at(s))
    }

    /// Stores `r` as the block of inode `ino` under `token`. A slot of the
    /// same inode under another token belonged to a file since deleted (an
    /// inode number is unique among live files): it is taken over.
    pub fn put(&mut self, ino: u64, token: u64, r: &Record) -> io::Result<()> {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&ino.to_le_bytes());
        key[8..].copy_from_slice(&token.to_le_bytes());
        match self.by_ino.get(&ino).copied() {
            Some(s) if s.token == token => {
                let next = 1 - s.current;
                let count = s.count.wrapping_add(1);
                let at = s.index * SLOT + COPY_AT[next];
                self.write(at, &encode_copy(&key, r, count));
                self.by_ino.insert(
                    ino,
                    Slot {
                        current: next,
                        count,
                        ..s
                    },
                );
            }
            other => {
                let index = match other {
                    Some(s) => s.index,
                    None => self.take_free()?,
                };
                let mut slot = [0u8; SLOT];
                slot[..16].copy_from_slice(&key);
                slot[COPY_AT[0]..COPY_AT[0] + COPY].copy_from_slice(&encode_copy(&key, r, 0));
                self.write(index * SLOT, &slot);
                self.by_ino.insert(
                    ino,
                    Slot {
                        index,
                        token,
                        current: 0,
                        count: 0,
                    },
                );
            }
        }
        Ok(())
    }

    fn take_free(&mut self) -> io::Result<usize> {
        if let Some(i) = self.free.pop() {
            return Ok(i);
        }
        let old = self.len / SLOT;
        let slots = old.checked_mul(2).ok_or(io::ErrorKind::OutOfMemory)?;
        let len = slots * SLOT;
        allocate(self.file.as_fd(), len)?;
        // SAFETY: remaps our own live mapping; the old address is not used
        // again (only `self.map`, replaced below, points into it).
        let p = unsafe { libc::mremap(self.map.cast(), self.len, len, libc::MREMAP_MAYMOVE) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        self.map = p.cast();
        self.len = len;
        tracing::debug!(slots, "value-block store grown");
        self.free.extend((old + 1..slots).rev());
        Ok(old)
    }

    /// Writes the mapping back and syncs the file.
    pub fn flush(&self) -> io::Result<()> {
        // SAFETY: msync of our own live mapping.
        if unsafe { libc::msync(self.map.cast(), self.len, libc::MS_SYNC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        sys::fsync(self.file.as_fd(), false)
    }

    /// Slots in use.
    pub fn used(&self) -> usize {
        self.by_ino.len()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.map.cast(), self.len) };
    }
}

/// Takes the store for this mount alone (an exclusive `flock`, which dies
/// with the process): a second mount of the same source directory, in this
/// daemon or another, would keep its own index of the same slots and
/// overwrite blocks. It gets `EWOULDBLOCK` instead, logged at start and
/// answered to its sets.
fn claim(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: flock on a valid descriptor.
    if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    tracing::error!(
        error = %e,
        "the value-block store {STATE_DIR}/{STORE_FILE} is in use by another mount of this source"
    );
    Err(e)
}

fn set_aside(dir: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: valid descriptors and C strings.
    let r = unsafe {
        libc::renameat(
            dir.as_raw_fd(),
            FILE_NAME.as_ptr(),
            dir.as_raw_fd(),
            CORRUPT_NAME.as_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    sys::fsync(dir, false)
}

/// Reads the blocks of a store file offline: `(inode, token, record)` of every
/// readable slot, or `None` if the header is bad. For tests and inspection.
pub fn read_all(bytes: &[u8]) -> Option<Vec<(u64, u64, Record)>> {
    if !header_ok(bytes) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(SLOT)
            .skip(1)
            .filter_map(decode_slot)
            .flatten()
            .map(|(ino, token, _, _, r)| (ino, token, r))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(dir: &std::path::Path) -> OwnedFd {
        OwnedFd::from(std::fs::File::open(dir).unwrap())
    }

    fn rec(v: &[u8], seq: u64, epoch: u64) -> Record {
        let mut value = LvbValue::default().written(v).unwrap();
        value.seq = seq;
        Record { value, epoch }
    }

    fn store_path(dir: &std::path::Path) -> std::path::PathBuf {
        dir.join(STATE_DIR).join(STORE_FILE)
    }

    #[test]
    fn blocks_survive_reopening_and_the_store_grows() {
        let dir = tempfile::tempdir().unwrap();
        let r = root(dir.path());
        assert!(Store::open(r.as_fd()).unwrap().is_none());
        let mut s = Store::create(r.as_fd()).unwrap();
        let n = INITIAL_SLOTS * 3;
        for ino in 1..=n as u64 {
            s.put(ino, ino * 7, &rec(b"a", 1, 1)).unwrap();
            s.put(ino, ino * 7, &rec(&ino.to_le_bytes(), 2, 1)).unwrap();
        }
        drop(s);
        let s = Store::open(r.as_fd()).unwrap().unwrap();
        assert_eq!(s.used(), n);
        for ino in 1..=n as u64 {
            assert_eq!(s.get(ino, ino * 7), Some(rec(&ino.to_le_bytes(), 2, 1)));
            assert_eq!(s.get(ino, ino * 7 + 1), None, "another token");
        }
        let len = std::fs::metadata(store_path(dir.path())).unwrap().len() as usize;
        assert!(len >= (n + 1) * SLOT && len % SLOT == 0);
    }

    #[test]
    fn a_torn_copy_leaves_the_previous_block() {
        let dir = tempfile::tempdir().unwrap();
        let r = root(dir.path());
        let mut s = Store::create(r.as_fd()).unwrap();
        s.put(5, 9, &rec(b"one", 1, 1)).unwrap();
        s.put(5, 9, &rec(b"two", 2, 1)).unwrap();
        let index = s.by_ino[&5].index;
        let current = s.by_ino[&5].current;
        drop(s);
        // Half of the newest copy's value overwritten: a torn store.
        let p = store_path(dir.path());
        let mut b = std::fs::read(&p).unwrap();
        b[index * SLOT + COPY_AT[current] + 20] ^= 0xff;
        std::fs::write(&p, &b).unwrap();
        let s = Store::open(r.as_fd()).unwrap().unwrap();
        assert_eq!(s.get(5, 9), Some(rec(b"one", 1, 1)));
    }

    #[test]
    fn corrupt_and_truncated_stores_are_ignored_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let r = root(dir.path());
        let mut s = Store::create(r.as_fd()).unwrap();
        for ino in 1..=10u64 {
            s.put(ino, 1, &rec(b"x", ino, 1)).unwrap();
        }
        let i3 = s.by_ino[&3].index;
        drop(s);
        let p = store_path(dir.path());
        let good = std::fs::read(&p).unwrap();
        // Both copies of one slot damaged: that slot alone is dropped.
        let mut b = good.clone();
        for x in &mut b[i3 * SLOT + 16..(i3 + 1) * SLOT] {
            *x = 0x5a;
        }
        std::fs::write(&p, &b).unwrap();
        let s = Store::open(r.as_fd()).unwrap().unwrap();
        assert_eq!(s.get(3, 1), None);
        assert_eq!(s.get(4, 1), Some(rec(b"x", 4, 1)));
        assert_eq!(s.used(), 9);
        drop(s);
        // Cut in the middle of a slot: whole slots before it still read.
        let cut = 5 * SLOT + 40;
        std::fs::write(&p, &good[..cut]).unwrap();
        let s = Store::open(r.as_fd()).unwrap().unwrap();
        assert_eq!(s.used(), 4);
        drop(s);
        // Random bytes: no panic, set aside, a fresh store can be made.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let noise: Vec<u8> = (0..SLOT * 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(&p, &noise).unwrap();
        assert!(Store::open(r.as_fd()).unwrap().is_none());
        assert!(dir.path().join(STATE_DIR).join("lvb.corrupt").exists());
        assert!(!p.exists());
        // Slots full of noise behind a good header: all ignored.
        let mut b = noise;
        b[..SLOT].copy_from_slice(&header());
        std::fs::write(&p, &b).unwrap();
        let s = Store::open(r.as_fd()).unwrap().unwrap();
        assert_eq!(s.used(), 0);
        assert!(read_all(&b).is_some_and(|v| v.is_empty()));
        // An empty file.
        drop(s);
        std::fs::write(&p, b"").unwrap();
        assert!(Store::open(r.as_fd()).unwrap().is_none());
        let mut s = Store::create(r.as_fd()).unwrap();
        s.put(1, 1, &rec(b"new", 1, 2)).unwrap();
        assert_eq!(s.get(1, 1), Some(rec(b"new", 1, 2)));
    }

    #[test]
    fn a_store_serves_one_mount_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let r = root(dir.path());
        let s = Store::create(r.as_fd()).unwrap();
        let e = Store::open(r.as_fd()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EWOULDBLOCK));
        drop(s);
        assert!(Store::open(r.as_fd()).unwrap().is_some());
    }

    #[test]
    fn a_reused_inode_takes_over_the_slot() {
        let dir = tempfile::tempdir().unwrap();
        let r = root(dir.path());
        let mut s = Store::create(r.as_fd()).unwrap();
        s.put(8, 100, &rec(b"old file", 4, 1)).unwrap();
        s.put(8, 200, &rec(b"new file", 1, 1)).unwrap();
        assert_eq!(s.get(8, 100), None);
        assert_eq!(s.get(8, 200), Some(rec(b"new file", 1, 1)));
        assert_eq!(s.used(), 1);
        drop(s);
        let s = Store::open(r.as_fd()).unwrap().unwrap();
        assert_eq!(s.get(8, 200), Some(rec(b"new file", 1, 1)));
    }
}
