//! Work per operation against one file holding N locks, for instruction
//! counting: `valgrind --tool=callgrind target/release/examples/scaling N OPS`
//! run with OPS = 0 and OPS = k; the difference divided by k is the cost of
//! one test plus one lock/unlock pair, free of set-up.

use lock_table::*;

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>().expect("number"));
    let n = args.next().unwrap_or(1000);
    let ops = args.next().unwrap_or(0);
    let f = FileId::new(1, 1);
    let mut t = LockTable::new();
    let req = |owner, kind, range| LockRequest {
        file: f,
        scope: ScopeId::DEFAULT,
        owner,
        pid: 1,
        kind,
        range,
        wait: Wait::No,
        reclaim: false,
    };
    for i in 0..n {
        let kind = if i % 2 == 0 {
            LockKind::Shared
        } else {
            LockKind::Exclusive
        };
        let owner = Owner::posix(1 + i % (n / 4).max(1));
        t.lock(&req(
            owner,
            kind,
            Range::from_len(i * 100, 50).expect("range"),
        ));
    }
    let me = Owner::posix(u64::MAX);
    let mut x = 12345u64;
    for _ in 0..ops {
        // A pseudo-random gap between held locks, so no single path stays hot.
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        let slot = (x >> 33) % n;
        let probe = Range::from_len(slot * 100 + 60, 10).expect("range");
        let tr = TestRequest {
            file: f,
            scope: ScopeId::DEFAULT,
            owner: me,
            kind: LockKind::Exclusive,
            range: probe,
        };
        std::hint::black_box(t.test(&tr));
        std::hint::black_box(t.lock(&req(me, LockKind::Exclusive, probe)));
        t.unlock(f, me, probe);
    }
}
