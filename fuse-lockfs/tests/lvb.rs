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
    // The block is on the backing file, with its sequence number.
    let out = Command::new("getfattr")
        .args(["--only-values", "-n", "trusted.lockfs.lvb"])
        .arg(fx.s("f"))
        .output();
    if let Ok(out) = out {
        if out.status.success() {
            assert_eq!(out.stdout.len(), fuse_lockfs::lvb_store::RECORD_LEN);
            assert_eq!(out.stdout[8], 3, "stored sequence number");
        }
    }
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
        eprintln!("SKIPPING C value-block test: no C compiler");
        return;
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
