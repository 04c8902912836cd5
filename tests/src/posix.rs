//! Safe wrappers of the kernel's POSIX lock calls, for tests and benches that
//! compare lockfs with the kernel's own locks.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `fcntl(fd, F_SETLK)` with a lock of type `l_type` (`F_RDLCK`, `F_WRLCK`,
/// `F_UNLCK`) over `len` bytes from `start` (0: to end of file).
pub fn setlk(fd: BorrowedFd<'_>, l_type: i32, start: i64, len: i64) -> io::Result<()> {
    let fl = libc::flock {
        l_type: l_type as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: start,
        l_len: len,
        l_pid: 0,
    };
    // SAFETY: `fd` is a live descriptor for the call's duration and `fl` a
    // complete flock the call only reads.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLK, &fl) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
