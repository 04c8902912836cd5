//! lockfs's FUSE front door: a passthrough file system through which local
//! processes open, read, write and (soon) lock the files of a source directory.
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
//! mount. [`MountOptions::forward_locks`] asks it to send them to the daemon instead;
//! until the lock table is wired in, those requests are answered `ENOSYS`.

mod attr;
pub mod deferred;
mod error;
mod fs;
mod handles;
mod inode;
mod mount;
mod options;
mod sys;

pub use deferred::{Deferred, FailReply};
pub use error::{Error, Result};
pub use inode::FileKey;
pub use mount::{mount, prepare, raise_fd_limit, run, MountHandle, MountStats, Mounted, Unmounter};
pub use options::{FileAttr, IoMode, IoPolicy, MountOptions};
