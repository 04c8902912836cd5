//! A file's contents: READ, WRITE (UNSTABLE, DATA_SYNC, FILE_SYNC) and COMMIT.
//!
//! They are together because they are the I/O that passes the table's gate (mandatory
//! locks and share reservations) and that opens the file itself, as the caller, through
//! its `O_PATH` descriptor; the write verifier they answer is the door's.

use super::*;

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

    pub(super) fn read(&self, c: &Caller, fh: &[u8], offset: u64, count: u32, e: &mut Encoder) {
        let count = count.min(self.max_io(c));
        let Some(node) = self.node_or_fail(c, fh, e, Empty::PostAttr) else {
            return;
        };
        let r = (|| {
            let st = fstat(node.raw()).map_err(ioerr)?;
            regular(&st)?;
            let _pass = match Range::from_len(offset, u64::from(count.max(1))) {
                Ok(range) => self.io_gate(c, node.export, &st, Access::Read, range)?,
                Err(_) => None,
            };
            let f = self.open_for_io(c, &node, &st, libc::O_RDONLY)?;
            let mut buf = vec![0u8; count as usize];
            let mut done = 0usize;
            while done < buf.len() {
                // SAFETY: the buffer tail is valid for writing its length.
                let n = unsafe {
                    libc::pread(
                        f.as_raw_fd(),
                        buf[done..].as_mut_ptr().cast(),
                        buf.len() - done,
                        (offset + done as u64) as libc::off_t,
                    )
                };
                if n < 0 {
                    let err = io::Error::last_os_error();
                    if err.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(ioerr(err));
                }
                if n == 0 {
                    break;
                }
                done += n as usize;
            }
            buf.truncate(done);
            let size = fstat(f.as_raw_fd()).map_err(ioerr)?.st_size.max(0) as u64;
            Ok((buf, offset.saturating_add(done as u64) >= size))
        })();
        reply_with_attr(e, node.raw(), r, |e, (data, eof)| {
            e.put_u32(data.len() as u32);
            e.put_bool(eof);
            e.put_opaque(&data);
        });
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
        let pre = fstat(node.raw()).ok();
        let r = (|| {
            let st = pre.ok_or(Stat::Io)?;
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
            let f = self.open_for_io(c, &node, &st, libc::O_WRONLY)?;
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
                    stable::UNSTABLE => 0,
                    stable::DATA_SYNC => libc::fdatasync(f.as_raw_fd()),
                    _ => libc::fsync(f.as_raw_fd()),
                }
            };
            errno_of(synced)?;
            Ok(done)
        })();
        match r {
            Ok(n) => {
                self.changed(node.raw());
                enc_stat(e, Stat::Ok);
                put_wcc(
                    e,
                    pre.map(|p| Fattr::from_stat(&p).wcc()).as_ref(),
                    attr_of(node.raw()).as_ref(),
                );
                e.put_u32(n as u32);
                e.put_u32(how);
                e.put_fixed_opaque(&self.write_verf);
            }
            Err(s) => {
                enc_stat(e, s);
                put_wcc(
                    e,
                    pre.map(|p| Fattr::from_stat(&p).wcc()).as_ref(),
                    attr_of(node.raw()).as_ref(),
                );
            }
        }
    }

    /// COMMIT syncs the whole file: the call's offset and count only say which part
    /// must be synced at least.
    pub(super) fn commit(&self, c: &Caller, fh: &[u8], e: &mut Encoder) {
        let Some(node) = self.node_or_fail(c, fh, e, Empty::Wcc) else {
            return;
        };
        let pre = fstat(node.raw()).ok();
        let r = (|| {
            let st = pre.ok_or(Stat::Io)?;
            regular(&st)?;
            // Syncing needs no permission of the caller: the daemon reopens the file.
            let f = reopen(node.raw(), libc::O_RDONLY)?;
            // SAFETY: a descriptor we own.
            errno_of(unsafe { libc::fsync(f.as_raw_fd()) })
        })();
        let pre_wcc = pre.map(|p| Fattr::from_stat(&p).wcc());
        enc_stat(e, r.err().unwrap_or(Stat::Ok));
        put_wcc(e, pre_wcc.as_ref(), attr_of(node.raw()).as_ref());
        if r.is_ok() {
            e.put_fixed_opaque(&self.write_verf);
        }
    }
}
