//! Extended attributes, passed through to the backing file; and the
//! share-open request, which arrives as a `getxattr` of a reserved name (see
//! [`crate::share`]) and reads nothing from the file.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use fuser::{Errno, INodeNo, Request};

use super::reply::{Xattr, R};
use super::{errno, file_id, LockFs};
use crate::share;
use crate::sys;

/// Linux's limit on an xattr value and on a name list (`XATTR_SIZE_MAX`,
/// `XATTR_LIST_MAX`); a larger buffer is never needed.
const XATTR_MAX: usize = 64 * 1024;

/// What a `getxattr` or `listxattr` with buffer size `size` answers for a value
/// of `len` bytes read into `buf`.
fn sized(size: u32, len: usize, buf: Vec<u8>) -> Xattr {
    if size == 0 {
        Xattr::Size(u32::try_from(len).unwrap_or(u32::MAX))
    } else {
        Xattr::Data(buf)
    }
}

impl LockFs {
    pub(super) fn setxattr(&self, ino: INodeNo, name: &OsStr, value: &[u8], flags: i32) -> R<()> {
        let i = self.inode(ino)?;
        if i.is_symlink() {
            // No race-free way to reach a symlink's own xattrs; Linux refuses
            // user xattrs on symlinks anyway.
            return Err(Errno::EPERM);
        }
        let n = sys::cstring(name).map_err(errno)?;
        sys::xattr::set(i.fd.as_fd(), &n, value, flags).map_err(errno)
    }

    pub(super) fn getxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        size: u32,
    ) -> R<Xattr> {
        if let (Some(lk), Some(parsed)) = (&self.locking, share::parse_xattr(name.as_bytes())) {
            // A share-open request: nothing is read from the backing file.
            let i = self.inode(ino)?;
            let mode = parsed.ok_or(Errno::EINVAL)?;
            if i.kind != libc::S_IFREG {
                return Err(Errno::EINVAL);
            }
            lk.add_pending(req.pid(), file_id(&i), mode);
            const ANSWER: &[u8] = b"ok";
            return match size {
                0 => Ok(Xattr::Size(ANSWER.len() as u32)),
                s if (s as usize) < ANSWER.len() => Err(Errno::ERANGE),
                _ => Ok(Xattr::Data(ANSWER.to_vec())),
            };
        }
        let i = self.inode(ino)?;
        if i.is_symlink() {
            return Err(Errno::from_i32(libc::ENODATA));
        }
        let n = sys::cstring(name).map_err(errno)?;
        let mut buf = vec![0u8; (size as usize).min(XATTR_MAX)];
        let len = sys::xattr::get(i.fd.as_fd(), &n, &mut buf).map_err(errno)?;
        buf.truncate(len);
        Ok(sized(size, len, buf))
    }

    pub(super) fn listxattr(&self, ino: INodeNo, size: u32) -> R<Xattr> {
        let i = self.inode(ino)?;
        if i.is_symlink() {
            return Ok(sized(size, 0, Vec::new()));
        }
        let mut buf = vec![0u8; (size as usize).min(XATTR_MAX)];
        let len = sys::xattr::list(i.fd.as_fd(), &mut buf).map_err(errno)?;
        buf.truncate(len);
        Ok(sized(size, len, buf))
    }

    pub(super) fn removexattr(&self, ino: INodeNo, name: &OsStr) -> R<()> {
        let i = self.inode(ino)?;
        if i.is_symlink() {
            return Err(Errno::EPERM);
        }
        let n = sys::cstring(name).map_err(errno)?;
        sys::xattr::remove(i.fd.as_fd(), &n).map_err(errno)
    }
}
