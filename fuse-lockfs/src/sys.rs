//! Thin, safe wrappers over the Linux system calls the passthrough needs.
//!
//! Every operation on the backing tree is made relative to a file descriptor that
//! lockfs already holds (an `O_PATH` descriptor per inode, or an open file), so a
//! concurrent rename in the source directory can never redirect an operation to a
//! different file. Calls that the kernel refuses on `O_PATH` descriptors go through
//! the descriptor's `/proc/self/fd` magic link, which resolves to the same open
//! file object without walking any directory path.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

/// Turns a `-1` return into the thread's `errno`.
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// The empty path used with `AT_EMPTY_PATH`.
const EMPTY: &CStr = c"";

/// Converts a name received from the kernel to a C string.
///
/// Names come from the kernel NUL-terminated, so an interior NUL cannot occur; it is
/// still rejected rather than trusted.
pub(crate) fn cstring(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// A single path component: anything with a `/` or an empty name would let a
/// request walk outside the directory it names.
pub(crate) fn component(name: &OsStr) -> io::Result<CString> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.contains(&b'/') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    cstring(name)
}

/// The `/proc/self/fd/N` magic link for a descriptor.
pub(crate) fn proc_path(fd: BorrowedFd<'_>) -> CString {
    // A decimal number never contains NUL.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

fn owned(fd: RawFd) -> io::Result<OwnedFd> {
    let fd = cvt(fd)?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The path the file behind `fd` has now, read from its `/proc/self/fd` link;
/// `None` for a deleted file or an unreadable link.
pub(crate) fn fd_path(fd: &OwnedFd) -> Option<std::path::PathBuf> {
    use std::os::fd::AsFd;
    let link = proc_path(fd.as_fd());
    let target = std::fs::read_link(OsStr::from_bytes(link.as_bytes())).ok()?;
    if target.as_os_str().as_bytes().ends_with(b" (deleted)") {
        return None;
    }
    Some(target)
}

/// `openat(2)` with `O_CLOEXEC` always added.
pub(crate) fn openat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid C string; the returned descriptor is owned below.
    owned(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })
}

/// An `O_PATH` handle on `name` inside `dir`, never following a final symlink.
pub(crate) fn open_path(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)
}

/// Opens the file behind `fd` (usually an `O_PATH` handle) again with real flags.
pub(crate) fn reopen(fd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<OwnedFd> {
    let path = proc_path(fd);
    // The magic link itself is a symlink: O_NOFOLLOW would refuse it.
    let flags = flags & !(libc::O_NOFOLLOW | libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY);
    // SAFETY: `path` is a valid C string.
    owned(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })
}

/// `fstatat(fd, "", AT_EMPTY_PATH)`: works on `O_PATH` descriptors and symlinks.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value for this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer; the empty path is a valid C string.
    cvt(unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

pub(crate) fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: valid descriptor and C string.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

pub(crate) fn mknodat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: libc::mode_t,
    dev: libc::dev_t,
) -> io::Result<()> {
    // SAFETY: valid descriptor and C string.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, dev) }).map(drop)
}

pub(crate) fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: valid descriptor and C strings.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

pub(crate) fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: valid descriptor and C string.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

pub(crate) fn renameat2(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
    flags: libc::c_uint,
) -> io::Result<()> {
    // SAFETY: valid descriptors and C strings.
    cvt(unsafe {
        libc::renameat2(
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// Hard-links the file behind `fd` (an `O_PATH` handle) as `newdir/newname`.
///
/// `AT_EMPTY_PATH` needs `CAP_DAC_READ_SEARCH`, which the root daemon has; unlike
/// linking through the magic link it never follows a symlink being linked.
pub(crate) fn link_fd(
    fd: BorrowedFd<'_>,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
) -> io::Result<()> {
    // SAFETY: valid descriptors and C strings.
    cvt(unsafe {
        libc::linkat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// Reads the target of the symlink behind an `O_PATH` handle.
pub(crate) fn readlink_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `buf` is writable for `buf.len()` bytes.
    let n = cvt_size(unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// `fchownat` on the file itself; `None` leaves the id unchanged.
pub(crate) fn chown_fd(fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let uid = uid.unwrap_or(u32::MAX);
    let gid = gid.unwrap_or(u32::MAX);
    // SAFETY: valid descriptor and the empty C string.
    cvt(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// `fchmod` on an open file.
pub(crate) fn fchmod(fd: BorrowedFd<'_>, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: valid descriptor.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(drop)
}

/// `chmod` through the magic link (`fchmod` refuses `O_PATH` descriptors).
pub(crate) fn chmod_path_fd(fd: BorrowedFd<'_>, mode: libc::mode_t) -> io::Result<()> {
    let path = proc_path(fd);
    // SAFETY: valid C string.
    cvt(unsafe { libc::chmod(path.as_ptr(), mode) }).map(drop)
}

pub(crate) fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    let size = i64::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: valid descriptor.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), size) }).map(drop)
}

/// A timestamp for `utimensat`: `None` is `UTIME_OMIT`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TimeSpec {
    Omit,
    Now,
    At(i64, i64),
}

impl TimeSpec {
    fn raw(self) -> libc::timespec {
        match self {
            TimeSpec::Omit => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            TimeSpec::Now => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            TimeSpec::At(sec, nsec) => libc::timespec {
                tv_sec: sec,
                tv_nsec: nsec,
            },
        }
    }
}

/// Sets atime/mtime of the file behind `fd` (any kind of descriptor).
///
/// Symlinks are changed in place with `AT_EMPTY_PATH`; other files go through the
/// magic link so that `O_PATH` handles work on every kernel.
pub(crate) fn utimens_fd(
    fd: BorrowedFd<'_>,
    is_symlink: bool,
    atime: TimeSpec,
    mtime: TimeSpec,
) -> io::Result<()> {
    let times = [atime.raw(), mtime.raw()];
    if is_symlink {
        // SAFETY: `times` is a valid two-element array; empty path is a valid C string.
        return cvt(unsafe {
            libc::utimensat(
                fd.as_raw_fd(),
                EMPTY.as_ptr(),
                times.as_ptr(),
                libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop);
    }
    let path = proc_path(fd);
    // SAFETY: `times` is a valid two-element array; `path` is a valid C string.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) }).map(drop)
}

pub(crate) fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    // SAFETY: an all-zero `statvfs` is a valid value for this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer; fstatvfs accepts O_PATH descriptors.
    cvt(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

pub(crate) fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let offset = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `buf` is writable for its length.
    cvt_size(unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), offset) })
}

pub(crate) fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<usize> {
    let offset = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: `buf` is readable for its length.
    cvt_size(unsafe { libc::pwrite(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), offset) })
}

pub(crate) fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
    // SAFETY: valid descriptor.
    cvt(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
    .map(drop)
}

pub(crate) fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let offset = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    let len = i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: valid descriptor.
    cvt(unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset, len) }).map(drop)
}

pub(crate) fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: valid descriptor.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub(crate) fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    off_in: u64,
    fd_out: BorrowedFd<'_>,
    off_out: u64,
    len: u64,
    flags: u32,
) -> io::Result<usize> {
    let mut off_in =
        i64::try_from(off_in).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut off_out =
        i64::try_from(off_out).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    // SAFETY: the offsets are valid in/out pointers for the duration of the call.
    cvt_size(unsafe {
        libc::copy_file_range(
            fd_in.as_raw_fd(),
            &mut off_in,
            fd_out.as_raw_fd(),
            &mut off_out,
            len,
            flags,
        ) as libc::ssize_t
    })
}

/// Reads raw `linux_dirent64` records from the directory's current position.
pub(crate) fn getdents(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length; getdents64 writes at most that much.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Extended attributes go through the magic link: the `f*xattr` calls refuse
/// `O_PATH` descriptors, and the link resolves to the file itself (a symlink stays
/// a symlink) without walking the source tree.
pub(crate) mod xattr {
    use super::*;

    pub(crate) fn get(fd: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
        let path = proc_path(fd);
        // SAFETY: valid C strings; `buf` writable for its length (may be empty).
        cvt_size(unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        })
    }

    pub(crate) fn list(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
        let path = proc_path(fd);
        // SAFETY: valid C string; `buf` writable for its length (may be empty).
        cvt_size(unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
    }

    pub(crate) fn set(fd: BorrowedFd<'_>, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
        let path = proc_path(fd);
        // SAFETY: valid C strings; `value` readable for its length.
        cvt(unsafe {
            libc::setxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        })
        .map(drop)
    }

    pub(crate) fn remove(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
        let path = proc_path(fd);
        // SAFETY: valid C strings.
        cvt(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) }).map(drop)
    }
}

/// Gives the calling thread its own umask of 0, once.
///
/// The kernel has already applied the caller's umask to every create mode it sends,
/// so the daemon's own umask must not mask it a second time. `unshare(CLONE_FS)`
/// makes the umask per-thread, so the embedding program's umask is left alone.
/// Returns false when that is impossible; callers then fix modes with `fchmod`.
pub(crate) fn thread_umask_cleared() -> bool {
    use std::cell::Cell;
    thread_local! {
        static CLEARED: Cell<Option<bool>> = const { Cell::new(None) };
    }
    CLEARED.with(|c| {
        if let Some(v) = c.get() {
            return v;
        }
        // SAFETY: unshare(CLONE_FS) only detaches this thread's cwd/root/umask.
        let ok = unsafe { libc::unshare(libc::CLONE_FS) } == 0;
        if ok {
            // SAFETY: umask cannot fail; it now affects this thread only.
            unsafe { libc::umask(0) };
        } else {
            tracing::warn!(
                error = %io::Error::last_os_error(),
                "unshare(CLONE_FS) failed; create modes are fixed up with fchmod"
            );
        }
        c.set(Some(ok));
        ok
    })
}

/// The errno a request whose backing call failed with `errno` is answered with.
///
/// `EMFILE` from a backing call means the daemon's own descriptor table is full,
/// not the caller's: passed on, it would tell a caller with room to spare that its
/// own table is full (which programs such as those relying on `F_DUPFD` take at its
/// word). It becomes `ENFILE`, the errno of a table beyond the caller's, and the
/// log names the daemon's limit (at most once every ten seconds).
pub(crate) fn reply_errno(errno: i32) -> i32 {
    if errno != libc::EMFILE {
        return errno;
    }
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_LOG: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST_LOG.load(Ordering::Relaxed);
    if (last == 0 || now.saturating_sub(last) >= 10)
        && LAST_LOG
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid out-pointer.
        let limit = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            lim.rlim_cur.to_string()
        } else {
            "unknown".into()
        };
        tracing::error!(
            limit = %limit,
            "the daemon is out of file descriptors (RLIMIT_NOFILE {limit}); \
             answering ENFILE; raise the daemon's limit (systemd LimitNOFILE=, prlimit)"
        );
    }
    libc::ENFILE
}
