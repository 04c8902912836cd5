//! The share-reservation table: who has each file open with which
//! access/deny pair.

use crate::mode::ShareMode;
use lock_table::{FileId, HostId, Owner, ScopeId};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::time::SystemTime;

/// A reservation held on a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub owner: Owner,
    pub mode: ShareMode,
    pub scope: ScopeId,
    /// Process id of a local opener; 0 for remote owners.
    pub pid: u32,
    pub since: SystemTime,
}

/// Ask for a reservation (an open, NLM SHARE).
#[derive(Clone, Copy, Debug)]
pub struct ShareRequest {
    pub file: FileId,
    pub scope: ScopeId,
    pub owner: Owner,
    pub pid: u32,
    pub mode: ShareMode,
}

/// A reservation refused because of an existing one of another owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("share reservation {requested} conflicts with {} held by {:?}", held.mode, held.owner)]
pub struct ShareConflict {
    pub requested: ShareMode,
    pub held: Reservation,
}

/// One row of a listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareInfo {
    pub file: FileId,
    pub reservation: Reservation,
}

type Reservations = SmallVec<[Reservation; 2]>;

/// Tells `lockfs trace` that an open was refused (only called while a tracer
/// asked for contention events; kept out of line so `reserve` stays small).
#[cold]
#[inline(never)]
fn announce_refusal(req: &ShareRequest) {
    use lockfs_probes::{EventKind, LockType, OwnerKind, ProbeEvent};
    let owner_kind = match req.owner.kind {
        lock_table::OwnerKind::Posix => OwnerKind::Posix,
        lock_table::OwnerKind::Ofd => OwnerKind::Ofd,
        lock_table::OwnerKind::Flock => OwnerKind::Flock,
        lock_table::OwnerKind::Nlm | lock_table::OwnerKind::NlmShare => OwnerKind::Nlm,
    };
    // A share mode is no byte-range lock: whole file, exclusive if it asks
    // to write or to deny anything, shared otherwise.
    let exclusive = req.mode.access.writes() || req.mode.deny != crate::ShareDeny::NONE;
    let ev = ProbeEvent::new(EventKind::ShareRefused, req.file.dev, req.file.ino)
        .with_owner(owner_kind, req.pid)
        .with_lock_type(if exclusive {
            LockType::Exclusive
        } else {
            LockType::Shared
        })
        .with_timestamp(lockfs_probes::monotonic_ns());
    lockfs_probes::share_refused(&ev);
}

/// Share reservations of every file. Independent of byte-range locks, as on
/// Windows: a reservation neither takes nor checks a lock.
#[derive(Debug, Default)]
pub struct ShareTable {
    files: FxHashMap<FileId, Reservations>,
}

impl ShareTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// The first reservation of another owner that `mode` conflicts with.
    pub fn check(&self, file: FileId, owner: Owner, mode: ShareMode) -> Option<Reservation> {
        self.files
            .get(&file)?
            .iter()
            .find(|r| r.owner != owner && mode.conflicts_with(&r.mode))
            .copied()
    }

    /// Take a reservation. A second request of the same owner on the same
    /// file replaces its reservation (NLM SHARE semantics), checked only
    /// against other owners; on refusal nothing changes.
    pub fn reserve(&mut self, req: &ShareRequest) -> Result<(), ShareConflict> {
        if let Some(held) = self.check(req.file, req.owner, req.mode) {
            if lockfs_probes::contention_enabled() {
                announce_refusal(req);
            }
            return Err(ShareConflict {
                requested: req.mode,
                held,
            });
        }
        let list = self.files.entry(req.file).or_default();
        let res = Reservation {
            owner: req.owner,
            mode: req.mode,
            scope: req.scope,
            pid: req.pid,
            since: SystemTime::now(),
        };
        match list.iter_mut().find(|r| r.owner == req.owner) {
            Some(r) => *r = res,
            None => list.push(res),
        }
        Ok(())
    }

    /// Drop `owner`'s reservation on `file` (UNSHARE, close). Returns
    /// whether there was one.
    pub fn release(&mut self, file: FileId, owner: Owner) -> bool {
        let Some(list) = self.files.get_mut(&file) else {
            return false;
        };
        let before = list.len();
        list.retain(|r| r.owner != owner);
        let removed = list.len() != before;
        if list.is_empty() {
            self.files.remove(&file);
        }
        removed
    }

    fn release_where(&mut self, pred: impl Fn(&Reservation) -> bool) -> usize {
        let mut n = 0;
        self.files.retain(|_, list| {
            let before = list.len();
            list.retain(|r| !pred(r));
            n += before - list.len();
            !list.is_empty()
        });
        n
    }

    /// Drop every reservation of an owner. Returns how many.
    pub fn release_owner(&mut self, owner: Owner) -> usize {
        self.release_where(|r| r.owner == owner)
    }

    /// Drop the reservation of a local open file (its last close).
    pub fn release_open_file(&mut self, open_file: u64) -> usize {
        self.release_owner(Owner::ofd(open_file))
    }

    /// Drop every reservation of a remote host (FREE_ALL, reboot, clear).
    pub fn release_host(&mut self, host: HostId) -> usize {
        self.release_where(|r| r.owner.host == host)
    }

    /// Drop a host's reservations in the given scopes only (its reboot was
    /// announced to those service groups).
    pub fn release_host_in(&mut self, host: HostId, scopes: &[ScopeId]) -> usize {
        self.release_where(|r| r.owner.host == host && scopes.contains(&r.scope))
    }

    /// Drop every reservation in a scope (its service group fails over).
    pub fn release_scope(&mut self, scope: ScopeId) -> usize {
        self.release_where(|r| r.scope == scope)
    }

    /// Reservations of one file.
    pub fn on_file(&self, file: FileId) -> Vec<Reservation> {
        self.files
            .get(&file)
            .map(|l| l.to_vec())
            .unwrap_or_default()
    }

    /// Every reservation.
    pub fn snapshot(&self) -> Vec<ShareInfo> {
        self.files
            .iter()
            .flat_map(|(file, list)| {
                list.iter().map(|r| ShareInfo {
                    file: *file,
                    reservation: *r,
                })
            })
            .collect()
    }

    /// Number of reservations held.
    pub fn len(&self) -> usize {
        self.files.values().map(|l| l.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}
