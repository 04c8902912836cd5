//! Replies whose data is read from a file (a READ's), sent without a copy in the
//! daemon's reply buffer.
//!
//! Where and how the sending runs. While one client reads, on the connection's task, by
//! `sendfile` from the page cache: a megabyte sent so cost the server about 130-160 us
//! of CPU. While several clients read, the door's one thread spent 2.5 times as long per
//! megabyte that way (the segments of sixteen connections at once, their
//! acknowledgements and wake-ups) and sent them one after another; so a large reply then
//! goes out from a blocking-pool thread, both CPUs share the sending, and the data is
//! read into that thread's buffer and copied into the socket, which with sixteen readers
//! cost half what `sendfile` did. For one client the pool cost more than twice as much
//! per megabyte (BENCHMARKS.md has the figures). "Several" is a guess from the server's
//! last large reply: sent on another connection within [`READERS_WINDOW`]
//! ([`FileSends`]).

use super::FileTail;
use crate::record::{LAST_FRAGMENT, MAX_FRAGMENT};
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// File data of a reply at least this large may be sent from the blocking pool.
const OFFLOAD_MIN: usize = 256 * 1024;
/// A large reply sent on another connection this recently means several clients read.
const READERS_WINDOW: Duration = Duration::from_millis(2);

/// Where one server's connections sent their large file replies lately.
#[derive(Debug)]
pub(super) struct FileSends {
    epoch: Instant,
    /// The socket of the last large reply, plus one (0: none yet), and when it was sent
    /// (microseconds since `epoch`). Read and written without a lock: a race costs one
    /// reply's placement.
    last_socket: AtomicU64,
    last_at: AtomicU64,
    /// Replies whose data went out from the blocking pool.
    from_pool: AtomicU64,
}

impl FileSends {
    pub(super) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_socket: AtomicU64::new(0),
            last_at: AtomicU64::new(0),
            from_pool: AtomicU64::new(0),
        }
    }

    /// Notes a large reply on `sock`; whether another connection sent one just before.
    fn several_readers(&self, sock: RawFd) -> bool {
        let now = self.epoch.elapsed().as_micros() as u64;
        let me = sock as u64 + 1;
        let last = self.last_socket.swap(me, Ordering::Relaxed);
        let other = last != 0 && last != me;
        let at = self.last_at.swap(now, Ordering::Relaxed);
        other && now.saturating_sub(at) < READERS_WINDOW.as_micros() as u64
    }

    /// Replies whose data went out from the blocking pool.
    pub(super) fn pooled(&self) -> u64 {
        self.from_pool.load(Ordering::Relaxed)
    }
}

/// The largest buffer a blocking-pool thread keeps between replies (a READ's largest
/// data is 1 MiB unless configured otherwise); a larger reply's buffer is freed after it.
const KEPT_BUFFER: usize = 2 << 20;

thread_local! {
    /// A pool thread's buffer for the data of replies it sends: grown once, kept, so a
    /// megabyte is not allocated and faulted in anew for each reply.
    static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Sends what the socket takes at once of the file's `left` bytes from `offset`, from a
/// blocking-pool thread, and moves both past what was sent. The thread sends through
/// descriptors of its own, so the connection may end meanwhile.
///
/// It reads the data into its buffer and sends that, rather than `sendfile`: with
/// sixteen clients reading, a megabyte sent so cost the server 172-179 us of CPU, by
/// `sendfile` from the same threads 271-341 (a socket buffer of page-cache pages costs
/// more to send and to free on loopback than one of copied data).
async fn send_from_pool(stream: &TcpStream, tail: &FileTail, offset: &mut i64, left: &mut usize) {
    let Ok(sock) = stream.as_fd().try_clone_to_owned() else {
        return;
    };
    let file = tail.fd.clone();
    let (from, len) = (*offset, *left);
    let sent = tokio::task::spawn_blocking(move || {
        BUFFER.with_borrow_mut(|buf| {
            if buf.len() < len {
                buf.resize(len, 0);
            }
            let sent = copy_out(sock.as_raw_fd(), file.as_raw_fd(), from, &mut buf[..len]);
            if buf.len() > KEPT_BUFFER {
                *buf = Vec::new();
            }
            sent
        })
    })
    .await;
    if let Ok(sent) = sent {
        *offset += sent as i64;
        *left -= sent;
    }
}

/// Reads `buf.len()` bytes of `file` at `at` into `buf` and sends them on `sock`, as far
/// as the socket takes them at once: how many were sent. Stops short at the end of the
/// file, when the socket is full (it does not block) or at an error, which the
/// connection's task then meets itself.
fn copy_out(sock: RawFd, file: RawFd, at: i64, buf: &mut [u8]) -> usize {
    let mut have = 0;
    while have < buf.len() {
        let rest = &mut buf[have..];
        // SAFETY: `rest` is valid for writes of its length; `file` is open for the call.
        let n =
            unsafe { libc::pread(file, rest.as_mut_ptr().cast(), rest.len(), at + have as i64) };
        if n > 0 {
            have += n as usize;
        } else if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    let mut done = 0;
    while done < have {
        let rest = &buf[done..have];
        // SAFETY: `rest` is valid for reads of its length; `sock` is open for the call.
        let n = unsafe { libc::send(sock, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
        if n > 0 {
            done += n as usize;
        } else if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    done
}

/// One sending system call on the connection's socket (`call` answers what it returns),
/// made again while the socket has no room or the call was interrupted: how many bytes
/// it took.
async fn pushed(stream: &TcpStream, mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let r = stream
            .async_io(Interest::WRITABLE, || match call() {
                n if n < 0 => Err(io::Error::last_os_error()),
                n => Ok(n as usize),
            })
            .await;
        match r {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// Sends `bytes` whole with `flags` (and never SIGPIPE), waiting for room as needed.
async fn send_all(stream: &TcpStream, mut bytes: &[u8], flags: i32) -> io::Result<()> {
    let sock = stream.as_raw_fd();
    while !bytes.is_empty() {
        // SAFETY: `bytes` is valid for reads of its length during the call.
        let sent = pushed(stream, || unsafe {
            libc::send(
                sock,
                bytes.as_ptr().cast(),
                bytes.len(),
                flags | libc::MSG_NOSIGNAL,
            )
        })
        .await?;
        if sent == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[sent..];
    }
    Ok(())
}

/// Writes one record of `msg` and then a file's bytes and their padding, those sent by
/// `sendfile` from the page cache, or first from the pool while several clients read
/// (see the module doc). The mark and `msg` go with `MSG_MORE`, so they leave
/// in one segment with the data's start rather than as a small one of their own. A file
/// that no longer has all the bytes the record promised ends the connection: the record
/// cannot be finished, and the client sends its call again on a new connection.
pub(super) async fn write_framed_file(
    sends: &FileSends,
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    msg: &[u8],
    tail: &FileTail,
) -> io::Result<()> {
    let total = msg.len() + tail.len + tail.pad();
    if total > MAX_FRAGMENT {
        return Err(io::Error::other("reply larger than one record fragment"));
    }
    buf.clear();
    buf.extend_from_slice(&(total as u32 | LAST_FRAGMENT).to_be_bytes());
    buf.extend_from_slice(msg);
    send_all(stream, buf, libc::MSG_MORE).await?;
    let sock = stream.as_raw_fd();
    let file = tail.fd.as_raw_fd();
    let mut offset = tail.offset as libc::off_t;
    let mut left = tail.len;
    if left >= OFFLOAD_MIN && sends.several_readers(sock) {
        sends.from_pool.fetch_add(1, Ordering::Relaxed);
        send_from_pool(stream, tail, &mut offset, &mut left).await;
    }
    while left > 0 {
        // SAFETY: both descriptors are open for the call, and `offset` is a valid offset
        // for the kernel to read and advance.
        let sent = pushed(stream, || unsafe {
            libc::sendfile(sock, file, &mut offset, left)
        })
        .await?;
        if sent == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file is shorter than its reply says",
            ));
        }
        left -= sent.min(left);
    }
    send_all(stream, &[0u8; 3][..tail.pad()], 0).await
}
