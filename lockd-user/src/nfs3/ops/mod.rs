//! The 22 NFS version 3 procedures, each a function from its decoded arguments to its
//! encoded results, run as the caller ([`super::identity`]): the read-only ones on the
//! connection's own task, the rest on a blocking thread (see [`super::program`]).
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
//!
//! This module holds what every procedure shares (the door, the caller, resolving
//! handles, taking the caller's identity, the I/O gate, the reply helpers) and the
//! dispatch of decoded arguments; the procedures are grouped by what they touch:
//! `attrs` (attributes of a file and of the file system), `dirs` (names and
//! directory listings), `data` (a file's contents) and `namespace` (creating,
//! removing, renaming and linking names).

use super::args::{decode, Args, CreateHow, DirOp, MknodWhat};
use super::backing::{
    component, fstat, is_root, may_access, open_at, open_path_at, proc_path, reopen, stat_at,
    Backing, Node,
};
use super::gate::admit_io;
use super::identity::{assume, Assumed};
use super::proto::*;
use super::{ExportOptions, Invalidation, MandatoryMode, Was};
use crate::exports::OpenExport;
use crate::lockd::Lockd;
use crate::rpc::Credential;
use crate::server::{CallContext, FileTail, ProcError, Transport};
use crate::xdr::{Decoder, Encoder};
use lock_table::{Access, FileId, IoPass, Range};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

mod attrs;
mod data;
pub use data::INLINE_READ;
mod dirs;
mod namespace;

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
    /// Calls tried where they were decoded that had to be run on the blocking pool
    /// instead (see [`super::program`]): a READ larger than [`INLINE_READ`] or of data
    /// not all in memory, an UNCHECKED CREATE that sets a size.
    pub handed_on: std::sync::atomic::AtomicU64,
    /// Calls handed on whose arguments had to be copied (the transport kept its buffer).
    pub args_copied: std::sync::atomic::AtomicU64,
    /// READs whose data was left to the transport to send from the page cache.
    pub sent_from_file: std::sync::atomic::AtomicU64,
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
    /// What the procedure's changes made stale in other doors' caches, not yet told
    /// ([`super::ChangeSink`]).
    stale: RefCell<Vec<Invalidation>>,
    /// The bytes of a file that end the reply, to be sent from the page cache.
    tail: RefCell<Option<FileTail>>,
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
            stale: RefCell::default(),
            tail: RefCell::default(),
        }
    }

    /// The file bytes that end the reply, if the procedure left them to the transport.
    pub fn take_tail(&self) -> Option<FileTail> {
        self.tail.borrow_mut().take()
    }

    /// The invalidations the procedure left to make (see [`Door::run_without_waiting`]).
    pub fn take_invalidations(&self) -> Vec<Invalidation> {
        std::mem::take(&mut self.stale.borrow_mut())
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
    fn changed(&self, c: &Caller, st: &libc::stat) {
        if let Some(s) = &self.changes {
            s.file_changed(st.st_dev, st.st_ino, &mut c.stale.borrow_mut());
        }
    }

    /// Another door's caches of this name (and its directory) are stale now; the name
    /// named `was` before.
    fn entry_changed(&self, c: &Caller, dir: &Node<'_>, name: &[u8], was: Was) {
        if let Some(s) = &self.changes {
            let out = &mut c.stale.borrow_mut();
            s.entry_changed(dir.st.st_dev, dir.st.st_ino, name, was, out);
        }
    }

    fn become_caller(&self, c: &Caller, export: &OpenExport) -> Result<Assumed, Stat> {
        let id = self.opts(export).squash.identity(&c.cred);
        assume(&id).map_err(|_| Stat::Perm)
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

    fn max_io(&self, c: &Caller) -> u32 {
        match c.transport {
            Transport::Udp => self.max_io.min(UDP_MAX_IO),
            Transport::Tcp => self.max_io,
        }
    }

    /// Runs one procedure: the encoded results, or an RPC-level error (undecodable
    /// arguments are refused before the procedure has any effect).
    ///
    /// Other doors' caches the procedure made stale are told before it returns.
    pub fn run(&self, c: &Caller, proc_: u32, args: &[u8]) -> Res {
        let r = match self.run_as(c, proc_, args, Wait::Yes) {
            Some(r) => r,
            // Only a run that may not wait gives up.
            None => Err(ProcError::SystemErr),
        };
        for tell in c.take_invalidations() {
            tell();
        }
        r
    }

    /// Runs one procedure on a thread that must not wait for a disk: `None` when it would
    /// have to (a READ of data not in the page cache, or larger than [`INLINE_READ`]), to
    /// be run again with [`Door::run`] where waiting is allowed. Nothing was changed or
    /// sent then. The results follow room for the RPC reply header
    /// ([`crate::server::Reply::NowAfterHeader`]), so a READ's data is not copied once
    /// more behind it.
    ///
    /// A change leaves in `c` what it made stale in other doors' caches
    /// ([`Caller::take_invalidations`]): the caller tells them where waiting is allowed,
    /// before it sends the reply.
    pub fn run_without_waiting(&self, c: &Caller, proc_: u32, args: &[u8]) -> Option<Res> {
        self.run_as(c, proc_, args, Wait::No)
    }

    fn run_as(&self, c: &Caller, proc_: u32, args: &[u8], wait: Wait) -> Option<Res> {
        let room = match wait {
            Wait::No => crate::rpc::SUCCESS_HEADER_LEN,
            Wait::Yes => 0,
        };
        let mut d = Decoder::new(args);
        let args = match decode(proc_, &mut d, self.max_io.max(UDP_MAX_IO) as usize) {
            Ok(a) => a,
            Err(e) => return Some(Err(e)),
        };
        let mut e = Encoder::from_vec(vec![0u8; room]);
        let e_ = &mut e;
        match args {
            Args::Null => {}
            Args::GetAttr(fh) => self.getattr(c, &fh, e_),
            Args::SetAttr { fh, sattr, guard } => self.setattr(c, &fh, &sattr, guard, e_),
            Args::Lookup(at) => self.lookup(c, &at, e_),
            Args::Access { fh, want } => self.access(c, &fh, want, e_),
            Args::ReadLink(fh) => self.readlink(c, &fh, e_),
            Args::Read { fh, offset, count } => {
                if !self.read(c, &fh, offset, count, wait, e_) {
                    return None;
                }
            }
            Args::Write {
                fh,
                offset,
                data,
                stable,
            } => self.write(c, &fh, offset, data, stable, e_),
            Args::Create { at, how } => {
                // Over an existing file, a size is a truncation, which may wait for pages
                // the disk is writing.
                if wait == Wait::No && matches!(&how, CreateHow::Unchecked(s) if s.size.is_some()) {
                    return None;
                }
                self.create(c, &at, how, e_)
            }
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
        Some(Ok(e.into_inner()))
    }

    // Each procedure gets its decoded arguments ([`super::args`]) and answers a status.
}

impl From<io::Error> for Stat {
    fn from(e: io::Error) -> Self {
        Stat::from_io(&e)
    }
}

/// Whether a procedure may wait for the disk where it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Yes,
    /// Only data already in memory: the thread serves other clients' calls.
    No,
}

fn regular(st: &libc::stat) -> Result<(), Stat> {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => Ok(()),
        libc::S_IFDIR => Err(Stat::IsDir),
        _ => Err(Stat::Inval),
    }
}
