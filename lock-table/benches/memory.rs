//! Memory per held lock, measured with a counting allocator: the live heap
//! bytes the table owns divided by the number of locks it holds.
//! Run: `cargo bench -p lock-table --bench memory`.

use lock_table::*;
use lockfs_testkit::alloc::Counting;

#[global_allocator]
static A: Counting = Counting;

fn measure(locks: u64, files: u64, owners: u64) {
    let before = Counting::live();
    let mut t = LockTable::new();
    let per_file = locks / files;
    for i in 0..locks {
        let file = FileId::new(3, i % files);
        let slot = i / files;
        let r = Range::from_len(slot * 100, 50).unwrap();
        let kind = if i % 3 == 0 {
            LockKind::Exclusive
        } else {
            LockKind::Shared
        };
        let out = t.lock(&LockRequest {
            file,
            scope: ScopeId::DEFAULT,
            owner: Owner::posix(1 + i % owners),
            pid: 1,
            kind,
            range: r,
            wait: Wait::No,
            reclaim: false,
        });
        assert_eq!(out, LockOutcome::Granted);
    }
    let bytes = Counting::live() - before;
    println!(
        "{locks:>9} locks over {files:>6} files ({per_file} per file), {owners:>6} owners: {:>6.1} MiB, {:>5.1} bytes per lock",
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / locks as f64
    );
    drop(t);
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    measure(10_000, 100, 100);
    measure(100_000, 1_000, 1_000);
    measure(1_000_000, 10_000, 1_000);
    measure(1_000_000, 10_000, 100_000);
    measure(1_000_000, 1, 1_000);
}
