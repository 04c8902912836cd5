//! Where NFS I/O meets the lock table and the share table: the one call into the table's
//! I/O gate that the NFS door makes, so that the gate's interface can change in one place.
//!
//! - Share reservations: a WRITE (or a size change) meets another owner's deny-write
//!   reservation, a READ another owner's deny-read one (a local open with a deny mode, an
//!   NLM SHARE of another host). The answer is NFS3ERR_ACCES: a reservation lasts as long
//!   as the open that made it, so retrying soon would only repeat the refusal.
//! - Mandatory locks: on a mandatory file, READ, WRITE and a size-changing SETATTR pass
//!   [`lock_table::SharedTable::begin_io`] without waiting. The owner is the calling client
//!   host, named by its AUTH_SYS machine name as its NLM calls name it (`caller_name`). A
//!   conflicting request is not executed and answered NFS3ERR_JUKEBOX: the client keeps the
//!   request and retries it after a delay, as a local read or write waits for the lock;
//!   NFS3ERR_ACCES would end the application's write with EACCES although the lock is
//!   usually gone a moment later. The admitted I/O holds its [`IoPass`] until it is done.
//!
//! Known limit: the gate compares the host's request with single lock owners, so a lock
//! that another process of the same client host holds on the range still counts as a
//! conflict; making every owner of a host count as the host's own belongs to the table.

use super::proto::Stat;
use crate::lockd::Lockd;
use lock_table::{Access, FileId, HostId, IoPass, Owner, OwnerKind, Range};
use share_reservations::{ShareAccess, ShareDeny, ShareMode};

/// Stands for "this request's own I/O" in the table: it owns no lock.
const NFS_IO_OWNER: u64 = u64::MAX;

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
    let host = host_of(lockd, machine);
    let wants = match access {
        Access::Read => ShareMode::new(ShareAccess::READ, ShareDeny::NONE),
        Access::Write => ShareMode::new(ShareAccess::WRITE, ShareDeny::NONE),
    };
    let refused = lockd
        .shares
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .on_file(file)
        .iter()
        .any(|r| Some(r.owner.host) != host && wants.conflicts_with(&r.mode));
    if refused {
        return Err(Stat::Acces);
    }
    if !mandatory {
        return Ok(None);
    }
    let owner = Owner {
        kind: OwnerKind::Nlm,
        host: host.unwrap_or(HostId(u32::MAX)),
        id: NFS_IO_OWNER,
    };
    lockd
        .table
        .begin_io(file, owner, None, &[(access, range)])
        .map(Some)
        .map_err(|_| Stat::Jukebox)
}
