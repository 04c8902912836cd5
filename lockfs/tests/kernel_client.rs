//! A real Linux kernel as the NFS client: `scripts/kclient/run.sh` boots Debian's kernel
//! under qemu against `lockfs serve`, and this test checks what the guest and the local
//! processes on the server's FUSE mount report: the guest mounts NFSv3 through lockfs's
//! portmapper, works with files, reads whole a file the server wrote (large READs sent from
//! the server's page cache), takes fcntl and flock locks; a local lock refuses the
//! guest's F_SETLK and grants its F_SETLKW through the GRANTED callback at the local
//! unlock; a guest lock refuses a local F_SETLK; a guest write into a locked range of a
//! mandatory file waits and lands after the unlock; a second NLM host on the server side
//! (hostside.py, from the server's own address) holds a file: the guest's F_GETLK sees
//! its lock, F_SETLK is refused, F_SETLKW blocks until interrupted, and a blocked
//! F_SETLKW is granted through the GRANTED callback when that host unlocks; and after
//! the daemon is killed with SIGKILL and started again while the guest holds a lock, the
//! guest's kernel reclaims it (the new daemon's SM_NOTIFY reaches the guest's statd) and
//! `lockfs locks` lists it.
//! A second run moves a service group between two daemons under the guest (see
//! `linux_nfs_client_reclaims_after_group_failover`).
//!
//! Needs root, /dev/fuse and /dev/net/tun; `scripts/kclient/build.sh` (run by
//! `scripts/setup.sh`, and again here: it does nothing when the guest is up to date)
//! installs qemu and builds the guest. The run makes its own network, mount and PID
//! namespaces and takes about half a minute of TCG emulation.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LOCKFS: &str = env!("CARGO_BIN_EXE_lockfs");
/// The guest's own budget (run.sh stops everything 90 s after it at the latest).
const GUEST_LIMIT_SECS: u64 = 120;
/// This test's last resort if run.sh itself does not return.
const RUN_DEADLINE: Duration = Duration::from_secs(240);

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kclient")
}

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let fuse = Path::new("/dev/fuse").exists();
    let tun = Path::new("/dev/net/tun").exists();
    if !(root && fuse && tun) {
        lockfs_testkit::skipping!(
            "the kernel-client test needs root, /dev/fuse and /dev/net/tun (root={root} fuse={fuse} tun={tun})"
        );
        return false;
    }
    true
}

/// The result lines of one kind ("KC" from the guest, "HOST" from the server side):
/// (name, ok, detail).
fn results(text: &str, kind: &str) -> Lines {
    text.lines()
        .filter_map(|l| {
            let mut w = l.trim_end().splitn(4, ' ');
            if w.next()? != kind {
                return None;
            }
            let name = w.next()?.to_string();
            let status = w.next()?;
            Some((name, status == "ok", w.next().unwrap_or("").to_string()))
        })
        .collect()
}

fn expect_ok<'a>(lines: &'a [(String, bool, String)], name: &str) -> &'a str {
    let Some((_, ok, detail)) = lines.iter().find(|(n, _, _)| n == name) else {
        panic!("no result line for {name}");
    };
    assert!(*ok, "{name} failed: {detail}");
    detail
}

/// Processes whose command line names `needle` (qemu, the daemon, the holder of a run).
fn processes_naming(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(format!("{}: {cmd}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

/// One run of scripts/kclient/run.sh in MODE, finished and checked for leftovers.
struct Run {
    /// Keeps the run directory until the test ends.
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    status: std::process::ExitStatus,
    console: String,
    /// The server side's lines: run.sh's own checks, hostside.py, the restart and
    /// failover steps.
    host: String,
}

/// Result lines of one side: (name, passed, detail).
type Lines = Vec<(String, bool, String)>;

impl Run {
    /// The guest's and the server side's result lines, once the guest is known to
    /// have finished and no check on either side failed.
    fn finished(&self) -> (Lines, Lines) {
        finished(&self.console, &self.host)
    }
}

fn finished(console: &str, host: &str) -> (Lines, Lines) {
    let guest = results(console, "KC");
    let server = results(host, "HOST");
    assert!(
        console.lines().any(|l| l.trim_end() == "KC_END"),
        "the guest did not finish: {guest:?}"
    );
    let failed: Vec<_> = guest
        .iter()
        .chain(&server)
        .filter(|(_, ok, _)| !ok)
        .collect();
    assert!(failed.is_empty(), "failures: {failed:?}");
    (guest, server)
}

fn build_guest() {
    let build = Command::new("bash")
        .arg(scripts().join("build.sh"))
        .output()
        .expect("running scripts/kclient/build.sh");
    assert!(
        build.status.success(),
        "scripts/kclient/build.sh failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
}

fn run_guest(mode: &str) -> Run {
    build_guest();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = tmp.path().join("run");
    let mut child = Command::new("bash")
        .arg(scripts().join("run.sh"))
        .args(["-m", mode])
        .arg("-d")
        .arg(&run)
        .arg("-l")
        .arg(GUEST_LIMIT_SECS.to_string())
        .arg(LOCKFS)
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("starting scripts/kclient/run.sh");
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > RUN_DEADLINE {
            // SAFETY: kill has no memory preconditions; the group is run.sh's own.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            panic!("run.sh did not return within {RUN_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let console = std::fs::read_to_string(run.join("console.log")).unwrap_or_default();
    let host: String = ["portmap.log", "host.log", "restart.log", "failover.log"]
        .iter()
        .map(|f| std::fs::read_to_string(run.join(f)).unwrap_or_default())
        .collect();
    eprintln!(
        "run.sh -m {mode}: {status} after {:.1}s\n{}\n{}",
        t0.elapsed().as_secs_f64(),
        console
            .lines()
            .filter(|l| l.starts_with("KC"))
            .collect::<Vec<_>>()
            .join("\n"),
        host.trim_end()
    );

    // Nothing of the run is left: no qemu, daemon or holder, and the namespaces (with
    // the FUSE mounts, the tap device and the nodes' namespaces in them) ended with
    // their processes.
    let run_str = run.to_string_lossy().into_owned();
    let left = processes_naming(&run_str);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&run_str),
        "a mount of the run is left behind"
    );
    Run {
        _tmp: tmp,
        dir: run,
        status,
        console,
        host,
    }
}

#[test]
fn linux_nfs_client_meets_local_locks() {
    if !can_run() {
        return;
    }
    let Run {
        _tmp: _keep,
        dir: run,
        status,
        console,
        host,
    } = run_guest("locks");

    let (guest, server) = finished(&console, &host);

    // Mounted with NFSv3 and no ports given: the kernel found MOUNT and NFS (and later
    // NLM, on a port of the moment) through the portmapper on port 111, which in the
    // run's namespace is lockfs's own.
    assert!(expect_ok(&server, "portmap").contains("served by lockfs"));
    let mount = expect_ok(&guest, "mount");
    assert!(mount.contains("-o vers=3,"), "{mount}");
    assert!(!mount.contains("port="), "{mount}");

    expect_ok(&guest, "files");
    assert_eq!(
        std::fs::read_to_string(run.join("export/kc-files/keep")).unwrap(),
        "written by the kernel client\n"
    );
    assert!(!run.join("export/kc-files/a").exists() && !run.join("export/kc-files/b").exists());
    // A file the server wrote, read whole by the guest: its large READs are sent from the
    // server's page cache (`sendfile`), its last with padding.
    expect_ok(&guest, "served");

    for name in ["setlk", "setlkw", "flock"] {
        expect_ok(&guest, name);
    }

    // Cross-door, local holder: F_SETLK refused, F_SETLKW granted at the local unlock.
    assert!(expect_ok(&guest, "xdoor-setlk").contains("temporarily unavailable"));
    expect_ok(&guest, "xdoor-setlkw");
    let granted = expect_ok(&server, "xdoor-granted");
    let secs: f64 = granted
        .split_whitespace()
        .find_map(|w| w.strip_suffix('s').and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no time in {granted:?}"));
    // The client polls again only after 30 s: a grant this soon came by GRANTED.
    assert!(
        secs < 1.0,
        "the guest's F_SETLKW returned {secs}s after the local unlock"
    );

    // Cross-door, guest holder: a local F_SETLK on the FUSE mount is refused, then granted.
    assert!(expect_ok(&guest, "reverse").ends_with("EAGAIN"));
    assert!(expect_ok(&server, "rev-held").ends_with("EAGAIN"));
    assert!(expect_ok(&server, "rev-unlocked").ends_with("GRANTED"));

    // Mandatory file: the write waited for the local unlock and then landed.
    expect_ok(&guest, "mand");
    expect_ok(&server, "mand-unlock");
    assert_eq!(
        std::fs::read(run.join("export/mand")).unwrap(),
        b"guestr-data"
    );

    // Another NLM host holds "hold": the guest's kernel meets a conflict that only the
    // server knows of. TEST reports the holder (the kernel shows its svid as a negative
    // pid), LOCK is denied, a blocking LOCK waits (and is cancelled by the signal), and
    // the holder's UNLOCK grants the next blocked LOCK by the GRANTED callback: the
    // client would poll again only after 30 s.
    assert!(expect_ok(&server, "srvhold-lock").contains("status 0"));
    let getlk = expect_ok(&guest, "srvhold-getlk");
    assert!(getlk.contains("type=W start=0 len=0 pid=-4242"), "{getlk}");
    assert!(expect_ok(&guest, "srvhold-setlk").contains("temporarily unavailable"));
    expect_ok(&guest, "srvhold-setlkw");
    assert!(expect_ok(&server, "srvhold-unlock").contains("status 0"));
    let granted = expect_ok(&guest, "srvhold-granted");
    let secs: f64 = granted
        .split_whitespace()
        .find_map(|w| w.strip_suffix('s').and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no time in {granted:?}"));
    assert!(
        secs < 5.0,
        "the guest's blocked F_SETLKW returned {secs}s after the release was asked"
    );

    // Restart: killed with SIGKILL while the guest held a lock; the new daemon's
    // SM_NOTIFY made the guest's kernel reclaim it, and `lockfs locks` lists it again.
    expect_ok(&server, "restart");
    let reclaim = expect_ok(&server, "reclaim");
    assert!(
        reclaim.contains("kguest") && reclaim.contains("NLM held WRITE"),
        "{reclaim}"
    );
    assert!(expect_ok(&guest, "restart").contains("RECLAIMED; unlock ok"));

    assert!(status.success(), "run.sh: {status}");
    assert!(console.contains("KC_DONE failures=0"));
}

/// A service group moves to another node under the kernel client's feet: two daemons
/// (nodes A and B, network namespaces of their own) share g1's storage; the guest locks
/// a file through g1's server ID on A; A dies by SIGKILL, the address moves to B and g1
/// comes online there. B's SM_NOTIFY names g1's server ID with a state above A's, the
/// guest's kernel reclaims while g1 is in grace, and B's `lockfs locks` lists the lock.
#[test]
fn linux_nfs_client_reclaims_after_group_failover() {
    if !can_run() {
        return;
    }
    let r = run_guest("failover");
    let (guest, server) = r.finished();

    // Mounted through the group's server ID, on node A.
    assert!(expect_ok(&guest, "mount").contains("10.77.0.10:"));
    expect_ok(&server, "online-a");
    assert!(expect_ok(&server, "held-a").contains("kguest"));

    // A killed, g1 online on B with a state above A's ...
    let online = expect_ok(&server, "online-b");
    let state = |key: &str| -> i64 {
        online
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {online:?}"))
    };
    let (state_a, state_b) = (state("state_a="), state("state_b="));
    assert!(state_b > state_a, "{online}");
    // ... whose SM_NOTIFY reached the guest's statd in g1's name, with B's state ...
    let notify = format!("Received SM_NOTIFY from nfs-g1, state: {state_b}");
    assert!(
        r.console
            .lines()
            .any(|l| l.starts_with("KC_STATD") && l.contains(&notify)),
        "the guest's statd did not log {notify:?}"
    );
    // ... and the guest's kernel reclaimed during g1's grace: B lists the lock while g1
    // is still in grace (a new lock would have been refused then).
    let reclaim = expect_ok(&server, "reclaim-b");
    assert!(
        reclaim.contains("g1 still in grace")
            && reclaim.contains("kguest")
            && reclaim.contains("NLM held WRITE"),
        "{reclaim}"
    );
    assert!(expect_ok(&guest, "failover").contains("RECLAIMED; unlock ok"));
    assert!(r.dir.join("shared/g1/data/failover").exists());
    assert!(r.status.success(), "run.sh: {}", r.status);
    assert!(r.console.contains("KC_DONE failures=0"));
}
