//! Names in directories: lookup, the nodes the daemon creates for callers,
//! links, renames and removals.
//!
//! Every node is created relative to the parent's descriptor and reopened
//! `O_PATH` by name, then handed to the calling user: the daemon runs as root,
//! and a new file must belong to whoever asked for it.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use fuser::{Errno, FileAttr, INodeNo, RenameFlags, Request};

use super::reply::{Attr, R};
use super::{errno, LockFs};
use crate::attr;
use crate::inode::{Inode, ROOT_INO};
use crate::sys;

impl LockFs {
    /// Enters the backing file behind `fd` into the inode table (one lookup).
    pub(super) fn register(&self, fd: OwnedFd) -> R<(Arc<Inode>, FileAttr)> {
        let st = sys::fstat(fd.as_fd()).map_err(errno)?;
        // Check the type before counting a lookup the kernel would never forget.
        attr::file_type(st.st_mode).ok_or(Errno::EIO)?;
        let inode = self.shared.inodes.lookup(fd, &st);
        let attr = attr::to_attr(inode.ino, &st).ok_or(Errno::EIO)?;
        Ok((inode, attr))
    }

    /// [`Self::register`], answered as a new entry.
    fn entry(&self, fd: OwnedFd) -> R<Attr> {
        self.register(fd).map(|(_, a)| self.cached(a))
    }

    /// `name` in directory `parent` as a C string, refused (`EPERM`) if it is
    /// lockfs's own state directory at the root, which the mount never shows.
    pub(super) fn name_in(&self, parent: INodeNo, name: &OsStr) -> R<CString> {
        if is_hidden(parent, name.as_bytes()) {
            return Err(Errno::EPERM);
        }
        sys::component(name).map_err(errno)
    }

    pub(super) fn lookup(&self, parent: INodeNo, name: &OsStr) -> R<Attr> {
        let dir = self.inode(parent)?;
        // The root's parent lies outside the source: never hand it out.
        if parent.0 == ROOT_INO && name.as_bytes() == b".." {
            let fd = sys::reopen(dir.fd.as_fd(), libc::O_PATH).map_err(errno)?;
            return self.entry(fd);
        }
        if is_hidden(parent, name.as_bytes()) {
            return Err(Errno::ENOENT);
        }
        let c = sys::component(name).map_err(errno)?;
        let fd = sys::open_path(dir.fd.as_fd(), &c).map_err(errno)?;
        self.entry(fd)
    }

    /// Gives a node the daemon just created to the calling user.
    ///
    /// The daemon runs as root, so without this every new file would belong to
    /// root. In a set-group-ID directory the backing file system already chose the
    /// directory's group, which is kept.
    pub(super) fn give_to_caller(
        &self,
        req: &Request,
        parent: &Inode,
        fd: BorrowedFd<'_>,
    ) -> R<()> {
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

    pub(super) fn readlink(&self, ino: INodeNo) -> R<Vec<u8>> {
        let inode = self.inode(ino)?;
        sys::readlink_fd(inode.fd.as_fd()).map_err(errno)
    }

    pub(super) fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> R<Attr> {
        let dir = self.inode(parent)?;
        let c = self.name_in(parent, name)?;
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
        self.entry(fd)
    }

    pub(super) fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32) -> R<Attr> {
        let dir = self.inode(parent)?;
        let c = self.name_in(parent, name)?;
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
        self.entry(fd)
    }

    pub(super) fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        target: &Path,
    ) -> R<Attr> {
        let dir = self.inode(parent)?;
        let c = self.name_in(parent, name)?;
        let t = sys::cstring(target.as_os_str()).map_err(errno)?;
        sys::symlinkat(&t, dir.fd.as_fd(), &c).map_err(errno)?;
        let fd = sys::open_path(dir.fd.as_fd(), &c).map_err(errno)?;
        self.give_to_caller(req, &dir, fd.as_fd())?;
        self.entry(fd)
    }

    pub(super) fn link(&self, ino: INodeNo, newparent: INodeNo, newname: &OsStr) -> R<Attr> {
        let inode = self.inode(ino)?;
        let dir = self.inode(newparent)?;
        let c = self.name_in(newparent, newname)?;
        sys::link_fd(inode.fd.as_fd(), dir.fd.as_fd(), &c).map_err(errno)?;
        let fd = sys::open_path(dir.fd.as_fd(), &c).map_err(errno)?;
        self.entry(fd)
    }

    pub(super) fn rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> R<()> {
        let from = self.inode(parent)?;
        let to = self.inode(newparent)?;
        let a = self.name_in(parent, name)?;
        let b = self.name_in(newparent, newname)?;
        sys::renameat2(from.fd.as_fd(), &a, to.fd.as_fd(), &b, flags.bits()).map_err(errno)
    }

    /// `unlink` (`flags == 0`) and `rmdir` (`AT_REMOVEDIR`).
    pub(super) fn remove(&self, parent: INodeNo, name: &OsStr, flags: i32) -> R<()> {
        let dir = self.inode(parent)?;
        let c = self.name_in(parent, name)?;
        sys::unlinkat(dir.fd.as_fd(), &c, flags).map_err(errno)
    }
}

/// Whether `name` in `parent` is lockfs's own state directory (the value-block
/// store and a service group's state), which the mount hides and refuses to
/// touch: it is the daemon's, not the exported tree's.
pub(super) fn is_hidden(parent: INodeNo, name: &[u8]) -> bool {
    parent.0 == ROOT_INO && name == crate::lvb_slots::STATE_DIR.as_bytes()
}
