//! Reads of direct-I/O (mandatory) files answered by splicing from the backing
//! file: the bytes, lengths and errors a reader sees must be exactly those of
//! the backing file, whether the reply was spliced or copied.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;
use fuse_lockfs::{Mandatory, MountOptions};

const MIB: u64 = 1 << 20;
/// Data in [0, 1 MiB), a hole in [1 MiB, 2 MiB), data in [2 MiB, END).
const END: u64 = 3 * MIB + 1234;

fn options(splice_read: bool) -> MountOptions {
    MountOptions {
        forward_locks: true,
        mandatory: Mandatory::All,
        splice_read,
        ..MountOptions::default()
    }
}

/// Deterministic bytes that differ at every offset a misplaced page would show.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn make_sparse_file(path: &Path) {
    let f = File::create(path).unwrap();
    f.write_all_at(&pattern(MIB as usize, 1), 0).unwrap();
    f.write_all_at(&pattern((END - 2 * MIB) as usize, 2), 2 * MIB)
        .unwrap();
    assert_eq!(f.metadata().unwrap().len(), END);
}

/// (offset, size) pairs: aligned, unaligned, larger than one request, across
/// the edges of the hole, inside it, short at end of file, at and past it.
const READS: &[(u64, usize)] = &[
    (0, 128 << 10),
    (0, 2 << 20),
    (4095, 10_000),
    (5, 1),
    (MIB - 100, 200),
    (MIB + MIB / 2, 4096),
    (2 * MIB - 7, 8192),
    (END - 100, 4096),
    (END - 1, 1 << 20),
    (END, 4096),
    (END + 10 * MIB, 4096),
];

/// Reads every range of [`READS`] through `mnt_file` and from `src_file` and
/// compares; returns how many of the reads returned data.
fn compare_reads(mnt_file: &Path, src_file: &Path) -> u64 {
    let m = File::open(mnt_file).unwrap();
    let s = File::open(src_file).unwrap();
    let mut with_data = 0;
    for &(off, size) in READS {
        let mut want = vec![0xAAu8; size];
        let mut got = vec![0x55u8; size];
        let nw = s.read_at(&mut want, off).unwrap();
        let ng = m.read_at(&mut got, off).unwrap();
        // One read(2) may stop at a request boundary; read on like a reader.
        let mut ng_total = ng;
        while ng_total < nw {
            let n = m
                .read_at(&mut got[ng_total..], off + ng_total as u64)
                .unwrap();
            assert!(n > 0, "read at {off}+{ng_total} hit end of file early");
            ng_total += n;
        }
        assert_eq!(ng_total, nw, "length of the read at {off} (size {size})");
        assert!(
            want[..nw] == got[..ng_total],
            "bytes of the read at {off} (size {size}) differ from the backing file"
        );
        if nw > 0 {
            with_data += 1;
        }
    }
    with_data
}

#[test]
fn spliced_reads_return_the_backing_bytes() {
    let Some(fx) = mount_with(options(true)) else {
        return;
    };
    make_sparse_file(&fx.s("f"));
    let (mf, sf) = (fx.m("f"), fx.s("f"));
    let before = fx.handle().stats();
    let with_data = within(move || compare_reads(&mf, &sf));
    let after = fx.handle().stats();
    let spliced = after.spliced_reads - before.spliced_reads;
    assert!(
        spliced >= with_data,
        "only {spliced} of at least {with_data} reads were spliced: {after:?}"
    );
}

#[test]
fn copied_reads_return_the_same_bytes() {
    let Some(fx) = mount_with(options(false)) else {
        return;
    };
    make_sparse_file(&fx.s("f"));
    let (mf, sf) = (fx.m("f"), fx.s("f"));
    let with_data = within(move || compare_reads(&mf, &sf));
    let st = fx.handle().stats();
    assert!(st.daemon_io_requests >= with_data, "{st:?}");
    assert_eq!(st.spliced_reads, 0, "{st:?}");
}

/// Each request thread (and each thread answering a read that waited for a
/// lock) has pipes of its own: concurrent readers must never see each other's
/// pages.
#[test]
fn concurrent_spliced_reads_do_not_mix() {
    concurrent_reads_do_not_mix(true);
}

/// Copied reads go through one reused buffer per thread: the same check.
#[test]
fn concurrent_copied_reads_do_not_mix() {
    concurrent_reads_do_not_mix(false);
}

fn concurrent_reads_do_not_mix(splice_read: bool) {
    let Some(fx) = mount_with(MountOptions {
        n_threads: 4,
        ..options(splice_read)
    }) else {
        return;
    };
    for i in 0..4u64 {
        std::fs::write(fx.s(&format!("f{i}")), pattern(2 * MIB as usize, 10 + i)).unwrap();
    }
    let mnt = fx.mnt.clone();
    within(move || {
        let readers: Vec<_> = (0..8u64)
            .map(|t| {
                let path = mnt.join(format!("f{}", t % 4));
                std::thread::spawn(move || {
                    let want = pattern(2 * MIB as usize, 10 + t % 4);
                    let f = File::open(&path).unwrap();
                    let mut buf = vec![0u8; 96 << 10];
                    for round in 0..200u64 {
                        let off = (round * 7919 * 4099 + t * 65_537) % (2 * MIB - buf.len() as u64);
                        f.read_exact_at(&mut buf, off).unwrap();
                        assert!(
                            buf[..] == want[off as usize..off as usize + buf.len()],
                            "reader {t}: wrong bytes at {off}"
                        );
                    }
                })
            })
            .collect();
        // Join every reader before failing: a reader left running at the end
        // of the test would hold a file open on the mount this process serves.
        let results: Vec<_> = readers.into_iter().map(|r| r.join()).collect();
        for r in results {
            if let Err(panic) = r {
                std::panic::resume_unwind(panic);
            }
        }
    });
    let spliced = fx.handle().stats().spliced_reads;
    if splice_read {
        assert!(spliced >= 1600, "{spliced} spliced reads");
    } else {
        assert_eq!(spliced, 0);
    }
}

/// A read the backing file refuses gets that file's errno, spliced or not:
/// `/proc/PID/mem` fails with EIO at an address that is not mapped (0) and
/// reads the memory where it is.
#[test]
fn read_errors_are_the_backing_files() {
    for splice_read in [true, false] {
        // A process whose memory the test knows: a sleeping child, killed
        // and reaped whatever happens.
        let child = Reaped(
            std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .unwrap(),
        );
        let proc_dir = std::path::PathBuf::from(format!("/proc/{}", child.0.id()));
        let Some(fx) = mount_with_source(&proc_dir, options(splice_read)) else {
            return;
        };
        let mem = fx.mnt.join("mem");
        let maps = std::fs::read_to_string(proc_dir.join("maps")).unwrap();
        let start = u64::from_str_radix(maps.split('-').next().unwrap(), 16).unwrap();
        let native = File::open(proc_dir.join("mem")).unwrap();
        let r = within(move || {
            let f = File::open(&mem).unwrap();
            let mut buf = vec![0u8; 4096];
            let unmapped = err_of(f.read_at(&mut buf, 0));
            let n = f.read_at(&mut buf, start).unwrap();
            (unmapped, n, buf)
        });
        let mut want = vec![0u8; 4096];
        let native_err = err_of(native.read_at(&mut want, 0));
        let nw = native.read_at(&mut want, start).unwrap();
        assert_eq!(
            r.0, native_err,
            "splice {splice_read}: errno of an unmapped read"
        );
        assert_eq!(r.0, libc::EIO);
        assert_eq!((r.1, &r.2[..]), (nw, &want[..nw]), "splice {splice_read}");
        drop(fx);
        drop(child);
    }
}

struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
