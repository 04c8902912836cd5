//! The 22 NFS version 3 procedures, each a function from its decoded arguments to its
//! encoded results, run on a blocking thread as the caller ([`super::identity`]).
//!
//! Every procedure resolves its handles first, as the daemon (resolution needs
//! `open_by_handle_at`, a privilege the caller does not have), then takes the caller's
//! identity for the operation itself, so the kernel checks permissions. Files are named
//! only relative to descriptors of the export (`*at` calls on single components, never
//! following a symbolic link), and `..` of the export root is the root itself.
//!
//! Weak cache consistency: every procedure whose results carry `wcc_data` reports the
//! attributes of the directory or file before and after the change, taken with `fstat` on
//! the descriptor the change went through.

use super::args::{decode, Args, CreateHow, DirOp, MknodWhat};
use super::backing::{
    component, fstat, is_root, open_at, open_path_at, proc_path, reopen, stat_at, Backing, Node,
};
use super::gate::admit_io;
use super::identity::{assume, Assumed};
use super::proto::*;
use super::{ExportOptions, MandatoryMode};
use crate::exports::OpenExport;
use crate::lockd::Lockd;
use crate::rpc::Credential;
use crate::server::{CallContext, ProcError, Transport};
use crate::xdr::{Decoder, Encoder};
use lock_table::{Access, FileId, IoPass, Range};
use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// Largest READ or WRITE over UDP: a reply must fit one datagram.
const UDP_MAX_IO: u32 = 32 * 1024;

/// What the NFS procedures share.
pub struct Door {
    pub lockd: Arc<Lockd>,
    pub exports: HashMap<u32, ExportOptions>,
    pub backing: Arc<Backing>,
    /// Changes on every start: a client resends unstable writes a restart may have lost.
    pub write_verf: [u8; 8],
    pub max_io: u32,
    pub changes: Option<Arc<dyn super::ChangeSink>>,
}

impl std::fmt::Debug for Door {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Door")
            .field("max_io", &self.max_io)
            .finish_non_exhaustive()
    }
}

/// The caller of one procedure.
pub struct Caller {
    pub cred: Credential,
    pub peer: IpAddr,
    pub transport: Transport,
    /// How the client host is named in the lock table.
    pub machine: String,
}

impl Caller {
    pub fn from_ctx(ctx: &CallContext) -> Self {
        let machine = match ctx.cred.machinename() {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => ctx.peer.ip().to_string(),
        };
        Self {
            cred: ctx.cred.clone(),
            peer: ctx.peer.ip(),
            transport: ctx.transport,
            machine,
        }
    }
}

type Res = Result<Vec<u8>, ProcError>;

fn ioerr(e: io::Error) -> Stat {
    Stat::from_io(&e)
}

fn attr_of(fd: RawFd) -> Option<Fattr> {
    fstat(fd).ok().map(|st| Fattr::from_stat(&st))
}

fn enc_stat(e: &mut Encoder, s: Stat) {
    e.put_u32(s as u32);
}

/// The empty attribute block a failed reply carries after its status.
#[derive(Clone, Copy)]
enum Empty {
    /// `post_op_attr` with no attributes.
    PostAttr,
    /// `wcc_data` with neither pre nor post attributes.
    Wcc,
}

/// A reply that gives the status, then the attributes of the object `fd` as
/// they are after the call, then, on success only, what `rest` writes.
fn reply_with_attr<T>(
    e: &mut Encoder,
    fd: RawFd,
    r: Result<T, Stat>,
    rest: impl FnOnce(&mut Encoder, T),
) {
    let (stat, ok) = match r {
        Ok(v) => (Stat::Ok, Some(v)),
        Err(s) => (s, None),
    };
    enc_stat(e, stat);
    put_post_attr(e, attr_of(fd).as_ref());
    if let Some(v) = ok {
        rest(e, v);
    }
}

fn errno_of(r: libc::c_int) -> Result<(), Stat> {
    if r != 0 {
        return Err(ioerr(io::Error::last_os_error()));
    }
    Ok(())
}

impl Door {
    fn opts(&self, export: &OpenExport) -> ExportOptions {
        self.exports
            .get(&export.export.id)
            .cloned()
            .unwrap_or_default()
    }

    fn node(&self, c: &Caller, fh: &[u8]) -> Result<Node<'_>, Stat> {
        self.backing.resolve(&self.lockd, c.peer, fh)
    }

    /// The node `fh` names; when there is none, the failed reply (its
    /// status, then the empty attribute block `empty`) is written instead.
    fn node_or_fail(
        &self,
        c: &Caller,
        fh: &[u8],
        e: &mut Encoder,
        empty: Empty,
    ) -> Option<Node<'_>> {
        match self.node(c, fh) {
            Ok(n) => Some(n),
            Err(s) => {
                enc_stat(e, s);
                match empty {
                    Empty::PostAttr => put_post_attr(e, None),
                    Empty::Wcc => put_wcc(e, None, None),
                }
                None
            }
        }
    }

    /// Another door's caches of this file are stale now.
    fn changed(&self, fd: RawFd) {
        if let (Some(c), Ok(st)) = (&self.changes, fstat(fd)) {
            c.file_changed(st.st_dev, st.st_ino);
        }
    }

    /// Another door's caches of this name (and its directory) are stale now.
    fn entry_changed(&self, dir: RawFd, name: &[u8]) {
        if let (Some(c), Ok(st)) = (&self.changes, fstat(dir)) {
            c.entry_changed(st.st_dev, st.st_ino, name);
        }
    }

    fn become_caller(&self, c: &Caller, export: &OpenExport) -> Result<Assumed, Stat> {
        let id = self.opts(export).squash.identity(&c.cred);
        assume(&id).map_err(|_| Stat::Perm)
    }

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

    fn writable(&self, export: &OpenExport) -> Result<(), Stat> {
        if export.export.read_only {
            return Err(Stat::Rofs);
        }
        Ok(())
    }

    fn is_mandatory(&self, export: &OpenExport, st: &libc::stat) -> bool {
        match self.opts(export).mandatory {
            MandatoryMode::Off => false,
            MandatoryMode::All => true,
            MandatoryMode::File => st.st_mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID,
        }
    }

    /// Runs one procedure: the encoded results, or an RPC-level error (undecodable
    /// arguments are refused before the procedure has any effect).
    pub fn run(&self, c: &Caller, proc_: u32, args: &[u8]) -> Res {
        let mut d = Decoder::new(args);
        let args = decode(proc_, &mut d, self.max_io.max(UDP_MAX_IO) as usize)?;
        let mut e = Encoder::new();
        let e_ = &mut e;
        match args {
            Args::Null => {}
            Args::GetAttr(fh) => self.getattr(c, &fh, e_),
            Args::SetAttr { fh, sattr, guard } => self.setattr(c, &fh, &sattr, guard, e_),
            Args::Lookup(at) => self.lookup(c, &at, e_),
            Args::Access { fh, want } => self.access(c, &fh, want, e_),
            Args::ReadLink(fh) => self.readlink(c, &fh, e_),
            Args::Read { fh, offset, count } => self.read(c, &fh, offset, count, e_),
            Args::Write {
                fh,
                offset,
                data,
                stable,
            } => self.write(c, &fh, offset, data, stable, e_),
            Args::Create { at, how } => self.create(c, &at, how, e_),
            Args::Mkdir { at, sattr } => self.mkdir(c, &at, sattr, e_),
            Args::Symlink { at, sattr, target } => self.symlink(c, &at, sattr, target, e_),
            Args::Mknod { at, what } => self.mknod(c, &at, what, e_),
            Args::Remove(at) => self.remove(c, &at, e_, false),
            Args::Rmdir(at) => self.remove(c, &at, e_, true),
            Args::Rename { from, to } => self.rename(c, &from, &to, e_),
            Args::Link { fh, at } => self.link(c, &fh, &at, e_),
            Args::ReadDir {
                fh,
                cookie,
                verf,
                dircount,
                maxcount,
                plus,
            } => self.readdir(c, &fh, cookie, verf, (dircount, maxcount), plus, e_),
            Args::FsStat(fh) => self.fsstat(c, &fh, e_),
            Args::FsInfo(fh) => self.fsinfo(c, &fh, e_),
            Args::PathConf(fh) => self.pathconf(c, &fh, e_),
            Args::Commit { fh, .. } => self.commit(c, &fh, e_),
        }
        Ok(e.into_inner())
    }

    // Each procedure gets its decoded arguments ([`super::args`]) and answers a status.

    fn getattr(&self, c: &Caller, fh: &[u8], e: &mut Encoder) {
        match self.node(c, fh).and_then(|n| fstat(n.raw()).map_err(ioerr)) {
            Ok(st) => {
                enc_stat(e, Stat::Ok);
                Fattr::from_stat(&st).encode(e);
            }
            Err(s) => enc_stat(e, s),
        }
    }

    fn setattr(&self, c: &Caller, fh: &[u8], sattr: &Sattr, guard: Option<Time>, e: &mut Encoder) {
        let Some(node) = self.node_or_fail(c, fh, e, Empty::Wcc) else {
            return;
        };
        let pre = fstat(node.raw()).ok();
        let r = (|| {
            let st = pre.ok_or(Stat::Io)?;
            if let Some(g) = guard {
                if Fattr::from_stat(&st).ctime != g {
                    return Err(Stat::NotSync);
                }
            }
            self.writable(node.export)?;
            let _pass = self.resize_gate(c, node.export, &st, sattr.size)?;
            let _as = self.become_caller(c, node.export)?;
            apply_sattr(node.raw(), &st, sattr)
        })();
        if r.is_ok() {
            self.changed(node.raw());
        }
        enc_stat(e, r.err().unwrap_or(Stat::Ok));
        put_wcc(
            e,
            pre.map(|p| Fattr::from_stat(&p).wcc()).as_ref(),
            attr_of(node.raw()).as_ref(),
        );
    }

    fn io_gate(
        &self,
        c: &Caller,
        export: &OpenExport,
        st: &libc::stat,
        access: Access,
        range: Range,
    ) -> Result<Option<IoPass>, Stat> {
        let mandatory = self.is_mandatory(export, st);
        admit_io(
            &self.lockd,
            FileId::new(st.st_dev, st.st_ino),
            Some(&c.machine),
            access,
            range,
            mandatory,
        )
    }

    /// The gate of a change of a file's size to `size` (SETATTR, and CREATE of a file that
    /// exists, in UNCHECKED mode): the bytes from the new end on are written, so a lock or
    /// reservation of another owner there refuses it as it would refuse a WRITE.
    fn resize_gate(
        &self,
        c: &Caller,
        export: &OpenExport,
        st: &libc::stat,
        size: Option<u64>,
    ) -> Result<Option<IoPass>, Stat> {
        match size {
            Some(size) if size != st.st_size as u64 => {
                let from = size.min(st.st_size.max(0) as u64);
                self.io_gate(c, export, st, Access::Write, Range::to_eof(from))
            }
            _ => Ok(None),
        }
    }

    /// A name in a directory, as the caller: an `O_PATH` descriptor of it and its stat.
    fn lookup_in(
        &self,
        dir: &Node<'_>,
        dir_st: &libc::stat,
        name: &[u8],
    ) -> Result<(Arc<OwnedFd>, libc::stat), Stat> {
        if name == b"." || (name == b".." && is_root(dir.export, dir_st)) {
            return Ok((dir.fd.clone(), *dir_st));
        }
        let cname = component(name)?;
        let fd = open_path_at(dir.raw(), &cname).map_err(ioerr)?;
        let st = fstat(fd.as_raw_fd()).map_err(ioerr)?;
        Ok((Arc::new(fd), st))
    }

    fn lookup(&self, c: &Caller, at: &DirOp, e: &mut Encoder) {
        let Some(dir) = self.node_or_fail(c, &at.dir, e, Empty::PostAttr) else {
            return;
        };
        let r = (|| {
            let dst = fstat(dir.raw()).map_err(ioerr)?;
            if dst.st_mode & libc::S_IFMT != libc::S_IFDIR {
                return Err(Stat::NotDir);
            }
            let found = {
                let _as = self.become_caller(c, dir.export)?;
                // Search permission on the directory, as the caller.
                check_access(dir.raw(), libc::X_OK)?;
                self.lookup_in(&dir, &dst, &at.name)?
            };
            let fh = self
                .backing
                .handle_of(&self.lockd, dir.export, found.0.as_raw_fd())?;
            Ok((fh, found.1))
        })();
        match r {
            Ok((fh, st)) => {
                enc_stat(e, Stat::Ok);
                e.put_opaque(&fh);
                put_post_attr(e, Some(&Fattr::from_stat(&st)));
            }
            Err(s) => enc_stat(e, s),
        }
        put_post_attr(e, attr_of(dir.raw()).as_ref());
    }

    fn access(&self, c: &Caller, fh: &[u8], want: u32, e: &mut Encoder) {
        let Some(node) = self.node_or_fail(c, fh, e, Empty::PostAttr) else {
            return;
        };
        let r = (|| {
            let st = fstat(node.raw()).map_err(ioerr)?;
            let kind = st.st_mode & libc::S_IFMT;
            if kind == libc::S_IFLNK {
                return Ok(want & access::READ);
            }
            let _as = self.become_caller(c, node.export)?;
            let can = |m| check_access(node.raw(), m).is_ok();
            let mut got = 0;
            if want & access::READ != 0 && can(libc::R_OK) {
                got |= access::READ;
            }
            let w = can(libc::W_OK);
            let x = can(libc::X_OK);
            if kind == libc::S_IFDIR {
                if want & access::LOOKUP != 0 && x {
                    got |= access::LOOKUP;
                }
                if w && x {
                    got |= want & (access::MODIFY | access::EXTEND | access::DELETE);
                }
            } else {
                if w {
                    got |= want & (access::MODIFY | access::EXTEND);
                }
                if want & access::EXECUTE != 0 && x {
                    got |= access::EXECUTE;
                }
            }
            if node.export.export.read_only {
                got &= !(access::MODIFY | access::EXTEND | access::DELETE);
            }
            Ok(got)
        })();
        reply_with_attr(e, node.raw(), r, |e, got| {
            e.put_u32(got);
        });
    }

    fn readlink(&self, c: &Caller, fh: &[u8], e: &mut Encoder) {
        let Some(node) = self.node_or_fail(c, fh, e, Empty::PostAttr) else {
            return;
        };
        let r = (|| {
            let st = fstat(node.raw()).map_err(ioerr)?;
            if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
                return Err(Stat::Inval);
            }
            let mut buf = vec![0u8; libc::PATH_MAX as usize];
            // SAFETY: the empty path names the O_PATH descriptor of the link itself; the
            // buffer is valid for its length.
            let n = unsafe {
                libc::readlinkat(node.raw(), c"".as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            };
            if n < 0 {
                return Err(ioerr(io::Error::last_os_error()));
            }
            buf.truncate(n as usize);
            Ok(buf)
        })();
        reply_with_attr(e, node.raw(), r, |e, target| {
            e.put_opaque(&target);
        });
    }

    fn max_io(&self, c: &Caller) -> u32 {
        match c.transport {
            Transport::Udp => self.max_io.min(UDP_MAX_IO),
            Transport::Tcp => self.max_io,
        }
    }

    fn read(&self, c: &Caller, fh: &[u8], offset: u64, count: u32, e: &mut Encoder) {
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

    fn write(&self, c: &Caller, fh: &[u8], offset: u64, data: &[u8], how: u32, e: &mut Encoder) {
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

    /// The frame of CREATE, MKDIR, SYMLINK and MKNOD: resolve the directory, check it is
    /// writable, run `make` as the caller, answer the new object's handle and attributes
    /// and the directory's wcc data.
    fn make_in(
        &self,
        c: &Caller,
        fh: &[u8],
        e: &mut Encoder,
        make: impl FnOnce(RawFd, &CString, &OpenExport) -> Result<OwnedFd, Stat>,
        name: &[u8],
    ) {
        let Some(dir) = self.node_or_fail(c, fh, e, Empty::Wcc) else {
            return;
        };
        let pre = fstat(dir.raw()).ok();
        let r = (|| {
            let st = pre.ok_or(Stat::Io)?;
            if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                return Err(Stat::NotDir);
            }
            self.writable(dir.export)?;
            let cname = component(name)?;
            let made = {
                let _as = self.become_caller(c, dir.export)?;
                make(dir.raw(), &cname, dir.export)?
            };
            let fh = self
                .backing
                .handle_of(&self.lockd, dir.export, made.as_raw_fd())
                .ok();
            Ok((fh, attr_of(made.as_raw_fd())))
        })();
        let pre_wcc = pre.map(|p| Fattr::from_stat(&p).wcc());
        match r {
            Ok((fh, attr)) => {
                self.entry_changed(dir.raw(), name);
                enc_stat(e, Stat::Ok);
                put_post_fh(e, fh.as_deref());
                put_post_attr(e, attr.as_ref());
            }
            Err(s) => enc_stat(e, s),
        }
        put_wcc(e, pre_wcc.as_ref(), attr_of(dir.raw()).as_ref());
    }

    fn create(&self, c: &Caller, at: &DirOp, how: CreateHow, e: &mut Encoder) {
        self.make_in(
            c,
            &at.dir,
            e,
            |dir, name, export| {
                let base = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_CREAT;
                match how {
                    CreateHow::Unchecked(s) | CreateHow::Guarded(s) => {
                        let excl = if matches!(how, CreateHow::Guarded(_)) {
                            libc::O_EXCL
                        } else {
                            0
                        };
                        let f = open_at(dir, name, base | excl, s.mode.unwrap_or(0o644) & 0o7777)
                            .map_err(ioerr)?;
                        let st = fstat(f.as_raw_fd()).map_err(ioerr)?;
                        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                            return Err(Stat::Exist);
                        }
                        // Over an existing file, a size is a truncation like SETATTR's.
                        let _pass = self.resize_gate(c, export, &st, s.size)?;
                        apply_sattr(f.as_raw_fd(), &st, &s)?;
                        Ok(f)
                    }
                    CreateHow::Exclusive(verf) => {
                        // The verifier is kept in the new file's access and modification
                        // times (RFC 1813 3.3.8); the client sets the real ones afterwards.
                        let (a, m) = verf_times(&verf);
                        match open_at(dir, name, base | libc::O_EXCL, 0o600) {
                            Ok(f) => {
                                let ts = [timespec(a, 0), timespec(m, 0)];
                                // SAFETY: `ts` holds two valid timespecs.
                                errno_of(unsafe { libc::futimens(f.as_raw_fd(), ts.as_ptr()) })?;
                                Ok(f)
                            }
                            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                                let st = stat_at(dir, name).map_err(ioerr)?;
                                let replay = st.st_mode & libc::S_IFMT == libc::S_IFREG
                                    && st.st_atime == a
                                    && st.st_mtime == m
                                    && st.st_atime_nsec == 0
                                    && st.st_mtime_nsec == 0;
                                if !replay {
                                    return Err(Stat::Exist);
                                }
                                open_path_at(dir, name).map_err(ioerr)
                            }
                            Err(err) => Err(ioerr(err)),
                        }
                    }
                }
            },
            &at.name,
        );
    }

    fn mkdir(&self, c: &Caller, at: &DirOp, s: Sattr, e: &mut Encoder) {
        self.make_in(
            c,
            &at.dir,
            e,
            |dir, name, _| {
                // SAFETY: `name` is NUL-terminated.
                errno_of(unsafe {
                    libc::mkdirat(dir, name.as_ptr(), s.mode.unwrap_or(0o755) & 0o7777)
                })?;
                let f = open_path_at(dir, name).map_err(ioerr)?;
                let st = fstat(f.as_raw_fd()).map_err(ioerr)?;
                apply_sattr(f.as_raw_fd(), &st, &s)?;
                Ok(f)
            },
            &at.name,
        );
    }

    fn symlink(&self, c: &Caller, at: &DirOp, s: Sattr, target: Vec<u8>, e: &mut Encoder) {
        self.make_in(
            c,
            &at.dir,
            e,
            |dir, name, _| {
                let t = CString::new(target).map_err(|_| Stat::Inval)?;
                // SAFETY: both strings are NUL-terminated.
                errno_of(unsafe { libc::symlinkat(t.as_ptr(), dir, name.as_ptr()) })?;
                let f = open_path_at(dir, name).map_err(ioerr)?;
                if s.uid.is_some() || s.gid.is_some() {
                    let st = fstat(f.as_raw_fd()).map_err(ioerr)?;
                    apply_sattr(f.as_raw_fd(), &st, &Sattr { mode: None, ..s })?;
                }
                Ok(f)
            },
            &at.name,
        );
    }

    fn mknod(&self, c: &Caller, at: &DirOp, what: MknodWhat, e: &mut Encoder) {
        let (kind, s, dev) = match what {
            MknodWhat::Device {
                block,
                sattr,
                major,
                minor,
            } => {
                let k = if block { libc::S_IFBLK } else { libc::S_IFCHR };
                (Some(k), sattr, libc::makedev(major, minor))
            }
            MknodWhat::Socket(s) => (Some(libc::S_IFSOCK), s, 0),
            MknodWhat::Fifo(s) => (Some(libc::S_IFIFO), s, 0),
            MknodWhat::BadType(_) => (None, Sattr::default(), 0),
        };
        self.make_in(
            c,
            &at.dir,
            e,
            |dir, name, _| {
                let kind = kind.ok_or(Stat::BadType)?;
                let mode = kind | (s.mode.unwrap_or(0o644) & 0o7777);
                // SAFETY: `name` is NUL-terminated.
                errno_of(unsafe { libc::mknodat(dir, name.as_ptr(), mode, dev) })?;
                let f = open_path_at(dir, name).map_err(ioerr)?;
                let st = fstat(f.as_raw_fd()).map_err(ioerr)?;
                apply_sattr(f.as_raw_fd(), &st, &s)?;
                Ok(f)
            },
            &at.name,
        );
    }

    fn remove(&self, c: &Caller, at: &DirOp, e: &mut Encoder, dir_too: bool) {
        let name = &at.name;
        let Some(dir) = self.node_or_fail(c, &at.dir, e, Empty::Wcc) else {
            return;
        };
        let pre = fstat(dir.raw()).ok();
        let r = (|| {
            self.writable(dir.export)?;
            if name == b"." || name == b".." {
                return Err(if dir_too { Stat::Inval } else { Stat::Acces });
            }
            let cname = component(name)?;
            let _as = self.become_caller(c, dir.export)?;
            let flags = if dir_too { libc::AT_REMOVEDIR } else { 0 };
            // SAFETY: `cname` is NUL-terminated.
            errno_of(unsafe { libc::unlinkat(dir.raw(), cname.as_ptr(), flags) })
        })();
        if r.is_ok() {
            self.entry_changed(dir.raw(), name);
        }
        enc_stat(e, r.err().unwrap_or(Stat::Ok));
        put_wcc(
            e,
            pre.map(|p| Fattr::from_stat(&p).wcc()).as_ref(),
            attr_of(dir.raw()).as_ref(),
        );
    }

    fn rename(&self, c: &Caller, from_at: &DirOp, to_at: &DirOp, e: &mut Encoder) {
        let (from_name, to_name) = (&from_at.name, &to_at.name);
        let from = self.node(c, &from_at.dir);
        let to = self.node(c, &to_at.dir);
        let pre_from = from.as_ref().ok().and_then(|n| fstat(n.raw()).ok());
        let pre_to = to.as_ref().ok().and_then(|n| fstat(n.raw()).ok());
        let r = (|| {
            let from = from.as_ref().map_err(|s| *s)?;
            let to = to.as_ref().map_err(|s| *s)?;
            if from.export.export.id != to.export.export.id {
                return Err(Stat::Xdev);
            }
            self.writable(from.export)?;
            for n in [from_name, to_name] {
                if n.as_slice() == b"." || n.as_slice() == b".." {
                    return Err(Stat::Inval);
                }
            }
            let (a, b) = (component(from_name)?, component(to_name)?);
            let _as = self.become_caller(c, from.export)?;
            // SAFETY: both names are NUL-terminated.
            errno_of(unsafe { libc::renameat(from.raw(), a.as_ptr(), to.raw(), b.as_ptr()) })?;
            self.entry_changed(from.raw(), from_name);
            self.entry_changed(to.raw(), to_name);
            Ok(())
        })();
        enc_stat(e, r.err().unwrap_or(Stat::Ok));
        let post = |n: &Result<Node<'_>, Stat>| n.as_ref().ok().and_then(|n| attr_of(n.raw()));
        put_wcc(
            e,
            pre_from.map(|p| Fattr::from_stat(&p).wcc()).as_ref(),
            post(&from).as_ref(),
        );
        put_wcc(
            e,
            pre_to.map(|p| Fattr::from_stat(&p).wcc()).as_ref(),
            post(&to).as_ref(),
        );
    }

    fn link(&self, c: &Caller, fh: &[u8], at: &DirOp, e: &mut Encoder) {
        let name = &at.name;
        let file = self.node(c, fh);
        let dir = self.node(c, &at.dir);
        let pre = dir.as_ref().ok().and_then(|n| fstat(n.raw()).ok());
        let r = (|| {
            let file = file.as_ref().map_err(|s| *s)?;
            let dir = dir.as_ref().map_err(|s| *s)?;
            if file.export.export.id != dir.export.export.id {
                return Err(Stat::Xdev);
            }
            self.writable(dir.export)?;
            let cname = component(name)?;
            let _as = self.become_caller(c, dir.export)?;
            let src = proc_path(file.raw());
            // SAFETY: both paths are NUL-terminated; following the procfs link names the
            // descriptor's own file (linkat with AT_EMPTY_PATH would need a privilege).
            errno_of(unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    src.as_ptr(),
                    dir.raw(),
                    cname.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            })?;
            self.entry_changed(dir.raw(), name);
            self.changed(file.raw());
            Ok(())
        })();
        enc_stat(e, r.err().unwrap_or(Stat::Ok));
        put_post_attr(
            e,
            file.as_ref().ok().and_then(|n| attr_of(n.raw())).as_ref(),
        );
        put_wcc(
            e,
            pre.map(|p| Fattr::from_stat(&p).wcc()).as_ref(),
            dir.as_ref().ok().and_then(|n| attr_of(n.raw())).as_ref(),
        );
    }

    /// The cookie verifier of a directory: it changes when the daemon restarts, so cookies
    /// of an earlier run are refused with BAD_COOKIE instead of being trusted.
    fn cookie_verf(&self, st: &libc::stat) -> [u8; 8] {
        let mut v = u64::from_be_bytes(self.write_verf);
        v ^= st.st_ino.rotate_left(17) ^ st.st_dev.rotate_left(41);
        v.to_be_bytes()
    }

    /// READDIR and READDIRPLUS (`plus`); `counts` are the call's dircount and maxcount.
    #[allow(clippy::too_many_arguments)]
    fn readdir(
        &self,
        c: &Caller,
        fh: &[u8],
        cookie: u64,
        verf: [u8; 8],
        (dircount, maxcount): (u32, u32),
        plus: bool,
        e: &mut Encoder,
    ) {
        let maxcount = maxcount.min(self.max_io(c)) as usize;
        let dircount = (dircount as usize).min(maxcount);
        let Some(dir) = self.node_or_fail(c, fh, e, Empty::PostAttr) else {
            return;
        };
        let r = (|| {
            let st = fstat(dir.raw()).map_err(ioerr)?;
            if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                return Err(Stat::NotDir);
            }
            let ours = self.cookie_verf(&st);
            if cookie != 0 && verf != [0; 8] && verf != ours {
                return Err(Stat::BadCookie);
            }
            let root = is_root(dir.export, &st);
            let _as = self.become_caller(c, dir.export)?;
            let list = read_entries(dir.raw(), cookie)?;
            let mut body = Encoder::new();
            // Status, attributes and verifier take about 100 bytes, the list's end 8.
            let mut total = 120usize;
            let mut names = 0usize;
            let mut eof = true;
            let mut any = false;
            for (ino, name, next) in list.entries {
                let name_len = (name.len() + 3) & !3;
                let entry = 24 + name_len;
                let mut sub = Encoder::new();
                sub.put_bool(true);
                let ino = if name == b".." && root {
                    st.st_ino
                } else {
                    ino
                };
                sub.put_u64(ino);
                sub.put_opaque(&name);
                sub.put_u64(next);
                if plus {
                    let found = (name.as_slice() != b"..")
                        .then(|| self.lookup_in(&dir, &st, &name).ok())
                        .flatten()
                        .or_else(|| (name == b".." && root).then(|| (dir.fd.clone(), st)));
                    match found {
                        Some((fd, fst)) => {
                            put_post_attr(&mut sub, Some(&Fattr::from_stat(&fst)));
                            let h = self
                                .backing
                                .handle_of(&self.lockd, dir.export, fd.as_raw_fd())
                                .ok();
                            put_post_fh(&mut sub, h.as_deref());
                        }
                        None => {
                            put_post_attr(&mut sub, None);
                            put_post_fh(&mut sub, None);
                        }
                    }
                }
                if total + sub.len() > maxcount || names + entry > dircount {
                    eof = false;
                    break;
                }
                total += sub.len();
                names += entry;
                body.put_raw(sub.as_slice());
                any = true;
            }
            if !any && !eof {
                return Err(Stat::TooSmall);
            }
            eof &= list.eof;
            body.put_bool(false);
            body.put_bool(eof);
            Ok((ours, body))
        })();
        reply_with_attr(e, dir.raw(), r, |e, (v, body)| {
            e.put_fixed_opaque(&v);
            e.put_raw(body.as_slice());
        });
    }

    fn fsstat(&self, c: &Caller, fh: &[u8], e: &mut Encoder) {
        let Some(node) = self.node_or_fail(c, fh, e, Empty::PostAttr) else {
            return;
        };
        // SAFETY: an all-zero statvfs is valid; `fstatvfs` fills it.
        let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor and out pointer.
        let r = errno_of(unsafe { libc::fstatvfs(node.raw(), &mut sv) });
        reply_with_attr(e, node.raw(), r, |e, ()| {
            let f = sv.f_frsize;
            for v in [
                sv.f_blocks * f,
                sv.f_bfree * f,
                sv.f_bavail * f,
                sv.f_files,
                sv.f_ffree,
                sv.f_favail,
            ] {
                e.put_u64(v);
            }
            e.put_u32(0);
        });
    }

    fn fsinfo(&self, c: &Caller, fh: &[u8], e: &mut Encoder) {
        match self.node(c, fh) {
            Ok(node) => {
                let max = self.max_io(c);
                enc_stat(e, Stat::Ok);
                put_post_attr(e, attr_of(node.raw()).as_ref());
                // rtmax, rtpref, rtmult, wtmax, wtpref, wtmult, dtpref
                for v in [max, max, 4096, max, max, 4096, max.min(64 * 1024)] {
                    e.put_u32(v);
                }
                e.put_u64(i64::MAX as u64);
                Time { sec: 0, nsec: 1 }.encode(e);
                // FSF3_LINK | FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME
                e.put_u32(0x1b);
            }
            Err(s) => {
                enc_stat(e, s);
                put_post_attr(e, None);
            }
        }
    }

    fn pathconf(&self, c: &Caller, fh: &[u8], e: &mut Encoder) {
        match self.node(c, fh) {
            Ok(node) => {
                // SAFETY: plain queries of a valid descriptor.
                let (links, names) = unsafe {
                    (
                        libc::fpathconf(node.raw(), libc::_PC_LINK_MAX),
                        libc::fpathconf(node.raw(), libc::_PC_NAME_MAX),
                    )
                };
                enc_stat(e, Stat::Ok);
                put_post_attr(e, attr_of(node.raw()).as_ref());
                e.put_u32(if links > 0 { links as u32 } else { 1 });
                e.put_u32(if names > 0 { names as u32 } else { 255 });
                e.put_bool(true); // no_trunc: longer names are refused
                e.put_bool(true); // chown_restricted
                e.put_bool(false); // case_insensitive
                e.put_bool(true); // case_preserving
            }
            Err(s) => {
                enc_stat(e, s);
                put_post_attr(e, None);
            }
        }
    }

    /// COMMIT syncs the whole file: the call's offset and count only say which part
    /// must be synced at least.
    fn commit(&self, c: &Caller, fh: &[u8], e: &mut Encoder) {
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

impl From<io::Error> for Stat {
    fn from(e: io::Error) -> Self {
        Stat::from_io(&e)
    }
}

fn regular(st: &libc::stat) -> Result<(), Stat> {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => Ok(()),
        libc::S_IFDIR => Err(Stat::IsDir),
        _ => Err(Stat::Inval),
    }
}

/// `faccessat` with the thread's file-system identity (AT_EACCESS checks with it).
fn check_access(fd: RawFd, mode: i32) -> Result<(), Stat> {
    let p = proc_path(fd);
    // SAFETY: `p` is NUL-terminated.
    errno_of(unsafe { libc::faccessat(libc::AT_FDCWD, p.as_ptr(), mode, libc::AT_EACCESS) })
}

fn timespec(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as _,
    }
}

fn verf_times(v: &[u8; 8]) -> (i64, i64) {
    let a = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
    let m = u32::from_be_bytes([v[4], v[5], v[6], v[7]]);
    (i64::from(a), i64::from(m))
}

/// Applies `sattr3` to a file, as the calling thread: size first, then owner, then mode
/// (a change of owner clears set-id bits), then times.
fn apply_sattr(fd: RawFd, st: &libc::stat, s: &Sattr) -> Result<(), Stat> {
    let path = proc_path(fd);
    let is_link = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
    if let Some(size) = s.size {
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                Stat::IsDir
            } else {
                Stat::Inval
            });
        }
        if size > i64::MAX as u64 {
            return Err(Stat::Fbig);
        }
        if size != st.st_size as u64 {
            // SAFETY: `path` is NUL-terminated.
            errno_of(unsafe { libc::truncate(path.as_ptr(), size as libc::off_t) })?;
        }
    }
    if s.uid.is_some() || s.gid.is_some() {
        let uid = s.uid.unwrap_or(u32::MAX);
        let gid = s.gid.unwrap_or(u32::MAX);
        // SAFETY: the empty path with AT_EMPTY_PATH names the descriptor itself.
        errno_of(unsafe { libc::fchownat(fd, c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH) })?;
    }
    if let Some(mode) = s.mode {
        if !is_link {
            // SAFETY: `path` is NUL-terminated.
            errno_of(unsafe { libc::chmod(path.as_ptr(), mode & 0o7777) })?;
        }
    }
    let t = |t: &SetTime| match t {
        SetTime::DontChange => timespec(0, libc::UTIME_OMIT),
        SetTime::ServerTime => timespec(0, libc::UTIME_NOW),
        SetTime::ClientTime(t) => timespec(i64::from(t.sec), i64::from(t.nsec)),
    };
    if (s.atime != SetTime::DontChange || s.mtime != SetTime::DontChange) && !is_link {
        let ts = [t(&s.atime), t(&s.mtime)];
        // SAFETY: `path` is NUL-terminated and `ts` holds two timespecs.
        errno_of(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), ts.as_ptr(), 0) })?;
    }
    Ok(())
}

struct Entries {
    /// (inode, name, cookie of the next entry)
    entries: Vec<(u64, Vec<u8>, u64)>,
    eof: bool,
}

/// Reads a directory from `cookie` on (a `telldir` position; 0 is the start), at most a
/// bounded number of entries, as the calling thread.
fn read_entries(dir: RawFd, cookie: u64) -> Result<Entries, Stat> {
    const MAX_ENTRIES: usize = 4096;
    let f = reopen(dir, libc::O_RDONLY | libc::O_DIRECTORY)?;
    // SAFETY: fdopendir takes ownership of the descriptor (released from `f`); closedir
    // below closes it.
    let dp = unsafe { libc::fdopendir(std::os::fd::IntoRawFd::into_raw_fd(f)) };
    if dp.is_null() {
        return Err(ioerr(io::Error::last_os_error()));
    }
    struct Closer(*mut libc::DIR);
    impl Drop for Closer {
        fn drop(&mut self) {
            // SAFETY: the stream was opened by fdopendir and is closed once.
            unsafe { libc::closedir(self.0) };
        }
    }
    let _c = Closer(dp);
    if cookie != 0 {
        // SAFETY: valid stream; positions come from earlier d_off values.
        unsafe { libc::seekdir(dp, cookie as libc::c_long) };
    }
    let mut entries = Vec::new();
    loop {
        if entries.len() >= MAX_ENTRIES {
            return Ok(Entries {
                entries,
                eof: false,
            });
        }
        // SAFETY: valid stream; errno is cleared first to tell the end from an error.
        let ent = unsafe {
            *libc::__errno_location() = 0;
            libc::readdir64(dp)
        };
        if ent.is_null() {
            // SAFETY: reading errno.
            let errno = unsafe { *libc::__errno_location() };
            if errno != 0 {
                return Err(Stat::from_errno(errno));
            }
            return Ok(Entries { entries, eof: true });
        }
        // SAFETY: readdir returned a valid entry, alive until the next call.
        let (ino, off, name) = unsafe {
            let e = &*ent;
            let name = std::ffi::CStr::from_ptr(e.d_name.as_ptr())
                .to_bytes()
                .to_vec();
            (e.d_ino, e.d_off as u64, name)
        };
        entries.push((ino, name, off));
    }
}
