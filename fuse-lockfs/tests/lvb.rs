//! Lock value blocks on a real mount, read and written by separate processes
//! (`lockfs-lockctl`) through the ioctls of `include/lockfs.h`, and by a C
//! program that uses only the header.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::ctl::Ctl;
use common::*;
use fuse_lockfs::{FlockMode, LockContext, MountOptions};

fn options(ctx: &LockContext) -> MountOptions {
    MountOptions {
        locks: Some(ctx.clone()),
        ..MountOptions::default()
    }
}

fn file(fx: &Fixture, name: &str) -> PathBuf {
    std::fs::write(fx.s(name), b"data").unwrap();
    fx.m(name)
}

/// Waits until nobody holds a lock on any file (a dead holder's locks go with
/// its FLUSH and RELEASE, which the kernel may send after the process ended).
fn wait_unlocked(ctx: &LockContext) {
    let t0 = Instant::now();
    while !ctx.table.read(|t| t.snapshot()).is_empty() {
        assert!(t0.elapsed() < OP_TIMEOUT, "locks never went away");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `(seq, valid, locked, text)` of an `lvbget` answer.
fn get(c: &mut Ctl, fd: u32) -> (u64, bool, bool, String) {
    let a = c.ok(&format!("lvbget {fd}"));
    let w: Vec<&str> = a.split_whitespace().collect();
    assert_eq!(w.len(), 5, "{a:?}");
    (
        w[1].parse().unwrap(),
        w[2] == "valid",
        w[3] == "locked",
        w[4].to_string(),
    )
}

#[test]
fn a_reader_gets_what_the_writer_set_valid_with_the_next_sequence_number() {
    let ctx = LockContext::new();
    let Some(fx) = mount_with(options(&ctx)) else {
        return;
    };
    let p = file(&fx, "f");
    let (mut w, mut r, mut n) = (Ctl::start(), Ctl::start(), Ctl::start());
    let fw = w.open(&p, "rw");
    let fr = r.open(&p, "r");
    let fnl = n.open(&p, "r");
    w.ok(&format!("lock {fw} setlkw w 0 0"));
    assert_eq!(
        get(&mut w, fw),
        (0, true, true, "-".into()),
        "initial block"
    );
    assert_eq!(w.ok(&format!("lvbset {fw} v1")), "ok 1");
    w.ok(&format!("lock {fw} setlk u 0 0"));
    r.ok(&format!("lock {fr} setlkw r 0 0"));
    assert_eq!(get(&mut r, fr), (1, true, true, "v1".into()));
    // A reader may not write, nor invalidate.
    r.fails(&format!("lvbset {fr} v2"), libc::EPERM);
    r.fails(&format!("lvbinval {fr}"), libc::EPERM);
    // Without any lock the answer comes, flagged unlocked.
    assert_eq!(get(&mut n, fnl), (1, true, false, "v1".into()));
    r.ok(&format!("lock {fr} setlk u 0 0"));
    // A byte-range exclusive lock is an exclusive lock on the file.
    w.ok(&format!("lock {fw} setlkw w 10 1"));
    assert_eq!(w.ok(&format!("lvbset {fw} v2")), "ok 2");
    assert_eq!(w.ok(&format!("lvbinval {fw}")), "ok 2");
    assert_eq!(get(&mut n, fnl), (2, false, false, "v2".into()));
    assert_eq!(w.ok(&format!("lvbset {fw} v3")), "ok 3");
    assert_eq!(get(&mut n, fnl), (3, true, false, "v3".into()));
    // An ordinary unlock and close by a live process keep it valid.
    w.ok(&format!("lock {fw} setlk u 0 0"));
    w.ok(&format!("close {fw}"));
    assert_eq!(get(&mut n, fnl), (3, true, false, "v3".into()));
    // The block is on the export's storage, with its sequence number: in the
    // store file under the source's root, in the slot of the file's inode and
    // of the token its marker attribute names.
    let store = std::fs::read(
        fx.s(fuse_lockfs::lvb_slots::STATE_DIR)
            .join(fuse_lockfs::lvb_slots::STORE_FILE),
    )
    .expect("the store file exists");
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(fx.s("f")).unwrap());
    let slots = fuse_lockfs::lvb_slots::read_all(&store).expect("a readable store");
    let mine: Vec<_> = slots.iter().filter(|(i, _, _)| *i == ino).collect();
    assert_eq!(mine.len(), 1, "one slot for the file");
    assert_eq!(mine[0].2.value.seq, 3, "stored sequence number");
    assert_eq!(&mine[0].2.value.bytes[..2], b"v3");
    let out = Command::new("getfattr")
        .args(["--only-values", "-n", "trusted.lockfs.lvb"])
        .arg(fx.s("f"))
        .output();
    if let Ok(out) = out {
        if out.status.success() {
            assert_eq!(out.stdout.len(), fuse_lockfs::lvb_store::MARKER_LEN);
            assert_eq!(
                out.stdout[fuse_lockfs::lvb_store::RECORD_LEN..],
                mine[0].1.to_le_bytes(),
                "the marker names the slot's token"
            );
        }
    }
    // The store's directory is not part of the exported tree.
    let listed: Vec<_> = std::fs::read_dir(fx.m(""))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(!listed.iter().any(|n| n == ".lockfs"), "{listed:?}");
    assert_eq!(
        std::fs::metadata(fx.m(".lockfs"))
            .err()
            .and_then(|e| e.raw_os_error()),
        Some(libc::ENOENT)
    );
    assert_eq!(
        std::fs::create_dir(fx.m(".lockfs"))
            .err()
            .and_then(|e| e.raw_os_error()),
        Some(libc::EPERM)
    );
    assert!(fx.s(".lockfs").is_dir(), "still there behind the mount");
}

#[test]
fn set_is_refused_without_an_exclusive_lock_and_through_another_owners_lock() {
    let ctx = LockContext::new();
    let Some(fx) = mount_with(options(&ctx)) else {
        return;
    };
    let p = file(&fx, "f");
    let other = file(&fx, "other");
    let (mut a, mut b) = (Ctl::start(), Ctl::start());
    let fa = a.open(&p, "rw");
    let fb = b.open(&p, "rw");
    a.fails(&format!("lvbset {fa} x"), libc::EPERM);
    a.fails(&format!("lvbinval {fa}"), libc::EPERM);
    // Another process's exclusive lock gives nothing.
    b.ok(&format!("lock {fb} setlkw w 0 0"));
    a.fails(&format!("lvbset {fa} x"), libc::EPERM);
    // Nor does the parent's POSIX lock to a forked child on the inherited
    // descriptor: POSIX locks belong to the process.
    b.ok(&format!("lock {fb} setlk u 0 0"));
    a.ok(&format!("lock {fa} setlkw w 0 0"));
    assert_eq!(
        a.ok(&format!("forklvbset {fa} child")),
        format!("ok {}", libc::EPERM)
    );
    assert_eq!(a.ok(&format!("lvbset {fa} parent")), "ok 1");
    a.ok(&format!("lock {fa} setlk u 0 0"));
    // An OFD lock belongs to the open file: a child sharing it may write.
    // (A close first shows the daemon this process's POSIX owner, so the OFD
    // lock is known for what it is.)
    let fo = a.open(&other, "r");
    a.ok(&format!("close {fo}"));
    a.ok(&format!("lock {fa} ofdw w 0 0"));
    assert_eq!(a.ok(&format!("forklvbset {fa} child")), "ok 0");
    b.fails(&format!("lvbset {fb} x"), libc::EPERM);
    a.ok(&format!("lock {fa} ofd u 0 0"));
    // flock, in its own namespace (the default).
    b.ok(&format!("flock {fb} ex"));
    assert_eq!(b.ok(&format!("lvbset {fb} flocked")), "ok 3");
    a.fails(&format!("lvbset {fa} x"), libc::EPERM);
    b.ok(&format!("flock {fb} un"));
    b.fails(&format!("lvbset {fb} x"), libc::EPERM);
    // A value longer than the block cannot even be expressed in the struct;
    // nothing changed through all the refusals.
    assert_eq!(get(&mut a, fa), (3, true, false, "flocked".into()));
}

/// A holder that dies holding an exclusive lock (`how`: `kill` or `exit`)
/// leaves the block not-valid; `lock` is the lockctl command that takes it.
fn a_dead_holder_leaves_the_block_not_valid(lock: &str, flock: FlockMode, how: &str) {
    let ctx = LockContext::new();
    let Some(fx) = mount_with(MountOptions {
        flock,
        ..options(&ctx)
    }) else {
        return;
    };
    let p = file(&fx, "f");
    let mut w = Ctl::start();
    let fw = w.open(&p, "rw");
    w.ok(&lock.replace("FD", &fw.to_string()));
    assert_eq!(w.ok(&format!("lvbset {fw} v1")), "ok 1");
    match how {
        "kill" => w.child.kill().unwrap(),
        _ => w.send("exit"),
    }
    w.reap();
    wait_unlocked(&ctx);
    let mut r = Ctl::start();
    let fr = r.open(&p, "rw");
    r.ok(&format!("lock {fr} setlkw r 0 0"));
    assert_eq!(
        get(&mut r, fr),
        (1, false, true, "v1".into()),
        "after {how} with {lock:?}: the old value, not-valid"
    );
    r.ok(&format!("lock {fr} setlkw w 0 0"));
    assert_eq!(r.ok(&format!("lvbset {fr} v2")), "ok 2");
    assert_eq!(get(&mut r, fr), (2, true, true, "v2".into()));
}

#[test]
fn sigkill_of_a_posix_writer_makes_the_block_not_valid() {
    a_dead_holder_leaves_the_block_not_valid("lock FD setlkw w 0 0", FlockMode::Separate, "kill");
}

#[test]
fn exit_holding_a_posix_lock_makes_the_block_not_valid() {
    a_dead_holder_leaves_the_block_not_valid("lock FD setlkw w 0 0", FlockMode::Separate, "exit");
}

#[test]
fn sigkill_of_an_ofd_writer_makes_the_block_not_valid() {
    a_dead_holder_leaves_the_block_not_valid("lock FD ofdw w 0 0", FlockMode::Separate, "kill");
}

#[test]
fn exit_holding_flock_makes_the_block_not_valid_in_both_flock_modes() {
    a_dead_holder_leaves_the_block_not_valid("flock FD ex", FlockMode::Separate, "exit");
    a_dead_holder_leaves_the_block_not_valid("flock FD ex", FlockMode::Shared, "kill");
}

#[test]
fn unlock_then_exit_and_a_dying_reader_keep_the_block_valid() {
    let ctx = LockContext::new();
    let Some(fx) = mount_with(options(&ctx)) else {
        return;
    };
    let p = file(&fx, "f");
    let mut w = Ctl::start();
    let fw = w.open(&p, "rw");
    w.ok(&format!("lock {fw} setlkw w 0 0"));
    assert_eq!(w.ok(&format!("lvbset {fw} v1")), "ok 1");
    w.ok(&format!("lock {fw} setlk u 0 0"));
    w.send("exit");
    w.reap();
    // A reader killed holding a shared lock.
    let mut r = Ctl::start();
    let fr = r.open(&p, "r");
    r.ok(&format!("lock {fr} setlkw r 0 0"));
    r.child.kill().unwrap();
    r.reap();
    wait_unlocked(&ctx);
    let mut n = Ctl::start();
    let fnl = n.open(&p, "r");
    assert_eq!(get(&mut n, fnl), (1, true, false, "v1".into()));
}

#[test]
fn concurrent_increments_under_the_exclusive_lock_are_never_lost() {
    const PROCS: usize = 4;
    const EACH: u64 = 750;
    let ctx = LockContext::new();
    let Some(fx) = mount_with(options(&ctx)) else {
        return;
    };
    let p = file(&fx, "counter");
    let mut ctls: Vec<(Ctl, u32)> = (0..PROCS)
        .map(|_| {
            let mut c = Ctl::start();
            let fd = c.open(&p, "rw");
            (c, fd)
        })
        .collect();
    for (c, fd) in ctls.iter_mut() {
        c.send(&format!("lvbcount {fd} {EACH}"));
    }
    for (c, _) in ctls.iter_mut() {
        let a = c
            .lines
            .recv_timeout(Duration::from_secs(300))
            .expect("counter loop did not finish");
        assert_eq!(a, "ok");
    }
    let f = std::fs::File::open(&p).unwrap();
    let r = fuse_lockfs::lvb::get(std::os::fd::AsFd::as_fd(&f)).unwrap();
    let total = PROCS as u64 * EACH;
    assert_eq!(u64::from_le_bytes(r.value[..8].try_into().unwrap()), total);
    assert_eq!(r.seq, total);
    assert!(r.valid && r.unlocked);
}

#[test]
fn a_c_program_uses_the_ioctls_through_the_header_alone() {
    let cc = ["cc", "gcc", "clang"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(cc) = cc else {
        lockfs_testkit::skip!("no C compiler for the value-block header test");
    };
    let ctx = LockContext::new();
    let Some(fx) = mount_with(options(&ctx)) else {
        return;
    };
    let p = file(&fx, "f");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("lvb.c");
    std::fs::write(&src, C_PROGRAM).unwrap();
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("../include");
    let exe = dir.path().join("lvb");
    let st = Command::new(cc)
        .args(["-Wall", "-Werror", "-I"])
        .arg(&include)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .status()
        .unwrap();
    assert!(st.success(), "the C program does not compile");
    let out = within(move || Command::new(&exe).arg(&p).output().unwrap());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "C program failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.trim(),
        format!(
            "codes {} {} {} size 48 errno {}\nok",
            fuse_lockfs::LOCKFS_IOC_LVB_GET,
            fuse_lockfs::LOCKFS_IOC_LVB_SET,
            fuse_lockfs::LOCKFS_IOC_LVB_INVALIDATE,
            fuse_lockfs::LVB_ERRNO
        )
    );
}

const C_PROGRAM: &str = r#"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "lockfs.h"

#define CHECK(c) do { if (!(c)) { printf("FAILED line %d: %s (errno %d)\n", __LINE__, #c, errno); return 1; } } while (0)

int main(int argc, char **argv)
{
	struct lockfs_lvb b;
	struct flock wr = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
	struct flock un = { .l_type = F_UNLCK, .l_whence = SEEK_SET };
	int fd;

	printf("codes %lu %lu %lu size %zu errno %d\n", (unsigned long)LOCKFS_IOC_LVB_GET,
	       (unsigned long)LOCKFS_IOC_LVB_SET, (unsigned long)LOCKFS_IOC_LVB_INVALIDATE,
	       sizeof(struct lockfs_lvb), LOCKFS_LVB_ERRNO);
	CHECK(argc == 2);
	fd = open(argv[1], O_RDWR);
	CHECK(fd >= 0);

	/* Unlocked: answered, flagged. */
	memset(&b, 0xff, sizeof b);
	CHECK(ioctl(fd, LOCKFS_IOC_LVB_GET, &b) == 0);
	CHECK(b.seq == 0 && b.flags == LOCKFS_LVB_UNLOCKED && b.value[0] == 0);
	memcpy(b.value, "nope", 4);
	CHECK(ioctl(fd, LOCKFS_IOC_LVB_SET, &b) == -1 && errno == LOCKFS_LVB_ERRNO);
	CHECK(ioctl(fd, LOCKFS_IOC_LVB_INVALIDATE, &b) == -1 && errno == LOCKFS_LVB_ERRNO);

	CHECK(fcntl(fd, F_SETLKW, &wr) == 0);
	memset(&b, 0, sizeof b);
	memcpy(b.value, "generation 7", 12);
	CHECK(ioctl(fd, LOCKFS_IOC_LVB_SET, &b) == 0);
	CHECK(b.seq == 1 && b.flags == 0);
	memset(&b, 0, sizeof b);
	CHECK(ioctl(fd, LOCKFS_IOC_LVB_GET, &b) == 0);
	CHECK(b.seq == 1 && b.flags == 0 && memcmp(b.value, "generation 7", 13) == 0);
	CHECK(ioctl(fd, LOCKFS_IOC_LVB_INVALIDATE, &b) == 0);
	CHECK(b.seq == 1 && b.flags == LOCKFS_LVB_NOTVALID);
	CHECK(ioctl(fd, LOCKFS_IOC_LVB_GET, &b) == 0);
	CHECK(b.flags == LOCKFS_LVB_NOTVALID && memcmp(b.value, "generation 7", 13) == 0);
	/* All 32 bytes are the value. */
	memset(b.value, 'x', LOCKFS_LVB_LEN);
	CHECK(ioctl(fd, LOCKFS_IOC_LVB_SET, &b) == 0);
	CHECK(b.seq == 2 && b.flags == 0);
	CHECK(fcntl(fd, F_SETLK, &un) == 0);

	memset(&b, 0, sizeof b);
	CHECK(ioctl(fd, LOCKFS_IOC_LVB_GET, &b) == 0);
	CHECK(b.seq == 2 && b.flags == LOCKFS_LVB_UNLOCKED && b.value[31] == 'x');
	close(fd);
	printf("ok\n");
	return 0;
}
"#;

/// The block of `p` read with no lock held: `(text, seq, valid)`.
fn peek(p: &Path) -> (String, u64, bool) {
    let f = std::fs::File::open(p).unwrap();
    let r = within_io(move || fuse_lockfs::lvb::get(std::os::fd::AsFd::as_fd(&f)));
    let n = r
        .value
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(r.value.len());
    (
        String::from_utf8_lossy(&r.value[..n]).into_owned(),
        r.seq,
        r.valid,
    )
}

/// Sets the block of `p` under an exclusive flock the test takes and drops.
fn put(p: &Path, v: &str) -> (u64, bool) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap();
    let v = v.as_bytes().to_vec();
    let r = within_io(move || {
        use std::os::fd::{AsFd, AsRawFd};
        // SAFETY: flock on a descriptor we own.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
        fuse_lockfs::lvb::set(f.as_fd(), &v)
    });
    (r.seq, r.valid)
}

fn within_io(
    f: impl FnOnce() -> std::io::Result<fuse_lockfs::lvb::Reading> + Send + 'static,
) -> fuse_lockfs::lvb::Reading {
    within(f).expect("value-block ioctl")
}

fn xattr_set(p: &Path, name: &std::ffi::CStr, v: &[u8]) {
    let c = cpath(p);
    // SAFETY: valid C strings; `v` readable for its length.
    let r = unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
}

fn xattr_get(p: &Path, name: &std::ffi::CStr) -> Option<Vec<u8>> {
    let c = cpath(p);
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings; `buf` writable for its length.
    let n = unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 256) };
    (n >= 0).then(|| {
        buf.truncate(n as usize);
        buf
    })
}

const LVB_ATTR: &std::ffi::CStr = c"trusted.lockfs.lvb";

/// The source `src` mounted with locking; unmounting it is a clean stop.
fn remount(src: &Path) -> Option<(Fixture, LockContext)> {
    let ctx = LockContext::new();
    mount_with_source(src, options(&ctx)).map(|fx| (fx, ctx))
}

/// Unmounts cleanly once every lock the test took is gone (a `RELEASE` comes
/// after the close that caused it; a file still locked at unmount would count
/// as a holder lost).
fn stop(mut fx: Fixture, ctx: &LockContext) {
    wait_unlocked(ctx);
    fx.unmount().unwrap();
}

fn store_path(src: &Path) -> PathBuf {
    src.join(fuse_lockfs::lvb_slots::STATE_DIR)
        .join(fuse_lockfs::lvb_slots::STORE_FILE)
}

#[test]
fn a_damaged_store_leaves_its_files_not_valid_and_loses_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for n in ["a", "b", "c"] {
        std::fs::write(src.join(n), b"data").unwrap();
    }
    let Some((fx, ctx)) = remount(&src) else {
        return;
    };
    assert_eq!(put(&fx.m("a"), "a1"), (1, true));
    assert_eq!(put(&fx.m("a"), "a2"), (2, true));
    assert_eq!(put(&fx.m("b"), "b1"), (1, true));
    stop(fx, &ctx);

    // A clean restart over an intact store: kept, valid.
    let (fx, ctx) = remount(&src).unwrap();
    assert_eq!(peek(&fx.m("a")), ("a2".into(), 2, true));
    stop(fx, &ctx);

    // Both copies of a's slot damaged: a alone reads not-valid (with the
    // value its marker kept); b is untouched; c never had a value.
    let ino_a = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(src.join("a")).unwrap());
    let mut bytes = std::fs::read(store_path(&src)).unwrap();
    let slot = bytes
        .chunks_exact(fuse_lockfs::lvb_slots::SLOT)
        .position(|s| s[..8] == ino_a.to_le_bytes())
        .expect("a's slot");
    let at = slot * fuse_lockfs::lvb_slots::SLOT;
    for b in &mut bytes[at + 16..at + fuse_lockfs::lvb_slots::SLOT] {
        *b ^= 0xa5;
    }
    std::fs::write(store_path(&src), &bytes).unwrap();
    let (fx, ctx) = remount(&src).unwrap();
    let (_, _, valid) = peek(&fx.m("a"));
    assert!(!valid, "a block lost from the store reads not-valid");
    assert_eq!(peek(&fx.m("b")), ("b1".into(), 1, true));
    assert_eq!(peek(&fx.m("c")), (String::new(), 0, true));
    let (seq, valid) = put(&fx.m("a"), "a3");
    assert!(valid && seq >= 1);
    stop(fx, &ctx);

    // Garbage over the whole store: set aside, every file with a block
    // not-valid, the rest initial, and the mount keeps working.
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(store_path(&src), &noise).unwrap();
    let (fx, ctx) = remount(&src).unwrap();
    assert!(!peek(&fx.m("a")).2);
    assert!(!peek(&fx.m("b")).2);
    assert_eq!(peek(&fx.m("c")), (String::new(), 0, true));
    assert!(src.join(".lockfs/lvb.corrupt").exists());
    let (_, valid) = put(&fx.m("b"), "b2");
    assert!(valid);
    stop(fx, &ctx);

    // A store cut short (a partial last slot): no panic; what is left reads.
    let bytes = std::fs::read(store_path(&src)).unwrap();
    std::fs::write(
        store_path(&src),
        &bytes[..fuse_lockfs::lvb_slots::SLOT + 30],
    )
    .unwrap();
    let (fx, ctx) = remount(&src).unwrap();
    assert!(!peek(&fx.m("b")).2, "b's slot was cut off: not-valid");
    assert!(put(&fx.m("b"), "b3").1);
    assert_eq!(peek(&fx.m("b")).0, "b3");
    stop(fx, &ctx);
}

#[test]
fn a_slot_is_never_read_for_a_file_that_reuses_its_inode_number() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("old"), b"data").unwrap();
    let Some((fx, ctx)) = remount(&src) else {
        return;
    };
    assert_eq!(put(&fx.m("old"), "old value"), (1, true));
    assert_eq!(put(&fx.m("old"), "old value 2"), (2, true));
    stop(fx, &ctx);
    let ino = std::fs::metadata(src.join("old")).unwrap().ino();
    std::fs::remove_file(src.join("old")).unwrap();
    // Most file systems (ext4 among them) hand a freed inode number to the
    // next file created.
    let mut reused = None;
    for i in 0..64 {
        let p = src.join(format!("new{i}"));
        std::fs::write(&p, b"data").unwrap();
        if std::fs::metadata(&p).unwrap().ino() == ino {
            reused = Some(p);
            break;
        }
    }
    let new = match reused {
        Some(p) => p,
        None => {
            // The file system never reuses numbers here: make a file that
            // looks to the daemon exactly like a reused inode (the slot's
            // inode number, no marker) by stripping a marker.
            eprintln!("*** no inode number reused on this file system: simulating reuse ***");
            let p = src.join("new0");
            let (fx, ctx) = remount(&src).unwrap();
            assert_eq!(put(&fx.m("new0"), "x"), (1, true));
            stop(fx, &ctx);
            let c = cpath(&p);
            // SAFETY: valid C strings.
            let r = unsafe { libc::removexattr(c.as_ptr(), LVB_ATTR.as_ptr()) };
            assert_eq!(r, 0);
            p
        }
    };
    let name = new.file_name().unwrap().to_str().unwrap().to_string();
    let (fx, ctx) = remount(&src).unwrap();
    assert_eq!(
        peek(&fx.m(&name)),
        (String::new(), 0, true),
        "a new file starts from the initial block, not the old file's"
    );
    assert_eq!(put(&fx.m(&name), "new value"), (1, true));
    stop(fx, &ctx);
    let (fx, ctx) = remount(&src).unwrap();
    assert_eq!(peek(&fx.m(&name)), ("new value".into(), 1, true));
    stop(fx, &ctx);
    // The new file took the old file's slot over rather than adding one.
    let ino_new = std::fs::metadata(&new).unwrap().ino();
    let store = std::fs::read(store_path(&src)).unwrap();
    let slots = fuse_lockfs::lvb_slots::read_all(&store).unwrap();
    assert_eq!(slots.iter().filter(|s| s.0 == ino_new).count(), 1);
}

#[test]
fn blocks_kept_on_backing_files_move_into_the_store() {
    use fuse_lockfs::lvb_store::{Record, MARKER_LEN};
    use lock_table::LvbValue;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for n in ["kept", "stale", "fresh"] {
        std::fs::write(src.join(n), b"data").unwrap();
    }
    // A first run records the export's epoch, cleanly.
    let Some((fx, ctx)) = remount(&src) else {
        return;
    };
    stop(fx, &ctx);
    let e = xattr_get(&src, c"trusted.lockfs.lvb-epoch").expect("the export's epoch");
    let epoch = u64::from_le_bytes(e[8..16].try_into().unwrap());
    // Blocks as an earlier version stored them: whole records on the files,
    // one of this epoch, one of an epoch a crash ended.
    let block = |v: &[u8], seq: u64, epoch: u64| {
        let mut value = LvbValue::default().written(v).unwrap();
        value.seq = seq;
        Record { value, epoch }.encode()
    };
    xattr_set(&src.join("kept"), LVB_ATTR, &block(b"kept value", 7, epoch));
    xattr_set(
        &src.join("stale"),
        LVB_ATTR,
        &block(b"stale value", 3, epoch - 1),
    );

    let (fx, ctx) = remount(&src).unwrap();
    assert_eq!(peek(&fx.m("kept")), ("kept value".into(), 7, true));
    assert_eq!(peek(&fx.m("stale")), ("stale value".into(), 3, false));
    assert_eq!(peek(&fx.m("fresh")), (String::new(), 0, true));
    // Read once: the files now carry markers, and their blocks are in the store.
    for n in ["kept", "stale"] {
        let a = xattr_get(&src.join(n), LVB_ATTR).unwrap();
        assert_eq!(a.len(), MARKER_LEN, "{n} carries a marker");
    }
    assert_eq!(xattr_get(&src.join("fresh"), LVB_ATTR), None);
    assert_eq!(put(&fx.m("kept"), "next"), (8, true));
    stop(fx, &ctx);
    let store = std::fs::read(store_path(&src)).unwrap();
    let slots = fuse_lockfs::lvb_slots::read_all(&store).unwrap();
    assert_eq!(slots.len(), 2);
    let (fx, ctx) = remount(&src).unwrap();
    assert_eq!(peek(&fx.m("kept")), ("next".into(), 8, true));
    assert_eq!(peek(&fx.m("stale")), ("stale value".into(), 3, false));
    stop(fx, &ctx);
}

/// A fresh ext4 with a journal, mounted for one test and unmounted when dropped. With a
/// journal, ext4 gives a freed inode number to the next file at once; without one (as on
/// some machines' root file systems) it holds numbers freed in the last minute or so back
/// (`recently_deleted` in `fs/ext4/ialloc.c`), so a test of inode reuse cannot count on
/// the file system that holds its temporary directory.
struct Ext4 {
    dir: PathBuf,
}

impl Ext4 {
    fn new(at: &Path) -> Option<Self> {
        let (img, dir) = (at.join("fs.img"), at.join("fs"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::File::create(&img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
        if !ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img)) {
            lockfs_testkit::skipping!("mkfs.ext4 is missing or failed");
            return None;
        }
        if !ok(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&dir))
        {
            lockfs_testkit::skipping!("cannot mount an ext4 image (needs root and loop devices)");
            return None;
        }
        Some(Ext4 { dir })
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        // The loop device goes with the last unmount (`mount -o loop` sets autoclear).
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

#[test]
fn a_file_that_reuses_a_deleted_files_inode_during_a_run_starts_afresh() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = Ext4::new(tmp.path()) else {
        return;
    };
    let src = fs.dir.join("src");
    std::fs::create_dir(&src).unwrap();
    let Some((fx, ctx)) = remount(&src) else {
        return;
    };
    std::fs::write(fx.m("old"), b"data").unwrap();
    assert_eq!(put(&fx.m("old"), "old 1"), (1, true));
    assert_eq!(put(&fx.m("old"), "old 2"), (2, true));
    wait_unlocked(&ctx);
    let ino = std::fs::metadata(src.join("old")).unwrap().ino();
    std::fs::remove_file(fx.m("old")).unwrap();
    // The number comes back once the kernel forgot the inode and the daemon
    // let go of the backing file.
    let t0 = Instant::now();
    let mut n = 0;
    let name = loop {
        let name = format!("new{n}");
        std::fs::write(fx.m(&name), b"data").unwrap();
        if std::fs::metadata(src.join(&name)).unwrap().ino() == ino {
            break name;
        }
        std::fs::remove_file(fx.m(&name)).unwrap();
        n += 1;
        if t0.elapsed() > Duration::from_secs(5) {
            lockfs_testkit::skipping!("the source's file system reused no inode number within 5 s");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        peek(&fx.m(&name)),
        (String::new(), 0, true),
        "the new file does not inherit the deleted file's block"
    );
    assert_eq!(put(&fx.m(&name), "new 1"), (1, true));
    stop(fx, &ctx);
    // Its block is its own across a restart too.
    let (fx, ctx) = remount(&src).unwrap();
    assert_eq!(peek(&fx.m(&name)), ("new 1".into(), 1, true));
    stop(fx, &ctx);
}
