//! The event a probe point carries, laid out as a C struct.
//!
//! The eBPF side copies this struct byte for byte out of the daemon's memory,
//! so the layout is fixed with `#[repr(C)]`, every field has an explicit
//! width, and there is no implicit padding. Enumerations travel as plain
//! integers and are decoded with `from_raw`, because a reader must never
//! trust that a raw value is a valid variant.

/// Length of the fixed remote host name buffer in [`ProbeEvent`].
pub const HOST_NAME_LEN: usize = 64;

/// Range end meaning "to end of file" (ranges are inclusive).
pub const TO_EOF: u64 = u64::MAX;

/// What happened. The discriminants are part of the wire format.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A lock (or unlock) request reached the table.
    LockRequested = 1,
    /// The request was granted at once.
    LockGranted = 2,
    /// The request conflicted and the caller did not want to wait.
    LockRefused = 3,
    /// The request conflicted and the caller now waits (`waiter` is set).
    LockBlocked = 4,
    /// A wait ended; `wait_reason` says how.
    WaitEnded = 5,
    /// A lock was released (unlock, close, owner or host cleanup).
    LockReleased = 6,
    /// An open was refused by a share reservation (deny mode).
    ShareRefused = 7,
    /// A read, write or truncate was blocked by a mandatory lock.
    IoBlocked = 8,
}

impl EventKind {
    /// Every kind, in discriminant order.
    pub const ALL: [EventKind; 8] = [
        EventKind::LockRequested,
        EventKind::LockGranted,
        EventKind::LockRefused,
        EventKind::LockBlocked,
        EventKind::WaitEnded,
        EventKind::LockReleased,
        EventKind::ShareRefused,
        EventKind::IoBlocked,
    ];

    /// Decodes a raw discriminant; `None` for anything unknown.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::LockRequested),
            2 => Some(Self::LockGranted),
            3 => Some(Self::LockRefused),
            4 => Some(Self::LockBlocked),
            5 => Some(Self::WaitEnded),
            6 => Some(Self::LockReleased),
            7 => Some(Self::ShareRefused),
            8 => Some(Self::IoBlocked),
            _ => None,
        }
    }

    /// Short lowercase name, as used in symbols and listings.
    pub const fn name(self) -> &'static str {
        match self {
            Self::LockRequested => "lock_requested",
            Self::LockGranted => "lock_granted",
            Self::LockRefused => "lock_refused",
            Self::LockBlocked => "lock_blocked",
            Self::WaitEnded => "wait_ended",
            Self::LockReleased => "lock_released",
            Self::ShareRefused => "share_refused",
            Self::IoBlocked => "io_blocked",
        }
    }

    /// The probe point symbol a uprobe attaches to for this kind.
    pub const fn symbol(self) -> &'static str {
        match self {
            Self::LockRequested => "lockfs_probe_lock_requested",
            Self::LockGranted => "lockfs_probe_lock_granted",
            Self::LockRefused => "lockfs_probe_lock_refused",
            Self::LockBlocked => "lockfs_probe_lock_blocked",
            Self::WaitEnded => "lockfs_probe_wait_ended",
            Self::LockReleased => "lockfs_probe_lock_released",
            Self::ShareRefused => "lockfs_probe_share_refused",
            Self::IoBlocked => "lockfs_probe_io_blocked",
        }
    }
}

/// Which kind of owner holds or asks for the lock.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OwnerKind {
    /// Not known (kernel events that carry no owner class).
    Unknown = 0,
    /// Classic process-associated POSIX lock (`F_SETLK`).
    Posix = 1,
    /// Open file description lock (`F_OFD_SETLK`).
    Ofd = 2,
    /// BSD `flock`.
    Flock = 3,
    /// A remote NLM client; `pid` is the svid, `host` the caller name.
    Nlm = 4,
}

impl OwnerKind {
    /// Decodes a raw discriminant; `None` for anything unknown.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Self::Unknown),
            1 => Some(Self::Posix),
            2 => Some(Self::Ofd),
            3 => Some(Self::Flock),
            4 => Some(Self::Nlm),
            _ => None,
        }
    }
}

/// Lock type, with the same numbering as `F_RDLCK`/`F_WRLCK`/`F_UNLCK` on Linux.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockType {
    /// Shared (read) lock.
    Shared = 0,
    /// Exclusive (write) lock.
    Exclusive = 1,
    /// Unlock.
    Unlock = 2,
}

impl LockType {
    /// Decodes a raw discriminant; `None` for anything unknown.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Self::Shared),
            1 => Some(Self::Exclusive),
            2 => Some(Self::Unlock),
            _ => None,
        }
    }
}

/// Why a wait ended.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WaitEndReason {
    /// Not a wait-ended event.
    None = 0,
    /// The lock was granted to the waiter.
    Granted = 1,
    /// The waiter was cancelled (NLM CANCEL, owner went away).
    Cancelled = 2,
    /// The waiting process was interrupted by a signal.
    Interrupted = 3,
    /// The wait timed out.
    TimedOut = 4,
    /// The retry after wake-up failed (for example a deadlock was found).
    Failed = 5,
    /// The wait ended and the source cannot tell why (kernel lease breaks).
    Ended = 6,
}

impl WaitEndReason {
    /// Decodes a raw discriminant; `None` for anything unknown.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Self::None),
            1 => Some(Self::Granted),
            2 => Some(Self::Cancelled),
            3 => Some(Self::Interrupted),
            4 => Some(Self::TimedOut),
            5 => Some(Self::Failed),
            6 => Some(Self::Ended),
            _ => None,
        }
    }
}

/// One lock table decision, as handed to a probe point.
///
/// Build it with [`ProbeEvent::new`] and the `with_*` methods; the raw fields
/// are public because the eBPF side reads them by offset.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeEvent {
    /// [`EventKind`] as `u32`.
    pub kind: u32,
    /// [`OwnerKind`] as `u32`.
    pub owner_kind: u32,
    /// Device of the file (`st_dev`).
    pub dev: u64,
    /// Inode of the file (`st_ino`).
    pub ino: u64,
    /// Process id of a local owner, or the NLM svid of a remote one.
    pub pid: u32,
    /// [`LockType`] as `u32`.
    pub lock_type: u32,
    /// First byte of the range.
    pub start: u64,
    /// Last byte of the range, inclusive; [`TO_EOF`] for "to end of file".
    pub end: u64,
    /// Token naming one waiter, stable from `LockBlocked` to `WaitEnded`; 0 if none.
    pub waiter: u64,
    /// The caller's own monotonic timestamp in nanoseconds; 0 if not given.
    pub timestamp_ns: u64,
    /// [`WaitEndReason`] as `u32`; meaningful for `WaitEnded` only.
    pub wait_reason: u32,
    /// Number of meaningful bytes in `host`.
    pub host_len: u32,
    /// Remote host name, NUL padded; empty for local owners.
    pub host: [u8; HOST_NAME_LEN],
}

impl ProbeEvent {
    /// A local event of `kind` on file `(dev, ino)`, whole file, exclusive.
    pub const fn new(kind: EventKind, dev: u64, ino: u64) -> Self {
        Self {
            kind: kind as u32,
            owner_kind: OwnerKind::Unknown as u32,
            dev,
            ino,
            pid: 0,
            lock_type: LockType::Exclusive as u32,
            start: 0,
            end: TO_EOF,
            waiter: 0,
            timestamp_ns: 0,
            wait_reason: WaitEndReason::None as u32,
            host_len: 0,
            host: [0; HOST_NAME_LEN],
        }
    }

    /// Sets the owner kind and pid (or NLM svid).
    pub const fn with_owner(mut self, owner_kind: OwnerKind, pid: u32) -> Self {
        self.owner_kind = owner_kind as u32;
        self.pid = pid;
        self
    }

    /// Sets the inclusive byte range.
    pub const fn with_range(mut self, start: u64, end: u64) -> Self {
        self.start = start;
        self.end = end;
        self
    }

    /// Sets the lock type.
    pub const fn with_lock_type(mut self, lock_type: LockType) -> Self {
        self.lock_type = lock_type as u32;
        self
    }

    /// Sets the waiter token.
    pub const fn with_waiter(mut self, waiter: u64) -> Self {
        self.waiter = waiter;
        self
    }

    /// Sets the caller's timestamp.
    pub const fn with_timestamp(mut self, timestamp_ns: u64) -> Self {
        self.timestamp_ns = timestamp_ns;
        self
    }

    /// Sets why a wait ended.
    pub const fn with_wait_reason(mut self, reason: WaitEndReason) -> Self {
        self.wait_reason = reason as u32;
        self
    }

    /// Sets the remote host name. Names longer than [`HOST_NAME_LEN`] bytes
    /// are cut (at a byte boundary; the reader decodes lossily).
    pub fn with_host(mut self, host: &[u8]) -> Self {
        let n = host.len().min(HOST_NAME_LEN);
        self.host = [0; HOST_NAME_LEN];
        self.host[..n].copy_from_slice(&host[..n]);
        self.host_len = n as u32;
        self
    }

    /// The decoded event kind, if valid.
    pub const fn event_kind(&self) -> Option<EventKind> {
        EventKind::from_raw(self.kind)
    }

    /// The meaningful bytes of the host name.
    pub fn host_bytes(&self) -> &[u8] {
        let n = (self.host_len as usize).min(HOST_NAME_LEN);
        &self.host[..n]
    }
}

// The eBPF side relies on this exact size; a change here is a wire change.
const _: () = assert!(core::mem::size_of::<ProbeEvent>() == 136);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_round_trip_and_unknown_values_are_rejected() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_raw(kind as u32), Some(kind));
            assert!(kind.symbol().ends_with(kind.name()));
        }
        assert_eq!(EventKind::from_raw(0), None);
        assert_eq!(EventKind::from_raw(9), None);
        assert_eq!(OwnerKind::from_raw(4), Some(OwnerKind::Nlm));
        assert_eq!(OwnerKind::from_raw(5), None);
        assert_eq!(LockType::from_raw(2), Some(LockType::Unlock));
        assert_eq!(LockType::from_raw(3), None);
        assert_eq!(WaitEndReason::from_raw(5), Some(WaitEndReason::Failed));
        assert_eq!(WaitEndReason::from_raw(6), Some(WaitEndReason::Ended));
        assert_eq!(WaitEndReason::from_raw(7), None);
    }

    #[test]
    fn builder_sets_fields_and_cuts_long_hosts() {
        let long = [b'h'; 100];
        let ev = ProbeEvent::new(EventKind::LockBlocked, 7, 9)
            .with_owner(OwnerKind::Nlm, 42)
            .with_range(10, 19)
            .with_lock_type(LockType::Shared)
            .with_waiter(5)
            .with_host(&long);
        assert_eq!(ev.event_kind(), Some(EventKind::LockBlocked));
        assert_eq!((ev.dev, ev.ino, ev.pid), (7, 9, 42));
        assert_eq!((ev.start, ev.end, ev.waiter), (10, 19, 5));
        assert_eq!(ev.lock_type, LockType::Shared as u32);
        assert_eq!(ev.host_bytes().len(), HOST_NAME_LEN);
        let short = ev.with_host(b"client1");
        assert_eq!(short.host_bytes(), b"client1");
        assert_eq!(short.host[7], 0);
    }

    #[test]
    fn layout_matches_the_offsets_the_ebpf_side_reads() {
        assert_eq!(core::mem::offset_of!(ProbeEvent, dev), 8);
        assert_eq!(core::mem::offset_of!(ProbeEvent, pid), 24);
        assert_eq!(core::mem::offset_of!(ProbeEvent, start), 32);
        assert_eq!(core::mem::offset_of!(ProbeEvent, waiter), 48);
        assert_eq!(core::mem::offset_of!(ProbeEvent, wait_reason), 64);
        assert_eq!(core::mem::offset_of!(ProbeEvent, host), 72);
    }
}
