//! A file's contents: READ, WRITE (UNSTABLE, DATA_SYNC, FILE_SYNC) and COMMIT.
//!
//! They are together because they are the I/O that passes the table's gate (mandatory
//! locks and share reservations) and that opens the file itself, as the caller, through
//! its `O_PATH` descriptor; the write verifier they answer is the door's.

use super::*;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

/// The largest READ tried inline, where it may not wait (see [`super::super::program`]):
/// a larger one, or one whose data is not all in the page cache, is read on the blocking
/// pool.
pub const INLINE_READ: u32 = 1024 * 1024;

/// UNSTABLE WRITEs start the writeback of a file's data in aligned chunks of this size:
/// the WRITE that reaches the end of a chunk starts the chunk's writeback beside its
/// reply ([`start_writeback`]). A lone writer would otherwise leave the disk idle until its
/// COMMIT; a chunk much larger than one WRITE keeps the writeback of many files from
/// interleaving on the disk in pieces of one WRITE each.
const WRITEBACK_CHUNK: u64 = 8 * 1024 * 1024;

/// A READ reply's fixed part before its data: status, `post_op_attr` with attributes,
/// count and end-of-file flag.
const READ_HEAD: usize = 4 + 4 + FATTR_LEN + 4 + 4;

/// The size from which a READ over TCP whose data is all in the page cache is sent from
/// there (`sendfile`), not copied into the reply and again into the socket. Below it the
/// two copies cost less than the system calls that avoid them.
const SEND_FROM_FILE: usize = 64 * 1024;

/// Whether `cachestat(2)` (Linux 6.5) is missing: then no READ is sent from the file.
static NO_CACHESTAT: AtomicBool = AtomicBool::new(false);

/// Whether every page of `len` bytes from `offset` of the file is in the page cache and
/// read, so that sending them does not wait for the disk. False when the kernel cannot
/// tell. `cachestat` counts the pages present, also those the disk is still filling (a
/// readahead under way, typically at the end of a sequential READ's range): so the last
/// byte is read too, without waiting (`RWF_NOWAIT` fails on a page not read yet).
/// Readahead fills a range in order, so a last page that is read says the ones before it
/// are; if one of them was not, the send waits for it on the door's thread, for one I/O.
fn all_cached(fd: RawFd, offset: u64, len: usize) -> bool {
    const SYS_CACHESTAT: libc::c_long = 451;
    const PAGE: u64 = 4096;
    if NO_CACHESTAT.load(Ordering::Relaxed) || len == 0 {
        return false;
    }
    let range = [offset, len as u64];
    // cache, dirty, writeback, evicted, recently evicted
    let mut out = [0u64; 5];
    // SAFETY: both pointers name arrays of the layout the system call reads and writes.
    let r = unsafe { libc::syscall(SYS_CACHESTAT, fd, range.as_ptr(), out.as_mut_ptr(), 0) };
    if r != 0 {
        if io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
            NO_CACHESTAT.store(true, Ordering::Relaxed);
        }
        return false;
    }
    let pages = (offset + len as u64).div_ceil(PAGE) - offset / PAGE;
    if out[0] < pages {
        return false;
    }
    let mut last = [MaybeUninit::<u8>::uninit()];
    matches!(
        pread_into(fd, &mut last, offset + len as u64 - 1, Wait::No),
        Ok(1)
    )
}

/// Why a READ gave no reply.
enum ReadFail {
    Stat(Stat),
    /// Not all of the data is in the page cache, and the READ may not wait for the disk.
    WouldWait,
}

impl From<Stat> for ReadFail {
    fn from(s: Stat) -> Self {
        ReadFail::Stat(s)
    }
}

/// Reads from `offset` until `buf` is full or the file ends; returns the bytes read, all
/// of them initialised. With [`Wait::No`], only from the page cache (`RWF_NOWAIT`): data
/// that would have to come from the disk ends the read, with `EAGAIN` or short.
fn pread_into(
    fd: RawFd,
    buf: &mut [MaybeUninit<u8>],
    offset: u64,
    wait: Wait,
) -> io::Result<usize> {
    let flags = match wait {
        Wait::Yes => 0,
        Wait::No => libc::RWF_NOWAIT,
    };
    let mut done = 0usize;
    while done < buf.len() {
        let iov = libc::iovec {
            iov_base: buf[done..].as_mut_ptr().cast(),
            iov_len: buf.len() - done,
        };
        // SAFETY: the one iovec covers the tail of `buf`, valid for writes of its length;
        // the kernel writes at most that many bytes and returns how many.
        let n = unsafe { libc::preadv2(fd, &iov, 1, (offset + done as u64) as libc::off_t, flags) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            break;
        }
        done += n as usize;
        // Short from memory: the rest is not cached yet, and asking again would only
        // race the readahead this read started. The caller reads it where it may wait.
        if wait == Wait::No {
            break;
        }
    }
    Ok(done)
}

/// Starts the writeback of the chunk an UNSTABLE WRITE of `len` bytes at `offset` ended,
/// without waiting for the disk: the COMMIT that follows then finds the disk already busy
/// with the data, rather than all of it to write. Only a hint: where it fails, the COMMIT
/// writes the data as before. On another thread of the blocking pool, beside the WRITE's
/// reply, because starting writeback can itself wait (the block layer throttles writeback
/// when the disk is slow): made by the WRITE, that made the p99 of 16 clients' WRITEs
/// 180-520 ms.
fn start_writeback(f: Arc<OwnedFd>, offset: u64, len: usize) {
    let end = offset + len as u64;
    let chunk_end = end / WRITEBACK_CHUNK * WRITEBACK_CHUNK;
    if chunk_end <= offset {
        return;
    }
    tokio::task::spawn_blocking(move || {
        // SAFETY: a plain system call on a descriptor this closure owns.
        unsafe {
            libc::sync_file_range(
                f.as_raw_fd(),
                (chunk_end - WRITEBACK_CHUNK) as libc::off64_t,
                WRITEBACK_CHUNK as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    });
}

impl Door {
    /// Opens a file for one READ or WRITE as the caller. The owner of a file may read
    /// and write it whatever its mode says: an NFS client checked the mode when its
    /// process opened the file, and a process that creates a file read-only and then
    /// writes through that descriptor (as git and tar do) must not fail on the server.
    fn open_for_io(
        &self,
        c: &Caller,
        node: &Node<'_>,
        st: &libc::stat,
        flags: i32,
    ) -> Result<OwnedFd, Stat> {
        let id = self.opts(node.export).squash.identity(&c.cred);
        let first = {
            let _as = self.become_caller(c, node.export)?;
            reopen(node.raw(), flags)
        };
        match first {
            Ok(f) => Ok(f),
            Err(e) if e.raw_os_error() == Some(libc::EACCES) && id.uid == st.st_uid => {
                Ok(reopen(node.raw(), flags)?)
            }
            Err(e) => Err(ioerr(e)),
        }
    }

    /// The file of `node` open for one READ (`write` false) or UNSTABLE WRITE by the
    /// caller: the caller's permission (or ownership, as in [`Door::open_for_io`]) is
    /// checked on the descriptor, and the daemon's own descriptor of the file, kept with
    /// its handle, is used: the read one, or the write one kept while the client goes on
    /// writing (see `Backing::writable`). (Opened as the caller each time, a READ or WRITE
    /// costs a path walk through procfs, an open and a close.)
    fn open_kept(
        &self,
        c: &Caller,
        node: &Node<'_>,
        st: &libc::stat,
        write: bool,
    ) -> Result<Arc<OwnedFd>, Stat> {
        let (mode, flags) = if write {
            (libc::W_OK, libc::O_WRONLY)
        } else {
            (libc::R_OK, libc::O_RDONLY)
        };
        let id = self.opts(node.export).squash.identity(&c.cred);
        let may = {
            let _as = self.become_caller(c, node.export)?;
            may_access(node.raw(), mode)
        };
        match may {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EACCES) && id.uid == st.st_uid => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                return self.open_for_io(c, node, st, flags).map(Arc::new)
            }
            Err(e) => return Err(ioerr(e)),
        }
        let kept = if write {
            self.backing.writable(node)
        } else {
            self.backing.readable(node)
        };
        kept.map_err(ioerr)
    }

    /// READ. Over TCP, a READ of at least [`SEND_FROM_FILE`] bytes, all in the page cache,
    /// of a file no mandatory lock can cover, leaves its data to the transport, which sends
    /// it from the page cache (`sendfile`, or while several clients read, a pool thread's
    /// copy: see `server::file_reply`): no copy into the reply.
    /// The count and end-of-file flag are those of the file's size when the READ ran; a
    /// file truncated before its bytes are sent ends the connection (the client sends the
    /// READ again). A mandatory file's data is read while its gate pass is held, so it is
    /// copied as below.
    ///
    /// Otherwise the data is read straight into the reply, behind room for its fixed part
    /// (status, attributes, count, end of file), which is filled in afterwards: a megabyte
    /// is then copied once on its way from the page cache to the socket's buffer, not
    /// zeroed, read, and copied again into the reply.
    ///
    /// With [`Wait::No`] the READ must be at most [`INLINE_READ`] bytes and its data all
    /// in the page cache: false (and nothing in `e`) when it is not, and the READ is to be
    /// run again where it may wait.
    pub(super) fn read(
        &self,
        c: &Caller,
        fh: &[u8],
        offset: u64,
        count: u32,
        wait: Wait,
        e: &mut Encoder,
    ) -> bool {
        if wait == Wait::No && count > INLINE_READ {
            return false;
        }
        let count = count.min(self.max_io(c));
        let start = e.len();
        let Some(node) = self.node_or_fail(c, fh, e, Empty::PostAttr) else {
            return true;
        };
        // `None`: the reply is encoded, its data left to the transport.
        let r = (|| -> Result<Option<(usize, bool)>, ReadFail> {
            let st = node.st;
            regular(&st)?;
            let pass = match Range::from_len(offset, u64::from(count.max(1))) {
                Ok(range) => self.io_gate(c, node.export, &st, Access::Read, range)?,
                Err(_) => None,
            };
            let f = self.open_kept(c, &node, &st, false)?;
            // Sent from the page cache: only when no gate pass must cover the reading (the
            // bytes are read as the reply is sent), and the door may not wait for the disk.
            if wait == Wait::No
                && pass.is_none()
                && c.transport == Transport::Tcp
                && count as usize >= SEND_FROM_FILE
            {
                let fst = fstat(f.as_raw_fd()).map_err(ioerr)?;
                let size = fst.st_size.max(0) as u64;
                let len = u64::from(count).min(size.saturating_sub(offset)) as usize;
                if len >= SEND_FROM_FILE && all_cached(f.as_raw_fd(), offset, len) {
                    enc_stat(e, Stat::Ok);
                    put_post_attr(e, Some(&Fattr::from_stat(&fst)));
                    e.put_u32(len as u32);
                    e.put_bool(offset + len as u64 >= size);
                    // The opaque's length; its bytes and padding follow from the file.
                    e.put_u32(len as u32);
                    self.sent_from_file
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    *c.tail.borrow_mut() = Some(FileTail { fd: f, offset, len });
                    return Ok(None);
                }
            }
            e.put_raw(&[0u8; READ_HEAD]);
            // SAFETY: `pread_into` returns how many bytes of the slice the kernel wrote.
            let done = unsafe {
                e.put_opaque_in_place(count as usize, |buf| {
                    pread_into(f.as_raw_fd(), buf, offset, wait)
                })
            };
            let done = match done {
                Ok(n) => n,
                // EAGAIN: not cached; EOPNOTSUPP: a file system without RWF_NOWAIT.
                Err(err) if wait == Wait::No => {
                    tracing::trace!(error = %err, "READ not served from memory");
                    return Err(ReadFail::WouldWait);
                }
                Err(err) => return Err(ioerr(err).into()),
            };
            let size = fstat(f.as_raw_fd()).map_err(ioerr)?.st_size.max(0) as u64;
            let eof = offset.saturating_add(done as u64) >= size;
            // A short read before the end: the rest was not cached.
            if wait == Wait::No && done < count as usize && !eof {
                return Err(ReadFail::WouldWait);
            }
            Ok(Some((done, eof)))
        })();
        match r {
            Ok(None) => {}
            Ok(Some((done, eof))) => {
                let mut head = Encoder::with_capacity(READ_HEAD);
                enc_stat(&mut head, Stat::Ok);
                put_post_attr(&mut head, attr_of(node.raw()).as_ref());
                head.put_u32(done as u32);
                head.put_bool(eof);
                // Shorter only when the attributes could not be read.
                e.replace(start, READ_HEAD, head.as_slice());
            }
            Err(ReadFail::Stat(s)) => {
                e.truncate(start);
                reply_with_attr(e, node.raw(), Err::<(), _>(s), |_, ()| {});
            }
            Err(ReadFail::WouldWait) => {
                e.truncate(start);
                return false;
            }
        }
        true
    }

    pub(super) fn write(
        &self,
        c: &Caller,
        fh: &[u8],
        offset: u64,
        data: &[u8],
        how: u32,
        e: &mut Encoder,
    ) {
        let Some(node) = self.node_or_fail(c, fh, e, Empty::Wcc) else {
            return;
        };
        let pre = Fattr::from_stat(&node.st).wcc();
        let r = (|| {
            let st = node.st;
            self.writable(node.export)?;
            regular(&st)?;
            if offset
                .checked_add(data.len() as u64)
                .is_none_or(|end| end > i64::MAX as u64)
            {
                return Err(Stat::Fbig);
            }
            let _pass = match Range::from_len(offset, data.len().max(1) as u64) {
                Ok(range) => self.io_gate(c, node.export, &st, Access::Write, range)?,
                Err(_) => None,
            };
            let f = if how == stable::UNSTABLE {
                self.open_kept(c, &node, &st, true)?
            } else {
                Arc::new(self.open_for_io(c, &node, &st, libc::O_WRONLY)?)
            };
            let mut done = 0usize;
            while done < data.len() {
                // SAFETY: the data tail is valid for reading its length.
                let n = unsafe {
                    libc::pwrite(
                        f.as_raw_fd(),
                        data[done..].as_ptr().cast(),
                        data.len() - done,
                        (offset + done as u64) as libc::off_t,
                    )
                };
                if n < 0 {
                    let err = io::Error::last_os_error();
                    if err.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    if done > 0 {
                        break;
                    }
                    return Err(ioerr(err));
                }
                done += n as usize;
            }
            // SAFETY: plain system calls on a descriptor we own.
            let synced = unsafe {
                match how {
                    stable::UNSTABLE => {
                        start_writeback(f, offset, done);
                        0
                    }
                    stable::DATA_SYNC => libc::fdatasync(f.as_raw_fd()),
                    _ => libc::fsync(f.as_raw_fd()),
                }
            };
            errno_of(synced)?;
            Ok(done)
        })();
        match r {
            Ok(n) => {
                self.changed(c, &node.st);
                enc_stat(e, Stat::Ok);
                put_wcc(e, Some(&pre), attr_of(node.raw()).as_ref());
                e.put_u32(n as u32);
                e.put_u32(how);
                e.put_fixed_opaque(&self.write_verf);
            }
            Err(s) => {
                enc_stat(e, s);
                put_wcc(e, Some(&pre), attr_of(node.raw()).as_ref());
            }
        }
    }

    /// COMMIT syncs the whole file: the call's offset and count only say which part
    /// must be synced at least.
    pub(super) fn commit(&self, c: &Caller, fh: &[u8], e: &mut Encoder) {
        let Some(node) = self.node_or_fail(c, fh, e, Empty::Wcc) else {
            return;
        };
        let pre = Fattr::from_stat(&node.st).wcc();
        let r = (|| {
            let st = node.st;
            regular(&st)?;
            // Syncing needs no permission of the caller: the daemon reopens the file.
            let f = reopen(node.raw(), libc::O_RDONLY)?;
            // SAFETY: a descriptor we own.
            errno_of(unsafe { libc::fsync(f.as_raw_fd()) })?;
            // The client is done with this burst of writes: the file need not stay open
            // for writing (see `Backing::writable`).
            self.backing.done_writing(&node);
            Ok(())
        })();
        enc_stat(e, r.err().unwrap_or(Stat::Ok));
        put_wcc(e, Some(&pre), attr_of(node.raw()).as_ref());
        if r.is_ok() {
            e.put_fixed_opaque(&self.write_verf);
        }
    }
}
