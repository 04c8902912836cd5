//! READ replies spliced from a file into `/dev/fuse` (lockfs patch).
//!
//! A reply written with `writev` carries data the file system first copied
//! into its own memory. With splice(2) the data goes from the file's page cache
//! into a pipe as page references, and the kernel's `fuse_dev_splice_write`
//! copies it from there straight into the reader's buffer: one copy instead
//! of two, and no buffer in the daemon.
//!
//! The reply header must precede the data in the pipe and must carry the
//! exact length, which is known only once the file has been read (a read may
//! stop short at end of file). So the data is spliced into a first pipe, the
//! header is written into a second one, the data pages are moved behind it
//! (a pipe-to-pipe splice moves page references, it does not copy), and the
//! second pipe is spliced into the device in one call, which the kernel
//! requires to hold the whole message.
//!
//! Each thread keeps its own pair of pipes. Any failure before the message
//! reaches the device discards them (they may hold a partial message) and
//! reports that nothing was sent, so the caller can reply another way.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::os::fd::BorrowedFd;
use std::os::fd::FromRawFd;
use std::os::fd::OwnedFd;
use std::os::fd::RawFd;

use zerocopy::IntoBytes;

use crate::ll::RequestId;
use crate::ll::fuse_abi as abi;

/// The pipe size asked for: the default ceiling `/proc/sys/fs/pipe-max-size`
/// lets an unprivileged process reach, 256 pages of 4 KiB.
const PIPE_BYTES: usize = 1 << 20;

/// What happened to a reply that reached the point of being sent.
#[derive(Debug)]
pub(crate) enum Spliced {
    /// The reply went to the kernel with this many bytes of data.
    Sent(usize),
    /// Writing the message to the device failed; the reply is spent (as a
    /// failed `writev` reply is): the request was interrupted or the
    /// connection is gone.
    Lost(io::Error),
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid array of two descriptors for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by no
        // one else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A smaller pipe still works for smaller reads; the capacity is
        // checked before each reply.
        // SAFETY: F_SETPIPE_SZ takes an int argument; the descriptor is open.
        let _ = unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_BYTES as libc::c_int,
            )
        };
        Ok(Pipe { read, write })
    }

    /// The pipe's capacity in page slots.
    fn slots(&self) -> io::Result<usize> {
        // SAFETY: F_GETPIPE_SZ takes no argument; the descriptor is open.
        let bytes = unsafe { libc::fcntl(self.write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        if bytes < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(bytes as usize / page_size::get())
    }
}

struct Pipes {
    data: Pipe,
    message: Pipe,
    /// Page slots of the smaller pipe.
    slots: usize,
}

impl Pipes {
    fn new() -> io::Result<Pipes> {
        let data = Pipe::new()?;
        let message = Pipe::new()?;
        let slots = data.slots()?.min(message.slots()?);
        Ok(Pipes {
            data,
            message,
            slots,
        })
    }
}

thread_local! {
    static PIPES: RefCell<Option<Pipes>> = const { RefCell::new(None) };
}

/// The largest read, in bytes, a spliced reply can carry on this thread when
/// it starts at a page boundary (0 if this thread cannot make pipes).
pub(crate) fn max_splice_size() -> usize {
    PIPES.with(|p| {
        let mut p = p.borrow_mut();
        if p.is_none() {
            *p = Pipes::new().ok();
        }
        // One slot holds the header.
        p.as_ref()
            .map_or(0, |p| p.slots.saturating_sub(1) * page_size::get())
    })
}

fn splice(from: RawFd, off: Option<&mut i64>, to: RawFd, len: usize) -> io::Result<usize> {
    let off = off.map_or(std::ptr::null_mut(), |o| o as *mut i64);
    loop {
        // SAFETY: both descriptors are open for the duration of the call and
        // `off` is null or points to a live i64.
        let n = unsafe {
            libc::splice(
                from,
                off,
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_NONBLOCK,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Sends the reply to request `unique`: up to `size` bytes of `file` from
/// `offset`, spliced. `Err` means nothing was sent.
pub(crate) fn reply_from_file(
    dev: BorrowedFd<'_>,
    unique: RequestId,
    file: BorrowedFd<'_>,
    offset: u64,
    size: usize,
) -> io::Result<Spliced> {
    let page = page_size::get();
    let pos = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    PIPES.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(Pipes::new()?);
        }
        let pipes = cell.as_ref().expect("just made");
        let first = offset as usize % page;
        let pages = (first + size).div_ceil(page);
        if pages + 1 > pipes.slots {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "read larger than the splice pipe",
            ));
        }
        let result = send(dev, unique, file, pos, size, pipes);
        if !matches!(result, Ok(Spliced::Sent(_))) {
            // A pipe may hold part of a message: never reuse it.
            *cell = None;
        }
        result
    })
}

fn send(
    dev: BorrowedFd<'_>,
    unique: RequestId,
    file: BorrowedFd<'_>,
    mut pos: i64,
    size: usize,
    pipes: &Pipes,
) -> io::Result<Spliced> {
    let mut got = 0;
    while got < size {
        match splice(
            file.as_raw_fd(),
            Some(&mut pos),
            pipes.data.write.as_raw_fd(),
            size - got,
        ) {
            Ok(0) => break,
            Ok(n) => got += n,
            // A failure after some data is a short read, as pread reports it.
            Err(_) if got > 0 => break,
            Err(e) => return Err(e),
        }
    }
    let header = abi::fuse_out_header {
        len: u32::try_from(size_of::<abi::fuse_out_header>() + got)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        error: 0,
        unique: unique.0,
    };
    let bytes = header.as_bytes();
    // SAFETY: `bytes` is valid for its length; the descriptor is open.
    let n = unsafe {
        libc::write(
            pipes.message.write.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
        )
    };
    if n != bytes.len() as isize {
        return Err(io::Error::last_os_error());
    }
    let mut moved = 0;
    while moved < got {
        match splice(
            pipes.data.read.as_raw_fd(),
            None,
            pipes.message.write.as_raw_fd(),
            got - moved,
        )? {
            0 => return Err(io::Error::from_raw_os_error(libc::EIO)),
            n => moved += n,
        }
    }
    let total = bytes.len() + got;
    match splice(pipes.message.read.as_raw_fd(), None, dev.as_raw_fd(), total) {
        Ok(n) if n == total => Ok(Spliced::Sent(got)),
        Ok(n) => Ok(Spliced::Lost(io::Error::other(format!(
            "short splice into the FUSE device: {n} of {total} bytes"
        )))),
        Err(e) => Ok(Spliced::Lost(e)),
    }
}
