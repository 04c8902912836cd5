//! `lockfs mount`, `lockfs locks`, `lockfs share-open` and the mount helper, run
//! as real processes against a real mount.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use lockfs_testkit::daemon::{lock_listing, Daemon as TestDaemon, Spawn};

const LOCKFS: &str = env!("CARGO_BIN_EXE_lockfs");
const LIMIT: Duration = Duration::from_secs(20);

fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() {
        true
    } else {
        lockfs_testkit::skipping!("lockfs mount test: /dev/fuse is absent on this machine");
        false
    }
}

fn is_mounted(p: &Path) -> bool {
    let want = p.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.len() > 4 && f[4] == want && l.contains(" - fuse.lockfs ")
        })
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command with a time limit.
fn run(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t0.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("command timed out: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A `lockfs mount` daemon, stopped and unmounted when dropped.
struct Daemon {
    proc_: TestDaemon,
}

impl Daemon {
    fn start(src: &Path, mnt: &Path, opts: &str) -> Daemon {
        let mut cmd = Command::new(LOCKFS);
        cmd.arg("mount").arg(src).arg(mnt).args(["-o", opts]);
        let mut d = Daemon {
            proc_: Spawn::new(cmd).unmounts(mnt).spawn(),
        };
        wait_until("the mount", || {
            if let Some(st) = d.proc_.exited() {
                panic!("lockfs mount exited early: {st}");
            }
            is_mounted(mnt)
        });
        d
    }

    /// SIGTERM; returns the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        self.proc_
            .terminate_within(LIMIT)
            .expect("daemon ignored SIGTERM")
    }
}

/// A python process holding an fcntl write lock on bytes 0..10 of `path`.
fn python_locker(path: &Path) -> Child {
    // It ends when its stdin closes, at the latest when the test process goes.
    let mut c = Command::new("python3")
        .arg("-c")
        .arg(
            "import fcntl,sys\n\
             f=open(sys.argv[1],'r+')\n\
             fcntl.lockf(f, fcntl.LOCK_EX, 10, 0)\n\
             print('locked', flush=True)\n\
             sys.stdin.read()\n",
        )
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    c
}

#[test]
fn mount_list_share_open_and_sigterm() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, mnt) = (dir.path().join("src"), dir.path().join("mnt"));
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    std::fs::write(src.join("f"), vec![b'x'; 100]).unwrap();
    let socket = dir.path().join("admin.sock");
    let mut d = Daemon::start(
        &src,
        &mnt,
        &format!("mandatory=file,socket={}", socket.display()),
    );
    let f = mnt.join("f");

    let mut locker = python_locker(&f);
    let rows = lock_listing(LOCKFS, &socket);
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "POSIX")
        .unwrap_or_else(|| panic!("no POSIX lock in {rows}"));
    assert_eq!(row["pid"], locker.id());
    assert_eq!(row["command"], "python3");
    assert_eq!(row["mode"], "WRITE");
    assert_eq!(
        (row["start"].as_u64(), row["end"].as_u64()),
        (Some(0), Some(9))
    );
    assert_eq!(row["path"], f.display().to_string());
    // The table form names the same.
    let out = run(Command::new(LOCKFS)
        .args(["locks", "--socket"])
        .arg(&socket));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("python3") && text.contains("POSIX"), "{text}");
    drop(locker.stdin.take());
    locker.wait().unwrap();

    // share-open: deny writers while the command runs.
    let mut holder = Command::new(LOCKFS)
        .args(["share-open", "--access", "r", "--deny", "w"])
        .arg(&f)
        .args([
            "--",
            "sh",
            "-c",
            "echo held; read x <&0; cat <&3 >/dev/null",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "held");
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EBUSY));
    std::fs::read(&f).expect("readers are still welcome");
    let rows = lock_listing(LOCKFS, &socket);
    assert!(
        rows.as_array().unwrap().iter().any(|r| r["kind"] == "SHARE"
            && r["deny"] == "W"
            && r["pid"] == holder.id()
            && r["command"] == "sh"),
        "{rows}"
    );
    // A second deny-write share-open while the first holds fails clearly.
    let out = run(Command::new(LOCKFS)
        .args(["share-open", "--access", "w", "--deny", "-"])
        .arg(&f)
        .args(["--", "true"]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("conflicts"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    writeln!(holder.stdin.take().unwrap(), "go").unwrap();
    assert!(holder.wait().unwrap().success());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .expect("writers may open once the holder is gone");

    let st = d.stop();
    assert!(st.success(), "{st}");
    assert!(!is_mounted(&mnt), "SIGTERM unmounted");
    assert!(!socket.exists(), "admin socket removed");
}

#[test]
fn fstab_style_mount_through_the_helper() {
    if !fuse_available() {
        return;
    }
    let have = |c: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("unshare") || !have("mount") {
        lockfs_testkit::skipping!("mount helper test: unshare or mount missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, mnt, sbin) = (
        dir.path().join("src"),
        dir.path().join("mnt"),
        dir.path().join("sbin"),
    );
    for d in [&src, &mnt, &sbin] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(src.join("f"), b"hello").unwrap();
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/mount.fuse.lockfs");
    std::fs::copy(&helper, sbin.join("mount.fuse.lockfs")).unwrap();
    let socket = dir.path().join("admin.sock");
    // In a private mount namespace, the helper directory hides /usr/sbin (where
    // mount(8) looks for helpers), so nothing is installed on the machine. The
    // mount lives only in that namespace and is unmounted before it ends.
    let script = format!(
        "set -e
mount --make-rprivate /
mount --bind {sbin} /usr/sbin
LOCKFS={lockfs} LOCKFS_LOG={log} mount -t fuse.lockfs -o defaults,mandatory=file,socket={socket} {src} {mnt}
grep -q ' {mnt} .* - fuse.lockfs ' /proc/self/mountinfo
cat {mnt}/f; echo
{lockfs} locks --socket {socket} >/dev/null
umount {mnt}
i=0; while [ -e {socket} ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
[ ! -e {socket} ]
echo done",
        sbin = sbin.display(),
        lockfs = LOCKFS,
        socket = socket.display(),
        log = dir.path().join("mount.log").display(),
        src = src.display(),
        mnt = mnt.display(),
    );
    let out =
        run(Command::new("timeout").args(["-k", "5", "30", "unshare", "-m", "sh", "-c", &script]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "helper mount failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "hello\ndone\n");
    assert!(!is_mounted(&mnt));
}
