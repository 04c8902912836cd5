//! Data operations on open regular files: read, write, fallocate,
//! copy_file_range, lseek and fsync.
//!
//! Only direct-I/O files reach the daemon for reads and writes (the kernel does
//! passthrough I/O itself). On a mandatory file every operation that touches
//! bytes goes through the lock table's gate first: it runs once no other
//! owner's lock forbids it, or fails.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fuser::{CopyFileRangeFlags, Errno, FileHandle, LockOwner, OpenFlags, Request, WriteFlags};
use lock_table::Access;

use super::reply::{Step, R};
use super::{errno, LockFs, Shared};
use crate::handles::OpenFile;
use crate::locking::{self, Gate};
use crate::sys;

/// Largest read the daemon serves in one request; the kernel never asks for more
/// than `max_read`/`max_pages`, this only bounds a malformed request.
const MAX_READ: usize = 32 << 20;

/// Largest copy one `copy_file_range` request performs: the reply carries a 32-bit
/// count, and a short copy makes the caller come back for the rest.
const MAX_COPY: u64 = 1 << 30;

impl LockFs {
    pub(super) fn read(
        &self,
        req: &Request,
        fh: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        lock_owner: Option<LockOwner>,
    ) -> R<Step<ReadOut>> {
        let file = self.file(fh)?;
        if let Some(lk) = self.mandatory_lock(&file) {
            let lo = lock_owner.map(|l| l.0);
            if let Some(l) = lo {
                lk.owners.seen_posix(req.pid(), l);
            }
            if let Some(range) = locking::io_range(offset, u64::from(size)) {
                let checks = [(Access::Read, range)];
                // The pass keeps the read in flight until it is done.
                if let Some(pass) =
                    lk.admit(file.file_id, Some((&file, fh.0)), lo, req.pid(), &checks)
                {
                    return Ok(Step::Done(ReadOut {
                        shared: self.shared.clone(),
                        file,
                        offset,
                        size,
                        _pass: Some(pass),
                    }));
                }
                let gate = Gate::through(
                    lk,
                    req,
                    &file,
                    fh.0,
                    lo,
                    checks.to_vec(),
                    flags.0 & libc::O_NONBLOCK != 0,
                );
                // The gate holds its own pass while the reply is sent.
                let out = ReadOut {
                    shared: self.shared.clone(),
                    file,
                    offset,
                    size,
                    _pass: None,
                };
                return Ok(Step::Gated(gate, Box::new(move || Ok(out))));
            }
        }
        Ok(Step::Done(ReadOut {
            shared: self.shared.clone(),
            file,
            offset,
            size,
            _pass: None,
        }))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn write(
        &self,
        req: &Request,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        lock_owner: Option<LockOwner>,
    ) -> R<Step<u32>> {
        let file = self.file(fh)?;
        if let Some(lk) = self.mandatory_lock(&file) {
            let lo = lock_owner.map(|l| l.0);
            if let Some(l) = lo {
                lk.owners.seen_posix(req.pid(), l);
            }
            if let Some(range) = locking::io_range(offset, data.len() as u64) {
                let checks = [(Access::Write, range)];
                // The pass keeps the write in flight until it is done.
                if let Some(pass) =
                    lk.admit(file.file_id, Some((&file, fh.0)), lo, req.pid(), &checks)
                {
                    let n = write_and_kill(&self.shared, &file, offset, data, write_flags);
                    drop(pass);
                    return n.map(Step::Done);
                }
                // Copy the data only for a write that has to wait.
                let gate = Gate::through(
                    lk,
                    req,
                    &file,
                    fh.0,
                    lo,
                    checks.to_vec(),
                    flags.0 & libc::O_NONBLOCK != 0,
                );
                let shared = self.shared.clone();
                let data = data.to_vec();
                let work =
                    Box::new(move || write_and_kill(&shared, &file, offset, &data, write_flags));
                return Ok(Step::Gated(gate, work));
            }
        }
        write_and_kill(&self.shared, &file, offset, data, write_flags).map(Step::Done)
    }

    pub(super) fn fallocate(
        &self,
        req: &Request,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> R<Step<()>> {
        let file = self.file(fh)?;
        if let (Some(lk), Some(range)) = (
            self.mandatory_lock(&file),
            locking::io_range(offset, length),
        ) {
            let gate = Gate::through(
                lk,
                req,
                &file,
                fh.0,
                None,
                vec![(Access::Write, range)],
                file.flags & libc::O_NONBLOCK != 0,
            );
            let work = Box::new(move || {
                sys::fallocate(file.fd.as_fd(), mode, offset, length).map_err(errno)
            });
            return Ok(Step::Gated(gate, work));
        }
        sys::fallocate(file.fd.as_fd(), mode, offset, length)
            .map_err(errno)
            .map(Step::Done)
    }

    pub(super) fn lseek(&self, fh: FileHandle, offset: i64, whence: i32) -> R<i64> {
        let file = self.file(fh)?;
        sys::lseek(file.fd.as_fd(), offset, whence).map_err(errno)
    }

    pub(super) fn fsync(&self, fh: FileHandle, datasync: bool) -> R<()> {
        let file = self.file(fh)?;
        sys::fsync(file.fd.as_fd(), datasync).map_err(errno)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn copy_file_range(
        &self,
        req: &Request,
        fh_in: FileHandle,
        offset_in: u64,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
    ) -> R<Step<u32>> {
        let fin = self.file(fh_in)?;
        let fout = self.file(fh_out)?;
        let flags = u32::try_from(flags.bits()).map_err(|_| Errno::EINVAL)?;
        let len = len.min(MAX_COPY);
        let run = move |fin: &OpenFile, fout: &OpenFile| {
            sys::copy_file_range(
                fin.fd.as_fd(),
                offset_in,
                fout.fd.as_fd(),
                offset_out,
                len,
                flags,
            )
            .map_err(errno)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
        };
        // The source is admitted without waiting (EAGAIN); the destination like a
        // write, waiting unless it was opened O_NONBLOCK. A source pass is never
        // held while the destination waits: it could hold up, without end, a lock
        // on the source that the destination's holder waits for. So a copy whose
        // destination waits gives the source's pass back and is admitted on the
        // source again once the destination is, for the copy only.
        let (source, source_pass) =
            match (self.mandatory_lock(&fin), locking::io_range(offset_in, len)) {
                (Some(lk), Some(range)) => {
                    let checks = [(Access::Read, range)];
                    let pass = lk
                        .admit(fin.file_id, Some((&fin, fh_in.0)), None, req.pid(), &checks)
                        .ok_or(Errno::from_i32(libc::EAGAIN))?;
                    (
                        Some((lk.clone(), fin.file_id, fh_in.0, req.pid(), checks)),
                        Some(pass),
                    )
                }
                _ => (None, None),
            };
        let dest = match (
            self.mandatory_lock(&fout),
            locking::io_range(offset_out, len),
        ) {
            (Some(lk), Some(range)) => Some((lk, range)),
            _ => None,
        };
        let Some((lk, range)) = dest else {
            let n = run(&fin, &fout);
            drop(source_pass);
            return n.map(Step::Done);
        };
        drop(source_pass);
        let run = move |fin: &OpenFile, fout: &OpenFile| {
            let pass = match &source {
                Some((lk, id, fh, pid, checks)) => {
                    let pass = lk.admit(*id, Some((fin, *fh)), None, *pid, checks);
                    Some(pass.ok_or(Errno::from_i32(libc::EAGAIN))?)
                }
                None => None,
            };
            let n = run(fin, fout);
            drop(pass);
            n
        };
        let gate = Gate::through(
            lk,
            req,
            &fout,
            fh_out.0,
            None,
            vec![(Access::Write, range)],
            fout.flags & libc::O_NONBLOCK != 0,
        );
        Ok(Step::Gated(gate, Box::new(move || run(&fin, &fout))))
    }
}

/// An admitted READ, performed by the reply that answers it (see
/// [`crate::read_reply`]): spliced from the backing file when it can be,
/// copied through the daemon otherwise.
pub(crate) struct ReadOut {
    pub(crate) shared: Arc<Shared>,
    pub(crate) file: Arc<OpenFile>,
    pub(crate) offset: u64,
    pub(crate) size: u32,
    /// Keeps an admitted mandatory-file read in flight until its reply is sent.
    pub(crate) _pass: Option<lock_table::IoPass>,
}

/// Page size the read buffer is aligned to.
const PAGE: usize = 4096;

/// A read buffer larger than this is given back after its read rather than kept.
const KEEP_READ_BUFFER: usize = 4 << 20;

thread_local! {
    /// Each request thread's read buffer, reused from READ to READ. A fresh
    /// buffer per read cost a megabyte of page faults each time (the allocator
    /// hands large buffers out as new mappings), and a buffer that does not
    /// start on a page boundary made the kernel's copies into and out of it
    /// several times slower on these machines (see BENCHMARKS.md).
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Reads up to `size` bytes at `offset` of an open file for the kernel into
/// this thread's page-aligned read buffer and hands `use_data` what was read.
pub(crate) fn with_read_at<T>(
    shared: &Shared,
    file: &OpenFile,
    offset: u64,
    size: u32,
    use_data: impl FnOnce(&[u8]) -> T,
) -> R<T> {
    shared.daemon_io.fetch_add(1, Ordering::Relaxed);
    let size = (size as usize).min(MAX_READ);
    READ_BUFFER.with_borrow_mut(|buf| {
        if buf.len() < size + PAGE {
            buf.resize(size + PAGE, 0);
        }
        let start = buf.as_ptr().align_offset(PAGE).min(PAGE);
        let done = read_fully(file, offset, &mut buf[start..start + size]);
        let out = done.map(|n| use_data(&buf[start..start + n]));
        if buf.len() > KEEP_READ_BUFFER {
            *buf = Vec::new();
        }
        out
    })
}

/// `pread`s into all of `buf` unless the file ends or fails first; an error
/// after some data is a short read.
fn read_fully(file: &OpenFile, offset: u64, buf: &mut [u8]) -> R<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = sys::pread(file.fd.as_fd(), &mut buf[done..], offset + done as u64);
        match n {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) if done > 0 => {
                tracing::debug!(error = %e, "short read");
                break;
            }
            Err(e) => return Err(errno(e)),
        }
    }
    Ok(done)
}

/// Writes `data` at `offset` of an open file for the kernel.
fn write_at(shared: &Shared, file: &OpenFile, offset: u64, data: &[u8]) -> R<u32> {
    shared.daemon_io.fetch_add(1, Ordering::Relaxed);
    let mut done = 0;
    while done < data.len() {
        match sys::pwrite(file.fd.as_fd(), &data[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(_) if done > 0 => break,
            Err(e) => return Err(errno(e)),
        }
    }
    u32::try_from(done).map_err(|_| Errno::EIO)
}

/// Writes for the kernel and drops set-ID bits when it asks for that.
fn write_and_kill(
    shared: &Shared,
    file: &Arc<OpenFile>,
    offset: u64,
    data: &[u8],
    flags: WriteFlags,
) -> R<u32> {
    let n = write_at(shared, file, offset, data)?;
    if flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
        kill_set_id(file.fd.as_fd())?;
    }
    Ok(n)
}

/// Whether a file with mode `mode` loses bits when an unprivileged caller writes
/// to it: set-user-ID, or set-group-ID with group execute.
pub(super) fn is_set_id(mode: u32) -> bool {
    mode & libc::S_ISUID != 0
        || mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP
}

/// Drops set-user-ID (and group-executable set-group-ID) after an unprivileged
/// caller wrote to or truncated the file, as a local file system would.
///
/// The kernel leaves this to the daemon for direct-I/O writes and, once
/// `FUSE_HANDLE_KILLPRIV_V2` is negotiated, for truncates; the daemon works as
/// root, for which the backing file system keeps the bits. Set-group-ID without
/// group execute is the mandatory-locking mark and stays, as it did on Linux
/// before 5.15.
pub(super) fn kill_set_id(fd: BorrowedFd<'_>) -> R<()> {
    let st = sys::fstat(fd).map_err(errno)?;
    if !is_set_id(st.st_mode) {
        return Ok(());
    }
    let mut mode = st.st_mode & 0o7777 & !libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 {
        mode &= !libc::S_ISGID;
    }
    sys::chmod_path_fd(fd, mode).map_err(errno)
}
