//! Lock requests (`SETLK`, `SETLKW`, `GETLK`), the share-reservation ioctl and
//! interrupts of parked requests; [`crate::locking`] translates them for the
//! lock table.

use fuser::{Errno, FileHandle, LockOwner, Request};
use lock_table::{LockKind, LockRequest, TestRequest, Wait};

use super::reply::{Answer, Conflict, R};
use super::LockFs;
use crate::locking;
use crate::share;

/// The arguments of a lock request as the kernel sends them.
pub(super) struct LockArgs {
    pub(super) fh: FileHandle,
    pub(super) lock_owner: LockOwner,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) typ: i32,
    pub(super) pid: u32,
    /// `SETLKW`: wait for conflicting locks to go.
    pub(super) sleep: bool,
    pub(super) flock: bool,
}

impl LockFs {
    /// `SETLK`/`SETLKW`. A request that waits parks `reply`, answered by the grant.
    pub(super) fn setlk(&self, req: &Request, a: LockArgs, reply: impl Answer<()>) {
        let Some(lk) = &self.locking else {
            return reply.send(Err(Errno::ENOSYS));
        };
        let prepared = (|| {
            let file = self.file(a.fh)?;
            let range = locking::fuse_range(a.start, a.end)?;
            let kind = locking::lock_kind(a.typ)?;
            let (owner, id, range) = lk.lock_target(
                &file,
                a.fh.0,
                a.lock_owner.0,
                [req.pid(), a.pid],
                range,
                a.flock,
            );
            Ok::<_, Errno>((owner, id, range, kind))
        })();
        let (owner, file, range, kind) = match prepared {
            Ok(x) => x,
            Err(e) => return reply.send(Err(e)),
        };
        // Debug level: a formatted span per request would cost more than the
        // table operation it describes.
        let _span = tracing::debug_span!(
            "setlk",
            ?file,
            ?owner,
            pid = a.pid,
            ?range,
            ?kind,
            sleep = a.sleep
        )
        .entered();
        let request = LockRequest {
            file,
            scope: lk.ctx.scope,
            owner,
            pid: a.pid,
            kind: kind.unwrap_or(LockKind::Shared),
            range,
            wait: Wait::No,
            reclaim: false,
        };
        if a.sleep && kind.is_some() {
            lk.set_wait(req.unique().0, request, move |r| reply.send(r));
            return;
        }
        reply.send(lk.set_now(request, kind.is_none()))
    }

    /// `GETLK`: the first lock that would block the request, or `F_UNLCK`.
    pub(super) fn getlk(&self, req: &Request, a: LockArgs) -> R<Conflict> {
        let lk = self.locking.as_ref().ok_or(Errno::ENOSYS)?;
        let file = self.file(a.fh)?;
        let range = locking::fuse_range(a.start, a.end)?;
        // F_GETLK asks about a lock it would take; F_UNLCK makes no sense there.
        let kind = locking::lock_kind(a.typ)?.ok_or(Errno::EINVAL)?;
        let (owner, id, range) = lk.lock_target(
            &file,
            a.fh.0,
            a.lock_owner.0,
            [req.pid(), a.pid],
            range,
            a.flock,
        );
        let (start, end, typ, pid) = lk.test(TestRequest {
            file: id,
            scope: lk.ctx.scope,
            owner,
            kind,
            range,
        });
        Ok(Conflict {
            start,
            end,
            typ,
            pid,
        })
    }

    /// The lockfs ioctls; anything else is `ENOTTY`.
    pub(super) fn ioctl(
        &self,
        req: &Request,
        fh: FileHandle,
        cmd: u32,
        in_data: &[u8],
    ) -> R<Vec<u8>> {
        if cmd != share::LOCKFS_IOC_SET_SHARE {
            return Err(Errno::from_i32(libc::ENOTTY));
        }
        let lk = self.locking.as_ref().ok_or(Errno::from_i32(libc::ENOTTY))?;
        let file = self.file(fh)?;
        let mode = share::parse_ioctl(in_data).ok_or(Errno::EINVAL)?;
        let mode = share::widen(mode, file.flags);
        self.reserve(lk, req.pid(), fh.0, file.file_id, mode)?;
        Ok(Vec::new())
    }

    /// `FUSE_INTERRUPT`: the caller of request `unique` got a signal.
    pub(super) fn interrupt(&self, unique: u64) {
        if let Some(lk) = &self.locking {
            lk.interrupt(unique);
        }
    }
}
