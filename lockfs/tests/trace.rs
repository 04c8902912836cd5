//! `lockfs trace` end to end: the command attaches to a process whose lock
//! table has real contention between two threads (this test process), opens
//! its probe gate from outside, reports events and counters as JSON and as a
//! snapshot, and closes the gate on SIGINT; the gate alone decides whether
//! the table announces anything; native file locks are traced too.
//!
//! Needs root and BPF; without them every test prints a loud SKIPPED line.

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use lock_table::{
    Event, FileId, LockKind, LockOutcome, LockRequest, Owner, Range, ScopeId, SharedTable, Wait,
};
use lockfs_testkit::daemon::Spawn;
use serde_json::Value;

const LOCKFS: &str = env!("CARGO_BIN_EXE_lockfs");
const TIMEOUT: Duration = Duration::from_secs(30);

/// The probe gate is per process: tests that touch it take turns.
static GATE: Mutex<()> = Mutex::new(());

fn skip(msg: &str) {
    lockfs_testkit::skipping!("{msg}");
}

fn can_trace(name: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip(&format!("{name}: tracing needs root"));
        return false;
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        skip(&format!("{name}: the kernel has no BTF"));
        return false;
    }
    true
}

fn pin_dir(name: &str) -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/lockfs-test-{}-{name}",
        std::process::id()
    ))
}

/// A running `lockfs trace`, its stdout lines on a channel; killed on drop.
struct TraceCmd {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl TraceCmd {
    fn spawn(args: &[&str]) -> TraceCmd {
        let mut child = Command::new(LOCKFS)
            .arg("trace")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning lockfs trace");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        TraceCmd { child, lines }
    }

    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(TIMEOUT)
            .expect("lockfs trace printed nothing in time")
    }

    fn interrupt(&self) {
        // SAFETY: kill with a pid we spawned and a valid signal.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
    }

    /// Waits (bounded) for exit and returns every remaining line.
    fn finish(mut self) -> Vec<String> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting") {
                assert!(status.success(), "lockfs trace exited with {status}");
                break;
            }
            assert!(Instant::now() < deadline, "lockfs trace did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            rest.push(line);
        }
        rest
    }
}

impl Drop for TraceCmd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_for_gate(open: bool) {
    let deadline = Instant::now() + TIMEOUT;
    while (lockfs_probes::gate() != 0) != open {
        assert!(
            Instant::now() < deadline,
            "the probe gate did not {}",
            if open { "open" } else { "close" }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two threads contend on one file of a shared table: the holder keeps an
/// exclusive lock on bytes 0..=99 for `hold`, the other blocks for it (and
/// is granted through the notifier when the holder unlocks), then a third
/// request is refused without waiting. Returns the waiter's observed wait.
fn contend(file: FileId, hold: Duration) -> Duration {
    let (tx, rx) = mpsc::channel::<Event>();
    let tx = Mutex::new(tx);
    let table = std::sync::Arc::new(SharedTable::new(move |e: Event| {
        let _ = tx.lock().unwrap_or_else(|e| e.into_inner()).send(e);
    }));
    let range = Range::new(0, 99).unwrap();
    let req = move |owner: u64, pid: u32, wait| LockRequest {
        file,
        scope: ScopeId::DEFAULT,
        owner: Owner::posix(owner),
        pid,
        kind: LockKind::Exclusive,
        range,
        wait,
        reclaim: false,
    };
    assert_eq!(
        table.with(|t| t.lock(&req(1, 4001, Wait::No))),
        LockOutcome::Granted
    );
    let holder = {
        let table = table.clone();
        std::thread::spawn(move || {
            std::thread::sleep(hold);
            table.with(|t| t.unlock(file, Owner::posix(1), range));
        })
    };
    let waiter = {
        let table = table.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let out = table.with(|t| t.lock(&req(2, 4002, Wait::Yes { token: 9 })));
            assert!(matches!(out, LockOutcome::Queued(_)), "{out:?}");
            let granted = rx.recv_timeout(TIMEOUT).expect("grant");
            assert!(matches!(granted, Event::Granted { token: 9, .. }));
            let waited = start.elapsed();
            let refused = table.with(|t| t.lock(&req(3, 4003, Wait::No)));
            assert!(matches!(refused, LockOutcome::Refused(_)), "{refused:?}");
            table.with(|t| t.unlock(file, Owner::posix(2), range));
            waited
        })
    };
    holder.join().expect("holder thread");
    waiter.join().expect("waiter thread")
}

fn temp_file() -> (tempfile::TempDir, PathBuf, FileId) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("contended");
    std::fs::write(&path, b"data").expect("temp file");
    let m = std::fs::metadata(&path).expect("stat");
    (dir, path, FileId::new(m.dev(), m.ino()))
}

fn parse(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn json_events_and_snapshot_from_a_traced_table() {
    if !can_trace("json_events_and_snapshot_from_a_traced_table") {
        return;
    }
    let _turn = GATE.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, path, file) = temp_file();
    let pins = pin_dir("json");
    let me = std::process::id().to_string();
    let prefix = dir.path().to_str().unwrap().to_owned();
    let trace = TraceCmd::spawn(&[
        "--daemon-pid",
        &me,
        "--json",
        "--once",
        "--duration",
        "120",
        "--path-prefix",
        &prefix,
        "--pin-dir",
        pins.to_str().unwrap(),
        "--unpin",
    ]);
    let hello: Value = serde_json::from_str(&trace.next_line()).expect("first line is JSON");
    assert!(hello["tracing"].as_str().unwrap().contains(&me), "{hello}");
    wait_for_gate(true);
    assert_eq!(lockfs_probes::gate(), lockfs_probes::GATE_CONTENTION);

    let waited = contend(file, Duration::from_millis(300));
    std::thread::sleep(Duration::from_millis(300));
    trace.interrupt();
    let values = parse(&trace.finish());
    // SIGINT closed the gate before the command exited.
    assert_eq!(lockfs_probes::gate(), 0);

    let (snapshot, events): (Vec<_>, Vec<_>) = values
        .into_iter()
        .partition(|v| v.get("snapshot").is_some());
    let mine: Vec<&Value> = events
        .iter()
        .filter(|e| e["source"] == "lockfs" && e["ino"] == file.ino)
        .collect();
    let kinds: Vec<&str> = mine.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    // Contention only: the uncontended grant and the unlocks trap nothing.
    assert_eq!(
        kinds,
        ["lock_blocked", "wait_ended", "lock_refused"],
        "{mine:#?}"
    );
    let blocked = mine[0];
    assert_eq!(blocked["pid"], 4002);
    assert_eq!(blocked["dev"], file.dev);
    assert_eq!(
        (&blocked["start"], &blocked["end"]),
        (&Value::from(0), &Value::from(99))
    );
    assert_eq!(blocked["lock"], "write");
    assert_eq!(blocked["owner"], "posix");
    assert_eq!(
        blocked["tgid"].as_u64(),
        Some(u64::from(std::process::id()))
    );
    assert_eq!(blocked["path"], path.to_str().unwrap());
    let ended = mine[1];
    assert_eq!(ended["reason"], "granted");
    assert_eq!(ended["waiter"], blocked["waiter"]);
    let wait_ns = ended["wait_ns"].as_u64().expect("a timed wait");
    assert!(
        wait_ns >= 250_000_000 && wait_ns <= waited.as_nanos() as u64 + 50_000_000,
        "wait {wait_ns} ns, the thread waited {waited:?}"
    );
    assert_eq!(mine[2]["pid"], 4003);

    assert_eq!(snapshot.len(), 1, "one snapshot at the end");
    let files = snapshot[0]["snapshot"]["files"].as_array().unwrap();
    let row = files
        .iter()
        .find(|f| f["ino"] == file.ino)
        .unwrap_or_else(|| panic!("no row for the file: {files:#?}"));
    assert_eq!(row["path"], path.to_str().unwrap());
    assert_eq!(row["conflicts"], 2, "{row}");
    assert_eq!(row["blocked"], 1, "{row}");
    assert_eq!(row["waits"], 1, "{row}");
    assert_eq!(row["wait_ns_max"], wait_ns, "{row}");
    assert_eq!(row["wait"]["p50_ns"], wait_ns, "{row}");
    assert!(row["waiters"].as_array().unwrap().is_empty(), "{row}");
    let hist = snapshot[0]["snapshot"]["histogram"].as_array().unwrap();
    assert!(
        hist.iter()
            .any(|b| b["low_ns"].as_u64() <= Some(wait_ns) && Some(wait_ns) < b["high_ns"].as_u64()),
        "the wait is in a bucket: {hist:#?}"
    );
    assert!(!pins.exists(), "--unpin removed the pins");
}

#[test]
fn once_prints_holders_and_waiters_of_a_wait_in_progress() {
    if !can_trace("once_prints_holders_and_waiters_of_a_wait_in_progress") {
        return;
    }
    let _turn = GATE.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, path, file) = temp_file();
    let pins = pin_dir("once");
    let me = std::process::id().to_string();
    let trace = TraceCmd::spawn(&[
        "--daemon-pid",
        &me,
        "--once",
        "--all-events",
        "--duration",
        "120",
        "--path-prefix",
        dir.path().to_str().unwrap(),
        "--pid",
        "4002",
        "--pin-dir",
        pins.to_str().unwrap(),
        "--unpin",
    ]);
    wait_for_gate(true);
    assert_eq!(
        lockfs_probes::gate(),
        lockfs_probes::GATE_CONTENTION | lockfs_probes::GATE_ALL
    );
    // Snapshot while the second thread still waits behind the first.
    let contention = std::thread::spawn(move || contend(file, Duration::from_millis(2500)));
    std::thread::sleep(Duration::from_millis(1000));
    trace.interrupt();
    let text = trace.finish().join("\n");
    wait_for_gate(false);
    contention.join().expect("contention threads");
    assert!(text.contains("FILE"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with(path.to_str().unwrap()))
        .unwrap_or_else(|| panic!("no row for {}:\n{text}", path.display()));
    // With every event: two requests so far, one of them blocked.
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[1..5], ["2", "1", "1", "0"], "{row}\n{text}");
    assert!(
        text.contains("holder  lockfs posix pid 4001 write 0-99"),
        "{text}"
    );
    let waiter = text
        .lines()
        .find(|l| l.contains("waiter  lockfs posix pid 4002 write 0-99 waiting"))
        .unwrap_or_else(|| panic!("no waiter line:\n{text}"));
    assert!(waiter.ends_with('s'), "{waiter}");
}

#[test]
fn the_gate_alone_decides_whether_the_table_announces() {
    if !can_trace("the_gate_alone_decides_whether_the_table_announces") {
        return;
    }
    let _turn = GATE.lock().unwrap_or_else(|e| e.into_inner());
    let mut tracer = match lockfs_trace::Tracer::load(lockfs_trace::TraceOptions {
        pin_dir: pin_dir("gate"),
        replace_stale_pins: true,
    }) {
        Ok(t) => t,
        Err(e) => {
            skip(&format!("gate test: BPF cannot load here: {e}"));
            return;
        }
    };
    let me = std::process::id();
    tracer
        .attach_daemon(Path::new("/proc/self/exe"), Some(me))
        .expect("attaching to this test process");
    let (_dir, _path, file) = temp_file();
    let collect = |tracer: &mut lockfs_trace::Tracer| {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_millis(700);
        while Instant::now() < deadline {
            got.extend(
                tracer
                    .poll_events(Duration::from_millis(100))
                    .expect("polling")
                    .into_iter()
                    .filter(|e| e.tgid == me && e.ino == file.ino),
            );
        }
        got
    };

    lockfs_probes::set_gate(0);
    contend(file, Duration::from_millis(50));
    let closed = collect(&mut tracer);
    lockfs_probes::set_gate(lockfs_probes::GATE_CONTENTION);
    contend(file, Duration::from_millis(50));
    let open = collect(&mut tracer);
    lockfs_probes::set_gate(0);
    tracer.unpin().expect("unpinning");

    assert!(
        closed.is_empty(),
        "events with the gate closed: {closed:#?}"
    );
    assert_eq!(open.len(), 3, "blocked, wait ended, refused: {open:#?}");
}

#[test]
fn native_file_locks_are_traced_without_a_daemon() {
    if !can_trace("native_file_locks_are_traced_without_a_daemon") {
        return;
    }
    let (dir, path, _) = temp_file();
    let pins = pin_dir("native");
    let trace = TraceCmd::spawn(&[
        "--kernel-only",
        "--json",
        "--duration",
        "120",
        "--path-prefix",
        dir.path().to_str().unwrap(),
        "--pin-dir",
        pins.to_str().unwrap(),
        "--unpin",
    ]);
    let _hello = trace.next_line();
    // flock(1) holds the file for 300 ms while a second flock(1) waits.
    let mut holder = Command::new("flock")
        .arg(&path)
        .args(["-c", "sleep 0.3"])
        .spawn()
        .expect("flock(1)");
    std::thread::sleep(Duration::from_millis(100));
    let waiter = Command::new("timeout")
        .args(["20", "flock"])
        .arg(&path)
        .arg("true")
        .status()
        .expect("flock(1)");
    assert!(waiter.success());
    assert!(holder.wait().expect("holder").success());
    std::thread::sleep(Duration::from_millis(300));
    trace.interrupt();
    let values = parse(&trace.finish());
    let ended: Vec<&Value> = values
        .iter()
        .filter(|v| v["kind"] == "wait_ended" && v["path"] == path.to_str().unwrap())
        .collect();
    assert_eq!(ended.len(), 1, "{values:#?}");
    assert_eq!(ended[0]["source"], "kernel");
    assert_eq!(ended[0]["owner"], "flock");
    assert_eq!(ended[0]["reason"], "granted");
    let wait = ended[0]["wait_ns"].as_u64().expect("timed");
    assert!((100_000_000..5_000_000_000).contains(&wait), "{wait}");
}

#[test]
fn no_daemon_is_a_clear_error() {
    let out = Command::new(LOCKFS)
        .args(["trace", "--daemon-pid", "4294967294", "--once"])
        .output()
        .expect("running lockfs trace");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no process 4294967294"), "{err}");
}

/// A POSIX write lock on bytes 0..=9 through `fd`, waiting or not.
fn setlk(fd: i32, typ: i32, wait: bool) -> std::io::Result<()> {
    // SAFETY: all-zero is a valid flock; the fields used are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 10;
    let cmd = if wait { libc::F_SETLKW } else { libc::F_SETLK };
    // SAFETY: fd is open and fl is a valid flock for F_SETLK(W).
    if unsafe { libc::fcntl(fd, cmd, &fl) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Forks a child that opens `path`, blocks for the write lock, writes one
/// byte to the returned pipe once it has it, unlocks and exits. The child
/// only makes async-signal-safe system calls, as a fork of a threaded
/// process must.
fn fork_waiter(path: &Path) -> (libc::pid_t, std::fs::File) {
    use std::os::fd::FromRawFd as _;
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child below runs only async-signal-safe calls and _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: plain system calls on descriptors and memory prepared
        // before the fork; the child never returns into the test harness.
        unsafe {
            let fd = libc::open(cpath.as_ptr(), libc::O_RDWR);
            let mut fl: libc::flock = std::mem::zeroed();
            fl.l_type = libc::F_WRLCK as libc::c_short;
            fl.l_whence = libc::SEEK_SET as libc::c_short;
            fl.l_len = 10;
            let ok = fd >= 0 && libc::fcntl(fd, libc::F_SETLKW, &fl) == 0;
            let byte = [if ok { b'y' } else { b'n' }];
            libc::write(fds[1], byte.as_ptr().cast(), 1);
            fl.l_type = libc::F_UNLCK as libc::c_short;
            libc::fcntl(fd, libc::F_SETLK, &fl);
            libc::_exit(if ok { 0 } else { 1 });
        }
    }
    // SAFETY: fds[1] belongs to us and is closed once; fds[0] is owned by
    // the returned File.
    unsafe {
        libc::close(fds[1]);
        (pid, std::fs::File::from_raw_fd(fds[0]))
    }
}

fn mounted(mnt: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(mnt.to_str().unwrap()))
}

#[test]
fn two_processes_contending_on_a_lockfs_mount() {
    if !can_trace("two_processes_contending_on_a_lockfs_mount") {
        return;
    }
    if !Path::new("/dev/fuse").exists() {
        skip("two_processes_contending_on_a_lockfs_mount: no /dev/fuse");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (src, mnt) = (dir.path().join("src"), dir.path().join("mnt"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let backing = src.join("shared");
    std::fs::write(&backing, b"0123456789").unwrap();
    let ino = std::fs::metadata(&backing).unwrap().ino();
    let socket = dir.path().join("admin.sock");
    // `lockfs mount` in the background; stopped (SIGINT, then SIGKILL) and
    // unmounted on drop.
    let mut cmd = Command::new(LOCKFS);
    cmd.arg("mount")
        .arg(&src)
        .arg(&mnt)
        .arg("-o")
        .arg(format!("socket={}", socket.display()));
    let mount = Spawn::new(cmd)
        .tag("mount")
        .stop_signal(libc::SIGINT)
        .unmounts(&mnt)
        .spawn();
    let deadline = Instant::now() + TIMEOUT;
    while !mounted(&mnt) {
        assert!(Instant::now() < deadline, "lockfs mount did not mount");
        std::thread::sleep(Duration::from_millis(20));
    }
    let daemon = mount.pid().expect("running").to_string();
    let pins = pin_dir("mount");
    let trace = TraceCmd::spawn(&[
        "--daemon-pid",
        &daemon,
        "--json",
        "--once",
        "--duration",
        "120",
        "--path-prefix",
        src.to_str().unwrap(),
        "--pin-dir",
        pins.to_str().unwrap(),
        "--unpin",
    ]);
    let hello: Value = serde_json::from_str(&trace.next_line()).expect("first line is JSON");
    assert!(
        hello["tracing"].as_str().unwrap().contains(&daemon),
        "{hello}"
    );

    let on_mount = mnt.join("shared");
    let holder = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&on_mount)
        .expect("opening the file on the mount");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&holder);
    setlk(fd, libc::F_WRLCK, false).expect("holder lock");
    let started = Instant::now();
    let (waiter, mut got) = fork_waiter(&on_mount);
    std::thread::sleep(Duration::from_millis(400));
    setlk(fd, libc::F_UNLCK, false).expect("holder unlock");
    let mut byte = [0u8; 1];
    std::io::Read::read_exact(&mut got, &mut byte).expect("waiter reports");
    let waited = started.elapsed();
    let mut status = 0;
    // SAFETY: reaping the child we forked.
    assert_eq!(unsafe { libc::waitpid(waiter, &mut status, 0) }, waiter);
    assert_eq!(&byte, b"y", "the waiter got the lock");
    std::thread::sleep(Duration::from_millis(300));
    trace.interrupt();
    let values = parse(&trace.finish());

    let mine: Vec<&Value> = values
        .iter()
        .filter(|e| e["source"] == "lockfs" && e["ino"] == ino)
        .collect();
    let kinds: Vec<&str> = mine.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["lock_blocked", "wait_ended"], "{values:#?}");
    let blocked = mine[0];
    assert_eq!(blocked["pid"], waiter, "the waiting process");
    assert_eq!(
        blocked["tgid"].as_u64().map(|t| t.to_string()),
        Some(daemon.clone())
    );
    assert_eq!(
        (&blocked["start"], &blocked["end"]),
        (&Value::from(0), &Value::from(9))
    );
    assert_eq!(blocked["lock"], "write");
    assert_eq!(blocked["path"], backing.to_str().unwrap());
    let ended = mine[1];
    assert_eq!(ended["reason"], "granted");
    let wait_ns = ended["wait_ns"].as_u64().expect("timed wait");
    assert!(
        wait_ns >= 300_000_000 && wait_ns <= waited.as_nanos() as u64,
        "wait {wait_ns} ns; the waiter took {waited:?}"
    );
    let snapshot = values
        .iter()
        .find_map(|v| v.get("snapshot"))
        .expect("a snapshot");
    let row = snapshot["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["ino"] == ino)
        .expect("a row for the file");
    assert_eq!(
        (&row["conflicts"], &row["blocked"], &row["waits"]),
        (&Value::from(1), &Value::from(1), &Value::from(1))
    );
    assert_eq!(row["wait_ns_max"], wait_ns);
    drop(mount);
    assert!(!mounted(&mnt));
}

#[test]
fn the_live_view_redraws_every_interval() {
    if !can_trace("the_live_view_redraws_every_interval") {
        return;
    }
    let pins = pin_dir("live");
    let out = Command::new("timeout")
        .args(["60", LOCKFS, "trace", "--kernel-only", "--duration", "1.8"])
        .args([
            "--interval",
            "0.5",
            "--pin-dir",
            pins.to_str().unwrap(),
            "--unpin",
        ])
        .output()
        .expect("running lockfs trace");
    assert!(out.status.success(), "{out:?}");
    let screen = String::from_utf8_lossy(&out.stdout);
    let frames = screen.matches("\x1b[H\x1b[2J").count();
    assert!((3..=4).contains(&frames), "{frames} frames:\n{screen}");
    assert!(screen.contains("ATTEMPTS"), "{screen}");
    assert!(!pins.exists());
}

/// A file created after the trace started is not in the first walk of the
/// `--path-prefix` directory, and the next walk is rate-limited: it must
/// still be counted in the file table (by device and inode until it can be
/// named), not only in the header's waits.
#[test]
fn a_file_created_while_tracing_is_listed_under_a_path_prefix() {
    if !can_trace("a_file_created_while_tracing_is_listed_under_a_path_prefix") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let pins = pin_dir("late");
    let trace = TraceCmd::spawn(&[
        "--kernel-only",
        "--json",
        "--once",
        "--duration",
        "120",
        "--path-prefix",
        dir.path().to_str().unwrap(),
        "--pin-dir",
        pins.to_str().unwrap(),
        "--unpin",
    ]);
    let _hello = trace.next_line();
    // Well after the start, as an operator's file would be: any start-up
    // walk of the directory is long over.
    std::thread::sleep(Duration::from_millis(500));
    let path = dir.path().join("late");
    std::fs::write(&path, b"x").expect("creating the late file");
    let ino = std::fs::metadata(&path).expect("stat").ino();
    let mut holder = Command::new("flock")
        .arg(&path)
        .args(["-c", "sleep 0.3"])
        .spawn()
        .expect("flock(1)");
    std::thread::sleep(Duration::from_millis(100));
    let waiter = Command::new("timeout")
        .args(["20", "flock"])
        .arg(&path)
        .arg("true")
        .status()
        .expect("flock(1)");
    assert!(waiter.success());
    assert!(holder.wait().expect("holder").success());
    std::thread::sleep(Duration::from_millis(300));
    trace.interrupt();
    let values = parse(&trace.finish());

    // The streamed wait of the file: path null (not walked yet) or the path.
    let ended: Vec<&Value> = values
        .iter()
        .filter(|v| v["kind"] == "wait_ended" && v["ino"] == ino)
        .collect();
    assert_eq!(ended.len(), 1, "{values:#?}");
    assert!(
        ended[0]["path"].is_null() || ended[0]["path"] == path.to_str().unwrap(),
        "{:#?}",
        ended[0]
    );

    let snap = &values.last().expect("a snapshot line")["snapshot"];
    assert!(snap["wait"]["count"].as_u64() >= Some(1), "{snap:#}");
    let files = snap["files"].as_array().expect("files");
    let row = files
        .iter()
        .find(|f| f["ino"] == ino)
        .unwrap_or_else(|| panic!("the late file is missing from the table: {snap:#}"));
    assert_eq!(row["waits"], 1, "{row:#}");
    assert_eq!(row["blocked"], 1, "{row:#}");
    // The one-shot snapshot walks again, so by then it has its name.
    assert_eq!(row["path"], path.to_str().unwrap(), "{row:#}");
}
