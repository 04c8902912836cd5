//! The kernel's own POSIX locks, traced through the filelock tracepoints:
//! two real processes contend for one byte range of a native file.

mod support;

use std::{os::unix::fs::MetadataExt as _, time::Duration};

use lockfs_trace::{EventKind, KernelPoint, LockType, OwnerKind, Source, WaitEndReason, MAP_FILES};
use support::{bpftool_dump, collect_events, load_tracer, Fixture};

#[test]
fn blocked_fcntl_lock_is_measured_and_counted() {
    let Some(mut tracer) = load_tracer("kernel") else {
        return;
    };
    let attached = tracer
        .attach_kernel_filelock()
        .expect("attaching tracepoints");
    assert!(attached.iter().any(|p| p == "filelock:posix_lock_inode"));
    assert!(attached.iter().any(|p| p == "filelock:fcntl_setlk"));

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("contended");
    std::fs::write(&path, vec![0u8; 4096]).expect("creating the file");
    let meta = std::fs::metadata(&path).expect("stat");
    let (dev, ino) = (meta.dev(), meta.ino());
    let p = path.to_str().expect("utf-8 temp path");

    let mut holder = Fixture::spawn(&["hold", p, "100", "50"]);
    holder.expect_line("locked");
    let waiter = Fixture::spawn(&["wait", p, "100", "50"]);
    waiter.expect_line("waiting");
    // Let the waiter go to sleep in F_SETLKW, then release it.
    std::thread::sleep(Duration::from_millis(200));
    holder.send_line();
    waiter.expect_line("got");
    holder.expect_line("unlocked");
    waiter.expect_line("unlocked");
    let (holder_pid, waiter_pid) = (holder.pid(), waiter.pid());
    holder.finish();
    waiter.finish();

    let events = collect_events(
        &mut tracer,
        |e| e.source == Source::Kernel && e.ino == ino && e.dev == dev,
        |evs| {
            evs.iter().any(|e| e.kind == EventKind::WaitEnded)
                && evs
                    .iter()
                    .filter(|e| e.kind == EventKind::LockReleased)
                    .count()
                    >= 2
        },
        Duration::from_secs(5),
    );
    let find = |kind, pid| {
        events
            .iter()
            .find(|e| e.kind == kind && e.pid == pid)
            .unwrap_or_else(|| panic!("no {kind:?} event for pid {pid} in {events:#?}"))
    };

    let granted = find(EventKind::LockGranted, holder_pid);
    assert_eq!(granted.point, KernelPoint::PosixLockInode);
    assert_eq!((granted.start, granted.end), (100, 149));
    assert_eq!(granted.lock_type, LockType::Exclusive);
    assert_eq!(granted.owner_kind, OwnerKind::Posix);
    assert_eq!(granted.tgid, holder_pid);

    let blocked = find(EventKind::LockBlocked, waiter_pid);
    assert_eq!(blocked.ret, 1, "FILE_LOCK_DEFERRED");
    assert_eq!((blocked.start, blocked.end), (100, 149));
    assert_eq!(blocked.lock_type, LockType::Exclusive);

    let ended = find(EventKind::WaitEnded, waiter_pid);
    assert_eq!(ended.wait_reason, WaitEndReason::Granted);
    assert_eq!((ended.start, ended.end), (100, 149));
    assert_eq!(ended.waiter, blocked.waiter, "same waiting thread");
    let wait = ended.wait.expect("a measured wait");
    assert!(
        wait >= Duration::from_millis(150) && wait < Duration::from_secs(5),
        "wait of {wait:?} is not about the 200 ms the holder kept the lock"
    );

    let released = find(EventKind::LockReleased, holder_pid);
    assert_eq!(released.lock_type, LockType::Unlock);

    let stats = tracer
        .file_stat(dev, ino)
        .expect("reading counters")
        .expect("counters for the contended file");
    assert_eq!(stats.attempts, 2, "{stats:?}");
    assert_eq!(stats.conflicts, 1, "{stats:?}");
    assert_eq!(stats.blocked, 1, "{stats:?}");
    assert_eq!(stats.waits, 1, "{stats:?}");
    assert_eq!(stats.wait_ns_max, wait.as_nanos() as u64);
    assert_eq!(stats.wait_ns_total, wait.as_nanos() as u64);

    let hist = tracer.wait_histogram().expect("reading the histogram");
    let bucket = 63 - (wait.as_nanos() as u64).leading_zeros() as usize;
    assert!(hist.buckets[bucket] >= 1, "bucket {bucket} empty: {hist:?}");

    // Operators read the same counters with bpftool, with field names.
    let dump = bpftool_dump(&tracer.pin_dir().join(MAP_FILES));
    for field in [
        "\"dev\"",
        "\"ino\"",
        "\"attempts\"",
        "\"conflicts\"",
        "\"wait_ns_max\"",
    ] {
        assert!(
            dump.contains(field),
            "bpftool output lacks {field}:\n{dump}"
        );
    }
    assert!(
        dump.contains(&ino.to_string()),
        "bpftool output lacks inode {ino}:\n{dump}"
    );
    eprintln!("bpftool map dump pinned .../{MAP_FILES}:\n{dump}");

    // Programs are listed by readable names.
    let progs = std::process::Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .expect("running bpftool");
    let progs = String::from_utf8_lossy(&progs.stdout);
    for name in ["lfs_posix_lock", "lfs_fcntl_setlk", "lfs_up_request"] {
        assert!(
            progs.contains(name),
            "bpftool prog show lacks {name}:\n{progs}"
        );
    }
}

#[test]
fn nonblocking_conflict_is_refused_not_waited() {
    let Some(mut tracer) = load_tracer("refused") else {
        return;
    };
    tracer
        .attach_kernel_filelock()
        .expect("attaching tracepoints");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("refused");
    std::fs::write(&path, b"x").expect("creating the file");
    let meta = std::fs::metadata(&path).expect("stat");
    let (dev, ino) = (meta.dev(), meta.ino());
    let p = path.to_str().expect("utf-8 temp path");

    let mut holder = Fixture::spawn(&["hold", p, "0", "0"]);
    holder.expect_line("locked");
    // A second process trying F_SETLK on the same range fails with EAGAIN.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    // SAFETY: zeroed flock is valid; whole-file write lock request.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: valid fd and flock.
    let rc = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), libc::F_SETLK, &fl) };
    let err = std::io::Error::last_os_error();
    assert_eq!(rc, -1);
    assert!(matches!(
        err.raw_os_error(),
        Some(libc::EAGAIN) | Some(libc::EACCES)
    ));
    holder.send_line();
    holder.expect_line("unlocked");
    holder.finish();

    let me = std::process::id();
    let events = collect_events(
        &mut tracer,
        |e| e.ino == ino && e.dev == dev && e.tgid == me,
        |evs| evs.iter().any(|e| e.kind == EventKind::LockRefused),
        Duration::from_secs(5),
    );
    let refused = events
        .iter()
        .find(|e| e.kind == EventKind::LockRefused)
        .expect("a refused event");
    assert_eq!(refused.ret, -libc::EAGAIN);
    assert_eq!((refused.start, refused.end), (0, lockfs_trace::TO_EOF));
    assert!(!events.iter().any(|e| e.kind == EventKind::LockBlocked));
    let stats = tracer
        .file_stat(dev, ino)
        .expect("counters")
        .expect("entry");
    assert_eq!(
        (stats.attempts, stats.conflicts, stats.blocked, stats.waits),
        (2, 1, 0, 0)
    );
}

/// Runs a holder and a blocked waiter of `flavor` on a fresh file and
/// returns the file's kernel events, its identity and the two pids. With
/// `interrupt`, the waiter is interrupted by SIGUSR1 instead of granted.
fn contend(
    tracer: &mut lockfs_trace::Tracer,
    flavor: &str,
    interrupt: bool,
) -> (Vec<lockfs_trace::Event>, (u64, u64), u32, u32) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(format!("contended-{flavor}"));
    std::fs::write(&path, vec![0u8; 64]).expect("creating the file");
    let meta = std::fs::metadata(&path).expect("stat");
    let (dev, ino) = (meta.dev(), meta.ino());
    let p = path.to_str().expect("utf-8 temp path");

    let mut holder = Fixture::spawn(&["hold", p, "0", "0", flavor]);
    holder.expect_line("locked");
    let waiter = Fixture::spawn(&["wait", p, "0", "0", flavor]);
    waiter.expect_line("waiting");
    std::thread::sleep(Duration::from_millis(200));
    if interrupt {
        // SAFETY: signalling our own child by its pid.
        assert_eq!(unsafe { libc::kill(waiter.pid() as i32, libc::SIGUSR1) }, 0);
        waiter.expect_line("interrupted");
        holder.send_line();
    } else {
        holder.send_line();
        waiter.expect_line("got");
        waiter.expect_line("unlocked");
    }
    holder.expect_line("unlocked");
    let (hp, wp) = (holder.pid(), waiter.pid());
    holder.finish();
    waiter.finish();
    let events = collect_events(
        tracer,
        |e| e.source == Source::Kernel && e.ino == ino && e.dev == dev,
        |evs| evs.iter().any(|e| e.kind == EventKind::WaitEnded),
        Duration::from_secs(5),
    );
    (events, (dev, ino), hp, wp)
}

fn wait_end(events: &[lockfs_trace::Event], tgid: u32) -> &lockfs_trace::Event {
    events
        .iter()
        .find(|e| e.kind == EventKind::WaitEnded && e.tgid == tgid)
        .unwrap_or_else(|| panic!("no wait end from {tgid} in {events:#?}"))
}

#[test]
fn flock_wait_is_measured() {
    let Some(mut tracer) = load_tracer("flock") else {
        return;
    };
    tracer
        .attach_kernel_filelock()
        .expect("attaching tracepoints");
    let (events, (dev, ino), _, waiter) = contend(&mut tracer, "flock", false);
    let blocked = events
        .iter()
        .find(|e| e.kind == EventKind::LockBlocked && e.tgid == waiter)
        .expect("a blocked flock");
    assert_eq!(blocked.point, KernelPoint::FlockLockInode);
    assert_eq!(blocked.owner_kind, OwnerKind::Flock);
    assert_eq!((blocked.start, blocked.end), (0, lockfs_trace::TO_EOF));
    let ended = wait_end(&events, waiter);
    assert_eq!(ended.wait_reason, WaitEndReason::Granted);
    assert_eq!(ended.point, KernelPoint::FlockLockInode);
    let wait = ended.wait.expect("measured");
    assert!(wait >= Duration::from_millis(150), "{wait:?}");
    let stats = tracer
        .file_stat(dev, ino)
        .expect("counters")
        .expect("entry");
    assert_eq!(
        (stats.attempts, stats.blocked, stats.waits),
        (2, 1, 1),
        "{stats:?}"
    );
}

#[test]
fn ofd_wait_is_measured() {
    let Some(mut tracer) = load_tracer("ofd") else {
        return;
    };
    tracer
        .attach_kernel_filelock()
        .expect("attaching tracepoints");
    let (events, _, _, waiter) = contend(&mut tracer, "ofd", false);
    let ended = wait_end(&events, waiter);
    assert_eq!(ended.owner_kind, OwnerKind::Ofd);
    assert_eq!(ended.wait_reason, WaitEndReason::Granted);
    assert!(ended.wait.expect("measured") >= Duration::from_millis(150));
}

#[test]
fn interrupted_wait_is_reported_as_interrupted() {
    let Some(mut tracer) = load_tracer("interrupt") else {
        return;
    };
    tracer
        .attach_kernel_filelock()
        .expect("attaching tracepoints");
    let (events, (dev, ino), _, waiter) = contend(&mut tracer, "posix", true);
    let ended = wait_end(&events, waiter);
    assert_eq!(ended.wait_reason, WaitEndReason::Interrupted, "{ended:?}");
    assert_eq!(ended.point, KernelPoint::FcntlSetlk);
    assert!(ended.ret < 0, "{ended:?}");
    let wait = ended.wait.expect("measured");
    assert!(wait >= Duration::from_millis(150), "{wait:?}");
    assert!(
        !events
            .iter()
            .any(|e| e.tgid == waiter && e.kind == EventKind::LockGranted),
        "an interrupted waiter never got the lock"
    );
    assert!(
        tracer
            .waiters()
            .expect("waiters")
            .iter()
            .all(|(k, _)| k.tgid != waiter),
        "the wait must be closed"
    );
    let stats = tracer
        .file_stat(dev, ino)
        .expect("counters")
        .expect("entry");
    assert_eq!(stats.waits, 1, "{stats:?}");
}

#[test]
fn lease_break_wait_is_measured() {
    let Some(mut tracer) = load_tracer("lease") else {
        return;
    };
    let attached = tracer
        .attach_kernel_filelock()
        .expect("attaching tracepoints");
    if !attached.iter().any(|p| p == "filelock:break_lease_block") {
        support::skip_notice("lease_break_wait_is_measured: no lease tracepoints");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("leased");
    std::fs::write(&path, b"x").expect("creating the file");
    let meta = std::fs::metadata(&path).expect("stat");
    let (dev, ino) = (meta.dev(), meta.ino());
    let p = path.to_str().expect("utf-8 temp path");

    let mut holder = Fixture::spawn(&["lease", p]);
    holder.expect_line("leased");
    // Opening for write must wait until the lease holder gives the lease up.
    let opener = {
        let path = path.clone();
        std::thread::spawn(move || {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("opening for write");
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    holder.send_line();
    holder.expect_line("released");
    holder.finish();
    opener.join().expect("opener thread");

    let events = collect_events(
        &mut tracer,
        |e| e.source == Source::Kernel && e.ino == ino && e.dev == dev,
        |evs| evs.iter().any(|e| e.kind == EventKind::WaitEnded),
        Duration::from_secs(5),
    );
    let blocked = events
        .iter()
        .find(|e| e.kind == EventKind::LockBlocked)
        .unwrap_or_else(|| panic!("no lease block in {events:#?}"));
    assert_eq!(blocked.point, KernelPoint::BreakLeaseBlock);
    assert_eq!(blocked.tgid, std::process::id());
    let ended = events
        .iter()
        .find(|e| e.kind == EventKind::WaitEnded)
        .expect("a wait end");
    assert_eq!(ended.point, KernelPoint::BreakLeaseUnblock);
    assert_eq!(ended.wait_reason, WaitEndReason::Ended);
    assert_eq!(ended.waiter, blocked.waiter);
    let wait = ended.wait.expect("measured");
    assert!(wait >= Duration::from_millis(150), "{wait:?}");
    let stats = tracer
        .file_stat(dev, ino)
        .expect("counters")
        .expect("entry");
    assert_eq!((stats.blocked, stats.waits), (1, 1), "{stats:?}");
}
