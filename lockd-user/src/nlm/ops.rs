//! What each NLM procedure does to the lock table and the share table, written once in
//! version 4 terms; [`super`] converts versions 1 and 3 on the way in and out.
//!
//! Status choices where the protocol leaves room:
//! - A handle that is forged, foreign, stale or names no export: STALE_FH (DENIED in
//!   versions 1/3), and no file is touched.
//! - A client outside the export's allowed list: FAILED (DENIED in versions 1/3). FAILED
//!   rather than DENIED, because DENIED means "a conflicting lock is held" and invites a
//!   retry; clients report FAILED as an error (Linux: ENOLCK).
//! - A limit reached (locks or lock owners per host, queued requests) or the client list
//!   cannot be written: DENIED_NOLOCKS, logged. Locks per host are counted as the lock
//!   table's segments, what the table's memory grows with: a lock that other owners' locks
//!   cut in pieces counts once per piece. A host at its limit gets DENIED_NOLOCKS for new
//!   LOCK requests until it releases some.
//! - An exclusive lock or a write share on a read-only export: ROFS (DENIED in 1/3).
//! - A range whose end passes the largest 64-bit offset: FBIG (version 4 only; in versions
//!   1/3 a range ending beyond the 32-bit space extends to end of file, as in Linux).
//! - A reclaim outside grace, like a non-reclaim inside it: DENIED_GRACE_PERIOD, for LOCK
//!   and SHARE alike (the table's grace gate decides both, as it does for local opens).
//! - UNLOCK and CANCEL are served during grace: they only give up state.
//! - GRANTED sent to this server: DENIED, since a server has no blocked requests of its own.
//!
//! Each request runs in a debug-level span carrying client, file and owner
//! (`RUST_LOG=lockd_user=debug` shows them). Info-level spans cost a formatted string
//! per request, measurable next to a call that takes tens of microseconds; warnings
//! name client and file themselves.

use super::Call;
use crate::callbacks::{CallbackJob, Pending};
use crate::exports::OpenExport;
use crate::lockd::Lockd;
use crate::proto::nlm::v4;
use lock_table::{
    Admission, CancelReason, DoorId, FileId, HostId, LockKind, LockOutcome, LockRequest, Owner,
    OwnerKind, Park, Range, Refusal, TestOutcome, TestRequest, Wait, Wake,
};
use share_reservations::{ShareAccess, ShareDeny, ShareMode, ShareRequest};
use std::borrow::Cow;
use tracing::{debug, debug_span, warn};

/// This door's name in the table's waiter registry.
pub const NLM_DOOR: DoorId = DoorId("nlm");

use v4::Stats;

/// NLM names its client by `caller_name`; a client that sends none is named by address.
fn host_name<'a>(caller_name: &'a str, call: &Call) -> Cow<'a, str> {
    if caller_name.is_empty() {
        Cow::Owned(call.peer.ip().to_string())
    } else {
        Cow::Borrowed(caller_name)
    }
}

/// The byte range of a lock. Versions 1/3: 32-bit offsets, an end beyond the 32-bit space
/// means end of file. Version 4: an end beyond the 64-bit space is an error.
pub(crate) fn range_of(vers: u32, off: u64, len: u64) -> Option<Range> {
    if vers == crate::proto::nlm::NLM4_VERS {
        return Range::from_len(off, len).ok();
    }
    if len == 0 || off + len > (1u64 << 32) {
        return Some(Range::to_eof(off));
    }
    Range::from_len(off, len).ok()
}

fn kind_of(exclusive: bool) -> LockKind {
    if exclusive {
        LockKind::Exclusive
    } else {
        LockKind::Shared
    }
}

/// An owner that holds nothing anywhere, for TEST by a client that never locked.
const NOBODY: Owner = Owner {
    kind: OwnerKind::Nlm,
    host: HostId(u32::MAX),
    id: u64::MAX,
};

fn refusal_status(r: Refusal) -> Stats {
    match r {
        Refusal::Conflict(_) => Stats::Denied,
        Refusal::Deadlock => Stats::Deadlck,
        Refusal::Grace | Refusal::NotInGrace => Stats::DeniedGracePeriod,
    }
}

impl Lockd {
    fn target(&self, call: &Call, host: &str, fh: &[u8]) -> Result<(&OpenExport, FileId), Stats> {
        // Checked before the handle is resolved: an offline group's storage may be absent.
        if let Some(id) = crate::fh::claimed_export(fh) {
            if let Some(e) = self.exports.get(id) {
                if self.is_offline(e.export.scope) {
                    debug!(client = host, peer = %call.peer, export = id, "export's group is offline here");
                    return Err(Stats::DeniedGracePeriod);
                }
            }
        }
        let (export, file) = self.fhs.resolve(&self.exports, fh).map_err(|e| {
            debug!(client = host, peer = %call.peer, error = %e, "refused file handle");
            Stats::StaleFh
        })?;
        if !export.export.allows(call.peer.ip()) {
            warn!(client = host, peer = %call.peer, export = export.export.id, "client not allowed by the export");
            return Err(Stats::Failed);
        }
        Ok((export, file))
    }

    fn known_owner(&self, host: &str, svid: i32, oh: &[u8]) -> Option<Owner> {
        self.table.read(|t| {
            let h = t.registry().find_host(host)?;
            t.registry().find_nlm_owner(h, svid as u32, oh)
        })
    }

    /// Interns the lock owner unless its host is at one of its limits (names the limit).
    fn owner_for_lock(&self, host: &str, svid: i32, oh: &[u8]) -> Result<Owner, &'static str> {
        let max_owners = self.limits.max_owners_per_host;
        let max_locks = self.limits.max_locks_per_host;
        self.table.with(|t| {
            let h = t.registry_mut().host(host);
            if t.host_segments(h) >= max_locks {
                return Err("locks");
            }
            if let Some(o) = t.registry().find_nlm_owner(h, svid as u32, oh) {
                return Ok(o);
            }
            if t.registry().owner_count(h) >= max_owners {
                return Err("lock owners");
            }
            Ok(t.registry_mut().nlm_owner(h, svid as u32, oh))
        })
    }

    /// Puts the host on the group's client list before its first state there is granted.
    fn monitor_client(&self, scope: lock_table::ScopeId, host: &str, call: &Call) -> bool {
        let ip = call.peer.ip();
        if self.store.has_client(scope, host, ip) {
            return true;
        }
        match crate::lockd::off_the_workers(|| self.store.add_client(scope, host, ip)) {
            Ok(_) => true,
            Err(e) => {
                warn!(client = host, error = %e, "cannot record the client; refusing");
                false
            }
        }
    }

    pub(crate) fn nlm_test(&self, call: &Call, a: &v4::TestArgs) -> v4::TestReply {
        let host = host_name(&a.alock.caller_name, call);
        let (export, file) = match self.target(call, &host, &a.alock.fh) {
            Ok(x) => x,
            Err(s) => return v4::TestReply::Other(s),
        };
        let Some(range) = range_of(call.vers, a.alock.l_offset, a.alock.l_len) else {
            return v4::TestReply::Other(Stats::Fbig);
        };
        let owner = self
            .known_owner(&host, a.alock.svid, &a.alock.oh)
            .unwrap_or(NOBODY);
        let _s = debug_span!("nlm_test", client = %host, file = ?file, owner = ?owner).entered();
        let out = self.table.read(|t| {
            t.test(&TestRequest {
                file,
                scope: export.export.scope,
                owner,
                kind: kind_of(a.exclusive),
                range,
            })
        });
        debug!(?out, "test");
        match out {
            TestOutcome::Free => v4::TestReply::Other(Stats::Granted),
            TestOutcome::Grace => v4::TestReply::Other(Stats::DeniedGracePeriod),
            TestOutcome::Conflict(h) => {
                self.note_contention(&Refusal::Conflict(h));
                v4::TestReply::Denied(v4::Holder {
                    exclusive: h.kind == LockKind::Exclusive,
                    svid: h.pid as i32,
                    oh: Vec::new(),
                    l_offset: h.range.start(),
                    l_len: h.range.wire_len(),
                })
            }
        }
    }

    /// A request met another host's lock: the unreachable policy watches that host.
    fn note_contention(&self, r: &Refusal) {
        if let Refusal::Conflict(h) = r {
            if h.owner.kind == OwnerKind::Nlm && self.policy.release_unreachable_after.is_some() {
                self.contention.note(h.owner.host);
            }
        }
    }

    /// LOCK, LOCK_MSG (`msg`) and NM_LOCK (`monitored == false`, never blocking).
    pub(crate) fn nlm_lock(
        &self,
        call: &Call,
        a: &v4::LockArgs,
        monitored: bool,
        msg: bool,
    ) -> Stats {
        let host = host_name(&a.alock.caller_name, call);
        let (export, file) = match self.target(call, &host, &a.alock.fh) {
            Ok(x) => x,
            Err(s) => return s,
        };
        let Some(range) = range_of(call.vers, a.alock.l_offset, a.alock.l_len) else {
            return Stats::Fbig;
        };
        if a.exclusive && export.export.read_only {
            return Stats::Rofs;
        }
        let scope = export.export.scope;
        let owner = match self.owner_for_lock(&host, a.alock.svid, &a.alock.oh) {
            Ok(o) => o,
            Err(limit) => {
                warn!(client = %host, file = ?file, svid = a.alock.svid, limit, "a per-host limit is reached; refusing");
                return Stats::DeniedNolocks;
            }
        };
        let _s = debug_span!("nlm_lock", client = %host, file = ?file, owner = ?owner).entered();
        let block = a.block && monitored;
        if block && self.table.read(|t| t.waiter_count()) >= self.limits.max_waiters {
            warn!(client = %host, file = ?file, "waiter limit reached");
            return Stats::DeniedNolocks;
        }
        if monitored && !self.monitor_client(scope, &host, call) {
            return Stats::DeniedNolocks;
        }
        let kind = kind_of(a.exclusive);
        let req = LockRequest {
            file,
            scope,
            owner,
            pid: a.alock.svid as u32,
            kind,
            range,
            wait: Wait::No,
            reclaim: a.reclaim,
        };
        if !block {
            let out = self.table.lock(&req);
            debug!(?out, reclaim = a.reclaim, "lock");
            return match out {
                LockOutcome::Granted => Stats::Granted,
                // A request that may not wait is never queued.
                LockOutcome::Queued(_) => Stats::Blocked,
                LockOutcome::Refused(r) => {
                    self.note_contention(&r);
                    refusal_status(r)
                }
            };
        }
        // What the GRANTED callback needs is kept under the registry's token from
        // before the table decides, so a grant can never find it missing.
        let token = self.table.waiters().token();
        self.pending().insert(
            token,
            Pending {
                host: host.to_string(),
                peer: call.peer.ip(),
                vers: call.vers,
                msg,
                waiter: None,
                file,
                owner,
                kind,
                range,
                lock: a.alock.clone(),
            },
        );
        let jobs = self.jobs.clone();
        let job = move |w: Wake| {
            let job = match w {
                Wake::Granted => CallbackJob::Granted { token },
                Wake::Dropped => CallbackJob::Dropped { token },
                // Withdrawn by CANCEL or the host's release, which clean up.
                Wake::Cancelled(_) | Wake::Refused(_) => return,
            };
            // A closed queue means the service stopped; nobody is left to call back.
            let _ = jobs.send(job);
        };
        let park = Park::new(NLM_DOOR).with_token(token);
        let out = self.table.lock_or_wait(&req, park, job);
        debug!(?out, reclaim = a.reclaim, "lock");
        match out {
            Admission::Now(w, _) => {
                self.pending().remove(&token);
                match w {
                    Wake::Granted => Stats::Granted,
                    Wake::Refused(r) => {
                        self.note_contention(&r);
                        refusal_status(r)
                    }
                    // Nothing withdraws an NLM request before it is queued.
                    Wake::Cancelled(_) | Wake::Dropped => Stats::Denied,
                }
            }
            Admission::Queued { waiter, joined, .. } => {
                let mut pending = self.pending();
                match joined {
                    // The same request again (a retransmission or a client's retry): the
                    // table kept the first waiter; call back where the latest came from.
                    Some(old) => {
                        if let Some(p) = pending.remove(&token) {
                            if let Some(o) = pending.get_mut(&old) {
                                o.peer = p.peer;
                                o.vers = p.vers;
                                o.msg = p.msg;
                            }
                        }
                    }
                    None => {
                        if let Some(p) = pending.get_mut(&token) {
                            p.waiter = Some(waiter);
                        }
                    }
                }
                Stats::Blocked
            }
        }
    }

    pub(crate) fn nlm_cancel(&self, call: &Call, a: &v4::CancArgs) -> Stats {
        let host = host_name(&a.alock.caller_name, call);
        let (_export, file) = match self.target(call, &host, &a.alock.fh) {
            Ok(x) => x,
            Err(s) => return s,
        };
        let Some(range) = range_of(call.vers, a.alock.l_offset, a.alock.l_len) else {
            return Stats::Fbig;
        };
        let Some(owner) = self.known_owner(&host, a.alock.svid, &a.alock.oh) else {
            return Stats::Denied;
        };
        let _s = debug_span!("nlm_cancel", client = %host, file = ?file, owner = ?owner).entered();
        let kind = kind_of(a.exclusive);
        let cancelled = self
            .table
            .with(|t| t.find_waiter(file, owner, kind, range))
            .filter(|w| self.table.cancel_waiter(*w, CancelReason::Cancelled));
        let mut pending = self.pending();
        if let Some(w) = cancelled {
            pending.retain(|_, p| p.waiter != Some(w));
            debug!("cancelled a queued request");
            return Stats::Granted;
        }
        // Granted already, with the GRANTED callback still under way: give the lock back.
        let granted = pending
            .iter()
            .find(|(_, p)| p.owner == owner && p.file == file && p.range == range && p.kind == kind)
            .map(|(k, _)| *k);
        match granted {
            Some(k) => {
                pending.remove(&k);
                drop(pending);
                self.table.with(|t| t.unlock(file, owner, range));
                debug!("cancelled a grant in flight");
                Stats::Granted
            }
            None => Stats::Denied,
        }
    }

    pub(crate) fn nlm_unlock(&self, call: &Call, a: &v4::UnlockArgs) -> Stats {
        let host = host_name(&a.alock.caller_name, call);
        let (_export, file) = match self.target(call, &host, &a.alock.fh) {
            Ok(x) => x,
            Err(s) => return s,
        };
        let Some(range) = range_of(call.vers, a.alock.l_offset, a.alock.l_len) else {
            return Stats::Fbig;
        };
        if let Some(owner) = self.known_owner(&host, a.alock.svid, &a.alock.oh) {
            let _s =
                debug_span!("nlm_unlock", client = %host, file = ?file, owner = ?owner).entered();
            self.table.with(|t| t.unlock(file, owner, range));
            debug!("unlock");
        }
        Stats::Granted
    }

    pub(crate) fn nlm_share(&self, call: &Call, a: &v4::ShareArgs) -> Stats {
        let s = &a.share;
        let host = host_name(&s.caller_name, call);
        let (export, file) = match self.target(call, &host, &s.fh) {
            Ok(x) => x,
            Err(st) => return st,
        };
        let (Some(access), Some(deny)) = (
            ShareAccess::from_wire(s.access.to_wire() as u32),
            ShareDeny::from_wire(s.mode.to_wire() as u32),
        ) else {
            return Stats::Failed;
        };
        if access.writes() && export.export.read_only {
            return Stats::Rofs;
        }
        let scope = export.export.scope;
        // Share owners are not limited per host: a client has few, one per open file.
        let admitted = self.table.with(|t| {
            let h = t.registry_mut().host(&host);
            t.share_gate(scope, h, a.reclaim, true)
                .map(|()| t.registry_mut().nlm_share_owner(h, &s.oh))
        });
        let owner = match admitted {
            Ok(owner) => owner,
            Err(r) => return refusal_status(r),
        };
        let _sp = debug_span!("nlm_share", client = %host, file = ?file, owner = ?owner).entered();
        if !self.monitor_client(scope, &host, call) {
            return Stats::DeniedNolocks;
        }
        let r = self.shares().reserve(&ShareRequest {
            file,
            scope,
            owner,
            pid: 0,
            mode: ShareMode::new(access, deny),
        });
        match r {
            Ok(()) => Stats::Granted,
            Err(c) => {
                debug!(conflict = %c, "share refused");
                Stats::Denied
            }
        }
    }

    pub(crate) fn nlm_unshare(&self, call: &Call, a: &v4::ShareArgs) -> Stats {
        let s = &a.share;
        let host = host_name(&s.caller_name, call);
        let (_export, file) = match self.target(call, &host, &s.fh) {
            Ok(x) => x,
            Err(st) => return st,
        };
        let owner = self.table.with(|t| {
            let h = t.registry().find_host(&host)?;
            Some(t.registry_mut().nlm_share_owner(h, &s.oh))
        });
        if let Some(owner) = owner {
            self.shares().release(file, owner);
        }
        Stats::Granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_by_version() {
        assert_eq!(range_of(4, 10, 0), Some(Range::to_eof(10)));
        assert_eq!(range_of(4, 10, 5), Some(Range::new(10, 14).unwrap()));
        assert_eq!(range_of(4, u64::MAX, 2), None);
        assert_eq!(
            range_of(4, u64::MAX, 1),
            Some(Range::new(u64::MAX, u64::MAX).unwrap())
        );
        assert_eq!(range_of(3, 10, 0), Some(Range::to_eof(10)));
        assert_eq!(
            range_of(3, 0xFFFF_FFF0, 0x10),
            Some(Range::new(0xFFFF_FFF0, 0xFFFF_FFFF).unwrap())
        );
        assert_eq!(
            range_of(1, 0xFFFF_FFF0, 0x11),
            Some(Range::to_eof(0xFFFF_FFF0))
        );
    }
}
