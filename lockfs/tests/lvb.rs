//! Lock value blocks through the real daemon (`lockfs serve`, a separate
//! process): `lockfs lvb get|set`, `lockfs locks`, what a daemon crash and a
//! clean restart do to stored blocks, and remote NLM hosts lost abnormally.
//!
//! Needs root and /dev/fuse; skips loudly without them. The NLM test starts
//! RPC services: run it in a private network namespace.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lockd_user::client::{ClientConfig, RpcClient};
use lockd_user::proto::nlm::v4;
use lockd_user::proto::nsm::{self, SM_PROG, SM_VERS};
use lockfs_testkit::daemon::{file_handle, fuse_missing, Daemon as TestDaemon, Spawn};
use lockfs_testkit::nlm::{lock_with, unlock_with, LockCall};

const LOCKFS: &str = env!("CARGO_BIN_EXE_lockfs");

fn can_run() -> bool {
    if let Some(why) = fuse_missing() {
        lockfs_testkit::skipping!("value-block daemon tests mount a real lockfs: {why}");
        return false;
    }
    true
}

/// A daemon over one export in `dir`, which outlives restarts.
struct Daemon {
    proc_: TestDaemon,
    dir: PathBuf,
    tcp: Option<SocketAddr>,
}

impl Daemon {
    fn start(dir: &Path) -> Daemon {
        for sub in ["export", "mnt", "state"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let cfg = format!(
            "state_dir = {state:?}\nadmin_socket = {sock:?}\ngrace_period = 0\n\
             [listen]\naddresses = [\"127.0.0.1\"]\n\
             [[export]]\nname = \"x\"\nsource = {src:?}\nmountpoint = {mnt:?}\n",
            state = dir.join("state"),
            sock = dir.join("admin.sock"),
            src = dir.join("export"),
            mnt = dir.join("mnt"),
        );
        std::fs::write(dir.join("lockfs.toml"), cfg).unwrap();
        let proc_ = Spawn::serve(LOCKFS, &dir.join("lockfs.toml"), "warn")
            .unmounts(&dir.join("mnt"))
            .start_serve(Duration::from_secs(30));
        Daemon {
            tcp: proc_.tcp(),
            proc_,
            dir: dir.to_path_buf(),
        }
    }

    fn mnt(&self, name: &str) -> PathBuf {
        self.dir.join("mnt").join(name)
    }

    /// SIGKILL, then clear the dead mount.
    fn crash(&mut self) {
        assert!(self.proc_.kill(), "the daemon outlived SIGKILL");
    }

    /// SIGTERM: unmount and stop cleanly.
    fn stop(&mut self) {
        assert!(
            self.proc_
                .stop_within(Duration::from_secs(20))
                .status
                .is_some(),
            "daemon did not stop"
        );
    }

    fn fh(&self, path: &Path) -> Vec<u8> {
        file_handle(LOCKFS, &self.dir.join("lockfs.toml"), path)
    }

    /// `lockfs locks --json` of this daemon.
    fn locks(&self) -> serde_json::Value {
        lockfs_testkit::daemon::lock_listing(LOCKFS, &self.dir.join("admin.sock"))
    }
}

/// Runs `lockfs ARGS [PATH]` with a time limit; returns stdout, panics on failure.
fn lockfs(args: &[&str], path: Option<&Path>) -> String {
    let mut c = Command::new("timeout");
    c.arg("30").arg(LOCKFS).args(args);
    if let Some(p) = path {
        c.arg(p);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "lockfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `(text, seq, valid)` from `lockfs lvb get --json`.
fn get(p: &Path) -> (String, u64, bool) {
    let j: serde_json::Value =
        serde_json::from_str(&lockfs(&["lvb", "get", "--json"], Some(p))).unwrap();
    (
        j["text"].as_str().unwrap_or("").to_string(),
        j["seq"].as_u64().unwrap(),
        j["valid"].as_bool().unwrap(),
    )
}

fn set(p: &Path, v: &str) -> (String, u64, bool) {
    let mut c = Command::new("timeout");
    c.arg("30")
        .arg(LOCKFS)
        .args(["lvb", "set", "--json"])
        .arg(p)
        .arg(v);
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "lockfs lvb set: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        j["text"].as_str().unwrap_or("").to_string(),
        j["seq"].as_u64().unwrap(),
        j["valid"].as_bool().unwrap(),
    )
}

/// The `(seq, valid)` `lockfs locks` shows for the block of `p`.
fn listed(d: &Daemon, p: &Path) -> Option<(u64, bool)> {
    let rows = d.locks();
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "LVB" && r["path"].as_str() == Some(&*p.to_string_lossy()))
        .map(|r| (r["seq"].as_u64().unwrap(), r["valid"].as_bool().unwrap()))
}

#[test]
fn a_daemon_crash_leaves_values_not_valid_and_a_clean_restart_keeps_them() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path());
    let f = d.mnt("f");
    std::fs::write(&f, b"data").unwrap();
    assert_eq!(get(&f), (String::new(), 0, true), "initial block");
    assert_eq!(set(&f, "v1"), ("v1".into(), 1, true));
    assert_eq!(get(&f), ("v1".into(), 1, true));
    assert_eq!(listed(&d, &f), Some((1, true)));
    // Too long a value is refused, and changes nothing.
    let out = Command::new(LOCKFS)
        .args(["lvb", "set"])
        .arg(&f)
        .arg("x".repeat(33))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("32 bytes"));

    d.crash();
    let mut d = Daemon::start(dir.path());
    let f = d.mnt("f");
    assert_eq!(
        get(&f),
        ("v1".into(), 1, false),
        "after a crash: kept, not-valid"
    );
    assert_eq!(listed(&d, &f), Some((1, false)));
    assert_eq!(set(&f, "v2"), ("v2".into(), 2, true));

    d.stop();
    let d = Daemon::start(dir.path());
    let f = d.mnt("f");
    assert_eq!(
        get(&f),
        ("v2".into(), 2, true),
        "after a clean stop: kept, valid"
    );
    // A crash while nobody touched the block since the restart.
    let mut d = d;
    d.crash();
    let d = Daemon::start(dir.path());
    assert_eq!(get(&d.mnt("f")), ("v2".into(), 2, false));
}

#[test]
fn a_daemon_killed_right_after_sets_keeps_the_last_value_returned() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path());
    let (f, g) = (d.mnt("f"), d.mnt("g"));
    std::fs::write(&f, b"data").unwrap();
    std::fs::write(&g, b"data").unwrap();
    // Only the first set of a file writes its marker attribute; later ones
    // are writes into the mapped store and nothing else.
    for i in 1..=5u64 {
        assert_eq!(set(&f, &format!("f{i}")), (format!("f{i}"), i, true));
    }
    assert_eq!(set(&g, "g1"), ("g1".into(), 1, true));
    d.crash();
    let d = Daemon::start(dir.path());
    assert_eq!(
        get(&d.mnt("f")),
        ("f5".into(), 5, false),
        "the last set kept"
    );
    assert_eq!(get(&d.mnt("g")), ("g1".into(), 1, false));
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn nlm(host: &str, fh: &[u8]) -> v4::Lock {
    v4::Lock {
        caller_name: host.into(),
        fh: fh.to_vec(),
        oh: format!("{host}-1").into_bytes(),
        svid: 1,
        l_offset: 0,
        l_len: 0,
    }
}

/// Waits until `lockfs locks` shows no NLM lock.
fn wait_no_nlm_locks(d: &Daemon) {
    let t0 = Instant::now();
    while d
        .locks()
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["kind"] == "NLM")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "NLM locks never went"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn remote_exclusive_holders_lost_abnormally_leave_blocks_not_valid() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path());
    let tcp = d.tcp.expect("daemon printed its NLM TCP address");
    let (f, g, h, k) = (d.mnt("f"), d.mnt("g"), d.mnt("h"), d.mnt("k"));
    for p in [&f, &g, &h, &k] {
        std::fs::write(p, b"data").unwrap();
        assert_eq!(set(p, "v1").1, 1);
    }
    let rt = rt();
    let c = rt
        .block_on(RpcClient::tcp(tcp, ClientConfig::default()))
        .unwrap();

    // A host holding an exclusive lock reboots: its SM_NOTIFY releases it.
    let (fhf, fhh) = (d.fh(&f), d.fh(&h));
    assert_eq!(
        rt.block_on(lock_with(&c, &LockCall::exclusive(nlm("host-a", &fhf)))),
        v4::Stats::Granted
    );
    assert_eq!(
        rt.block_on(lock_with(&c, &LockCall::exclusive(nlm("host-a", &fhh)))),
        v4::Stats::Granted
    );
    let notify = lockd_user::xdr::to_bytes(&nsm::StatChge {
        mon_name: "host-a".into(),
        state: 3,
    });
    rt.block_on(c.call_raw(SM_PROG, SM_VERS, nsm::proc_::NOTIFY, &notify))
        .unwrap();
    wait_no_nlm_locks(&d);
    assert_eq!(
        get(&f),
        ("v1".into(), 1, false),
        "SM_NOTIFY of an exclusive holder"
    );

    // `lockfs clear --host` of an exclusive holder.
    let fhg = d.fh(&g);
    assert_eq!(
        rt.block_on(lock_with(&c, &LockCall::exclusive(nlm("host-b", &fhg)))),
        v4::Stats::Granted
    );
    lockfs(
        &["clear", "--host", "host-b", "--socket"],
        Some(&dir.path().join("admin.sock")),
    );
    assert_eq!(
        get(&g),
        ("v1".into(), 1, false),
        "clear --host of an exclusive holder"
    );

    // An ordinary unlock, and the loss of a shared holder, keep it valid.
    let fhk = d.fh(&k);
    assert_eq!(
        rt.block_on(lock_with(&c, &LockCall::exclusive(nlm("host-c", &fhk)))),
        v4::Stats::Granted
    );
    assert_eq!(
        rt.block_on(unlock_with(&c, nlm("host-c", &fhk))),
        v4::Stats::Granted
    );
    assert_eq!(
        rt.block_on(lock_with(&c, &LockCall::shared(nlm("host-d", &fhk)))),
        v4::Stats::Granted
    );
    lockfs(
        &["clear", "--host", "host-d", "--socket"],
        Some(&dir.path().join("admin.sock")),
    );
    assert_eq!(get(&k), ("v1".into(), 1, true));

    // h was marked not-valid by the reboot but never read since: a clean
    // restart must still find it not-valid.
    d.stop();
    let d = Daemon::start(dir.path());
    assert_eq!(get(&d.mnt("h")), ("v1".into(), 1, false));
    assert_eq!(get(&d.mnt("f")), ("v1".into(), 1, false));
    assert_eq!(get(&d.mnt("k")), ("v1".into(), 1, true));
    drop(c);
}
