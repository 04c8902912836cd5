//! Where NFS I/O meets the lock table and the share table: the one call into the table's
//! I/O gate that the NFS door makes, so that the gate's interface can change in one place.
//!
//! - Share reservations: a WRITE (or a size change) meets another owner's deny-write
//!   reservation, a READ another owner's deny-read one (a local open with a deny mode, an
//!   NLM SHARE of another host). The answer is NFS3ERR_ACCES: a reservation lasts as long
//!   as the open that made it, so retrying soon would only repeat the refusal.
//! - Mandatory locks: on a mandatory file, READ, WRITE and a size change (SETATTR, or
//!   CREATE in UNCHECKED mode with a size over an existing file) pass
//!   the table's gate ([`lock_table::SharedTable::admit`]) without waiting. The owner is the
//!   calling client host as a whole ([`Owner::nlm_host`]), named by its AUTH_SYS machine
//!   name as its NLM calls name it (`caller_name`): a lock of any process of that host is
//!   its own, since the client enforces locks among its own processes. A
//!   conflicting request is not executed and answered NFS3ERR_JUKEBOX: the client keeps the
//!   request and retries it after a delay, as a local read or write waits for the lock;
//!   NFS3ERR_ACCES would end the application's write with EACCES although the lock is
//!   usually gone a moment later. The admitted I/O holds its [`IoPass`] until it is done.

use super::proto::Stat;
use crate::lockd::Lockd;
use lock_table::{Access, FileId, GateRequest, HostId, IoPass, Owner, Range};
use share_reservations::{ShareAccess, ShareDeny, ShareMode};

/// The registered id of a client host, if it ever locked or shared anything here.
fn host_of(lockd: &Lockd, machine: Option<&str>) -> Option<HostId> {
    let m = machine?;
    lockd.table.read(|t| t.registry().find_host(m))
}

/// May this I/O of client `machine` run now? `Ok(Some(pass))` keeps a mandatory-file I/O
/// admitted until the pass is dropped; `Ok(None)`: nothing to hold.
pub fn admit_io(
    lockd: &Lockd,
    file: FileId,
    machine: Option<&str>,
    access: Access,
    range: Range,
    mandatory: bool,
) -> Result<Option<IoPass>, Stat> {
    let wants = match access {
        Access::Read => ShareMode::new(ShareAccess::READ, ShareDeny::NONE),
        Access::Write => ShareMode::new(ShareAccess::WRITE, ShareDeny::NONE),
    };
    // The hosts whose reservations this I/O meets; most files have none, and then
    // the calling host need not be looked up in the table at all.
    let meets: Vec<HostId> = lockd
        .shares
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .on_file(file)
        .iter()
        .filter(|r| wants.conflicts_with(&r.mode))
        .map(|r| r.owner.host)
        .collect();
    if meets.is_empty() && !mandatory {
        return Ok(None);
    }
    let host = host_of(lockd, machine);
    if meets.iter().any(|h| Some(*h) != host) {
        return Err(Stat::Acces);
    }
    if !mandatory {
        return Ok(None);
    }
    // A host that never locked anything here holds no lock to count as its own.
    let owner = Owner::nlm_host(host.unwrap_or(HostId(u32::MAX)));
    let req = GateRequest::new(file, owner, None, 0).touching(access, range);
    lockd.table.admit(&req).map(Some).map_err(|_| Stat::Jukebox)
}
