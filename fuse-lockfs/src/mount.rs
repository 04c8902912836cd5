//! Mount life cycle: mount, serve, unmount.
//!
//! Two ways to serve a mount: [`mount`] returns a [`MountHandle`] whose request
//! loops run in the background and which unmounts when dropped; [`prepare`] +
//! [`Mounted::run`] serve on the calling thread until the file system is unmounted,
//! with an [`Unmounter`] that another thread (a signal handler thread, say) uses
//! to end it cleanly.

use std::ffi::CString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fuser::{BackgroundSession, Config, MountOption, Session, SessionACL, SessionUnmounter};

use crate::error::{Error, Result};
use crate::fs::{LockFs, Shared};
use crate::inode::FileKey;
use crate::locking::Locking;
use crate::options::MountOptions;
use crate::sys;

/// A counter snapshot of a live mount, for monitoring and leak checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountStats {
    /// Inodes the kernel holds references to (the root included); each costs the
    /// daemon one descriptor.
    pub inodes: usize,
    /// Open regular files.
    pub open_files: usize,
    /// Open regular files served with direct I/O through the daemon.
    pub direct_io_files: usize,
    /// Open directories.
    pub open_dirs: usize,
    /// Whether FUSE passthrough was negotiated with the kernel.
    pub passthrough: bool,
    /// Read and write requests the daemon has served since the mount.
    pub daemon_io_requests: u64,
    /// Of those, reads answered by splicing from the backing file.
    pub spliced_reads: u64,
}

fn stats(shared: &Shared) -> MountStats {
    MountStats {
        inodes: shared.inodes.len(),
        open_files: shared.files.len(),
        direct_io_files: shared
            .files
            .count(|f| f.mode == crate::options::IoMode::DirectIo),
        open_dirs: shared.dirs.len(),
        passthrough: shared
            .passthrough
            .load(std::sync::atomic::Ordering::Relaxed),
        daemon_io_requests: shared.daemon_io.load(std::sync::atomic::Ordering::Relaxed),
        spliced_reads: shared.reads.spliced(),
    }
}

fn config(opts: &MountOptions) -> Result<Config> {
    if opts.n_threads == 0 {
        return Err(Error::Options("n_threads must be at least 1".into()));
    }
    for (what, v) in [("fsname", &opts.fsname), ("subtype", &opts.subtype)] {
        if v.is_empty() || v.contains([',', '\0']) {
            return Err(Error::Options(format!(
                "{what} {v:?} is empty or has ',' or NUL"
            )));
        }
    }
    // As root, fuser calls mount(2) itself and passes only kernel options: the
    // subtype must then be a kernel option to show as `fuse.<subtype>`. Otherwise
    // fusermount3 takes it as a mount option of its own.
    // SAFETY: geteuid cannot fail.
    let subtype = if unsafe { libc::geteuid() } == 0 {
        MountOption::CUSTOM(format!("subtype={}", opts.subtype))
    } else {
        MountOption::Subtype(opts.subtype.clone())
    };
    let mut mount_options = vec![
        MountOption::FSName(opts.fsname.clone()),
        subtype,
        if opts.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    if opts.default_permissions {
        mount_options.push(MountOption::DefaultPermissions);
    }
    if let Some(max_read) = effective_max_read(opts) {
        mount_options.push(MountOption::CUSTOM(format!("max_read={max_read}")));
    }
    let mut cfg = Config::default();
    cfg.mount_options = mount_options;
    cfg.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    cfg.n_threads = Some(opts.n_threads);
    cfg.clone_fd = opts.n_threads > 1;
    Ok(cfg)
}

/// The `max_read` a mount asks for: the one given, or with spliced reads the
/// largest power of two a spliced reply can carry, so that the kernel never
/// sends a read too large for the pipes (which would be copied instead). A
/// power of two keeps a large aligned read in aligned pieces.
fn effective_max_read(opts: &MountOptions) -> Option<u32> {
    if let Some(m) = opts.max_read {
        return Some(m);
    }
    if !opts.splice_read {
        return None;
    }
    let fits = fuser::ReplyData::max_splice_size();
    if fits < 4096 {
        return None;
    }
    let pow2 = 1usize << (usize::BITS - 1 - fits.leading_zeros());
    u32::try_from(pow2).ok()
}

/// A mounted, not yet served lockfs.
pub struct Mounted {
    session: Session<LockFs>,
    shared: Arc<Shared>,
    mountpoint: PathBuf,
    locking: Option<Arc<Locking>>,
}

/// Answers the parked lock and I/O waits of a mount that is going away, so the
/// processes waiting in them go on, close their files and let the session end.
fn end_waits(locking: &Option<Arc<Locking>>) -> usize {
    let Some(lk) = locking else {
        return 0;
    };
    let n = lk.end_waits();
    if n > 0 {
        tracing::info!(waiters = n, "parked lock waits answered ENOLCK");
    }
    n
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounted")
            .field("mountpoint", &self.mountpoint)
            .finish_non_exhaustive()
    }
}

/// Mounts `source` at `mountpoint` without serving requests yet.
///
/// The kernel's INIT handshake is done when this returns; requests are served by
/// [`Mounted::run`] or [`Mounted::spawn`].
pub fn prepare(
    source: impl AsRef<Path>,
    mountpoint: impl AsRef<Path>,
    options: MountOptions,
) -> Result<Mounted> {
    let source = source.as_ref();
    let mountpoint = mountpoint.as_ref().to_path_buf();
    let cfg = config(&options)?;
    let csrc = CString::new(source.as_os_str().as_bytes()).map_err(|_| Error::Source {
        path: source.to_path_buf(),
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    })?;
    // SAFETY: AT_FDCWD is a valid directory handle for *at calls.
    let cwd = unsafe { std::os::fd::BorrowedFd::borrow_raw(libc::AT_FDCWD) };
    // The source itself may be given through a symlink: follow it, once, here.
    let root = sys::openat(cwd, &csrc, libc::O_PATH | libc::O_DIRECTORY, 0).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOTDIR) {
            Error::NotADirectory(source.to_path_buf())
        } else {
            Error::Source {
                path: source.to_path_buf(),
                source: e,
            }
        }
    })?;
    let st = sys::fstat(root.as_fd()).map_err(|e| Error::Source {
        path: source.to_path_buf(),
        source: e,
    })?;
    let locking = if options.forward_locks || options.locks.is_some() {
        let ctx = options.locks.clone().unwrap_or_default();
        let id = ctx.mount_id();
        Some(Arc::new(Locking::new(
            ctx,
            id,
            options.mandatory,
            options.flock,
        )))
    } else {
        None
    };
    if let Some(lk) = locking.as_ref().filter(|_| !options.read_only) {
        // A read-only mount writes nothing to its source, value blocks included.
        lk.lvb.open(root.as_fd(), st.st_dev);
    }
    let fs = LockFs::new(root, &st, &options, locking.clone());
    let shared = fs.shared();
    if let Some(lk) = &locking {
        // Listings show paths under the mount point; they are read from the
        // daemon's descriptors, which name the canonical source path.
        let canonical = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
        let mnt = std::fs::canonicalize(&mountpoint).unwrap_or_else(|_| mountpoint.clone());
        lk.ctx.add_mount(lk.mount, &shared, canonical, mnt);
    }
    let session = Session::new(fs, &mountpoint, &cfg).map_err(|e| Error::Mount {
        path: mountpoint.clone(),
        source: e,
    })?;
    tracing::info!(source = %source.display(), mountpoint = %mountpoint.display(), "lockfs mounted");
    Ok(Mounted {
        session,
        shared,
        mountpoint,
        locking,
    })
}

impl Mounted {
    /// A handle that unmounts from any thread, ending [`Mounted::run`].
    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter {
            inner: Arc::new(Mutex::new(self.session.unmount_callable())),
            mountpoint: self.mountpoint.clone(),
            locking: self.locking.clone(),
        }
    }

    /// Counters of the mount.
    pub fn stats(&self) -> MountStats {
        stats(&self.shared)
    }

    /// Serves requests on this thread until the file system is unmounted (by an
    /// [`Unmounter`], `umount`, or `fusermount3 -u`).
    pub fn run(self) -> Result<()> {
        self.session.run().map_err(Error::Session)
    }

    /// Serves requests in background threads.
    pub fn spawn(self) -> Result<MountHandle> {
        let bg = self.session.spawn().map_err(Error::Session)?;
        Ok(MountHandle {
            bg: Some(bg),
            shared: self.shared,
            mountpoint: self.mountpoint,
            locking: self.locking,
        })
    }
}

/// Mounts `source` at `mountpoint` and serves it in background threads.
pub fn mount(
    source: impl AsRef<Path>,
    mountpoint: impl AsRef<Path>,
    options: MountOptions,
) -> Result<MountHandle> {
    prepare(source, mountpoint, options)?.spawn()
}

/// Mounts `source` at `mountpoint` and serves it on this thread until unmounted.
pub fn run(
    source: impl AsRef<Path>,
    mountpoint: impl AsRef<Path>,
    options: MountOptions,
) -> Result<()> {
    prepare(source, mountpoint, options)?.run()
}

/// A lockfs served in the background; dropping it unmounts.
///
/// Unmounting fails with `EBUSY` while processes have files open on the mount;
/// [`MountHandle::end_waits`] lets processes parked in lock waits go on first.
pub struct MountHandle {
    bg: Option<BackgroundSession>,
    shared: Arc<Shared>,
    mountpoint: PathBuf,
    locking: Option<Arc<Locking>>,
}

impl std::fmt::Debug for MountHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountHandle")
            .field("mountpoint", &self.mountpoint)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Tells the kernel that backing files of a mount changed behind its back (through
/// another door, such as NFS), so that its cached attributes, data and names of them are
/// dropped instead of being served for up to the attribute timeout.
///
/// Deciding and telling are apart: deciding what is stale never waits (it reads the
/// inode table and its request counts, `CacheMarks` in `inode.rs`), while telling writes
/// into `/dev/fuse` and can wait for a lock of the directory held by a local process
/// whose own request waits. A door that must not wait decides at once and has the
/// telling done elsewhere; most changes find nothing to tell: files and names the kernel
/// does not know, and attributes it has not asked for since the last invalidation.
#[derive(Clone)]
pub struct Invalidator {
    notifier: fuser::Notifier,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Invalidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invalidator").finish_non_exhaustive()
    }
}

/// What a name named before a change, as far as the changing door knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Was {
    /// Nothing: the name is new. The kernel caches no negative entries of a lockfs
    /// mount (a failed lookup is answered `ENOENT`, which it looks up again next time),
    /// so a new name has nothing to drop.
    Free,
    /// This file. Only a file the kernel knows can have a name cached for it.
    File(FileKey),
    /// Not known; the name is dropped if the directory is known.
    Unknown,
}

/// One thing the kernel must drop, decided by [`Invalidator`]; [`Stale::tell`] tells it,
/// and may wait.
pub struct Stale {
    notifier: fuser::Notifier,
    what: StaleWhat,
}

enum StaleWhat {
    /// Attributes and data of an inode, with the request count they cover.
    Inode(Arc<crate::inode::Inode>, u64),
    /// A name in a directory.
    Entry(u64, std::ffi::OsString),
}

impl std::fmt::Debug for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.what {
            StaleWhat::Inode(i, _) => f.debug_tuple("Stale::Inode").field(&i.ino).finish(),
            StaleWhat::Entry(d, n) => f.debug_tuple("Stale::Entry").field(d).field(n).finish(),
        }
    }
}

impl Stale {
    /// Tells the kernel; waits while it takes the locks it needs.
    pub fn tell(self) {
        match self.what {
            StaleWhat::Inode(inode, seen) => {
                match self.notifier.inval_inode(fuser::INodeNo(inode.ino), 0, 0) {
                    // Not told: the next change tries again.
                    Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {}
                    // Done, or ENOENT: the kernel forgot the inode, so nothing is cached.
                    _ => inode.cache.told(seen),
                }
            }
            StaleWhat::Entry(dir, name) => {
                let _ = self.notifier.inval_entry(fuser::INodeNo(dir), &name);
            }
        }
    }
}

impl Invalidator {
    fn stale(&self, what: StaleWhat) -> Stale {
        Stale {
            notifier: self.notifier.clone(),
            what,
        }
    }

    /// The attributes and data of `inode`, if the kernel asked about it since it was
    /// last told.
    fn inode_changed(&self, inode: Arc<crate::inode::Inode>, out: &mut Vec<Stale>) {
        if let Some(seen) = inode.cache.unseen_since_told() {
            out.push(self.stale(StaleWhat::Inode(inode, seen)));
        }
    }

    /// The backing file `key` changed (size, times, mode, contents): what of it the
    /// kernel must drop goes into `out`.
    pub fn file_changed(&self, key: FileKey, out: &mut Vec<Stale>) {
        if let Some(inode) = self.shared.inodes.by_key(&key) {
            self.inode_changed(inode, out);
        }
    }

    /// The name `name` in directory `dir` appeared, went away or now names another file;
    /// it named `was` before. What the kernel must drop (the name, the directory's
    /// attributes, the old file's link count) goes into `out`.
    pub fn entry_changed(
        &self,
        dir: FileKey,
        name: &std::ffi::OsStr,
        was: Was,
        out: &mut Vec<Stale>,
    ) {
        // A name is cached only in a directory the kernel knows.
        let Some(d) = self.shared.inodes.by_key(&dir) else {
            return;
        };
        let old = match was {
            Was::File(k) => self.shared.inodes.by_key(&k),
            Was::Free | Was::Unknown => None,
        };
        if old.is_some() || was == Was::Unknown {
            out.push(self.stale(StaleWhat::Entry(d.ino, name.to_os_string())));
        }
        self.inode_changed(d, out);
        // The old file's link count changed.
        if let Some(old) = old {
            self.inode_changed(old, out);
        }
    }
}

impl MountHandle {
    /// Invalidates the kernel's caches of this mount for changes made through other doors;
    /// `None` once the mount is being torn down.
    pub fn invalidator(&self) -> Option<Invalidator> {
        self.bg.as_ref().map(|bg| Invalidator {
            notifier: bg.notifier(),
            shared: self.shared.clone(),
        })
    }

    /// Where the file system is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Counters of the mount.
    pub fn stats(&self) -> MountStats {
        stats(&self.shared)
    }

    /// Answers every lock and I/O wait parked on this mount with `ENOLCK` and
    /// returns how many there were. Unmounting does this first; a caller facing a
    /// busy mount (`EBUSY`: files are still open) can do it to let the waiting
    /// processes go on and close their files.
    pub fn end_waits(&self) -> usize {
        end_waits(&self.locking)
    }

    /// Unmounts and waits for the request loops to finish. Lock and I/O waits
    /// parked on the mount are answered `ENOLCK` first, so their processes go on.
    pub fn unmount(mut self) -> Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<()> {
        if self.bg.is_some() {
            end_waits(&self.locking);
        }
        match self.bg.take() {
            Some(bg) => bg.umount_and_join().map_err(|e| Error::Unmount {
                path: self.mountpoint.clone(),
                source: e,
            }),
            None => Ok(()),
        }
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            tracing::warn!(error = %e, "unmount on drop failed");
        }
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread (and the threads it starts
/// later) and returns the set, for `sigwait`. Call it before any thread starts, so
/// that only the waiting thread sees the signals.
pub fn block_termination() -> libc::sigset_t {
    // SAFETY: an all-zero sigset is initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the calls modify it and this thread's mask.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

/// Waits on a thread of its own for a signal of `set` (see [`block_termination`]),
/// then unmounts with `unmounter`.
pub fn unmount_on_termination(set: libc::sigset_t, unmounter: Unmounter) {
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: `set` is a valid sigset_t and `sig` a valid out-pointer.
        unsafe { libc::sigwait(&set, &mut sig) };
        tracing::info!(signal = sig, "unmounting");
        if let Err(e) = unmounter.unmount() {
            tracing::error!(error = %e, "unmount failed");
        }
    });
}

/// Unmounts a lockfs served by [`Mounted::run`]; cloneable and `Send`, for a
/// thread that waits for SIGTERM/SIGINT.
#[derive(Clone)]
pub struct Unmounter {
    inner: Arc<Mutex<SessionUnmounter>>,
    mountpoint: PathBuf,
    locking: Option<Arc<Locking>>,
}

impl std::fmt::Debug for Unmounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unmounter")
            .field("mountpoint", &self.mountpoint)
            .finish()
    }
}

impl Unmounter {
    /// Unmounts, answering parked lock and I/O waits `ENOLCK` first; a second call
    /// does nothing.
    pub fn unmount(&self) -> Result<()> {
        end_waits(&self.locking);
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unmount()
            .map_err(|e| Error::Unmount {
                path: self.mountpoint.clone(),
                source: e,
            })
    }
}

/// Raises this process's limit on open descriptors as far as the system allows
/// and returns the new (soft) limit.
///
/// Every inode the kernel keeps cached and every open file of the mount costs the
/// daemon one descriptor, so the daemon needs a far higher limit than any one
/// caller: with the limit of its callers, a process opening many files would see
/// the daemon run out first. Both limits are raised to `fs.nr_open` (the most the
/// kernel allows a process); without CAP_SYS_RESOURCE the hard limit cannot rise,
/// and the soft limit is raised to it. Servers call this once at start-up.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok());
    if let Some(max) = nr_open.filter(|&m| m > lim.rlim_max) {
        let wanted = libc::rlimit {
            rlim_cur: max,
            rlim_max: max,
        };
        // SAFETY: `wanted` is a valid, initialised rlimit. Failure (EPERM without
        // CAP_SYS_RESOURCE) leaves the limit unchanged.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
            return Ok(max);
        }
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid, initialised rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}
