//! The gate word that decides which probe points the daemon calls at all.
//!
//! An attached uprobe costs a trap into the kernel on every hit (about 15 us
//! on the development VM, more than a whole FUSE lock and unlock), so the
//! call sites do not call a probe point unless a tracer asked for that class
//! of event. The tracer writes [`LOCKFS_PROBE_GATE`] in the daemon's memory
//! after attaching and clears it when it stops; the call sites read it with
//! one relaxed load before they even build a [`crate::ProbeEvent`]. With the
//! gate cleared the probe points cost that one load and a branch.
//!
//! The word is a plain exported symbol so that a tracer finds its address in
//! the daemon's symbol table, as it finds the probe points themselves.

use core::sync::atomic::{AtomicU32, Ordering};

/// Gate bit: contention events (refused, blocked, wait ended, share refused,
/// mandatory I/O blocked). Each one costs one uprobe trap while traced.
pub const GATE_CONTENTION: u32 = 1;

/// Gate bit: every event, including requests, grants and releases of
/// uncontended locks. Each lock operation then costs one trap per event.
pub const GATE_ALL: u32 = 2;

/// Symbol name of [`LOCKFS_PROBE_GATE`] in the daemon's symbol table.
pub const GATE_SYMBOL: &str = "LOCKFS_PROBE_GATE";

/// Which probe points the call sites call; written by the tracer.
///
/// A tracer writes it from outside the process, so nothing inside the
/// process may cache it: call sites load it on every operation.
#[no_mangle]
pub static LOCKFS_PROBE_GATE: AtomicU32 = AtomicU32::new(0);

/// Whether contention events are wanted (either gate bit is set).
#[inline(always)]
pub fn contention_enabled() -> bool {
    LOCKFS_PROBE_GATE.load(Ordering::Relaxed) & (GATE_CONTENTION | GATE_ALL) != 0
}

/// Whether every event is wanted.
#[inline(always)]
pub fn all_enabled() -> bool {
    LOCKFS_PROBE_GATE.load(Ordering::Relaxed) & GATE_ALL != 0
}

/// The current gate value.
#[inline(always)]
pub fn gate() -> u32 {
    LOCKFS_PROBE_GATE.load(Ordering::Relaxed)
}

/// Sets the gate from inside the process (tests, benchmarks, a daemon
/// that traces itself); an outside tracer writes the symbol instead.
pub fn set_gate(value: u32) {
    LOCKFS_PROBE_GATE.store(value, Ordering::Relaxed);
}

#[cfg(target_os = "linux")]
mod clock {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }

    const CLOCK_MONOTONIC: i32 = 1;

    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }

    pub fn monotonic_ns() -> u64 {
        let mut ts = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec through a valid pointer;
        // on 64-bit Linux `clockid_t` is i32 and `timespec` is two i64s, as
        // declared above. The symbol comes from the C library every Linux
        // program links.
        let rc = unsafe { clock_gettime(CLOCK_MONOTONIC, &mut ts) };
        if rc != 0 {
            return 0;
        }
        (ts.tv_sec as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(ts.tv_nsec as u64)
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds (the clock `bpf_ktime_get_ns` reads), for
/// [`crate::ProbeEvent::with_timestamp`]; 0 where it is unavailable.
pub fn monotonic_ns() -> u64 {
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    {
        clock::monotonic_ns()
    }
    #[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
    {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_bits_select_event_classes() {
        set_gate(0);
        assert!(!contention_enabled() && !all_enabled());
        set_gate(GATE_CONTENTION);
        assert!(contention_enabled() && !all_enabled());
        set_gate(GATE_ALL);
        assert!(contention_enabled() && all_enabled());
        set_gate(0);
        assert_eq!(gate(), 0);
    }

    #[test]
    fn monotonic_clock_advances() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
    }
}
