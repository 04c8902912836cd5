//! Cross-door tests: the real `lockfs serve` daemon with one export, remote
//! NLM calls over TCP on loopback, and separate local processes (python3) on
//! the FUSE mount. A remote lock must block a local fcntl lock and the
//! reverse, a remote exclusive lock on a mandatory file must block a local
//! write until UNLOCK, an NLM SHARE deny-write must block a local
//! O_WRONLY open, and no admitted write may complete inside an exclusive
//! range granted to another owner through either door: one table behind both
//! doors.
//!
//! Needs root and /dev/fuse; skips loudly without them.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lockd_user::client::{ClientConfig, RpcClient};
use lockd_user::proto::nlm::{proc_, v4, FshAccess, FshMode, NLM4_VERS, NLM_PROG};
use lockfs_testkit::daemon::{
    file_handle, fuse_missing, lock_listing, Daemon as TestDaemon, Spawn,
};
use lockfs_testkit::nlm::{lock_with, unlock_with, LockCall};

const LOCKFS: &str = env!("CARGO_BIN_EXE_lockfs");

fn can_run() -> bool {
    if let Some(why) = fuse_missing() {
        lockfs_testkit::skipping!("cross-door tests mount a real lockfs: {why}");
        return false;
    }
    true
}

/// A running daemon; stopped with SIGTERM (then SIGKILL and a lazy unmount
/// if it does not stop) when dropped. Leaving its mount behind after SIGTERM
/// fails the test.
struct Daemon {
    // Declared before `dir`: the process ends before its directories go.
    proc_: TestDaemon,
    dir: tempfile::TempDir,
    tcp: SocketAddr,
}

impl Daemon {
    fn start() -> Daemon {
        Daemon::start_with_env(&[])
    }

    fn start_with_env(env: &[(&str, &str)]) -> Daemon {
        Daemon::start_configured(0, env)
    }

    /// A daemon whose service group has a `grace` seconds grace period.
    fn start_configured(grace: u64, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        for sub in ["export", "mnt", "state"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        let cfg = format!(
            "state_dir = {state:?}\nadmin_socket = {sock:?}\ngrace_period = {grace}\n\
             [[export]]\nname = \"x\"\nsource = {src:?}\nmountpoint = {mnt:?}\nmandatory = \"file\"\n",
            state = d.join("state"),
            sock = d.join("admin.sock"),
            src = d.join("export"),
            mnt = d.join("mnt"),
        );
        std::fs::write(d.join("lockfs.toml"), cfg).unwrap();
        let (proc_, tcp) = Daemon::spawn(d, env);
        Daemon { proc_, dir, tcp }
    }

    fn spawn(d: &Path, env: &[(&str, &str)]) -> (TestDaemon, SocketAddr) {
        let mut spawn =
            Spawn::serve(LOCKFS, &d.join("lockfs.toml"), "warn").unmounts(&d.join("mnt"));
        spawn.command().envs(env.iter().copied());
        let proc_ = spawn.start_serve(Duration::from_secs(30));
        let tcp = proc_.tcp().expect("daemon printed its NLM TCP address");
        (proc_, tcp)
    }

    /// Stops the daemon as an administrator would (SIGTERM) and starts it
    /// again on the same configuration and state.
    fn restart(&mut self) {
        self.stop();
        let (proc_, tcp) = Daemon::spawn(self.dir.path(), &[]);
        self.proc_ = proc_;
        self.tcp = tcp;
    }

    fn mnt(&self, name: &str) -> PathBuf {
        self.dir.path().join("mnt").join(name)
    }

    fn fh(&self, path: &Path) -> Vec<u8> {
        file_handle(LOCKFS, &self.dir.path().join("lockfs.toml"), path)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Daemon {
    fn stop(&mut self) {
        let stopped = self.proc_.stop();
        if stopped.left_mounted && !std::thread::panicking() {
            panic!(
                "the daemon left {} mounted after SIGTERM",
                self.dir.path().join("mnt").display()
            );
        }
    }
}

/// A python3 helper process that runs `script` with the file path as
/// argv[1] and talks line by line.
struct Local {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Local {
    fn spawn(script: &str, path: &Path) -> Local {
        let mut child = Command::new("timeout")
            .args(["-k", "5", "60", "python3", "-u", "-c", script])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let stdin = child.stdin.take().unwrap();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Local {
            child,
            stdin,
            lines,
        }
    }

    fn line(&self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }

    fn say(&mut self, s: &str) {
        writeln!(self.stdin, "{s}").unwrap();
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // SIGTERM to `timeout`, which passes it on to python and exits.
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// One local action, run to completion: prints OK or the errno name.
fn local_once(script_body: &str, path: &Path) -> String {
    let script = format!(
        "import os, sys, fcntl, errno\np = sys.argv[1]\ntry:\n{}\n    print('OK')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n",
        script_body
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let out = Command::new("timeout")
        .args(["-k", "5", "30", "python3", "-c", &script])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const TRY_LOCK: &str =
    "fd = os.open(p, os.O_RDWR)\nfcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 50)";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn lock(host: &str, svid: i32, fh: &[u8], off: u64, len: u64) -> v4::Lock {
    v4::Lock {
        caller_name: host.into(),
        fh: fh.to_vec(),
        oh: format!("{host}-{svid}").into_bytes(),
        svid,
        l_offset: off,
        l_len: len,
    }
}

async fn client(d: &Daemon) -> RpcClient {
    RpcClient::tcp(d.tcp, ClientConfig::default())
        .await
        .unwrap()
}

#[test]
fn remote_lock_blocks_local_fcntl_and_local_lock_blocks_remote() {
    if !can_run() {
        return;
    }
    let d = Daemon::start();
    let f = d.mnt("shared.db");
    std::fs::write(&f, vec![0u8; 4096]).unwrap();
    let fh = d.fh(&f);
    let rt = rt();
    let c = rt.block_on(client(&d));
    let remote = lock("client-a", 7, &fh, 0, 100);

    assert_eq!(
        rt.block_on(lock_with(&c, &LockCall::exclusive(remote.clone()))),
        v4::Stats::Granted
    );
    assert_eq!(
        local_once(TRY_LOCK, &f),
        "EAGAIN",
        "a remote lock must block a local fcntl lock"
    );
    assert_eq!(
        rt.block_on(unlock_with(&c, remote.clone())),
        v4::Stats::Granted
    );
    assert_eq!(local_once(TRY_LOCK, &f), "OK");

    // The reverse: a local process holds [0, 100) until told to stop.
    let mut holder = Local::spawn(
        "import os, sys, fcntl\nfd = os.open(sys.argv[1], os.O_RDWR)\nfcntl.lockf(fd, fcntl.LOCK_EX, 100, 0)\nprint('locked', os.getpid())\nsys.stdin.readline()\n",
        &f,
    );
    let said = holder.line(Duration::from_secs(10)).unwrap_or_default();
    let pid: i32 = said
        .strip_prefix("locked ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("holder said {said:?}"));
    assert_eq!(
        rt.block_on(lock_with(&c, &LockCall::exclusive(remote.clone()))),
        v4::Stats::Denied
    );
    let test = v4::TestArgs {
        cookie: vec![3],
        exclusive: true,
        alock: remote.clone(),
    };
    let r: v4::TestRes = rt
        .block_on(c.call(NLM_PROG, NLM4_VERS, proc_::TEST, &test))
        .unwrap();
    match r.stat {
        v4::TestReply::Denied(h) => {
            assert!(h.exclusive);
            assert_eq!((h.l_offset, h.l_len), (0, 100));
            assert_eq!(h.svid, pid, "TEST reports the local holder's pid as svid");
        }
        other => panic!("TEST should report the local holder, got {other:?}"),
    }
    holder.say("release");
    let _ = holder.child.wait();
    assert_eq!(
        rt.block_on(lock_with(&c, &LockCall::exclusive(remote.clone()))),
        v4::Stats::Granted
    );
    assert_eq!(rt.block_on(unlock_with(&c, remote)), v4::Stats::Granted);
}

#[test]
fn remote_exclusive_lock_on_mandatory_file_blocks_local_write_until_unlock() {
    if !can_run() {
        return;
    }
    let d = Daemon::start();
    let f = d.mnt("mandatory.dat");
    std::fs::write(&f, b"0123456789").unwrap();
    // The System V convention: set-group-ID on, group-execute off.
    let st = Command::new("chmod").arg("2644").arg(&f).status().unwrap();
    assert!(st.success());
    let fh = d.fh(&f);
    let rt = rt();
    let c = rt.block_on(client(&d));
    let remote = lock("client-b", 9, &fh, 0, 0);
    assert_eq!(
        rt.block_on(lock_with(&c, &LockCall::exclusive(remote.clone()))),
        v4::Stats::Granted
    );

    assert_eq!(
        local_once(
            "fd = os.open(p, os.O_WRONLY | os.O_NONBLOCK)\nos.write(fd, b'X')",
            &f
        ),
        "EAGAIN",
        "a non-blocking write must fail while a remote exclusive lock is held"
    );
    let writer = Local::spawn(
        "import os, sys\nfd = os.open(sys.argv[1], os.O_WRONLY)\nprint('opened')\nos.write(fd, b'W')\nprint('written')\n",
        &f,
    );
    assert_eq!(
        writer.line(Duration::from_secs(10)).as_deref(),
        Some("opened")
    );
    assert_eq!(
        writer.line(Duration::from_millis(700)),
        None,
        "the write must wait for the remote lock"
    );
    let t = Instant::now();
    assert_eq!(rt.block_on(unlock_with(&c, remote)), v4::Stats::Granted);
    assert_eq!(
        writer.line(Duration::from_secs(10)).as_deref(),
        Some("written")
    );
    eprintln!("write proceeded {:?} after UNLOCK", t.elapsed());
    let data = std::fs::read(d.dir.path().join("export").join("mandatory.dat")).unwrap();
    assert_eq!(&data[..2], b"W1");
}

#[test]
fn nlm_share_deny_write_blocks_local_writers_and_the_reverse() {
    if !can_run() {
        return;
    }
    let d = Daemon::start();
    let f = d.mnt("report.xls");
    std::fs::write(&f, b"data").unwrap();
    let fh = d.fh(&f);
    let rt = rt();
    let c = rt.block_on(client(&d));
    let share = |mode, access| v4::ShareArgs {
        cookie: vec![4],
        share: v4::Share {
            caller_name: "windows-pc".into(),
            fh: fh.clone(),
            oh: b"excel".to_vec(),
            mode,
            access,
        },
        reclaim: false,
    };
    let r: v4::ShareRes = rt
        .block_on(c.call(
            NLM_PROG,
            NLM4_VERS,
            proc_::SHARE,
            &share(FshMode::DenyWrite, FshAccess::Read),
        ))
        .unwrap();
    assert_eq!(r.stat, v4::Stats::Granted);
    assert_eq!(
        local_once("os.open(p, os.O_WRONLY)", &f),
        "EBUSY",
        "an NLM deny-write share must refuse a local writer"
    );
    assert_eq!(local_once("os.open(p, os.O_RDONLY)", &f), "OK");
    let r: v4::ShareRes = rt
        .block_on(c.call(
            NLM_PROG,
            NLM4_VERS,
            proc_::UNSHARE,
            &share(FshMode::DenyWrite, FshAccess::Read),
        ))
        .unwrap();
    assert_eq!(r.stat, v4::Stats::Granted);
    assert_eq!(local_once("os.open(p, os.O_WRONLY)", &f), "OK");

    // The reverse: a local writer keeps the file open; a remote deny-write
    // request is refused.
    let writer = Local::spawn(
        "import os, sys\nfd = os.open(sys.argv[1], os.O_WRONLY)\nprint('open')\nsys.stdin.readline()\n",
        &f,
    );
    assert_eq!(
        writer.line(Duration::from_secs(10)).as_deref(),
        Some("open")
    );
    let r: v4::ShareRes = rt
        .block_on(c.call(
            NLM_PROG,
            NLM4_VERS,
            proc_::SHARE,
            &share(FshMode::DenyWrite, FshAccess::Read),
        ))
        .unwrap();
    assert_eq!(r.stat, v4::Stats::Denied);
    drop(writer);
}

#[test]
fn clear_host_releases_a_silent_clients_locks() {
    if !can_run() {
        return;
    }
    let d = Daemon::start();
    let f = d.mnt("held.dat");
    std::fs::write(&f, b"x").unwrap();
    let fh = d.fh(&f);
    let rt = rt();
    let c = rt.block_on(client(&d));
    let gone = lock("crashed-client", 3, &fh, 0, 0);
    assert_eq!(
        rt.block_on(lock_with(&c, &LockCall::exclusive(gone))),
        v4::Stats::Granted
    );
    let whole = "fd = os.open(p, os.O_RDWR)\nfcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 0, 0)";
    assert_eq!(local_once(whole, &f), "EAGAIN");

    let out = Command::new(LOCKFS)
        .args(["clear", "--host", "crashed-client", "--socket"])
        .arg(d.dir.path().join("admin.sock"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lockfs clear: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["host"], "crashed-client");
    assert_eq!(answer["locks"], 1, "{answer}");
    assert_eq!(
        local_once(whole, &f),
        "OK",
        "the cleared host's lock must be gone"
    );

    // An unknown host releases nothing and is not an error.
    let out = Command::new(LOCKFS)
        .args(["clear", "--host", "never-seen", "--socket"])
        .arg(d.dir.path().join("admin.sock"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["locks"], 0);
}

/// A local locker: takes exclusive locks on random ranges of the mandatory
/// file (half blocking, half non-blocking), and while each is held reads the
/// range from the backing file twice, 10 ms apart; prints VIOLATION when the
/// bytes changed under its lock, then DONE grants violations.
const LOCAL_LOCKER: &str = r#"
import os, sys, fcntl, random, time, errno
p, b, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
fd = os.open(p, os.O_RDWR)
bfd = os.open(b, os.O_RDONLY)
end = time.time() + secs
grants = bad = 0
while time.time() < end:
    start = random.randrange(0, 4096 - 256)
    n = random.randrange(16, 256)
    nb = fcntl.LOCK_NB if random.random() < 0.5 else 0
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | nb, n, start)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            continue
        raise
    grants += 1
    a = os.pread(bfd, n, start)
    time.sleep(0.01)
    c = os.pread(bfd, n, start)
    if a != c:
        bad += 1
        print('VIOLATION', start, n, flush=True)
    fcntl.lockf(fd, fcntl.LOCK_UN, n, start)
print('DONE', grants, bad, flush=True)
"#;

/// A local writer: writes 64 random bytes at random offsets without locks,
/// so each write is refused by nothing but waits while the range is locked.
const LOCAL_WRITER: &str = r#"
import os, sys, random, time
p, secs = sys.argv[1], float(sys.argv[3])
fd = os.open(p, os.O_WRONLY)
end = time.time() + secs
n = 0
while time.time() < end:
    os.pwrite(fd, os.urandom(64), random.randrange(0, 4096 - 64))
    n += 1
print('DONE', n, flush=True)
"#;

/// Runs a python3 script with the mount path, the backing path and a
/// duration as arguments; returns its output lines.
fn spawn_script(script: &str, mnt: &Path, backing: &Path, secs: u64) -> Child {
    Command::new("timeout")
        .args(["-k", "5", "120", "python3", "-u", "-c", script])
        .arg(mnt)
        .arg(backing)
        .arg(secs.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3")
}

/// Grants and violations of an NLM client that takes non-blocking exclusive
/// locks on random ranges and checks, like [`LOCAL_LOCKER`], that the bytes
/// under each granted lock do not change while it is held.
fn nlm_locker(d: &Daemon, fh: Vec<u8>, host: String, seed: u64, secs: u64) -> (u32, u32) {
    let rt = rt();
    let c = rt.block_on(client(d));
    let backing = d.dir.path().join("export").join("race.dat");
    let mut x = seed | 1;
    let mut next = move |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    let (mut grants, mut bad) = (0, 0);
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        let start = next(4096 - 256);
        let len = 16 + next(240);
        let l = lock(&host, 1, &fh, start, len);
        match rt.block_on(lock_with(&c, &LockCall::exclusive(l.clone()))) {
            v4::Stats::Granted => {}
            v4::Stats::Denied => continue,
            other => panic!("NLM LOCK answered {other:?}"),
        }
        grants += 1;
        let read = || {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::open(&backing).unwrap();
            let mut buf = vec![0u8; len as usize];
            f.read_exact_at(&mut buf, start).unwrap();
            buf
        };
        let a = read();
        std::thread::sleep(Duration::from_millis(10));
        if read() != a {
            bad += 1;
            eprintln!("VIOLATION under {host}'s NLM lock [{start}, +{len})");
        }
        assert_eq!(rt.block_on(unlock_with(&c, l)), v4::Stats::Granted);
    }
    (grants, bad)
}

#[test]
fn no_admitted_write_lands_in_a_range_granted_exclusively_to_another_owner() {
    if !can_run() {
        return;
    }
    // Widen the window between a write's admission and its pwrite to 2 ms, so
    // that a lock granted in it would be caught: without in-flight tracking
    // this test fails within a second.
    let d = Daemon::start_with_env(&[("LOCKFS_TEST_ADMIT_DELAY_US", "2000")]);
    let f = d.mnt("race.dat");
    std::fs::write(&f, vec![0u8; 4096]).unwrap();
    let st = Command::new("chmod").arg("2644").arg(&f).status().unwrap();
    assert!(st.success());
    let backing = d.dir.path().join("export").join("race.dat");
    let fh = d.fh(&f);
    const SECS: u64 = 6;

    let mut children = Vec::new();
    for _ in 0..3 {
        children.push(("writer", spawn_script(LOCAL_WRITER, &f, &backing, SECS)));
    }
    for _ in 0..2 {
        children.push(("locker", spawn_script(LOCAL_LOCKER, &f, &backing, SECS)));
    }
    let remote = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2u64)
            .map(|i| {
                let (d, fh) = (&d, fh.clone());
                s.spawn(move || nlm_locker(d, fh, format!("racer-{i}"), 0x9e37 + i, SECS))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("NLM locker"))
            .collect::<Vec<_>>()
    });

    let (mut writes, mut local_grants, mut violations) = (0u64, 0u64, 0u64);
    for (role, child) in children {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let done = text
            .lines()
            .find_map(|l| l.strip_prefix("DONE "))
            .unwrap_or_else(|| panic!("{role} did not finish: {text:?} ({:?})", out.status));
        let nums: Vec<u64> = done.split(' ').map(|n| n.parse().unwrap()).collect();
        match role {
            "writer" => writes += nums[0],
            _ => {
                local_grants += nums[0];
                violations += nums[1];
            }
        }
    }
    let remote_grants: u32 = remote.iter().map(|r| r.0).sum();
    let remote_violations: u32 = remote.iter().map(|r| r.1).sum();
    eprintln!(
        "{writes} writes; {local_grants} local and {remote_grants} NLM exclusive locks granted; \
         {violations} local and {remote_violations} NLM violations"
    );
    assert!(writes >= 100, "the writers barely ran: {writes} writes");
    assert!(
        local_grants >= 20 && remote_grants >= 20,
        "the lockers barely ran: {local_grants} local, {remote_grants} NLM grants"
    );
    assert_eq!(
        (violations, remote_violations),
        (0, 0),
        "writes completed inside ranges granted exclusively to other owners"
    );
}

#[test]
fn a_local_writer_cannot_take_a_share_a_client_reclaims_during_grace() {
    if !can_run() {
        return;
    }
    let mut d = Daemon::start_configured(4, &[]);
    let f = d.mnt("book.xls");
    std::fs::write(&f, b"data").unwrap();
    let fh = d.fh(&f);
    let share = |reclaim| v4::ShareArgs {
        cookie: vec![5],
        share: v4::Share {
            caller_name: "windows-pc".into(),
            fh: fh.clone(),
            oh: b"excel".to_vec(),
            mode: FshMode::DenyWrite,
            access: FshAccess::Read,
        },
        reclaim,
    };
    let call = |d: &Daemon, args: &v4::ShareArgs, proc_no| {
        let rt = rt();
        rt.block_on(async {
            let c = client(d).await;
            let r: v4::ShareRes = c.call(NLM_PROG, NLM4_VERS, proc_no, args).await.unwrap();
            r.stat
        })
    };
    // The client takes its share (and so enters the client list).
    assert_eq!(call(&d, &share(false), proc_::SHARE), v4::Stats::Granted);
    assert_eq!(local_once("os.open(p, os.O_WRONLY)", &f), "EBUSY");

    // The server restarts: its share table is empty, and the grace period
    // keeps local writers away from the share the client is about to reclaim.
    d.restart();
    let t = Instant::now();
    assert_eq!(
        local_once("os.open(p, os.O_WRONLY)", &f),
        "ENOLCK",
        "a local writer must not take a share a client may reclaim during grace"
    );
    assert_eq!(
        local_once("os.open(p, os.O_RDONLY)", &f),
        "OK",
        "a reader denying nothing is admitted during grace"
    );
    assert_eq!(
        call(&d, &share(false), proc_::SHARE),
        v4::Stats::DeniedGracePeriod,
        "a new share is refused during grace"
    );
    assert_eq!(
        call(&d, &share(true), proc_::SHARE),
        v4::Stats::Granted,
        "the client's reclaim succeeds"
    );
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "the checks above ran after the grace period ended; the machine is too slow for a 4 s grace"
    );

    // After grace the writer meets the reclaimed share as any conflict.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let r = local_once("os.open(p, os.O_WRONLY)", &f);
        if r != "ENOLCK" || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        after, "EBUSY",
        "after grace the reclaimed deny-write refuses a writer"
    );
    assert_eq!(
        call(&d, &share(true), proc_::SHARE),
        v4::Stats::DeniedGracePeriod,
        "a reclaim after grace is refused"
    );
    assert_eq!(call(&d, &share(false), proc_::UNSHARE), v4::Stats::Granted);
    assert_eq!(local_once("os.open(p, os.O_WRONLY)", &f), "OK");
}

/// A file only an NLM client named (no local process looked it up through the mount)
/// is listed by its path on the mount, found from the client's handle, and the path
/// follows a rename; a file nobody can name any more is listed by device and inode.
#[test]
fn the_listing_names_a_file_only_a_remote_client_locked() {
    if !can_run() {
        return;
    }
    let d = Daemon::start();
    let src = d.dir.path().join("export");
    std::fs::create_dir(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/remote.dat"), b"x").unwrap();
    let fh = d.fh(&src.join("sub/remote.dat"));
    let rt = rt();
    let c = rt.block_on(client(&d));
    let call = LockCall::exclusive(lock("far-client", 7, &fh, 0, 0));
    assert_eq!(rt.block_on(lock_with(&c, &call)), v4::Stats::Granted);
    let nlm_path = |d: &Daemon| {
        let rows = lock_listing(LOCKFS, &d.dir.path().join("admin.sock"));
        let row = rows
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r["kind"] == "NLM" && r["host"] == "far-client")
            .unwrap_or_else(|| panic!("no NLM row in {rows}"));
        row["path"].clone()
    };
    let canon = |p: PathBuf| {
        let parent = p.parent().unwrap().canonicalize().unwrap();
        parent.join(p.file_name().unwrap()).display().to_string()
    };
    assert_eq!(nlm_path(&d), canon(d.mnt("sub/remote.dat")));
    std::fs::rename(src.join("sub/remote.dat"), src.join("moved.dat")).unwrap();
    assert_eq!(nlm_path(&d), canon(d.mnt("moved.dat")));
    std::fs::remove_file(src.join("moved.dat")).unwrap();
    assert_eq!(
        nlm_path(&d),
        serde_json::Value::Null,
        "a removed file has no path"
    );
}
