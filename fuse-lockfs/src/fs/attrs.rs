//! Attributes: getattr, setattr (mode, owner, size, times), access checks and
//! statfs.
//!
//! A size change of a mandatory file is I/O like a write: it passes the lock
//! table's gate before it happens, and may wait there; the change is then made
//! by a [`Detached`] copy of the file system from whichever thread admits it.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use fuser::{AccessFlags, Errno, FileAttr, FileHandle, INodeNo, Request, TimeOrNow};
use lock_table::Access;

use super::io::kill_set_id;
use super::reply::{Attr, Statfs, Step, R};
use super::{errno, file_id, LockFs, Shared};
use crate::attr;
use crate::inode::{Inode, ROOT_INO};
use crate::locking::{self, Gate};
use crate::options::{IoMode, Mandatory};
use crate::sys::{self, TimeSpec};

/// The attribute changes of one `setattr` request.
pub(super) struct Changes {
    pub(super) mode: Option<u32>,
    pub(super) uid: Option<u32>,
    pub(super) gid: Option<u32>,
    pub(super) size: Option<u64>,
    pub(super) atime: Option<TimeOrNow>,
    pub(super) mtime: Option<TimeOrNow>,
    /// The caller lacked CAP_FSETID: a size change drops the set-ID bits.
    pub(super) kill_suidgid: bool,
}

impl LockFs {
    pub(super) fn getattr(&self, ino: INodeNo, fh: Option<FileHandle>) -> R<Attr> {
        let attr = match fh.and_then(|fh| self.file(fh).ok()) {
            Some(f) => {
                let st = sys::fstat(f.fd.as_fd()).map_err(errno)?;
                attr::to_attr(f.inode.ino, &st).ok_or(Errno::EIO)?
            }
            None => self.attr_of(&*self.inode(ino)?)?,
        };
        Ok(self.cached(attr))
    }

    pub(super) fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        ch: Changes,
        fh: Option<FileHandle>,
    ) -> R<Step<Attr>> {
        if let Some(size) = ch.size {
            if let Some(gate) = self.truncate_gate(req, ino, fh, size)? {
                // Wait for the conflicting locks, then make every change.
                let me = self.detached();
                let work = Box::new(move || me.setattr(ino, ch, fh));
                return Ok(Step::Gated(gate, work));
            }
        }
        self.detached().setattr(ino, ch, fh).map(Step::Done)
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

    /// The gate a truncate of a mandatory file must pass, or `None` when it needs
    /// no check. Linux's rule: the bytes between the old and the new size.
    fn truncate_gate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: Option<FileHandle>,
        size: u64,
    ) -> R<Option<Gate>> {
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
        let nonblock = file
            .as_ref()
            .is_some_and(|(f, _)| f.flags & libc::O_NONBLOCK != 0);
        Ok(Some(Gate {
            lk: lk.clone(),
            unique: req.unique().0,
            pid: req.pid(),
            file_id: id,
            file,
            lock_owner: None,
            checks,
            nonblock,
        }))
    }

    pub(super) fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags) -> R<()> {
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

    pub(super) fn statfs(&self, ino: INodeNo) -> R<Statfs> {
        let ino = if self.shared.inodes.get(ino.0).is_some() {
            ino
        } else {
            INodeNo(ROOT_INO)
        };
        let inode = self.inode(ino)?;
        let s = sys::fstatvfs(inode.fd.as_fd()).map_err(errno)?;
        Ok(Statfs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: u32::try_from(s.f_bsize).unwrap_or(4096),
            namelen: u32::try_from(s.f_namemax).unwrap_or(255),
            frsize: u32::try_from(s.f_frsize).unwrap_or(4096),
        })
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

    fn setattr(&self, ino: INodeNo, ch: Changes, fh: Option<FileHandle>) -> R<Attr> {
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
        Ok(Attr {
            ttl: self.ttl,
            attr: self.attr_of(&inode)?,
        })
    }
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
