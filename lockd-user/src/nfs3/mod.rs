//! The NFS door: NFS version 3 (RFC 1813) and MOUNT versions 1 and 3 on the exports that
//! NLM serves, with the same file handles, so a stock NFS client mounts an export and its
//! locks (sent as NLM) meet local locks in the one table.
//!
//! - [`proto`]: NFSv3 numbers and shared wire structures.
//! - [`args`]: the procedures' arguments, decoded before any of them runs.
//! - [`backing`]: handles to descriptors of the backing directory, and their cache.
//! - [`closer`]: the thread that closes descriptors of removed files, off the door's.
//! - [`identity`]: each operation runs with the caller's uid, gid and groups.
//! - [`gate`]: the one call into the lock table's I/O gate and the share table.
//! - [`ops`]: the 22 procedures.
//! - [`program`]: the RPC program: which procedures run inline and which on the blocking
//!   pool, and the duplicate request cache.
//! - [`service`]: NFS and MOUNT listeners and their registration.
//!
//! The MOUNT program lives in [`crate::mountd`].

pub mod args;
pub mod backing;
pub mod closer;
pub mod gate;
pub mod identity;
pub mod ops;
pub mod program;
pub mod proto;
pub mod service;

pub use identity::Squash;
pub use service::{NfsConfig, NfsService};

/// Told of every change the NFS door makes, so that another door's caches of the same
/// files (the FUSE mount's attributes and names in the kernel) are dropped before the
/// change is answered. Files are named by the backing device and inode.
///
/// A sink decides at once, without waiting, what is stale, and answers it as
/// [`Invalidation`]s to run, which may wait (telling the kernel takes locks a local
/// process may hold while its own request waits). So a change made on the thread that
/// must never wait leaves the telling, and its reply, to another thread, and only when
/// there is something to tell.
pub trait ChangeSink: Send + Sync {
    /// A file's attributes or contents changed.
    fn file_changed(&self, dev: u64, ino: u64, out: &mut Vec<Invalidation>);
    /// A name in a directory appeared, went away or names another file now; `was` is
    /// what it named before.
    fn entry_changed(
        &self,
        dir_dev: u64,
        dir_ino: u64,
        name: &[u8],
        was: Was,
        out: &mut Vec<Invalidation>,
    );
}

/// Something another door must drop from its caches; running it may wait.
pub type Invalidation = Box<dyn FnOnce() + Send>;

/// What a name named before a change (see [`ChangeSink::entry_changed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Was {
    /// Nothing: the change made the name.
    Free,
    /// The file with this device and inode.
    File(u64, u64),
    /// Not known.
    Unknown,
}

/// Which files of an export are under mandatory locking (the export's `mandatory` policy,
/// with the same meaning as on the FUSE mount).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MandatoryMode {
    #[default]
    Off,
    /// Files with set-group-ID on and group-execute off (the System V convention).
    File,
    All,
}

/// How the NFS door serves one export (the export itself, its clients and read-only flag
/// are the [`crate::exports::Export`] NLM uses).
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// The paths MOUNT accepts for the export; the first is the one EXPORT lists.
    pub paths: Vec<String>,
    pub squash: Squash,
    pub mandatory: MandatoryMode,
}
