//! Programs on the kernel's `filelock` tracepoints.
//!
//! Field offsets come from `/sys/kernel/tracing/events/filelock/<event>/format`
//! (Linux 6.x): the lock events share one layout, the lease events another.
//! Offsets are not relocated (aya-ebpf has no CO-RE for tracepoint records),
//! so the loader checks the live format files against these constants before
//! attaching and refuses to attach on a mismatch.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use lockfs_ebpf_common::{
    kernel_dev_to_user, EventKind, FileKey, KernelPoint, LockType, OwnerKind, Source,
    WaitEndReason, WaiterEntry, WaiterKey, TO_EOF,
};

use crate::{
    maps::with_file_stats,
    record::{emit, now},
    waits::{self, End},
};

// Offsets in the filelock lock event record (posix_lock_inode, fcntl_setlk,
// flock_lock_inode, locks_remove_posix).
const OFF_INO: usize = 16;
const OFF_DEV: usize = 24;
const OFF_PID: usize = 48;
const OFF_FLAGS: usize = 52;
const OFF_TYPE: usize = 56;
const OFF_START: usize = 64;
const OFF_END: usize = 72;
const OFF_RET: usize = 80;

// Offsets in the filelock lease event record (break_lease_*).
const OFF_LEASE_TYPE: usize = 52;

// Offset of `ret` in syscalls:sys_exit_* records.
const OFF_SYS_RET: usize = 16;

const FL_FLOCK: u32 = 2;
const FL_OFDLCK: u32 = 1024;
const F_UNLCK: u8 = 2;
const FILE_LOCK_DEFERRED: i32 = 1;
const EAGAIN: i32 = 11;
const EDEADLK: i32 = 35;
const EINTR: i32 = 4;
const ERESTARTSYS: i32 = 512;
const ERESTARTNOHAND: i32 = 514;
const ERESTARTNOINTR: i32 = 513;

/// One lock event record, decoded.
struct LockRecord {
    ino: u64,
    dev: u64,
    pid: u32,
    flags: u32,
    typ: u8,
    start: u64,
    end: u64,
    ret: i32,
}

/// Bytes of the lock record the programs use: everything up to `ret`.
const LOCK_RECORD_LEN: usize = OFF_RET + 4;

#[inline(always)]
fn field<const N: usize>(raw: &[u8; LOCK_RECORD_LEN], off: usize) -> [u8; N] {
    let mut b = [0u8; N];
    b.copy_from_slice(&raw[off..off + N]);
    b
}

#[inline(always)]
fn read_lock_record(ctx: &TracePointContext) -> Option<LockRecord> {
    // One helper call for the whole record: the fields one by one cost a
    // bpf_probe_read_kernel each, several times the rest of the program on
    // the hot path of every native lock operation.
    // SAFETY: the record is at least LOCK_RECORD_LEN bytes (the loader checks
    // the live format file against these offsets); `read_at` uses
    // bpf_probe_read_kernel, which fails cleanly instead of faulting.
    let raw: [u8; LOCK_RECORD_LEN] = unsafe { ctx.read_at(0).ok()? };
    let fl_end = i64::from_ne_bytes(field(&raw, OFF_END));
    Some(LockRecord {
        ino: u64::from_ne_bytes(field(&raw, OFF_INO)),
        dev: kernel_dev_to_user(u32::from_ne_bytes(field(&raw, OFF_DEV))),
        pid: u32::from_ne_bytes(field(&raw, OFF_PID)),
        flags: u32::from_ne_bytes(field(&raw, OFF_FLAGS)),
        typ: raw[OFF_TYPE],
        start: i64::from_ne_bytes(field(&raw, OFF_START)) as u64,
        // OFFSET_MAX (i64::MAX) is the kernel's "to end of file".
        end: if fl_end == i64::MAX {
            TO_EOF
        } else {
            fl_end as u64
        },
        ret: i32::from_ne_bytes(field(&raw, OFF_RET)),
    })
}

impl LockRecord {
    fn owner_kind(&self, point: KernelPoint) -> OwnerKind {
        if self.flags & FL_OFDLCK != 0 {
            OwnerKind::Ofd
        } else if self.flags & FL_FLOCK != 0 || matches!(point, KernelPoint::FlockLockInode) {
            OwnerKind::Flock
        } else {
            OwnerKind::Posix
        }
    }

    fn lock_type(&self) -> LockType {
        match self.typ {
            0 => LockType::Shared,
            1 => LockType::Exclusive,
            _ => LockType::Unlock,
        }
    }
}

#[inline(always)]
fn thread_key() -> WaiterKey {
    let id = bpf_get_current_pid_tgid();
    WaiterKey {
        token: id & 0xffff_ffff,
        tgid: (id >> 32) as u32,
        source: Source::Kernel as u32,
    }
}

#[inline(always)]
fn emit_record(rec: &LockRecord, point: KernelPoint, kind: EventKind, key: &WaiterKey) {
    emit(|ev| {
        ev.source = Source::Kernel as u32;
        ev.kind = kind as u32;
        ev.point = point as u32;
        ev.dev = rec.dev;
        ev.ino = rec.ino;
        ev.start = rec.start;
        ev.end = rec.end;
        ev.pid = rec.pid;
        ev.lock_type = rec.lock_type() as u32;
        ev.owner_kind = rec.owner_kind(point) as u32;
        ev.ret = rec.ret;
        ev.waiter = key.token;
    });
}

/// Shared logic of `posix_lock_inode` and `flock_lock_inode`: the outcome of
/// one attempt to set or clear a lock.
#[inline(always)]
fn lock_attempt(ctx: &TracePointContext, point: KernelPoint) {
    let Some(rec) = read_lock_record(ctx) else {
        return;
    };
    let key = thread_key();
    if rec.typ == F_UNLCK {
        if rec.ret == 0 {
            emit_record(&rec, point, EventKind::LockReleased, &key);
        }
        return;
    }
    let file = FileKey {
        dev: rec.dev,
        ino: rec.ino,
    };
    let open = match waits::open_file(&key) {
        Some(open) if open != (rec.dev, rec.ino) => {
            // A wait on another file is still open for this thread: its end
            // went unseen (a kernel-internal caller that gave up without a
            // syscall exit we trace). Close it rather than mistake this
            // request for its retry.
            waits::finish(
                &key,
                End {
                    reason: WaitEndReason::Ended,
                    ret: 0,
                    point,
                    caller_ts_ns: 0,
                },
            );
            false
        }
        Some(_) => true,
        None => false,
    };
    if open {
        // The retry after a wake-up: not a new attempt.
        match rec.ret {
            FILE_LOCK_DEFERRED => {}
            0 => {
                waits::finish(
                    &key,
                    End {
                        reason: WaitEndReason::Granted,
                        ret: 0,
                        point,
                        caller_ts_ns: 0,
                    },
                );
            }
            ret => {
                waits::finish(
                    &key,
                    End {
                        reason: WaitEndReason::Failed,
                        ret,
                        point,
                        caller_ts_ns: 0,
                    },
                );
            }
        }
        return;
    }
    let conflict =
        matches!(rec.ret, FILE_LOCK_DEFERRED) || rec.ret == -EAGAIN || rec.ret == -EDEADLK;
    let blocked = rec.ret == FILE_LOCK_DEFERRED;
    with_file_stats(&file, |s| {
        s.attempts += 1;
        if conflict {
            s.conflicts += 1;
        }
        if blocked {
            s.blocked += 1;
        }
    });
    let kind = if rec.ret == 0 {
        EventKind::LockGranted
    } else if blocked {
        let entry = WaiterEntry {
            start_ns: now(),
            dev: rec.dev,
            ino: rec.ino,
            start: rec.start,
            end: rec.end,
            pid: rec.pid,
            lock_type: rec.lock_type() as u32,
            owner_kind: rec.owner_kind(point) as u32,
            pad: 0,
        };
        waits::start(&key, &entry);
        EventKind::LockBlocked
    } else {
        EventKind::LockRefused
    };
    emit_record(&rec, point, kind, &key);
}

/// A wait still open when the system call returns ended without a grant.
#[inline(always)]
fn syscall_end(ret: i32, point: KernelPoint) {
    let key = thread_key();
    if !waits::is_open(&key) {
        return;
    }
    let reason = if ret == 0 {
        // Cannot happen in practice (the retry that granted closed the wait),
        // but a zero return still means the caller got its lock.
        WaitEndReason::Granted
    } else if ret == -EINTR
        || ret == -ERESTARTSYS
        || ret == -ERESTARTNOHAND
        || ret == -ERESTARTNOINTR
    {
        WaitEndReason::Interrupted
    } else {
        WaitEndReason::Failed
    };
    waits::finish(
        &key,
        End {
            reason,
            ret,
            point,
            caller_ts_ns: 0,
        },
    );
}

#[tracepoint(category = "filelock", name = "posix_lock_inode")]
pub fn lfs_posix_lock(ctx: TracePointContext) -> u32 {
    lock_attempt(&ctx, KernelPoint::PosixLockInode);
    0
}

#[tracepoint(category = "filelock", name = "flock_lock_inode")]
pub fn lfs_flock_lock(ctx: TracePointContext) -> u32 {
    lock_attempt(&ctx, KernelPoint::FlockLockInode);
    0
}

#[tracepoint(category = "filelock", name = "fcntl_setlk")]
pub fn lfs_fcntl_setlk(ctx: TracePointContext) -> u32 {
    // SAFETY: offset inside the record, read with bpf_probe_read_kernel.
    if let Ok(ret) = unsafe { ctx.read_at::<i32>(OFF_RET) } {
        syscall_end(ret, KernelPoint::FcntlSetlk);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_flock")]
pub fn lfs_exit_flock(ctx: TracePointContext) -> u32 {
    // SAFETY: offset inside the record, read with bpf_probe_read_kernel.
    if let Ok(ret) = unsafe { ctx.read_at::<i64>(OFF_SYS_RET) } {
        syscall_end(ret as i32, KernelPoint::SysExitFlock);
    }
    0
}

#[tracepoint(category = "filelock", name = "locks_remove_posix")]
pub fn lfs_rm_posix(ctx: TracePointContext) -> u32 {
    if let Some(rec) = read_lock_record(&ctx) {
        if rec.ret == 0 {
            emit_record(
                &rec,
                KernelPoint::LocksRemovePosix,
                EventKind::LockReleased,
                &thread_key(),
            );
        }
    }
    0
}

#[inline(always)]
fn lease_ids(ctx: &TracePointContext) -> Option<(u64, u64, u8)> {
    // SAFETY: offsets inside the lease record, read with bpf_probe_read_kernel.
    unsafe {
        Some((
            ctx.read_at(OFF_INO).ok()?,
            kernel_dev_to_user(ctx.read_at::<u32>(OFF_DEV).ok()?),
            ctx.read_at(OFF_LEASE_TYPE).ok()?,
        ))
    }
}

/// An open (or truncate) must wait for a lease holder to give the lease up.
#[tracepoint(category = "filelock", name = "break_lease_block")]
pub fn lfs_lease_block(ctx: TracePointContext) -> u32 {
    let Some((ino, dev, typ)) = lease_ids(&ctx) else {
        return 0;
    };
    let key = thread_key();
    let lock_type = if typ == 0 {
        LockType::Shared
    } else {
        LockType::Exclusive
    };
    with_file_stats(&FileKey { dev, ino }, |s| {
        s.conflicts += 1;
        s.blocked += 1;
    });
    let entry = WaiterEntry {
        start_ns: now(),
        dev,
        ino,
        start: 0,
        end: TO_EOF,
        pid: key.tgid,
        lock_type: lock_type as u32,
        owner_kind: OwnerKind::Unknown as u32,
        pad: 0,
    };
    waits::start(&key, &entry);
    emit(|ev| {
        ev.source = Source::Kernel as u32;
        ev.kind = EventKind::LockBlocked as u32;
        ev.point = KernelPoint::BreakLeaseBlock as u32;
        ev.dev = dev;
        ev.ino = ino;
        ev.end = TO_EOF;
        ev.pid = key.tgid;
        ev.lock_type = lock_type as u32;
        ev.waiter = key.token;
    });
    0
}

/// The lease break wait is over (the tracepoint does not say whether by a
/// release, a timeout or a signal).
#[tracepoint(category = "filelock", name = "break_lease_unblock")]
pub fn lfs_lease_unblk(_ctx: TracePointContext) -> u32 {
    waits::finish(
        &thread_key(),
        End {
            reason: WaitEndReason::Ended,
            ret: 0,
            point: KernelPoint::BreakLeaseUnblock,
            caller_ts_ns: 0,
        },
    );
    0
}
