//! The NFS program as the RPC server sees it: arguments are copied off the connection and
//! the procedure runs on tokio's blocking pool (file-system calls block, and the caller's
//! identity is set per thread), answering through a deferred reply.
//!
//! Duplicate requests: a retransmission of a non-idempotent procedure (a client that timed
//! out resends the same xid, over UDP or on a new TCP connection) gets the reply of the
//! first execution instead of running again: a replayed REMOVE must not answer NOENT, a
//! replayed exclusive CREATE must not answer EXIST. The cache is keyed by client address
//! (without its port, which changes with the connection), xid, procedure and argument
//! bytes; a copy that arrives while the original is still running is dropped.

use super::ops::{Caller, Door};
use super::proto::{non_idempotent, proc_, NFS_PROG, NFS_V3};
use crate::drc::{DrcLookup, DuplicateCache};
use crate::server::{CallContext, ProcError, Reply, RpcProgram};
use crate::xdr::Decoder;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;
use tracing::error;

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
        let bytes = args.rest().to_vec();
        let key = non_idempotent(ctx.proc_).then(|| {
            self.drc.key(
                SocketAddr::new(ctx.peer.ip(), 0),
                ctx.xid,
                ctx.prog,
                ctx.vers,
                ctx.proc_,
                &bytes,
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
        let (reply, tx) = Reply::deferred();
        let door = self.door.clone();
        let drc = self.drc.clone();
        let caller = Caller::from_ctx(ctx);
        let proc_ = ctx.proc_;
        tokio::task::spawn_blocking(move || {
            let r = catch_unwind(AssertUnwindSafe(|| door.run(&caller, proc_, &bytes)));
            match r {
                Ok(Ok(body)) => {
                    if let Some(k) = &key {
                        drc.complete(k, Some(body.clone().into()));
                    }
                    tx.send(body);
                }
                Ok(Err(e)) => {
                    if let Some(k) = &key {
                        drc.abandon(k);
                    }
                    tx.fail(e);
                }
                Err(_) => {
                    error!(proc_, "NFS procedure panicked");
                    if let Some(k) = &key {
                        drc.abandon(k);
                    }
                    tx.fail(ProcError::SystemErr);
                }
            }
        });
        Ok(reply)
    }
}
