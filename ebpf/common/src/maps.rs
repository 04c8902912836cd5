//! Map names, keys, values and the event record of the eBPF side.

use crate::HOST_NAME_LEN;

/// Ring buffer of [`LockEvent`]s.
pub const MAP_EVENTS: &str = "lfs_events";
/// Per-CPU hash of [`FileKey`] to [`FileStats`].
pub const MAP_FILES: &str = "lfs_files";
/// Per-CPU array of [`HIST_BUCKETS`] log2 wait time buckets (`u64` counts).
pub const MAP_WAIT_HIST: &str = "lfs_wait_hist";
/// Hash of [`WaiterKey`] to [`WaiterEntry`]: the waits in progress.
pub const MAP_WAITERS: &str = "lfs_waiters";
/// Per-CPU array of [`DIAG_SLOTS`] counters for lost or malformed input.
pub const MAP_DIAG: &str = "lfs_diag";

/// Every map the programs declare, in the order the loader pins them.
pub const ALL_MAPS: [&str; 5] = [MAP_EVENTS, MAP_FILES, MAP_WAIT_HIST, MAP_WAITERS, MAP_DIAG];

/// Size of the event ring buffer in bytes (a power of two, page multiple).
pub const EVENTS_RING_BYTES: u32 = 1 << 20;
/// Most files with counters at once.
pub const MAX_FILES: u32 = 16_384;
/// Most waits in progress at once.
pub const MAX_WAITERS: u32 = 16_384;
/// Number of log2 histogram buckets: bucket `i` counts waits of
/// `[2^i, 2^(i+1))` nanoseconds, bucket 0 also counts 0 ns.
pub const HIST_BUCKETS: u32 = 64;

/// Diagnostic slot: an event was dropped because the ring buffer was full.
pub const DIAG_RING_FULL: u32 = 0;
/// Diagnostic slot: a probe event could not be read from the daemon's memory.
pub const DIAG_READ_FAILED: u32 = 1;
/// Diagnostic slot: a probe event carried an invalid kind, type or range.
pub const DIAG_MALFORMED: u32 = 2;
/// Diagnostic slot: a wait ended whose start was never seen.
pub const DIAG_WAIT_UNMATCHED: u32 = 3;
/// Diagnostic slot: the waiters or files map was full.
pub const DIAG_MAP_FULL: u32 = 4;
/// Number of diagnostic slots.
pub const DIAG_SLOTS: u32 = 8;

/// Where an event came from.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// The kernel's own file locks (filelock tracepoints).
    Kernel = 1,
    /// The lockfs daemon's lock table (uprobes on its probe points).
    Daemon = 2,
}

impl Source {
    /// Decodes a raw discriminant; `None` for anything unknown.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::Kernel),
            2 => Some(Self::Daemon),
            _ => None,
        }
    }
}

/// The kernel tracepoint an event came from (0 for daemon events).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelPoint {
    /// Not a kernel event.
    None = 0,
    /// `filelock:posix_lock_inode`.
    PosixLockInode = 1,
    /// `filelock:flock_lock_inode`.
    FlockLockInode = 2,
    /// `filelock:fcntl_setlk`.
    FcntlSetlk = 3,
    /// `filelock:locks_remove_posix`.
    LocksRemovePosix = 4,
    /// `syscalls:sys_exit_flock`.
    SysExitFlock = 5,
    /// `filelock:break_lease_block`.
    BreakLeaseBlock = 6,
    /// `filelock:break_lease_unblock`.
    BreakLeaseUnblock = 7,
}

impl KernelPoint {
    /// Decodes a raw discriminant; `None` for anything unknown.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Self::None),
            1 => Some(Self::PosixLockInode),
            2 => Some(Self::FlockLockInode),
            3 => Some(Self::FcntlSetlk),
            4 => Some(Self::LocksRemovePosix),
            5 => Some(Self::SysExitFlock),
            6 => Some(Self::BreakLeaseBlock),
            7 => Some(Self::BreakLeaseUnblock),
            _ => None,
        }
    }
}

/// File identity: `st_dev` (userspace encoding, as `stat(2)` reports it) and
/// `st_ino`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileKey {
    /// Device, as in `stat.st_dev`.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

/// Per-file contention counters (one copy per CPU; the loader sums them and
/// takes the largest `wait_ns_max`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStats {
    /// Lock requests (unlocks not counted; a retry after wake-up is not a new attempt).
    pub attempts: u64,
    /// Requests that met a conflicting lock (refused or blocked).
    pub conflicts: u64,
    /// Requests that blocked and started a wait.
    pub blocked: u64,
    /// Waits that ended (any reason) and were timed.
    pub waits: u64,
    /// Sum of the timed waits, nanoseconds.
    pub wait_ns_total: u64,
    /// Longest timed wait, nanoseconds.
    pub wait_ns_max: u64,
}

/// Names one wait in progress.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WaiterKey {
    /// Daemon: the waiter token from the probe event. Kernel: the thread id.
    pub token: u64,
    /// The process that reported the wait (daemon or locking process).
    pub tgid: u32,
    /// [`Source`] as `u32`.
    pub source: u32,
}

/// A wait in progress.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaiterEntry {
    /// `bpf_ktime_get_ns()` when the wait started.
    pub start_ns: u64,
    /// File device (`st_dev` encoding).
    pub dev: u64,
    /// File inode.
    pub ino: u64,
    /// First byte of the range asked for.
    pub start: u64,
    /// Last byte (inclusive) asked for.
    pub end: u64,
    /// Owner pid or NLM svid.
    pub pid: u32,
    /// [`crate::LockType`] as `u32`.
    pub lock_type: u32,
    /// [`crate::OwnerKind`] as `u32`.
    pub owner_kind: u32,
    /// Explicit padding, always zero.
    pub pad: u32,
}

/// One event sent to userspace through [`MAP_EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockEvent {
    /// `bpf_ktime_get_ns()` (`CLOCK_MONOTONIC`) when the event was recorded.
    pub ts_ns: u64,
    /// File device (`st_dev` encoding).
    pub dev: u64,
    /// File inode.
    pub ino: u64,
    /// First byte of the range.
    pub start: u64,
    /// Last byte of the range, inclusive; `TO_EOF` for end of file.
    pub end: u64,
    /// Daemon: waiter token. Kernel: thread id of the locking thread.
    pub waiter: u64,
    /// For wait-ended events: how long the wait lasted, nanoseconds.
    pub wait_ns: u64,
    /// The daemon's own timestamp from the probe event (0 for kernel events).
    pub caller_ts_ns: u64,
    /// Process that emitted the event (the daemon, or the locking process).
    pub tgid: u32,
    /// Lock owner's pid (kernel `fl_pid`), or the NLM svid.
    pub pid: u32,
    /// [`Source`] as `u32`.
    pub source: u32,
    /// [`crate::EventKind`] as `u32`.
    pub kind: u32,
    /// [`crate::OwnerKind`] as `u32`.
    pub owner_kind: u32,
    /// [`crate::LockType`] as `u32`.
    pub lock_type: u32,
    /// [`crate::WaitEndReason`] as `u32`.
    pub wait_reason: u32,
    /// Kernel return value of the lock operation (negative errno), 0 for daemon events.
    pub ret: i32,
    /// [`KernelPoint`] as `u32`.
    pub point: u32,
    /// Meaningful bytes in `host`.
    pub host_len: u32,
    /// Remote host name, NUL padded (daemon NLM events only).
    pub host: [u8; HOST_NAME_LEN],
}

impl LockEvent {
    /// An all-zero event, the starting point for the programs to fill in.
    pub const ZERO: LockEvent = LockEvent {
        ts_ns: 0,
        dev: 0,
        ino: 0,
        start: 0,
        end: 0,
        waiter: 0,
        wait_ns: 0,
        caller_ts_ns: 0,
        tgid: 0,
        pid: 0,
        source: 0,
        kind: 0,
        owner_kind: 0,
        lock_type: 0,
        wait_reason: 0,
        ret: 0,
        point: 0,
        host_len: 0,
        host: [0; HOST_NAME_LEN],
    };
}

/// Log2 histogram bucket for a wait of `ns` nanoseconds.
#[inline(always)]
pub const fn hist_bucket(ns: u64) -> u32 {
    if ns == 0 {
        0
    } else {
        63 - ns.leading_zeros()
    }
}

/// Converts a kernel `dev_t` (major in the top 12 bits of 32, minor in the low
/// 20, as the filelock tracepoints report `s_dev`) into the userspace encoding
/// that `stat(2)` reports, so kernel and daemon events share one file key.
#[inline(always)]
pub const fn kernel_dev_to_user(s_dev: u32) -> u64 {
    let major = (s_dev >> 20) as u64;
    let minor = (s_dev & 0xf_ffff) as u64;
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

const _: () = assert!(core::mem::size_of::<LockEvent>() == 168);
const _: () = assert!(core::mem::size_of::<WaiterEntry>() == 56);
const _: () = assert!(core::mem::size_of::<WaiterKey>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]` structs of plain integers with no
    // implicit padding (checked by the size assertions above), so every bit
    // pattern is a valid value.
    unsafe impl aya::Pod for super::FileKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FileStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::WaiterKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::WaiterEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LockEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hist_bucket_is_floor_log2() {
        assert_eq!(hist_bucket(0), 0);
        assert_eq!(hist_bucket(1), 0);
        assert_eq!(hist_bucket(2), 1);
        assert_eq!(hist_bucket(3), 1);
        assert_eq!(hist_bucket(1024), 10);
        assert_eq!(hist_bucket(200_000_000), 27);
        assert_eq!(hist_bucket(u64::MAX), 63);
    }

    #[test]
    fn kernel_dev_matches_libc_makedev() {
        // 8:1 (sda1) and a large minor, against glibc's makedev layout.
        let sda1 = (8u32 << 20) | 1;
        assert_eq!(kernel_dev_to_user(sda1), (8 << 8) | 1);
        let big = (259u32 << 20) | 0x12345;
        let want = ((259u64 & 0xfff) << 8) | ((0x12345u64 & 0xffff_ff00) << 12) | 0x45;
        assert_eq!(kernel_dev_to_user(big), want);
    }

    #[test]
    fn map_names_fit_the_kernel_limit() {
        for name in ALL_MAPS {
            assert!(name.len() <= 15, "{name} is longer than 15 bytes");
        }
    }
}
