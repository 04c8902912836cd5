//! Lock requests, close semantics and mandatory-lock checks of one mount: the
//! translation between FUSE requests and the shared lock table.
//!
//! - `SETLK`/`SETLKW`/`GETLK` become table locks, unlocks and tests. POSIX locks
//!   are owned by the kernel's `lock_owner`, OFD locks by the open file, flock
//!   locks by the open file in their own namespace (or on the real file with
//!   `flock=shared`); see [`crate::owners`] for how POSIX and OFD are told apart.
//! - Waits never block a request loop: the reply is parked in the table's
//!   waiter registry ([`lock_table::waiters`]) under (mount, request id) and
//!   answered by the grant, an interrupt (`FUSE_INTERRUPT` names the request by
//!   that id) or the end of the mount.
//! - `FLUSH` drops the closer's POSIX locks on the file; `RELEASE` drops the OFD
//!   and flock locks of the open file.
//! - Reads, writes, truncates, `O_TRUNC` opens and both ends of a copy of
//!   mandatory files pass the table's one gate ([`lock_table::gate`]), whose
//!   pass keeps them in flight on their range until they are done (a
//!   conflicting lock waits for them); a conflict fails `EAGAIN` on an
//!   `O_NONBLOCK` open (and for a copy's source, which never waits, and an
//!   `OPEN` or `CREATE` that carries `O_TRUNC` itself) and otherwise waits,
//!   interruptibly. (The kernel usually truncates an `O_TRUNC` open with a
//!   `SETATTR` that names no open file: that waits like any truncate.)
//!
//! # errno values
//! | situation | errno |
//! |---|---|
//! | non-blocking lock meets a conflict | `EAGAIN` |
//! | blocking lock would deadlock (POSIX owners) | `EDEADLK` |
//! | a signal interrupts a wait | `EINTR` |
//! | non-blocking request while the scope is in its grace period | `ENOLCK` |
//! | open that writes or denies while the scope is in its grace period | `ENOLCK` |
//! | the table dropped a waiter, or the mount ended under it | `ENOLCK` |
//! | mandatory I/O meets a conflict on an `O_NONBLOCK` open | `EAGAIN` |
//!
//! During a grace period (after a restart, while NLM clients reclaim their locks)
//! blocking requests (`F_SETLKW`, `F_OFD_SETLKW`, and `flock` without `LOCK_NB`
//! when flock locks are shared with NLM) wait until it ends, interruptibly, as an
//! NFS client's callers do; a local program cannot take a lock a client is about
//! to reclaim. flock in its own namespace is not affected (no client can reclaim
//! there), and `F_GETLK` reports what is held at the moment.
//!
//! `F_GETLK` reports the holder's pid for POSIX locks; for OFD and flock holders
//! and remote NLM holders it reports 0, because FUSE carries the pid as an
//! unsigned number the kernel maps through its pid namespace: -1 cannot be sent.
//! (`F_OFD_GETLK` callers always see -1, which the kernel fills in itself.)

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fuser::Errno;
use lock_table::{
    Access, Admission, DoorId, FileId, GateRequest, IoPass, LockKind, LockOutcome, LockRequest,
    Namespace, Owner, OwnerKind, Park, Range, Refusal, RequestKey, TestOutcome, TestRequest, Wake,
};
use rustc_hash::FxHashMap;
use share_reservations::ShareMode;

use crate::context::LockContext;
use crate::handles::OpenFile;
use crate::options::{FlockMode, Mandatory};
use crate::owners::{Class, Owners};

/// This door's name in the table's waiter registry.
pub const FUSE_DOOR: DoorId = DoorId("fuse");

/// How long a share-open request waits for its process to open the file.
const PENDING_TTL: Duration = Duration::from_secs(30);

/// The largest offset FUSE lock requests carry (`OFFSET_MAX`): "to end of file".
const OFFSET_MAX: u64 = i64::MAX as u64;

/// Test hook: microseconds to sleep between admitting mandatory-locked I/O and
/// doing it, read once from `LOCKFS_TEST_ADMIT_DELAY_US`. Tests widen the
/// window in which a lock could overtake admitted I/O with it; unset, it costs
/// one load of an initialised cell.
fn delay_admitted_io() {
    static DELAY: OnceLock<Option<Duration>> = OnceLock::new();
    let delay = DELAY.get_or_init(|| {
        std::env::var("LOCKFS_TEST_ADMIT_DELAY_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_micros)
    });
    if let Some(d) = delay {
        std::thread::sleep(*d);
    }
}

/// Mandatory-locked I/O waiting to be admitted: which file, through which open
/// file and owner, which bytes, and whether it may wait.
pub(crate) struct Gate {
    pub(crate) lk: Arc<Locking>,
    /// The kernel's id of the request, for interrupts.
    pub(crate) unique: u64,
    pub(crate) pid: u32,
    pub(crate) file_id: FileId,
    pub(crate) file: Option<(Arc<OpenFile>, u64)>,
    pub(crate) lock_owner: Option<u64>,
    pub(crate) checks: Vec<(Access, Range)>,
    /// `O_NONBLOCK`: a conflict fails `EAGAIN` instead of waiting.
    pub(crate) nonblock: bool,
}

impl Gate {
    /// The gate of request `req`'s I/O through open file `fh` of `file`.
    pub(crate) fn through(
        lk: &Arc<Locking>,
        req: &fuser::Request,
        file: &Arc<OpenFile>,
        fh: u64,
        lock_owner: Option<u64>,
        checks: Vec<(Access, Range)>,
        nonblock: bool,
    ) -> Gate {
        Gate {
            lk: lk.clone(),
            unique: req.unique().0,
            pid: req.pid(),
            file_id: file.file_id,
            file: Some((file.clone(), fh)),
            lock_owner,
            checks,
            nonblock,
        }
    }
}

/// Lock state of one mount.
pub(crate) struct Locking {
    pub(crate) ctx: LockContext,
    pub(crate) mount: u64,
    pub(crate) mandatory: Mandatory,
    pub(crate) flock: FlockMode,
    pub(crate) owners: Owners,
    /// Lock value blocks of the mount's export.
    pub(crate) lvb: crate::lvb::LvbDoor,
    /// Share-open requests: (pid, file) -> mode, consumed by that pid's next open.
    pending: Mutex<FxHashMap<(u32, FileId), (ShareMode, Instant)>>,
}

impl std::fmt::Debug for Locking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locking")
            .field("mount", &self.mount)
            .field("mandatory", &self.mandatory)
            .field("flock", &self.flock)
            .finish_non_exhaustive()
    }
}

fn errno(n: i32) -> Errno {
    Errno::from_i32(n)
}

/// The errno a refused lock or I/O request gets.
pub(crate) fn refusal_errno(r: Refusal) -> Errno {
    match r {
        Refusal::Conflict(_) => errno(libc::EAGAIN),
        Refusal::Deadlock => errno(libc::EDEADLK),
        Refusal::Grace | Refusal::NotInGrace => errno(libc::ENOLCK),
    }
}

/// The lock kind of an fcntl lock type: `None` for `F_UNLCK`, `EINVAL` for
/// anything else the kernel should never send.
pub(crate) fn lock_kind(typ: i32) -> Result<Option<LockKind>, Errno> {
    match typ {
        libc::F_RDLCK => Ok(Some(LockKind::Shared)),
        libc::F_WRLCK => Ok(Some(LockKind::Exclusive)),
        libc::F_UNLCK => Ok(None),
        _ => Err(Errno::EINVAL),
    }
}

/// A FUSE lock range (inclusive end, `OFFSET_MAX` for "to end of file") as a
/// table range.
pub(crate) fn fuse_range(start: u64, end: u64) -> Result<Range, Errno> {
    let end = if end >= OFFSET_MAX { u64::MAX } else { end };
    Range::new(start, end).map_err(|_| errno(libc::EINVAL))
}

/// A table range as FUSE reports it.
pub(crate) fn range_to_fuse(r: Range) -> (u64, u64) {
    let end = if r.is_to_eof() {
        OFFSET_MAX
    } else {
        r.end().min(OFFSET_MAX)
    };
    (r.start().min(OFFSET_MAX), end)
}

/// The byte range an I/O of `len` bytes at `offset` touches, if any.
pub(crate) fn io_range(offset: u64, len: u64) -> Option<Range> {
    if len == 0 {
        return None;
    }
    Some(Range::new(offset, offset.saturating_add(len - 1)).unwrap_or(Range::to_eof(offset)))
}

/// The identity flock locks of `file` use in their own namespace.
pub(crate) fn flock_file_id(file: FileId) -> FileId {
    file.in_namespace(Namespace::Flock)
}

impl Locking {
    pub(crate) fn new(
        ctx: LockContext,
        mount: u64,
        mandatory: Mandatory,
        flock: FlockMode,
    ) -> Self {
        Locking {
            ctx,
            mount,
            mandatory,
            flock,
            owners: Owners::default(),
            lvb: Default::default(),
            pending: Mutex::default(),
        }
    }

    /// The table owner, file and range of a lock request.
    pub(crate) fn lock_target(
        &self,
        file: &OpenFile,
        fh: u64,
        lock_owner: u64,
        pids: [u32; 2],
        range: Range,
        flock: bool,
    ) -> (Owner, FileId, Range) {
        if flock {
            let id = match self.flock {
                FlockMode::Separate => flock_file_id(file.file_id),
                FlockMode::Shared => file.file_id,
            };
            return (Owner::flock(fh), id, Range::WHOLE);
        }
        let owner = match self.owners.classify(lock_owner, fh, pids) {
            Class::Posix => Owner::posix(lock_owner),
            Class::Ofd { fh } => Owner::ofd(fh),
        };
        file.note_lock_owner(lock_owner);
        (owner, file.file_id, range)
    }

    /// Sets or clears a lock without waiting. (The table converts flock locks
    /// the Linux way: see [`lock_table::LockTable::lock`].)
    pub(crate) fn set_now(&self, req: LockRequest, unlock: bool) -> Result<(), Errno> {
        let table = &self.ctx.table;
        if unlock {
            table.with(|t| t.unlock(req.file, req.owner, req.range));
            return Ok(());
        }
        match table.lock(&req) {
            LockOutcome::Granted => Ok(()),
            LockOutcome::Refused(r) => Err(refusal_errno(r)),
            LockOutcome::Queued(id) => {
                // A non-waiting request never queues; be safe anyway.
                table.with(|t| t.cancel(id));
                Err(errno(libc::EAGAIN))
            }
        }
    }

    /// Sets a lock, waiting for conflicts to clear; `reply` gets the outcome.
    pub(crate) fn set_wait(
        &self,
        unique: u64,
        req: LockRequest,
        reply: impl FnOnce(Result<(), Errno>) + Send + 'static,
    ) {
        let reply = move |w: Wake| reply(wake_result(w));
        let park = Park::keyed(self.request_key(unique));
        if let Admission::Now(w, reply) = self.ctx.table.lock_or_wait(&req, park, reply) {
            reply(w)
        }
    }

    /// This mount's name for request `unique` in the table's waiter registry.
    fn request_key(&self, unique: u64) -> RequestKey {
        RequestKey {
            door: FUSE_DOOR,
            session: self.mount,
            request: unique,
        }
    }

    /// `FUSE_INTERRUPT` for request `unique`: a parked wait ends `EINTR`.
    pub(crate) fn interrupt(&self, unique: u64) {
        self.ctx.table.interrupt(self.request_key(unique));
    }

    /// The mount ends: its parked waits are answered `ENOLCK`. Returns how many.
    pub(crate) fn end_waits(&self) -> usize {
        self.ctx.table.end_session(FUSE_DOOR, self.mount)
    }

    /// Answers F_GETLK: `(start, end, type, pid)` of the first conflicting lock,
    /// or `F_UNLCK`.
    pub(crate) fn test(&self, req: TestRequest) -> (u64, u64, i32, u32) {
        match self.ctx.table.read(|t| t.test(&req)) {
            TestOutcome::Free | TestOutcome::Grace => (0, 0, libc::F_UNLCK, 0),
            TestOutcome::Conflict(h) => {
                let (start, end) = range_to_fuse(h.range);
                let typ = match h.kind {
                    LockKind::Shared => libc::F_RDLCK,
                    LockKind::Exclusive => libc::F_WRLCK,
                };
                let pid = match h.owner.kind {
                    OwnerKind::Posix if !h.owner.is_remote() => h.pid,
                    _ => 0,
                };
                (start, end, typ, pid)
            }
        }
    }

    /// `FLUSH`: the process owning `lock_owner` closed a descriptor of the file.
    pub(crate) fn flush(&self, file: &OpenFile, pid: u32, lock_owner: u64) {
        let fixed = self.owners.seen_posix(pid, lock_owner);
        let id = file.file_id;
        self.ctx.table.with(|t| {
            if let Some(fh) = fixed {
                t.release_owner_on_file(Owner::ofd(fh), id);
            }
            t.release_owner_on_file(Owner::posix(lock_owner), id);
        });
    }

    /// `RELEASE`: the last descriptor of open file `fh` is gone.
    pub(crate) fn release(&self, file: &OpenFile, fh: u64) {
        let id = file.file_id;
        let maybe_ofd: Vec<u64> = file
            .lock_owners()
            .into_iter()
            .filter(|l| !self.owners.is_known_posix(*l))
            .collect();
        self.ctx.table.with(|t| {
            for l in &maybe_ofd {
                t.release_owner_on_file(Owner::posix(*l), id);
            }
            t.release_open_file(fh);
        });
        self.ctx.shares().release(id, Owner::ofd(fh));
        self.owners.forget_file(fh);
    }

    /// Drops everything held through open file `fh` when the mount ends without
    /// the kernel releasing it (an aborted connection): its OFD, flock and share
    /// state and the POSIX locks of every owner that used it.
    pub(crate) fn release_abandoned(&self, file: &OpenFile, fh: u64) {
        crate::lvb::on_abandoned(self, file, fh);
        let id = file.file_id;
        let owners = file.lock_owners();
        self.ctx.table.with(|t| {
            for l in &owners {
                t.release_owner_on_file(Owner::posix(*l), id);
            }
            t.release_open_file(fh);
        });
        self.ctx.shares().release(id, Owner::ofd(fh));
        self.owners.forget_file(fh);
    }

    /// Registers a share-open request of `pid` for `file`.
    pub(crate) fn add_pending(&self, pid: u32, file: FileId, mode: ShareMode) {
        let now = Instant::now();
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        p.retain(|_, (_, t)| now.duration_since(*t) < PENDING_TTL);
        p.insert((pid, file), (mode, now));
    }

    /// Takes the share-open request of `pid` for `file`, if any.
    pub(crate) fn take_pending(&self, pid: u32, file: FileId) -> Option<ShareMode> {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if p.is_empty() {
            return None;
        }
        let (mode, t) = p.remove(&(pid, file))?;
        (t.elapsed() < PENDING_TTL).then_some(mode)
    }

    /// The owners whose locks count as the caller's own for I/O through `file`
    /// (handle `fh`): its POSIX owner, and the not-POSIX owner used through the
    /// open file. The table takes two; when the caller's POSIX owner is unknown
    /// (truncate by path before it ever closed a file) the open file stands in.
    pub(crate) fn io_selves(
        &self,
        file: Option<(&OpenFile, u64)>,
        lock_owner: Option<u64>,
        pid: u32,
    ) -> (Owner, Option<Owner>) {
        let mine = lock_owner.or_else(|| self.owners.posix_of(pid));
        let open_file = file.map(|(f, fh)| {
            let ofd = f
                .lock_owners()
                .into_iter()
                .find(|l| Some(*l) != mine && !self.owners.is_known_posix(*l));
            match ofd {
                Some(l) => match self.owners.classify_known(l) {
                    Some(Class::Ofd { fh }) => Owner::ofd(fh),
                    _ => Owner::posix(l),
                },
                None if self.flock == FlockMode::Shared => Owner::flock(fh),
                None => Owner::ofd(fh),
            }
        });
        match (mine, open_file) {
            (Some(l), o) => (Owner::posix(l), o),
            (None, Some(o)) => (o, None),
            // Nobody to count as own: an owner that holds nothing.
            (None, None) => (Owner::ofd(0), None),
        }
    }

    /// Passes `gate` and runs `run` once the I/O may proceed, or with the error
    /// when it must not happen. The table's gate admits, refuses or parks it
    /// (see [`lock_table::gate`]); the pass is held while `run` runs, so until
    /// the reply is sent.
    pub(crate) fn pass(gate: Gate, run: Box<dyn FnOnce(Result<(), Errno>) + Send>) {
        let Gate {
            lk,
            unique,
            pid,
            file_id,
            file,
            lock_owner,
            checks,
            nonblock,
        } = gate;
        let req = lk.gate_request(
            file_id,
            file.as_ref().map(|(f, fh)| (&**f, *fh)),
            lock_owner,
            pid,
            &checks,
        );
        let park = Park::keyed(lk.request_key(unique));
        lk.ctx
            .table
            .gate(req.waiting(!nonblock), park, move |r| match r {
                Ok(pass) => {
                    delay_admitted_io();
                    run(Ok(()));
                    drop(pass);
                }
                Err(w) => run(Err(wake_errno(w))),
            })
    }

    /// The table's gate request for I/O on `file_id` (through open file `file`),
    /// refused on conflict until [`GateRequest::waiting`] says otherwise.
    fn gate_request(
        &self,
        file_id: FileId,
        file: Option<(&OpenFile, u64)>,
        lock_owner: Option<u64>,
        pid: u32,
        checks: &[(Access, Range)],
    ) -> GateRequest {
        let (owner, open_file) = self.io_selves(file, lock_owner, pid);
        let mut req = GateRequest::new(file_id, owner, open_file, pid);
        req.checks.extend_from_slice(checks);
        req
    }

    /// Admits I/O without waiting: `None` when another owner's lock forbids it.
    /// The pass keeps it in flight (conflicting locks wait) until it is dropped.
    pub(crate) fn admit(
        &self,
        file_id: FileId,
        file: Option<(&OpenFile, u64)>,
        lock_owner: Option<u64>,
        pid: u32,
        checks: &[(Access, Range)],
    ) -> Option<IoPass> {
        let req = self.gate_request(file_id, file, lock_owner, pid, checks);
        let pass = self.ctx.table.admit(&req).ok()?;
        delay_admitted_io();
        Some(pass)
    }
}

/// The answer to a lock request whose wait ended.
fn wake_result(w: Wake) -> Result<(), Errno> {
    match w {
        Wake::Granted => Ok(()),
        other => Err(wake_errno(other)),
    }
}

/// The errno of a wait that did not end in a grant.
fn wake_errno(w: Wake) -> Errno {
    match w {
        Wake::Granted => errno(libc::EIO),
        Wake::Cancelled(_) => errno(libc::EINTR),
        Wake::Dropped => errno(libc::ENOLCK),
        Wake::Refused(r) => refusal_errno(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuse_ranges_map_offset_max_to_the_end_of_the_space() {
        let r = fuse_range(10, OFFSET_MAX).unwrap();
        assert!(r.is_to_eof());
        assert_eq!(range_to_fuse(r), (10, OFFSET_MAX));
        let r = fuse_range(0, 99).unwrap();
        assert_eq!((r.start(), r.end()), (0, 99));
        assert_eq!(range_to_fuse(r), (0, 99));
        assert_eq!(fuse_range(5, 4), Err(errno(libc::EINVAL)));
        assert_eq!(io_range(7, 0), None);
        assert_eq!(
            io_range(u64::MAX - 1, 10),
            Some(Range::to_eof(u64::MAX - 1))
        );
    }

    #[test]
    fn flock_ids_never_meet_real_files() {
        let real = FileId::new(0x803, 42);
        let f = flock_file_id(real);
        assert_ne!(f, real);
        assert_eq!(f.ino, 42);
        assert_eq!(f.dev, real.dev);
        assert_eq!(f.ns, Namespace::Flock);
    }

    #[test]
    fn lock_types_map_to_kinds_and_anything_else_is_einval() {
        assert_eq!(lock_kind(libc::F_RDLCK).ok(), Some(Some(LockKind::Shared)));
        assert_eq!(
            lock_kind(libc::F_WRLCK).ok(),
            Some(Some(LockKind::Exclusive))
        );
        assert_eq!(lock_kind(libc::F_UNLCK).ok(), Some(None));
        for bad in [-1, 3, 42] {
            assert_eq!(lock_kind(bad).err().map(i32::from), Some(libc::EINVAL));
        }
    }

    #[test]
    fn refusals_map_to_errno() {
        assert_eq!(refusal_errno(Refusal::Deadlock), errno(libc::EDEADLK));
        assert_eq!(refusal_errno(Refusal::Grace), errno(libc::ENOLCK));
    }
}
