//! The FUSE request handlers: a passthrough of the source directory.
//!
//! Each handler resolves the kernel's inode or handle number to a descriptor the
//! daemon holds, performs the matching system call relative to it, and answers with
//! the backing file system's own result or errno, so programs see the same behaviour
//! as on the source directory. Handlers never wait for anything but the backing
//! file system: lock requests and checked I/O that must wait for a lock park their
//! reply in the lock table's waiter registry and return; [`crate::locking`] translates between
//! these handlers and the lock table.
//!
//! This module holds the file system's state and the [`Filesystem`] trait, a thin
//! dispatch: every request goes to a handler in the module named for what it
//! touches, which returns `Result<T, Errno>`, and [`reply`] writes the answer.
//!
//! - [`entries`]: names in directories (lookup, create nodes, link, rename, remove);
//! - [`files`]: opening and closing regular files, with share reservations;
//! - [`io`]: reads, writes and the other data operations, checked under mandatory
//!   locking;
//! - [`attrs`]: attributes, truncation, access checks, statfs;
//! - [`xattrs`]: extended attributes (and the share-open request);
//! - [`dirs`]: directory handles and listing;
//! - [`locks`]: lock requests, the share ioctl and interrupts;
//! - [`session`]: what the kernel and the daemon agree at init, and the end.

mod attrs;
mod dirs;
mod entries;
mod files;
mod io;

pub(crate) use io::{with_read_at, ReadOut};
mod locks;
mod reply;
mod session;
mod xattrs;

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Once};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, Filesystem,
    INodeNo, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use lock_table::FileId;

use crate::attr;
use crate::handles::{HandleTable, OpenDir, OpenFile};
use crate::inode::{Inode, InodeTable};
use crate::locking::Locking;
use crate::options::{IoMode, IoPolicy, Mandatory, MountOptions};
use crate::sys;

use attrs::Changes;
use reply::{send_step, Answer, Attr, R};

fn errno(e: std::io::Error) -> Errno {
    match e.raw_os_error() {
        Some(n) if n > 0 => Errno::from_i32(sys::reply_errno(n)),
        _ => Errno::EIO,
    }
}

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
    /// How READs of direct-I/O files are answered.
    pub(crate) reads: crate::read_reply::ReadReplies,
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
                reads: crate::read_reply::ReadReplies::new(opts.splice_read),
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
        let f = self.shared.files.get(fh.0).ok_or(Errno::EBADF)?;
        f.inode.cache.seen();
        Ok(f)
    }

    fn dir(&self, fh: FileHandle) -> R<Arc<OpenDir>> {
        self.shared.dirs.get(fh.0).ok_or(Errno::EBADF)
    }

    fn attr_of(&self, inode: &Inode) -> R<FileAttr> {
        let st = sys::fstat(inode.fd.as_fd()).map_err(errno)?;
        attr::to_attr(inode.ino, &st).ok_or(Errno::EIO)
    }

    /// Attributes as the kernel caches them.
    fn cached(&self, attr: FileAttr) -> Attr {
        Attr {
            ttl: self.ttl,
            attr,
        }
    }

    /// The mandatory-lock state of an open file, when its I/O must be checked.
    fn mandatory_lock(&self, file: &OpenFile) -> Option<&Arc<Locking>> {
        let lk = self.locking.as_ref()?;
        (file.mode == IoMode::DirectIo && file.inode.io_state().mandatory).then_some(lk)
    }
}

/// The lock table's identity of an inode's backing file.
fn file_id(inode: &Inode) -> FileId {
    FileId::new(inode.key.dev, inode.key.ino)
}

/// The dispatch: each request goes to its handler, whose result [`reply`] sends.
impl Filesystem for LockFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        self.start_session(config);
        Ok(())
    }

    fn destroy(&mut self) {
        self.end_session();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply.send(self.lookup(parent, name))
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let gone = self.shared.inodes.forget(ino.0, nlookup);
        if let (Some(key), Some(lk)) = (gone, &self.locking) {
            crate::lvb::on_forget(lk, FileId::new(key.dev, key.ino));
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        reply.send(self.getattr(ino, fh))
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
        send_step(reply, self.setattr(req, ino, ch, fh))
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        reply.send(self.readlink(ino))
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
        reply.send(self.mknod(req, parent, name, mode, rdev))
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
        reply.send(self.mkdir(req, parent, name, mode))
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply.send(self.remove(parent, name, 0))
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply.send(self.remove(parent, name, libc::AT_REMOVEDIR))
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        reply.send(self.symlink(req, parent, link_name, target))
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
        reply.send(self.rename(parent, name, newparent, newname, flags))
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.send(self.link(ino, newparent, newname))
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let res = self.open(req, ino, flags, |fd| reply.open_backing(fd));
        reply.send(res)
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
        send_step(reply, self.read(req, fh, offset, size, flags, lock_owner))
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
        send_step(
            reply,
            self.write(req, fh, offset, data, write_flags, flags, lock_owner),
        )
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.send(self.flush(req, fh, lock_owner))
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
        reply.send(self.release(fh))
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.send(self.fsync(fh, datasync))
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.send(self.opendir(ino))
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let res = self.readdir(ino, fh, offset, &mut reply);
        reply.send(res)
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.send(self.releasedir(fh))
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.send(self.fsyncdir(fh, datasync))
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        reply.send(self.statfs(ino))
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
        reply.send(self.setxattr(ino, name, value, flags))
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply.send(self.getxattr(req, ino, name, size))
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply.send(self.listxattr(ino, size))
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply.send(self.removexattr(ino, name))
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        reply.send(self.access(req, ino, mask))
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
        let res = self.create(req, parent, name, mode, flags, |fd| reply.open_backing(fd));
        reply.send(res)
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
        send_step(reply, self.fallocate(req, fh, offset, length, mode))
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
        reply.send(self.lseek(fh, offset, whence))
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
        let res = self.copy_file_range(req, fh_in, offset_in, fh_out, offset_out, len, flags);
        send_step(reply, res)
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
        let lock = locks::LockArgs {
            fh,
            lock_owner,
            start,
            end,
            typ,
            pid,
            sleep,
            flock,
        };
        self.setlk(req, lock, reply)
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
        let lock = locks::LockArgs {
            fh,
            lock_owner,
            start,
            end,
            typ,
            pid,
            sleep: false,
            flock,
        };
        reply.send(self.getlk(req, lock))
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
        let Some(reply) = crate::lvb::ioctl(
            self.locking.as_deref(),
            self.file(fh),
            fh.0,
            req.pid(),
            cmd,
            in_data,
            reply,
        ) else {
            return;
        };
        reply.send(self.ioctl(req, fh, cmd, in_data))
    }

    fn interrupt(&self, _req: &Request, unique: u64) -> Result<(), Errno> {
        self.interrupt(unique);
        Ok(())
    }
}
