//! Reading the table: listings for `lockfs locks`, per-file views and
//! counters.

use super::LockTable;
use crate::ids::{FileId, HostId, Owner, OwnerKind};
use crate::ops::*;
use crate::snapshot::{LockInfo, LockState};

impl LockTable {
    /// Every held lock and queued request.
    pub fn snapshot(&self) -> Vec<LockInfo> {
        let mut out = Vec::new();
        let mut runs = Vec::new();
        let info = |owner: Owner| {
            let host = self.registry.host_name(owner.host).map(str::to_owned);
            host
        };
        for (&file_id, f) in &self.files {
            runs.clear();
            f.holdings.runs(&mut runs);
            for run in &runs {
                out.push(LockInfo {
                    file: file_id,
                    scope: f.scope,
                    owner: run.owner,
                    host: info(run.owner),
                    pid: run.pid,
                    kind: run.kind,
                    range: run.range,
                    state: LockState::Held,
                    since: self.wall(run.since),
                });
            }
            for id in &f.queue {
                if let Some(w) = self.waiters.get(id) {
                    out.push(LockInfo {
                        file: file_id,
                        scope: f.scope,
                        owner: w.owner,
                        host: info(w.owner),
                        pid: w.pid,
                        kind: w.kind,
                        range: w.range,
                        state: LockState::Waiting {
                            waiter: *id,
                            io: w.waits_for == WaitFor::Io,
                        },
                        since: self.wall(w.since),
                    });
                }
            }
        }
        out
    }

    /// Held locks of one file in normal form, ordered by start.
    pub fn held_on(&self, file: FileId) -> Vec<Holding> {
        let mut runs = Vec::new();
        if let Some(f) = self.files.get(&file) {
            f.holdings.runs(&mut runs);
        }
        runs.into_iter().map(|r| self.holding(r)).collect()
    }

    /// Queued requests of one file in FIFO order.
    pub fn queued_on(&self, file: FileId) -> Vec<WaiterId> {
        self.files
            .get(&file)
            .map(|f| f.queue.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Number of files with any state (held locks, waiters or a value
    /// block).
    pub fn file_count(&self) -> usize {
        self.files.values().filter(|f| !f.is_idle()).count()
    }

    /// Lock segments the owners of `host` hold over all files: at least the number of
    /// their locks, more where other owners' locks cut a lock into pieces. What the
    /// table's memory grows with, so what a per-client limit should count.
    /// Local owners are not counted (always 0).
    pub fn host_segments(&self, host: HostId) -> u64 {
        self.host_segments
            .get(host.0 as usize)
            .copied()
            .unwrap_or(0)
    }

    /// Number of queued requests.
    pub fn waiter_count(&self) -> usize {
        self.waiters.len()
    }

    /// Whether `owner` holds anything anywhere.
    pub fn owner_holds(&self, owner: &Owner) -> bool {
        !self.owner_holds_nothing(owner)
    }

    /// Remote (NLM) hosts holding a lock that a queued request of another owner
    /// conflicts with: the holders somebody is waiting for. Visits only the files
    /// with waiters.
    pub fn hosts_blocking_waiters(&self) -> Vec<HostId> {
        let mut out = Vec::new();
        let mut runs = Vec::new();
        for w in self.waiters.values() {
            let Some(f) = self.files.get(&w.file) else {
                continue;
            };
            runs.clear();
            f.holdings.runs(&mut runs);
            for r in &runs {
                if r.owner.kind == OwnerKind::Nlm
                    && r.owner != w.owner
                    && r.range.overlaps(&w.range)
                    && r.kind.conflicts_with(w.kind)
                    && !out.contains(&r.owner.host)
                {
                    out.push(r.owner.host);
                }
            }
        }
        out
    }
}
