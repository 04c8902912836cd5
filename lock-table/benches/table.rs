//! Criterion benchmarks of the lock table's hot paths. Figures and the
//! command that produced them are in BENCHMARKS.md.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lock_table::*;
use lockfs_testkit::posix::setlk;

fn req(file: FileId, owner: Owner, kind: LockKind, range: Range) -> LockRequest {
    LockRequest {
        file,
        scope: ScopeId::DEFAULT,
        owner,
        pid: 1,
        kind,
        range,
        wait: Wait::No,
        reclaim: false,
    }
}

/// A file holding `n` disjoint locks of `n / 4` different owners, some
/// shared, some exclusive, spread over the file.
fn table_with(n: u64, file: FileId) -> LockTable {
    let mut t = LockTable::new();
    for i in 0..n {
        let kind = if i % 2 == 0 {
            LockKind::Shared
        } else {
            LockKind::Exclusive
        };
        let r = Range::from_len(i * 100, 50).unwrap();
        assert_eq!(
            t.lock(&req(file, Owner::posix(1 + i % (n / 4).max(1)), kind, r)),
            LockOutcome::Granted
        );
    }
    t
}

fn uncontended(c: &mut Criterion) {
    let mut g = c.benchmark_group("uncontended");
    g.throughput(Throughput::Elements(1));
    let f = FileId::new(1, 1);
    let o = Owner::posix(42);
    let r = Range::from_len(0, 100).unwrap();
    g.bench_function("lock_unlock_pair", |b| {
        let mut t = LockTable::new();
        b.iter(|| {
            let out = t.lock(black_box(&req(f, o, LockKind::Exclusive, r)));
            debug_assert_eq!(out, LockOutcome::Granted);
            t.unlock(f, o, r);
        })
    });
    // Baseline measured in the same run: the kernel's own POSIX lock+unlock
    // pair (two fcntl F_SETLK system calls) on a file of the bench machine's
    // native file system.
    g.bench_function("kernel_fcntl_pair_native", |b| {
        let file = tempfile::NamedTempFile::new_in(".").expect("temp file");
        let fd = std::os::fd::AsFd::as_fd(file.as_file());
        b.iter(|| {
            setlk(fd, libc::F_WRLCK, 0, 100).expect("lock");
            setlk(fd, libc::F_UNLCK, 0, 100).expect("unlock");
        })
    });
    g.bench_function("lock_unlock_pair_shared_table", |b| {
        let t = SharedTable::new(|_e: Event| {});
        b.iter(|| {
            t.with(|t| t.lock(black_box(&req(f, o, LockKind::Exclusive, r))));
            t.with(|t| t.unlock(f, o, r));
        })
    });
    g.finish();
}

fn scaling(c: &mut Criterion) {
    let f = FileId::new(1, 1);
    let mut g = c.benchmark_group("one_file");
    for n in [10u64, 1_000, 100_000] {
        let mut t = table_with(n, f);
        // Probe the middle of the file, between two held locks, so the
        // request is granted / free and the cost is the search.
        let mid = (n / 2) * 100 + 60;
        let probe = Range::from_len(mid, 10).unwrap();
        g.bench_with_input(BenchmarkId::new("test", n), &n, |b, _| {
            let tr = TestRequest {
                file: f,
                scope: ScopeId::DEFAULT,
                owner: Owner::posix(u64::MAX),
                kind: LockKind::Exclusive,
                range: probe,
            };
            b.iter(|| black_box(t.test(black_box(&tr))))
        });
        g.bench_with_input(BenchmarkId::new("test_conflict", n), &n, |b, _| {
            let tr = TestRequest {
                file: f,
                scope: ScopeId::DEFAULT,
                owner: Owner::posix(u64::MAX),
                kind: LockKind::Exclusive,
                range: Range::from_len(mid - 60, 10).unwrap(),
            };
            b.iter(|| black_box(t.test(black_box(&tr))))
        });
        g.bench_with_input(BenchmarkId::new("lock_unlock", n), &n, |b, _| {
            let o = Owner::posix(u64::MAX);
            b.iter(|| {
                t.lock(black_box(&req(f, o, LockKind::Exclusive, probe)));
                t.unlock(f, o, probe);
            })
        });
    }
    g.finish();
}

fn million(c: &mut Criterion) {
    // 1,000,000 locks over 10,000 files, 100 per file, 1,000 owners.
    let mut t = LockTable::new();
    for i in 0..1_000_000u64 {
        let file = FileId::new(2, i % 10_000);
        let slot = i / 10_000;
        let r = Range::from_len(slot * 100, 50).unwrap();
        let kind = if i % 3 == 0 {
            LockKind::Exclusive
        } else {
            LockKind::Shared
        };
        t.lock(&req(file, Owner::posix(1 + i % 1_000), kind, r));
    }
    let mut g = c.benchmark_group("million_locks");
    g.throughput(Throughput::Elements(1));
    let mut k = 0u64;
    g.bench_function("lock_unlock_pair", |b| {
        let o = Owner::posix(5_000_000);
        b.iter(|| {
            k = (k + 7919) % 10_000;
            let file = FileId::new(2, k);
            let r = Range::from_len(((k % 100) * 100) + 60, 10).unwrap();
            t.lock(black_box(&req(file, o, LockKind::Exclusive, r)));
            t.unlock(file, o, r);
        })
    });
    g.bench_function("test", |b| {
        b.iter(|| {
            k = (k + 7919) % 10_000;
            let tr = TestRequest {
                file: FileId::new(2, k),
                scope: ScopeId::DEFAULT,
                owner: Owner::posix(5_000_000),
                kind: LockKind::Exclusive,
                range: Range::from_len((k % 100) * 100, 10).unwrap(),
            };
            black_box(t.test(black_box(&tr)))
        })
    });
    g.finish();
}

criterion_group!(benches, uncontended, scaling, million);
criterion_main!(benches);
