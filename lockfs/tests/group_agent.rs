//! The lock agent's channel: `lockfs group online|offline|status` against real
//! `lockfs serve` daemons (two "nodes" on one machine, each with its own state
//! directory and address, sharing a group's storage). Run it in a private
//! network namespace: the daemons answer on 127.0.0.2 and 127.0.0.3.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use lockfs_testkit::daemon::{Daemon, Spawn};

const LOCKFS: &str = env!("CARGO_BIN_EXE_lockfs");

/// One node's daemon with group g1 (storage under `shared`) offline at start;
/// stopped (SIGTERM, then SIGKILL) when dropped.
struct Node {
    proc_: Daemon,
    socket: PathBuf,
}

impl Node {
    fn start(name: &str, addr: &str, base: &Path, shared: &Path) -> Node {
        let d = base.join(name);
        std::fs::create_dir_all(d.join("state")).unwrap();
        let cfg = format!(
            "node_name = {name:?}\nstate_dir = {state:?}\nadmin_socket = {sock:?}\n\
             [listen]\naddresses = [{addr:?}]\n\
             [[group]]\nname = \"g1\"\nstorage = {storage:?}\nserver_ids = [\"nfs-g1=127.0.0.10\"]\n\
             grace_period = 1\n\
             [[export]]\nname = \"e1\"\nsource = {src:?}\nmountpoint = {mnt:?}\ngroup = \"g1\"\n",
            state = d.join("state"),
            sock = d.join("admin.sock"),
            storage = shared.join("g1"),
            src = shared.join("g1/data"),
            mnt = d.join("mnt"),
        );
        std::fs::write(d.join("lockfs.toml"), cfg).unwrap();
        let proc_ = Spawn::serve(LOCKFS, &d.join("lockfs.toml"), "info")
            .tag(name)
            .unmounts(&d.join("mnt"))
            .spawn();
        proc_.wait_line(
            Duration::from_secs(30),
            "the daemon logs its admin socket",
            |line| {
                assert!(!line.contains("Error"), "daemon failed: {line}");
                line.contains("admin socket")
            },
        );
        Node {
            proc_,
            socket: d.join("admin.sock"),
        }
    }

    fn group(&self, args: &[&str]) -> Output {
        let mut c = Command::new(LOCKFS);
        c.arg("group").args(args).arg("--socket").arg(&self.socket);
        c.output().expect("run lockfs group")
    }

    fn status(&self) -> serde_json::Value {
        let out = self.group(&["status", "--json"]);
        assert!(out.status.success(), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == "g1")
            .cloned()
            .expect("g1 listed")
    }

    /// SIGKILL: the node crashes.
    fn kill(&mut self) {
        assert!(self.proc_.kill(), "the daemon outlived SIGKILL");
    }

    /// The line in which the daemon said how the group's last stint online ended, as it
    /// brought the group online; every line before it must not claim a crash.
    fn last_offline_line(&self) -> String {
        self.proc_
            .wait_line(Duration::from_secs(10), "the group online log line", |l| {
                l.contains("group state taken from its storage") || l.contains("for the first time")
            })
    }
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn online_offline_status_lease_and_crash() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        lockfs_testkit::skip!("the admin socket serves root only (not root)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    std::fs::create_dir_all(shared.join("g1/data")).unwrap();
    let meta = shared.join("g1/.lockfs");
    let a = Node::start("node-a", "127.0.0.2", tmp.path(), &shared);
    let mut b = Node::start("node-b", "127.0.0.3", tmp.path(), &shared);
    let s = a.status();
    assert_eq!(s["online"], false, "{s}");
    assert_eq!(s["server_ids"][0]["name"], "nfs-g1");

    ok(&a.group(&["online", "g1"]));
    let s = a.status();
    assert_eq!(
        (s["online"].clone(), s["state"].clone()),
        (true.into(), 1.into()),
        "{s}"
    );
    // A fresh storage was never online: no crash to report.
    let line = a.last_offline_line();
    assert!(
        line.contains("online for the first time") && !line.contains("WARN"),
        "{line}"
    );
    // Online on two nodes at once is refused, naming who holds it.
    let out = b.group(&["online", "g1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("online elsewhere") && err.contains("node-a"),
        "{err}"
    );
    assert_eq!(b.status()["online"], false);
    // Repeated starts and stops succeed and change nothing.
    ok(&a.group(&["online", "g1"]));
    assert_eq!(a.status()["state"], 1);
    ok(&a.group(&["offline", "g1"]));
    assert!(meta.join("clean-offline").exists());
    ok(&a.group(&["offline", "g1"]));
    assert_eq!(a.status()["online"], false);
    // A planned move.
    ok(&b.group(&["online", "g1"]));
    let s = b.status();
    assert_eq!(
        (s["online"].clone(), s["state"].clone()),
        (true.into(), 3.into()),
        "{s}"
    );
    let line = b.last_offline_line();
    assert!(line.contains("last offline was clean"), "{line}");
    assert!(!meta.join("clean-offline").exists());
    // B crashes: its lease dies with it, A takes the group, no clean record.
    b.kill();
    ok(&a.group(&["online", "g1"]));
    assert_eq!(a.status()["state"], 5);
    let line = a.last_offline_line();
    assert!(
        line.contains("did not take it offline cleanly") && line.contains("WARN"),
        "{line}"
    );
    assert!(!meta.join("clean-offline").exists());
    // Unknown groups and requests are errors.
    let out = a.group(&["online", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no group named"));
    // A daemon stopped with SIGTERM leaves its groups cleanly.
    drop(a);
    assert!(meta.join("clean-offline").exists());
}

/// MNT of `export` at `addr` (default ports), then REMOVE of `name` in its root, as root
/// (squashed: the export root must be writable by anyone); the REMOVE's status.
fn remove_over_nfs(addr: &str, export: &str, name: &str) -> u32 {
    use lockd_user::client::{ClientConfig, RpcClient};
    use lockd_user::rpc::AuthSys;
    use lockd_user::xdr::{Decoder, Encoder};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let at = |port| std::net::SocketAddr::new(addr.parse().unwrap(), port);
        let cfg = ClientConfig {
            cred: AuthSys {
                stamp: 1,
                machinename: "group-agent-test".into(),
                uid: 0,
                gid: 0,
                gids: vec![],
            }
            .to_opaque(),
            ..ClientConfig::default()
        };
        let mount = RpcClient::tcp(at(20048), cfg.clone()).await.unwrap();
        let nfs = RpcClient::tcp(at(2049), cfg).await.unwrap();
        let mut e = Encoder::new();
        e.put_string(export);
        let r = mount.call_raw(100_005, 3, 1, e.as_slice()).await.unwrap();
        let mut d = Decoder::new(&r);
        assert_eq!(d.get_u32().unwrap(), 0, "MNT {export}");
        let root = d.get_opaque(64).unwrap();
        let mut e = Encoder::new();
        e.put_opaque(&root);
        e.put_string(name);
        let r = nfs.call_raw(100_003, 3, 12, e.as_slice()).await.unwrap();
        Decoder::new(&r).get_u32().unwrap()
    })
}

/// The daemon's descriptors whose file lies under `dir`.
fn open_under(pid: u32, dir: &Path) -> Vec<PathBuf> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// A group's storage can move only if the node taking the group offline lets go of every
/// file in it: the NFS door's cached descriptors of the group's files, made by an NFS
/// client's LOOKUP and READ, are closed by `group offline` (else the cluster manager's
/// unmount of the storage fails, or kills the daemon holding it).
#[test]
fn offline_lets_go_of_the_files_nfs_clients_used() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        lockfs_testkit::skip!("the admin socket serves root only (not root)");
    }
    let have_nfs_cat = Command::new("sh")
        .args(["-c", "command -v nfs-cat"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_nfs_cat {
        lockfs_testkit::skip!("libnfs-utils (nfs-cat) is not installed: run scripts/setup.sh");
    }
    let tmp = tempfile::tempdir().unwrap();
    // Root's calls are squashed to nobody, who must reach the export.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let shared = tmp.path().join("shared");
    let data = shared.join("g1/data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), b"read over NFS\n").unwrap();
    let a = Node::start("node-a", "127.0.0.2", tmp.path(), &shared);
    let pid = a.proc_.pid().expect("the daemon's pid");
    ok(&a.group(&["online", "g1"]));
    let cat = || {
        Command::new("timeout")
            .args(["-k", "5", "30", "nfs-cat", "nfs://127.0.0.2/e1/f"])
            .output()
            .expect("run nfs-cat")
    };
    let out = cat();
    assert!(
        out.status.success() && out.stdout == b"read over NFS\n",
        "nfs-cat: {out:?}"
    );
    let held = open_under(pid, &data);
    assert!(
        held.iter().any(|p| p.ends_with("data/f")),
        "the NFS door caches the descriptor of a file it served: {held:?}"
    );
    // A file removed over NFS just before: its descriptor waits for the NFS door's
    // closing thread (which closes 16 at a time, or at its once-a-second sweep), and the
    // offline must close it too.
    std::fs::write(data.join("gone"), b"removed over NFS\n").unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_eq!(remove_over_nfs("127.0.0.2", "/e1", "gone"), 0, "REMOVE");
    assert!(!data.join("gone").exists());
    ok(&a.group(&["offline", "g1"]));
    let held = open_under(pid, &shared);
    assert!(held.is_empty(), "still open after offline: {held:?}");
    assert!(
        !cat().status.success(),
        "an offline group's files are not served"
    );
    // Online again, the group is served as before, from descriptors opened anew.
    ok(&a.group(&["online", "g1"]));
    let out = cat();
    assert!(out.status.success(), "nfs-cat after online: {out:?}");
}
