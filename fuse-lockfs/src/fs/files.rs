//! Opening and closing regular files: the I/O mode of each open (kernel
//! passthrough or direct I/O through the daemon), the share reservation every
//! open takes, and what a close gives up.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fuser::{BackingId, Errno, FileAttr, FileHandle, INodeNo, LockOwner, OpenFlags, Request};
use lock_table::{Access, FileId, IoPass, Range};
use share_reservations::{ShareMode, ShareRequest};

use super::io::is_set_id;
use super::reply::{Attr, Opened, R};
use super::{errno, file_id, LockFs};
use crate::attr;
use crate::handles::OpenFile;
use crate::inode::Inode;
use crate::locking::Locking;
use crate::options::IoMode;
use crate::share;
use crate::sys;

impl LockFs {
    pub(super) fn open(
        &self,
        req: &Request,
        ino: INodeNo,
        flags: OpenFlags,
        open_backing: impl FnOnce(BorrowedFd<'_>) -> io::Result<BackingId>,
    ) -> R<Opened> {
        let fh = self.shared.files.allocate();
        let inode = self.inode(ino)?;
        if inode.is_dir() {
            return Err(Errno::EISDIR);
        }
        self.reserve_open(req.pid(), fh, &inode, flags.0)?;
        let res = (|| {
            // The truncating open runs under the gate's pass, like any truncate.
            let pass = if flags.0 & libc::O_TRUNC != 0 {
                self.admit_open_truncate(req.pid(), &inode)?
            } else {
                None
            };
            let fd = sys::reopen(inode.fd.as_fd(), flags.0 & !libc::O_DIRECT).map_err(errno)?;
            drop(pass);
            let st = sys::fstat(fd.as_fd()).map_err(errno)?;
            let attr = attr::to_attr(inode.ino, &st).ok_or(Errno::EIO)?;
            self.open_file(fh, inode.clone(), fd, flags.0, &attr, open_backing)
        })();
        if res.is_err() {
            self.unreserve(fh, &inode);
        }
        Ok(Opened { fh, backing: res? })
    }

    pub(super) fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        flags: i32,
        open_backing: impl FnOnce(BorrowedFd<'_>) -> io::Result<BackingId>,
    ) -> R<(Attr, Opened)> {
        let fh = self.shared.files.allocate();
        let (fd, inode, mut attr, existed) = self.create_file(req, parent, name, mode, flags)?;
        self.reserve_open(req.pid(), fh, &inode, flags)?;
        if existed && flags & libc::O_TRUNC != 0 && attr.kind == fuser::FileType::RegularFile {
            // A file that appeared behind the mount since the kernel's lookup is
            // truncated like any O_TRUNC open: under the gate's pass. (Linux
            // ignores O_TRUNC on anything but a regular file.)
            let truncated = (|| {
                let pass = self.admit_open_truncate(req.pid(), &inode)?;
                drop(sys::reopen(fd.as_fd(), libc::O_WRONLY | libc::O_TRUNC).map_err(errno)?);
                drop(pass);
                let st = sys::fstat(fd.as_fd()).map_err(errno)?;
                attr::to_attr(inode.ino, &st).ok_or(Errno::EIO)
            })();
            match truncated {
                Ok(a) => attr = a,
                Err(e) => {
                    self.unreserve(fh, &inode);
                    return Err(e);
                }
            }
        }
        let backing = self
            .open_file(fh, inode.clone(), fd, flags, &attr, open_backing)
            .inspect_err(|_| self.unreserve(fh, &inode))?;
        Ok((self.cached(attr), Opened { fh, backing }))
    }

    fn create_file(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> R<(OwnedFd, Arc<Inode>, FileAttr, bool)> {
        let dir = self.inode(parent)?;
        let c = self.name_in(parent, name)?;
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
                // Truncated by the caller, under the gate, once its inode is known.
                let flags = base & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC);
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
        Ok((fd, inode, attr, !new))
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

    pub(super) fn log_fallback(&self, why: &str) {
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

    pub(super) fn reserve(
        &self,
        lk: &Locking,
        pid: u32,
        fh: u64,
        file: FileId,
        mode: ShareMode,
    ) -> R<()> {
        // The grace rule of every door's shares (see LockTable::share_gate): an
        // open that a client's reclaim could meet fails ENOLCK during grace, as
        // a non-blocking lock request does.
        let may_meet_reclaim = mode.access.writes() || mode.deny.to_wire() != 0;
        lk.ctx
            .table
            .read(|t| {
                t.share_gate(
                    lk.ctx.scope,
                    lock_table::HostId::LOCAL,
                    false,
                    may_meet_reclaim,
                )
            })
            .map_err(|r| {
                tracing::debug!(?mode, "open refused during the grace period");
                crate::locking::refusal_errno(r)
            })?;
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

    /// Admits the truncation of an `O_TRUNC` open of a mandatory file, or refuses
    /// it while others hold locks on it (`EAGAIN`, as Linux did: an open does not
    /// wait). `None` when the file needs no check.
    fn admit_open_truncate(&self, pid: u32, inode: &Inode) -> R<Option<IoPass>> {
        let Some(lk) = &self.locking else {
            return Ok(None);
        };
        let attr = self.attr_of(inode)?;
        if !self.mandatory.applies(&attr) {
            return Ok(None);
        }
        let checks = [(Access::Write, Range::WHOLE)];
        lk.admit(file_id(inode), None, None, pid, &checks)
            .map(Some)
            .ok_or(Errno::from_i32(libc::EAGAIN))
    }

    /// `FLUSH`: a descriptor of the file was closed.
    pub(super) fn flush(&self, req: &Request, fh: FileHandle, lock_owner: LockOwner) -> R<()> {
        // Nothing is buffered in the daemon; a close drops the closer's POSIX locks
        // on the file. Never ENOSYS: the kernel would stop sending FLUSH.
        let file = self.file(fh)?;
        if let Some(lk) = &self.locking {
            crate::lvb::on_flush(lk, &file, fh.0, req.pid(), lock_owner.0);
            lk.flush(&file, req.pid(), lock_owner.0);
        }
        Ok(())
    }

    /// `RELEASE`: the last descriptor of the open file is gone.
    pub(super) fn release(&self, fh: FileHandle) -> R<()> {
        let file = self.shared.files.remove(fh.0).ok_or(Errno::EBADF)?;
        tracing::trace!(fh = fh.0, flags = file.flags, mode = ?file.mode, "release");
        if let Some(lk) = &self.locking {
            crate::lvb::on_release(lk, &file, fh.0);
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
        Ok(())
    }
}
