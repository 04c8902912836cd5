//! lockfs's FUSE front door: a passthrough file system through which local
//! processes open, read, write and lock the files of a source directory.
//!
//! The file system mirrors a *source* directory at a *mount point*. Programs using
//! the mount see the source's files, permissions, owners, xattrs, holes and errno
//! values. Regular files are served in one of two I/O modes chosen per file by an
//! [`IoPolicy`]: FUSE kernel passthrough (the kernel reads and writes the backing
//! file itself, at native speed) or direct I/O through the daemon, where every read,
//! write and truncate can be checked against the lock table.
//!
//! ```no_run
//! use fuse_lockfs::{mount, MountOptions};
//! let handle = mount("/srv/data", "/mnt/data", MountOptions::default())?;
//! // ... the mount is live until the handle is dropped or unmounted.
//! handle.unmount()?;
//! # Ok::<(), fuse_lockfs::Error>(())
//! ```
//!
//! # Requirements
//! The daemon runs as root: it mounts with `mount(2)` directly, needs
//! `CAP_SYS_ADMIN` for passthrough and `CAP_DAC_READ_SEARCH` for hard links, and
//! hands each new file to the calling user. Mounts use `allow_other` and
//! `default_permissions` by default, so the kernel checks permission bits for every
//! user.
//!
//! # Recovering a stale mount
//! If the daemon dies without unmounting (SIGKILL, crash), the mount point answers
//! "Transport endpoint is not connected". Clear it with
//!
//! ```text
//! umount -l MOUNTPOINT        # or: fusermount3 -u MOUNTPOINT
//! ```
//!
//! If processes are stuck in requests of a hung (but running) daemon, writing to
//! `/sys/fs/fuse/connections/<N>/abort` (where `N` is the minor device number of the
//! mount, see `stat -c %d MOUNTPOINT`) fails them all with `ENOTCONN`.
//!
//! # Locks
//! By default the kernel keeps POSIX and flock locks locally, exactly as on any FUSE
//! mount. With [`MountOptions::locks`] (or [`MountOptions::forward_locks`]) the
//! kernel sends them to the daemon, which keeps them in a shared
//! [`lock_table::SharedTable`], where remote NLM clients meet them:
//!
//! - `fcntl` POSIX locks, OFD locks and `flock` with Linux semantics: closing any
//!   descriptor drops the process's POSIX locks on the file; OFD and flock locks
//!   last until the last close of their open file; a forked child inherits no
//!   POSIX locks. How POSIX and OFD requests are told apart (FUSE does not say) is
//!   described in [`owners`]: close and fork semantics never depend on it. The
//!   errno of every refusal is listed in [`locking`].
//! - flock locks live in their own namespace ([`FlockMode::Separate`]) or are
//!   whole-file locks on the real file ([`FlockMode::Shared`]).
//! - Blocking requests never block a request loop: they are parked and answered
//!   by the grant, by `EINTR` when the caller gets a signal (FUSE_INTERRUPT, which
//!   the patched fuser passes on), or `ENOLCK` when the mount ends. SIGKILL of a
//!   waiter reaps it at once. Deadlocks among POSIX owners fail with `EDEADLK`.
//!
//! # Mandatory locking
//! [`MountOptions::mandatory`] ([`Mandatory::File`]: set-group-ID without group
//! execute, the System V mark) serves mandatory files with direct I/O and checks
//! every read, write, truncate, fallocate and copy_file_range against the table: a
//! conflict with another owner's lock fails `EAGAIN` on an `O_NONBLOCK` open and
//! otherwise waits, interruptibly. The caller's own locks (its POSIX owner, or
//! those taken through the open file) never block it. Shared mmap of a mandatory
//! file fails `ENODEV` (any direct-I/O file while mandatory locking is on).
//! An `O_TRUNC` open of a mandatory file another owner has locked waits like a
//! truncate: the kernel opens the file and then truncates it with a `SETATTR`
//! that carries no open file, so not even `O_NONBLOCK` makes it fail (if the
//! kernel ever passes `O_TRUNC` in the `OPEN` itself, the open is refused
//! `EAGAIN` instead, as Linux did; an open does not wait).
//! Files that are not mandatory keep kernel passthrough.
//!
//! A file that becomes mandatory (chmod g+s) while it is open with passthrough
//! keeps those opens unchecked until they are closed; meanwhile new opens fail
//! with `EBUSY`, so no new unchecked I/O can start. Direct-I/O opens follow the
//! mark at once when it changes through the mount.
//!
//! # Set-ID bits
//! The daemon negotiates `FUSE_HANDLE_KILLPRIV_V2` when the kernel offers it.
//! Without it, the kernel cannot mark a FUSE inode as free of set-ID bits and
//! capabilities, and asks the daemon for `security.capability` before every
//! write, a round trip that halved passthrough write throughput. With it, the
//! daemon drops the bits itself, as a local file system would: set-user-ID, and
//! set-group-ID with group execute, go when a caller without `CAP_FSETID` writes
//! or truncates. Files with such bits are therefore opened with direct I/O (the
//! daemon sees their writes); the mandatory mark (set-group-ID without group
//! execute) always stays, as on Linux before 5.15. A file that gains a set-ID bit
//! while it is open with passthrough keeps it through writes of those opens,
//! which the kernel does without asking the daemon.
//!
//! # Share reservations
//! Every open takes a Windows-style access/deny reservation; conflicts fail with
//! `EBUSY`. See [`share`] for the ioctl and the open-time xattr request.
//!
//! # Lock value blocks
//! Every file has a 32-byte value block with DLM semantics, reached through the
//! ioctls of `include/lockfs.h` (see [`lvb`] for who may do what, and what makes a
//! block not-valid) and kept on the export's storage (see [`lvb_store`] for the
//! format and the durability promise).
//!
//! # Several mounts, one table
//! A [`LockContext`] carries the lock table (with its waiter registry, where
//! this door parks its waiting requests) and the share table; mounts get clones of it, so one daemon can serve several mounts and
//! the NLM server over the same tables. [`listing::list`] reads all of it for
//! `lockfs locks`.

mod attr;
mod context;
mod error;
mod fs;
mod handles;
mod inode;
pub mod listing;
pub mod locking;
pub mod lvb;
pub mod lvb_slots;
pub mod lvb_store;
mod mount;
mod options;
pub mod owners;
mod read_reply;
pub mod share;
mod sys;

pub use context::LockContext;
pub use error::{Error, Result};
pub use inode::FileKey;
pub use lvb::{
    LOCKFS_IOC_LVB_GET, LOCKFS_IOC_LVB_INVALIDATE, LOCKFS_IOC_LVB_SET, LVB_ERRNO, LVB_NOTVALID,
    LVB_UNLOCKED,
};
pub use mount::{
    block_termination, mount, prepare, raise_fd_limit, run, unmount_on_termination, Invalidator,
    MountHandle, MountStats, Mounted, Stale, Unmounter, Was,
};
pub use options::{
    is_mandatory_mode, FileAttr, FlockMode, IoMode, IoPolicy, Mandatory, MountOptions,
    OptionValueError,
};
pub use share::{set_share, LOCKFS_IOC_SET_SHARE, SHARE_ERRNO};
