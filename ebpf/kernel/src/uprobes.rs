//! Programs on the daemon's `lockfs_probe_*` symbols.
//!
//! One program per probe point, so the event kind comes from the symbol the
//! uprobe sits on rather than from daemon memory, and each shows up under its
//! own name in `bpftool prog list`. The `ProbeEvent` is copied out of the
//! daemon with `bpf_probe_read_user`; anything that does not decode is
//! counted in the diagnostics map and dropped, never trusted.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::uprobe,
    programs::ProbeContext,
};
use lockfs_ebpf_common::{
    EventKind, FileKey, KernelPoint, LockType, OwnerKind, ProbeEvent, Source, WaitEndReason,
    WaiterEntry, WaiterKey, DIAG_MALFORMED, DIAG_READ_FAILED, HOST_NAME_LEN,
};

use crate::{
    maps::{diag, with_file_stats},
    record::{emit, now},
    waits::{self, End},
};

#[inline(always)]
fn read_event(ctx: &ProbeContext) -> Option<ProbeEvent> {
    let ptr: u64 = ctx.arg(0)?;
    // SAFETY: bpf_probe_read_user copies from the daemon's address space and
    // fails cleanly on a bad pointer.
    match unsafe { bpf_probe_read_user(ptr as *const ProbeEvent) } {
        Ok(ev) => Some(ev),
        Err(_) => {
            diag(DIAG_READ_FAILED);
            None
        }
    }
}

#[inline(always)]
fn valid(ev: &ProbeEvent) -> bool {
    LockType::from_raw(ev.lock_type).is_some()
        && OwnerKind::from_raw(ev.owner_kind).is_some()
        && WaitEndReason::from_raw(ev.wait_reason).is_some()
        && ev.start <= ev.end
        && ev.host_len as usize <= HOST_NAME_LEN
}

#[inline(always)]
fn handle(ctx: &ProbeContext, kind: EventKind) {
    let Some(ev) = read_event(ctx) else {
        return;
    };
    if !valid(&ev) {
        diag(DIAG_MALFORMED);
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let file = FileKey {
        dev: ev.dev,
        ino: ev.ino,
    };
    let key = WaiterKey {
        token: ev.waiter,
        tgid,
        source: Source::Daemon as u32,
    };
    match kind {
        EventKind::LockRequested => {
            if ev.lock_type != LockType::Unlock as u32 {
                with_file_stats(&file, |s| s.attempts += 1);
            }
        }
        EventKind::LockRefused | EventKind::ShareRefused => {
            with_file_stats(&file, |s| s.conflicts += 1);
        }
        // Blocked I/O without a waiter token was refused outright; with one
        // it waits in the table's queue like a lock, and is timed the same way.
        EventKind::IoBlocked if ev.waiter == 0 => {
            with_file_stats(&file, |s| s.conflicts += 1);
        }
        EventKind::LockBlocked | EventKind::IoBlocked => {
            with_file_stats(&file, |s| {
                s.conflicts += 1;
                s.blocked += 1;
            });
            let entry = WaiterEntry {
                start_ns: now(),
                dev: ev.dev,
                ino: ev.ino,
                start: ev.start,
                end: ev.end,
                pid: ev.pid,
                lock_type: ev.lock_type,
                owner_kind: ev.owner_kind,
                pad: 0,
            };
            waits::start(&key, &entry);
        }
        EventKind::WaitEnded => {
            let reason = match WaitEndReason::from_raw(ev.wait_reason) {
                Some(WaitEndReason::None) | None => WaitEndReason::Ended,
                Some(r) => r,
            };
            let end = End {
                reason,
                ret: 0,
                point: KernelPoint::None,
                caller_ts_ns: ev.timestamp_ns,
            };
            if waits::finish(&key, end) {
                // finish() emitted the event with the measured wait.
                return;
            }
        }
        EventKind::LockGranted | EventKind::LockReleased => {}
    }
    emit(|out| {
        out.source = Source::Daemon as u32;
        out.kind = kind as u32;
        out.dev = ev.dev;
        out.ino = ev.ino;
        out.start = ev.start;
        out.end = ev.end;
        out.pid = ev.pid;
        out.lock_type = ev.lock_type;
        out.owner_kind = ev.owner_kind;
        out.waiter = ev.waiter;
        out.wait_reason = ev.wait_reason;
        out.caller_ts_ns = ev.timestamp_ns;
        out.host_len = ev.host_len;
        out.host = ev.host;
    });
}

macro_rules! probe_programs {
    ($($name:ident => $kind:ident;)*) => {
        $(
            #[uprobe]
            pub fn $name(ctx: ProbeContext) -> u32 {
                handle(&ctx, EventKind::$kind);
                0
            }
        )*
    };
}

// Names stay within the kernel's 15-character program name limit.
probe_programs! {
    lfs_up_request => LockRequested;
    lfs_up_granted => LockGranted;
    lfs_up_refused => LockRefused;
    lfs_up_blocked => LockBlocked;
    lfs_up_waitend => WaitEnded;
    lfs_up_release => LockReleased;
    lfs_up_shareref => ShareRefused;
    lfs_up_ioblock => IoBlocked;
}
