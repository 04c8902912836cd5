//! Scopes and their grace periods: after a restart or a failover, only
//! reclaims are admitted in a scope until its grace period ends.

use super::LockTable;
use crate::ids::{FileId, Namespace, ScopeId};
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

    pub(super) fn grace_gate(&self, scope: ScopeId, reclaim: bool) -> Option<Refusal> {
        match (self.in_grace(scope), reclaim) {
            (true, false) => Some(Refusal::Grace),
            (false, true) => Some(Refusal::NotInGrace),
            _ => None,
        }
    }
}
