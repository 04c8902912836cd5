//! Events from the ring buffer, decoded into Rust types.

use std::time::Duration;

use lockfs_ebpf_common::{
    EventKind, KernelPoint, LockEvent, LockType, OwnerKind, Source, WaitEndReason, HOST_NAME_LEN,
};

/// One lock event, from the kernel or from a lockfs daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Kernel locks or the daemon's table.
    pub source: Source,
    /// What happened.
    pub kind: EventKind,
    /// The kernel tracepoint that reported it ([`KernelPoint::None`] for daemon events).
    pub point: KernelPoint,
    /// `CLOCK_MONOTONIC` nanoseconds when the event was recorded.
    pub ts_ns: u64,
    /// The daemon's own timestamp from the probe event (0 if none).
    pub caller_ts_ns: u64,
    /// File device, `stat(2)` encoding.
    pub dev: u64,
    /// File inode.
    pub ino: u64,
    /// First byte of the range.
    pub start: u64,
    /// Last byte, inclusive ([`crate::TO_EOF`] for end of file).
    pub end: u64,
    /// Lock type.
    pub lock_type: LockType,
    /// Owner class.
    pub owner_kind: OwnerKind,
    /// Lock owner's pid (kernel `fl_pid`) or NLM svid.
    pub pid: u32,
    /// Process that emitted the event (the locking process, or the daemon).
    pub tgid: u32,
    /// Daemon waiter token, or the kernel thread id of the locking thread.
    pub waiter: u64,
    /// For `WaitEnded`: the measured wait (`None` if the start was not seen).
    pub wait: Option<Duration>,
    /// For `WaitEnded`: why the wait ended.
    pub wait_reason: WaitEndReason,
    /// Kernel return value (negative errno, or 1 for "deferred"); 0 for daemon events.
    pub ret: i32,
    /// Remote host (NLM owners); empty for local ones.
    pub host: String,
}

/// Why a ring buffer record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The record is shorter than a `LockEvent`.
    #[error("event record is {0} bytes, expected at least {size}", size = std::mem::size_of::<LockEvent>())]
    Short(usize),
    /// A field holds a value no program writes.
    #[error("event field {field} has unknown value {value}")]
    BadField {
        /// Field name.
        field: &'static str,
        /// The raw value.
        value: u32,
    },
}

impl Event {
    /// Decodes one ring buffer record.
    pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
        if bytes.len() < std::mem::size_of::<LockEvent>() {
            return Err(DecodeError::Short(bytes.len()));
        }
        // SAFETY: the length was checked; `LockEvent` is plain integers, so
        // any bit pattern is valid, and read_unaligned copes with alignment.
        let raw: LockEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        Self::from_raw(&raw)
    }

    /// Decodes a raw event, validating every enumerated field.
    pub fn from_raw(raw: &LockEvent) -> Result<Event, DecodeError> {
        fn field<T>(
            field: &'static str,
            value: u32,
            f: fn(u32) -> Option<T>,
        ) -> Result<T, DecodeError> {
            f(value).ok_or(DecodeError::BadField { field, value })
        }
        let kind = field("kind", raw.kind, EventKind::from_raw)?;
        let wait_reason = field("wait_reason", raw.wait_reason, WaitEndReason::from_raw)?;
        let host_len = (raw.host_len as usize).min(HOST_NAME_LEN);
        Ok(Event {
            source: field("source", raw.source, Source::from_raw)?,
            kind,
            point: field("point", raw.point, KernelPoint::from_raw)?,
            ts_ns: raw.ts_ns,
            caller_ts_ns: raw.caller_ts_ns,
            dev: raw.dev,
            ino: raw.ino,
            start: raw.start,
            end: raw.end,
            lock_type: field("lock_type", raw.lock_type, LockType::from_raw)?,
            owner_kind: field("owner_kind", raw.owner_kind, OwnerKind::from_raw)?,
            pid: raw.pid,
            tgid: raw.tgid,
            waiter: raw.waiter,
            // A measured wait is never 0 ns; 0 marks a wait whose start
            // was not seen (for example it began before tracing started).
            wait: (kind == EventKind::WaitEnded && raw.wait_ns != 0)
                .then(|| Duration::from_nanos(raw.wait_ns)),
            wait_reason,
            ret: raw.ret,
            host: String::from_utf8_lossy(&raw.host[..host_len]).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> LockEvent {
        LockEvent {
            source: Source::Daemon as u32,
            kind: EventKind::LockRefused as u32,
            lock_type: LockType::Shared as u32,
            owner_kind: OwnerKind::Nlm as u32,
            dev: 3,
            ino: 4,
            start: 5,
            end: 6,
            pid: 7,
            host_len: 5,
            host: {
                let mut h = [0; HOST_NAME_LEN];
                h[..5].copy_from_slice(b"alpha");
                h
            },
            ..LockEvent::ZERO
        }
    }

    #[test]
    fn decodes_a_valid_record() {
        let r = raw();
        // SAFETY: viewing a plain-integer struct as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&r as *const LockEvent).cast::<u8>(),
                std::mem::size_of::<LockEvent>(),
            )
        };
        let ev = Event::decode(bytes).unwrap();
        assert_eq!(ev.kind, EventKind::LockRefused);
        assert_eq!(ev.owner_kind, OwnerKind::Nlm);
        assert_eq!(ev.host, "alpha");
        assert_eq!((ev.dev, ev.ino, ev.start, ev.end, ev.pid), (3, 4, 5, 6, 7));
        assert_eq!(ev.wait, None);
    }

    #[test]
    fn rejects_short_and_malformed_records() {
        assert_eq!(Event::decode(&[0; 10]), Err(DecodeError::Short(10)));
        let mut r = raw();
        r.kind = 99;
        assert_eq!(
            Event::from_raw(&r),
            Err(DecodeError::BadField {
                field: "kind",
                value: 99
            })
        );
        let mut r = raw();
        r.host_len = 1000;
        assert_eq!(Event::from_raw(&r).unwrap().host.len(), HOST_NAME_LEN);
    }
}
