//! Many threads locking, unlocking and waiting on a few shared files through
//! `SharedTable`: no grant may conflict with a lock another thread holds, no
//! wake-up may be lost (every waiter is granted within a generous timeout),
//! deadlocks among the threads are refused rather than hung, and the table
//! itself never deadlocks (the test finishes).

use lock_table::*;
use std::collections::HashMap;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

const THREADS: usize = 8;
const ROUNDS: usize = 2_000;
const FILES: u64 = 3;

/// A small deterministic generator so failures replay.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// What each thread believes it holds, updated so that it is always a
/// subset of what the table holds: added after a grant, removed before an
/// unlock. A conflict inside it is a conflict inside the table.
type Shadow = Arc<Mutex<HashMap<(usize, u64), Vec<(LockKind, Range)>>>>;

fn check_and_add(shadow: &Shadow, me: usize, file: u64, kind: LockKind, range: Range) {
    let mut s = shadow.lock().unwrap();
    for ((other, f), locks) in s.iter() {
        if *other == me || *f != file {
            continue;
        }
        for (k, r) in locks {
            assert!(
                !(r.overlaps(&range) && k.conflicts_with(kind)),
                "thread {me} was granted {kind:?} {range} on file {file} while thread {other} holds {k:?} {r}"
            );
        }
    }
    s.entry((me, file)).or_default().push((kind, range));
}

#[test]
fn threads_never_see_conflicting_grants_or_lost_wakeups() {
    let senders: Arc<Mutex<Vec<Sender<Event>>>> = Arc::new(Mutex::new(Vec::new()));
    let mut receivers = Vec::new();
    for _ in 0..THREADS {
        let (tx, rx) = channel();
        senders.lock().unwrap().push(tx);
        receivers.push(rx);
    }
    let route = senders.clone();
    let table = Arc::new(SharedTable::new(move |ev: Event| {
        let idx = ev.token() as usize;
        let _ = route.lock().unwrap()[idx].send(ev);
    }));
    let shadow: Shadow = Arc::new(Mutex::new(HashMap::new()));
    let deadlocks = Arc::new(Mutex::new(0usize));
    let waits = Arc::new(Mutex::new(0usize));

    let handles: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(me, rx)| {
            let table = table.clone();
            let shadow = shadow.clone();
            let deadlocks = deadlocks.clone();
            let waits = waits.clone();
            thread::spawn(move || {
                let owner = Owner::posix(me as u64 + 1);
                let mut rng = Lcg(me as u64 * 7919 + 1);
                for round in 0..ROUNDS {
                    // Take one to three locks, sometimes on several files, so
                    // that cycles (deadlocks) can form.
                    let n = 1 + rng.next(3);
                    let mut refused = false;
                    for _ in 0..n {
                        let file = rng.next(FILES);
                        let start = rng.next(64);
                        let len = 1 + rng.next(16);
                        let kind = if rng.next(3) == 0 {
                            LockKind::Exclusive
                        } else {
                            LockKind::Shared
                        };
                        let range = Range::from_len(start, len).unwrap();
                        let req = LockRequest {
                            file: FileId::new(9, file),
                            scope: ScopeId::DEFAULT,
                            owner,
                            pid: me as u32,
                            kind,
                            range,
                            wait: Wait::Yes { token: me as u64 },
                            reclaim: false,
                        };
                        // A conversion of our own lock may shrink what the
                        // shadow knows; drop the file's shadow entry first.
                        shadow.lock().unwrap().remove(&(me, file));
                        match table.with(|t| t.lock(&req)) {
                            LockOutcome::Granted => {}
                            LockOutcome::Queued(id) => {
                                *waits.lock().unwrap() += 1;
                                match rx.recv_timeout(Duration::from_secs(20)) {
                                    Ok(Event::Granted { waiter, .. }) => assert_eq!(waiter, id),
                                    Ok(other) => panic!("thread {me}: unexpected {other:?}"),
                                    Err(_) => panic!(
                                        "thread {me} round {round}: lost wake-up for {req:?}; table: {:#?}",
                                        table.read(|t| t.snapshot())
                                    ),
                                }
                            }
                            LockOutcome::Refused(Refusal::Deadlock) => {
                                *deadlocks.lock().unwrap() += 1;
                                refused = true;
                            }
                            LockOutcome::Refused(r) => panic!("thread {me}: unexpected {r:?}"),
                        }
                        if refused {
                            break;
                        }
                        // Re-read what the table says we hold on this file
                        // and check it against everyone else's shadow.
                        let mine: Vec<Holding> = table.read(|t| {
                            t.held_on(FileId::new(9, file))
                                .into_iter()
                                .filter(|h| h.owner == owner)
                                .collect()
                        });
                        assert!(
                            mine.iter().any(|h| h.range.contains(&range)),
                            "granted lock missing from the table"
                        );
                        for h in mine {
                            check_and_add(&shadow, me, file, h.kind, h.range);
                        }
                    }
                    thread::yield_now();
                    // Drop our shadow before the table's locks.
                    shadow.lock().unwrap().retain(|(who, _), _| *who != me);
                    table.with(|t| t.release_owner(owner, Release::Normal));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker thread");
    }
    table.read(|t| {
        assert_eq!(t.file_count(), 0, "locks left behind");
        assert_eq!(t.waiter_count(), 0, "waiters left behind");
    });
    let waits = *waits.lock().unwrap();
    assert!(
        waits > 100,
        "the test made too little contention ({waits} waits)"
    );
    eprintln!(
        "{THREADS} threads x {ROUNDS} rounds: {waits} waits, {} deadlocks refused",
        deadlocks.lock().unwrap()
    );
}

#[test]
fn notifier_may_call_back_into_the_table() {
    // The notifier runs after the table's mutex is released, so a front
    // door may react to a grant by locking the table again.
    let slot: Arc<Mutex<Option<Arc<SharedTable>>>> = Arc::new(Mutex::new(None));
    let inner = slot.clone();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let table = Arc::new(SharedTable::new(move |ev: Event| {
        let t = inner.lock().unwrap().clone().unwrap();
        let n = t.read(|t| t.waiter_count());
        seen2.lock().unwrap().push((ev.token(), n));
    }));
    *slot.lock().unwrap() = Some(table.clone());
    let f = FileId::new(1, 1);
    let req = |owner, wait| LockRequest {
        file: f,
        scope: ScopeId::DEFAULT,
        owner,
        pid: 1,
        kind: LockKind::Exclusive,
        range: Range::WHOLE,
        wait,
        reclaim: false,
    };
    assert_eq!(
        table.with(|t| t.lock(&req(Owner::posix(1), Wait::No))),
        LockOutcome::Granted
    );
    assert!(matches!(
        table.with(|t| t.lock(&req(Owner::posix(2), Wait::Yes { token: 5 }))),
        LockOutcome::Queued(_)
    ));
    table.with(|t| t.unlock(f, Owner::posix(1), Range::WHOLE));
    assert_eq!(*seen.lock().unwrap(), vec![(5, 0)]);
    *slot.lock().unwrap() = None;
}
