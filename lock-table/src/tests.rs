//! Unit tests of the table's rules, one behaviour per test, including the
//! Linux `fs/locks.c` edge cases.

use crate::*;
use LockKind::{Exclusive as W, Shared as R};

const F: FileId = FileId::new(1, 100);
const G: FileId = FileId::new(1, 200);
const S: ScopeId = ScopeId::DEFAULT;
const MAX: u64 = u64::MAX;

fn rg(s: u64, e: u64) -> Range {
    Range::new(s, e).unwrap()
}

fn req(file: FileId, owner: Owner, kind: LockKind, s: u64, e: u64) -> LockRequest {
    LockRequest {
        file,
        scope: S,
        owner,
        pid: owner.id as u32,
        kind,
        range: rg(s, e),
        wait: Wait::No,
        reclaim: false,
    }
}

fn blocking(mut r: LockRequest, token: u64) -> LockRequest {
    r.wait = Wait::Yes { token };
    r
}

fn p(n: u64) -> Owner {
    Owner::posix(n)
}

/// (owner id, kind, start, end) of every held lock on `file`, by start.
fn held(t: &LockTable, file: FileId) -> Vec<(u64, LockKind, u64, u64)> {
    let mut v: Vec<_> = t
        .held_on(file)
        .into_iter()
        .map(|h| (h.owner.id, h.kind, h.range.start(), h.range.end()))
        .collect();
    v.sort();
    v
}

fn events(t: &mut LockTable) -> Vec<Event> {
    let mut v = Vec::new();
    t.take_events(&mut v);
    v
}

fn granted_tokens(t: &mut LockTable) -> Vec<u64> {
    events(t)
        .into_iter()
        .filter_map(|e| match e {
            Event::Granted { token, .. } => Some(token),
            _ => None,
        })
        .collect()
}

fn ok(t: &mut LockTable, r: LockRequest) {
    assert_eq!(t.lock(&r), LockOutcome::Granted, "{r:?}");
    t.check_invariants();
}

fn conflict(t: &mut LockTable, r: LockRequest) -> Holding {
    match t.lock(&r) {
        LockOutcome::Refused(Refusal::Conflict(h)) => h,
        other => panic!("expected a conflict for {r:?}, got {other:?}"),
    }
}

fn queued(t: &mut LockTable, r: LockRequest) -> WaiterId {
    match t.lock(&r) {
        LockOutcome::Queued(id) => {
            t.check_invariants();
            id
        }
        other => panic!("expected {r:?} to queue, got {other:?}"),
    }
}

#[test]
fn shared_locks_coexist_exclusive_conflicts() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, p(1), R, 0, 99));
    ok(&mut t, req(F, p(2), R, 50, 149));
    let h = conflict(&mut t, req(F, p(3), W, 120, 130));
    assert_eq!((h.owner, h.kind, h.range), (p(2), R, rg(50, 149)));
    // Disjoint exclusive is fine.
    ok(&mut t, req(F, p(3), W, 150, 200));
    let h = conflict(&mut t, req(F, p(1), R, 200, 200));
    assert_eq!((h.owner, h.kind), (p(3), W));
}

#[test]
fn own_locks_never_conflict() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, p(1), W, 0, 9));
    ok(&mut t, req(F, p(1), W, 5, 20));
    ok(&mut t, req(F, p(1), R, 0, 30));
    assert_eq!(held(&t, F), vec![(1, R, 0, 30)]);
}

#[test]
fn adjacent_same_type_merge_different_types_do_not() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, p(1), R, 0, 9));
    ok(&mut t, req(F, p(1), R, 10, 19));
    assert_eq!(held(&t, F), vec![(1, R, 0, 19)]);
    ok(&mut t, req(F, p(1), W, 20, 29));
    assert_eq!(held(&t, F), vec![(1, R, 0, 19), (1, W, 20, 29)]);
    // Overlapping same type merges too, from below.
    ok(&mut t, req(F, p(1), W, 25, 40));
    assert_eq!(held(&t, F), vec![(1, R, 0, 19), (1, W, 20, 40)]);
    // Other owners' adjacent locks never merge with ours.
    ok(&mut t, req(F, p(2), R, 41, 50));
    assert_eq!(
        held(&t, F),
        vec![(1, R, 0, 19), (1, W, 20, 40), (2, R, 41, 50)]
    );
}

#[test]
fn unlock_in_the_middle_splits() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, p(1), W, 0, 99));
    t.unlock(F, p(1), rg(40, 59));
    t.check_invariants();
    assert_eq!(held(&t, F), vec![(1, W, 0, 39), (1, W, 60, 99)]);
    // The hole is free for others.
    ok(&mut t, req(F, p(2), W, 40, 59));
    // Unlocking what is not held is harmless.
    t.unlock(F, p(1), rg(1000, 2000));
    t.unlock(G, p(1), rg(0, 10));
    assert_eq!(held(&t, F).len(), 3);
}

#[test]
fn different_type_in_the_middle_splits_in_three() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, p(1), R, 0, 9));
    ok(&mut t, req(F, p(1), W, 3, 5));
    assert_eq!(held(&t, F), vec![(1, R, 0, 2), (1, R, 6, 9), (1, W, 3, 5)]);
    // Downgrading the middle again merges back into one lock.
    ok(&mut t, req(F, p(1), R, 3, 5));
    assert_eq!(held(&t, F), vec![(1, R, 0, 9)]);
}

#[test]
fn upgrade_spanning_several_locks_replaces_them() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, p(1), R, 0, 4));
    ok(&mut t, req(F, p(1), W, 5, 9));
    ok(&mut t, req(F, p(1), R, 10, 14));
    ok(&mut t, req(F, p(1), W, 2, 12));
    assert_eq!(
        held(&t, F),
        vec![(1, R, 0, 1), (1, R, 13, 14), (1, W, 2, 12)]
    );
}

#[test]
fn refused_conversion_leaves_the_old_lock() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, p(1), R, 0, 9));
    ok(&mut t, req(F, p(2), R, 5, 9));
    let h = conflict(&mut t, req(F, p(1), W, 0, 9));
    assert_eq!(h.owner, p(2));
    assert_eq!(held(&t, F), vec![(1, R, 0, 9), (2, R, 5, 9)]);
}

#[test]
fn lock_to_end_of_file_and_at_the_u64_limits() {
    let mut t = LockTable::new();
    ok(
        &mut t,
        LockRequest {
            range: Range::from_len(100, 0).unwrap(),
            ..req(F, p(1), W, 0, 0)
        },
    );
    assert_eq!(held(&t, F), vec![(1, W, 100, MAX)]);
    let h = conflict(&mut t, req(F, p(2), R, MAX, MAX));
    assert!(h.range.is_to_eof());
    // The last byte alone, and merging up to it.
    ok(&mut t, req(G, p(2), R, MAX, MAX));
    ok(&mut t, req(G, p(2), R, MAX - 10, MAX - 1));
    assert_eq!(held(&t, G), vec![(2, R, MAX - 10, MAX)]);
    t.unlock(G, p(2), rg(MAX, MAX));
    assert_eq!(held(&t, G), vec![(2, R, MAX - 10, MAX - 1)]);
    // Unlock to EOF from the middle of a to-EOF lock.
    t.unlock(F, p(1), Range::to_eof(200));
    assert_eq!(held(&t, F), vec![(1, W, 100, 199)]);
    // The whole space.
    ok(
        &mut t,
        LockRequest {
            range: Range::WHOLE,
            ..req(G, p(2), W, 0, 0)
        },
    );
    assert_eq!(held(&t, G), vec![(2, W, 0, MAX)]);
    t.unlock(G, p(2), Range::WHOLE);
    assert!(held(&t, G).is_empty());
    assert_eq!(t.file_count(), 1);
}

#[test]
fn test_reports_first_conflict_as_whole_lock() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, p(1), R, 10, 19));
    ok(&mut t, req(F, p(2), W, 30, 39));
    ok(&mut t, req(F, p(3), R, 5, 25));
    let tr = |owner, kind, s, e| TestRequest {
        file: F,
        scope: S,
        owner,
        kind,
        range: rg(s, e),
    };
    assert_eq!(t.test(&tr(p(4), R, 0, 100)).conflict_owner(), Some(p(2)));
    // The lowest conflicting offset wins: p(3) from 5.
    match t.test(&tr(p(4), W, 0, 100)) {
        TestOutcome::Conflict(h) => {
            assert_eq!((h.owner, h.range, h.pid), (p(3), rg(5, 25), 3));
        }
        o => panic!("{o:?}"),
    }
    // Own locks do not count.
    assert_eq!(t.test(&tr(p(2), W, 30, 39)), TestOutcome::Free);
    assert_eq!(t.test(&tr(p(4), W, 40, 100)), TestOutcome::Free);
    assert_eq!(t.test(&tr(p(4), W, 0, 4)), TestOutcome::Free);
}

trait ConflictOwner {
    fn conflict_owner(&self) -> Option<Owner>;
}

impl ConflictOwner for TestOutcome {
    fn conflict_owner(&self) -> Option<Owner> {
        match self {
            TestOutcome::Conflict(h) => Some(h.owner),
            _ => None,
        }
    }
}

#[test]
fn waiters_are_granted_in_fifo_order() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, p(1), W, 0, 99));
    let a = queued(&mut t, blocking(req(F, p(2), W, 0, 9), 2));
    let b = queued(&mut t, blocking(req(F, p(3), W, 0, 9), 3));
    assert_ne!(a, b);
    assert_eq!(t.queued_on(F), vec![a, b]);
    t.unlock(F, p(1), Range::WHOLE);
    t.check_invariants();
    assert_eq!(granted_tokens(&mut t), vec![2]);
    assert_eq!(held(&t, F), vec![(2, W, 0, 9)]);
    t.unlock(F, p(2), Range::WHOLE);
    assert_eq!(granted_tokens(&mut t), vec![3]);
    assert_eq!(t.waiter_count(), 0);
    t.check_invariants();
}

#[test]
fn grant_event_carries_the_request() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, p(1), W, 0, 9));
    let id = queued(&mut t, blocking(req(F, p(2), R, 5, 6), 77));
    t.unlock(F, p(1), rg(0, 9));
    match events(&mut t).as_slice() {
        [Event::Granted {
            waiter,
            token,
            file,
            owner,
            kind,
            range,
            io,
            ..
        }] => {
            assert_eq!(
                (*waiter, *token, *file, *owner, *kind, *range, *io),
                (id, 77, F, p(2), R, rg(5, 6), false)
            );
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn several_shared_waiters_are_granted_together() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, p(1), W, 0, 9));
    queued(&mut t, blocking(req(F, p(2), R, 0, 9), 2));
    queued(&mut t, blocking(req(F, p(3), R, 0, 9), 3));
    queued(&mut t, blocking(req(F, p(4), W, 0, 9), 4));
    queued(&mut t, blocking(req(F, p(5), R, 0, 9), 5));
    t.unlock(F, p(1), Range::WHOLE);
    // p(5) must not overtake the waiting writer p(4).
    assert_eq!(granted_tokens(&mut t), vec![2, 3]);
    t.unlock(F, p(2), Range::WHOLE);
    assert!(granted_tokens(&mut t).is_empty());
    t.unlock(F, p(3), Range::WHOLE);
    assert_eq!(granted_tokens(&mut t), vec![4]);
    t.unlock(F, p(4), Range::WHOLE);
    assert_eq!(granted_tokens(&mut t), vec![5]);
    t.check_invariants();
}

#[test]
fn a_waiting_writer_is_not_starved_by_new_readers() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, p(1), R, 0, 9));
    queued(&mut t, blocking(req(F, p(2), W, 0, 9), 2));
    // A stream of readers that hold nothing else: each queues behind the
    // writer although no held lock is in its way.
    for reader in 10..20 {
        queued(&mut t, blocking(req(F, p(reader), R, 0, 9), reader));
    }
    t.unlock(F, p(1), Range::WHOLE);
    assert_eq!(granted_tokens(&mut t), vec![2]);
    t.unlock(F, p(2), Range::WHOLE);
    assert_eq!(granted_tokens(&mut t), (10..20).collect::<Vec<_>>());
}

#[test]
fn non_blocking_requests_follow_posix_exactly() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, p(1), R, 0, 9));
    queued(&mut t, blocking(req(F, p(2), W, 0, 9), 2));
    // F_SETLK succeeds when no held lock conflicts, waiters or not.
    ok(&mut t, req(F, p(3), R, 0, 9));
}

#[test]
fn an_owner_holding_locks_does_not_queue_behind_its_own_waiter() {
    // p(1) holds a read lock; p(2) waits to write over it. If p(1) had to
    // queue its next read behind p(2), both would wait forever.
    let mut t = LockTable::new();
    ok(&mut t, req(F, p(1), R, 0, 9));
    queued(&mut t, blocking(req(F, p(2), W, 0, 29), 2));
    ok(&mut t, blocking(req(F, p(1), R, 20, 29), 1));
}

#[test]
fn an_owner_that_gains_a_lock_stops_yielding_elsewhere() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, p(1), R, 0, 9));
    queued(&mut t, blocking(req(F, p(2), W, 0, 9), 2));
    // p(3) holds nothing, so its read on F yields to the writer.
    let r3 = queued(&mut t, blocking(req(F, p(3), R, 0, 9), 3));
    // p(3) now takes a lock on G; its queued read on F no longer yields.
    ok(&mut t, req(G, p(3), W, 0, 0));
    assert_eq!(granted_tokens(&mut t), vec![3]);
    assert!(t.waiter(r3).is_none());
    t.check_invariants();
}

#[test]
fn downgrade_wakes_shared_waiters() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, p(1), W, 0, 9));
    queued(&mut t, blocking(req(F, p(2), R, 0, 9), 2));
    ok(&mut t, req(F, p(1), R, 0, 9));
    assert_eq!(granted_tokens(&mut t), vec![2]);
    assert_eq!(held(&t, F), vec![(1, R, 0, 9), (2, R, 0, 9)]);
}

#[test]
fn cancel_removes_a_waiter_and_unblocks_those_behind() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, p(1), R, 0, 9));
    let w = queued(&mut t, blocking(req(F, p(2), W, 0, 9), 2));
    let r = queued(&mut t, blocking(req(F, p(3), R, 0, 9), 3));
    assert_eq!(t.find_waiter(F, p(2), W, rg(0, 9)), Some(w));
    assert_eq!(t.find_waiter(F, p(2), R, rg(0, 9)), None);
    assert!(t.cancel(w));
    assert!(!t.cancel(w));
    // The reader was only yielding to the cancelled writer.
    assert_eq!(granted_tokens(&mut t), vec![3]);
    assert!(t.waiter(r).is_none());
    t.check_invariants();
}

#[test]
fn a_repeated_blocking_request_is_the_same_waiter() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, p(1), W, 0, 9));
    let a = queued(&mut t, blocking(req(F, p(2), W, 0, 9), 2));
    let b = queued(&mut t, blocking(req(F, p(2), W, 0, 9), 2));
    assert_eq!(a, b);
    assert_eq!(t.waiter_count(), 1);
}

#[test]
fn deadlock_of_two_posix_owners_is_refused() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, p(1), W, 0, 0));
    ok(&mut t, req(G, p(2), W, 0, 0));
    queued(&mut t, blocking(req(G, p(1), W, 0, 0), 1));
    assert_eq!(
        t.lock(&blocking(req(F, p(2), W, 0, 0), 2)),
        LockOutcome::Refused(Refusal::Deadlock)
    );
    t.check_invariants();
}

#[test]
fn deadlock_through_three_owners_and_shared_locks() {
    let mut t = LockTable::new();
    let h = FileId::new(1, 300);
    ok(&mut t, req(F, p(1), R, 0, 9));
    ok(&mut t, req(G, p(2), W, 0, 9));
    ok(&mut t, req(h, p(3), W, 0, 9));
    queued(&mut t, blocking(req(G, p(1), R, 5, 5), 1)); // 1 waits for 2
    queued(&mut t, blocking(req(h, p(2), W, 0, 0), 2)); // 2 waits for 3
    assert_eq!(
        t.lock(&blocking(req(F, p(3), W, 9, 20), 3)), // 3 would wait for 1
        LockOutcome::Refused(Refusal::Deadlock)
    );
    // No cycle: a fourth owner just waits.
    queued(&mut t, blocking(req(F, p(4), W, 0, 0), 4));
}

#[test]
fn ofd_owners_are_not_deadlock_checked() {
    // As in Linux: OFD locks never get EDEADLK.
    let mut t = LockTable::new();
    let (a, b) = (Owner::ofd(1), Owner::ofd(2));
    ok(&mut t, req(F, a, W, 0, 0));
    ok(&mut t, req(G, b, W, 0, 0));
    queued(&mut t, blocking(req(G, a, W, 0, 0), 1));
    queued(&mut t, blocking(req(F, b, W, 0, 0), 2));
}

#[test]
fn mandatory_read_and_write_checks() {
    let mut t = LockTable::new();
    let fh = |n| Some(Owner::ofd(n));
    ok(&mut t, req(F, p(1), R, 0, 9));
    ok(&mut t, req(F, Owner::ofd(50), W, 20, 29));
    // Reads meet exclusive locks only.
    assert!(t
        .io_check(F, Access::Read, rg(0, 9), p(2), fh(60))
        .is_none());
    assert_eq!(
        t.io_check(F, Access::Read, rg(25, 40), p(2), fh(60))
            .map(|h| h.owner),
        Some(Owner::ofd(50))
    );
    // Writes meet any other owner's lock.
    assert_eq!(
        t.io_check(F, Access::Write, rg(5, 5), p(2), fh(60))
            .map(|h| h.owner),
        Some(p(1))
    );
    // The caller's own POSIX owner or its own open file are its own locks.
    assert!(t
        .io_check(F, Access::Write, rg(0, 9), p(1), fh(60))
        .is_none());
    assert!(t
        .io_check(F, Access::Write, rg(20, 29), p(2), fh(50))
        .is_none());
    assert!(t
        .io_check(F, Access::Write, rg(10, 19), p(2), None)
        .is_none());
}

#[test]
fn mandatory_io_waits_and_is_granted_without_taking_a_lock() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, p(1), W, 0, 9));
    let io = |wait| IoRequest {
        file: F,
        access: Access::Read,
        range: rg(5, 100),
        owner: p(2),
        open_file: Some(Owner::ofd(7)),
        pid: 2,
        wait,
    };
    assert!(
        matches!(t.io(&io(Wait::No)), IoOutcome::Refused(Refusal::Conflict(h)) if h.owner == p(1))
    );
    let IoOutcome::Queued(id) = t.io(&io(Wait::Yes { token: 9 })) else {
        panic!("io should queue");
    };
    t.check_invariants();
    t.unlock(F, p(1), Range::WHOLE);
    let ev = events(&mut t);
    assert!(
        matches!(ev.as_slice(), [Event::Granted { waiter, io: true, token: 9, .. }] if *waiter == id)
    );
    assert!(held(&t, F).is_empty());
    assert_eq!(t.file_count(), 0);
}

#[test]
fn mandatory_io_deadlock_is_detected() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, p(1), W, 0, 9));
    ok(&mut t, req(G, p(2), W, 0, 9));
    queued(&mut t, blocking(req(G, p(1), W, 0, 0), 1));
    let out = t.io(&IoRequest {
        file: F,
        access: Access::Write,
        range: rg(0, 0),
        owner: p(2),
        open_file: None,
        pid: 2,
        wait: Wait::Yes { token: 2 },
    });
    assert_eq!(out, IoOutcome::Refused(Refusal::Deadlock));
}

#[test]
fn release_owner_drops_locks_and_waiters_everywhere() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, p(1), W, 0, 9));
    ok(&mut t, req(G, p(1), R, 0, 9));
    ok(&mut t, req(G, p(2), W, 20, 29));
    queued(&mut t, blocking(req(G, p(1), W, 20, 29), 11));
    queued(&mut t, blocking(req(F, p(3), W, 0, 0), 3));
    let r = t.release_owner(p(1), Release::Normal);
    assert_eq!(
        r,
        Released {
            files: 2,
            waiters: 1
        }
    );
    let ev = events(&mut t);
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::Dropped { token: 11, .. })));
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::Granted { token: 3, .. })));
    assert!(!t.owner_holds(&p(1)));
    assert_eq!(held(&t, G), vec![(2, W, 20, 29)]);
    t.check_invariants();
}

#[test]
fn close_drops_posix_locks_of_that_file_only() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, p(1), W, 0, 9));
    ok(&mut t, req(G, p(1), W, 0, 9));
    ok(&mut t, req(F, Owner::ofd(9), W, 50, 59));
    t.release_owner_on_file(p(1), F);
    assert_eq!(held(&t, F), vec![(9, W, 50, 59)]);
    assert_eq!(held(&t, G), vec![(1, W, 0, 9)]);
    t.check_invariants();
}

#[test]
fn release_open_file_drops_ofd_and_flock_locks() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, Owner::ofd(5), W, 0, 9));
    ok(&mut t, req(G, Owner::flock(5), R, 0, MAX));
    ok(&mut t, req(G, Owner::ofd(6), R, 0, 0));
    ok(&mut t, req(F, p(5), R, 20, 20));
    let r = t.release_open_file(5);
    assert_eq!(r.files, 2);
    assert_eq!(held(&t, F), vec![(5, R, 20, 20)]);
    assert_eq!(held(&t, G), vec![(6, R, 0, 0)]);
}

/// A table with NLM hosts `client-a` (owners a1, a2) and `client-b` (owner b1).
fn two_hosts() -> (LockTable, [HostId; 2], [Owner; 3]) {
    let mut t = LockTable::new();
    let a = t.registry_mut().host("client-a");
    let b = t.registry_mut().host("client-b");
    let a1 = t.registry_mut().nlm_owner(a, 1, b"p1");
    let a2 = t.registry_mut().nlm_owner(a, 2, b"p2");
    let b1 = t.registry_mut().nlm_owner(b, 1, b"p1");
    (t, [a, b], [a1, a2, b1])
}

#[test]
fn release_host_frees_every_owner_of_the_host() {
    let (mut t, [a, _], [a1, a2, b1]) = two_hosts();
    ok(&mut t, req(F, a1, W, 0, 9));
    ok(&mut t, req(G, a2, R, 0, 9));
    ok(&mut t, req(G, b1, R, 0, 9));
    queued(&mut t, blocking(req(F, b1, W, 0, 0), 5));
    let r = t.release_host(a, Release::Normal);
    assert_eq!(r.files, 2);
    assert_eq!(granted_tokens(&mut t), vec![5]);
    assert!(!t.owner_holds(&a1) && !t.owner_holds(&a2));
    assert!(t.owner_holds(&b1));
    assert_eq!(t.registry().owner_count(a), 0);
    let snap = t.snapshot();
    assert!(snap.iter().all(|l| l.host.as_deref() == Some("client-b")));
}

#[test]
fn per_host_segment_totals_follow_locks_splits_and_releases() {
    let (mut t, [a, b], [a1, a2, b1]) = two_hosts();
    ok(&mut t, req(F, a1, R, 0, 99));
    ok(&mut t, req(G, a2, W, 0, 9));
    ok(&mut t, req(G, a2, W, 20, 29));
    assert_eq!((t.host_segments(a), t.host_segments(b)), (3, 0));
    // Another host's shared lock inside a1's cuts a1's lock in three pieces.
    ok(&mut t, req(F, b1, R, 40, 49));
    assert_eq!((t.host_segments(a), t.host_segments(b)), (5, 1));
    // Merging a2's two locks into one run: a1's three pieces and a2's one.
    ok(&mut t, req(G, a2, W, 10, 19));
    assert_eq!(t.host_segments(a), 4);
    t.unlock(F, b1, rg(40, 49));
    assert_eq!((t.host_segments(a), t.host_segments(b)), (2, 0));
    t.check_invariants();
    t.release_host(a, Release::Normal);
    assert_eq!(t.host_segments(a), 0);
    assert_eq!(t.host_segments(HostId::LOCAL), 0);
    t.check_invariants();
}

#[test]
fn release_scope_leaves_other_scopes_alone() {
    let mut t = LockTable::new();
    let s1 = ScopeId(1);
    let s2 = ScopeId(2);
    ok(
        &mut t,
        LockRequest {
            scope: s1,
            ..req(F, p(1), W, 0, 9)
        },
    );
    ok(
        &mut t,
        LockRequest {
            scope: s2,
            ..req(G, p(1), W, 0, 9)
        },
    );
    queued(
        &mut t,
        LockRequest {
            scope: s1,
            ..blocking(req(F, p(2), W, 0, 9), 2)
        },
    );
    let r = t.release_scope(s1, Release::Abnormal);
    assert_eq!(
        r,
        Released {
            files: 1,
            waiters: 1
        }
    );
    assert!(held(&t, F).is_empty());
    assert_eq!(held(&t, G), vec![(1, W, 0, 9)]);
    assert!(matches!(
        events(&mut t).as_slice(),
        [Event::Dropped { token: 2, .. }]
    ));
    t.check_invariants();
}

#[test]
fn release_host_in_frees_only_the_chosen_scopes() {
    let (mut t, [a, b], [a1, a2, b1]) = two_hosts();
    let s1 = ScopeId(1);
    let s2 = ScopeId(2);
    let in_scope = |s, r: LockRequest| LockRequest { scope: s, ..r };
    ok(&mut t, in_scope(s1, req(F, a1, W, 0, 9)));
    ok(&mut t, in_scope(s2, req(G, a1, W, 0, 9)));
    ok(&mut t, in_scope(s2, req(G, a2, W, 20, 29)));
    t.lvb_write(G, a1, b"g").unwrap();
    // b waits for a's lock in s2; a waits for b's in s1 and s2.
    ok(&mut t, in_scope(s1, req(F, b1, R, 50, 59)));
    ok(&mut t, in_scope(s2, req(G, b1, R, 50, 59)));
    queued(&mut t, in_scope(s2, blocking(req(G, b1, W, 0, 0), 7)));
    queued(&mut t, in_scope(s1, blocking(req(F, a2, W, 50, 50), 8)));
    queued(&mut t, in_scope(s2, blocking(req(G, a2, W, 55, 55), 9)));
    let r = t.release_host_in(a, &[s2], Release::Abnormal);
    assert_eq!(
        r,
        Released {
            files: 2,
            waiters: 1
        }
    );
    let evs = events(&mut t);
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::Dropped { token: 9, .. })),
        "{evs:?}"
    );
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::Granted { token: 7, .. })),
        "{evs:?}"
    );
    // Its lock and its waiter in s1 stay, under the same owner.
    assert_eq!(held(&t, F), vec![(a1.id, W, 0, 9), (b1.id, R, 50, 59)]);
    assert!(t.owner_holds(&a1));
    assert_eq!(t.registry().owner_count(a), 2);
    // The lost writer's value block in s2 is marked not valid.
    assert!(!t.lvb_peek(G).valid);
    assert_eq!(t.host_segments(b), 3);
    t.check_invariants();
    // Released in s1 too, it holds nothing: its owners are forgotten.
    let r = t.release_host_in(a, &[s1], Release::Normal);
    assert_eq!(
        r,
        Released {
            files: 1,
            waiters: 1
        }
    );
    assert_eq!(t.registry().owner_count(a), 0);
    assert_eq!(t.host_segments(a), 0);
    t.check_invariants();
}

#[test]
fn grace_admits_only_reclaims_per_scope() {
    let mut t = LockTable::new();
    let (s1, s2) = (ScopeId(1), ScopeId(2));
    t.begin_grace(s1);
    assert!(t.in_grace(s1) && !t.in_grace(s2));
    let in1 = |r: LockRequest| LockRequest { scope: s1, ..r };
    assert_eq!(
        t.lock(&in1(req(F, p(1), W, 0, 9))),
        LockOutcome::Refused(Refusal::Grace)
    );
    let reclaim = |r: LockRequest| LockRequest {
        reclaim: true,
        ..in1(r)
    };
    ok(&mut t, reclaim(req(F, p(1), W, 0, 9)));
    // A conflicting reclaim is refused, never queued.
    assert!(matches!(
        t.lock(&reclaim(blocking(req(F, p(2), W, 5, 5), 2))),
        LockOutcome::Refused(Refusal::Conflict(_))
    ));
    // A remote owner's test is refused during grace; a local one is told what
    // is held now. Unlocks are allowed.
    let h = t.registry_mut().host("client");
    let remote = t.registry_mut().nlm_owner(h, 3, b"o");
    let tr = TestRequest {
        file: F,
        scope: s1,
        owner: remote,
        kind: R,
        range: rg(0, 0),
    };
    assert_eq!(t.test(&tr), TestOutcome::Grace);
    assert!(matches!(
        t.test(&TestRequest { owner: p(3), ..tr }),
        TestOutcome::Conflict(h) if h.owner == p(1)
    ));
    t.unlock(F, p(1), rg(0, 4));
    // Another scope is not in grace.
    ok(
        &mut t,
        LockRequest {
            scope: s2,
            ..req(G, p(3), W, 0, 9)
        },
    );
    t.end_grace(s1);
    assert_eq!(
        t.lock(&reclaim(req(F, p(1), W, 0, 9))),
        LockOutcome::Refused(Refusal::NotInGrace)
    );
    ok(&mut t, in1(req(F, p(4), W, 100, 109)));
}

#[test]
fn local_blocking_requests_wait_out_grace() {
    let mut t = LockTable::new();
    let s1 = ScopeId(1);
    let in1 = |r: LockRequest| LockRequest { scope: s1, ..r };
    t.begin_grace(s1);
    // A local blocking request queues even though nothing conflicts...
    queued(&mut t, in1(blocking(req(F, p(1), W, 0, 9), 7)));
    // ...a non-blocking one is refused, and so is a remote blocking one.
    assert_eq!(
        t.lock(&in1(req(G, p(2), W, 0, 9))),
        LockOutcome::Refused(Refusal::Grace)
    );
    let h = t.registry_mut().host("client");
    let remote = t.registry_mut().nlm_owner(h, 1, b"o");
    assert_eq!(
        t.lock(&in1(blocking(req(G, remote, W, 0, 9), 8))),
        LockOutcome::Refused(Refusal::Grace)
    );
    // A reclaim is granted meanwhile, over the waiting local request.
    let reclaimer = t.registry_mut().nlm_owner(h, 2, b"r");
    ok(
        &mut t,
        LockRequest {
            reclaim: true,
            ..in1(req(F, reclaimer, W, 5, 5))
        },
    );
    assert!(granted_tokens(&mut t).is_empty());
    t.check_invariants();
    // Grace over: the local request now meets the reclaimed lock and waits on.
    t.end_grace(s1);
    assert!(granted_tokens(&mut t).is_empty());
    t.unlock(F, reclaimer, rg(5, 5));
    assert_eq!(granted_tokens(&mut t), vec![7]);
    assert_eq!(held(&t, F), vec![(1, W, 0, 9)]);
    t.check_invariants();
}

#[test]
fn a_local_request_waiting_out_grace_is_granted_when_it_ends() {
    let mut t = LockTable::new();
    t.begin_grace(S);
    queued(&mut t, blocking(req(F, p(1), R, 0, 9), 3));
    queued(&mut t, blocking(req(F, p(2), R, 0, 9), 4));
    t.end_grace(S);
    assert_eq!(granted_tokens(&mut t), vec![3, 4]);
    t.check_invariants();
}

#[test]
fn lvb_starts_zero_and_valid_and_needs_the_right_lock() {
    let mut t = LockTable::new();
    assert_eq!(t.lvb_peek(F), LvbValue::default());
    assert_eq!(t.lvb_read(F, p(1)), Err(LvbError::NotHeld));
    ok(&mut t, req(F, p(1), R, 0, 0));
    let v = t.lvb_read(F, p(1)).unwrap();
    assert_eq!((v.bytes, v.valid, v.seq), ([0; LVB_LEN], true, 0));
    assert_eq!(t.lvb_write(F, p(1), b"x"), Err(LvbError::NotExclusive));
    assert_eq!(t.lvb_write(F, p(2), b"x"), Err(LvbError::NotHeld));
    ok(&mut t, req(F, p(1), W, 0, 0));
    assert_eq!(
        t.lvb_write(F, p(1), &[1; 33]),
        Err(LvbError::TooLong { len: 33 })
    );
    assert_eq!(t.lvb_write(F, p(1), b"state-1"), Ok(1));
    let v = t.lvb_read(F, p(1)).unwrap();
    assert_eq!(&v.bytes[..7], b"state-1");
    assert!(v.bytes[7..].iter().all(|b| *b == 0));
    // The value outlives the locks.
    t.unlock(F, p(1), Range::WHOLE);
    assert_eq!(t.file_count(), 1);
    ok(&mut t, req(F, p(2), R, 0, 0));
    let v = t.lvb_read(F, p(2)).unwrap();
    assert_eq!((&v.bytes[..7], v.valid, v.seq), (&b"state-1"[..], true, 1));
}

#[test]
fn lvb_becomes_not_valid_when_a_writer_is_lost_abnormally() {
    let mut t = LockTable::new();
    let host = t.registry_mut().host("crashed");
    let o = t.registry_mut().nlm_owner(host, 1, b"o");
    ok(&mut t, req(F, o, W, 0, 0));
    t.lvb_write(F, o, b"v1").unwrap();
    // A normal release keeps it valid.
    t.release_owner(o, Release::Normal);
    assert!(t.lvb_peek(F).valid);
    ok(&mut t, req(F, o, W, 0, 0));
    t.release_host(host, Release::Abnormal);
    let v = t.lvb_peek(F);
    assert!(!v.valid, "lost writer must invalidate");
    assert_eq!(&v.bytes[..2], b"v1", "the old bytes stay readable");
    // Reads succeed but say not-valid until a new value is written.
    ok(&mut t, req(F, p(2), R, 0, 0));
    assert!(!t.lvb_read(F, p(2)).unwrap().valid);
    t.unlock(F, p(2), Range::WHOLE);
    ok(&mut t, req(F, p(3), W, 0, 0));
    assert_eq!(t.lvb_write(F, p(3), b"v2"), Ok(2));
    assert!(t.lvb_read(F, p(3)).unwrap().valid);
}

#[test]
fn lvb_survives_loss_of_a_reader_and_can_be_invalidated_explicitly() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, p(1), R, 0, 0));
    t.release_owner(p(1), Release::Abnormal);
    assert!(t.lvb_peek(F).valid);
    ok(&mut t, req(F, p(2), W, 0, 0));
    assert_eq!(t.lvb_invalidate(F, p(3)), Err(LvbError::NotHeld));
    t.lvb_invalidate(F, p(2)).unwrap();
    assert!(!t.lvb_peek(F).valid);
    // Failover of the scope invalidates too.
    ok(&mut t, req(G, p(2), W, 0, 0));
    t.lvb_write(G, p(2), b"g").unwrap();
    t.release_scope(S, Release::Abnormal);
    assert!(!t.lvb_peek(G).valid);
}

#[test]
fn snapshot_lists_held_and_waiting() {
    let mut t = LockTable::new();
    let host = t.registry_mut().host("nfs-client");
    let o = t.registry_mut().nlm_owner(host, 42, b"oh");
    ok(
        &mut t,
        LockRequest {
            pid: 42,
            ..req(F, o, W, 0, 9)
        },
    );
    ok(&mut t, req(F, p(7), R, 20, 29));
    let w = queued(&mut t, blocking(req(F, p(8), W, 0, 29), 8));
    let mut snap = t.snapshot();
    snap.sort_by_key(|l| (l.range.start(), l.owner.id));
    assert_eq!(snap.len(), 3);
    let nlm = snap.iter().find(|l| l.owner == o).unwrap();
    assert_eq!(
        (nlm.host.as_deref(), nlm.pid, nlm.state),
        (Some("nfs-client"), 42, LockState::Held)
    );
    let waiting = snap.iter().find(|l| l.owner == p(8)).unwrap();
    assert_eq!(
        waiting.state,
        LockState::Waiting {
            waiter: w,
            io: false
        }
    );
    assert_eq!(waiting.range, rg(0, 29));
    assert!(waiting.since >= nlm.since);
}

#[test]
fn many_locks_on_one_file_stay_disjoint_and_indexed() {
    let mut t = LockTable::new();
    for i in 0..1000u64 {
        ok(
            &mut t,
            req(
                F,
                p(i % 7),
                if i % 3 == 0 { W } else { R },
                i * 10,
                i * 10 + 4,
            ),
        );
    }
    assert_eq!(held(&t, F).len(), 1000);
    for i in 0..1000u64 {
        assert!(
            conflict(&mut t, req(F, p(100), W, i * 10 + 2, i * 10 + 2))
                .range
                .start()
                == i * 10
        );
        ok(&mut t, req(F, p(100), W, i * 10 + 5, i * 10 + 9));
    }
    t.check_invariants();
    t.release_owner(p(100), Release::Normal);
    assert_eq!(held(&t, F).len(), 1000);
    for o in 0..7 {
        t.release_owner(p(o), Release::Normal);
    }
    assert_eq!(t.file_count(), 0);
}

#[test]
fn flock_and_ofd_locks_of_the_same_open_file_are_the_callers_own_for_io() {
    let mut t = LockTable::new();
    ok(&mut t, req(F, Owner::flock(5), W, 0, MAX));
    ok(&mut t, req(G, Owner::ofd(5), W, 0, MAX));
    for file in [F, G] {
        // Through open file 5 (named as its OFD owner): its own locks.
        assert!(t
            .io_check(file, Access::Write, rg(0, 9), p(1), Some(Owner::ofd(5)))
            .is_none());
        // Through another open file: blocked.
        assert!(t
            .io_check(file, Access::Write, rg(0, 9), p(1), Some(Owner::ofd(6)))
            .is_some());
    }
}

#[test]
fn the_flock_namespace_is_a_file_of_its_own_outside_every_grace_period() {
    let mut t = LockTable::new();
    let flock_f = F.in_namespace(Namespace::Flock);
    assert_ne!(flock_f, F);
    // Locks in the two namespaces of one file never meet.
    ok(&mut t, req(F, p(1), W, 0, MAX));
    ok(&mut t, req(flock_f, Owner::flock(7), W, 0, MAX));
    // A grace period of the scope the front door names does not reach the
    // flock namespace: no client can reclaim there.
    t.release_owner(p(1), Release::Normal);
    t.release_owner(Owner::flock(7), Release::Normal);
    t.begin_grace(S);
    assert_eq!(
        t.lock(&req(F, p(2), W, 0, MAX)),
        LockOutcome::Refused(Refusal::Grace)
    );
    ok(&mut t, req(flock_f, Owner::flock(8), W, 0, MAX));
    let listed: Vec<_> = t
        .snapshot()
        .into_iter()
        .map(|l| (l.file, l.scope))
        .collect();
    assert_eq!(listed, vec![(flock_f, ScopeId::LOCAL_ONLY)]);
    t.check_invariants();
}

#[test]
fn flock_conversion_drops_the_old_lock_first() {
    let mut t = LockTable::new();
    let (a, b) = (Owner::flock(1), Owner::flock(2));
    ok(&mut t, req(F, a, R, 0, MAX));
    ok(&mut t, req(F, b, R, 0, MAX));
    // Both shared holders upgrade: a's upgrade drops its shared lock and waits
    // for b's; b's drops b's shared lock, which lets a in. No deadlock.
    queued(&mut t, blocking(req(F, a, W, 0, MAX), 1));
    assert_eq!(held(&t, F), vec![(2, R, 0, MAX)]);
    queued(&mut t, blocking(req(F, b, W, 0, MAX), 2));
    assert_eq!(granted_tokens(&mut t), vec![1]);
    assert_eq!(held(&t, F), vec![(1, W, 0, MAX)]);
    t.unlock(F, a, Range::WHOLE);
    assert_eq!(granted_tokens(&mut t), vec![2]);
    // A refused conversion leaves its owner with no lock, as on Linux (a POSIX
    // owner keeps its old lock: see `refused_conversion_leaves_the_old_lock`).
    let c = Owner::flock(3);
    ok(&mut t, req(G, c, R, 0, MAX));
    ok(&mut t, req(G, b, R, 0, MAX));
    conflict(&mut t, req(G, c, W, 0, MAX));
    assert_eq!(held(&t, G), vec![(2, R, 0, MAX)]);
    t.check_invariants();
}

#[test]
fn admitted_io_holds_up_a_conflicting_blocking_lock_until_it_ends() {
    let mut t = LockTable::new();
    let ticket = t
        .begin_io(F, p(1), None, &[(Access::Write, rg(0, 9))])
        .unwrap();
    // A reader elsewhere and the writer's own lock are not held up.
    ok(&mut t, req(F, p(2), W, 100, 199));
    ok(&mut t, req(F, p(1), W, 0, 9));
    t.unlock(F, p(1), rg(0, 9));
    let id = queued(&mut t, blocking(req(F, p(3), R, 5, 5), 7));
    assert!(granted_tokens(&mut t).is_empty());
    assert_eq!(t.io_in_flight(), 1);
    // I/O admitted while the lock waits is still admitted: no lock is held.
    let read = t.begin_io(F, p(4), None, &[(Access::Read, rg(0, 9))]);
    let read = read.expect("no lock forbids the read");
    t.end_io(ticket);
    assert_eq!(granted_tokens(&mut t), vec![7]);
    assert_eq!(t.waiter(id), None);
    assert_eq!(held(&t, F), vec![(2, W, 100, 199), (3, R, 5, 5)]);
    t.end_io(read);
    assert_eq!(t.io_in_flight(), 0);
    // Now the lock forbids a write, and nothing is recorded for it.
    assert_eq!(
        t.begin_io(
            F,
            p(4),
            None,
            &[(Access::Read, rg(0, 0)), (Access::Write, rg(5, 5))]
        ),
        Err(1)
    );
    assert_eq!(t.io_in_flight(), 0);
    t.check_invariants();
}

#[test]
fn a_non_blocking_lock_meeting_io_in_flight_is_decided_after_it() {
    let mut t = LockTable::new();
    let ticket = t
        .begin_io(F, p(1), None, &[(Access::Read, rg(0, 9))])
        .unwrap();
    // A reclaim is not refused either: nothing it conflicts with is held.
    let mut reclaim = blocking(req(F, p(3), W, 5, 20), 1);
    reclaim.reclaim = true;
    t.begin_grace(S);
    assert_eq!(t.try_lock(&reclaim), None);
    t.end_grace(S);
    // A shared lock does not conflict with a read; an exclusive one does.
    assert_eq!(
        t.try_lock(&req(F, p(2), R, 0, 3)),
        Some(LockOutcome::Granted)
    );
    assert_eq!(t.try_lock(&req(F, p(3), W, 5, 20)), None);
    // The bare table reports the held-up request as a conflict.
    assert!(matches!(
        t.lock(&req(F, p(3), W, 5, 20)),
        LockOutcome::Refused(Refusal::Conflict(_))
    ));
    t.end_io(ticket);
    assert_eq!(
        t.try_lock(&req(F, p(3), W, 5, 20)),
        Some(LockOutcome::Granted)
    );
    assert_eq!(held(&t, F), vec![(2, R, 0, 3), (3, W, 5, 20)]);
    t.check_invariants();
}

#[test]
fn shared_table_sleeps_a_non_blocking_lock_until_the_io_pass_drops() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let table = Arc::new(SharedTable::new(|_| {}));
    let pass = table
        .begin_io(F, p(1), None, &[(Access::Write, rg(0, 9))])
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let locker = {
        let (table, done) = (table.clone(), done.clone());
        std::thread::spawn(move || {
            let out = table.lock(&req(F, p(2), W, 0, 0));
            done.store(true, Ordering::SeqCst);
            out
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        !done.load(Ordering::SeqCst),
        "the lock was decided while a conflicting write was in flight"
    );
    drop(pass);
    assert_eq!(locker.join().unwrap(), LockOutcome::Granted);
    assert_eq!(table.read(|t| t.io_in_flight()), 0);
}

#[test]
fn one_grace_rule_admits_shares_of_every_door() {
    let mut t = LockTable::new();
    let client = t.registry_mut().host("client");
    // Outside grace: new shares of both doors, no reclaims.
    assert_eq!(t.share_gate(S, client, false, true), Ok(()));
    assert_eq!(
        t.share_gate(S, client, true, true),
        Err(Refusal::NotInGrace)
    );
    assert_eq!(t.share_gate(S, HostId::LOCAL, false, true), Ok(()));
    t.begin_grace(S);
    assert_eq!(t.share_gate(S, client, true, true), Ok(()));
    assert_eq!(t.share_gate(S, client, false, true), Err(Refusal::Grace));
    // A local open a reclaim could meet is refused until grace ends; one it
    // could not meet, and any open in another scope, is admitted.
    assert_eq!(
        t.share_gate(S, HostId::LOCAL, false, true),
        Err(Refusal::Grace)
    );
    assert_eq!(t.share_gate(S, HostId::LOCAL, false, false), Ok(()));
    assert_eq!(t.share_gate(ScopeId(7), HostId::LOCAL, false, true), Ok(()));
    t.end_grace(S);
    assert_eq!(t.share_gate(S, HostId::LOCAL, false, true), Ok(()));
}

#[test]
fn hosts_blocking_waiters_are_the_remote_holders_a_queued_request_conflicts_with() {
    let (mut t, [a, b], [a1, _, b1]) = two_hosts();
    assert!(t.hosts_blocking_waiters().is_empty());
    ok(&mut t, req(F, a1, W, 0, 9));
    ok(&mut t, req(F, b1, R, 20, 29));
    ok(&mut t, req(G, p(7), W, 0, 9));
    // Nobody waits yet: nobody blocks.
    assert!(t.hosts_blocking_waiters().is_empty());
    let w = queued(&mut t, blocking(req(F, p(1), W, 5, 25), 1));
    let mut hosts = t.hosts_blocking_waiters();
    hosts.sort();
    assert_eq!(hosts, vec![a, b]);
    // A local holder blocking a waiter is no remote host.
    queued(&mut t, blocking(req(G, p(2), W, 0, 0), 2));
    assert_eq!(t.hosts_blocking_waiters().len(), 2);
    // Once the waiter on F is gone, a and b block nobody.
    assert!(t.cancel(w));
    assert!(t.hosts_blocking_waiters().is_empty());
}
