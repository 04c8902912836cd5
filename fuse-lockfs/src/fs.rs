//! The FUSE request handlers: a passthrough of the source directory.
//!
//! Each handler resolves the kernel's inode or handle number to a descriptor the
//! daemon holds, performs the matching system call relative to it, and answers with
//! the backing file system's own result or errno, so programs see the same behaviour
//! as on the source directory. Handlers never wait for anything but the backing
//! file system: lock requests and checked I/O that must wait for a lock park their
//! reply (see [`crate::wake`]) and return; [`crate::locking`] translates between
//! these handlers and the lock table.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackingId, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle,
    FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use lock_table::{Access, FileId, LockKind, LockRequest, Range, TestRequest, Wait};
use share_reservations::{ShareMode, ShareRequest};

use crate::attr;
use crate::handles::{HandleTable, OpenDir, OpenFile};
use crate::inode::{Inode, InodeTable, ROOT_INO};
use crate::locking::{self, Locking};
use crate::options::{IoMode, IoPolicy, Mandatory, MountOptions};
use crate::share;
use crate::sys::{self, TimeSpec};

type R<T> = Result<T, Errno>;

fn errno(e: io::Error) -> Errno {
    match e.raw_os_error() {
        Some(n) if n > 0 => Errno::from_i32(sys::reply_errno(n)),
        _ => Errno::EIO,
    }
}

/// Largest read the daemon serves in one request; the kernel never asks for more
/// than `max_read`/`max_pages`, this only bounds a malformed request.
const MAX_READ: usize = 32 << 20;

/// Linux's limit on an xattr value and on a name list (`XATTR_SIZE_MAX`,
/// `XATTR_LIST_MAX`); a larger buffer is never needed.
const XATTR_MAX: usize = 64 * 1024;

/// Largest copy one `copy_file_range` request performs: the reply carries a 32-bit
/// count, and a short copy makes the caller come back for the rest.
const MAX_COPY: u64 = 1 << 30;

/// State shared by the request loops and the mount handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) inodes: InodeTable,
    pub(crate) files: HandleTable<OpenFile>,
    pub(crate) dirs: HandleTable<OpenDir>,
    /// Whether the kernel accepted passthrough at init.
    pub(crate) passthrough: AtomicBool,
    /// Whether the kernel accepted `FUSE_HANDLE_KILLPRIV_V2`: the daemon drops
    /// set-ID bits after unprivileged writes and truncates, and the kernel stops
    /// asking for `security.capability` before every write.
    pub(crate) killpriv: AtomicBool,
    /// Read and write requests served by the daemon (direct I/O files only; with
    /// passthrough the kernel never sends them).
    pub(crate) daemon_io: AtomicU64,
}

/// The passthrough file system served on one mount point.
pub(crate) struct LockFs {
    shared: Arc<Shared>,
    ttl: Duration,
    policy: Option<Arc<dyn IoPolicy>>,
    want_passthrough: bool,
    forward_locks: bool,
    fallback_logged: Once,
    /// The lock table this mount serves; `None` when the kernel keeps locks.
    locking: Option<Arc<Locking>>,
    mandatory: Mandatory,
}

/// Bits of an open-file handle number left for the counter; the mount id takes
/// the bits above.
const HANDLE_BITS: u32 = 48;

impl LockFs {
    /// A file system serving the directory behind `root` (an `O_PATH` descriptor).
    pub(crate) fn new(
        root: OwnedFd,
        st: &libc::stat,
        opts: &MountOptions,
        locking: Option<Arc<Locking>>,
    ) -> Self {
        let base = locking
            .as_ref()
            .map(|l| (l.mount & 0xffff) << HANDLE_BITS)
            .unwrap_or(0);
        let mandatory = match &locking {
            Some(_) => opts.mandatory,
            None => Mandatory::Off,
        };
        LockFs {
            shared: Arc::new(Shared {
                inodes: InodeTable::new(root, st),
                files: HandleTable::with_base(base),
                dirs: HandleTable::new(),
                passthrough: AtomicBool::new(false),
                killpriv: AtomicBool::new(false),
                daemon_io: AtomicU64::new(0),
            }),
            ttl: opts.ttl,
            policy: opts.io_policy.clone(),
            want_passthrough: opts.passthrough,
            forward_locks: opts.forward_locks || locking.is_some(),
            fallback_logged: Once::new(),
            locking,
            mandatory,
        }
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn inode(&self, ino: INodeNo) -> R<Arc<Inode>> {
        self.shared.inodes.get(ino.0).ok_or(Errno::ENOENT)
    }

    fn file(&self, fh: FileHandle) -> R<Arc<OpenFile>> {
        self.shared.files.get(fh.0).ok_or(Errno::EBADF)
    }

    fn dir(&self, fh: FileHandle) -> R<Arc<OpenDir>> {
        self.shared.dirs.get(fh.0).ok_or(Errno::EBADF)
    }

    fn attr_of(&self, inode: &Inode) -> R<FileAttr> {
        let st = sys::fstat(inode.fd.as_fd()).map_err(errno)?;
        attr::to_attr(inode.ino, &st).ok_or(Errno::EIO)
    }

    /// Enters the backing file behind `fd` into the inode table (one lookup).
    fn register(&self, fd: OwnedFd) -> R<(Arc<Inode>, FileAttr)> {
        let st = sys::fstat(fd.as_fd()).map_err(errno)?;
        // Check the type before counting a lookup the kernel would never forget.
        attr::file_type(st.st_mode).ok_or(Errno::EIO)?;
        let inode = self.shared.inodes.lookup(fd, &st);
        let attr = attr::to_attr(inode.ino, &st).ok_or(Errno::EIO)?;
        Ok((inode, attr))
    }

    fn do_lookup(&self, parent: INodeNo, name: &OsStr) -> R<FileAttr> {
        let dir = self.inode(parent)?;
        // The root's parent lies outside the source: never hand it out.
        if parent.0 == ROOT_INO && name.as_bytes() == b".." {
            let fd = sys::reopen(dir.fd.as_fd(), libc::O_PATH).map_err(errno)?;
            return self.register(fd).map(|(_, a)| a);
        }
        let c = sys::component(name).map_err(errno)?;
        let fd = sys::open_path(dir.fd.as_fd(), &c).map_err(errno)?;
        self.register(fd).map(|(_, a)| a)
    }

    /// Gives a node the daemon just created to the calling user.
    ///
    /// The daemon runs as root, so without this every new file would belong to
    /// root. In a set-group-ID directory the backing file system already chose the
    /// directory's group, which is kept.
    fn give_to_caller(&self, req: &Request, parent: &Inode, fd: BorrowedFd<'_>) -> R<()> {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(());
        }
        let pst = sys::fstat(parent.fd.as_fd()).map_err(errno)?;
        let gid = if pst.st_mode & libc::S_ISGID != 0 {
            None
        } else {
            Some(req.gid())
        };
        if req.uid() == 0 && gid.is_none_or(|g| g == 0) {
            return Ok(());
        }
        let before = sys::fstat(fd).map_err(errno)?;
        sys::chown_fd(fd, Some(req.uid()), gid).map_err(errno)?;
        // chown clears set-user-ID and set-group-ID bits; the creator asked for them.
        let special = before.st_mode & (libc::S_ISUID | libc::S_ISGID);
        if special != 0 && before.st_mode & libc::S_IFMT != libc::S_IFLNK {
            sys::chmod_path_fd(fd, before.st_mode & 0o7777).map_err(errno)?;
        }
        Ok(())
    }

    fn choose_mode(&self, ino: u64, attr: &FileAttr) -> IoMode {
        let wanted = match &self.policy {
            Some(p) => p.io_mode(ino, attr),
            None if self.mandatory.applies(attr) => IoMode::DirectIo,
            None => IoMode::Passthrough,
        };
        if wanted == IoMode::Passthrough
            && self.shared.killpriv.load(Ordering::Relaxed)
            && is_set_id(u32::from(attr.perm))
        {
            // The kernel does passthrough writes with the daemon's rights and,
            // under KILLPRIV_V2, leaves dropping the set-ID bits to the daemon,
            // which only sees writes it serves itself.
            return IoMode::DirectIo;
        }
        if wanted == IoMode::Passthrough && !self.shared.passthrough.load(Ordering::Relaxed) {
            // When passthrough was switched off on purpose, direct I/O is no news.
            if self.want_passthrough {
                self.log_fallback("passthrough was not negotiated with the kernel");
            }
            return IoMode::DirectIo;
        }
        wanted
    }

    fn log_fallback(&self, why: &str) {
        self.fallback_logged.call_once(|| {
            tracing::warn!(
                reason = why,
                "FUSE passthrough unavailable: files are served with direct I/O through the daemon"
            );
        });
    }

    /// Registers an open of `inode` under handle `fh` and decides its I/O mode.
    ///
    /// All opens of an inode share one mode (the kernel refuses to mix them) and one
    /// backing id. Returns the backing id for passthrough opens.
    ///
    /// A file that became mandatory while passthrough opens exist keeps them (the
    /// kernel does their I/O, unchecked) but refuses new opens with `EBUSY` until
    /// the last of them is closed; the next open then serves it with direct I/O and
    /// checks every read and write.
    fn open_file(
        &self,
        fh: u64,
        inode: Arc<Inode>,
        fd: OwnedFd,
        flags: i32,
        attr: &FileAttr,
        open_backing: impl FnOnce(BorrowedFd<'_>) -> io::Result<BackingId>,
    ) -> R<Option<Arc<BackingId>>> {
        let mut io = inode.io_state();
        let mandatory_now = self.mandatory.applies(attr);
        let mut mode = match io.mode {
            Some(m) if io.opens > 0 => {
                if m == IoMode::Passthrough && mandatory_now {
                    return Err(Errno::from_i32(libc::EBUSY));
                }
                m
            }
            _ => self.choose_mode(inode.ino, attr),
        };
        if mode == IoMode::Passthrough && io.backing.is_none() {
            match open_backing(fd.as_fd()) {
                Ok(id) => io.backing = Some(Arc::new(id)),
                Err(e) => {
                    tracing::debug!(ino = inode.ino, error = %e, "FUSE_DEV_IOC_BACKING_OPEN failed");
                    self.log_fallback("the kernel refused a backing file");
                    mode = IoMode::DirectIo;
                }
            }
        }
        let backing = match mode {
            IoMode::Passthrough => io.backing.clone(),
            IoMode::DirectIo => None,
        };
        io.opens += 1;
        io.mode = Some(mode);
        io.mandatory = mode == IoMode::DirectIo && mandatory_now;
        drop(io);
        let file_id = file_id(&inode);
        self.shared.files.insert_at(
            fh,
            OpenFile {
                fd,
                inode,
                flags,
                mode,
                file_id,
                lock_owners: Default::default(),
            },
        );
        Ok(backing)
    }

    /// Takes the share reservation of a new open `fh` of `inode` by `pid`.
    fn reserve_open(&self, pid: u32, fh: u64, inode: &Inode, flags: i32) -> R<()> {
        let Some(lk) = &self.locking else {
            return Ok(());
        };
        if inode.kind != libc::S_IFREG {
            return Ok(());
        }
        let file = file_id(inode);
        let mode = match lk.take_pending(pid, file) {
            Some(m) => share::widen(m, flags),
            None => share::open_mode(flags),
        };
        self.reserve(lk, pid, fh, file, mode)
    }

    fn reserve(&self, lk: &Locking, pid: u32, fh: u64, file: FileId, mode: ShareMode) -> R<()> {
        let req = ShareRequest {
            file,
            scope: lk.ctx.scope,
            owner: lock_table::Owner::ofd(fh),
            pid,
            mode,
        };
        lk.ctx.shares().reserve(&req).map_err(|c| {
            tracing::debug!(conflict = %c, "open refused by a share reservation");
            Errno::from_i32(share::SHARE_ERRNO)
        })
    }

    fn unreserve(&self, fh: u64, inode: &Inode) {
        if let Some(lk) = &self.locking {
            lk.ctx
                .shares()
                .release(file_id(inode), lock_table::Owner::ofd(fh));
        }
    }

    /// The mandatory-lock state of an open file, when its I/O must be checked.
    fn mandatory_lock(&self, file: &OpenFile) -> Option<&Arc<Locking>> {
        let lk = self.locking.as_ref()?;
        (file.mode == IoMode::DirectIo && file.inode.io_state().mandatory).then_some(lk)
    }

    fn do_setattr(&self, ino: INodeNo, ch: Changes, fh: Option<FileHandle>) -> R<FileAttr> {
        self.detached().do_setattr(ino, ch, fh)
    }

    /// The parts of the file system a reply answered later, from another thread,
    /// needs.
    fn detached(&self) -> Detached {
        Detached {
            shared: self.shared.clone(),
            ttl: self.ttl,
            mandatory: self.mandatory,
        }
    }

    /// Refuses an `O_TRUNC` open of a mandatory file while others hold locks on it
    /// (`EAGAIN`, as Linux did: an open does not wait).
    fn check_open_truncate(&self, pid: u32, inode: &Inode) -> R<()> {
        let Some(lk) = &self.locking else {
            return Ok(());
        };
        let attr = self.attr_of(inode)?;
        if !self.mandatory.applies(&attr) {
            return Ok(());
        }
        let checks = [(Access::Write, Range::WHOLE)];
        if lk.io_free(file_id(inode), None, None, pid, &checks) {
            Ok(())
        } else {
            Err(Errno::from_i32(libc::EAGAIN))
        }
    }

    /// What a truncate of a mandatory file must check, or `None` when it needs no
    /// check. Linux's rule: the bytes between the old and the new size.
    #[allow(clippy::type_complexity)]
    fn truncate_gate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: Option<FileHandle>,
        size: u64,
    ) -> R<
        Option<(
            Arc<Locking>,
            FileId,
            Option<(Arc<OpenFile>, u64)>,
            Vec<(Access, Range)>,
            bool,
        )>,
    > {
        let Some(lk) = &self.locking else {
            return Ok(None);
        };
        let inode = self.inode(ino)?;
        let attr = self.attr_of(&inode)?;
        if !self.mandatory.applies(&attr) || attr.size == size {
            return Ok(None);
        }
        let (lo, hi) = (attr.size.min(size), attr.size.max(size));
        let Some(range) = locking::io_range(lo, hi - lo) else {
            return Ok(None);
        };
        let checks = vec![(Access::Write, range)];
        let file = fh.and_then(|fh| self.shared.files.get(fh.0).map(|f| (f, fh.0)));
        let id = file_id(&inode);
        let free = lk.io_free(
            id,
            file.as_ref().map(|(f, fh)| (&**f, *fh)),
            None,
            req.pid(),
            &checks,
        );
        if free {
            return Ok(None);
        }
        let nonblock = file
            .as_ref()
            .is_some_and(|(f, _)| f.flags & libc::O_NONBLOCK != 0);
        Ok(Some((lk.clone(), id, file, checks, nonblock)))
    }
}

/// The parts of [`LockFs`] that replies answered from other threads use.
struct Detached {
    shared: Arc<Shared>,
    ttl: Duration,
    mandatory: Mandatory,
}

impl Detached {
    fn inode(&self, ino: INodeNo) -> R<Arc<Inode>> {
        self.shared.inodes.get(ino.0).ok_or(Errno::ENOENT)
    }

    fn attr_of(&self, inode: &Inode) -> R<FileAttr> {
        let st = sys::fstat(inode.fd.as_fd()).map_err(errno)?;
        attr::to_attr(inode.ino, &st).ok_or(Errno::EIO)
    }

    fn do_setattr(&self, ino: INodeNo, ch: Changes, fh: Option<FileHandle>) -> R<FileAttr> {
        let Changes {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            kill_suidgid,
        } = ch;
        let inode = self.inode(ino)?;
        let file = match fh {
            Some(fh) => self.shared.files.get(fh.0),
            None => None,
        };
        if let Some(mode) = mode {
            match &file {
                Some(f) => sys::fchmod(f.fd.as_fd(), mode & 0o7777),
                None => sys::chmod_path_fd(inode.fd.as_fd(), mode & 0o7777),
            }
            .map_err(errno)?;
            // Direct-I/O opens follow the file's mandatory mark at once; passthrough
            // opens cannot be checked (see `open_file`).
            let mut io = inode.io_state();
            if io.mode == Some(IoMode::DirectIo) && io.opens > 0 {
                let attr = self.attr_of(&inode)?;
                io.mandatory = self.mandatory.applies(&attr);
            }
        }
        // A SETATTR changing nothing is chown(path, -1, -1), which updates ctime.
        let nothing = mode.is_none() && size.is_none() && atime.is_none() && mtime.is_none();
        if uid.is_some() || gid.is_some() || nothing {
            sys::chown_fd(inode.fd.as_fd(), uid, gid).map_err(errno)?;
        }
        if let Some(size) = size {
            match &file {
                Some(f) => sys::ftruncate(f.fd.as_fd(), size).map_err(errno)?,
                None => {
                    if inode.is_dir() {
                        return Err(Errno::EISDIR);
                    }
                    let fd = sys::reopen(inode.fd.as_fd(), libc::O_WRONLY).map_err(errno)?;
                    sys::ftruncate(fd.as_fd(), size).map_err(errno)?;
                }
            }
            if kill_suidgid {
                // The daemon truncates as root, which the backing file system
                // lets keep the bits; the caller could not have.
                kill_set_id(inode.fd.as_fd())?;
            }
        }
        if atime.is_some() || mtime.is_some() {
            let conv = |t: Option<TimeOrNow>| match t {
                None => TimeSpec::Omit,
                Some(TimeOrNow::Now) => TimeSpec::Now,
                Some(TimeOrNow::SpecificTime(t)) => {
                    let (s, n) = attr::timespec(t);
                    TimeSpec::At(s, n)
                }
            };
            let fd = match &file {
                Some(f) => f.fd.as_fd(),
                None => inode.fd.as_fd(),
            };
            sys::utimens_fd(fd, inode.is_symlink(), conv(atime), conv(mtime)).map_err(errno)?;
        }
        self.attr_of(&inode)
    }
}

impl LockFs {
    fn do_mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> R<FileAttr> {
        let dir = self.inode(parent)?;
        let c = sys::component(name).map_err(errno)?;
        let cleared = sys::thread_umask_cleared();
        let dev = attr::decode_dev(rdev);
        if mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(Errno::EINVAL);
        }
        sys::mknodat(dir.fd.as_fd(), &c, mode, dev).map_err(errno)?;
        let fd = sys::open_path(dir.fd.as_fd(), &c).map_err(errno)?;
        if !cleared {
            sys::chmod_path_fd(fd.as_fd(), mode & 0o7777).map_err(errno)?;
        }
        self.give_to_caller(req, &dir, fd.as_fd())?;
        self.register(fd).map(|(_, a)| a)
    }

    fn do_mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32) -> R<FileAttr> {
        let dir = self.inode(parent)?;
        let c = sys::component(name).map_err(errno)?;
        let cleared = sys::thread_umask_cleared();
        sys::mkdirat(dir.fd.as_fd(), &c, mode & 0o7777).map_err(errno)?;
        let fd = sys::open_path(dir.fd.as_fd(), &c).map_err(errno)?;
        if !cleared {
            let st = sys::fstat(fd.as_fd()).map_err(errno)?;
            // Keep a set-group-ID bit the directory inherited from its parent.
            let keep = st.st_mode & libc::S_ISGID;
            sys::chmod_path_fd(fd.as_fd(), (mode & 0o7777) | keep).map_err(errno)?;
        }
        self.give_to_caller(req, &dir, fd.as_fd())?;
        self.register(fd).map(|(_, a)| a)
    }

    fn do_symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        target: &Path,
    ) -> R<FileAttr> {
        let dir = self.inode(parent)?;
        let c = sys::component(name).map_err(errno)?;
        let t = sys::cstring(target.as_os_str()).map_err(errno)?;
        sys::symlinkat(&t, dir.fd.as_fd(), &c).map_err(errno)?;
        let fd = sys::open_path(dir.fd.as_fd(), &c).map_err(errno)?;
        self.give_to_caller(req, &dir, fd.as_fd())?;
        self.register(fd).map(|(_, a)| a)
    }

    fn do_link(&self, ino: INodeNo, newparent: INodeNo, newname: &OsStr) -> R<FileAttr> {
        let inode = self.inode(ino)?;
        let dir = self.inode(newparent)?;
        let c = sys::component(newname).map_err(errno)?;
        sys::link_fd(inode.fd.as_fd(), dir.fd.as_fd(), &c).map_err(errno)?;
        let fd = sys::open_path(dir.fd.as_fd(), &c).map_err(errno)?;
        self.register(fd).map(|(_, a)| a)
    }

    fn do_rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> R<()> {
        let from = self.inode(parent)?;
        let to = self.inode(newparent)?;
        let a = sys::component(name).map_err(errno)?;
        let b = sys::component(newname).map_err(errno)?;
        sys::renameat2(from.fd.as_fd(), &a, to.fd.as_fd(), &b, flags.bits()).map_err(errno)
    }

    fn do_remove(&self, parent: INodeNo, name: &OsStr, flags: i32) -> R<()> {
        let dir = self.inode(parent)?;
        let c = sys::component(name).map_err(errno)?;
        sys::unlinkat(dir.fd.as_fd(), &c, flags).map_err(errno)
    }
}

/// Reads up to `size` bytes at `offset` of an open file for the kernel.
fn read_at(shared: &Shared, file: &OpenFile, offset: u64, size: u32) -> R<Vec<u8>> {
    shared.daemon_io.fetch_add(1, Ordering::Relaxed);
    let size = (size as usize).min(MAX_READ);
    let mut buf = vec![0u8; size];
    let mut done = 0;
    while done < size {
        let n = sys::pread(file.fd.as_fd(), &mut buf[done..], offset + done as u64);
        match n {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) if done > 0 => {
                tracing::debug!(error = %e, "short read");
                break;
            }
            Err(e) => return Err(errno(e)),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// Writes `data` at `offset` of an open file for the kernel.
fn write_at(shared: &Shared, file: &OpenFile, offset: u64, data: &[u8]) -> R<u32> {
    shared.daemon_io.fetch_add(1, Ordering::Relaxed);
    let mut done = 0;
    while done < data.len() {
        match sys::pwrite(file.fd.as_fd(), &data[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(_) if done > 0 => break,
            Err(e) => return Err(errno(e)),
        }
    }
    u32::try_from(done).map_err(|_| Errno::EIO)
}

/// The lock table's identity of an inode's backing file.
fn file_id(inode: &Inode) -> FileId {
    FileId::new(inode.key.dev, inode.key.ino)
}

/// Writes for the kernel and drops set-ID bits when it asks for that.
fn write_and_kill(
    shared: &Shared,
    file: &OpenFile,
    offset: u64,
    data: &[u8],
    flags: WriteFlags,
) -> R<u32> {
    let n = write_at(shared, file, offset, data)?;
    if flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
        kill_set_id(file.fd.as_fd())?;
    }
    Ok(n)
}

/// Whether a file with mode `mode` loses bits when an unprivileged caller writes
/// to it: set-user-ID, or set-group-ID with group execute.
fn is_set_id(mode: u32) -> bool {
    mode & libc::S_ISUID != 0
        || mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP
}

/// Drops set-user-ID (and group-executable set-group-ID) after an unprivileged
/// caller wrote to or truncated the file, as a local file system would.
///
/// The kernel leaves this to the daemon for direct-I/O writes and, once
/// `FUSE_HANDLE_KILLPRIV_V2` is negotiated, for truncates; the daemon works as
/// root, for which the backing file system keeps the bits. Set-group-ID without
/// group execute is the mandatory-locking mark and stays, as it did on Linux
/// before 5.15.
fn kill_set_id(fd: BorrowedFd<'_>) -> R<()> {
    let st = sys::fstat(fd).map_err(errno)?;
    if !is_set_id(st.st_mode) {
        return Ok(());
    }
    let mut mode = st.st_mode & 0o7777 & !libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 {
        mode &= !libc::S_ISGID;
    }
    sys::chmod_path_fd(fd, mode).map_err(errno)
}

impl LockFs {
    fn do_create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> R<(OwnedFd, Arc<Inode>, FileAttr)> {
        let dir = self.inode(parent)?;
        let c = sys::component(name).map_err(errno)?;
        let cleared = sys::thread_umask_cleared();
        // O_NOFOLLOW: a symlink planted in the source tree must not redirect the create.
        let base = (flags | libc::O_NOFOLLOW) & !libc::O_DIRECT;
        // Always create exclusively, so that only a file made here is handed to the
        // caller; a file that appeared behind the mount since the kernel's lookup is
        // opened as it is (unless the caller asked for O_EXCL).
        let created = sys::openat(
            dir.fd.as_fd(),
            &c,
            base | libc::O_CREAT | libc::O_EXCL,
            mode & 0o7777,
        );
        let (fd, new) = match created {
            Ok(fd) => (fd, true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && flags & libc::O_EXCL == 0 => {
                let flags = base & !(libc::O_CREAT | libc::O_EXCL);
                (
                    sys::openat(dir.fd.as_fd(), &c, flags, 0).map_err(errno)?,
                    false,
                )
            }
            Err(e) => return Err(errno(e)),
        };
        let path = sys::reopen(fd.as_fd(), libc::O_PATH).map_err(errno)?;
        if new {
            if !cleared {
                sys::fchmod(fd.as_fd(), mode & 0o7777).map_err(errno)?;
            }
            self.give_to_caller(req, &dir, path.as_fd())?;
        }
        let (inode, attr) = self.register(path)?;
        Ok((fd, inode, attr))
    }

    fn do_readdir(&self, fh: FileHandle, offset: u64, reply: &mut ReplyDirectory) -> R<()> {
        let dir = self.dir(fh)?;
        let _cursor = dir.cursor.lock().unwrap_or_else(|p| p.into_inner());
        sys::lseek(dir.fd.as_fd(), offset as i64, libc::SEEK_SET).map_err(errno)?;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = sys::getdents(dir.fd.as_fd(), &mut buf).map_err(errno)?;
            if n == 0 {
                return Ok(());
            }
            for ent in Dirents::new(&buf[..n]) {
                let kind = match attr::dirent_type(ent.d_type) {
                    Some(k) => k,
                    None => self.kind_at(&dir.fd, ent.name),
                };
                if reply.add(
                    INodeNo(ent.ino),
                    ent.next as u64,
                    kind,
                    OsStr::from_bytes(ent.name),
                ) {
                    return Ok(());
                }
            }
        }
    }

    /// The type of a directory entry whose `d_type` the backing file system left
    /// unknown.
    fn kind_at(&self, dir: &OwnedFd, name: &[u8]) -> FileType {
        let Ok(c) = sys::component(OsStr::from_bytes(name)) else {
            return FileType::RegularFile;
        };
        sys::open_path(dir.as_fd(), &c)
            .and_then(|fd| sys::fstat(fd.as_fd()))
            .ok()
            .and_then(|st| attr::file_type(st.st_mode))
            .unwrap_or(FileType::RegularFile)
    }

    fn do_access(&self, req: &Request, ino: INodeNo, mask: AccessFlags) -> R<()> {
        let inode = self.inode(ino)?;
        let st = sys::fstat(inode.fd.as_fd()).map_err(errno)?;
        let want = mask.bits() & (libc::R_OK | libc::W_OK | libc::X_OK);
        if want == 0 {
            return Ok(());
        }
        let mode = st.st_mode;
        if req.uid() == 0 {
            // Root may do anything but execute a file nobody may execute.
            let any_x = mode & 0o111 != 0 || mode & libc::S_IFMT == libc::S_IFDIR;
            return if want & libc::X_OK != 0 && !any_x {
                Err(Errno::EACCES)
            } else {
                Ok(())
            };
        }
        let bits = if req.uid() == st.st_uid {
            (mode >> 6) & 7
        } else if req.gid() == st.st_gid || caller_groups(req.pid()).contains(&st.st_gid) {
            (mode >> 3) & 7
        } else {
            mode & 7
        };
        if (want as u32) & !bits != 0 {
            Err(Errno::EACCES)
        } else {
            Ok(())
        }
    }
}

/// The attribute changes of one `setattr` request.
struct Changes {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
    /// The caller lacked CAP_FSETID: a size change drops the set-ID bits.
    kill_suidgid: bool,
}

/// Supplementary groups of process `pid`, read from `/proc/<pid>/status`.
fn caller_groups(pid: u32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// One parsed `linux_dirent64` record.
struct Dirent<'a> {
    ino: u64,
    next: i64,
    d_type: u8,
    name: &'a [u8],
}

/// Iterator over the records `getdents64` wrote; stops at the first malformed one
/// instead of trusting a length that would run past the buffer.
struct Dirents<'a> {
    buf: &'a [u8],
}

impl<'a> Dirents<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Dirents { buf }
    }
}

impl<'a> Iterator for Dirents<'a> {
    type Item = Dirent<'a>;

    fn next(&mut self) -> Option<Dirent<'a>> {
        const HEADER: usize = 19;
        let b = self.buf;
        if b.len() < HEADER {
            return None;
        }
        let ino = u64::from_ne_bytes(b[0..8].try_into().ok()?);
        let next = i64::from_ne_bytes(b[8..16].try_into().ok()?);
        let reclen = u16::from_ne_bytes(b[16..18].try_into().ok()?) as usize;
        if reclen < HEADER || reclen > b.len() {
            self.buf = &[];
            return None;
        }
        let d_type = b[18];
        let raw = &b[HEADER..reclen];
        let name = raw.split(|&c| c == 0).next().unwrap_or(raw);
        self.buf = &b[reclen..];
        Some(Dirent {
            ino,
            next,
            d_type,
            name,
        })
    }
}

impl Filesystem for LockFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let caps = config.capabilities();
        if self.forward_locks {
            let want = InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS;
            if let Err(missing) = config.add_capabilities(want) {
                tracing::warn!(?missing, "kernel cannot forward lock requests");
            }
        }
        if caps.contains(InitFlags::FUSE_HANDLE_KILLPRIV_V2)
            && config
                .add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2)
                .is_ok()
        {
            // Without it the kernel cannot mark inodes S_NOSEC on a FUSE mount
            // and asks the daemon for `security.capability` before every write
            // (a full round trip, half the cost of a passthrough write). With
            // it, the daemon drops set-ID bits itself: see `kill_set_id`.
            self.shared.killpriv.store(true, Ordering::Relaxed);
        }
        if caps.contains(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP) && self.mandatory == Mandatory::Off {
            // Shared mmap of direct-I/O files would otherwise fail with ENODEV. With
            // mandatory locking it must fail: a shared mapping would read and write
            // the file behind the lock checks' back.
            let _ = config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        }
        if self.want_passthrough {
            // SAFETY: geteuid cannot fail.
            let root = unsafe { libc::geteuid() } == 0;
            if !root {
                self.log_fallback("passthrough needs CAP_SYS_ADMIN (run as root)");
            } else if !caps.contains(InitFlags::FUSE_PASSTHROUGH) {
                self.log_fallback("the kernel does not offer FUSE_PASSTHROUGH");
            } else if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok()
            {
                self.shared.passthrough.store(true, Ordering::Relaxed);
                tracing::info!("FUSE passthrough enabled");
            } else {
                self.log_fallback("passthrough could not be configured");
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        if let Some(lk) = &self.locking {
            let n = lk.ctx.wakeups.end_mount(lk.mount, &lk.ctx.table);
            if n > 0 {
                tracing::info!(waiters = n, "dropped parked lock requests");
            }
            // Files the kernel never released (the connection was aborted) must
            // not leave their locks in a table other front doors share.
            let left = self.shared.files.drain();
            if !left.is_empty() {
                tracing::warn!(files = left.len(), "releasing locks of files never closed");
            }
            for (fh, f) in left {
                lk.release_abandoned(&f, fh);
            }
            lk.ctx.remove_mount(lk.mount);
        }
        tracing::info!("lockfs session ends");
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.do_lookup(parent, name) {
            Ok(attr) => reply.entry(&self.ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.shared.inodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let res = match fh.and_then(|fh| self.shared.files.get(fh.0)) {
            Some(f) => sys::fstat(f.fd.as_fd())
                .map_err(errno)
                .and_then(|st| attr::to_attr(f.inode.ino, &st).ok_or(Errno::EIO)),
            None => self.inode(ino).and_then(|i| self.attr_of(&i)),
        };
        match res {
            Ok(attr) => reply.attr(&self.ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        kill_suidgid: bool,
        reply: ReplyAttr,
    ) {
        let ch = Changes {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            kill_suidgid,
        };
        if let Some(size) = size {
            match self.truncate_gate(req, ino, fh, size) {
                Ok(None) => {}
                Ok(Some((lk, file_id, file, checks, nonblock))) => {
                    // Wait for the conflicting locks, then make every change.
                    let me = self.detached();
                    lk.gate(
                        req.unique().0,
                        req.pid(),
                        file_id,
                        file,
                        None,
                        checks,
                        nonblock,
                        Box::new(move |r| match r.and_then(|()| me.do_setattr(ino, ch, fh)) {
                            Ok(attr) => reply.attr(&me.ttl, &attr),
                            Err(e) => reply.error(e),
                        }),
                    );
                    return;
                }
                Err(e) => return reply.error(e),
            }
        }
        match self.do_setattr(ino, ch, fh) {
            Ok(attr) => reply.attr(&self.ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self
            .inode(ino)
            .and_then(|i| sys::readlink_fd(i.fd.as_fd()).map_err(errno))
        {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        match self.do_mknod(req, parent, name, mode, rdev) {
            Ok(attr) => reply.entry(&self.ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self.do_mkdir(req, parent, name, mode) {
            Ok(attr) => reply.entry(&self.ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_remove(parent, name, 0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_remove(parent, name, libc::AT_REMOVEDIR) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        match self.do_symlink(req, parent, link_name, target) {
            Ok(attr) => reply.entry(&self.ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.do_rename(parent, name, newparent, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.do_link(ino, newparent, newname) {
            Ok(attr) => reply.entry(&self.ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let fh = self.shared.files.allocate();
        let opened = self.inode(ino).and_then(|inode| {
            if inode.is_dir() {
                return Err(Errno::EISDIR);
            }
            self.reserve_open(req.pid(), fh, &inode, flags.0)?;
            let res = (|| {
                if flags.0 & libc::O_TRUNC != 0 {
                    self.check_open_truncate(req.pid(), &inode)?;
                }
                let fd = sys::reopen(inode.fd.as_fd(), flags.0 & !libc::O_DIRECT).map_err(errno)?;
                let st = sys::fstat(fd.as_fd()).map_err(errno)?;
                let attr = attr::to_attr(inode.ino, &st).ok_or(Errno::EIO)?;
                self.open_file(fh, inode.clone(), fd, flags.0, &attr, |fd| {
                    reply.open_backing(fd)
                })
            })();
            if res.is_err() {
                self.unreserve(fh, &inode);
            }
            res
        });
        match opened {
            Ok(Some(backing)) => {
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing)
            }
            Ok(None) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let file = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        if let Some(lk) = self.mandatory_lock(&file) {
            let lo = lock_owner.map(|l| l.0);
            if let Some(l) = lo {
                lk.owners.seen_posix(req.pid(), l);
            }
            if let Some(range) = locking::io_range(offset, u64::from(size)) {
                let checks = vec![(Access::Read, range)];
                let id = file.file_id;
                if !lk.io_free(id, Some((&file, fh.0)), lo, req.pid(), &checks) {
                    let shared = self.shared.clone();
                    let f = file.clone();
                    lk.clone().gate(
                        req.unique().0,
                        req.pid(),
                        id,
                        Some((file, fh.0)),
                        lo,
                        checks,
                        flags.0 & libc::O_NONBLOCK != 0,
                        Box::new(move |r| {
                            match r.and_then(|()| read_at(&shared, &f, offset, size)) {
                                Ok(data) => reply.data(&data),
                                Err(e) => reply.error(e),
                            }
                        }),
                    );
                    return;
                }
            }
        }
        match read_at(&self.shared, &file, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let file = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        if let Some(lk) = self.mandatory_lock(&file) {
            let lo = lock_owner.map(|l| l.0);
            if let Some(l) = lo {
                lk.owners.seen_posix(req.pid(), l);
            }
            if let Some(range) = locking::io_range(offset, data.len() as u64) {
                let checks = vec![(Access::Write, range)];
                let id = file.file_id;
                if !lk.io_free(id, Some((&file, fh.0)), lo, req.pid(), &checks) {
                    let shared = self.shared.clone();
                    let f = file.clone();
                    let data = data.to_vec();
                    lk.clone().gate(
                        req.unique().0,
                        req.pid(),
                        id,
                        Some((file, fh.0)),
                        lo,
                        checks,
                        flags.0 & libc::O_NONBLOCK != 0,
                        Box::new(move |r| {
                            let w = r.and_then(|()| {
                                write_and_kill(&shared, &f, offset, &data, write_flags)
                            });
                            match w {
                                Ok(n) => reply.written(n),
                                Err(e) => reply.error(e),
                            }
                        }),
                    );
                    return;
                }
            }
        }
        let written = write_and_kill(&self.shared, &file, offset, data, write_flags);
        match written {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is buffered in the daemon; a close drops the closer's POSIX locks
        // on the file. Never ENOSYS: the kernel would stop sending FLUSH.
        match self.file(fh) {
            Ok(file) => {
                if let Some(lk) = &self.locking {
                    lk.flush(&file, req.pid(), lock_owner.0);
                }
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let Some(file) = self.shared.files.remove(fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        tracing::trace!(fh = fh.0, flags = file.flags, mode = ?file.mode, "release");
        if let Some(lk) = &self.locking {
            lk.release(&file, fh.0);
        }
        let mut io = file.inode.io_state();
        io.opens = io.opens.saturating_sub(1);
        if io.opens == 0 {
            io.mode = None;
            // Dropping the last reference closes the kernel's backing id.
            io.backing = None;
        }
        drop(io);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self
            .file(fh)
            .and_then(|f| sys::fsync(f.fd.as_fd(), datasync).map_err(errno))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let opened = self.inode(ino).and_then(|inode| {
            let fd =
                sys::reopen(inode.fd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY).map_err(errno)?;
            Ok(self.shared.dirs.insert(OpenDir {
                fd,
                cursor: Default::default(),
            }))
        });
        match opened {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.do_readdir(fh, offset, &mut reply) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        match self.shared.dirs.remove(fh.0) {
            Some(_) => reply.ok(),
            None => reply.error(Errno::EBADF),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self
            .dir(fh)
            .and_then(|d| sys::fsync(d.fd.as_fd(), datasync).map_err(errno))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let ino = if self.shared.inodes.get(ino.0).is_some() {
            ino
        } else {
            INodeNo(ROOT_INO)
        };
        match self
            .inode(ino)
            .and_then(|i| sys::fstatvfs(i.fd.as_fd()).map_err(errno))
        {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                u32::try_from(s.f_bsize).unwrap_or(4096),
                u32::try_from(s.f_namemax).unwrap_or(255),
                u32::try_from(s.f_frsize).unwrap_or(4096),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let res = self.inode(ino).and_then(|i| {
            if i.is_symlink() {
                // No race-free way to reach a symlink's own xattrs; Linux refuses
                // user xattrs on symlinks anyway.
                return Err(Errno::EPERM);
            }
            let n = sys::cstring(name).map_err(errno)?;
            sys::xattr::set(i.fd.as_fd(), &n, value, flags).map_err(errno)
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if let (Some(lk), Some(parsed)) = (&self.locking, share::parse_xattr(name.as_bytes())) {
            // A share-open request: nothing is read from the backing file.
            let res = self.inode(ino).and_then(|i| {
                let mode = parsed.ok_or(Errno::EINVAL)?;
                if i.kind != libc::S_IFREG {
                    return Err(Errno::EINVAL);
                }
                lk.add_pending(req.pid(), file_id(&i), mode);
                Ok(())
            });
            const ANSWER: &[u8] = b"ok";
            return match res {
                Ok(()) if size == 0 => reply.size(ANSWER.len() as u32),
                Ok(()) if (size as usize) < ANSWER.len() => reply.error(Errno::ERANGE),
                Ok(()) => reply.data(ANSWER),
                Err(e) => reply.error(e),
            };
        }
        let res = self.inode(ino).and_then(|i| {
            if i.is_symlink() {
                return Err(Errno::from_i32(libc::ENODATA));
            }
            let n = sys::cstring(name).map_err(errno)?;
            let mut buf = vec![0u8; (size as usize).min(XATTR_MAX)];
            let len = sys::xattr::get(i.fd.as_fd(), &n, &mut buf).map_err(errno)?;
            buf.truncate(len);
            Ok((len, buf))
        });
        match res {
            Ok((len, _)) if size == 0 => reply.size(u32::try_from(len).unwrap_or(u32::MAX)),
            Ok((_, buf)) => reply.data(&buf),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let res = self.inode(ino).and_then(|i| {
            if i.is_symlink() {
                return Ok((0, Vec::new()));
            }
            let mut buf = vec![0u8; (size as usize).min(XATTR_MAX)];
            let len = sys::xattr::list(i.fd.as_fd(), &mut buf).map_err(errno)?;
            buf.truncate(len);
            Ok((len, buf))
        });
        match res {
            Ok((len, _)) if size == 0 => reply.size(u32::try_from(len).unwrap_or(u32::MAX)),
            Ok((_, buf)) => reply.data(&buf),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let res = self.inode(ino).and_then(|i| {
            if i.is_symlink() {
                return Err(Errno::EPERM);
            }
            let n = sys::cstring(name).map_err(errno)?;
            sys::xattr::remove(i.fd.as_fd(), &n).map_err(errno)
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.do_access(req, ino, mask) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let fh = self.shared.files.allocate();
        let created =
            self.do_create(req, parent, name, mode, flags)
                .and_then(|(fd, inode, attr)| {
                    self.reserve_open(req.pid(), fh, &inode, flags)?;
                    let backing = self
                        .open_file(fh, inode.clone(), fd, flags, &attr, |fd| {
                            reply.open_backing(fd)
                        })
                        .inspect_err(|_| self.unreserve(fh, &inode))?;
                    Ok((fh, backing, attr))
                });
        match created {
            Ok((fh, Some(backing), attr)) => reply.created_passthrough(
                &self.ttl,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
                &backing,
            ),
            Ok((fh, None, attr)) => reply.created(
                &self.ttl,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let file = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let run = move |f: &OpenFile| sys::fallocate(f.fd.as_fd(), mode, offset, length);
        if let (Some(lk), Some(range)) = (
            self.mandatory_lock(&file),
            locking::io_range(offset, length),
        ) {
            let f = file.clone();
            lk.clone().gate(
                req.unique().0,
                req.pid(),
                file.file_id,
                Some((file.clone(), fh.0)),
                None,
                vec![(Access::Write, range)],
                file.flags & libc::O_NONBLOCK != 0,
                Box::new(move |r| match r.and_then(|()| run(&f).map_err(errno)) {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(e),
                }),
            );
            return;
        }
        match run(&file) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self
            .file(fh)
            .and_then(|f| sys::lseek(f.fd.as_fd(), offset, whence).map_err(errno))
        {
            Ok(off) => reply.offset(off),
            Err(e) => reply.error(e),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let files = self.file(fh_in).and_then(|fin| {
            let fout = self.file(fh_out)?;
            let flags = u32::try_from(flags.bits()).map_err(|_| Errno::EINVAL)?;
            Ok((fin, fout, flags))
        });
        let (fin, fout, flags) = match files {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        let len = len.min(MAX_COPY);
        let run = move |fin: &OpenFile, fout: &OpenFile| {
            sys::copy_file_range(
                fin.fd.as_fd(),
                offset_in,
                fout.fd.as_fd(),
                offset_out,
                len,
                flags,
            )
            .map_err(errno)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
        };
        // The source is checked without waiting (EAGAIN); the destination like a
        // write, waiting unless it was opened O_NONBLOCK.
        if let (Some(lk), Some(range)) =
            (self.mandatory_lock(&fin), locking::io_range(offset_in, len))
        {
            let checks = [(Access::Read, range)];
            if !lk.io_free(fin.file_id, Some((&fin, fh_in.0)), None, req.pid(), &checks) {
                return reply.error(Errno::from_i32(libc::EAGAIN));
            }
        }
        if let (Some(lk), Some(range)) = (
            self.mandatory_lock(&fout),
            locking::io_range(offset_out, len),
        ) {
            let (a, b) = (fin.clone(), fout.clone());
            lk.clone().gate(
                req.unique().0,
                req.pid(),
                fout.file_id,
                Some((fout.clone(), fh_out.0)),
                None,
                vec![(Access::Write, range)],
                fout.flags & libc::O_NONBLOCK != 0,
                Box::new(move |r| match r.and_then(|()| run(&a, &b)) {
                    Ok(n) => reply.written(n),
                    Err(e) => reply.error(e),
                }),
            );
            return;
        }
        match run(&fin, &fout) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn setlk(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        flock: bool,
        reply: ReplyEmpty,
    ) {
        let Some(lk) = &self.locking else {
            return reply.error(Errno::ENOSYS);
        };
        let prepared = self.file(fh).and_then(|file| {
            let range = locking::fuse_range(start, end)?;
            let kind = locking::lock_kind(typ)?;
            let (owner, id, range) =
                lk.lock_target(&file, fh.0, lock_owner.0, [req.pid(), pid], range, flock);
            Ok((owner, id, range, kind))
        });
        let (owner, file, range, kind) = match prepared {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        // Debug level: a formatted span per request would cost more than the
        // table operation it describes.
        let _span =
            tracing::debug_span!("setlk", ?file, ?owner, pid, ?range, ?kind, sleep).entered();
        let request = LockRequest {
            file,
            scope: lk.scope_of(file),
            owner,
            pid,
            kind: kind.unwrap_or(LockKind::Shared),
            range,
            wait: Wait::No,
            reclaim: false,
        };
        if sleep && kind.is_some() {
            lk.set_wait(req.unique().0, request, flock, move |r| match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            });
            return;
        }
        match lk.set_now(request, kind.is_none(), flock) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getlk(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        flock: bool,
        reply: ReplyLock,
    ) {
        let Some(lk) = &self.locking else {
            return reply.error(Errno::ENOSYS);
        };
        let res = self.file(fh).and_then(|file| {
            let range = locking::fuse_range(start, end)?;
            // F_GETLK asks about a lock it would take; F_UNLCK makes no sense there.
            let kind = locking::lock_kind(typ)?.ok_or(Errno::EINVAL)?;
            let (owner, id, range) =
                lk.lock_target(&file, fh.0, lock_owner.0, [req.pid(), pid], range, flock);
            Ok(lk.test(TestRequest {
                file: id,
                scope: lk.scope_of(id),
                owner,
                kind,
                range,
            }))
        });
        match res {
            Ok((start, end, typ, pid)) => reply.locked(start, end, typ, pid),
            Err(e) => reply.error(e),
        }
    }

    fn ioctl(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        if cmd != share::LOCKFS_IOC_SET_SHARE {
            return reply.error(Errno::from_i32(libc::ENOTTY));
        }
        let Some(lk) = &self.locking else {
            return reply.error(Errno::from_i32(libc::ENOTTY));
        };
        let res = self.file(fh).and_then(|file| {
            let mode = share::parse_ioctl(in_data).ok_or(Errno::EINVAL)?;
            let mode = share::widen(mode, file.flags);
            self.reserve(lk, req.pid(), fh.0, file.file_id, mode)
        });
        match res {
            Ok(()) => reply.ioctl(0, &[]),
            Err(e) => reply.error(e),
        }
    }

    fn interrupt(&self, _req: &Request, unique: u64) -> Result<(), Errno> {
        if let Some(lk) = &self.locking {
            lk.ctx.wakeups.interrupt(lk.mount, unique, &lk.ctx.table);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ino: u64, off: i64, ty: u8, name: &[u8]) -> Vec<u8> {
        let reclen = (19 + name.len() + 1).next_multiple_of(8);
        let mut v = Vec::with_capacity(reclen);
        v.extend_from_slice(&ino.to_ne_bytes());
        v.extend_from_slice(&off.to_ne_bytes());
        v.extend_from_slice(&(reclen as u16).to_ne_bytes());
        v.push(ty);
        v.extend_from_slice(name);
        v.resize(reclen, 0);
        v
    }

    #[test]
    fn dirents_parse_and_stop_at_garbage() {
        let mut buf = record(5, 10, libc::DT_REG, b"a");
        buf.extend(record(6, 20, libc::DT_DIR, b"longer-name"));
        let got: Vec<_> = Dirents::new(&buf)
            .map(|d| (d.ino, d.next, d.d_type, d.name.to_vec()))
            .collect();
        assert_eq!(
            got,
            vec![
                (5, 10, libc::DT_REG, b"a".to_vec()),
                (6, 20, libc::DT_DIR, b"longer-name".to_vec())
            ]
        );
        // A record claiming to be longer than the buffer ends the walk.
        let mut bad = record(7, 30, libc::DT_REG, b"x");
        bad[16..18].copy_from_slice(&1000u16.to_ne_bytes());
        assert_eq!(Dirents::new(&bad).count(), 0);
        // A truncated header too.
        assert_eq!(Dirents::new(&buf[..10]).count(), 0);
        let mut tiny = record(7, 30, libc::DT_REG, b"x");
        tiny[16..18].copy_from_slice(&3u16.to_ne_bytes());
        assert_eq!(Dirents::new(&tiny).count(), 0);
    }
}
