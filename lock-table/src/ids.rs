//! Identities the table keys everything by: files, scopes, hosts and lock owners.
//!
//! They are small `Copy` values so that the hot path hashes and compares a few
//! machine words. Variable-length identities (a remote host's name, an NLM
//! owner handle) are interned by [`crate::registry::Registry`] into these ids.

use serde::{Deserialize, Serialize};

/// A lockable file: the device and inode number of the file an export serves,
/// and the namespace of locks on it.
///
/// Front doors that cannot name a file by device and inode (a synthetic
/// export, a test) may use any stable pair, for example an export id as `dev`
/// and an id local to that export as `ino`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    /// Which of the file's lock namespaces; absent in listings for the usual one.
    #[serde(default, skip_serializing_if = "Namespace::is_fcntl")]
    pub ns: Namespace,
}

impl FileId {
    /// A file's locks in the usual namespace.
    pub const fn new(dev: u64, ino: u64) -> Self {
        FileId {
            dev,
            ino,
            ns: Namespace::Fcntl,
        }
    }

    /// The same file in namespace `ns`.
    pub const fn in_namespace(self, ns: Namespace) -> Self {
        FileId { ns, ..self }
    }
}

/// The lock namespaces of one file. As on Linux, `flock` locks may live apart
/// from byte-range locks: they never conflict with each other.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[repr(u8)]
pub enum Namespace {
    /// POSIX, OFD and NLM byte-range locks (and flock locks when they share
    /// the byte-range namespace, as NFS clients' flock does).
    #[default]
    Fcntl = 0,
    /// `flock` locks kept in a namespace of their own. No remote client can
    /// reach it, so no grace period applies there.
    Flock = 1,
}

impl Namespace {
    pub fn is_fcntl(&self) -> bool {
        *self == Namespace::Fcntl
    }
}

/// A scope: the service group an export belongs to. Grace periods and bulk
/// release by failover work per scope, so one group's recovery never touches
/// another's locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ScopeId(pub u32);

impl ScopeId {
    /// The scope of exports that name no service group.
    pub const DEFAULT: ScopeId = ScopeId(0);
    /// A scope no grace period covers, for lock namespaces only local programs
    /// use (lockfs's separate flock namespace): no remote client can reclaim
    /// anything there, so nothing there waits for reclaims.
    pub const LOCAL_ONLY: ScopeId = ScopeId(u32::MAX);
}

/// A host that owns locks. [`HostId::LOCAL`] is this machine (FUSE callers);
/// remote NLM clients get ids from [`crate::registry::Registry::host`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostId(pub u32);

impl HostId {
    pub const LOCAL: HostId = HostId(0);
}

/// What kind of entity owns a lock; it decides how the owner is released and
/// whether it takes part in deadlock detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum OwnerKind {
    /// A traditional POSIX (fcntl F_SETLK) owner: a process's file table,
    /// as FUSE's `lock_owner` names it. Released when the process closes any
    /// descriptor of the file.
    Posix = 0,
    /// An open file description (OFD lock, F_OFD_SETLK): released when the
    /// last descriptor of that open file is closed.
    Ofd = 1,
    /// A flock(2) owner: also an open file description, but flock locks live
    /// in their own namespace unless the front door maps them onto the shared
    /// byte-range space.
    Flock = 2,
    /// A remote NLM lock owner: (client host, svid, owner handle).
    Nlm = 3,
    /// A remote NLM share owner: (client host, owner handle). NLM SHARE names
    /// no svid, so share owners are distinct from lock owners.
    NlmShare = 4,
}

impl OwnerKind {
    /// Whether requests of this kind take part in deadlock detection.
    ///
    /// As in Linux, OFD and flock owners do not: an open file description can
    /// be shared by several processes, so "what it waits for" is not a
    /// property of one owner.
    pub fn detects_deadlock(self) -> bool {
        matches!(self, OwnerKind::Posix | OwnerKind::Nlm)
    }
}

/// The owner of a lock, a waiter or a share reservation.
///
/// `id` is the FUSE `lock_owner` for POSIX owners, the open-file handle for
/// OFD and flock owners, and an interned number for NLM owners. `host` is
/// [`HostId::LOCAL`] for local owners.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Owner {
    pub kind: OwnerKind,
    pub host: HostId,
    pub id: u64,
}

impl Owner {
    /// A local POSIX owner named by FUSE's `lock_owner`.
    pub const fn posix(lock_owner: u64) -> Self {
        Owner {
            kind: OwnerKind::Posix,
            host: HostId::LOCAL,
            id: lock_owner,
        }
    }

    /// A local open file description (OFD locks, and a local open's share
    /// reservation), named by the front door's file handle.
    pub const fn ofd(open_file: u64) -> Self {
        Owner {
            kind: OwnerKind::Ofd,
            host: HostId::LOCAL,
            id: open_file,
        }
    }

    /// A local flock(2) owner, named by the front door's file handle.
    pub const fn flock(open_file: u64) -> Self {
        Owner {
            kind: OwnerKind::Flock,
            host: HostId::LOCAL,
            id: open_file,
        }
    }

    /// The open-file handle when this owner is an open file (OFD or flock).
    pub fn open_file(&self) -> Option<u64> {
        match self.kind {
            OwnerKind::Ofd | OwnerKind::Flock if self.host == HostId::LOCAL => Some(self.id),
            _ => None,
        }
    }

    pub fn is_remote(&self) -> bool {
        self.host != HostId::LOCAL
    }

    /// Every lock owner of one client host at once: the owner of I/O from a
    /// door that knows the calling host but not the process (an NFS READ or
    /// WRITE carries no lock owner). The client enforces locks among its own
    /// processes, so for such I/O a lock of any process of the host is its own.
    pub const fn nlm_host(host: HostId) -> Self {
        Owner {
            kind: OwnerKind::Nlm,
            host,
            id: Self::WHOLE_HOST,
        }
    }

    /// The id of [`Owner::nlm_host`]; interned NLM owner ids count up from
    /// zero and never reach it.
    pub const WHOLE_HOST: u64 = u64::MAX;

    /// Whether `other`'s locks count as this owner's own: the same owner, or
    /// any NLM owner of the host this whole-host owner stands for.
    #[inline]
    pub fn covers(&self, other: &Owner) -> bool {
        *self == *other
            || (self.id == Self::WHOLE_HOST
                && self.kind == OwnerKind::Nlm
                && other.kind == OwnerKind::Nlm
                && self.host == other.host)
    }
}

/// The two lock types of POSIX and NLM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LockKind {
    /// A read lock (F_RDLCK, NLM `exclusive = false`).
    Shared,
    /// A write lock (F_WRLCK, NLM `exclusive = true`).
    Exclusive,
}

impl LockKind {
    /// Two locks of different owners conflict unless both are shared.
    #[inline]
    pub fn conflicts_with(self, other: LockKind) -> bool {
        self == LockKind::Exclusive || other == LockKind::Exclusive
    }
}

/// The kind of I/O a mandatory-lock check is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Access {
    /// A read meets other owners' exclusive locks.
    Read,
    /// A write or truncate meets any lock of another owner.
    Write,
}

impl Access {
    /// The lock kind whose conflict rules this access follows.
    pub fn as_lock_kind(self) -> LockKind {
        match self {
            Access::Read => LockKind::Shared,
            Access::Write => LockKind::Exclusive,
        }
    }
}
