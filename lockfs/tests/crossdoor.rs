//! Cross-door tests: the real `lockfs serve` daemon with one export, remote
//! NLM calls over TCP on loopback, and separate local processes (python3) on
//! the FUSE mount. A remote lock must block a local fcntl lock and the
//! reverse, a remote exclusive lock on a mandatory file must block a local
//! write until UNLOCK, and an NLM SHARE deny-write must block a local
//! O_WRONLY open: one table behind both doors.
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

const LOCKFS: &str = env!("CARGO_BIN_EXE_lockfs");

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new("/dev/fuse").exists() {
        lockfs_testkit::skipping!("cross-door tests need root and /dev/fuse (root={root})");
        return false;
    }
    true
}

/// A running daemon; stopped with SIGTERM (then SIGKILL and a lazy unmount
/// if it does not stop) when dropped.
struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    tcp: SocketAddr,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        for sub in ["export", "mnt", "state"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        let cfg = format!(
            "state_dir = {state:?}\nadmin_socket = {sock:?}\ngrace_period = 0\n\
             [[export]]\nname = \"x\"\nsource = {src:?}\nmountpoint = {mnt:?}\nmandatory = \"file\"\n",
            state = d.join("state"),
            sock = d.join("admin.sock"),
            src = d.join("export"),
            mnt = d.join("mnt"),
        );
        std::fs::write(d.join("lockfs.toml"), cfg).unwrap();
        let mut child = Command::new(LOCKFS)
            .arg("serve")
            .arg("--config")
            .arg(d.join("lockfs.toml"))
            .env("RUST_LOG", "warn")
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting lockfs serve");
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[daemon] {line}");
                let _ = tx.send(line);
            }
        });
        let mut tcp = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("daemon did not become ready in 30 s");
            if let Some(rest) = line.split("tcp [").nth(1) {
                tcp = rest.split(']').next().and_then(|a| a.parse().ok());
            }
            if line.contains("admin socket") {
                break;
            }
        }
        Daemon {
            child,
            dir,
            tcp: tcp.expect("daemon printed its NLM TCP address"),
        }
    }

    fn mnt(&self, name: &str) -> PathBuf {
        self.dir.path().join("mnt").join(name)
    }

    fn fh(&self, path: &Path) -> Vec<u8> {
        let out = Command::new(LOCKFS)
            .arg("fh")
            .arg("--config")
            .arg(self.dir.path().join("lockfs.toml"))
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "lockfs fh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let hex = String::from_utf8(out.stdout).unwrap();
        let hex = hex.trim();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let mnt = self.dir.path().join("mnt");
        let mounted = std::fs::read_to_string("/proc/mounts")
            .map(|m| m.contains(&*mnt.to_string_lossy()))
            .unwrap_or(false);
        if mounted {
            let _ = Command::new("umount").arg("-l").arg(&mnt).status();
            if !std::thread::panicking() {
                panic!("the daemon left {} mounted after SIGTERM", mnt.display());
            }
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

async fn nlm_lock(c: &RpcClient, l: v4::Lock) -> v4::Stats {
    let args = v4::LockArgs {
        cookie: vec![1],
        block: false,
        exclusive: true,
        alock: l,
        reclaim: false,
        state: 1,
    };
    let r: v4::Res = c
        .call(NLM_PROG, NLM4_VERS, proc_::LOCK, &args)
        .await
        .unwrap();
    r.stat
}

async fn nlm_unlock(c: &RpcClient, l: v4::Lock) -> v4::Stats {
    let args = v4::UnlockArgs {
        cookie: vec![2],
        alock: l,
    };
    let r: v4::Res = c
        .call(NLM_PROG, NLM4_VERS, proc_::UNLOCK, &args)
        .await
        .unwrap();
    r.stat
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
        rt.block_on(nlm_lock(&c, remote.clone())),
        v4::Stats::Granted
    );
    assert_eq!(
        local_once(TRY_LOCK, &f),
        "EAGAIN",
        "a remote lock must block a local fcntl lock"
    );
    assert_eq!(
        rt.block_on(nlm_unlock(&c, remote.clone())),
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
    assert_eq!(rt.block_on(nlm_lock(&c, remote.clone())), v4::Stats::Denied);
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
        rt.block_on(nlm_lock(&c, remote.clone())),
        v4::Stats::Granted
    );
    assert_eq!(rt.block_on(nlm_unlock(&c, remote)), v4::Stats::Granted);
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
        rt.block_on(nlm_lock(&c, remote.clone())),
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
    assert_eq!(rt.block_on(nlm_unlock(&c, remote)), v4::Stats::Granted);
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
    assert_eq!(rt.block_on(nlm_lock(&c, gone)), v4::Stats::Granted);
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
