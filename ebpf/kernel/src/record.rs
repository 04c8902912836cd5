//! Writing events into the ring buffer.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_ringbuf_query},
};
use lockfs_ebpf_common::{EventKind, LockEvent, DIAG_RING_FULL};

use crate::maps::{diag, EVENTS};

/// Unread bytes past which a routine event wakes the reader anyway.
const WAKE_AFTER_BYTES: u64 = 64 * 1024;

/// Reserves an event, lets `fill` write it (on top of zeroed fields plus the
/// timestamp and emitting process) and submits it. A full ring buffer drops
/// the event and counts the drop; counters are kept regardless.
///
/// Waking the reader costs far more than recording (an interrupt-time work
/// item and a context switch on the reader's CPU), and with a reader that
/// keeps up the kernel would wake it for every record: on a native file
/// that made each traced lock+unlock pair several times slower. So only
/// contention (refusals, waits, blocked I/O) wakes the reader at once;
/// routine requests, grants and releases wake it only once 64 KiB are
/// waiting, and otherwise wait for its next periodic poll (`lockfs trace`
/// polls at least every 200 ms).
#[inline(always)]
pub fn emit(fill: impl FnOnce(&mut LockEvent)) {
    let Some(mut entry) = EVENTS.reserve(0) else {
        diag(DIAG_RING_FULL);
        return;
    };
    let ev = entry.write(LockEvent::ZERO);
    ev.ts_ns = now();
    ev.tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    fill(ev);
    let routine = ev.kind == EventKind::LockRequested as u32
        || ev.kind == EventKind::LockGranted as u32
        || ev.kind == EventKind::LockReleased as u32;
    let flags = if !routine {
        0
    } else if unread_bytes() >= WAKE_AFTER_BYTES {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    };
    entry.submit(flags);
}

/// Bytes recorded and not yet consumed.
#[inline(always)]
fn unread_bytes() -> u64 {
    // The BTF ring buffer's static is the map itself (its address is
    // relocated to the map), as aya-ebpf passes it to the other helpers;
    // btf_maps::RingBuf has no query method of its own.
    let map = core::ptr::from_ref(&EVENTS).cast_mut().cast();
    // SAFETY: `map` is the ring buffer map; the helper only reads its
    // positions.
    unsafe { bpf_ringbuf_query(map, u64::from(BPF_RB_AVAIL_DATA)) }
}

/// Monotonic time, nanoseconds.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}
