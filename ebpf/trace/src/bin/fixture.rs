//! Test fixture for lockfs-trace: a process the tests can trace.
//!
//! - `probes`: prints `ready`, waits for a line on stdin, then calls every
//!   lockfs probe point with known events (see `fire_probes`), prints `done`.
//! - `gated`: prints `ready`; then for each line on stdin announces a
//!   blocked lock and its end (waiter 5) only if the probe gate asks for
//!   contention events, as lockfs's call sites do, and prints `gate <value>`.
//!   Exits at end of input.
//! - `hold <path> <start> <len> [posix|ofd|flock]`: takes a write lock
//!   without waiting, prints `locked`, waits for a line on stdin, unlocks,
//!   prints `unlocked`.
//! - `wait <path> <start> <len> [posix|ofd|flock]`: prints `waiting`, blocks
//!   for a write lock, prints `got`, unlocks, prints `unlocked`. If SIGUSR1
//!   interrupts the wait it prints `interrupted` instead and exits cleanly.
//! - `lease <path>`: takes a read lease, prints `leased`, waits for a line on
//!   stdin, gives the lease up, prints `released`.
//!
//! It is a separate process so that lock owners and pids are real, and so
//! that the uprobes sit on a binary the tests control.

use std::{
    fs::OpenOptions,
    io::{BufRead as _, Write as _},
    os::fd::AsRawFd as _,
    process::ExitCode,
    time::Duration,
};

use lockfs_probes::{EventKind, LockType, OwnerKind, ProbeEvent, WaitEndReason, TO_EOF};

/// File identity used by the probe sequence.
const DEV: u64 = 0x1234;
const INO: u64 = 0x5678;

fn say(word: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{word}");
    let _ = out.flush();
}

fn wait_for_line() {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

fn fire_probes() {
    let local = |kind| {
        ProbeEvent::new(kind, DEV, INO)
            .with_owner(OwnerKind::Posix, 4242)
            .with_range(10, 19)
            .with_lock_type(LockType::Exclusive)
    };
    lockfs_probes::lock_requested(&local(EventKind::LockRequested));
    lockfs_probes::lock_blocked(&local(EventKind::LockBlocked).with_waiter(77));
    std::thread::sleep(Duration::from_millis(30));
    lockfs_probes::wait_ended(
        &local(EventKind::WaitEnded)
            .with_waiter(77)
            .with_wait_reason(WaitEndReason::Granted)
            .with_timestamp(999),
    );
    lockfs_probes::lock_refused(
        &ProbeEvent::new(EventKind::LockRefused, DEV, INO)
            .with_owner(OwnerKind::Nlm, 7)
            .with_host(b"client-a.example")
            .with_range(0, TO_EOF)
            .with_lock_type(LockType::Shared),
    );
    lockfs_probes::lock_released(&local(EventKind::LockReleased).with_lock_type(LockType::Unlock));
    lockfs_probes::share_refused(&local(EventKind::ShareRefused));
    lockfs_probes::io_blocked(&local(EventKind::IoBlocked));
    // Malformed (unknown lock type): the programs must drop and count it.
    let mut bad = local(EventKind::LockRequested);
    bad.lock_type = 9;
    lockfs_probes::lock_requested(&bad);
    // A pointer the probe cannot read: counted as a failed read, no event.
    lockfs_probes::lockfs_probe_lock_granted(std::ptr::null());
    // A wait end whose start was never announced.
    lockfs_probes::wait_ended(
        &local(EventKind::WaitEnded)
            .with_waiter(31337)
            .with_wait_reason(WaitEndReason::Cancelled),
    );
}

fn gated() {
    say("ready");
    let mut line = String::new();
    loop {
        line.clear();
        match std::io::stdin().lock().read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if lockfs_probes::contention_enabled() {
            let ev = ProbeEvent::new(EventKind::LockBlocked, DEV, INO)
                .with_owner(OwnerKind::Posix, std::process::id())
                .with_range(0, 99)
                .with_waiter(5);
            lockfs_probes::lock_blocked(&ev);
            lockfs_probes::wait_ended(
                &ProbeEvent {
                    kind: EventKind::WaitEnded as u32,
                    ..ev
                }
                .with_wait_reason(WaitEndReason::Granted),
            );
        }
        say(&format!("gate {}", lockfs_probes::gate()));
    }
}

fn setlk(fd: i32, cmd: i32, typ: i32, start: i64, len: i64) -> std::io::Result<()> {
    // SAFETY: zeroed flock is a valid value; fields set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: fd is open, fl is a valid flock for F_SETLK/F_SETLKW.
    if unsafe { libc::fcntl(fd, cmd, &fl) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Flavor {
    Posix,
    Ofd,
    Flock,
}

fn lock(
    fd: i32,
    flavor: Flavor,
    blocking: bool,
    typ: i32,
    start: i64,
    len: i64,
) -> std::io::Result<()> {
    match flavor {
        Flavor::Posix => {
            let cmd = if blocking {
                libc::F_SETLKW
            } else {
                libc::F_SETLK
            };
            setlk(fd, cmd, typ, start, len)
        }
        Flavor::Ofd => {
            let cmd = if blocking {
                libc::F_OFD_SETLKW
            } else {
                libc::F_OFD_SETLK
            };
            setlk(fd, cmd, typ, start, len)
        }
        Flavor::Flock => {
            let mut op = if typ == libc::F_UNLCK {
                libc::LOCK_UN
            } else {
                libc::LOCK_EX
            };
            if !blocking {
                op |= libc::LOCK_NB;
            }
            // SAFETY: fd is open; flock takes no pointers.
            if unsafe { libc::flock(fd, op) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        }
    }
}

extern "C" fn on_usr1(_: i32) {}

/// Lets SIGUSR1 interrupt a blocking lock call (no SA_RESTART).
fn interruptible_by_usr1() {
    // SAFETY: zeroed sigaction is valid; the handler is async-signal-safe
    // (it does nothing).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as extern "C" fn(i32) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = 0;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
}

fn lock_cmd(args: &[String], blocking: bool) -> Result<(), String> {
    let (path, start, len, flavor) = match args {
        [path, start, len] => (path, start, len, Flavor::Posix),
        [path, start, len, flavor] => (
            path,
            start,
            len,
            match flavor.as_str() {
                "posix" => Flavor::Posix,
                "ofd" => Flavor::Ofd,
                "flock" => Flavor::Flock,
                other => return Err(format!("unknown lock flavor {other}")),
            },
        ),
        _ => return Err("usage: hold|wait <path> <start> <len> [posix|ofd|flock]".into()),
    };
    let start: i64 = start.parse().map_err(|e| format!("start: {e}"))?;
    let len: i64 = len.parse().map_err(|e| format!("len: {e}"))?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("open {path}: {e}"))?;
    let fd = file.as_raw_fd();
    if blocking {
        interruptible_by_usr1();
        say("waiting");
        match lock(fd, flavor, true, libc::F_WRLCK, start, len) {
            Ok(()) => say("got"),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
                say("interrupted");
                return Ok(());
            }
            Err(e) => return Err(format!("blocking lock: {e}")),
        }
    } else {
        lock(fd, flavor, false, libc::F_WRLCK, start, len).map_err(|e| format!("lock: {e}"))?;
        say("locked");
        wait_for_line();
    }
    lock(fd, flavor, false, libc::F_UNLCK, start, len).map_err(|e| format!("unlock: {e}"))?;
    say("unlocked");
    Ok(())
}

extern "C" fn on_sigio(_: i32) {}

fn lease_cmd(args: &[String]) -> Result<(), String> {
    let [path] = args else {
        return Err("usage: lease <path>".into());
    };
    // The lease break notice is SIGIO, whose default action kills us.
    // SAFETY: zeroed sigaction is valid; the handler does nothing.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigio as extern "C" fn(i32) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGIO, &sa, std::ptr::null_mut());
    }
    let file = std::fs::File::open(path).map_err(|e| format!("open {path}: {e}"))?;
    let fd = file.as_raw_fd();
    // SAFETY: fd is open; F_SETLEASE takes an integer argument.
    if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) } != 0 {
        return Err(format!("F_SETLEASE: {}", std::io::Error::last_os_error()));
    }
    say("leased");
    wait_for_line();
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) } != 0 {
        return Err(format!(
            "F_SETLEASE unlock: {}",
            std::io::Error::last_os_error()
        ));
    }
    say("released");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.first().map(String::as_str) {
        Some("probes") => {
            say("ready");
            wait_for_line();
            fire_probes();
            say("done");
            Ok(())
        }
        Some("gated") => {
            gated();
            Ok(())
        }
        Some("hold") => lock_cmd(&args[1..], false),
        Some("wait") => lock_cmd(&args[1..], true),
        Some("lease") => lease_cmd(&args[1..]),
        _ => Err("usage: lockfs-trace-fixture probes | hold|wait <path> <start> <len>".into()),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockfs-trace-fixture: {e}");
            ExitCode::FAILURE
        }
    }
}
