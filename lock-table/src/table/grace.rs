//! Scopes and their grace periods: after a restart or a failover, only
//! reclaims are admitted in a scope until its grace period ends.

use super::LockTable;
use crate::ids::{FileId, HostId, Namespace, ScopeId};
use crate::ops::Refusal;

impl LockTable {
    /// Start the grace period of a scope: from now until [`Self::end_grace`],
    /// only reclaims are granted in it. Local blocking requests queue until it
    /// ends; other requests are refused with [`Refusal::Grace`].
    pub fn begin_grace(&mut self, scope: ScopeId) {
        self.scopes.entry(scope).or_default().grace = true;
    }

    /// End the grace period of a scope; local requests that waited it out
    /// are decided now.
    pub fn end_grace(&mut self, scope: ScopeId) {
        self.scopes.entry(scope).or_default().grace = false;
        let waiting: Vec<FileId> = self
            .files
            .iter()
            .filter(|(_, f)| f.scope == scope && !f.queue.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for f in waiting {
            self.wake(f);
        }
    }

    pub fn in_grace(&self, scope: ScopeId) -> bool {
        self.scopes.get(&scope).is_some_and(|s| s.grace)
    }

    /// The scope a request on `file` belongs to: the scope its front door names
    /// (the service group of the export), except for a separate flock
    /// namespace, which no remote client can reach and which so never waits
    /// for reclaims.
    pub(super) fn scope_of(file: FileId, named: ScopeId) -> ScopeId {
        match file.ns {
            Namespace::Fcntl => named,
            Namespace::Flock => ScopeId::LOCAL_ONLY,
        }
    }

    /// The grace rule for share reservations, the same for every door: may a
    /// share of `host` in `scope` be decided now? A remote host's request is
    /// admitted as a lock request is: only reclaims during grace, only new
    /// shares after it ([`Refusal::Grace`], [`Refusal::NotInGrace`]). A local
    /// open never reclaims; during grace it is refused with [`Refusal::Grace`]
    /// when it `may_meet_reclaim`, that is, when a share some client could
    /// reclaim (deny-write against its writing, any access against its deny)
    /// could conflict with it, as a local non-blocking lock request is. A local
    /// open that reads and denies nothing is admitted, so that files stay
    /// readable during grace; only a client's deny-read reclaim can meet it.
    pub fn share_gate(
        &self,
        scope: ScopeId,
        host: HostId,
        reclaim: bool,
        may_meet_reclaim: bool,
    ) -> Result<(), Refusal> {
        if host != HostId::LOCAL {
            return self.grace_gate(scope, reclaim).map_or(Ok(()), Err);
        }
        if may_meet_reclaim && self.in_grace(scope) {
            return Err(Refusal::Grace);
        }
        Ok(())
    }

    pub(super) fn grace_gate(&self, scope: ScopeId, reclaim: bool) -> Option<Refusal> {
        match (self.in_grace(scope), reclaim) {
            (true, false) => Some(Refusal::Grace),
            (false, true) => Some(Refusal::NotInGrace),
            _ => None,
        }
    }
}
