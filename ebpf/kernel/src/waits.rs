//! Waits in progress: when they start, when they end, and how long they took.
//!
//! A wait is keyed by [`WaiterKey`]. For the daemon the key is the waiter
//! token it passes in the probe event. For the kernel's own locks there is
//! no token, but a blocked lock request always sleeps in the thread that asked
//! for it, so the thread id is the token:
//!
//! - `posix_lock_inode` / `flock_lock_inode` returning `FILE_LOCK_DEFERRED`
//!   (1) means the request conflicted, was queued behind the blocker, and the
//!   thread is about to sleep: the wait starts (the first deferral only; a
//!   spurious wake-up that defers again keeps the original start).
//! - After a wake-up the kernel retries the same request in the same thread,
//!   and the tracepoint fires again: `ret == 0` ends the wait as granted, a
//!   negative `ret` (a deadlock found on retry) as failed.
//! - A signal ends the sleep without a retry. `fcntl_setlk` fires at the end
//!   of every `F_SETLK(W)`/`F_OFD_SETLK(W)`, and `sys_exit_flock` at the end
//!   of every `flock(2)`; if the thread still has a wait open there, it ended
//!   without a grant: interrupted for `-EINTR`/`-ERESTART*`, failed otherwise.
//!
//! - If the thread asks for a lock on another file while a wait is still
//!   open, the open wait's end was missed; it is closed as ended.
//!
//! So the measured wait runs from the moment the kernel queued the request to
//! the moment the retry succeeded (or the call gave up), in the thread's own
//! context, with no kprobes or fentry (which this platform cannot load).

use aya_ebpf::bindings::BPF_NOEXIST;
use lockfs_ebpf_common::{
    EventKind, FileKey, KernelPoint, WaitEndReason, WaiterEntry, WaiterKey, DIAG_MAP_FULL,
    DIAG_WAIT_UNMATCHED,
};

use crate::{
    maps::{diag, hist_add, with_file_stats, WAITERS},
    record::{emit, now},
};

/// Records the start of a wait unless one is already open for `key`.
/// Returns `true` if this call started it.
#[inline(always)]
pub fn start(key: &WaiterKey, entry: &WaiterEntry) -> bool {
    match WAITERS.insert(key, entry, u64::from(BPF_NOEXIST)) {
        Ok(()) => true,
        Err(err) => {
            // -EEXIST: already waiting (a re-deferral); anything else: full.
            if err != -17 {
                diag(DIAG_MAP_FULL);
            }
            false
        }
    }
}

/// Whether `key` has a wait open.
#[inline(always)]
pub fn is_open(key: &WaiterKey) -> bool {
    WAITERS.get_ptr(key).is_some()
}

/// The file of the wait open for `key`, if any.
#[inline(always)]
pub fn open_file(key: &WaiterKey) -> Option<(u64, u64)> {
    let p = WAITERS.get_ptr(key)?;
    // SAFETY: valid until the entry is removed; read two plain fields now.
    unsafe { Some(((*p).dev, (*p).ino)) }
}

/// What the caller knows about how a wait ended.
pub struct End {
    pub reason: WaitEndReason,
    pub ret: i32,
    pub point: KernelPoint,
    pub caller_ts_ns: u64,
}

/// Ends the wait open for `key`, if any: counts it, adds it to the histogram,
/// emits a `WaitEnded` event and forgets it. Returns `false` (and counts an
/// unmatched end) when no wait was open.
#[inline(always)]
pub fn finish(key: &WaiterKey, end: End) -> bool {
    let Some(p) = WAITERS.get_ptr(key) else {
        diag(DIAG_WAIT_UNMATCHED);
        return false;
    };
    // SAFETY: the value pointer is valid until the entry is removed; copy it
    // out first so the removal below cannot recycle what we read.
    let w: WaiterEntry = unsafe { *p };
    let _ = WAITERS.remove(key);
    let waited = now().saturating_sub(w.start_ns);
    with_file_stats(
        &FileKey {
            dev: w.dev,
            ino: w.ino,
        },
        |s| {
            s.waits += 1;
            s.wait_ns_total += waited;
            if waited > s.wait_ns_max {
                s.wait_ns_max = waited;
            }
        },
    );
    hist_add(waited);
    emit(|ev| {
        ev.source = key.source;
        ev.kind = EventKind::WaitEnded as u32;
        ev.dev = w.dev;
        ev.ino = w.ino;
        ev.start = w.start;
        ev.end = w.end;
        ev.pid = w.pid;
        ev.lock_type = w.lock_type;
        ev.owner_kind = w.owner_kind;
        ev.waiter = key.token;
        ev.wait_ns = waited;
        ev.wait_reason = end.reason as u32;
        ev.ret = end.ret;
        ev.point = end.point as u32;
        ev.caller_ts_ns = end.caller_ts_ns;
    });
    true
}
