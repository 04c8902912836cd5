//! The waiter registry: which door each queued request belongs to, and what
//! that door runs when the wait ends.
//!
//! Every front door has requests that must wait in the table (FUSE F_SETLKW and
//! mandatory-locked I/O, NLM blocking LOCK, an NFS READ or WRITE that may wait).
//! Each needs the same things: a token the table echoes in its events, a place
//! to keep the door's typed continuation while the request is queued, a way to
//! withdraw it by the door's own name for it (an interrupted FUSE request, a
//! closed connection), and delivery of the grant or drop once the table's
//! mutex is released. The registry does that once, for every door, so a door
//! only says what to do when the wait ends.
//!
//! A waiter is registered by [`crate::SharedTable::lock_or_wait`] and
//! [`crate::SharedTable::io_or_wait`] *while the table's mutex is held*, in the
//! same step that queues it, so no grant can overtake its registration and a
//! request decided at once never touches the registry (no allocation, no
//! second lock on an uncontended request). The door's continuation is any
//! [`Waiting`] value: a closure, or a channel's sending half wrapped in one
//! (a tokio `oneshot::Sender` works through `move |w| { let _ = tx.send(w); }`).
//!
//! Routing is by the table's waiter id, never by bits of a token: the same
//! request queued twice by one owner (a retransmission, two threads of one
//! process) is one table waiter, and its grant wakes every registration of it.

use crate::ops::{CancelReason, Event, Refusal, WaitFor, WaiterId};
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long an interrupt for a request not registered yet is remembered.
const EARLY_INTERRUPT_TTL: Duration = Duration::from_secs(30);

/// Names a front door (for listings, logs and [`RequestKey`]s). Each door
/// defines its own constant; the registry only compares them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DoorId(pub &'static str);

/// A door's own name for a request, by which it can withdraw it: a FUSE
/// request is (mount, unique id), an RPC one could be (connection, xid).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestKey {
    pub door: DoorId,
    /// A group of the door's requests ended together ([`crate::SharedTable::end_session`]):
    /// a mount, a connection.
    pub session: u64,
    pub request: u64,
}

/// How a wait ended, or why a request did not have to wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The lock is held now, or the I/O may be admitted.
    Granted,
    /// The table refused the request (conflict for a request that may not
    /// wait, deadlock, grace).
    Refused(Refusal),
    /// The door withdrew it (interrupt, cancel, time limit); nothing is held.
    Cancelled(CancelReason),
    /// The table dropped it (its owner or host was released) or the door's
    /// session ended under it.
    Dropped,
}

/// What a door runs when its request's wait ends: exactly once, never while
/// the table's mutex is held (it may call back into the table).
pub trait Waiting: Send + 'static {
    fn woken(self: Box<Self>, wake: Wake);
}

impl<F: FnOnce(Wake) + Send + 'static> Waiting for F {
    fn woken(self: Box<Self>, wake: Wake) {
        (*self)(wake)
    }
}

/// Where a request parks if it has to wait.
#[derive(Clone, Copy, Debug)]
pub struct Park {
    pub door: DoorId,
    /// The door's name for the request, if it can be withdrawn by name.
    pub key: Option<RequestKey>,
    /// A token the door took from [`Waiters::token`] beforehand (NLM keeps
    /// its callback state under it); `None` lets the registry pick one.
    pub token: Option<u64>,
}

impl Park {
    /// A request of `door` that is only withdrawn through its waiter id.
    pub fn new(door: DoorId) -> Self {
        Park {
            door,
            key: None,
            token: None,
        }
    }

    /// A request the door can withdraw by `key`.
    pub fn keyed(key: RequestKey) -> Self {
        Park {
            door: key.door,
            key: Some(key),
            token: None,
        }
    }

    /// Under a token taken beforehand.
    pub fn with_token(mut self, token: u64) -> Self {
        self.token = Some(token);
        self
    }
}

/// The answer to a request that could have parked.
pub enum Admission<J> {
    /// Decided without waiting: `Granted`, `Refused`, or `Cancelled` when an
    /// interrupt for it had arrived first. The continuation is handed back,
    /// not run, so the door can answer on its fast path.
    Now(Wake, J),
    /// Queued; the continuation runs when the wait ends.
    Queued {
        waiter: WaiterId,
        token: u64,
        /// The token of an earlier registration of the same table waiter
        /// (the same owner asked for the same thing again); both are woken.
        joined: Option<u64>,
    },
}

impl<J> std::fmt::Debug for Admission<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Admission::Now(w, _) => f.debug_tuple("Now").field(w).finish(),
            Admission::Queued {
                waiter,
                token,
                joined,
            } => f
                .debug_struct("Queued")
                .field("waiter", waiter)
                .field("token", token)
                .field("joined", joined)
                .finish(),
        }
    }
}

/// One registered waiting request.
pub(crate) struct Entry {
    door: DoorId,
    key: Option<RequestKey>,
    waiter: WaiterId,
    waits_for: WaitFor,
    job: Box<dyn Waiting>,
}

#[derive(Default)]
struct State {
    by_token: FxHashMap<u64, Entry>,
    by_waiter: FxHashMap<WaiterId, SmallVec<[u64; 1]>>,
    by_key: FxHashMap<RequestKey, u64>,
    /// Interrupts that arrived before their request registered.
    early: FxHashMap<RequestKey, Instant>,
}

impl State {
    fn remove(&mut self, token: u64) -> Option<Entry> {
        let e = self.by_token.remove(&token)?;
        if let Some(k) = &e.key {
            self.by_key.remove(k);
        }
        if let Some(ts) = self.by_waiter.get_mut(&e.waiter) {
            ts.retain(|t| *t != token);
            if ts.is_empty() {
                self.by_waiter.remove(&e.waiter);
            }
        }
        Some(e)
    }

    fn remove_waiter(&mut self, waiter: WaiterId) -> SmallVec<[Entry; 1]> {
        let tokens = self.by_waiter.remove(&waiter).unwrap_or_default();
        tokens
            .into_iter()
            .filter_map(|t| {
                let e = self.by_token.remove(&t)?;
                if let Some(k) = &e.key {
                    self.by_key.remove(k);
                }
                Some(e)
            })
            .collect()
    }
}

/// A registered request as listings see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registered {
    pub token: u64,
    pub door: DoorId,
    pub key: Option<RequestKey>,
    pub waiter: WaiterId,
    pub waits_for: WaitFor,
}

/// Waiting requests of every door, owned by [`crate::SharedTable`].
pub struct Waiters {
    state: Mutex<State>,
    next: AtomicU64,
}

impl Default for Waiters {
    fn default() -> Self {
        Waiters {
            state: Mutex::default(),
            next: AtomicU64::new(1),
        }
    }
}

impl std::fmt::Debug for Waiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiters")
            .field("parked", &self.parked())
            .finish()
    }
}

/// What to do once the table's mutex is released.
pub(crate) type Woken = SmallVec<[(Box<dyn Waiting>, Wake); 1]>;

impl Waiters {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh token, for a door that keeps state of its own under it before
    /// it parks ([`Park::with_token`]).
    pub fn token(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Number of registered requests.
    pub fn parked(&self) -> usize {
        self.state().by_token.len()
    }

    /// Registered requests of `door`.
    pub fn of_door(&self, door: DoorId) -> Vec<Registered> {
        self.state()
            .by_token
            .iter()
            .filter(|(_, e)| e.door == door)
            .map(|(t, e)| Registered {
                token: *t,
                door: e.door,
                key: e.key,
                waiter: e.waiter,
                waits_for: e.waits_for,
            })
            .collect()
    }

    /// Records a queued request. Called with the table's mutex held, in the
    /// step that queued it. Returns the token of an earlier registration of
    /// the same waiter, if any; or, when an interrupt for the request came
    /// before it, the continuation back and whether the waiter has another
    /// registration (nothing is recorded then).
    pub(crate) fn register<J: Waiting>(
        &self,
        park: &Park,
        token: u64,
        waiter: WaiterId,
        waits_for: WaitFor,
        job: J,
    ) -> Result<Option<u64>, (J, bool)> {
        let mut st = self.state();
        if let Some(k) = park.key {
            if !st.early.is_empty() && st.early.remove(&k).is_some() {
                return Err((job, st.by_waiter.contains_key(&waiter)));
            }
        }
        let list = st.by_waiter.entry(waiter).or_default();
        let joined = list.first().copied();
        list.push(token);
        if let Some(k) = park.key {
            st.by_key.insert(k, token);
        }
        st.by_token.insert(
            token,
            Entry {
                door: park.door,
                key: park.key,
                waiter,
                waits_for,
                job: Box::new(job),
            },
        );
        Ok(joined)
    }

    /// Whether any request is registered on table waiter `waiter`.
    pub(crate) fn has_waiter(&self, waiter: WaiterId) -> bool {
        self.state().by_waiter.contains_key(&waiter)
    }

    /// The continuations an event of the table ends, if any registered
    /// request is its waiter. `None` for events of requests queued with a
    /// token of the caller's own (the table's notifier gets those).
    pub(crate) fn on_event(&self, event: &Event) -> Option<Woken> {
        let mut st = self.state();
        if st.by_waiter.is_empty() {
            return None;
        }
        let entries = st.remove_waiter(event.waiter());
        if entries.is_empty() {
            return None;
        }
        let wake = match event {
            Event::Granted { .. } => Wake::Granted,
            Event::Dropped { .. } => Wake::Dropped,
        };
        Some(entries.into_iter().map(|e| (e.job, wake)).collect())
    }

    /// The request registered under `key`, taken out, with whether it is the
    /// only registration of its table waiter. Without one, the interrupt is
    /// remembered for a request still on its way.
    pub(crate) fn take_by_key(&self, key: RequestKey) -> Option<(Entry, bool)> {
        let mut st = self.state();
        let Some(&token) = st.by_key.get(&key) else {
            let now = Instant::now();
            st.early
                .retain(|_, t| now.duration_since(*t) < EARLY_INTERRUPT_TTL);
            st.early.insert(key, now);
            return None;
        };
        let e = st.remove(token)?;
        let alone = !st.by_waiter.contains_key(&e.waiter);
        Some((e, alone))
    }

    /// Every registration of `waiter`, taken out.
    pub(crate) fn take_waiter(&self, waiter: WaiterId) -> SmallVec<[Entry; 1]> {
        self.state().remove_waiter(waiter)
    }

    /// Every request of `door`'s `session`, taken out; forgets the session's
    /// early interrupts.
    pub(crate) fn take_session(&self, door: DoorId, session: u64) -> Vec<Entry> {
        let mut st = self.state();
        st.early
            .retain(|k, _| !(k.door == door && k.session == session));
        let tokens: Vec<u64> = st
            .by_token
            .iter()
            .filter(|(_, e)| {
                e.key
                    .is_some_and(|k| k.door == door && k.session == session)
            })
            .map(|(t, _)| *t)
            .collect();
        tokens.into_iter().filter_map(|t| st.remove(t)).collect()
    }
}

impl Entry {
    pub(crate) fn waiter(&self) -> WaiterId {
        self.waiter
    }

    pub(crate) fn wake(self, wake: Wake) {
        self.job.woken(wake)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::GateRequest;
    use crate::ids::{Access, FileId, LockKind, Owner, ScopeId};
    use crate::ops::{Event, LockOutcome, LockRequest, Wait};
    use crate::range::Range;
    use crate::shared::SharedTable;
    use std::sync::{mpsc, Arc};

    const DOOR: DoorId = DoorId("test");

    fn setup() -> (Arc<SharedTable>, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let t = Arc::new(SharedTable::new(move |e| {
            let _ = tx.lock().unwrap().send(e);
        }));
        (t, rx)
    }

    fn req(owner: u64) -> LockRequest {
        LockRequest {
            file: FileId::new(1, 2),
            scope: ScopeId::DEFAULT,
            owner: Owner::posix(owner),
            pid: owner as u32,
            kind: LockKind::Exclusive,
            range: Range::WHOLE,
            wait: Wait::No,
            reclaim: false,
        }
    }

    fn key(session: u64, request: u64) -> RequestKey {
        RequestKey {
            door: DOOR,
            session,
            request,
        }
    }

    fn channel() -> (impl FnOnce(Wake) + Send + 'static, mpsc::Receiver<Wake>) {
        let (tx, rx) = mpsc::channel();
        (move |w| tx.send(w).unwrap(), rx)
    }

    fn hold(t: &SharedTable, owner: u64) {
        assert_eq!(t.lock(&req(owner)), LockOutcome::Granted);
    }

    fn unhold(t: &SharedTable, owner: u64) {
        t.with(|t| t.unlock(FileId::new(1, 2), Owner::posix(owner), Range::WHOLE));
    }

    #[test]
    fn a_request_decided_at_once_registers_nothing() {
        let (t, _) = setup();
        let (job, rx) = channel();
        let Admission::Now(w, job) = t.lock_or_wait(&req(1), Park::keyed(key(1, 1)), job) else {
            panic!("a free lock is granted at once")
        };
        assert_eq!(w, Wake::Granted);
        assert_eq!(t.waiters().parked(), 0);
        job(w);
        assert_eq!(rx.try_recv(), Ok(Wake::Granted));
    }

    #[test]
    fn a_grant_wakes_the_parked_request_once_and_not_the_notifier() {
        let (t, events) = setup();
        hold(&t, 1);
        let (job, rx) = channel();
        let Admission::Queued { joined, .. } =
            t.lock_or_wait(&req(2), Park::keyed(key(1, 10)), job)
        else {
            panic!("should queue")
        };
        assert_eq!(joined, None);
        assert_eq!(t.waiters().parked(), 1);
        assert_eq!(t.waiters().of_door(DOOR)[0].waits_for, WaitFor::Lock);
        assert!(rx.try_recv().is_err());
        unhold(&t, 1);
        assert_eq!(rx.try_recv(), Ok(Wake::Granted));
        assert!(rx.try_recv().is_err());
        assert_eq!(t.waiters().parked(), 0);
        assert!(
            events.try_recv().is_err(),
            "registered events skip the notifier"
        );
        // A late interrupt for the answered request is remembered, not acted on.
        t.interrupt(key(1, 10));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn an_interrupt_cancels_the_waiter() {
        let (t, _) = setup();
        hold(&t, 1);
        let (job, rx) = channel();
        let out = t.lock_or_wait(&req(2), Park::keyed(key(1, 11)), job);
        assert!(matches!(out, Admission::Queued { .. }));
        t.interrupt(key(1, 11));
        assert_eq!(
            rx.try_recv(),
            Ok(Wake::Cancelled(CancelReason::Interrupted))
        );
        assert_eq!(t.read(|t| t.waiter_count()), 0);
        assert_eq!(t.waiters().parked(), 0);
    }

    #[test]
    fn an_interrupt_that_overtakes_its_request_is_honoured_when_it_queues() {
        let (t, _) = setup();
        hold(&t, 1);
        t.interrupt(key(1, 13));
        // Another session's request with the same id is unaffected.
        let (job, _rx) = channel();
        let out = t.lock_or_wait(&req(3), Park::keyed(key(2, 13)), job);
        assert!(matches!(out, Admission::Queued { .. }));
        let (job, _rx) = channel();
        let Admission::Now(w, _) = t.lock_or_wait(&req(2), Park::keyed(key(1, 13)), job) else {
            panic!("an interrupted request must not stay queued")
        };
        assert_eq!(w, Wake::Cancelled(CancelReason::Interrupted));
        assert_eq!(t.read(|t| t.waiter_count()), 1);
    }

    #[test]
    fn ending_a_session_drops_its_waiters_only() {
        let (t, _) = setup();
        hold(&t, 1);
        let (job, rx) = channel();
        let _ = t.lock_or_wait(&req(2), Park::keyed(key(1, 14)), job);
        let (job, rx_other) = channel();
        let _ = t.lock_or_wait(&req(3), Park::keyed(key(2, 14)), job);
        assert_eq!(t.end_session(DOOR, 1), 1);
        assert_eq!(rx.try_recv(), Ok(Wake::Dropped));
        assert!(rx_other.try_recv().is_err());
        assert_eq!(t.read(|t| t.waiter_count()), 1);
    }

    #[test]
    fn a_repeated_request_joins_the_first_and_both_are_woken() {
        let (t, _) = setup();
        hold(&t, 1);
        let (job, rx1) = channel();
        let Admission::Queued {
            waiter: w1,
            token: t1,
            ..
        } = t.lock_or_wait(&req(2), Park::new(DOOR), job)
        else {
            panic!()
        };
        let (job, rx2) = channel();
        let Admission::Queued {
            waiter: w2, joined, ..
        } = t.lock_or_wait(&req(2), Park::new(DOOR), job)
        else {
            panic!()
        };
        assert_eq!((w1, joined), (w2, Some(t1)));
        unhold(&t, 1);
        assert_eq!(rx1.try_recv(), Ok(Wake::Granted));
        assert_eq!(rx2.try_recv(), Ok(Wake::Granted));
    }

    #[test]
    fn a_waiter_cancelled_by_id_is_woken_cancelled_and_a_bulk_release_drops() {
        let (t, _) = setup();
        hold(&t, 1);
        let (job, rx) = channel();
        let Admission::Queued { waiter, .. } = t.lock_or_wait(&req(2), Park::new(DOOR), job) else {
            panic!()
        };
        assert!(t.cancel_waiter(waiter, CancelReason::Cancelled));
        assert_eq!(rx.try_recv(), Ok(Wake::Cancelled(CancelReason::Cancelled)));
        assert!(!t.cancel_waiter(waiter, CancelReason::Cancelled));
        let (job, rx) = channel();
        let _ = t.lock_or_wait(&req(3), Park::new(DOOR), job);
        t.with(|t| t.release_owner(Owner::posix(3), crate::ops::Release::Normal));
        assert_eq!(rx.try_recv(), Ok(Wake::Dropped));
        assert_eq!(t.waiters().parked(), 0);
    }

    #[test]
    fn events_of_tokens_given_by_the_caller_go_to_the_notifier() {
        let (t, events) = setup();
        hold(&t, 1);
        let mut r = req(2);
        r.wait = Wait::Yes { token: 77 };
        assert!(matches!(t.lock(&r), LockOutcome::Queued(_)));
        unhold(&t, 1);
        assert_eq!(events.try_recv().map(|e| e.token()), Ok(77));
    }

    #[test]
    fn a_oneshot_style_door_needs_no_registry_code() {
        // A door whose completion is a channel (an RPC reply sent later).
        let (t, _) = setup();
        hold(&t, 1);
        let (tx, rx) = mpsc::sync_channel::<Wake>(1);
        let out = t.lock_or_wait(&req(2), Park::new(DoorId("rpc")), move |w| {
            let _ = tx.send(w);
        });
        assert!(matches!(out, Admission::Queued { .. }));
        assert_eq!(t.waiters().of_door(DoorId("rpc")).len(), 1);
        unhold(&t, 1);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(Wake::Granted));
    }

    fn write_gate(owner: u64, wait: bool) -> GateRequest {
        GateRequest::new(FileId::new(1, 2), Owner::posix(owner), None, owner as u32)
            .touching(Access::Write, Range::from_len(0, 10).unwrap())
            .waiting(wait)
    }

    #[test]
    fn the_gate_admits_refuses_or_parks() {
        let (t, _) = setup();
        // Free: admitted, and in flight until the pass is dropped.
        let pass = t.admit(&write_gate(2, false)).expect("free");
        assert!(t.read(|t| t.io_in_flight()) > 0, "admitted and in flight");
        drop(pass);
        assert_eq!(t.read(|t| t.io_in_flight()), 0);
        hold(&t, 1);
        // A door that never parks (an NFS READ or WRITE) is refused with the holder.
        match t.admit(&write_gate(2, false)) {
            Err(Refusal::Conflict(h)) => assert_eq!(h.owner, Owner::posix(1)),
            other => panic!("{other:?}"),
        }
        let (tx, rx) = mpsc::channel();
        let tx2 = tx.clone();
        t.gate(write_gate(2, false), Park::new(DOOR), move |r| {
            tx2.send(r.map(|_| ()).err()).unwrap()
        });
        assert!(matches!(
            rx.try_recv(),
            Ok(Some(Wake::Refused(Refusal::Conflict(_))))
        ));
        // A waiting one parks and is admitted, holding its pass, once the lock goes.
        let (ptx, prx) = mpsc::channel();
        t.gate(write_gate(2, true), Park::keyed(key(1, 20)), move |r| {
            ptx.send(r).unwrap()
        });
        assert!(prx.try_recv().is_err());
        assert_eq!(t.waiters().of_door(DOOR)[0].waits_for, WaitFor::Io);
        unhold(&t, 1);
        let pass = prx.try_recv().unwrap().expect("admitted");
        assert!(t.read(|t| t.io_in_flight()) > 0, "admitted and in flight");
        drop(pass);
        // An interrupted gate wait ends cancelled.
        hold(&t, 1);
        t.gate(write_gate(2, true), Park::keyed(key(1, 21)), move |r| {
            tx.send(r.map(|_| ()).err()).unwrap()
        });
        t.interrupt(key(1, 21));
        assert_eq!(
            rx.try_recv(),
            Ok(Some(Wake::Cancelled(CancelReason::Interrupted)))
        );
    }

    #[test]
    fn a_door_of_nlm_hosts_is_admitted_past_its_own_locks_and_refused_past_others() {
        let (t, _) = setup();
        let (a, b) = t.with(|t| {
            let r = t.registry_mut();
            let (ha, hb) = (r.host("client-a"), r.host("client-b"));
            (r.nlm_owner(ha, 1, b"oh"), r.nlm_owner(hb, 1, b"oh"))
        });
        let mut lock = req(0);
        lock.owner = a;
        lock.range = Range::from_len(0, 100).unwrap();
        assert_eq!(t.lock(&lock), LockOutcome::Granted);
        let io = |owner: Owner| {
            GateRequest::new(FileId::new(1, 2), owner, None, 0)
                .touching(Access::Read, Range::from_len(10, 10).unwrap())
                .touching(Access::Write, Range::from_len(50, 10).unwrap())
        };
        drop(t.admit(&io(a)).expect("the host's own lock"));
        match t.admit(&io(b)) {
            Err(Refusal::Conflict(h)) => assert_eq!(h.owner, a),
            other => panic!("{other:?}"),
        }
        assert_eq!(t.read(|t| t.io_in_flight()), 0);
        assert_eq!(t.waiters().parked(), 0, "refused, never parked");

        // A door that knows the host but not the process (NFS) owns every
        // lock of the host: a's whole host passes a's lock, b's does not.
        let (ha, hb) = (a.host, b.host);
        let pass = t
            .admit(&io(Owner::nlm_host(ha)))
            .expect("a lock of one of the host's processes is the host's own");
        assert!(t.read(|t| t.io_in_flight()) > 0, "admitted and in flight");
        drop(pass);
        match t.admit(&io(Owner::nlm_host(hb))) {
            Err(Refusal::Conflict(h)) => assert_eq!(h.owner, a),
            other => panic!("{other:?}"),
        }
        assert!(!Owner::nlm_host(ha).covers(&Owner::posix(a.id)));
        assert!(
            !a.covers(&Owner::nlm_host(ha)),
            "only the whole host covers"
        );
    }
}
