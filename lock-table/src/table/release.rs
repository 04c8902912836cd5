//! Bulk release: everything of an owner, an open file, a host or a scope at
//! once (close, FREE_ALL, a client's reboot, a service group leaving).

use super::{settle, LockTable, Waiter};
use crate::ids::{FileId, HostId, Owner, ScopeId};
use crate::ops::*;
use crate::probe::{self, Probe};
use lockfs_probes::{EventKind as ProbeKind, WaitEndReason};
use smallvec::SmallVec;

/// Files a bulk release changed, to wake their queues once at the end.
type Touched = SmallVec<[FileId; 4]>;

impl LockTable {
    /// Drop every lock and queued request of `owner` on every file.
    pub fn release_owner(&mut self, owner: Owner, how: Release) -> Released {
        let Some(entry) = self.owners.remove(&owner) else {
            return Released::default();
        };
        let mut out = Released::default();
        let mut touched: Touched = SmallVec::new();
        for wid in entry.waiters {
            // The owner's entry is gone already, so only the queue and the
            // waiter map still name the request.
            if let Some(w) = self.remove_waiter(wid) {
                self.end_released_waiter(wid, &w, &mut out, &mut touched);
            }
        }
        for file_id in entry.files.to_vec() {
            self.drop_holdings(file_id, owner, how, &mut out, &mut touched);
        }
        for f in touched {
            self.wake(f);
            self.note_maybe_idle();
        }
        out
    }

    /// Drop `owner`'s locks on one file, leaving its queued requests (the
    /// POSIX rule: any close of the file by the process drops its locks on
    /// that file; another thread's pending F_SETLKW is unaffected, as in
    /// Linux).
    pub fn release_owner_on_file(&mut self, owner: Owner, file_id: FileId) {
        let pid = if probe::all_enabled() {
            self.holder_pid(file_id, &owner)
        } else {
            0
        };
        let Some(f) = self.files.get_mut(&file_id) else {
            return;
        };
        if !f.holdings.holds(&owner) {
            return;
        }
        f.holdings.remove_owner(&owner);
        settle(&mut self.host_segments, &mut f.holdings);
        if probe::all_enabled() {
            Probe::new(ProbeKind::LockReleased, file_id, owner, pid).fire(&self.registry);
        }
        self.forget_owner_file(owner, file_id);
        self.wake(file_id);
        self.note_maybe_idle();
    }

    /// Drop the OFD and flock locks and requests of an open file (its last
    /// close).
    pub fn release_open_file(&mut self, open_file: u64) -> Released {
        let a = self.release_owner(Owner::ofd(open_file), Release::Normal);
        let b = self.release_owner(Owner::flock(open_file), Release::Normal);
        Released {
            files: a.files + b.files,
            waiters: a.waiters + b.waiters,
        }
    }

    /// Drop everything a remote host holds or waits for (NLM FREE_ALL, the
    /// host rebooted, an administrator cleared it), and forget its owners.
    pub fn release_host(&mut self, host: HostId, how: Release) -> Released {
        let owners: Vec<Owner> = self
            .owners
            .keys()
            .filter(|o| o.host == host)
            .copied()
            .collect();
        let mut out = Released::default();
        for o in owners {
            let r = self.release_owner(o, how);
            out.files += r.files;
            out.waiters += r.waiters;
        }
        self.registry.forget_owners(host);
        out
    }

    /// Drop what a remote host holds or waits for on the files of the
    /// given scopes only (its reboot was announced to those service groups),
    /// leaving its locks in other scopes as they are. Its owners are
    /// forgotten only once it holds and waits for nothing anywhere.
    pub fn release_host_in(&mut self, host: HostId, scopes: &[ScopeId], how: Release) -> Released {
        let owners: Vec<Owner> = self
            .owners
            .keys()
            .filter(|o| o.host == host)
            .copied()
            .collect();
        let mut out = Released::default();
        let mut touched: Touched = SmallVec::new();
        let in_scopes = |t: &LockTable, file: FileId| {
            t.files
                .get(&file)
                .is_some_and(|f| scopes.contains(&f.scope))
        };
        for owner in owners {
            let Some(entry) = self.owners.get(&owner) else {
                continue;
            };
            let waiters = entry.waiters.to_vec();
            let files = entry.files.to_vec();
            for wid in waiters {
                let Some(file) = self.waiters.get(&wid).map(|w| w.file) else {
                    continue;
                };
                if !in_scopes(self, file) {
                    continue;
                }
                if let Some(w) = self.remove_waiter(wid) {
                    self.end_released_waiter(wid, &w, &mut out, &mut touched);
                }
            }
            for file_id in files {
                if !in_scopes(self, file_id) {
                    continue;
                }
                self.drop_holdings(file_id, owner, how, &mut out, &mut touched);
                self.forget_owner_file(owner, file_id);
            }
        }
        for f in touched {
            self.wake(f);
            self.note_maybe_idle();
        }
        let still_busy = self
            .owners
            .iter()
            .any(|(o, e)| o.host == host && !e.is_empty());
        if !still_busy {
            self.owners.retain(|o, _| o.host != host);
            self.registry.forget_owners(host);
        }
        out
    }

    /// Tell the door that queued `w` its request ended because its owner's
    /// locks were released.
    fn end_released_waiter(
        &mut self,
        wid: WaiterId,
        w: &Waiter,
        out: &mut Released,
        touched: &mut Touched,
    ) {
        if probe::contention_enabled() {
            self.waiter_probe(wid, w)
                .reason(WaitEndReason::Cancelled)
                .fire(&self.registry);
        }
        self.events.push(Event::Dropped {
            waiter: wid,
            token: w.token,
            file: w.file,
            owner: w.owner,
            reason: DropReason::Released,
        });
        out.waiters += 1;
        if !touched.contains(&w.file) {
            touched.push(w.file);
        }
    }

    /// Drop `owner`'s locks on one file as part of a bulk release; an
    /// abnormal release marks the value block it may have been writing
    /// not-valid.
    fn drop_holdings(
        &mut self,
        file_id: FileId,
        owner: Owner,
        how: Release,
        out: &mut Released,
        touched: &mut Touched,
    ) {
        let pid = if probe::all_enabled() {
            self.holder_pid(file_id, &owner)
        } else {
            0
        };
        let Some(f) = self.files.get_mut(&file_id) else {
            return;
        };
        let had_exclusive = f.holdings.remove_owner(&owner);
        settle(&mut self.host_segments, &mut f.holdings);
        if had_exclusive && how == Release::Abnormal {
            f.invalidate_lvb();
        }
        if probe::all_enabled() {
            Probe::new(ProbeKind::LockReleased, file_id, owner, pid).fire(&self.registry);
        }
        out.files += 1;
        if !touched.contains(&file_id) {
            touched.push(file_id);
        }
    }

    /// Drop every lock and request on the files of a scope (the scope's
    /// service group leaves this node).
    pub fn release_scope(&mut self, scope: ScopeId, how: Release) -> Released {
        let files: Vec<FileId> = self
            .files
            .iter()
            .filter(|(_, f)| f.scope == scope)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Released::default();
        for file_id in files {
            let queued: Vec<WaiterId> = self
                .files
                .get(&file_id)
                .map(|f| f.queue.iter().copied().collect())
                .unwrap_or_default();
            for wid in queued {
                if let Some(w) = self.remove_waiter(wid) {
                    if probe::contention_enabled() {
                        self.waiter_probe(wid, &w)
                            .reason(WaitEndReason::Cancelled)
                            .fire(&self.registry);
                    }
                    self.events.push(Event::Dropped {
                        waiter: wid,
                        token: w.token,
                        file: file_id,
                        owner: w.owner,
                        reason: DropReason::Released,
                    });
                    out.waiters += 1;
                }
            }
            let mut held = Vec::new();
            if probe::all_enabled() {
                if let Some(f) = self.files.get(&file_id) {
                    f.holdings.runs(&mut held);
                }
            }
            let Some(f) = self.files.get_mut(&file_id) else {
                continue;
            };
            let (owners, had_exclusive) = f.holdings.clear();
            settle(&mut self.host_segments, &mut f.holdings);
            if had_exclusive && how == Release::Abnormal {
                f.invalidate_lvb();
            }
            out.files += owners.len();
            for o in owners {
                if probe::all_enabled() {
                    let pid = held.iter().find(|r| r.owner == o).map_or(0, |r| r.pid);
                    Probe::new(ProbeKind::LockReleased, file_id, o, pid).fire(&self.registry);
                }
                self.forget_owner_file(o, file_id);
            }
            self.note_maybe_idle();
        }
        out
    }
}
