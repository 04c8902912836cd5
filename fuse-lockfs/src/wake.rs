//! Requests parked while they wait in the lock table, and how they are woken.
//!
//! A request loop must never sit waiting for a lock: a handler that has to wait
//! (F_SETLKW, a blocking flock, a read of a mandatory-locked range) parks a
//! continuation here under a fresh *token*, queues in the table with
//! `Wait::Yes { token }` and returns. The continuation runs exactly once, with the
//! first of:
//! - the table's `Granted` or `Dropped` event for the token ([`Wakeups::deliver`],
//!   called by the table's notifier on whatever thread released the conflict);
//! - a `FUSE_INTERRUPT` for the request (the caller got a signal): the waiter is
//!   cancelled in the table and the request answered `EINTR`, unless the grant won
//!   the race, in which case the grant stands and the request succeeds;
//! - the end of the mount.
//!
//! An interrupt can overtake its request when several loops read `/dev/fuse`: the
//! kernel queues it as soon as one loop has read the request, and another loop
//! may handle it before the first one has parked anything. Such an interrupt is
//! remembered for a while and honoured when the request parks, so the kernel is
//! never asked to resend it (answering `EAGAIN` would make it resend at once, in a
//! busy loop for as long as an uninterruptible request, say an fsync, runs).
//!
//! Tokens handed out here have bit 63 set; other front doors sharing the table's
//! notifier must use tokens below 2^63, so [`Wakeups::deliver`] can tell whose
//! event it is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lock_table::{CancelReason, Event, SharedTable, WaiterId};
use rustc_hash::FxHashMap;

/// Marks tokens of parked FUSE requests.
pub const FUSE_TOKEN_BIT: u64 = 1 << 63;

/// How long an interrupt for a request not seen yet is remembered.
const EARLY_INTERRUPT_TTL: Duration = Duration::from_secs(30);

/// Why a parked request is woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The lock is held now (or the I/O may proceed).
    Granted,
    /// The caller was interrupted by a signal; the waiter is gone from the table.
    Interrupted,
    /// The table dropped the waiter (bulk release) or the mount ends.
    Dropped,
    /// The table refused the request after it was parked (deadlock, grace).
    Refused(fuser::Errno),
}

/// What runs when a parked request is woken.
pub(crate) type Continuation = Box<dyn FnOnce(Wake) + Send>;

/// A request is named by its mount and the kernel's unique id.
type RequestKey = (u64, u64);

struct Entry {
    cont: Continuation,
    key: RequestKey,
    /// The table's id for the waiter, once the table has queued it.
    waiter: Option<WaiterId>,
    /// An interrupt came before the waiter id was known.
    interrupted: bool,
}

#[derive(Default)]
struct State {
    by_token: FxHashMap<u64, Entry>,
    by_request: FxHashMap<RequestKey, u64>,
    early: FxHashMap<RequestKey, Instant>,
}

/// Parked requests of every mount that shares one lock table.
pub struct Wakeups {
    state: Mutex<State>,
    next: AtomicU64,
}

impl Default for Wakeups {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Wakeups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wakeups")
            .field("parked", &self.parked())
            .finish()
    }
}

/// Outcome of [`Wakeups::park`].
pub(crate) enum Parked {
    /// Parked under this token.
    Token(u64),
    /// The request was interrupted before it could park: answer `EINTR`.
    AlreadyInterrupted(Continuation),
}

impl Wakeups {
    /// An empty set.
    pub fn new() -> Self {
        Wakeups {
            state: Mutex::default(),
            next: AtomicU64::new(1),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `token` was handed out by a [`Wakeups`].
    pub fn owns_token(token: u64) -> bool {
        token & FUSE_TOKEN_BIT != 0
    }

    /// Number of parked requests.
    pub fn parked(&self) -> usize {
        self.state().by_token.len()
    }

    /// Hands an event of the table to the parked request it wakes. Returns whether
    /// the token belongs to a FUSE request (parked or already answered).
    pub fn deliver(&self, event: Event) -> bool {
        let token = event.token();
        if !Self::owns_token(token) {
            return false;
        }
        let entry = {
            let mut st = self.state();
            let e = st.by_token.remove(&token);
            if let Some(e) = &e {
                st.by_request.remove(&e.key);
            }
            e
        };
        if let Some(e) = entry {
            let wake = match event {
                Event::Granted { .. } => Wake::Granted,
                Event::Dropped { .. } => Wake::Dropped,
            };
            (e.cont)(wake);
        }
        true
    }

    /// Parks `cont` for request `unique` of mount `mount`.
    pub(crate) fn park(&self, mount: u64, unique: u64, cont: Continuation) -> Parked {
        let key = (mount, unique);
        let mut st = self.state();
        if st.early.remove(&key).is_some() {
            return Parked::AlreadyInterrupted(cont);
        }
        let token = self.next.fetch_add(1, Ordering::Relaxed) | FUSE_TOKEN_BIT;
        st.by_request.insert(key, token);
        st.by_token.insert(
            token,
            Entry {
                cont,
                key,
                waiter: None,
                interrupted: false,
            },
        );
        Parked::Token(token)
    }

    /// Takes a parked continuation back (the table answered at once).
    pub(crate) fn take(&self, token: u64) -> Option<Continuation> {
        let mut st = self.state();
        let e = st.by_token.remove(&token)?;
        st.by_request.remove(&e.key);
        Some(e.cont)
    }

    /// Records the table's waiter id for a parked request. If an interrupt came in
    /// the meantime, the waiter is cancelled and the request answered now.
    pub(crate) fn queued(&self, token: u64, waiter: WaiterId, table: &SharedTable) {
        let interrupted = {
            let mut st = self.state();
            match st.by_token.get_mut(&token) {
                // Already granted and answered.
                None => return,
                Some(e) if e.interrupted => {
                    let e = st.by_token.remove(&token);
                    if let Some(e) = &e {
                        st.by_request.remove(&e.key);
                    }
                    e
                }
                Some(e) => {
                    e.waiter = Some(waiter);
                    None
                }
            }
        };
        if let Some(e) = interrupted {
            let cancelled = table.with(|t| t.cancel_with(waiter, CancelReason::Interrupted));
            (e.cont)(if cancelled {
                Wake::Interrupted
            } else {
                Wake::Granted
            });
        }
    }

    /// Handles `FUSE_INTERRUPT` for request `unique` of mount `mount`.
    pub(crate) fn interrupt(&self, mount: u64, unique: u64, table: &SharedTable) {
        let key = (mount, unique);
        let (entry, waiter) = {
            let mut st = self.state();
            let Some(&token) = st.by_request.get(&key) else {
                // Not parked (yet): the request may still be on its way through
                // another loop, or it is one that never waits. Remember it.
                let now = Instant::now();
                st.early
                    .retain(|_, t| now.duration_since(*t) < EARLY_INTERRUPT_TTL);
                st.early.insert(key, now);
                return;
            };
            let Some(e) = st.by_token.get_mut(&token) else {
                st.by_request.remove(&key);
                return;
            };
            let Some(waiter) = e.waiter else {
                // The table is deciding right now; `queued` finishes the job.
                e.interrupted = true;
                return;
            };
            st.by_request.remove(&key);
            (st.by_token.remove(&token), waiter)
        };
        if let Some(e) = entry {
            let cancelled = table.with(|t| t.cancel_with(waiter, CancelReason::Interrupted));
            (e.cont)(if cancelled {
                Wake::Interrupted
            } else {
                Wake::Granted
            });
        }
    }

    /// Wakes every parked request of `mount` with [`Wake::Dropped`] after
    /// cancelling its waiter (the mount ends).
    pub(crate) fn end_mount(&self, mount: u64, table: &SharedTable) -> usize {
        let gone: Vec<Entry> = {
            let mut st = self.state();
            let tokens: Vec<u64> = st
                .by_token
                .iter()
                .filter(|(_, e)| e.key.0 == mount)
                .map(|(t, _)| *t)
                .collect();
            st.early.retain(|k, _| k.0 != mount);
            tokens
                .into_iter()
                .filter_map(|t| {
                    let e = st.by_token.remove(&t)?;
                    st.by_request.remove(&e.key);
                    Some(e)
                })
                .collect()
        };
        let n = gone.len();
        for e in gone {
            if let Some(w) = e.waiter {
                table.with(|t| t.cancel(w));
            }
            (e.cont)(Wake::Dropped);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lock_table::{FileId, LockKind, LockOutcome, LockRequest, Owner, Range, ScopeId, Wait};
    use std::sync::mpsc;
    use std::sync::Arc;

    fn setup() -> (Arc<Wakeups>, Arc<SharedTable>) {
        let w = Arc::new(Wakeups::new());
        let w2 = w.clone();
        let t = Arc::new(SharedTable::new(move |e| {
            w2.deliver(e);
        }));
        (w, t)
    }

    fn req(owner: u64, wait: Wait) -> LockRequest {
        LockRequest {
            file: FileId::new(1, 2),
            scope: ScopeId::DEFAULT,
            owner: Owner::posix(owner),
            pid: owner as u32,
            kind: LockKind::Exclusive,
            range: Range::WHOLE,
            wait,
            reclaim: false,
        }
    }

    fn park(w: &Wakeups, unique: u64) -> (u64, mpsc::Receiver<Wake>) {
        let (tx, rx) = mpsc::channel();
        match w.park(1, unique, Box::new(move |k| tx.send(k).unwrap())) {
            Parked::Token(t) => (t, rx),
            Parked::AlreadyInterrupted(_) => panic!("not interrupted"),
        }
    }

    #[test]
    fn a_grant_wakes_the_parked_request_once() {
        let (w, t) = setup();
        assert_eq!(t.with(|t| t.lock(&req(1, Wait::No))), LockOutcome::Granted);
        let (token, rx) = park(&w, 10);
        assert!(Wakeups::owns_token(token));
        let LockOutcome::Queued(id) = t.with(|t| t.lock(&req(2, Wait::Yes { token }))) else {
            panic!("should queue")
        };
        w.queued(token, id, &t);
        assert!(rx.try_recv().is_err());
        t.with(|t| t.unlock(FileId::new(1, 2), Owner::posix(1), Range::WHOLE));
        assert_eq!(rx.try_recv(), Ok(Wake::Granted));
        assert_eq!(w.parked(), 0);
        // A late interrupt for the answered request is remembered, not acted on.
        w.interrupt(1, 10, &t);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn an_interrupt_cancels_the_waiter() {
        let (w, t) = setup();
        t.with(|t| t.lock(&req(1, Wait::No)));
        let (token, rx) = park(&w, 11);
        let LockOutcome::Queued(id) = t.with(|t| t.lock(&req(2, Wait::Yes { token }))) else {
            panic!()
        };
        w.queued(token, id, &t);
        w.interrupt(1, 11, &t);
        assert_eq!(rx.try_recv(), Ok(Wake::Interrupted));
        assert_eq!(t.read(|t| t.waiter_count()), 0);
    }

    #[test]
    fn an_interrupt_between_park_and_queue_is_honoured() {
        let (w, t) = setup();
        t.with(|t| t.lock(&req(1, Wait::No)));
        let (token, rx) = park(&w, 12);
        w.interrupt(1, 12, &t);
        let LockOutcome::Queued(id) = t.with(|t| t.lock(&req(2, Wait::Yes { token }))) else {
            panic!()
        };
        w.queued(token, id, &t);
        assert_eq!(rx.try_recv(), Ok(Wake::Interrupted));
        assert_eq!(t.read(|t| t.waiter_count()), 0);
    }

    #[test]
    fn an_interrupt_that_overtakes_its_request_is_remembered() {
        let (w, t) = setup();
        w.interrupt(1, 13, &t);
        assert!(matches!(
            w.park(1, 13, Box::new(|_| {})),
            Parked::AlreadyInterrupted(_)
        ));
        // Another mount's request with the same id is unaffected.
        assert!(matches!(w.park(2, 13, Box::new(|_| {})), Parked::Token(_)));
    }

    #[test]
    fn foreign_tokens_are_not_ours_and_end_mount_drops_waiters() {
        let (w, t) = setup();
        assert!(!w.deliver(Event::Dropped {
            waiter: WaiterId(1),
            token: 5,
            file: FileId::new(0, 0),
            owner: Owner::posix(1),
            reason: lock_table::DropReason::Released,
        }));
        t.with(|t| t.lock(&req(1, Wait::No)));
        let (token, rx) = park(&w, 14);
        let LockOutcome::Queued(id) = t.with(|t| t.lock(&req(2, Wait::Yes { token }))) else {
            panic!()
        };
        w.queued(token, id, &t);
        assert_eq!(w.end_mount(1, &t), 1);
        assert_eq!(rx.try_recv(), Ok(Wake::Dropped));
        assert_eq!(t.read(|t| t.waiter_count()), 0);
    }
}
