//! Locks, mandatory locking and share reservations on a real mount, exercised by
//! separate processes (`lockfs-lockctl`), each driven line by line.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::ctl::Ctl;
use common::*;
use fuse_lockfs::{FlockMode, LockContext, Mandatory, MountOptions};

fn lock_options(ctx: &LockContext) -> MountOptions {
    MountOptions {
        locks: Some(ctx.clone()),
        mandatory: Mandatory::File,
        ..MountOptions::default()
    }
}

/// Waits until the table has `n` queued requests.
fn wait_for_waiters(ctx: &LockContext, n: usize) {
    let t0 = Instant::now();
    while ctx.table.read(|t| t.waiter_count()) != n {
        assert!(t0.elapsed() < OP_TIMEOUT, "never saw {n} waiters");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn file(fx: &Fixture, name: &str, mode: u32) -> std::path::PathBuf {
    std::fs::write(fx.s(name), vec![b'x'; 4096]).unwrap();
    std::fs::set_permissions(fx.s(name), std::fs::Permissions::from_mode(mode)).unwrap();
    fx.m(name)
}

#[test]
fn posix_locks_conflict_between_processes_and_any_close_releases_them() {
    let ctx = LockContext::new();
    let Some(fx) = mount_with(lock_options(&ctx)) else {
        return;
    };
    let p = file(&fx, "f", 0o644);
    let (mut a, mut b) = (Ctl::start(), Ctl::start());
    let fa = a.open(&p, "rw");
    let fb = b.open(&p, "rw");
    a.ok(&format!("lock {fa} setlk w 0 10"));
    b.fails(&format!("lock {fb} setlk w 5 1"), libc::EAGAIN);
    b.fails(&format!("lock {fb} setlk r 0 1"), libc::EAGAIN);
    b.ok(&format!("lock {fb} setlk w 10 5"));
    // F_GETLK names the holder and its range.
    let g = b.ok(&format!("getlk {fb} posix w 0 0"));
    assert_eq!(g, format!("ok w {} 0 10", a.pid()), "getlk");
    // A read lock beside a read lock is fine; the owner's own locks never conflict.
    a.ok(&format!("lock {fa} setlk r 0 10"));
    b.ok(&format!("lock {fb} setlk u 10 5"));
    b.ok(&format!("lock {fb} setlk r 0 5"));
    b.ok(&format!("lock {fb} setlk u 0 0"));
    a.ok(&format!("lock {fa} setlk w 0 10"));
    // Closing *another* descriptor of the file releases the process's locks.
    let fa2 = a.open(&p, "r");
    a.ok(&format!("close {fa2}"));
    b.ok(&format!("lock {fb} setlk w 0 10"));
    drop((a, b));
    // The kernel flushes and releases the files of a killed process after it is
    // reaped, asynchronously. (b died holding a write lock: the file keeps a
    // not-valid value block, but no lock.)
    let t0 = Instant::now();
    while !ctx.table.read(|t| t.snapshot()).is_empty() {
        assert!(t0.elapsed() < OP_TIMEOUT, "exit released all");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn during_grace_blocking_locks_wait_for_its_end_and_others_get_enolck() {
    let ctx = LockContext::new();
    let Some(fx) = mount_with(lock_options(&ctx)) else {
        return;
    };
    let p = file(&fx, "f", 0o644);
    // The files are opened for writing before grace begins: during grace such
    // an open fails, since a client's share reclaim could meet it.
    let (mut a, mut b, mut c) = (Ctl::start(), Ctl::start(), Ctl::start());
    let fa = a.open(&p, "rw");
    let fb = b.open(&p, "rw");
    let fc = c.open(&p, "rw");
    ctx.table.with(|t| t.begin_grace(ctx.scope));
    // A remote client reclaims a lock on byte 50 during the grace period.
    use std::os::unix::fs::MetadataExt;
    let st = std::fs::metadata(fx.s("f")).unwrap();
    let file_id = lock_table::FileId::new(st.dev(), st.ino());
    let remote = ctx.table.with(|t| {
        let h = t.registry_mut().host("client");
        t.registry_mut().nlm_owner(h, 9, b"owner")
    });
    let reclaim = lock_table::LockRequest {
        file: file_id,
        scope: ctx.scope,
        owner: remote,
        pid: 9,
        kind: lock_table::LockKind::Exclusive,
        range: lock_table::Range::new(50, 50).unwrap(),
        wait: lock_table::Wait::No,
        reclaim: true,
    };
    assert_eq!(
        ctx.table.with(|t| t.lock(&reclaim)),
        lock_table::LockOutcome::Granted
    );
    a.fails(&format!("lock {fa} setlk w 0 10"), libc::ENOLCK);
    // F_GETLK tells what is held now (a remote holder's pid shows as 0: the
    // kernel maps it through the local pid namespace).
    assert_eq!(c.ok(&format!("getlk {fc} posix w 0 0")), "ok w 0 50 1");
    // flock in its own namespace has nothing a client could reclaim.
    b.ok(&format!("flock {fb} ex nb"));
    b.ok(&format!("flock {fb} un"));
    // Blocking requests wait the grace period out; a signal still ends the wait.
    a.send(&format!("lock {fa} setlkw w 0 10"));
    c.send(&format!("lock {fc} setlkw r 100 1"));
    wait_for_waiters(&ctx, 2);
    assert_eq!(a.recv(Duration::from_millis(200)), None, "a waits");
    // SAFETY: signalling our own helper process.
    unsafe { libc::kill(c.pid() as i32, libc::SIGUSR1) };
    let answer = c.recv(OP_TIMEOUT).expect("the signalled waiter answers");
    assert!(
        answer.starts_with(&format!("err {} ", libc::EINTR)),
        "{answer}"
    );
    wait_for_waiters(&ctx, 1);
    ctx.table.with(|t| t.end_grace(ctx.scope));
    assert_eq!(a.recv(OP_TIMEOUT).as_deref(), Some("ok"), "a is granted");
    // Normal service after grace: the reclaimed lock still conflicts.
    c.fails(&format!("lock {fc} setlk w 5 1"), libc::EAGAIN);
    c.fails(&format!("lock {fc} setlk w 50 1"), libc::EAGAIN);
    c.ok(&format!("lock {fc} setlk w 200 1"));
}

#[test]
fn fork_does_not_inherit_posix_locks_but_shares_ofd_locks() {
    let ctx = LockContext::new();
    let Some(fx) = mount_with(lock_options(&ctx)) else {
        return;
    };
    let p = file(&fx, "f", 0o644);
    let mut a = Ctl::start();
    let fa = a.open(&p, "rw");
    a.ok(&format!("lock {fa} setlk w 0 10"));
    // The child is another POSIX owner: it meets the parent's lock.
    assert_eq!(
        a.ok(&format!("forklock {fa} setlk w 0 1")),
        format!("ok {}", libc::EAGAIN)
    );
    // An OFD lock belongs to the open file, which the child shares.
    let fo = a.open(&p, "rw");
    a.ok(&format!("lock {fo} ofd w 100 10"));
    assert_eq!(a.ok(&format!("forklock {fo} ofd w 100 1")), "ok 0");
    // The child's exit (closing its copies) left both locks alone.
    let mut b = Ctl::start();
    let fb = b.open(&p, "rw");
    b.fails(&format!("lock {fb} setlk w 0 1"), libc::EAGAIN);
    b.fails(&format!("lock {fb} setlk w 100 1"), libc::EAGAIN);
}

#[test]
fn ofd_locks_live_until_the_last_close_of_their_open_file() {
    let ctx = LockContext::new();
    let Some(fx) = mount_with(lock_options(&ctx)) else {
        return;
    };
    let p = file(&fx, "f", 0o644);
    let (mut a, mut b) = (Ctl::start(), Ctl::start());
    // A closes a file first, so the mount knows its POSIX owner.
    let tmp = a.open(&p, "r");
    a.ok(&format!("close {tmp}"));
    let fa = a.open(&p, "rw");
    a.ok(&format!("lock {fa} ofd w 0 0"));
    let fb = b.open(&p, "rw");
    b.fails(&format!("lock {fb} setlk r 0 1"), libc::EAGAIN);
    // The holder is an OFD lock: F_OFD_GETLK reports pid -1.
    let g = b.ok(&format!("getlk {fb} ofd w 0 1"));
    assert!(g.starts_with("ok w -1 "), "{g}");
    // Closing another descriptor of the same process leaves the OFD lock.
    let fa2 = a.open(&p, "r");
    a.ok(&format!("close {fa2}"));
    b.fails(&format!("lock {fb} setlk r 0 1"), libc::EAGAIN);
    let rows = fuse_lockfs::listing::list(&ctx);
    assert!(
        rows.iter().any(|r| r.kind == "OFD" && r.pid == a.pid()),
        "{rows:?}"
    );
    // The last close releases the OFD lock.
    a.ok(&format!("close {fa}"));
    b.ok(&format!("lock {fb} setlk w 0 0"));
}

#[test]
fn flock_is_its_own_namespace_unless_shared() {
    let ctx = LockContext::new();
    let Some(fx) = mount_with(lock_options(&ctx)) else {
        return;
    };
    let p = file(&fx, "f", 0o644);
    let (mut a, mut b) = (Ctl::start(), Ctl::start());
    let fa = a.open(&p, "rw");
    let fb = b.open(&p, "rw");
    a.ok(&format!("flock {fa} ex nb"));
    b.fails(&format!("flock {fb} sh nb"), libc::EWOULDBLOCK);
    // POSIX locks do not meet flock locks, as on native Linux.
    b.ok(&format!("lock {fb} setlk w 0 0"));
    b.ok(&format!("lock {fb} setlk u 0 0"));
    // Last close of the open file drops the flock lock.
    a.ok(&format!("close {fa}"));
    b.ok(&format!("flock {fb} ex nb"));
    drop((a, b, fx));

    let ctx = LockContext::new();
    let opts = MountOptions {
        flock: FlockMode::Shared,
        ..lock_options(&ctx)
    };
    let Some(fx) = mount_with(opts) else { return };
    let p = file(&fx, "f", 0o644);
    let (mut a, mut b) = (Ctl::start(), Ctl::start());
    let fa = a.open(&p, "rw");
    let fb = b.open(&p, "rw");
    a.ok(&format!("flock {fa} sh nb"));
    // flock=shared: a whole-file lock on the real file, which POSIX locks meet.
    b.fails(&format!("lock {fb} setlk w 0 1"), libc::EAGAIN);
    b.ok(&format!("lock {fb} setlk r 0 1"));
}

#[test]
fn two_flock_holders_upgrading_at_once_do_not_deadlock() {
    // Linux converts a flock lock by dropping the old one first: of two shared
    // holders that both upgrade, the first waits for the second, whose own
    // upgrade drops its shared lock and so lets the first in.
    let ctx = LockContext::new();
    let Some(fx) = mount_with(lock_options(&ctx)) else {
        return;
    };
    let p = file(&fx, "f", 0o644);
    let (mut a, mut b) = (Ctl::start(), Ctl::start());
    let fa = a.open(&p, "rw");
    let fb = b.open(&p, "rw");
    a.ok(&format!("flock {fa} sh nb"));
    b.ok(&format!("flock {fb} sh nb"));
    a.send(&format!("flock {fa} ex"));
    wait_for_waiters(&ctx, 1);
    assert!(
        a.recv(Duration::from_millis(200)).is_none(),
        "a waits for b"
    );
    b.send(&format!("flock {fb} ex"));
    let answer = a.recv(OP_TIMEOUT).expect("a's upgrade is granted");
    assert!(answer.starts_with("ok"), "{answer}");
    wait_for_waiters(&ctx, 1);
    assert!(
        b.recv(Duration::from_millis(200)).is_none(),
        "b waits for a"
    );
    a.ok(&format!("flock {fa} un"));
    let answer = b.recv(OP_TIMEOUT).expect("b's upgrade is granted");
    assert!(answer.starts_with("ok"), "{answer}");
    // A refused non-blocking conversion leaves no lock behind, as on Linux.
    b.ok(&format!("flock {fb} un"));
    a.ok(&format!("flock {fa} sh nb"));
    b.ok(&format!("flock {fb} sh nb"));
    b.fails(&format!("flock {fb} ex nb"), libc::EWOULDBLOCK);
    a.ok(&format!("flock {fa} ex nb"));
}

#[test]
fn a_signal_interrupts_a_waiter_with_eintr_and_sigkill_reaps_it() {
    let ctx = LockContext::new();
    let Some(fx) = mount_with(lock_options(&ctx)) else {
        return;
    };
    let p = file(&fx, "f", 0o644);
    let (mut a, mut b) = (Ctl::start(), Ctl::start());
    let fa = a.open(&p, "rw");
    let fb = b.open(&p, "rw");
    a.ok(&format!("lock {fa} setlk w 0 0"));
    b.send(&format!("lock {fb} setlkw w 0 1"));
    wait_for_waiters(&ctx, 1);
    assert!(
        b.recv(Duration::from_millis(200)).is_none(),
        "still blocked"
    );
    let t0 = Instant::now();
    // SAFETY: signals our own child.
    unsafe { libc::kill(b.pid() as i32, libc::SIGUSR1) };
    let answer = b.recv(OP_TIMEOUT).expect("interrupted waiter answers");
    let took = t0.elapsed();
    println!("F_SETLKW interrupted after {took:?}");
    assert!(
        answer.starts_with(&format!("err {} ", libc::EINTR)),
        "{answer}"
    );
    assert!(took < Duration::from_secs(1), "EINTR took {took:?}");
    assert_eq!(ctx.table.read(|t| t.waiter_count()), 0);

    // flock without LOCK_NB is interruptible too.
    a.ok(&format!("flock {fa} ex"));
    b.send(&format!("flock {fb} ex"));
    wait_for_waiters(&ctx, 1);
    // SAFETY: signals our own child.
    unsafe { libc::kill(b.pid() as i32, libc::SIGUSR1) };
    let answer = b.recv(OP_TIMEOUT).expect("interrupted flock answers");
    assert!(
        answer.starts_with(&format!("err {} ", libc::EINTR)),
        "{answer}"
    );

    // SIGKILL: the process goes at once, and so does its waiter.
    let mut c = Ctl::start();
    let fc = c.open(&p, "rw");
    c.send(&format!("lock {fc} setlkw w 0 1"));
    wait_for_waiters(&ctx, 1);
    let t0 = Instant::now();
    c.child.kill().unwrap();
    let (tx, rx) = mpsc::channel();
    let mut child = std::mem::replace(
        &mut c.child,
        Command::new("true").spawn().expect("placeholder"),
    );
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("killed waiter is reaped")
        .unwrap();
    println!("SIGKILLed waiter reaped after {:?}", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(1));
    wait_for_waiters(&ctx, 0);
    let rows = fuse_lockfs::listing::list(&ctx);
    assert!(rows.iter().all(|r| r.state == "held"), "{rows:?}");
}

#[test]
fn a_deadlock_between_two_processes_gets_edeadlk() {
    let ctx = LockContext::new();
    let Some(fx) = mount_with(lock_options(&ctx)) else {
        return;
    };
    let p = file(&fx, "f", 0o644);
    let (mut a, mut b) = (Ctl::start(), Ctl::start());
    let fa = a.open(&p, "rw");
    let fb = b.open(&p, "rw");
    a.ok(&format!("lock {fa} setlk w 0 1"));
    b.ok(&format!("lock {fb} setlk w 1 1"));
    a.send(&format!("lock {fa} setlkw w 1 1"));
    wait_for_waiters(&ctx, 1);
    b.fails(&format!("lock {fb} setlkw w 0 1"), libc::EDEADLK);
    // B gives up its lock: A's wait ends with the grant.
    b.ok(&format!("lock {fb} setlk u 0 0"));
    assert_eq!(a.recv(OP_TIMEOUT).as_deref(), Some("ok"));
}

#[test]
fn mandatory_files_block_others_io_and_fail_nonblocking_io_with_eagain() {
    let ctx = LockContext::new();
    let Some(fx) = mount_with(lock_options(&ctx)) else {
        return;
    };
    let m = file(&fx, "mand", 0o2644);
    let plain = file(&fx, "plain", 0o644);
    let (mut a, mut b) = (Ctl::start(), Ctl::start());
    let fa = a.open(&m, "rw");
    a.ok(&format!("lock {fa} setlk w 0 100"));
    // The holder's own I/O never blocks.
    assert_eq!(a.ok(&format!("write {fa} 0 mine")), "ok 4");
    assert_eq!(a.ok(&format!("read {fa} 0 10")), "ok 10");
    let nb = b.open(&m, "rw nb");
    b.fails(&format!("read {nb} 0 10"), libc::EAGAIN);
    b.fails(&format!("write {nb} 50 x"), libc::EAGAIN);
    b.fails(&format!("truncate {nb} 10"), libc::EAGAIN);
    // Outside the locked range I/O goes through.
    assert_eq!(b.ok(&format!("read {nb} 200 10")), "ok 10");
    // A blocking read waits until the lock goes.
    let fb = b.open(&m, "r");
    b.send(&format!("read {fb} 0 10"));
    wait_for_waiters(&ctx, 1);
    let rows = fuse_lockfs::listing::list(&ctx);
    assert!(rows.iter().any(|r| r.state == "waiting-io"), "{rows:?}");
    assert!(b.recv(Duration::from_millis(200)).is_none(), "read waits");
    a.ok(&format!("lock {fa} setlk u 0 0"));
    assert_eq!(b.recv(OP_TIMEOUT).as_deref(), Some("ok 10"));
    // A read lock blocks writes and truncates but not reads; a waiting truncate
    // is interruptible.
    a.ok(&format!("lock {fa} setlk r 0 0"));
    assert_eq!(b.ok(&format!("read {nb} 0 10")), "ok 10");
    let fw = b.open(&m, "rw");
    b.send(&format!("truncate {fw} 0"));
    wait_for_waiters(&ctx, 1);
    // SAFETY: signals our own child.
    unsafe { libc::kill(b.pid() as i32, libc::SIGUSR1) };
    let t = b.recv(OP_TIMEOUT).unwrap();
    assert!(t.starts_with(&format!("err {} ", libc::EINTR)), "{t}");
    b.send(&format!("write {fw} 0 later"));
    wait_for_waiters(&ctx, 1);
    a.ok(&format!("close {fa}"));
    assert_eq!(b.recv(OP_TIMEOUT).as_deref(), Some("ok 5"));
    assert_eq!(&std::fs::read(fx.s("mand")).unwrap()[..5], b"later");

    // A plain file keeps advisory locks only and stays on passthrough.
    let pa = a.open(&plain, "rw");
    a.ok(&format!("lock {pa} setlk w 0 0"));
    let pb = b.open(&plain, "rw nb");
    assert_eq!(b.ok(&format!("write {pb} 0 free")), "ok 4");
    let s = fx.handle().stats();
    if s.passthrough {
        // nb, fb and fw of the mandatory file; none of the plain one.
        assert_eq!(s.direct_io_files, 3, "only the mandatory opens: {s:?}");
    }
}

#[test]
fn shared_writable_mmap_of_a_mandatory_file_is_refused() {
    let ctx = LockContext::new();
    let Some(fx) = mount_with(lock_options(&ctx)) else {
        return;
    };
    let m = file(&fx, "mand", 0o2644);
    let plain = file(&fx, "plain", 0o644);
    let mut a = Ctl::start();
    let fm = a.open(&m, "rw");
    a.fails(&format!("mmap {fm}"), libc::ENODEV);
    let fp = a.open(&plain, "rw");
    if fx.handle().stats().passthrough {
        a.ok(&format!("mmap {fp}"));
    }
}

#[test]
fn a_file_made_mandatory_while_open_refuses_new_opens_until_closed() {
    let ctx = LockContext::new();
    let Some(fx) = mount_with(lock_options(&ctx)) else {
        return;
    };
    if !fx.handle().stats().passthrough {
        eprintln!("passthrough unavailable: nothing to test");
        return;
    }
    let p = file(&fx, "f", 0o644);
    let mut a = Ctl::start();
    let fa = a.open(&p, "rw");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o2644)).unwrap();
    let mut b = Ctl::start();
    b.fails(&format!("open {} r", p.display()), libc::EBUSY);
    a.ok(&format!("close {fa}"));
    wait_open_files(&fx, 0);
    let fb = b.open(&p, "r");
    assert_eq!(fx.handle().stats().direct_io_files, 1);
    a.ok(&format!("open {} rw", p.display()));
    b.ok(&format!("close {fb}"));
}

#[test]
fn share_reservations_conflict_in_both_directions() {
    let ctx = LockContext::new();
    let Some(fx) = mount_with(lock_options(&ctx)) else {
        return;
    };
    let p = file(&fx, "f", 0o644);
    let (mut a, mut b) = (Ctl::start(), Ctl::start());
    // A holds read access denying writers: later writers fail, readers pass.
    let fa = a.open(&p, "r");
    a.ok(&format!("share {fa} 1 2"));
    b.fails(&format!("open {} w", p.display()), libc::EBUSY);
    b.fails(&format!("open {} rw", p.display()), libc::EBUSY);
    let fb = b.open(&p, "r");
    let rows = fuse_lockfs::listing::list(&ctx);
    assert!(
        rows.iter()
            .any(|r| r.kind == "SHARE" && r.pid == a.pid() && r.deny.as_deref() == Some("W")),
        "{rows:?}"
    );
    a.ok(&format!("close {fa}"));
    let fw = b.open(&p, "w");
    // Now B writes: a deny-write request fails and changes nothing.
    let fa = a.open(&p, "r");
    a.fails(&format!("share {fa} 1 2"), libc::EBUSY);
    // Refused without change: B can still open for writing.
    let fw2 = b.open(&p, "w");
    b.ok(&format!("close {fw2}"));
    // Deny-read meets B's read open; once that is closed it is granted.
    a.fails(&format!("share {fa} 1 1"), libc::EBUSY);
    b.ok(&format!("close {fb}"));
    a.ok(&format!("share {fa} 1 1"));
    b.fails(&format!("open {} r", p.display()), libc::EBUSY);
    b.ok(&format!("close {fw}"));

    // The open-time path: a share-open request through the xattr, consumed by
    // the requesting process's next open (python stands in for any program).
    a.ok(&format!("close {fa}"));
    let script = r#"
import os, sys, time
p = sys.argv[1]
os.getxattr(p, "user.lockfs.share-open.r.w")
try:
    fd = os.open(p, os.O_RDONLY)
except OSError as e:
    print("errno", e.errno, flush=True)
    sys.exit(0)
print("held", flush=True)
sys.stdin.read()
"#;
    let share_open = || {
        let mut child = Command::new("timeout")
            .args(["-k", "5", "30", "python3", "-c", script])
            .arg(&p)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        (child, line)
    };
    // While C has the file open for writing, the deny-write open fails.
    let mut c = Ctl::start();
    let c_writes = c.open(&p, "w");
    let (mut child, line) = share_open();
    assert_eq!(line.trim(), format!("errno {}", libc::EBUSY));
    child.wait().unwrap();
    c.ok(&format!("close {c_writes}"));
    // Without a writer it succeeds, and then writers are refused.
    let (mut child, line) = share_open();
    assert_eq!(line.trim(), "held");
    c.fails(&format!("open {} w", p.display()), libc::EBUSY);
    c.open(&p, "r");
    drop(child.stdin.take());
    child.wait().unwrap();
    c.open(&p, "w");
}

#[test]
fn waiters_never_block_the_request_loops_and_end_waits_answers_them() {
    let ctx = LockContext::new();
    let opts = MountOptions {
        n_threads: 2,
        ..lock_options(&ctx)
    };
    let Some(mut fx) = mount_with(opts) else {
        return;
    };
    let p = file(&fx, "f", 0o644);
    let mut a = Ctl::start();
    let fa = a.open(&p, "rw");
    a.ok(&format!("lock {fa} setlk w 0 0"));
    // More blocked waiters than request loops...
    let mut waiters: Vec<Ctl> = (0..5).map(|_| Ctl::start()).collect();
    for w in &mut waiters {
        let fd = w.open(&p, "rw");
        w.send(&format!("lock {fd} setlkw w 0 1"));
    }
    wait_for_waiters(&ctx, 5);
    // ...and the mount still answers everything else at once.
    let m = fx.mnt.clone();
    let t0 = Instant::now();
    within(move || {
        for i in 0..20 {
            std::fs::write(m.join(format!("g{i}")), b"x").unwrap();
            std::fs::read_dir(&m).unwrap().count();
        }
    });
    assert!(t0.elapsed() < Duration::from_secs(5));
    let mut b = Ctl::start();
    let fb = b.open(&p, "rw");
    b.fails(&format!("lock {fb} setlk r 0 1"), libc::EAGAIN);
    drop(b);
    // The end of the mount answers the parked waits, so their processes go on
    // and close their files; then the unmount succeeds.
    assert_eq!(fx.handle().end_waits(), 5);
    for w in &waiters {
        let a = w.recv(OP_TIMEOUT).expect("waiter answered");
        assert!(a.starts_with(&format!("err {} ", libc::ENOLCK)), "{a}");
    }
    assert_eq!(ctx.table.read(|t| t.waiter_count()), 0);
    drop(waiters);
    drop(a);
    fx.unmount().expect("unmount");
}

#[test]
fn an_ofd_lock_of_a_process_never_seen_closing_still_lives_until_last_close() {
    let ctx = LockContext::new();
    let Some(fx) = mount_with(lock_options(&ctx)) else {
        return;
    };
    let p = file(&fx, "f", 0o644);
    let (mut a, mut b) = (Ctl::start(), Ctl::start());
    let fa = a.open(&p, "rw");
    a.ok(&format!("lock {fa} ofd w 0 10"));
    let fb = b.open(&p, "rw");
    // F_GETLK cannot carry -1 through FUSE: an OFD holder shows as pid 0 or, while
    // the mount cannot tell it from a POSIX lock, as its process.
    let g = b.ok(&format!("getlk {fb} posix w 0 1"));
    assert!(
        g == "ok w 0 0 10" || g == format!("ok w {} 0 10", a.pid()),
        "{g}"
    );
    let fa2 = a.open(&p, "r");
    a.ok(&format!("close {fa2}"));
    b.fails(&format!("lock {fb} setlk w 0 1"), libc::EAGAIN);
    a.ok(&format!("close {fa}"));
    b.ok(&format!("lock {fb} setlk w 0 1"));
}

/// OFD and flock locks go when the daemon handles the kernel's RELEASE, which
/// close(2) does not wait for. A lock request sent after that close must still be
/// decided after the RELEASE, even when another request thread reads it while the
/// RELEASE is being handled (or was read but not yet begun).
#[test]
fn a_lock_after_the_last_close_finds_the_lock_gone() {
    let ctx = LockContext::new();
    let opts = MountOptions {
        n_threads: 4,
        ..lock_options(&ctx)
    };
    let Some(mut fx) = mount_with(opts) else {
        return;
    };
    let p = file(&fx, "f", 0o644);
    let other = file(&fx, "busy", 0o644);
    // Opens and closes of another file keep the other request threads reading, so
    // that a RELEASE and the lock request after it often go to different threads.
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = (0..3)
        .map(|_| {
            let (stop, other) = (stop.clone(), other.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    drop(std::fs::File::open(&other));
                }
            })
        })
        .collect();
    let (mut a, mut b) = (Ctl::start(), Ctl::start());
    let fb = b.open(&p, "rw");
    let mut late = 0;
    for round in 0..1000 {
        let fa = a.open(&p, "rw");
        let (take, attempt, undo, busy_errno) = if round % 2 == 0 {
            (
                format!("lock {fa} ofd w 0 0"),
                format!("lock {fb} ofd w 0 0"),
                format!("lock {fb} ofd u 0 0"),
                libc::EAGAIN,
            )
        } else {
            (
                format!("flock {fa} ex nb"),
                format!("flock {fb} ex nb"),
                format!("flock {fb} un"),
                libc::EWOULDBLOCK,
            )
        };
        a.ok(&take);
        a.ok(&format!("close {fa}"));
        let t0 = Instant::now();
        loop {
            let r = b.cmd(&attempt);
            if r.starts_with("ok") {
                break;
            }
            assert!(r.starts_with(&format!("err {busy_errno} ")), "{r}");
            assert!(t0.elapsed() < OP_TIMEOUT, "the lock never went");
            late += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        b.ok(&undo);
    }
    stop.store(true, Ordering::Relaxed);
    for t in busy {
        t.join().unwrap();
    }
    assert_eq!(
        late, 0,
        "lock requests found a closed file's lock still held"
    );
    drop((a, b));
    fx.unmount().expect("unmount");
}

#[test]
fn ofd_holders_write_their_mandatory_file_and_others_cannot_allocate() {
    let ctx = LockContext::new();
    let Some(fx) = mount_with(lock_options(&ctx)) else {
        return;
    };
    let m = file(&fx, "mand", 0o2644);
    let (mut a, mut b) = (Ctl::start(), Ctl::start());
    let fa = a.open(&m, "rw");
    a.ok(&format!("lock {fa} ofd w 0 0"));
    // The open file's own lock never blocks I/O through it, from the holder or a
    // forked child sharing it.
    assert_eq!(a.ok(&format!("write {fa} 0 own")), "ok 3");
    a.ok(&format!("fallocate {fa} 0 8192"));
    let fb = b.open(&m, "rw nb");
    b.fails(&format!("write {fb} 0 x"), libc::EAGAIN);
    b.fails(&format!("fallocate {fb} 0 8192"), libc::EAGAIN);
    b.fails(&format!("truncate {fb} 1"), libc::EAGAIN);
    a.ok(&format!("close {fa}"));
    b.ok(&format!("fallocate {fb} 0 8192"));
    assert_eq!(b.ok(&format!("write {fb} 0 x")), "ok 1");
}

#[test]
fn an_aborted_connection_leaves_no_locks_in_the_shared_table() {
    use std::os::unix::fs::MetadataExt;
    let ctx = LockContext::new();
    let Some(fx) = mount_with(lock_options(&ctx)) else {
        return;
    };
    let p = file(&fx, "f", 0o644);
    let mut a = Ctl::start();
    let fa = a.open(&p, "rw");
    a.ok(&format!("lock {fa} setlk w 0 10"));
    a.ok(&format!("lock {fa} ofd w 20 10"));
    a.ok(&format!("share {fa} 3 2"));
    assert_eq!(ctx.table.read(|t| t.file_count()), 1);
    let m = fx.mnt.clone();
    let dev = within(move || std::fs::metadata(m).unwrap().dev());
    let conn = libc::minor(dev);
    // fusectl is mounted in a private mount namespace only, so the machine is
    // left as it was.
    let out = sh(&format!(
        "d=/sys/fs/fuse/connections; [ -e $d/{conn}/abort ] || \
         exec unshare -m sh -c 'mount -t fusectl fusectl '$d' && echo 1 > '$d'/{conn}/abort'; \
         echo 1 > $d/{conn}/abort"
    ));
    if !out.status.success() {
        lockfs_testkit::skipping!(
            "abort check: cannot reach the FUSE control file system: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let t0 = Instant::now();
    // Write locks lost this way leave not-valid value blocks, but no lock.
    while !ctx.table.read(|t| t.snapshot()).is_empty() || !ctx.shares.lock().unwrap().is_empty() {
        assert!(t0.elapsed() < OP_TIMEOUT, "locks of the aborted mount stay");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(a);
}

#[test]
fn direct_io_opens_follow_the_mandatory_mark_at_once() {
    let ctx = LockContext::new();
    let opts = MountOptions {
        passthrough: false,
        ..lock_options(&ctx)
    };
    let Some(fx) = mount_with(opts) else { return };
    let p = file(&fx, "f", 0o644);
    let (mut a, mut b) = (Ctl::start(), Ctl::start());
    let fa = a.open(&p, "rw");
    a.ok(&format!("lock {fa} setlk w 0 0"));
    let fb = b.open(&p, "rw nb");
    // Advisory: B's I/O ignores A's lock.
    assert_eq!(b.ok(&format!("write {fb} 0 x")), "ok 1");
    // Made mandatory through the mount while both are open: checked at once.
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o2644)).unwrap();
    b.fails(&format!("write {fb} 0 x"), libc::EAGAIN);
    b.fails(&format!("read {fb} 0 1"), libc::EAGAIN);
    // And advisory again when the mark goes.
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(b.ok(&format!("read {fb} 0 1")), "ok 1");
}

#[test]
fn truncating_opens_and_copy_sources_of_locked_mandatory_files_are_gated() {
    let ctx = LockContext::new();
    let Some(fx) = mount_with(lock_options(&ctx)) else {
        return;
    };
    let m = file(&fx, "mand", 0o2644);
    let out = file(&fx, "out", 0o644);
    let (mut a, mut b) = (Ctl::start(), Ctl::start());
    let fa = a.open(&m, "rw");
    a.ok(&format!("lock {fa} setlk w 0 100"));
    // The source of a copy is admitted without waiting, like a non-blocking read;
    // bytes outside the lock copy.
    let (src, dst) = (m.clone(), out.clone());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let fin = std::fs::File::open(&src).unwrap();
        let fout = std::fs::OpenOptions::new().write(true).open(&dst).unwrap();
        let copy = |from: i64| {
            let (mut i, mut o) = (from, 0i64);
            // SAFETY: both descriptors are open for the call; the offsets are ours.
            let n = unsafe {
                libc::copy_file_range(fin.as_raw_fd(), &mut i, fout.as_raw_fd(), &mut o, 10, 0)
            };
            (n, std::io::Error::last_os_error().raw_os_error())
        };
        let _ = tx.send((copy(0), copy(200)));
    });
    let ((locked, err), (free, _)) = rx.recv_timeout(OP_TIMEOUT).expect("copies answer");
    assert_eq!((locked, err), (-1, Some(libc::EAGAIN)));
    assert_eq!(free, 10);
    assert_eq!(
        ctx.table.read(|t| t.io_in_flight()),
        0,
        "no pass left behind"
    );
    // The kernel truncates an O_TRUNC open with a SETATTR after the open (no
    // FUSE_ATOMIC_O_TRUNC): it waits at the gate like a truncate, the file keeping
    // its bytes, and truncates once the lock goes.
    b.send(&format!("open {} rw trunc", m.display()));
    wait_for_waiters(&ctx, 1);
    assert_eq!(std::fs::metadata(fx.s("mand")).unwrap().len(), 4096);
    a.ok(&format!("lock {fa} setlk u 0 0"));
    let opened = b
        .recv(OP_TIMEOUT)
        .expect("the open answers once the lock goes");
    assert!(opened.starts_with("ok"), "{opened}");
    assert_eq!(std::fs::metadata(fx.s("mand")).unwrap().len(), 0);
}
