//! A real Linux kernel as the NFS client: `scripts/kclient/run.sh` boots Debian's kernel
//! under qemu against `lockfs serve`, and this test checks what the guest and the local
//! processes on the server's FUSE mount report: the guest mounts NFSv3 through lockfs's
//! portmapper, works with files, takes fcntl and flock locks; a local lock refuses the
//! guest's F_SETLK and grants its F_SETLKW through the GRANTED callback at the local
//! unlock; a guest lock refuses a local F_SETLK; a guest write into a locked range of a
//! mandatory file waits and lands after the unlock; and after the daemon is killed with
//! SIGKILL and started again while the guest holds a lock, the guest's kernel reclaims it
//! (the new daemon's SM_NOTIFY reaches the guest's statd) and `lockfs locks` lists it.
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
fn results(text: &str, kind: &str) -> Vec<(String, bool, String)> {
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

#[test]
fn linux_nfs_client_meets_local_locks() {
    if !can_run() {
        return;
    }
    let build = Command::new("bash")
        .arg(scripts().join("build.sh"))
        .output()
        .expect("running scripts/kclient/build.sh");
    assert!(
        build.status.success(),
        "scripts/kclient/build.sh failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );

    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = tmp.path().join("run");
    let mut child = Command::new("bash")
        .arg(scripts().join("run.sh"))
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
    // run.sh's portmapper check, the local processes' lines, the restart step's.
    let host: String = ["portmap.log", "host.log", "restart.log"]
        .iter()
        .map(|f| std::fs::read_to_string(run.join(f)).unwrap_or_default())
        .collect();
    eprintln!(
        "run.sh: {status} after {:.1}s\n{}\n{}",
        t0.elapsed().as_secs_f64(),
        console
            .lines()
            .filter(|l| l.starts_with("KC"))
            .collect::<Vec<_>>()
            .join("\n"),
        host.trim_end()
    );

    // Nothing of the run is left: no qemu, daemon or holder, and the namespaces (with
    // the FUSE mount and tap device in them) ended with their processes.
    let run_str = run.to_string_lossy().into_owned();
    let left = processes_naming(&run_str);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&run_str),
        "a mount of the run is left behind"
    );

    let guest = results(&console, "KC");
    let server = results(&host, "HOST");
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
