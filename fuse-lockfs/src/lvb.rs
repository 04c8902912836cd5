//! Lock value blocks on the mount: the ioctls of `include/lockfs.h`, and the
//! not-valid marks FUSE alone can see (a process that dies holding an
//! exclusive lock).
//!
//! # ioctls
//! All three take `struct lockfs_lvb` (48 bytes: the 32-byte value, the
//! sequence number, flags) and answer the block as it is afterwards.
//!
//! | request | who may | errno |
//! |---|---|---|
//! | [`LOCKFS_IOC_LVB_GET`] | anyone who can open the file; flag [`LVB_UNLOCKED`] if the caller holds no lock on it | |
//! | [`LOCKFS_IOC_LVB_SET`] | a caller whose owner holds an exclusive lock on the file | `EPERM` otherwise |
//! | [`LOCKFS_IOC_LVB_INVALIDATE`] | the same | `EPERM` otherwise |
//!
//! The caller's owners are the POSIX owner of its process (a POSIX lock on
//! the file whose process id is the caller's), and the OFD and flock owners
//! of the open file the ioctl is issued on; an exclusive lock of any of them,
//! on any byte range, lets it write. Another process's locks never do, not
//! even through an inherited descriptor, except OFD and flock locks, which
//! belong to the open file.
//!
//! Other errors: `EOPNOTSUPP` if the export's storage cannot keep blocks (no
//! `trusted.` extended attributes) or the mount is read-only, the storage's
//! own errno if a store fails (creating the store file or a file's marker;
//! nothing changed then), `EWOULDBLOCK` on a second mount of a source whose
//! store another mount holds, `ENOTTY` on a mount whose locks the kernel keeps.
//!
//! # Not-valid marks
//! Besides an explicit invalidate, and the lock table's own marks for remote
//! hosts released abnormally, a block becomes not-valid when a local process
//! loses an exclusive lock by dying: its `FLUSH` comes from a task with
//! `PF_EXITING` set in `/proc/<pid>/stat` (a SIGKILL, or an exit with the lock
//! held). A `RELEASE` carries no process id, so for OFD and flock locks the
//! open file remembers whether its last `FLUSH` came from an exiting task, and
//! its `RELEASE` counts as a loss if so. An unlock or a close by a live
//! process never invalidates.
//!
//! Remote NLM clients have no way to reach value blocks: NLM has no field for
//! one. Their exclusive locks still protect the block, and losing such a
//! client abnormally (reboot, `lockfs clear --host`, the unreachable-host
//! policy) marks it not-valid.

use std::io;
use std::sync::{Mutex, MutexGuard, OnceLock};

use fuser::{Errno, ReplyIoctl};
use lock_table::{FileId, LvbError, LvbValue, Owner, OwnerKind, LVB_LEN};
use rustc_hash::FxHashSet;

use crate::fs::Shared;
use crate::handles::OpenFile;
use crate::locking::{flock_file_id, Locking};
use crate::lvb_store::{Blocks, Epoch, Record};
use crate::options::FlockMode;
use std::os::fd::{AsFd, BorrowedFd};

/// Size of `struct lockfs_lvb`.
pub const LVB_ARG_LEN: u32 = 48;

/// `_IOR('S', 2, struct lockfs_lvb)`: read the block.
pub const LOCKFS_IOC_LVB_GET: u32 = ioc(2, b'S', 2, LVB_ARG_LEN);
/// `_IOWR('S', 3, struct lockfs_lvb)`: write the value, answer the new block.
pub const LOCKFS_IOC_LVB_SET: u32 = ioc(3, b'S', 3, LVB_ARG_LEN);
/// `_IOR('S', 4, struct lockfs_lvb)`: mark the block not-valid.
pub const LOCKFS_IOC_LVB_INVALIDATE: u32 = ioc(2, b'S', 4, LVB_ARG_LEN);

/// Flag: the block is not-valid (the DLM's VALNOTVALID): a writer was lost
/// or it was invalidated; the value is the last one stored.
pub const LVB_NOTVALID: u32 = 1;
/// Flag: read without holding any lock on the file; the value may change at
/// any moment.
pub const LVB_UNLOCKED: u32 = 2;

/// The errno of a set or invalidate by a caller without an exclusive lock.
pub const LVB_ERRNO: i32 = libc::EPERM;

const fn ioc(dir: u32, ty: u8, nr: u8, size: u32) -> u32 {
    // Linux asm-generic ioctl encoding: dir(2) size(14) type(8) nr(8).
    (dir << 30) | (size << 16) | ((ty as u32) << 8) | nr as u32
}

/// A block as the ioctls carry it.
pub fn encode_arg(v: &LvbValue, unlocked: bool) -> [u8; LVB_ARG_LEN as usize] {
    let mut b = [0u8; LVB_ARG_LEN as usize];
    b[..LVB_LEN].copy_from_slice(&v.bytes);
    b[32..40].copy_from_slice(&v.seq.to_ne_bytes());
    let mut flags = 0;
    if !v.valid {
        flags |= LVB_NOTVALID;
    }
    if unlocked {
        flags |= LVB_UNLOCKED;
    }
    b[40..44].copy_from_slice(&flags.to_ne_bytes());
    b
}

/// `(value, seq, flags)` of an ioctl answer.
pub fn decode_arg(b: &[u8]) -> Option<([u8; LVB_LEN], u64, u32)> {
    if b.len() < LVB_ARG_LEN as usize {
        return None;
    }
    let mut v = [0u8; LVB_LEN];
    v.copy_from_slice(&b[..LVB_LEN]);
    let seq = u64::from_ne_bytes(b[32..40].try_into().ok()?);
    let flags = u32::from_ne_bytes(b[40..44].try_into().ok()?);
    Some((v, seq, flags))
}

/// A block as a program reads it through the ioctls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reading {
    pub value: [u8; LVB_LEN],
    pub seq: u64,
    /// False: VALNOTVALID (see [`LVB_NOTVALID`]).
    pub valid: bool,
    /// Read without holding a lock on the file (see [`LVB_UNLOCKED`]).
    pub unlocked: bool,
}

fn call(fd: BorrowedFd<'_>, cmd: u32, value: Option<&[u8]>) -> io::Result<Reading> {
    let mut arg = [0u8; LVB_ARG_LEN as usize];
    if let Some(v) = value {
        if v.len() > LVB_LEN {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        arg[..v.len()].copy_from_slice(v);
    }
    // SAFETY: `arg` is a writable buffer of the size encoded in `cmd`.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            cmd as libc::c_ulong,
            arg.as_mut_ptr(),
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    let (value, seq, flags) = decode_arg(&arg).ok_or(io::ErrorKind::InvalidData)?;
    Ok(Reading {
        value,
        seq,
        valid: flags & LVB_NOTVALID == 0,
        unlocked: flags & LVB_UNLOCKED != 0,
    })
}

/// Reads the value block of the file behind `fd` (on a lockfs mount).
pub fn get(fd: BorrowedFd<'_>) -> io::Result<Reading> {
    call(fd, LOCKFS_IOC_LVB_GET, None)
}

/// Writes `value` (at most 32 bytes, zero-padded) as the file's value block;
/// the caller must hold an exclusive lock on it (else `EPERM`).
pub fn set(fd: BorrowedFd<'_>, value: &[u8]) -> io::Result<Reading> {
    call(fd, LOCKFS_IOC_LVB_SET, Some(value))
}

/// Marks the file's value block not-valid; the caller must hold an exclusive
/// lock on it (else `EPERM`).
pub fn invalidate(fd: BorrowedFd<'_>) -> io::Result<Reading> {
    call(fd, LOCKFS_IOC_LVB_INVALIDATE, None)
}

/// The value-block state of one mount.
#[derive(Default)]
pub(crate) struct LvbDoor {
    /// The export's epoch; unset when its storage cannot keep blocks.
    epoch: OnceLock<Epoch>,
    /// The export's device, whose files' blocks this mount stores.
    dev: OnceLock<u64>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Files whose stored block is in the table.
    loaded: FxHashSet<FileId>,
    /// Open files whose last `FLUSH` came from an exiting task.
    closed_by_exit: FxHashSet<u64>,
    /// The export's stored blocks; unset with the epoch.
    blocks: Option<Blocks>,
}

impl std::fmt::Debug for LvbDoor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LvbDoor")
            .field("epoch", &self.epoch.get().map(Epoch::current))
            .finish_non_exhaustive()
    }
}

enum Op {
    Get,
    Set,
    Invalidate,
}

impl Op {
    fn of(cmd: u32) -> Option<Op> {
        match cmd {
            LOCKFS_IOC_LVB_GET => Some(Op::Get),
            LOCKFS_IOC_LVB_SET => Some(Op::Set),
            LOCKFS_IOC_LVB_INVALIDATE => Some(Op::Invalidate),
            _ => None,
        }
    }
}

fn os_errno(e: &io::Error) -> Errno {
    match e.raw_os_error() {
        Some(n) if n > 0 => Errno::from_i32(n),
        _ => Errno::EIO,
    }
}

/// Whether task `pid` is exiting (or already gone): `PF_EXITING` in the flags
/// field of `/proc/<pid>/stat`.
pub(crate) fn task_exiting(pid: u32) -> bool {
    const PF_EXITING: u64 = 0x4;
    if pid == 0 {
        return false;
    }
    let stat = match std::fs::read(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        // Gone: whatever it held was dropped on behalf of a dead task.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
        Err(_) => return false,
    };
    stat_flags(&stat).is_some_and(|f| f & PF_EXITING != 0)
}

/// The flags field (the 9th) of a `/proc/<pid>/stat` line. The command name
/// (2nd field) may hold spaces and parentheses, so fields are counted from the
/// last `)`.
fn stat_flags(stat: &[u8]) -> Option<u64> {
    let close = stat.iter().rposition(|&c| c == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    rest.split_ascii_whitespace().nth(6)?.parse().ok()
}

/// The thread group (process) id of task `tid`.
fn tgid_of(tid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

impl LvbDoor {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the export's epoch (see [`lvb_store`]); on storage without
    /// `trusted.` xattrs value blocks are refused and the mount goes on.
    pub(crate) fn open(&self, root: BorrowedFd<'_>, dev: u64) {
        let _ = self.dev.set(dev);
        match Blocks::open(root, dev).and_then(|b| Ok((b, Epoch::begin(root)?))) {
            Ok((b, e)) => {
                self.inner().blocks = Some(b);
                let _ = self.epoch.set(e);
            }
            Err(e) => {
                tracing::warn!(error = %e, "the export cannot keep lock value blocks (no trusted xattrs?)");
            }
        }
    }

    fn epoch(&self) -> Result<u64, Errno> {
        self.epoch
            .get()
            .map(Epoch::current)
            .ok_or(Errno::from_i32(libc::EOPNOTSUPP))
    }

    /// The file's block, loading it from storage the first time.
    fn loaded(
        &self,
        lk: &Locking,
        inner: &mut Inner,
        id: FileId,
        fd: BorrowedFd<'_>,
    ) -> Result<LvbValue, Errno> {
        let epoch = self.epoch()?;
        if inner.loaded.contains(&id) {
            if let Some(v) = lk.ctx.table.read(|t| t.lvb_block(id)) {
                return Ok(v);
            }
        }
        let blocks = inner
            .blocks
            .as_mut()
            .ok_or(Errno::from_i32(libc::EOPNOTSUPP))?;
        let stored = blocks
            .load(fd, id.dev, id.ino)
            .map_err(|e| os_errno(&e))?
            .map_or_else(LvbValue::default, |r| r.as_of(epoch));
        let scope = lk.ctx.scope;
        let v = lk.ctx.table.with(|t| t.lvb_load(id, scope, stored));
        inner.loaded.insert(id);
        Ok(v)
    }

    /// Stores `value` for the file, then puts it in the table.
    fn commit(
        &self,
        lk: &Locking,
        inner: &mut Inner,
        id: FileId,
        fd: BorrowedFd<'_>,
        value: LvbValue,
    ) -> Result<(), Errno> {
        let epoch = self.epoch()?;
        inner
            .blocks
            .as_mut()
            .ok_or(Errno::from_i32(libc::EOPNOTSUPP))?
            .store(fd, id.dev, id.ino, &Record { value, epoch })
            .map_err(|e| os_errno(&e))?;
        let scope = lk.ctx.scope;
        lk.ctx.table.with(|t| t.lvb_put(id, scope, value));
        Ok(())
    }

    /// A lock on `file` was lost abnormally: mark its block not-valid, in the
    /// table at once and on storage as far as possible.
    fn lost(&self, lk: &Locking, file: &OpenFile) {
        let id = file.file_id;
        let scope = lk.ctx.scope;
        lk.ctx.table.with(|t| t.lvb_lost(id, scope));
        let mut inner = self.inner();
        let r = self
            .loaded(lk, &mut inner, id, file.fd.as_fd())
            .and_then(|v| self.commit(lk, &mut inner, id, file.fd.as_fd(), v.invalidated()));
        if let Err(e) = r {
            tracing::warn!(error = ?e, "could not store a not-valid value block");
        }
        tracing::debug!(
            dev = id.dev,
            ino = id.ino,
            "value block not-valid: a holder died"
        );
    }
}

/// The owners that act for the caller through open file `file` (handle `fh`)
/// of task `pid`, each with the table file its locks live on.
fn claims(lk: &Locking, file: &OpenFile, fh: u64, pid: u32) -> Vec<(FileId, Owner)> {
    let id = file.file_id;
    let flock_id = match lk.flock {
        FlockMode::Separate => flock_file_id(id),
        FlockMode::Shared => id,
    };
    let mut c = vec![(id, Owner::ofd(fh)), (flock_id, Owner::flock(fh))];
    // POSIX locks carry the process id of their taker (the kernel sends the
    // thread group id); the ioctl carries the calling thread's id.
    let posix: Vec<(Owner, u32)> = lk.ctx.table.read(|t| {
        t.held_on(id)
            .into_iter()
            .filter(|h| h.owner.kind == OwnerKind::Posix && !h.owner.is_remote())
            .map(|h| (h.owner, h.pid))
            .collect()
    });
    if posix.is_empty() {
        return c;
    }
    let mut mine: Vec<Owner> = posix
        .iter()
        .filter(|(_, p)| *p == pid)
        .map(|(o, _)| *o)
        .collect();
    if mine.is_empty() {
        if let Some(tgid) = tgid_of(pid).filter(|t| *t != pid) {
            mine = posix
                .iter()
                .filter(|(_, p)| *p == tgid)
                .map(|(o, _)| *o)
                .collect();
        }
    }
    for o in mine {
        if !c.contains(&(id, o)) {
            c.push((id, o));
        }
    }
    c
}

/// The owners whose locks a `RELEASE` of open file `fh` drops: its OFD and
/// flock owners, and lock owner values used through it that never showed up
/// as a process's POSIX owner (OFD locks taken before that was known).
fn open_file_owners(
    lk: &Locking,
    file: &OpenFile,
    fh: u64,
    except: Option<u64>,
) -> Vec<(FileId, Owner)> {
    let id = file.file_id;
    let flock_id = match lk.flock {
        FlockMode::Separate => flock_file_id(id),
        FlockMode::Shared => id,
    };
    let mut c = vec![(id, Owner::ofd(fh)), (flock_id, Owner::flock(fh))];
    for l in file.lock_owners() {
        if Some(l) != except && !lk.owners.is_known_posix(l) {
            c.push((id, Owner::posix(l)));
        }
    }
    c
}

fn lvb_errno(e: LvbError) -> Errno {
    match e {
        LvbError::NotHeld | LvbError::NotExclusive => Errno::from_i32(LVB_ERRNO),
        LvbError::TooLong { .. } => Errno::EINVAL,
    }
}

/// Serves a value-block ioctl, or hands `reply` back if `cmd` is not one.
pub(crate) fn ioctl(
    locking: Option<&Locking>,
    file: Result<std::sync::Arc<OpenFile>, Errno>,
    fh: u64,
    pid: u32,
    cmd: u32,
    in_data: &[u8],
    reply: ReplyIoctl,
) -> Option<ReplyIoctl> {
    let (Some(lk), Some(op)) = (locking, Op::of(cmd)) else {
        return Some(reply);
    };
    match file.and_then(|f| serve(lk, op, &f, fh, pid, in_data)) {
        Ok(out) => reply.ioctl(0, &out),
        Err(e) => reply.error(e),
    }
    None
}

fn serve(
    lk: &Locking,
    op: Op,
    file: &OpenFile,
    fh: u64,
    pid: u32,
    in_data: &[u8],
) -> Result<[u8; LVB_ARG_LEN as usize], Errno> {
    let door = &lk.lvb;
    let id = file.file_id;
    let fd = file.fd.as_fd();
    let claims = claims(lk, file, fh, pid);
    let mut inner = door.inner();
    let current = door.loaded(lk, &mut inner, id, fd)?;
    let next = match op {
        Op::Get => {
            let held = lk.ctx.table.read(|t| t.lvb_holds(&claims));
            return Ok(encode_arg(&current, !held));
        }
        Op::Set => {
            let value = in_data.get(..LVB_LEN).ok_or(Errno::EINVAL)?;
            current.written(value).map_err(lvb_errno)?
        }
        Op::Invalidate => current.invalidated(),
    };
    lk.ctx
        .table
        .read(|t| t.lvb_authority(&claims))
        .map_err(lvb_errno)?;
    door.commit(lk, &mut inner, id, fd, next)?;
    Ok(encode_arg(&next, false))
}

/// `FLUSH` of open file `fh` by task `pid` for `lock_owner`, before its locks
/// are dropped: a task that exits holding an exclusive lock loses it.
pub(crate) fn on_flush(lk: &Locking, file: &OpenFile, fh: u64, pid: u32, lock_owner: u64) {
    let id = file.file_id;
    let mine = [(id, Owner::posix(lock_owner))];
    let theirs = open_file_owners(lk, file, fh, Some(lock_owner));
    let (posix_ex, open_ex) = lk.ctx.table.read(|t| {
        (
            t.lvb_authority(&mine).is_ok(),
            t.lvb_authority(&theirs).is_ok(),
        )
    });
    if !posix_ex && !open_ex {
        let door = &lk.lvb;
        let mut inner = door.inner();
        if !inner.closed_by_exit.is_empty() {
            inner.closed_by_exit.remove(&fh);
        }
        return;
    }
    let exiting = task_exiting(pid);
    if exiting && posix_ex {
        lk.lvb.lost(lk, file);
    }
    if open_ex {
        let mut inner = lk.lvb.inner();
        if exiting {
            inner.closed_by_exit.insert(fh);
        } else {
            inner.closed_by_exit.remove(&fh);
        }
    }
}

/// `RELEASE` of open file `fh`, before its locks are dropped: if its last
/// close came from an exiting task, its exclusive OFD and flock locks are lost.
pub(crate) fn on_release(lk: &Locking, file: &OpenFile, fh: u64) {
    let by_exit = {
        let mut inner = lk.lvb.inner();
        !inner.closed_by_exit.is_empty() && inner.closed_by_exit.remove(&fh)
    };
    if !by_exit {
        return;
    }
    let owners = open_file_owners(lk, file, fh, None);
    if lk.ctx.table.read(|t| t.lvb_authority(&owners).is_ok()) {
        lk.lvb.lost(lk, file);
    }
}

/// The mount's files were dropped without the kernel releasing them (an
/// aborted connection): any exclusive lock among them was lost.
pub(crate) fn on_abandoned(lk: &Locking, file: &OpenFile, fh: u64) {
    let mut owners = open_file_owners(lk, file, fh, None);
    for l in file.lock_owners() {
        owners.push((file.file_id, Owner::posix(l)));
    }
    if lk.ctx.table.read(|t| t.lvb_authority(&owners).is_ok()) {
        lk.lvb.lost(lk, file);
    }
}

/// The daemon let go of the backing file `id` (the kernel forgot its inode):
/// once the file is deleted its inode number may come back as another file's,
/// so what was learnt about it is read again from storage next time (the
/// table's own not-valid marks survive that, see `lvb_load`).
pub(crate) fn on_forget(lk: &Locking, id: FileId) {
    let mut inner = lk.lvb.inner();
    if inner.loaded.remove(&id) {
        if let Some(b) = inner.blocks.as_mut() {
            b.forget(id.dev, id.ino);
        }
    }
}

/// The mount ends cleanly: store the not-valid marks the table made without
/// this mount (remote hosts released abnormally), then mark the epoch clean.
pub(crate) fn on_unmount(lk: &Locking, shared: &Shared) {
    let door = &lk.lvb;
    let (Some(epoch), Some(&dev)) = (door.epoch.get(), door.dev.get()) else {
        return;
    };
    let table_blocks = lk.ctx.table.read(|t| t.lvb_blocks());
    let mut inner = door.inner();
    let Some(blocks) = inner.blocks.as_mut() else {
        return;
    };
    let mut pending: Vec<FileId> = Vec::new();
    for (id, v) in table_blocks {
        if id.dev != dev || v.valid {
            continue;
        }
        let key = crate::inode::FileKey {
            dev: id.dev,
            ino: id.ino,
        };
        match shared.inodes.by_key(&key) {
            Some(inode) => mark_stored_not_valid(blocks, inode.fd.as_fd(), id, epoch.current()),
            None => pending.push(id),
        }
    }
    if !pending.is_empty() {
        if let Some(root) = shared.inodes.get(crate::inode::ROOT_INO) {
            find_and_mark(blocks, root.fd.as_fd(), dev, &pending, epoch.current());
        }
    }
    let flushed = blocks.flush();
    // Let go of the store (its mapping and its claim) whatever happens, so a
    // later mount of the same source, in this process too, can take it.
    inner.blocks = None;
    if let Err(e) = flushed {
        tracing::warn!(error = %e, "could not sync the value-block store; the shutdown counts as unclean");
        return;
    }
    match epoch.end_clean() {
        Ok(()) => tracing::info!("lock value blocks stored; clean shutdown recorded"),
        Err(e) => tracing::warn!(error = %e, "could not record a clean shutdown"),
    }
}

fn mark_stored_not_valid(blocks: &mut Blocks, fd: BorrowedFd<'_>, id: FileId, epoch: u64) {
    let r = match blocks.load(fd, id.dev, id.ino) {
        Ok(Some(r)) => r,
        Ok(None) => Record {
            value: LvbValue::default(),
            epoch,
        },
        Err(e) => {
            tracing::warn!(error = %e, "could not read a value block");
            return;
        }
    };
    if !r.value.valid {
        return;
    }
    let r = Record {
        value: r.value.invalidated(),
        ..r
    };
    if let Err(e) = blocks.store(fd, id.dev, id.ino, &r) {
        tracing::warn!(error = %e, "could not store a not-valid value block");
    }
}

/// Walks the export for files the daemon no longer has open (bounded), to
/// store their not-valid marks; a file not found was deleted.
fn find_and_mark(
    blocks: &mut Blocks,
    root: BorrowedFd<'_>,
    dev: u64,
    files: &[FileId],
    epoch: u64,
) {
    use std::os::unix::fs::MetadataExt;
    const WALK_LIMIT: usize = 1 << 20;
    let Some(top) = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&root)
    ))
    .ok() else {
        return;
    };
    let mut left: FxHashSet<u64> = files.iter().map(|f| f.ino).collect();
    let mut stack = vec![top];
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            seen += 1;
            if seen > WALK_LIMIT || left.is_empty() {
                return;
            }
            let Ok(md) = e.metadata() else { continue };
            if md.dev() != dev {
                continue;
            }
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() && left.remove(&md.ino()) {
                if let Ok(f) = std::fs::File::open(e.path()) {
                    let id = FileId::new(dev, md.ino());
                    mark_stored_not_valid(blocks, f.as_fd(), id, epoch);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_codes_match_the_header_encoding() {
        // _IOR('S', 2, 48), _IOWR('S', 3, 48), _IOR('S', 4, 48).
        assert_eq!(LOCKFS_IOC_LVB_GET, 0x8030_5302);
        assert_eq!(LOCKFS_IOC_LVB_SET, 0xc030_5303);
        assert_eq!(LOCKFS_IOC_LVB_INVALIDATE, 0x8030_5304);
    }

    #[test]
    fn ioctl_arguments_round_trip() {
        let v = LvbValue::default().written(b"abc").unwrap().invalidated();
        let b = encode_arg(&v, true);
        let (bytes, seq, flags) = decode_arg(&b).unwrap();
        assert_eq!((bytes, seq), (v.bytes, 1));
        assert_eq!(flags, LVB_NOTVALID | LVB_UNLOCKED);
        assert_eq!(decode_arg(&b[..47]), None);
    }

    #[test]
    fn stat_flags_are_read_past_odd_command_names() {
        let line = b"42 (a) b (c)) S 1 42 42 0 -1 4194564 10 0 0 0";
        assert_eq!(stat_flags(line), Some(4194564));
        assert_eq!(stat_flags(b"garbage"), None);
        assert!(!task_exiting(std::process::id()));
    }
}
