//! The probe point symbols and their safe wrappers.
//!
//! Each point is an unmangled, never-inlined `extern "C"` function taking a
//! pointer to a [`ProbeEvent`], so a uprobe finds it by name and reads the
//! event from the first argument register. The body only hands the pointer
//! and a per-point constant to `black_box`: that keeps the optimiser from
//! deleting the call or folding the points into one shared body, and costs
//! nothing at run time.
//!
//! All points share one text section. The linker garbage-collects by
//! section, so a binary that calls any probe point keeps every one of them,
//! and a uprobe can attach to all eight symbols even when the daemon happens
//! never to call some of them.

use crate::ProbeEvent;

macro_rules! probe_points {
    ($( $(#[$doc:meta])* $wrapper:ident => $symbol:ident = $tag:literal; )*) => {
        $(
            #[doc = concat!("Probe point symbol behind [`", stringify!($wrapper), "`].")]
            ///
            /// Safe to call with any pointer: the function never reads it. An
            /// attached uprobe copies the `ProbeEvent` behind it with a
            /// fault-tolerant read and counts a bad pointer as a failed read.
            #[no_mangle]
            #[inline(never)]
            #[link_section = ".text.lockfs_probes"]
            pub extern "C" fn $symbol(ev: *const ProbeEvent) {
                core::hint::black_box(($tag, ev));
            }

            $(#[$doc])*
            #[inline]
            pub fn $wrapper(ev: &ProbeEvent) {
                $symbol(ev)
            }
        )*
    };
}

probe_points! {
    /// A lock or unlock request reached the table.
    lock_requested => lockfs_probe_lock_requested = 1u32;
    /// A request was granted at once.
    lock_granted => lockfs_probe_lock_granted = 2u32;
    /// A request conflicted and the caller does not wait.
    lock_refused => lockfs_probe_lock_refused = 3u32;
    /// A request conflicted and the caller now waits (set `waiter`).
    lock_blocked => lockfs_probe_lock_blocked = 4u32;
    /// A wait ended (set `waiter` and `wait_reason`).
    wait_ended => lockfs_probe_wait_ended = 5u32;
    /// A lock was released.
    lock_released => lockfs_probe_lock_released = 6u32;
    /// An open was refused by a share reservation.
    share_refused => lockfs_probe_share_refused = 7u32;
    /// A read, write or truncate was blocked by a mandatory lock.
    io_blocked => lockfs_probe_io_blocked = 8u32;
}

/// Calls the probe point that matches `ev.kind`; events with an unknown kind
/// are dropped, since no uprobe could classify them.
pub fn emit(ev: &ProbeEvent) {
    use crate::EventKind;
    match ev.event_kind() {
        Some(EventKind::LockRequested) => lock_requested(ev),
        Some(EventKind::LockGranted) => lock_granted(ev),
        Some(EventKind::LockRefused) => lock_refused(ev),
        Some(EventKind::LockBlocked) => lock_blocked(ev),
        Some(EventKind::WaitEnded) => wait_ended(ev),
        Some(EventKind::LockReleased) => lock_released(ev),
        Some(EventKind::ShareRefused) => share_refused(ev),
        Some(EventKind::IoBlocked) => io_blocked(ev),
        None => {}
    }
}
