//! Keeps a lock or open request from overtaking an earlier RELEASE (lockfs patch 7).
//!
//! The kernel sends the last close of an open file as a RELEASE that nobody waits
//! for: close(2) returns at once, and the file system drops the open file's OFD and
//! flock locks (and its share reservation) when it handles the RELEASE. A process
//! that locks the file after that close therefore sends its request after the
//! RELEASE, but with several request threads another thread may read it and decide
//! it first, against locks that are already gone for the closing process.
//!
//! The kernel numbers requests in the order it queues them (ids step by 2; odd ids
//! are interrupts of the even one below), and hands them out in that order. So a
//! request may be decided once every request numbered below it has been read and
//! no RELEASE numbered below it is still being handled. Each thread notes what it
//! read here; requests that depend on earlier closes wait here. An id that is never
//! read (the kernel withdraws a queued request whose caller got a fatal signal)
//! leaves a hole, given up after [`HOLE_WAIT`]; a RELEASE still running after
//! [`RELEASE_WAIT`] is no longer waited for, so a slow file system cannot stall
//! lock requests for ever.

use std::sync::Condvar;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Duration;
use std::time::Instant;

use crate::ll::fuse_abi::fuse_opcode;

/// How long an id below a waiting request may stay unread before it is taken for
/// withdrawn. Threads register what they read within microseconds; only a thread
/// descheduled for this long would be mistaken for a hole.
pub(crate) const HOLE_WAIT: Duration = Duration::from_millis(10);
/// The longest a request waits for earlier RELEASEs to be handled.
pub(crate) const RELEASE_WAIT: Duration = Duration::from_secs(1);
/// How far ahead of the lowest unread id reads are remembered. An unread id this
/// far behind is forgotten as a hole even if no request waits for it.
const WINDOW: u64 = 4096;

/// What a request is, as far as the order cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Not numbered in the kernel's sequence (interrupts, notify replies).
    Unnumbered,
    /// Ends an open file: requests after it must not be decided before it.
    Release,
    /// Decided against open files' locks and reservations: waits for earlier
    /// RELEASEs.
    Ordered,
    /// Anything else.
    Other,
}

impl Kind {
    /// Classifies a raw request from its header, without parsing the rest.
    pub(crate) fn of(data: &[u8]) -> (Kind, u64) {
        let (Some(op), Some(unique)) = (data.get(4..8), data.get(8..16)) else {
            return (Kind::Unnumbered, 0);
        };
        let op = u32::from_ne_bytes(op.try_into().unwrap_or([0; 4]));
        let unique = u64::from_ne_bytes(unique.try_into().unwrap_or([0; 8]));
        if unique & 1 == 1 {
            return (Kind::Unnumbered, unique);
        }
        let kind = match op {
            x if x == fuse_opcode::FUSE_INTERRUPT as u32 => Kind::Unnumbered,
            x if x == fuse_opcode::FUSE_NOTIFY_REPLY as u32 => Kind::Unnumbered,
            x if x == fuse_opcode::FUSE_RELEASE as u32 => Kind::Release,
            x if x == fuse_opcode::FUSE_GETLK as u32
                || x == fuse_opcode::FUSE_SETLK as u32
                || x == fuse_opcode::FUSE_SETLKW as u32
                || x == fuse_opcode::FUSE_OPEN as u32
                || x == fuse_opcode::FUSE_CREATE as u32 =>
            {
                Kind::Ordered
            }
            _ => Kind::Other,
        };
        (kind, unique)
    }
}

/// The reads of all request threads of one session.
#[derive(Debug)]
pub(crate) struct Order {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug)]
struct State {
    /// Lowest sequence number (id / 2) not yet read.
    next: u64,
    /// Sequence numbers read above `next`, a bit each, at `seq % WINDOW`.
    ahead: Box<[u64; (WINDOW / 64) as usize]>,
    /// RELEASEs read and not yet handled, by sequence number.
    releasing: Vec<u64>,
    /// Threads waiting in [`Order::wait_before`]; nobody is woken when zero.
    waiting: usize,
}

impl State {
    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn is_ahead(&self, seq: u64) -> bool {
        let (w, b) = Self::bit(seq);
        self.ahead[w] & b != 0
    }

    fn set_ahead(&mut self, seq: u64, on: bool) {
        let (w, b) = Self::bit(seq);
        if on {
            self.ahead[w] |= b;
        } else {
            self.ahead[w] &= !b;
        }
    }

    /// Moves `next` up to `to`, forgetting what lies below, then past every
    /// sequence number already read.
    fn advance_to(&mut self, to: u64) {
        if to.saturating_sub(self.next) >= WINDOW {
            self.ahead.fill(0);
            self.next = to;
        }
        while self.next < to {
            self.set_ahead(self.next, false);
            self.next += 1;
        }
        while self.is_ahead(self.next) {
            self.set_ahead(self.next, false);
            self.next += 1;
        }
    }

    fn read(&mut self, seq: u64) {
        if seq < self.next {
            // Read after its hole was given up.
            return;
        }
        if seq - self.next >= WINDOW {
            self.advance_to(seq + 1 - WINDOW);
        }
        if seq == self.next {
            self.next += 1;
            self.advance_to(self.next);
        } else {
            self.set_ahead(seq, true);
        }
    }
}

impl Order {
    /// Starts the order after the INIT request numbered `init_unique`.
    pub(crate) fn after_init(init_unique: u64) -> Self {
        Self {
            state: Mutex::new(State {
                next: (init_unique >> 1) + 1,
                ahead: Box::new([0; (WINDOW / 64) as usize]),
                releasing: Vec::new(),
                waiting: 0,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a request read from the device, before it is handled.
    pub(crate) fn read(&self, kind: Kind, unique: u64) {
        if kind == Kind::Unnumbered {
            return;
        }
        let seq = unique >> 1;
        let mut st = self.lock();
        let before = st.next;
        st.read(seq);
        if kind == Kind::Release {
            st.releasing.push(seq);
        }
        if st.next != before && st.waiting > 0 {
            self.changed.notify_all();
        }
    }

    /// Notes that the RELEASE numbered `unique` was handled.
    pub(crate) fn released(&self, unique: u64) {
        let seq = unique >> 1;
        let mut st = self.lock();
        if let Some(i) = st.releasing.iter().position(|&s| s == seq) {
            st.releasing.swap_remove(i);
        }
        if st.waiting > 0 {
            self.changed.notify_all();
        }
    }

    /// Returns once every request numbered below `unique` was read and no RELEASE
    /// below it is being handled, or the bounds of the module doc ran out.
    pub(crate) fn wait_before(&self, unique: u64) {
        let seq = unique >> 1;
        let mut st = self.lock();
        let start = Instant::now();
        let mut hole = (st.next, start);
        loop {
            let unread = st.next < seq;
            let releasing = st.releasing.iter().any(|&s| s < seq);
            if !unread && !releasing {
                return;
            }
            let now = Instant::now();
            let timeout = if unread {
                if st.next != hole.0 {
                    hole = (st.next, now);
                }
                let waited = now - hole.1;
                if waited >= HOLE_WAIT {
                    // Whatever below is still unread was withdrawn by the kernel.
                    st.advance_to(seq);
                    if st.waiting > 0 {
                        self.changed.notify_all();
                    }
                    continue;
                }
                HOLE_WAIT - waited
            } else {
                let waited = now - start;
                if waited >= RELEASE_WAIT {
                    return;
                }
                RELEASE_WAIT - waited
            };
            st.waiting += 1;
            st = self
                .changed
                .wait_timeout(st, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            st.waiting -= 1;
        }
    }
}
