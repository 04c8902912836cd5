//! Descriptor limits on the mount. The daemon holds a descriptor per cached inode and
//! per open file, so it raises its own limit as far as the system allows: a process
//! opening files on the mount then gets EMFILE exactly when its own table is full, as
//! on ext4. When the daemon itself runs out, callers get ENFILE (a table beyond their
//! own), never a misleading EMFILE, and the daemon's log names its limit.
//!
//! The daemon runs as its own process (`lockfs-passthrough`) so its limit can be
//! lowered with prlimit; the opener is this test binary run again as a child with its
//! own limit.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Distinct files the opener cycles through.
const FILES: usize = 200;
/// The opener's limit, lowered when the daemon's would not leave room for it.
const WANTED_OPENER_LIMIT: u64 = 20_000;

struct Daemon {
    child: Child,
    mnt: PathBuf,
    src: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start() -> Option<Daemon> {
        if !fuse_available() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        for i in 0..FILES {
            std::fs::write(src.join(format!("f{i}")), b"x").unwrap();
        }
        let log = dir.path().join("daemon.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_lockfs-passthrough"))
            .arg(&src)
            .arg(&mnt)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start lockfs-passthrough");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let d = Daemon {
            child,
            mnt,
            src,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + OP_TIMEOUT;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) if l == "ready" => break,
                Ok(_) => {}
                Err(_) => panic!("daemon not ready; log:\n{}", d.log_text()),
            }
        }
        Some(d)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's soft descriptor limit, as the kernel reports it.
    fn limit(&self) -> u64 {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid())).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("Max open files in /proc/PID/limits");
        line.split_whitespace().nth(3).unwrap().parse().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if is_mounted(&self.mnt) {
            let c = cpath(&self.mnt);
            // SAFETY: valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// What the opener child saw.
#[derive(Debug)]
struct Opened {
    /// Descriptors open before the first open.
    before: u64,
    /// Files it opened before the first failure.
    opened: u64,
    errno: i32,
}

/// Runs this test binary again as a child with `limit` descriptors: it opens the
/// files of `dir` round robin, keeping each open, until an open fails.
fn open_until_failure(dir: &Path, limit: u64) -> Opened {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "opener_child",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("LOCKFS_OPENER_DIR", dir)
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let l = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = String::new();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("opener did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = reader.join().unwrap();
    assert!(status.success(), "opener failed: {out}");
    let line = out
        .lines()
        .find_map(|l| l.split("OPENED ").nth(1))
        .unwrap_or_else(|| panic!("no result from the opener: {out}"));
    let v: Vec<i64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
    Opened {
        before: v[0] as u64,
        opened: v[1] as u64,
        errno: v[2] as i32,
    }
}

/// The child side of [`open_until_failure`], not a test of its own.
#[test]
#[ignore = "run by the descriptor tests as their opener child"]
fn opener_child() {
    let dir = std::env::var("LOCKFS_OPENER_DIR").expect("LOCKFS_OPENER_DIR");
    let names: Vec<PathBuf> = (0..FILES)
        .map(|i| Path::new(&dir).join(format!("f{i}")))
        .collect();
    let before = std::fs::read_dir("/proc/self/fd").unwrap().count() - 1;
    let mut kept = Vec::new();
    let errno = loop {
        match std::fs::File::open(&names[kept.len() % FILES]) {
            Ok(f) => kept.push(f),
            Err(e) => break e.raw_os_error().unwrap_or(0),
        }
    };
    println!("OPENED {before} {} {errno}", kept.len());
}

#[test]
fn a_process_gets_emfile_exactly_when_its_own_table_is_full() {
    let Some(d) = Daemon::start() else { return };
    let daemon_limit = d.limit();
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        d.log_text()
            .contains(&format!("descriptor limit (RLIMIT_NOFILE) {daemon_limit}")),
        "the daemon logs its limit: {}",
        d.log_text()
    );
    // As far as the system allows: fs.nr_open, or the hard limit it was started with
    // where raising that is not permitted (no CAP_SYS_RESOURCE).
    let mut ours = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `ours` is a valid, writable rlimit for the call to fill.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut ours) };
    assert_eq!(rc, 0);
    assert!(
        daemon_limit == nr_open || daemon_limit == ours.rlim_max,
        "daemon limit {daemon_limit}, nr_open {nr_open}, hard limit {}",
        ours.rlim_max
    );
    if daemon_limit < nr_open {
        eprintln!(
            "NOTE: the daemon could not raise its limit to fs.nr_open ({nr_open}) here \
             (no CAP_SYS_RESOURCE); it runs with its hard limit {daemon_limit}"
        );
    }
    // The daemon needs one descriptor per open and per inode, plus its own.
    let limit = WANTED_OPENER_LIMIT.min(daemon_limit - FILES as u64 - 512);
    assert!(
        limit >= 10_000,
        "daemon limit {daemon_limit} too low to test"
    );

    let native = open_until_failure(&d.src, limit);
    assert_eq!(native.errno, libc::EMFILE, "backing fs: {native:?}");
    assert_eq!(
        native.before + native.opened,
        limit,
        "backing fs: {native:?}"
    );

    let mounted = open_until_failure(&d.mnt, limit);
    assert_eq!(
        mounted.errno,
        libc::EMFILE,
        "the mount failed before the opener's table was full: {mounted:?}; daemon log:\n{}",
        d.log_text()
    );
    assert_eq!(
        mounted.before + mounted.opened,
        limit,
        "the opener's table is full exactly at its limit: {mounted:?}"
    );
    assert_eq!(
        mounted.opened, native.opened,
        "same as on the backing file system"
    );
    assert!(!d.log_text().contains("out of file descriptors"));
}

#[test]
fn a_daemon_out_of_descriptors_answers_enfile_and_logs_its_limit() {
    let Some(d) = Daemon::start() else { return };
    let lowered = 300u64;
    let out = Command::new("prlimit")
        .arg(format!("--pid={}", d.pid()))
        .arg(format!("--nofile={lowered}:{lowered}"))
        .output()
        .expect("run prlimit");
    assert!(out.status.success(), "prlimit: {out:?}");
    assert_eq!(d.limit(), lowered);

    let r = open_until_failure(&d.mnt, 20_000);
    assert_eq!(
        r.errno,
        libc::ENFILE,
        "a daemon out of descriptors must answer ENFILE: {r:?}"
    );
    assert!(r.opened < lowered, "{r:?}");
    let t0 = Instant::now();
    let want = format!("RLIMIT_NOFILE {lowered}");
    while !(d.log_text().contains("out of file descriptors") && d.log_text().contains(&want)) {
        assert!(
            t0.elapsed() < OP_TIMEOUT,
            "no log line naming the daemon's limit:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Once the kernel has released the opener's files (it exited), the daemon serves
    // again.
    let f = d.mnt.join("f0");
    within(move || {
        let t0 = Instant::now();
        while let Err(e) = std::fs::read(&f) {
            assert_eq!(e.raw_os_error(), Some(libc::ENFILE), "{e}");
            assert!(t0.elapsed() < Duration::from_secs(20), "never served again");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}
