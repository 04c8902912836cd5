//! Uncontended lock+unlock pairs in a loop, for profiling with callgrind or
//! perf: `cargo run --release -p lock-table --example pairs -- 1000000`.

use lock_table::*;
use std::time::Instant;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let mut t = LockTable::new();
    let f = FileId::new(1, 1);
    let o = Owner::posix(42);
    let r = Range::from_len(0, 100).unwrap();
    let req = LockRequest {
        file: f,
        scope: ScopeId::DEFAULT,
        owner: o,
        pid: 1,
        kind: LockKind::Exclusive,
        range: r,
        wait: Wait::No,
        reclaim: false,
    };
    let start = Instant::now();
    for _ in 0..n {
        let out = t.lock(std::hint::black_box(&req));
        assert_eq!(out, LockOutcome::Granted);
        t.unlock(f, o, r);
    }
    let el = start.elapsed();
    println!(
        "{n} pairs in {el:?}: {:.0} pairs/s, {:.1} ns/pair",
        n as f64 / el.as_secs_f64(),
        el.as_nanos() as f64 / n as f64
    );
}
