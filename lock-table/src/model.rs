//! Property test: random sequences of lock, unlock, test, cancel and release
//! by several owners on two files, checked after every step against a naive
//! reference model that keeps, for every byte of a small offset space, which
//! owner holds it how. The model knows nothing of segments or merging: its
//! locks are recomputed as maximal runs, which is Linux's normal form.
//!
//! Offsets 0..=15 are single cells; cell 16 stands for [16, u64::MAX], which
//! every generated range either covers whole or not at all.

use crate::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

const CELLS: usize = 17;
const OWNERS: u64 = 4;
const FILES: [FileId; 2] = [FileId::new(7, 1), FileId::new(7, 2)];

#[derive(Clone, Copy, Debug)]
struct Span {
    first: usize,
    last: usize,
}

impl Span {
    fn range(&self) -> Range {
        let start = self.first as u64;
        let end = if self.last == CELLS - 1 {
            u64::MAX
        } else {
            self.last as u64
        };
        Range::new(start, end).unwrap()
    }

    fn cells(&self) -> std::ops::RangeInclusive<usize> {
        self.first..=self.last
    }

    fn overlaps(&self, o: &Span) -> bool {
        self.first <= o.last && o.first <= self.last
    }
}

#[derive(Clone, Debug)]
enum Op {
    Lock {
        file: usize,
        owner: u64,
        kind: LockKind,
        span: Span,
        block: bool,
    },
    Unlock {
        file: usize,
        owner: u64,
        span: Span,
    },
    Test {
        file: usize,
        owner: u64,
        kind: LockKind,
        span: Span,
    },
    Cancel {
        owner: u64,
    },
    ReleaseOwner {
        owner: u64,
    },
    Close {
        file: usize,
        owner: u64,
    },
}

fn span() -> impl Strategy<Value = Span> {
    (0..CELLS).prop_flat_map(|first| {
        if first == CELLS - 1 {
            Just(Span { first, last: first }).boxed()
        } else {
            prop_oneof![
                3 => (first..CELLS - 1).prop_map(move |last| Span { first, last }),
                1 => Just(Span { first, last: CELLS - 1 }),
            ]
            .boxed()
        }
    })
}

fn kind() -> impl Strategy<Value = LockKind> {
    prop_oneof![Just(LockKind::Shared), Just(LockKind::Exclusive)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2usize, 0..OWNERS, kind(), span(), any::<bool>())
            .prop_map(|(file, owner, kind, span, block)| Op::Lock { file, owner, kind, span, block }),
        3 => (0..2usize, 0..OWNERS, span()).prop_map(|(file, owner, span)| Op::Unlock { file, owner, span }),
        2 => (0..2usize, 0..OWNERS, kind(), span())
            .prop_map(|(file, owner, kind, span)| Op::Test { file, owner, kind, span }),
        1 => (0..OWNERS).prop_map(|owner| Op::Cancel { owner }),
        1 => (0..OWNERS).prop_map(|owner| Op::ReleaseOwner { owner }),
        1 => (0..2usize, 0..OWNERS).prop_map(|(file, owner)| Op::Close { file, owner }),
    ]
}

#[derive(Clone, Debug)]
struct MWaiter {
    token: u64,
    owner: u64,
    kind: LockKind,
    span: Span,
}

#[derive(Default, Clone, Debug)]
struct MFile {
    cells: Vec<BTreeMap<u64, LockKind>>,
    queue: Vec<MWaiter>,
}

struct Model {
    files: Vec<MFile>,
}

fn clash(a: LockKind, b: LockKind) -> bool {
    a == LockKind::Exclusive || b == LockKind::Exclusive
}

impl Model {
    fn new() -> Self {
        Model {
            files: (0..FILES.len())
                .map(|_| MFile {
                    cells: vec![BTreeMap::new(); CELLS],
                    queue: Vec::new(),
                })
                .collect(),
        }
    }

    /// Owners whose held locks conflict, by cell order.
    fn blockers(&self, file: usize, owner: u64, kind: LockKind, span: Span) -> Vec<(usize, u64)> {
        let mut v = Vec::new();
        for c in span.cells() {
            for (&o, &k) in &self.files[file].cells[c] {
                if o != owner && clash(kind, k) {
                    v.push((c, o));
                }
            }
        }
        v
    }

    fn holds_anything(&self, owner: u64) -> bool {
        self.files
            .iter()
            .any(|f| f.cells.iter().any(|c| c.contains_key(&owner)))
    }

    fn yields(&self, file: usize, owner: u64, kind: LockKind, span: Span, before: usize) -> bool {
        !self.holds_anything(owner)
            && self.files[file].queue[..before]
                .iter()
                .any(|w| w.owner != owner && w.span.overlaps(&span) && clash(w.kind, kind))
    }

    fn set(&mut self, file: usize, owner: u64, kind: Option<LockKind>, span: Span) {
        for c in span.cells() {
            match kind {
                Some(k) => {
                    self.files[file].cells[c].insert(owner, k);
                }
                None => {
                    self.files[file].cells[c].remove(&owner);
                }
            }
        }
    }

    /// Naive wait-for search over held-lock edges only.
    fn deadlock(&self, requester: u64, file: usize, kind: LockKind, span: Span) -> bool {
        let mut stack: Vec<u64> = self
            .blockers(file, requester, kind, span)
            .into_iter()
            .map(|(_, o)| o)
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        while let Some(o) = stack.pop() {
            if o == requester {
                return true;
            }
            if !seen.insert(o) {
                continue;
            }
            for (fi, f) in self.files.iter().enumerate() {
                for w in f.queue.iter().filter(|w| w.owner == o) {
                    stack.extend(
                        self.blockers(fi, o, w.kind, w.span)
                            .into_iter()
                            .map(|(_, b)| b),
                    );
                }
            }
        }
        false
    }

    /// Grant queued requests until nothing changes; returns granted tokens.
    fn settle(&mut self) -> Vec<u64> {
        let mut granted = Vec::new();
        loop {
            let mut changed = false;
            for fi in 0..self.files.len() {
                let mut i = 0;
                while i < self.files[fi].queue.len() {
                    let w = self.files[fi].queue[i].clone();
                    let held = !self.blockers(fi, w.owner, w.kind, w.span).is_empty();
                    // Earlier waiters left in the queue are the blocked ones.
                    if held || self.yields(fi, w.owner, w.kind, w.span, i) {
                        i += 1;
                        continue;
                    }
                    self.files[fi].queue.remove(i);
                    self.set(fi, w.owner, Some(w.kind), w.span);
                    granted.push(w.token);
                    changed = true;
                    // A grant may downgrade: start over.
                    i = 0;
                }
            }
            if !changed {
                return granted;
            }
        }
    }

    /// Each owner's locks on a file as maximal runs: (owner, kind, range).
    fn runs(&self, file: usize) -> Vec<(u64, LockKind, Range)> {
        let mut out = Vec::new();
        for owner in 0..OWNERS {
            let mut c = 0;
            while c < CELLS {
                let Some(&k) = self.files[file].cells[c].get(&owner) else {
                    c += 1;
                    continue;
                };
                let first = c;
                while c + 1 < CELLS && self.files[file].cells[c + 1].get(&owner) == Some(&k) {
                    c += 1;
                }
                out.push((owner, k, Span { first, last: c }.range()));
                c += 1;
            }
        }
        out.sort_by_key(|(o, k, r)| (*o, *k, r.start()));
        out
    }

    fn run_containing(&self, file: usize, owner: u64, kind: LockKind, cell: usize) -> Range {
        self.runs(file)
            .into_iter()
            .find(|(o, k, r)| *o == owner && *k == kind && r.contains_offset(cell as u64))
            .map(|(_, _, r)| r)
            .expect("holder has a run")
    }

    /// Check a reported conflict: the owner holds a conflicting lock at the
    /// lowest conflicting cell, reported as its whole run.
    fn check_conflict(&self, file: usize, owner: u64, kind: LockKind, span: Span, h: &Holding) {
        let blockers = self.blockers(file, owner, kind, span);
        let first_cell = blockers.first().expect("model sees a conflict").0;
        let at_first: Vec<u64> = blockers
            .iter()
            .filter(|(c, _)| *c == first_cell)
            .map(|(_, o)| *o)
            .collect();
        let reported = h.owner.id - 1;
        assert!(
            at_first.contains(&reported),
            "reported {h:?}, expected one of {at_first:?}"
        );
        let held_kind = self.files[file].cells[first_cell][&reported];
        assert_eq!(h.kind, held_kind);
        if at_first.len() > 1 {
            // An exclusive holder is reported before shared ones.
            assert!(
                at_first
                    .iter()
                    .all(|o| self.files[file].cells[first_cell][o] == LockKind::Shared)
                    || h.kind == LockKind::Exclusive
            );
        }
        assert_eq!(
            h.range,
            self.run_containing(file, reported, h.kind, first_cell)
        );
    }
}

fn owner(n: u64) -> Owner {
    Owner::posix(n + 1)
}

fn granted(events: &[Event]) -> Vec<u64> {
    let mut v: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Granted { token, .. } => Some(*token),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn run(ops: Vec<Op>) {
    let mut t = LockTable::new();
    let mut m = Model::new();
    let mut ids: BTreeMap<WaiterId, u64> = BTreeMap::new();
    for (step, op) in ops.into_iter().enumerate() {
        let token = step as u64 + 1;
        let mut expect_granted: Vec<u64> = Vec::new();
        match op {
            Op::Lock {
                file,
                owner: o,
                kind,
                span,
                block,
            } => {
                let req = LockRequest {
                    file: FILES[file],
                    scope: ScopeId::DEFAULT,
                    owner: owner(o),
                    pid: o as u32,
                    kind,
                    range: span.range(),
                    wait: if block { Wait::Yes { token } } else { Wait::No },
                    reclaim: false,
                };
                let out = t.lock(&req);
                let conflict = !m.blockers(file, o, kind, span).is_empty();
                let queue_len = m.files[file].queue.len();
                match out {
                    LockOutcome::Granted => {
                        assert!(!conflict, "granted over a conflict");
                        assert!(
                            !block || !m.yields(file, o, kind, span, queue_len),
                            "granted but should yield"
                        );
                        m.set(file, o, Some(kind), span);
                    }
                    LockOutcome::Refused(Refusal::Conflict(h)) => {
                        assert!(!block, "a blocking request was refused with a conflict");
                        m.check_conflict(file, o, kind, span, &h);
                    }
                    LockOutcome::Refused(Refusal::Deadlock) => {
                        assert!(block && conflict);
                        assert!(
                            m.deadlock(o, file, kind, span),
                            "deadlock the model does not see"
                        );
                    }
                    LockOutcome::Queued(id) => {
                        assert!(block);
                        assert!(conflict || m.yields(file, o, kind, span, queue_len));
                        if conflict {
                            assert!(!m.deadlock(o, file, kind, span), "missed deadlock");
                        }
                        let dup = m.files[file]
                            .queue
                            .iter()
                            .find(|w| {
                                w.owner == o && w.kind == kind && w.span.range() == span.range()
                            })
                            .map(|w| w.token);
                        match dup {
                            Some(tok) => {
                                assert_eq!(ids.get(&id), Some(&tok), "duplicate not merged")
                            }
                            None => {
                                ids.insert(id, token);
                                m.files[file].queue.push(MWaiter {
                                    token,
                                    owner: o,
                                    kind,
                                    span,
                                });
                            }
                        }
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            Op::Unlock {
                file,
                owner: o,
                span,
            } => {
                t.unlock(FILES[file], owner(o), span.range());
                m.set(file, o, None, span);
            }
            Op::Test {
                file,
                owner: o,
                kind,
                span,
            } => {
                let out = t.test(&TestRequest {
                    file: FILES[file],
                    scope: ScopeId::DEFAULT,
                    owner: owner(o),
                    kind,
                    range: span.range(),
                });
                match out {
                    TestOutcome::Free => assert!(m.blockers(file, o, kind, span).is_empty()),
                    TestOutcome::Conflict(h) => m.check_conflict(file, o, kind, span, &h),
                    TestOutcome::Grace => panic!("no grace here"),
                }
            }
            Op::Cancel { owner: o } => {
                let first =
                    m.files.iter().enumerate().find_map(|(fi, f)| {
                        f.queue.iter().position(|w| w.owner == o).map(|i| (fi, i))
                    });
                if let Some((fi, i)) = first {
                    let w = m.files[fi].queue.remove(i);
                    let id = *ids.iter().find(|(_, tok)| **tok == w.token).unwrap().0;
                    assert!(t.cancel(id));
                }
            }
            Op::ReleaseOwner { owner: o } => {
                t.release_owner(owner(o), Release::Normal);
                for f in &mut m.files {
                    for c in &mut f.cells {
                        c.remove(&o);
                    }
                    f.queue.retain(|w| w.owner != o);
                }
            }
            Op::Close { file, owner: o } => {
                t.release_owner_on_file(owner(o), FILES[file]);
                for c in &mut m.files[file].cells {
                    c.remove(&o);
                }
            }
        }
        expect_granted.extend(m.settle());
        expect_granted.sort();
        let mut ev = Vec::new();
        t.take_events(&mut ev);
        assert_eq!(
            granted(&ev),
            expect_granted,
            "grants differ after step {step}"
        );
        t.check_invariants();
        for (fi, f) in FILES.iter().enumerate() {
            let mut got: Vec<(u64, LockKind, Range)> = t
                .held_on(*f)
                .into_iter()
                .map(|h| (h.owner.id - 1, h.kind, h.range))
                .collect();
            got.sort_by_key(|(o, k, r)| (*o, *k, r.start()));
            assert_eq!(
                got,
                m.runs(fi),
                "held locks differ on file {fi} after step {step}"
            );
            let queue: Vec<u64> = t.queued_on(*f).iter().map(|id| ids[id]).collect();
            let mq: Vec<u64> = m.files[fi].queue.iter().map(|w| w.token).collect();
            assert_eq!(queue, mq, "queues differ on file {fi} after step {step}");
        }
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn table_matches_per_byte_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops);
    }
}
