//! The files behind NFS file handles: sealing a handle for a file found by name, resolving
//! a handle to an open descriptor, and the bounded cache of those descriptors.
//!
//! A handle is the very NLM handle of [`crate::fh`] (export id, kernel handle, keyed MAC),
//! so a handle a client got from LOOKUP names the same lock resource in an NLM call; the
//! kernel handles themselves are made and opened by that module's
//! [`kernel_handle_at`] and [`open_kernel_handle`], the one place that speaks
//! `name_to_handle_at` and `open_by_handle_at`.
//! Handles are made with `name_to_handle_at` on a descriptor opened without following
//! symbolic links, and resolved with `open_by_handle_at(export root, O_PATH)` only after the
//! length, export and MAC check out: a forged handle never reaches a system call that
//! names a file. A file on another device than its export root (a mount inside the export)
//! is not handed out.
//!
//! Resolved handles keep an `O_PATH` descriptor in a least-recently-used cache of bounded
//! size; when it is full, the older quarter is closed at once (one sort per many inserts
//! rather than bookkeeping on every hit). A descriptor no call used for
//! [`DEFAULT_ENTRY_IDLE`] is closed by [`Backing::sweep`]. A cached descriptor of a file
//! whose last link is gone answers STALE, as a fresh resolution would.
//!
//! The cache is also indexed by export, device and inode, so that a LOOKUP of a name whose
//! handle is in use costs one `fstatat` rather than an open, a `name_to_handle_at`, a MAC
//! and a close. That
//! index cannot name the wrong file: a cached descriptor holds its inode, so the inode's
//! number cannot be given to another file while the entry exists, and a `fstatat` that
//! answers that device and inode has found the very file the cached handle names.

use super::closer::Closer;
use super::proto::{Stat, FHSIZE3};
use crate::exports::OpenExport;
use crate::fh::{claimed_export, kernel_handle_at, names_nothing, open_kernel_handle, FhError};
use crate::lockd::Lockd;
use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

/// `fstat` of any descriptor, `O_PATH` ones included.
pub fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out pointer for the duration of the call.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(last_err());
    }
    Ok(st)
}

/// `fstatat` of a name in a directory, never following a symbolic link.
pub fn stat_at(dir: RawFd, name: &CString) -> io::Result<libc::stat> {
    // SAFETY: as in `fstat`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and `st` a valid out pointer.
    if unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(last_err());
    }
    Ok(st)
}

/// Opens `name` in `dir` as an `O_PATH` descriptor, never following a symbolic link.
pub fn open_path_at(dir: RawFd, name: &CString) -> io::Result<OwnedFd> {
    open_at(
        dir,
        name,
        libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        0,
    )
}

/// `openat` returning an owned descriptor.
pub fn open_at(dir: RawFd, name: &CString, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; the returned descriptor is owned by nobody else.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags, mode) };
    if fd < 0 {
        return Err(last_err());
    }
    // SAFETY: fd was just returned by openat.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The path that reopens a descriptor's file through procfs, with the permission checks
/// of whoever opens it (an `O_PATH` descriptor cannot be read or written itself).
pub fn proc_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).unwrap_or_default()
}

/// Reopens a descriptor's file with `flags`, as the calling thread's identity.
pub fn reopen(fd: RawFd, flags: i32) -> io::Result<OwnedFd> {
    open_at(libc::AT_FDCWD, &proc_path(fd), flags | libc::O_CLOEXEC, 0)
}

/// Whether the calling thread's identity (its file system ids and groups) may access the
/// file of descriptor `fd`, `O_PATH` ones included, with `mode` (`R_OK`, `W_OK`, `X_OK`).
/// Asked of the descriptor itself (`faccessat2` with `AT_EMPTY_PATH`), which walks no path.
/// `ENOSYS` on a kernel before 5.8: the C library's fallback for `AT_EACCESS` would compare
/// the process's ids, not the thread's, so there is none here.
pub fn may_access(fd: RawFd, mode: i32) -> io::Result<()> {
    const SYS_FACCESSAT2: libc::c_long = 439;
    let flags = libc::AT_EACCESS | libc::AT_EMPTY_PATH;
    // SAFETY: the path is an empty NUL-terminated string; nothing is written.
    if unsafe { libc::syscall(SYS_FACCESSAT2, fd, c"".as_ptr(), mode, flags) } != 0 {
        return Err(last_err());
    }
    Ok(())
}

/// A name from the wire as a single path component: no '/', no NUL.
pub fn component(name: &[u8]) -> Result<CString, Stat> {
    if name.contains(&b'/') {
        return Err(Stat::Acces);
    }
    if name.is_empty() {
        return Err(Stat::NoEnt);
    }
    CString::new(name).map_err(|_| Stat::Inval)
}

/// The kernel handle of an open descriptor (type, bytes); a handle the NLM format cannot
/// carry is NOTSUPP.
fn kernel_handle(fd: RawFd) -> Result<(u8, Vec<u8>), Stat> {
    kernel_handle_at(fd, c"", libc::AT_EMPTY_PATH).map_err(|e| {
        if e.raw_os_error().is_none() {
            Stat::NotSupp
        } else {
            Stat::from_io(&e)
        }
    })
}

/// A file as the index knows it: export id, device, inode.
type FileKey = (u32, u64, u64);

#[derive(Debug)]
struct Entry {
    fd: Arc<OwnedFd>,
    stamp: u64,
    file: FileKey,
    /// The file opened for reading by the daemon, once a READ needed it.
    readable: Option<Arc<OwnedFd>>,
    /// The file opened for writing by the daemon while a client writes it unstably, and
    /// when it last did (see [`Backing::writable`]).
    writable: Option<(Arc<OwnedFd>, Instant)>,
}

#[derive(Debug)]
struct Lru {
    map: HashMap<Box<[u8]>, Entry>,
    by_file: HashMap<FileKey, Box<[u8]>>,
    clock: u64,
    /// The clock at each sweep ([`Backing::sweep`]) of the last [`Backing::idle`] or so,
    /// oldest first: an entry whose stamp is older than a mark that old was not used since.
    marks: std::collections::VecDeque<(Instant, u64)>,
    /// Files a LOOKUP found uncached lately, each in the one slot its key hashes to:
    /// see [`Backing::lookup`]. A slot only decides whether a descriptor is kept, never
    /// which handle is answered, so a stale or overwritten slot costs nothing but that.
    looked_up: Box<[FileKey; LOOKED_UP_SLOTS]>,
}

impl Lru {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Closes the descriptors of every entry last used at or before the stamp `cut`.
    fn drop_used_before(&mut self, cut: u64) {
        let Lru { map, by_file, .. } = self;
        map.retain(|fh, e| {
            let keep = e.stamp > cut;
            if !keep && by_file.get(&e.file).is_some_and(|h| h == fh) {
                by_file.remove(&e.file);
            }
            keep
        });
    }

    fn remove(&mut self, fh: &[u8]) {
        if let Some(gone) = self.map.remove(fh) {
            self.unindex(&gone.file, fh);
        }
    }

    /// The cached handle and entry of `file`.
    fn file_entry(&mut self, file: &FileKey) -> Option<(&[u8], &mut Entry)> {
        let Lru { map, by_file, .. } = self;
        let fh = by_file.get(file)?;
        map.get_mut(fh).map(|e| (&**fh, e))
    }

    /// The cached handle and entry of `file`, marked used now.
    fn used(&mut self, file: &FileKey) -> Option<(&[u8], &mut Entry)> {
        let now = self.tick();
        let (fh, entry) = self.file_entry(file)?;
        entry.stamp = now;
        Some((fh, entry))
    }

    /// Notes that a LOOKUP found `file` uncached; true if one had already, lately.
    fn looked_up_again(&mut self, file: FileKey) -> bool {
        let (export, dev, ino) = file;
        let mixed = (ino ^ dev.rotate_left(32) ^ u64::from(export).rotate_left(48))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let slot = &mut self.looked_up[(mixed >> 54) as usize % LOOKED_UP_SLOTS];
        std::mem::replace(slot, file) == file
    }

    /// Drops the index entry of `file` if it is that of `fh` (two handles of one file,
    /// sealed under two keys, share one index entry: the latest).
    fn unindex(&mut self, file: &FileKey, fh: &[u8]) {
        if self.by_file.get(file).is_some_and(|h| &**h == fh) {
            self.by_file.remove(file);
        }
    }
}

fn file_key(export: &OpenExport, st: &libc::stat) -> FileKey {
    (export.export.id, st.st_dev, st.st_ino)
}

/// Resolves handles to descriptors for the NFS door, with the descriptor cache.
#[derive(Debug)]
pub struct Backing {
    lru: Mutex<Lru>,
    capacity: usize,
    /// Whether LOOKUPs ask the index first (see [`Probe`]).
    lookup_probe: Probe,
    /// Whether REMOVEs ask the index first: a file removed soon after it was made or
    /// used is held by its cached descriptor, one removed by a walk over an old tree is not.
    remove_probe: Probe,
    /// How long a descriptor stays cached without use ([`DEFAULT_ENTRY_IDLE`]).
    idle: Duration,
    closer: Closer,
}

/// How long a cached descriptor stays without use by default. A descriptor holds its
/// file's inode, so a file removed by a local process keeps its blocks until the
/// descriptor goes: the cache must not keep one much longer than a client that stopped
/// using the file would still ask about it (a Linux client's attribute cache lasts at
/// most 60 seconds).
pub const DEFAULT_ENTRY_IDLE: Duration = Duration::from_secs(30);

/// How long a write descriptor kept for a client's WRITEs stays open after its last
/// WRITE (see [`Backing::writable`]).
pub const WRITER_IDLE: Duration = Duration::from_secs(2);

/// How many files uncached LOOKUPs remember (see [`Backing::lookup`]): a file looked up
/// again within about this many other files is worth a descriptor.
const LOOKED_UP_SLOTS: usize = 1024;

const PROBE_HIT: i32 = 4;
const PROBE_RANGE: std::ops::RangeInclusive<i32> = -32..=32;

/// How a kind of call fared lately with asking the index first, by one `fstatat` that is
/// wasted when the name's file is not cached: up by [`PROBE_HIT`] when the file was
/// cached, down by one when it was not, between the bounds of [`PROBE_RANGE`]. The index
/// is asked first while this is not negative, that is while about one name in
/// `PROBE_HIT + 1` is found cached; a walk over many names each met once skips it.
#[derive(Debug, Default)]
struct Probe(AtomicI32);

impl Probe {
    fn worth_it(&self) -> bool {
        self.0.load(Ordering::Relaxed) >= 0
    }

    fn found(&self, cached: bool) {
        let by = if cached { PROBE_HIT } else { -1 };
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                Some((p + by).clamp(*PROBE_RANGE.start(), *PROBE_RANGE.end()))
            });
    }
}

/// A resolved handle: its export, an `O_PATH` descriptor of the file, and the file's
/// status as it was when the handle was resolved (an operation's attributes from before
/// it changes anything).
#[derive(Debug, Clone)]
pub struct Node<'a> {
    pub export: &'a OpenExport,
    pub fd: Arc<OwnedFd>,
    pub st: libc::stat,
}

impl Node<'_> {
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn fh_status(e: FhError) -> Stat {
    match e {
        FhError::Malformed(_) | FhError::BadMac => Stat::BadHandle,
        FhError::UnknownExport(_) | FhError::Stale => Stat::Stale,
        FhError::Io { source, .. } => Stat::from_io(&source),
        FhError::OutsideExport { .. } | FhError::Unsupported(_) => Stat::Stale,
    }
}

impl Backing {
    /// A cache of at most `capacity` open descriptors (at least 16), each closed after
    /// `idle` without use.
    pub fn new(capacity: usize, idle: Duration) -> Self {
        Self {
            lru: Mutex::new(Lru {
                map: HashMap::new(),
                by_file: HashMap::new(),
                clock: 0,
                marks: std::collections::VecDeque::new(),
                looked_up: Box::new([(0, 0, 0); LOOKED_UP_SLOTS]),
            }),
            capacity: capacity.max(16),
            lookup_probe: Probe::default(),
            remove_probe: Probe::default(),
            idle,
            closer: Closer::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Descriptors held open now.
    pub fn open_count(&self) -> usize {
        self.lock().map.len()
    }

    /// The export and file a handle names, for a client at `peer`. Nothing on disk is
    /// touched unless length, export and MAC check out.
    pub fn resolve<'l>(&self, lockd: &'l Lockd, peer: IpAddr, fh: &[u8]) -> Result<Node<'l>, Stat> {
        if fh.len() > FHSIZE3 {
            return Err(Stat::BadHandle);
        }
        let claimed = claimed_export(fh).ok_or(Stat::BadHandle)?;
        let Some(export) = lockd.exports.get(claimed) else {
            // Not sealed here at all, or for an export this server does not have.
            return Err(lockd
                .fhs
                .key()
                .open(fh)
                .map_or_else(fh_status, |_| Stat::Stale));
        };
        let (_, htype, kernel) = lockd
            .fhs
            .key_of(export.export.scope)
            .open(fh)
            .map_err(fh_status)?;
        if !export.export.allows(peer) {
            return Err(Stat::Acces);
        }
        if lockd.is_offline(export.export.scope) {
            return Err(Stat::Stale);
        }
        let cached = {
            let mut l = self.lock();
            let now = l.tick();
            l.map.get_mut(fh).map(|entry| {
                entry.stamp = now;
                entry.fd.clone()
            })
        };
        let fd = match cached {
            Some(fd) => fd,
            None => {
                let root = export.root().ok_or(Stat::Stale)?;
                let fd = open_kernel_handle(root.as_raw_fd(), htype, kernel).map_err(|e| {
                    if names_nothing(&e) {
                        Stat::Stale
                    } else {
                        Stat::from_io(&e)
                    }
                })?;
                let fd = Arc::new(fd);
                let (root_dev, _) = export.root_id().ok_or(Stat::Stale)?;
                let st = fstat(fd.as_raw_fd()).map_err(|e| Stat::from_io(&e))?;
                if st.st_dev != root_dev {
                    return Err(Stat::Stale);
                }
                self.admit(lockd, export, fh, fd.clone(), &st);
                fd
            }
        };
        let st = fstat(fd.as_raw_fd()).map_err(|e| Stat::from_io(&e))?;
        if st.st_nlink == 0 {
            self.lock().remove(fh);
            return Err(Stat::Stale);
        }
        Ok(Node { export, fd, st })
    }

    /// Caches a descriptor, unless its group went offline meanwhile: an offline first
    /// refuses the group, then closes its cached descriptors, so an entry made after that
    /// sees the refusal here and goes too.
    fn admit(
        &self,
        lockd: &Lockd,
        export: &OpenExport,
        fh: &[u8],
        fd: Arc<OwnedFd>,
        st: &libc::stat,
    ) {
        self.insert(fh, fd, file_key(export, st));
        if lockd.is_offline(export.export.scope) {
            self.lock().remove(fh);
        }
    }

    fn insert(&self, fh: &[u8], fd: Arc<OwnedFd>, file: FileKey) {
        let mut l = self.lock();
        if l.map.len() >= self.capacity {
            let mut stamps: Vec<u64> = l.map.values().map(|e| e.stamp).collect();
            stamps.sort_unstable();
            l.drop_used_before(stamps[stamps.len() / 4]);
        }
        let stamp = l.tick();
        let fh: Box<[u8]> = fh.into();
        let entry = Entry {
            fd,
            stamp,
            file,
            readable: None,
            writable: None,
        };
        if let Some(old) = l.map.insert(fh.clone(), entry) {
            if old.file != file {
                l.unindex(&old.file, &fh);
            }
        }
        l.by_file.insert(file, fh);
    }

    /// The cached handle of the file of status `st` in `export`, if its descriptor is held.
    fn cached_handle(&self, export: &OpenExport, st: &libc::stat) -> Option<Vec<u8>> {
        self.lock()
            .used(&file_key(export, st))
            .map(|(fh, _)| fh.to_vec())
    }

    /// Closes the cached descriptors of a file whose last name is gone, so that its
    /// blocks are freed now rather than when the cache would have dropped it.
    pub fn forget(&self, export: &OpenExport, st: &libc::stat) {
        let mut l = self.lock();
        if let Some(fh) = l.by_file.remove(&file_key(export, st)) {
            l.map.remove(&fh);
        }
    }

    /// The file of `node` open for reading, opened by the daemon itself (the caller's
    /// permission is the caller's to check) and kept with the node's cached descriptor, so
    /// that READs of a file open it once rather than each through procfs.
    pub fn readable(&self, node: &Node<'_>) -> io::Result<Arc<OwnedFd>> {
        let key = file_key(node.export, &node.st);
        if let Some((_, e)) = self.lock().file_entry(&key) {
            if let Some(f) = &e.readable {
                return Ok(f.clone());
            }
        }
        let f = Arc::new(reopen(node.raw(), libc::O_RDONLY)?);
        if let Some((_, e)) = self.lock().file_entry(&key) {
            e.readable.get_or_insert_with(|| f.clone());
        }
        Ok(f)
    }

    /// The file of `node` open for writing, opened by the daemon itself (the caller's
    /// permission is the caller's to check) and kept with the node's cached descriptor
    /// while a client goes on writing it: until its COMMIT ([`Self::done_writing`]) or
    /// [`WRITER_IDLE`] without a WRITE ([`Self::sweep`]).
    ///
    /// Why keep it: otherwise every WRITE opens the file as the caller through procfs and
    /// closes it again, and the close of a file's last writer is where ext4 gives back
    /// its block preallocation, under the inode's data lock (BENCHMARKS.md has the
    /// figures). Why not for longer: a file open for writing cannot be executed
    /// (`ETXTBSY`) nor leased by a local process, so the descriptor goes when the client
    /// is done, as knfsd's open-file cache lets its descriptors go after about as long.
    pub fn writable(&self, node: &Node<'_>) -> io::Result<Arc<OwnedFd>> {
        let key = file_key(node.export, &node.st);
        let now = Instant::now();
        if let Some((_, e)) = self.lock().file_entry(&key) {
            if let Some((f, used)) = &mut e.writable {
                *used = now;
                return Ok(f.clone());
            }
        }
        let f = Arc::new(reopen(node.raw(), libc::O_WRONLY)?);
        if let Some((_, e)) = self.lock().file_entry(&key) {
            e.writable.get_or_insert_with(|| (f.clone(), now));
        }
        Ok(f)
    }

    /// Closes the kept write descriptor of `node`'s file: its client committed its writes.
    pub fn done_writing(&self, node: &Node<'_>) {
        if let Some((_, e)) = self.lock().file_entry(&file_key(node.export, &node.st)) {
            e.writable = None;
        }
    }

    /// Closes what has been idle long enough at `now`: the kept write descriptors no
    /// WRITE used for [`WRITER_IDLE`], and the cached descriptors no call used for the
    /// cache's idle time; and the descriptors of removed files still waiting for the
    /// closing thread. Called about once a second; a use costs no clock reading, only
    /// the stamp it already takes, which each sweep notes with the time.
    pub fn sweep(&self, now: Instant) {
        let mut l = self.lock();
        for e in l.map.values_mut() {
            if e.writable
                .as_ref()
                .is_some_and(|(_, used)| now.saturating_duration_since(*used) >= WRITER_IDLE)
            {
                e.writable = None;
            }
        }
        let clock = l.clock;
        l.marks.push_back((now, clock));
        let mut cut = None;
        while let Some(&(at, stamp)) = l.marks.front() {
            if now.saturating_duration_since(at) < self.idle {
                break;
            }
            cut = Some(stamp);
            l.marks.pop_front();
        }
        if let Some(cut) = cut {
            l.drop_used_before(cut);
        }
        drop(l);
        self.closer.kick();
    }

    /// Files held open for writing now.
    pub fn writing_count(&self) -> usize {
        let l = self.lock();
        l.map.values().filter(|e| e.writable.is_some()).count()
    }

    /// Closes every cached descriptor of files of the export `id` (its group goes
    /// offline, or comes online on storage that may have been mounted anew), and every
    /// descriptor still waiting to be closed (of any export: they are few).
    pub fn forget_export(&self, id: u32) {
        {
            let mut l = self.lock();
            let Lru { map, by_file, .. } = &mut *l;
            map.retain(|_, e| e.file.0 != id);
            by_file.retain(|file, _| file.0 != id);
        }
        self.closer.flush();
    }

    /// Closes `fd`, a file of `export`, soon and off the caller's thread: the last
    /// descriptor of a removed file frees it when closed (see [`crate::nfs3::closer`]).
    /// Unless the export's group went offline meanwhile: an offline first refuses the
    /// group, then flushes the closer, so a descriptor queued after that flush is seen
    /// here and closed at once, and the group's storage can be unmounted.
    /// A descriptor still shared (the cache's, in use by another call) is left to its
    /// last holder.
    pub fn close_later(&self, lockd: &Lockd, export: &OpenExport, fd: Arc<OwnedFd>) {
        let Ok(fd) = Arc::try_unwrap(fd) else {
            return;
        };
        self.closer.close_later(fd);
        if lockd.is_offline(export.export.scope) {
            self.closer.flush();
        }
    }

    /// The handle and status of `name` in the directory `dir` of `export`, as the calling
    /// thread (its search permission on the directory is checked by the kernel). A file
    /// whose descriptor is cached (a handle in use) costs one `fstatat`, tried first while
    /// that pays (see [`Backing::probe`]); another is opened without following a symbolic
    /// link, for its handle.
    ///
    /// That descriptor is kept only for a file looked up a second time while it is among
    /// the last [`LOOKED_UP_SLOTS`] or so looked up uncached: a client that checks a name
    /// again and again (as a Linux client revalidates its cached names) then costs an
    /// `fstatat` per LOOKUP, while a walk over many names each looked up once keeps
    /// nothing, so it neither fills the cache nor makes it close a quarter of its
    /// descriptors at a time (caching every LOOKUP made a walk over 100,000 names 25%
    /// slower).
    pub fn lookup(
        &self,
        lockd: &Lockd,
        export: &OpenExport,
        dir: RawFd,
        name: &CString,
    ) -> Result<(Vec<u8>, libc::stat), Stat> {
        let probing = self.lookup_probe.worth_it();
        if probing {
            let st = stat_at(dir, name).map_err(|e| Stat::from_io(&e))?;
            let fh = self.cached_handle(export, &st);
            self.lookup_probe.found(fh.is_some());
            if let Some(fh) = fh {
                return Ok((fh, st));
            }
        }
        let fd = open_path_at(dir, name).map_err(|e| Stat::from_io(&e))?;
        let st = fstat(fd.as_raw_fd()).map_err(|e| Stat::from_io(&e))?;
        if !probing {
            if let Some(fh) = self.cached_handle(export, &st) {
                self.lookup_probe.found(true);
                return Ok((fh, st));
            }
        }
        let fh = self.seal(lockd, export, fd.as_raw_fd(), &st)?;
        if self.lock().looked_up_again(file_key(export, &st)) {
            self.admit(lockd, export, &fh, Arc::new(fd), &st);
        }
        Ok((fh, st))
    }

    /// What `name` in `dir` names, held for a REMOVE or RMDIR that is about to unlink
    /// it, and its status: the cached descriptor when the file has one (tried first while
    /// that pays, see [`Backing::remove_probe`]), else one opened `O_PATH` without
    /// following a symbolic link. `None` when the name names nothing the daemon can open.
    pub fn hold(
        &self,
        export: &OpenExport,
        dir: RawFd,
        name: &CString,
    ) -> Option<(Arc<OwnedFd>, libc::stat)> {
        let probing = self.remove_probe.worth_it();
        if probing {
            let st = stat_at(dir, name).ok()?;
            let fd = self
                .lock()
                .used(&file_key(export, &st))
                .map(|(_, e)| e.fd.clone());
            self.remove_probe.found(fd.is_some());
            if let Some(fd) = fd {
                return Some((fd, st));
            }
        }
        let fd = open_path_at(dir, name).ok()?;
        let st = fstat(fd.as_raw_fd()).ok()?;
        if !probing && self.lock().file_entry(&file_key(export, &st)).is_some() {
            self.remove_probe.found(true);
        }
        Some((Arc::new(fd), st))
    }

    /// Seals the handle of an open descriptor of a file in `export`, whose status is
    /// `st`. A file on another device than the export root is refused: the server does
    /// not cross mounts.
    pub fn handle_of(
        &self,
        lockd: &Lockd,
        export: &OpenExport,
        fd: RawFd,
        st: &libc::stat,
    ) -> Result<Vec<u8>, Stat> {
        match self.cached_handle(export, st) {
            Some(fh) => Ok(fh),
            None => self.seal(lockd, export, fd, st),
        }
    }

    /// The handle of a file a call just made (or opened), whose descriptor `fd` is kept
    /// in the cache unless the file already has one there: a client goes on to use the
    /// handle of what it made (a WRITE into a new file, a CREATE in a new directory, a
    /// REMOVE), which then finds it open. A regular file is kept as the call opened it,
    /// for reading, which `O_PATH` cannot create.
    pub fn handle_keeping(
        &self,
        lockd: &Lockd,
        export: &OpenExport,
        fd: OwnedFd,
        st: &libc::stat,
    ) -> Result<Vec<u8>, Stat> {
        if let Some(fh) = self.cached_handle(export, st) {
            return Ok(fh);
        }
        let fh = self.seal(lockd, export, fd.as_raw_fd(), st)?;
        self.admit(lockd, export, &fh, Arc::new(fd), st);
        Ok(fh)
    }

    fn seal(
        &self,
        lockd: &Lockd,
        export: &OpenExport,
        fd: RawFd,
        st: &libc::stat,
    ) -> Result<Vec<u8>, Stat> {
        let (root_dev, _) = export.root_id().ok_or(Stat::Stale)?;
        if st.st_dev != root_dev {
            return Err(Stat::Acces);
        }
        let (htype, kernel) = kernel_handle(fd)?;
        let fh = lockd
            .fhs
            .key_of(export.export.scope)
            .seal(export.export.id, htype, &kernel);
        if fh.len() > FHSIZE3 {
            return Err(Stat::NotSupp);
        }
        Ok(fh)
    }

    /// The handle of an export's root directory.
    pub fn root_handle(&self, lockd: &Lockd, export: &OpenExport) -> Result<Vec<u8>, Stat> {
        let root = export.root().ok_or(Stat::Stale)?;
        let st = fstat(root.as_raw_fd()).map_err(|e| Stat::from_io(&e))?;
        self.handle_of(lockd, export, root.as_raw_fd(), &st)
    }
}

/// Whether the file of status `st` is the root directory of `export`.
pub fn is_root(export: &OpenExport, st: &libc::stat) -> bool {
    export.root_id() == Some((st.st_dev, st.st_ino))
}
