//! Announces the table's decisions at lockfs's probe points (`lockfs trace`).
//!
//! Every public operation that may be traced first reads the probe gate (one
//! relaxed load); only when a tracer asked for that class of event is a
//! [`ProbeEvent`] built and handed to a probe point. Contention (refusals,
//! waits, blocked I/O) and the ends of waits are one class; requests, grants
//! and releases of uncontended locks are the other, because tracing them
//! costs a uprobe trap on every operation. Building an event is kept out of
//! line so the untraced path stays small.

use crate::ids::{FileId, LockKind, Owner, OwnerKind};
use crate::range::Range;
use crate::registry::Registry;
use lockfs_probes::{EventKind, LockType, ProbeEvent, WaitEndReason};

pub(crate) use lockfs_probes::{all_enabled, contention_enabled};

/// One decision to announce.
pub(crate) struct Probe {
    pub kind: EventKind,
    pub file: FileId,
    pub owner: Owner,
    pub pid: u32,
    pub lock_type: LockType,
    pub range: Range,
    pub waiter: u64,
    pub reason: WaitEndReason,
}

impl Probe {
    pub fn new(kind: EventKind, file: FileId, owner: Owner, pid: u32) -> Self {
        Probe {
            kind,
            file,
            owner,
            pid,
            lock_type: LockType::Unlock,
            range: Range::WHOLE,
            waiter: 0,
            reason: WaitEndReason::None,
        }
    }

    pub fn kind(mut self, kind: LockKind) -> Self {
        self.lock_type = lock_type(kind);
        self
    }

    pub fn range(mut self, range: Range) -> Self {
        self.range = range;
        self
    }

    pub fn waiter(mut self, waiter: u64) -> Self {
        self.waiter = waiter;
        self
    }

    pub fn reason(mut self, reason: WaitEndReason) -> Self {
        self.reason = reason;
        self
    }

    /// Builds the event (looking the host name up only now) and calls the
    /// probe point of its kind.
    #[cold]
    #[inline(never)]
    pub fn fire(self, registry: &Registry) {
        let mut ev = ProbeEvent::new(self.kind, self.file.dev, self.file.ino)
            .with_owner(owner_kind(self.owner.kind), self.pid)
            .with_range(self.range.start(), self.range.end())
            .with_waiter(self.waiter)
            .with_wait_reason(self.reason)
            .with_timestamp(lockfs_probes::monotonic_ns());
        ev.lock_type = self.lock_type as u32;
        if let Some(host) = registry.host_name(self.owner.host) {
            ev = ev.with_host(host.as_bytes());
        }
        lockfs_probes::emit(&ev);
    }
}

fn owner_kind(kind: OwnerKind) -> lockfs_probes::OwnerKind {
    match kind {
        OwnerKind::Posix => lockfs_probes::OwnerKind::Posix,
        OwnerKind::Ofd => lockfs_probes::OwnerKind::Ofd,
        OwnerKind::Flock => lockfs_probes::OwnerKind::Flock,
        OwnerKind::Nlm | OwnerKind::NlmShare => lockfs_probes::OwnerKind::Nlm,
    }
}

fn lock_type(kind: LockKind) -> LockType {
    match kind {
        LockKind::Shared => LockType::Shared,
        LockKind::Exclusive => LockType::Exclusive,
    }
}

#[cfg(test)]
mod tests {
    use crate::*;

    /// Runs one scenario touching every announcing path and returns what
    /// the table decided and the events it queued.
    fn scenario() -> (Vec<String>, Vec<Event>) {
        let f = FileId::new(3, 30);
        let host = {
            let mut t = LockTable::new();
            t.registry_mut().host("client-a")
        };
        let mut t = LockTable::new();
        assert_eq!(t.registry_mut().host("client-a"), host);
        let nlm = t.registry_mut().nlm_owner(host, 9, b"oh");
        let req = |owner: Owner, kind, wait| LockRequest {
            file: f,
            scope: ScopeId::DEFAULT,
            owner,
            pid: 1,
            kind,
            range: Range::new(0, 99).unwrap(),
            wait,
            reclaim: false,
        };
        let mut out = Vec::new();
        let a = Owner::posix(1);
        let b = Owner::posix(2);
        out.push(format!(
            "{:?}",
            t.lock(&req(a, LockKind::Exclusive, Wait::No))
        ));
        out.push(format!("{:?}", t.lock(&req(b, LockKind::Shared, Wait::No))));
        let q1 = t.lock(&req(b, LockKind::Shared, Wait::Yes { token: 1 }));
        let q2 = t.lock(&req(nlm, LockKind::Exclusive, Wait::Yes { token: 2 }));
        out.push(format!("{q1:?} {q2:?}"));
        if let LockOutcome::Queued(id) = q1 {
            out.push(format!("{}", t.cancel_with(id, CancelReason::Interrupted)));
            out.push(format!("{}", t.cancel_with(id, CancelReason::TimedOut)));
        }
        let io = IoRequest {
            file: f,
            access: Access::Read,
            range: Range::new(0, 9).unwrap(),
            owner: b,
            open_file: None,
            pid: 2,
            wait: Wait::No,
        };
        out.push(format!("{:?}", t.io(&io)));
        t.unlock(f, a, Range::WHOLE);
        out.push(format!("{:?}", t.held_on(f).len()));
        out.push(format!("{:?}", t.release_host(host, Release::Abnormal)));
        out.push(format!(
            "{:?}",
            t.release_scope(ScopeId::DEFAULT, Release::Normal)
        ));
        let mut events = Vec::new();
        t.take_events(&mut events);
        // Holding times differ between runs; everything else must not.
        let out = out
            .into_iter()
            .map(|s| match s.split_once("since:") {
                Some((head, _)) => head.to_owned(),
                None => s,
            })
            .collect();
        (out, events)
    }

    #[test]
    fn announcing_changes_no_decision() {
        // Other tests of this crate may run meanwhile with the gate set: the
        // table must decide the same either way, which is what this checks.
        lockfs_probes::set_gate(0);
        let quiet = scenario();
        lockfs_probes::set_gate(lockfs_probes::GATE_CONTENTION | lockfs_probes::GATE_ALL);
        let traced = scenario();
        lockfs_probes::set_gate(0);
        assert_eq!(quiet.0, traced.0);
        assert_eq!(quiet.1.len(), traced.1.len());
        // The NLM waiter was granted when the POSIX holder unlocked, and the
        // interrupted cancel removed the POSIX waiter exactly once.
        assert!(quiet.0.contains(&"true".to_owned()));
        assert!(quiet.0.contains(&"false".to_owned()));
        assert!(matches!(quiet.1[0], Event::Granted { token: 2, .. }));
    }
}
