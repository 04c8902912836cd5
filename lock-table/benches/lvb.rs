//! The lock table's own cost per value-block get and set, as the FUSE door
//! makes them (one owner holding an exclusive lock on the file, a table of
//! other files around it): `cargo bench -p lock-table --bench lvb`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use lock_table::*;

const F: FileId = FileId::new(1, 7);

fn table() -> SharedTable {
    let t = SharedTable::new(|_e: Event| {});
    t.with(|t| {
        // Other files in the table, as a busy daemon has.
        for i in 0..10_000u64 {
            let r = LockRequest {
                file: FileId::new(1, 1000 + i),
                scope: ScopeId::DEFAULT,
                owner: Owner::posix(i + 100),
                pid: 1,
                kind: LockKind::Shared,
                range: Range::WHOLE,
                wait: Wait::No,
                reclaim: false,
            };
            t.lock(&r);
        }
        t.lock(&LockRequest {
            file: F,
            scope: ScopeId::DEFAULT,
            owner: Owner::posix(1),
            pid: 1,
            kind: LockKind::Exclusive,
            range: Range::WHOLE,
            wait: Wait::No,
            reclaim: false,
        });
        t.lvb_load(F, ScopeId::DEFAULT, LvbValue::default());
    });
    t
}

fn lvb(c: &mut Criterion) {
    let mut g = c.benchmark_group("lvb");
    let claims = [
        (F, Owner::ofd(9)),
        (FileId::new(1 | (1 << 63), 7), Owner::flock(9)),
        (F, Owner::posix(1)),
    ];
    let t = table();
    g.bench_function("get", |b| {
        b.iter(|| {
            let held = t.read(|t| t.held_on(F));
            let v = t.read(|t| (t.lvb_holds(&claims), t.lvb_block(F)));
            black_box((held, v))
        })
    });
    let t = table();
    g.bench_function("set", |b| {
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            let held = t.read(|t| t.held_on(F));
            let cur = t.read(|t| t.lvb_block(F)).unwrap_or_default();
            let next = cur.written(&n.to_le_bytes()).unwrap();
            t.read(|t| t.lvb_authority(&claims)).unwrap();
            t.with(|t| t.lvb_put(F, ScopeId::DEFAULT, next));
            black_box(held)
        })
    });
    let mut raw = LockTable::new();
    raw.lock(&LockRequest {
        file: F,
        scope: ScopeId::DEFAULT,
        owner: Owner::posix(1),
        pid: 1,
        kind: LockKind::Exclusive,
        range: Range::WHOLE,
        wait: Wait::No,
        reclaim: false,
    });
    g.bench_function("table_write_only", |b| {
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            black_box(raw.lvb_write(F, Owner::posix(1), &n.to_le_bytes()).unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, lvb);
criterion_main!(benches);
