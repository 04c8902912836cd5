//! The NFS program as the RPC server sees it: which procedures run at once on the
//! connection's task and which on tokio's blocking pool, and the duplicate request cache.
//!
//! Where a procedure runs: handing a call to another thread and its reply back costs two
//! cross-thread wake-ups, each of which can be the wake-up of a halted virtual CPU; that
//! was most of the time of a GETATTR. So the procedures that do a few system calls on
//! descriptors already open run right where the call was decoded, and the reply goes
//! out with no hand-off: GETATTR, LOOKUP, ACCESS, READLINK, FSSTAT, FSINFO, PATHCONF, a
//! READ of at most [`INLINE_READ`](super::ops::INLINE_READ) bytes whose data is all in
//! the page cache (read with `RWF_NOWAIT`, or over TCP, from 64 KiB, checked with
//! `cachestat` and left to the transport to send from the page cache), and the changes of
//! names that free no data:
//! CREATE (but an UNCHECKED one that sets a size: it may truncate a file), MKDIR,
//! SYMLINK, MKNOD, LINK, REMOVE and RMDIR (a REMOVE holds the file while its name goes
//! and leaves the close that frees it, which may wait for pages the disk is writing, to
//! [`closer`](super::closer)). A READ that would wait for the disk is run again on the
//! blocking pool, so one client's cold file never holds up the others. (A change of a
//! name can still wait for the file system's journal, briefly: ext4 opens a new
//! transaction while the last one commits, and a handle waits only for the switch.)
//!
//! This holds with many clients too: measured on 2 CPUs with 16 clients, one thread
//! answering LOOKUPs one after another served 1.8 times as many as the blocking pool did
//! (the pool's wake-ups cost more than the calls), so `lockfs serve` gives the NFS door a
//! runtime thread of its own, apart from NLM's. An inline procedure takes the caller's
//! identity on the runtime's thread and gives it back before it returns: there is no await
//! in between, so no other task runs as the caller.
//!
//! A change must be told to the FUSE mount's caches before it is answered, and telling
//! can wait for a local process that holds a directory's lock while its own request waits
//! for a lock whose release (an NLM UNLOCK, or this very client's next call) must still be
//! served. So an inline change only decides what is stale ([`super::ChangeSink`]); when
//! something is, the telling and then the reply go to the blocking pool. Most changes
//! have nothing to tell: the mount caches nothing of files and names it was never asked
//! about, nor attributes it has not asked for again since they were last dropped. WRITE,
//! SETATTR, RENAME, COMMIT (an `fsync`), READDIR and READDIRPLUS (a whole directory may be
//! read) run on the blocking pool.
//!
//! Duplicate requests: a retransmission of a non-idempotent procedure (a client that timed
//! out resends the same xid, over UDP or on a new TCP connection) gets the reply of the
//! first execution instead of running again: a replayed REMOVE must not answer NOENT, a
//! replayed exclusive CREATE must not answer EXIST. The cache is keyed by client address
//! (without its port, which changes with the connection), xid, procedure and argument
//! bytes; a copy that arrives while the original is still running is dropped.

use super::ops::{Caller, Door};
use super::proto::{non_idempotent, proc_, NFS_PROG, NFS_V3};
use crate::drc::{DrcKey, DrcLookup, DuplicateCache};
use crate::rpc::SUCCESS_HEADER_LEN;
use crate::server::{CallContext, ProcError, Reply, ReplySender, RpcProgram, SharedArgs};
use crate::xdr::Decoder;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;
use tracing::error;

/// Whether a call is tried at once on the connection's task (see the module comment); a
/// READ too large or not in memory, or a REMOVE that would free data, is then handed on
/// ([`Door::run_without_waiting`]).
fn runs_inline(proc_: u32) -> bool {
    use proc_::*;
    matches!(
        proc_,
        GETATTR
            | LOOKUP
            | ACCESS
            | READLINK
            | FSSTAT
            | FSINFO
            | PATHCONF
            | READ
            | CREATE
            | MKDIR
            | SYMLINK
            | MKNOD
            | REMOVE
            | RMDIR
            | LINK
    )
}

/// NFS version 3.
pub struct Nfs3Program {
    door: Arc<Door>,
    drc: Arc<DuplicateCache>,
}

impl Nfs3Program {
    pub fn new(door: Arc<Door>, drc_capacity: usize, drc_ttl: Duration) -> Self {
        Self {
            door,
            drc: Arc::new(DuplicateCache::new(drc_capacity.max(1), drc_ttl)),
        }
    }

    pub fn door(&self) -> &Arc<Door> {
        &self.door
    }
}

/// Records the results of a call in the duplicate request cache, if it has an entry
/// (`None`: it failed, and a retransmission runs it again).
fn finish(drc: &DuplicateCache, key: Option<&DrcKey>, results: Option<&[u8]>) {
    if let Some(k) = key {
        match results {
            Some(body) => drc.complete(k, Some(body.into())),
            None => drc.abandon(k),
        }
    }
}

/// Records a deferred call's outcome ([`finish`]) and sends it.
fn answer(
    drc: &DuplicateCache,
    key: Option<&DrcKey>,
    r: Result<Vec<u8>, ProcError>,
    tx: ReplySender,
) {
    finish(drc, key, r.as_deref().ok());
    match r {
        Ok(body) => tx.send(body),
        Err(e) => tx.fail(e),
    };
}

impl RpcProgram for Nfs3Program {
    fn program(&self) -> u32 {
        NFS_PROG
    }

    fn versions(&self) -> (u32, u32) {
        (NFS_V3, NFS_V3)
    }

    fn call(&self, ctx: &CallContext, args: &mut Decoder<'_>) -> Result<Reply, ProcError> {
        if ctx.proc_ == proc_::NULL {
            return Ok(Reply::Now(Vec::new()));
        }
        if ctx.proc_ > proc_::COMMIT {
            return Err(ProcError::ProcUnavail);
        }
        let raw = args.rest();
        let caller = Caller::from_ctx(ctx);
        let proc_ = ctx.proc_;
        let key = non_idempotent(proc_).then(|| {
            self.drc.key(
                SocketAddr::new(ctx.peer.ip(), 0),
                ctx.xid,
                ctx.prog,
                ctx.vers,
                ctx.proc_,
                raw,
            )
        });
        if let Some(k) = &key {
            match self.drc.begin(k) {
                DrcLookup::New => {}
                DrcLookup::InProgress => return Ok(Reply::None),
                DrcLookup::Replay(Some(body)) => return Ok(Reply::Now(body.to_vec())),
                DrcLookup::Replay(None) => return Ok(Reply::None),
            }
        }
        if runs_inline(proc_) {
            let run = || self.door.run_without_waiting(&caller, proc_, raw);
            match catch_unwind(AssertUnwindSafe(run)) {
                Ok(Some(r)) => {
                    let stale = caller.take_invalidations();
                    if let Some(tail) = caller.take_tail() {
                        // A READ, which changes nothing: no invalidation, no cache entry.
                        return r.map(|v| Reply::NowAfterHeaderWithFile(v, tail));
                    }
                    if stale.is_empty() {
                        // The results follow room for the reply header.
                        let body = r.as_ref().ok().map(|v| &v[SUCCESS_HEADER_LEN..]);
                        finish(&self.drc, key.as_ref(), body);
                        return r.map(Reply::NowAfterHeader);
                    }
                    let (reply, tx) = Reply::deferred();
                    let drc = self.drc.clone();
                    tokio::task::spawn_blocking(move || {
                        for tell in stale {
                            tell();
                        }
                        let r = r.map(|mut v| {
                            v.drain(..SUCCESS_HEADER_LEN);
                            v
                        });
                        answer(&drc, key.as_ref(), r, tx);
                    });
                    return Ok(reply);
                }
                // Data to come from the disk (or freed on it): run below, where it may wait.
                Ok(None) => {
                    self.door
                        .handed_on
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(_) => {
                    error!(proc_, "NFS procedure panicked");
                    if let Some(k) = &key {
                        self.drc.abandon(k);
                    }
                    return Err(ProcError::SystemErr);
                }
            }
        }
        // The arguments go to the pool in the record they came in when the transport
        // shares it: a WRITE's megabyte is not copied on the door's thread.
        let args = match &ctx.shared_args {
            Some(a) if std::ptr::eq(a.bytes(), raw) => a.clone(),
            _ => {
                self.door
                    .args_copied
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                SharedArgs::new(Arc::new(raw.to_vec()), 0)
            }
        };
        let (reply, tx) = Reply::deferred();
        let door = self.door.clone();
        let drc = self.drc.clone();
        tokio::task::spawn_blocking(move || {
            let r = catch_unwind(AssertUnwindSafe(|| door.run(&caller, proc_, args.bytes())));
            let r = r.unwrap_or_else(|_| {
                error!(proc_, "NFS procedure panicked");
                Err(ProcError::SystemErr)
            });
            answer(&drc, key.as_ref(), r, tx);
        });
        Ok(reply)
    }
}
