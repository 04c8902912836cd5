//! Writing events into the ring buffer.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use lockfs_ebpf_common::{LockEvent, DIAG_RING_FULL};

use crate::maps::{diag, EVENTS};

/// Reserves an event, lets `fill` write it (on top of zeroed fields plus the
/// timestamp and emitting process) and submits it. A full ring buffer drops
/// the event and counts the drop; counters are kept regardless.
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
    entry.submit(0);
}

/// Monotonic time, nanoseconds.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}
