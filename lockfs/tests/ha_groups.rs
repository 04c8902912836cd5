//! Service groups seen by NLM clients: real `lockfs serve` daemons with moving groups
//! (storage and server IDs), real NLM clients with their own status monitors.
//!
//! - A client's reboot notice is routed by the server ID it was sent to: a notice to
//!   g2's server ID frees the client's g2 locks and leaves its g1 locks alone; a
//!   simulated crash restarts only the groups served here.
//! - A group's exports are mounted through FUSE when it comes online and released when it
//!   goes offline, cut off with a clear error (ENOTCONN) for a process still using them.
//! - On SIGTERM a group's mount is released before its offline is recorded and its lease
//!   let go: the daemon is held (fanotify) as it records the offline, and the test sees
//!   the mount gone and the lease still held.
//! - Under a real single-node Corosync and Pacemaker (private namespaces, state on
//!   tmpfs), the agent is started as a resource, monitored, and stopped by a ban: the
//!   group goes online and offline with it.
//! - The OCF resource agent (scripts/ocf/lockfs-group) gives the OCF exit codes, starts
//!   and stops idempotently, and `ocf-tester` accepts it, against a running daemon.
//! - Two nodes (daemons in network namespaces of their own, a shared directory as the
//!   groups' storage, clients with status monitors in a third namespace). Crash: node A,
//!   serving g1, is killed; g1 comes online on B: g1's clients are notified in g1's name
//!   from its address with a higher state, reclaim during g1's grace, and a new g1 lock
//!   waits for the grace to end (one of them a libnfs client in a namespace of its own,
//!   its status monitor and portmapper libnfs server contexts), while g2 on B keeps its locks and grants LOCK+UNLOCK
//!   throughout. Planned move: g2 offline on B, online on A, the same, g1 undisturbed.
//!   A group online on two nodes at once is refused. A client's reboot notice sent over
//!   UDP to g2's server ID, on a node serving both groups and listening on the wildcard
//!   address, frees its g2 locks only. (A Linux kernel client through the same kind of
//!   crash, under qemu: kernel_client.rs.)
//!
//! Each scenario re-runs this test binary in a private network namespace (`unshare -n`),
//! where the daemon's fixed ports and the loopback addresses it answers on are its own.
//! Needs root, /dev/fuse and unshare; skips loudly without them.

use lockd_user::client::{ClientConfig, RpcClient};
use lockd_user::proto::nlm::{proc_, v4, NLM4_VERS, NLM_PROG};
use lockd_user::proto::nsm::{self, StatChge, SM_PROG, SM_VERS};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const LOCKFS: &str = env!("CARGO_BIN_EXE_lockfs");
const PORT: u16 = 4045;

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let unshare = Command::new("unshare")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !root || !Path::new("/dev/fuse").exists() || !unshare {
        lockfs_testkit::skipping!(
            "the service group tests need root, /dev/fuse and unshare (root={root})"
        );
        return false;
    }
    true
}

/// Runs `test` (an ignored test of this file) in a private network namespace.
fn in_private_netns(test: &str, limit: Duration) {
    lockfs_testkit::rerun::Rerun::new(test, limit).run();
}

/// A `lockfs serve` daemon, its directory and log; stopped with SIGTERM on drop.
struct Daemon {
    child: Child,
    dir: PathBuf,
    log: mpsc::Receiver<String>,
}

/// One group of a daemon's configuration: its name, server ID and export.
struct GroupSpec<'a> {
    name: &'a str,
    server_id: (&'a str, &'a str),
    online_at_start: bool,
    grace_secs: u64,
}

impl Daemon {
    /// Starts `lockfs serve` named `name`, answering on `listen`, with the given groups;
    /// group G's storage is `shared/G`, its export `shared/G/data`.
    fn start(
        name: &str,
        dir: &Path,
        shared: &Path,
        listen: &[&str],
        groups: &[GroupSpec<'_>],
    ) -> Daemon {
        Self::start_in(None, name, dir, shared, listen, groups)
    }

    /// [`Self::start`] in the named network namespace `netns`, when given.
    fn start_in(
        netns: Option<&str>,
        name: &str,
        dir: &Path,
        shared: &Path,
        listen: &[&str],
        groups: &[GroupSpec<'_>],
    ) -> Daemon {
        std::fs::create_dir_all(dir.join("state")).unwrap();
        let mut cfg = format!(
            "node_name = {name:?}\nstate_dir = {state:?}\nadmin_socket = {sock:?}\n\
             [listen]\naddresses = {listen:?}\nport = {PORT}\n",
            state = dir.join("state"),
            sock = dir.join("admin.sock"),
        );
        for g in groups {
            let (id_name, id_addr) = g.server_id;
            std::fs::create_dir_all(shared.join(g.name).join("data")).unwrap();
            std::fs::create_dir_all(dir.join(format!("mnt-{}", g.name))).unwrap();
            cfg += &format!(
                "[[group]]\nname = {n:?}\nstorage = {storage:?}\n\
                 server_ids = [\"{id_name}={id_addr}\"]\ngrace_period = {grace}\n\
                 online_at_start = {online}\n\
                 [[export]]\nname = \"e-{n}\"\nsource = {src:?}\nmountpoint = {mnt:?}\n\
                 group = {n:?}\n",
                n = g.name,
                storage = shared.join(g.name),
                src = shared.join(g.name).join("data"),
                mnt = dir.join(format!("mnt-{}", g.name)),
                online = g.online_at_start,
                grace = g.grace_secs,
            );
        }
        std::fs::write(dir.join("lockfs.toml"), cfg).unwrap();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, LOCKFS]);
                c
            }
            None => Command::new(LOCKFS),
        };
        let mut child = cmd
            .arg("serve")
            .arg("--config")
            .arg(dir.join("lockfs.toml"))
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting lockfs serve");
        let (tx, log) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let tag = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
                let _ = tx.send(line);
            }
        });
        let d = Daemon {
            child,
            dir: dir.to_path_buf(),
            log,
        };
        d.wait_log("admin socket", Duration::from_secs(60));
        d
    }

    /// Waits for a log line containing `what`.
    fn wait_log(&self, what: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let line = self
                .log
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("the daemon never logged {what:?}"));
            assert!(!line.contains("Error:"), "daemon failed: {line}");
            if line.contains(what) {
                return;
            }
        }
    }

    /// `lockfs group ARGS` against this daemon; it must succeed.
    fn group(&self, args: &[&str]) -> String {
        let out = self.group_raw(args);
        assert!(out.status.success(), "lockfs group {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// `lockfs group ARGS` against this daemon, as it went.
    fn group_raw(&self, args: &[&str]) -> std::process::Output {
        Command::new(LOCKFS)
            .arg("group")
            .args(args)
            .arg("--socket")
            .arg(self.dir.join("admin.sock"))
            .env("RUST_BACKTRACE", "0")
            .env("RUST_LIB_BACKTRACE", "0")
            .output()
            .unwrap()
    }

    /// The node crashes.
    fn kill(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// `lockfs group status --json`, by group name.
    fn groups(&self) -> serde_json::Map<String, serde_json::Value> {
        let v: serde_json::Value =
            serde_json::from_str(&self.group(&["status", "--json"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|g| (g["name"].as_str().unwrap().to_string(), g.clone()))
            .collect()
    }

    fn fh(&self, group: &str, file: &str, shared: &Path) -> Vec<u8> {
        let path = shared.join(group).join("data").join(file);
        if !path.exists() {
            std::fs::write(&path, vec![0u8; 4096]).unwrap();
        }
        let out = Command::new(LOCKFS)
            .arg("fh")
            .arg("--config")
            .arg(self.dir.join("lockfs.toml"))
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "lockfs fh: {out:?}");
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
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("mnt-") {
                    let _ = Command::new("umount").arg("-l").arg(e.path()).output();
                }
            }
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An NLM client host: its name and the address its calls come from.
struct Host {
    name: String,
    ip: IpAddr,
}

impl Host {
    fn new(name: &str, ip: &str) -> Host {
        Host {
            name: name.into(),
            ip: ip.parse().unwrap(),
        }
    }

    fn config(&self) -> ClientConfig {
        ClientConfig {
            retransmit: Duration::from_millis(300),
            total_timeout: Duration::from_secs(5),
            local_addr: Some(SocketAddr::new(self.ip, 0)),
            ..ClientConfig::default()
        }
    }

    fn lock_of(&self, fh: &[u8], off: u64) -> v4::Lock {
        v4::Lock {
            caller_name: self.name.clone(),
            fh: fh.to_vec(),
            oh: format!("{}-owner", self.name).into_bytes(),
            svid: 7,
            l_offset: off,
            l_len: 10,
        }
    }

    /// A non-blocking exclusive LOCK of 10 bytes at `off` sent to `server`.
    async fn lock(&self, server: &str, fh: &[u8], off: u64, reclaim: bool) -> v4::Stats {
        let c = RpcClient::tcp(sock(server), self.config()).await.unwrap();
        let r: v4::Res = c
            .call(
                NLM_PROG,
                NLM4_VERS,
                proc_::LOCK,
                &v4::LockArgs {
                    cookie: vec![1],
                    block: false,
                    exclusive: true,
                    alock: self.lock_of(fh, off),
                    reclaim,
                    state: 1,
                },
            )
            .await
            .expect("LOCK answered");
        r.stat
    }

    /// UNLOCK of the 10 bytes at `off`, sent to `server`.
    async fn unlock(&self, server: &str, fh: &[u8], off: u64) -> v4::Stats {
        let c = RpcClient::tcp(sock(server), self.config()).await.unwrap();
        let r: v4::Res = c
            .call(
                NLM_PROG,
                NLM4_VERS,
                proc_::UNLOCK,
                &v4::UnlockArgs {
                    cookie: vec![2],
                    alock: self.lock_of(fh, off),
                },
            )
            .await
            .expect("UNLOCK answered");
        r.stat
    }

    /// SM_NOTIFY to `server`'s status monitor: this host rebooted with `state`.
    async fn notify(&self, server: &str, state: i32) {
        let c = RpcClient::udp(sock(server), self.config()).await.unwrap();
        c.call_raw(
            SM_PROG,
            SM_VERS,
            nsm::proc_::NOTIFY,
            &lockd_user::xdr::to_bytes(&StatChge {
                mon_name: self.name.clone(),
                state,
            }),
        )
        .await
        .expect("SM_NOTIFY answered");
    }
}

fn sock(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), PORT)
}

/// Whether the group's client list on its storage has an entry for `host`.
fn listed(shared: &Path, group: &str, host: &str) -> bool {
    let dir = shared.join(group).join(".lockfs").join("clients");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .any(|e| {
            e.path().is_file() && std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(host))
        })
}

#[test]
fn a_reboot_notice_to_one_server_id_frees_that_group_only() {
    if can_run() {
        in_private_netns("notice_routing_in_namespace", Duration::from_secs(120));
    }
}

#[test]
#[ignore = "run by a_reboot_notice_to_one_server_id_frees_that_group_only in a private network namespace"]
fn notice_routing_in_namespace() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    let (g1_id, g2_id) = ("127.0.0.10", "127.0.0.11");
    let d = Daemon::start(
        "node-a",
        &tmp.path().join("a"),
        &shared,
        &["127.0.0.1", g1_id, g2_id],
        &[
            GroupSpec {
                name: "g1",
                server_id: ("nfs-g1", g1_id),
                online_at_start: true,
                grace_secs: 3,
            },
            GroupSpec {
                name: "g2",
                server_id: ("nfs-g2", g2_id),
                online_at_start: true,
                grace_secs: 3,
            },
        ],
    );
    let (f1, f2) = (d.fh("g1", "f", &shared), d.fh("g2", "f", &shared));
    let rebooter = Host::new("rebooter", "127.0.0.5");
    let other = Host::new("other", "127.0.0.6");
    let rt = rt();
    rt.block_on(async {
        for off in [0, 100] {
            assert_eq!(
                rebooter.lock(g1_id, &f1, off, false).await,
                v4::Stats::Granted
            );
            assert_eq!(
                rebooter.lock(g2_id, &f2, off, false).await,
                v4::Stats::Granted
            );
        }
        assert_eq!(other.lock(g1_id, &f1, 0, false).await, v4::Stats::Denied);
        assert_eq!(other.lock(g2_id, &f2, 0, false).await, v4::Stats::Denied);
        assert!(listed(&shared, "g1", "rebooter") && listed(&shared, "g2", "rebooter"));

        // It rebooted and tells g2's server ID only (the server it knows g2 by).
        rebooter.notify(g2_id, 3).await;
        for off in [0, 100] {
            assert_eq!(
                other.lock(g2_id, &f2, off, false).await,
                v4::Stats::Granted,
                "its g2 lock at {off} is freed"
            );
            assert_eq!(
                other.lock(g1_id, &f1, off, false).await,
                v4::Stats::Denied,
                "its g1 lock at {off} stays"
            );
        }
        assert!(!listed(&shared, "g2", "rebooter"), "it leaves g2's list");
        assert!(listed(&shared, "g1", "rebooter"), "it stays on g1's list");

        // Now it tells g1's server ID too: its g1 locks go.
        rebooter.notify(g1_id, 3).await;
        assert_eq!(other.lock(g1_id, &f1, 0, false).await, v4::Stats::Granted);
        assert!(!listed(&shared, "g1", "rebooter"));
    });

    // A simulated crash concerns the groups served here: g2, offline, is left alone (no
    // grace, no new state number in its name); g1 restarts under its own state.
    let before = d.groups();
    d.group(&["offline", "g2"]);
    let g2_state = std::fs::read_to_string(shared.join("g2/.lockfs/state")).unwrap();
    rt.block_on(async {
        let local = Host::new("local", "127.0.0.1");
        let c = RpcClient::udp(sock("127.0.0.1"), local.config())
            .await
            .unwrap();
        c.call_raw(SM_PROG, SM_VERS, nsm::proc_::SIMU_CRASH, &[])
            .await
            .expect("SM_SIMU_CRASH answered");
    });
    let after = d.groups();
    assert_eq!(
        (
            after["g1"]["online"].clone(),
            after["g1"]["in_grace"].clone()
        ),
        (true.into(), true.into()),
        "{after:?}"
    );
    assert!(
        after["g1"]["state"].as_i64() > before["g1"]["state"].as_i64(),
        "g1's state advances: {before:?} -> {after:?}"
    );
    assert_eq!(
        (
            after["g2"]["online"].clone(),
            after["g2"]["in_grace"].clone()
        ),
        (false.into(), false.into()),
        "{after:?}"
    );
    assert_eq!(
        std::fs::read_to_string(shared.join("g2/.lockfs/state")).unwrap(),
        g2_state,
        "g2's state on its storage is untouched"
    );
    rt.block_on(async {
        assert_eq!(
            other.lock(g1_id, &f1, 50, false).await,
            v4::Stats::DeniedGracePeriod,
            "g1 is in its grace"
        );
    });
}

/// The OCF resource agent, scripts/ocf/lockfs-group.
fn agent() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("scripts/ocf/lockfs-group")
}

/// Runs the agent's `action` for group `group` against daemon `d`; its exit code.
fn agent_action(d: &Daemon, group: &str, action: &str) -> i32 {
    let out = Command::new(agent())
        .arg(action)
        .env("OCF_ROOT", "/usr/lib/ocf")
        .env("OCF_RESKEY_group", group)
        .env("OCF_RESKEY_socket", d.dir.join("admin.sock"))
        .env("OCF_RESKEY_lockfs", LOCKFS)
        .output()
        .unwrap();
    eprintln!(
        "agent {action} {group}: {:?} {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.code().expect("the agent exited")
}

#[test]
fn ocf_tester_accepts_the_resource_agent() {
    if !Path::new("/usr/sbin/ocf-tester").exists() || !Path::new("/usr/bin/xmllint").exists() {
        lockfs_testkit::skipping!("ocf-tester (resource-agents) and xmllint (libxml2-utils) are needed; scripts/setup.sh installs them");
        return;
    }
    if can_run() {
        in_private_netns("resource_agent_in_namespace", Duration::from_secs(240));
    }
}

#[test]
#[ignore = "run by ocf_tester_accepts_the_resource_agent in a private network namespace"]
fn resource_agent_in_namespace() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    let d = Daemon::start(
        "node-a",
        &tmp.path().join("a"),
        &shared,
        &["127.0.0.1"],
        &[
            GroupSpec {
                name: "g1",
                server_id: ("nfs-g1", "127.0.0.10"),
                online_at_start: false,
                grace_secs: 3,
            },
            GroupSpec {
                name: "g2",
                server_id: ("nfs-g2", "127.0.0.11"),
                online_at_start: true,
                grace_secs: 3,
            },
        ],
    );
    // The OCF exit codes, action by action, and idempotent start and stop.
    assert_eq!(agent_action(&d, "g1", "monitor"), 7, "offline: not running");
    assert_eq!(agent_action(&d, "g1", "validate-all"), 0);
    assert_eq!(agent_action(&d, "nope", "validate-all"), 6, "unknown group");
    assert_eq!(agent_action(&d, "nope", "start"), 6);
    assert_eq!(agent_action(&d, "g1", "frobnicate"), 3);
    assert_eq!(agent_action(&d, "g1", "start"), 0);
    assert_eq!(d.groups()["g1"]["online"], true);
    assert_eq!(agent_action(&d, "g1", "start"), 0, "a repeated start");
    assert_eq!(agent_action(&d, "g1", "monitor"), 0);
    assert_eq!(agent_action(&d, "g1", "stop"), 0);
    assert_eq!(d.groups()["g1"]["online"], false);
    assert!(shared.join("g1/.lockfs/clean-offline").exists());
    assert_eq!(agent_action(&d, "g1", "stop"), 0, "a repeated stop");
    assert_eq!(agent_action(&d, "g1", "monitor"), 7);
    assert_eq!(d.groups()["g2"]["online"], true, "g2 is never touched");

    // ocf-tester runs the whole action set, meta-data validated by xmllint.
    let out = Command::new("timeout")
        .args(["180", "/usr/sbin/ocf-tester", "-n", "lockfs-g1"])
        .arg("-o")
        .arg("group=g1")
        .arg("-o")
        .arg(format!("socket={}", d.dir.join("admin.sock").display()))
        .arg("-o")
        .arg(format!("lockfs={LOCKFS}"))
        .arg(agent())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "ocf-tester failed:\n{text}");
    assert!(text.contains("passed all tests"), "{text}");
    assert_eq!(d.groups()["g2"]["online"], true, "g2 is never touched");

    // With the daemon stopped nothing is served here: stop succeeds, monitor says so.
    let sock = d.dir.join("admin.sock");
    drop(d);
    let out = Command::new(agent())
        .arg("stop")
        .env("OCF_RESKEY_group", "g1")
        .env("OCF_RESKEY_socket", &sock)
        .env("OCF_RESKEY_lockfs", LOCKFS)
        .status()
        .unwrap();
    assert_eq!(out.code(), Some(0));
    let out = Command::new(agent())
        .arg("monitor")
        .env("OCF_RESKEY_group", "g1")
        .env("OCF_RESKEY_socket", &sock)
        .env("OCF_RESKEY_lockfs", LOCKFS)
        .status()
        .unwrap();
    assert_eq!(out.code(), Some(7));
}

/// Whether something is mounted at `path`, from this process's mount table.
fn mounted(path: &Path) -> bool {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path.to_str().unwrap()))
}

/// A write lock on the first byte of `f` by this process, through the file system `f` is on.
fn write_lock(f: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed flock is a valid value; its fields are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 1;
    // SAFETY: a valid open descriptor and a valid flock for the call.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn a_group_mounts_its_exports_when_online_and_releases_them_when_offline() {
    if can_run() {
        in_private_netns("group_mounts_in_namespace", Duration::from_secs(120));
    }
}

#[test]
#[ignore = "run by a_group_mounts_its_exports_when_online_and_releases_them_when_offline in a private network namespace"]
fn group_mounts_in_namespace() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    let d = Daemon::start(
        "node-a",
        &tmp.path().join("a"),
        &shared,
        &["127.0.0.1"],
        &[
            GroupSpec {
                name: "g1",
                server_id: ("nfs-g1", "127.0.0.10"),
                online_at_start: false,
                grace_secs: 1,
            },
            GroupSpec {
                name: "g2",
                server_id: ("nfs-g2", "127.0.0.11"),
                online_at_start: true,
                grace_secs: 1,
            },
        ],
    );
    let (m1, m2) = (d.dir.join("mnt-g1"), d.dir.join("mnt-g2"));
    std::fs::write(shared.join("g1/data/f"), b"on g1's storage").unwrap();
    assert!(!mounted(&m1), "g1 is offline: its export is not mounted");
    assert!(mounted(&m2), "g2 is online at start: mounted");

    d.group(&["online", "g1"]);
    assert!(mounted(&m1), "group online mounts g1's export");
    assert_eq!(
        std::fs::read(m1.join("f")).unwrap(),
        b"on g1's storage",
        "the export shows g1's storage"
    );
    // A local process holds a lock on g1's export when the group goes offline.
    let held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m1.join("f"))
        .unwrap();
    write_lock(&held).expect("a lock through g1's mount");
    let out = d.group_raw(&["offline", "g1"]);
    assert!(
        out.status.success(),
        "offline with the export in use: {out:?}"
    );
    assert!(
        !mounted(&m1),
        "group offline releases g1's mount even while in use"
    );
    // Cached pages may still read; anything that must reach the daemon fails clearly.
    let e = write_lock(&held).expect_err("no lock on a released export");
    assert_eq!(
        e.raw_os_error(),
        Some(libc::ENOTCONN),
        "the local process gets a clear error: {e}"
    );
    let e = std::fs::metadata(m1.join("other")).expect_err("no lookup there either");
    assert!(
        e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTCONN),
        "{e}"
    );
    drop(held);
    assert!(shared.join("g1/.lockfs/clean-offline").exists());
    assert_eq!(d.groups()["g1"]["online"], false);
    assert!(mounted(&m2), "g2's export is untouched");

    // Online again (the mount point is free again), and offline with nothing in use.
    d.group(&["online", "g1"]);
    assert!(mounted(&m1), "online again: mounted again");
    assert_eq!(std::fs::read(m1.join("f")).unwrap(), b"on g1's storage");
    d.group(&["offline", "g1"]);
    assert!(!mounted(&m1), "offline unmounts an export nobody uses");
    assert!(mounted(&m2));
    drop(d);
    assert!(!mounted(&m2), "the daemon's stop unmounts the rest");
}

/// Whether another process holds the group lease file `lease` (a `flock` that fails).
fn lease_held(lease: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new().read(true).open(lease).unwrap();
    // SAFETY: a valid open descriptor for the calls.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        // SAFETY: as above; the lock is ours and let go at once.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
        return false;
    }
    true
}

/// Holds every open of one file at the kernel until answered (fanotify permission events),
/// so a test can look at the system at the moment a process opens it.
struct OpenGate {
    fd: std::os::fd::OwnedFd,
}

impl OpenGate {
    fn on(path: &Path) -> OpenGate {
        use std::os::fd::FromRawFd;
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: plain system call; the descriptor is checked and owned below.
        let fd = unsafe {
            libc::fanotify_init(
                libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC,
                libc::O_RDONLY as u32,
            )
        };
        assert!(
            fd >= 0,
            "fanotify_init: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: valid descriptor and NUL-terminated path for the call.
        let r = unsafe {
            libc::fanotify_mark(
                fd.as_raw_fd(),
                libc::FAN_MARK_ADD,
                libc::FAN_OPEN_PERM,
                libc::AT_FDCWD,
                c.as_ptr(),
            )
        };
        assert_eq!(r, 0, "fanotify_mark: {}", std::io::Error::last_os_error());
        OpenGate { fd }
    }

    /// Waits up to `within` for an open; runs `look` while the opener is held, then lets it
    /// go on. The opener's pid, or `None` if nobody opened the file in time.
    fn next(&self, within: Duration, look: impl FnOnce(i32)) -> Option<i32> {
        use std::os::fd::AsRawFd;
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut p, 1, within.as_millis() as i32) } <= 0 {
            return None;
        }
        let mut ev = std::mem::MaybeUninit::<libc::fanotify_event_metadata>::uninit();
        let size = std::mem::size_of::<libc::fanotify_event_metadata>();
        // SAFETY: reading at most one event's metadata into memory of that size.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), ev.as_mut_ptr().cast(), size) };
        assert_eq!(n as usize, size, "fanotify read");
        // SAFETY: the kernel filled the whole structure.
        let ev = unsafe { ev.assume_init() };
        // The opener waits until the answer below, whatever `look` finds.
        let answer = libc::fanotify_response {
            fd: ev.fd,
            response: libc::FAN_ALLOW,
        };
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| look(ev.pid)));
        // SAFETY: writing one response for the event read; its descriptor closed after.
        unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&answer as *const libc::fanotify_response).cast(),
                std::mem::size_of::<libc::fanotify_response>(),
            );
            libc::close(ev.fd);
        }
        if let Err(e) = found {
            std::panic::resume_unwind(e);
        }
        Some(ev.pid)
    }
}

#[test]
fn sigterm_releases_a_groups_mount_before_its_lease() {
    if can_run() {
        in_private_netns("sigterm_order_in_namespace", Duration::from_secs(120));
    }
}

#[test]
#[ignore = "run by sigterm_releases_a_groups_mount_before_its_lease in a private network namespace"]
fn sigterm_order_in_namespace() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    let mut d = Daemon::start(
        "node-a",
        &tmp.path().join("a"),
        &shared,
        &["127.0.0.1"],
        &[GroupSpec {
            name: "g1",
            server_id: ("nfs-g1", "127.0.0.10"),
            online_at_start: false,
            grace_secs: 1,
        }],
    );
    d.group(&["online", "g1"]);
    let m1 = d.dir.join("mnt-g1");
    let meta = shared.join("g1/.lockfs");
    assert!(mounted(&m1) && lease_held(&meta.join("lease")));
    // Recording the clean offline reads the group's state number: hold the daemon there
    // and look. Its mount must be gone by then and its lease still held, so no other node
    // could take the group while this one still served it.
    let gate = OpenGate::on(&meta.join("state"));
    let pid = d.child.id() as i32;
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let mut seen = false;
    while let Some(who) = gate.next(Duration::from_secs(20), |who| {
        if who == pid && !seen {
            assert!(
                !mounted(&m1),
                "g1's mount is still there when its offline is recorded"
            );
            assert!(
                lease_held(&meta.join("lease")),
                "g1's lease is free before its offline is recorded"
            );
        }
    }) {
        seen |= who == pid;
        if seen {
            break;
        }
    }
    assert!(seen, "the daemon never recorded g1's offline on SIGTERM");
    drop(gate);
    let t0 = Instant::now();
    while d.child.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the daemon did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        meta.join("clean-offline").exists(),
        "a clean offline recorded"
    );
    assert!(
        !lease_held(&meta.join("lease")),
        "the lease let go at the end"
    );
    assert!(!mounted(&m1));
}

/// A single-node Corosync and Pacemaker of a test's own: stopped (Pacemaker first) on drop.
struct Pacemaker {
    corosync: Child,
    pacemakerd: Child,
}

impl Pacemaker {
    /// Starts Corosync with the configuration in `dir`, then Pacemaker. The caller is in
    /// private network and mount namespaces with Pacemaker's state directories on tmpfs.
    fn start(dir: &Path) -> Pacemaker {
        let conf = dir.join("corosync.conf");
        std::fs::write(
            &conf,
            "totem {\n  version: 2\n  cluster_name: lockfs-test\n  crypto_cipher: none\n  \
             crypto_hash: none\n}\nnodelist {\n  node {\n    ring0_addr: 127.0.0.1\n    \
             name: n1\n    nodeid: 1\n  }\n}\nquorum {\n  provider: corosync_votequorum\n}\n\
             logging {\n  to_stderr: yes\n  to_logfile: no\n  to_syslog: no\n}\n",
        )
        .unwrap();
        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let corosync = Command::new("corosync")
            .arg("-f")
            .arg("-c")
            .arg(&conf)
            .stdout(log("corosync.out"))
            .stderr(log("corosync.log"))
            .spawn()
            .expect("corosync");
        // Pacemaker connects to Corosync once its IPC answers.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !Command::new("corosync-cfgtool")
            .arg("-s")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(Instant::now() < deadline, "corosync did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        let pacemakerd = Command::new("pacemakerd")
            .stdout(log("pacemaker.out"))
            .stderr(log("pacemaker.log"))
            .spawn()
            .expect("pacemakerd");
        Pacemaker {
            corosync,
            pacemakerd,
        }
    }
}

impl Drop for Pacemaker {
    fn drop(&mut self) {
        for child in [&mut self.pacemakerd, &mut self.corosync] {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(60) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a command to its end; its stdout, or a panic with its output if it failed.
fn must(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `what` every 250 ms until it holds; panics after `within`, naming `why`.
fn wait_for(within: Duration, why: &str, mut what: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !what() {
        assert!(Instant::now() < deadline, "timed out waiting: {why}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn pacemaker_starts_and_stops_the_agent() {
    let have = [
        "corosync",
        "pacemakerd",
        "cibadmin",
        "crm_mon",
        "crm_resource",
    ]
    .iter()
    .all(|b| {
        Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !have {
        lockfs_testkit::skipping!(
            "Pacemaker and Corosync are not installed (scripts/setup.sh installs them)"
        );
        return;
    }
    if !can_run() {
        return;
    }
    // Private network and mount namespaces: Pacemaker's IPC (abstract sockets, /dev/shm)
    // and state directories are the test's own and vanish with it.
    lockfs_testkit::rerun::Rerun::new("pacemaker_in_namespace", Duration::from_secs(240))
        .with_mount_namespace()
        .run();
}

#[test]
#[ignore = "run by pacemaker_starts_and_stops_the_agent in private namespaces"]
fn pacemaker_in_namespace() {
    must(&["ip", "link", "set", "lo", "up"]);
    for d in [
        "/var/lib/pacemaker",
        "/var/lib/corosync",
        "/var/log/pacemaker",
        "/dev/shm",
        "/usr/lib/ocf/resource.d",
    ] {
        std::fs::create_dir_all(d).unwrap();
        must(&["mount", "-t", "tmpfs", "tmpfs", d]);
    }
    for d in ["cib", "pengine", "blackbox", "cores"] {
        std::fs::create_dir_all(Path::new("/var/lib/pacemaker").join(d)).unwrap();
    }
    must(&[
        "chown",
        "-R",
        "hacluster:haclient",
        "/var/lib/pacemaker",
        "/var/log/pacemaker",
    ]);
    // The agent where the README installs it.
    std::fs::create_dir_all("/usr/lib/ocf/resource.d/lockfs").unwrap();
    must(&[
        "install",
        "-m",
        "0755",
        agent().to_str().unwrap(),
        "/usr/lib/ocf/resource.d/lockfs/lockfs-group",
    ]);

    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    let d = Daemon::start(
        "n1",
        &tmp.path().join("a"),
        &shared,
        &["127.0.0.1"],
        &[GroupSpec {
            name: "g1",
            server_id: ("nfs-g1", "127.0.0.10"),
            online_at_start: false,
            grace_secs: 1,
        }],
    );
    let pm_dir = tmp.path().join("pacemaker");
    std::fs::create_dir_all(&pm_dir).unwrap();
    let pm = Pacemaker::start(&pm_dir);
    let started = Instant::now();
    wait_for(Duration::from_secs(90), "node n1 online", || {
        Command::new("crm_mon")
            .arg("-1")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Online: [ n1 ]"))
    });
    eprintln!("cluster up in {:?}", started.elapsed());
    // One node and no fencing device: a test cluster.
    must(&[
        "crm_attribute",
        "--type",
        "crm_config",
        "--name",
        "stonith-enabled",
        "--update",
        "false",
    ]);
    let sock = d.dir.join("admin.sock");
    let xml = format!(
        "<primitive id=\"g1-locks\" class=\"ocf\" provider=\"lockfs\" type=\"lockfs-group\">\
         <instance_attributes id=\"g1-locks-ia\">\
         <nvpair id=\"g1-locks-group\" name=\"group\" value=\"g1\"/>\
         <nvpair id=\"g1-locks-socket\" name=\"socket\" value=\"{}\"/>\
         <nvpair id=\"g1-locks-lockfs\" name=\"lockfs\" value=\"{LOCKFS}\"/>\
         </instance_attributes><operations>\
         <op id=\"g1-locks-monitor\" name=\"monitor\" interval=\"2s\" timeout=\"20s\"/>\
         </operations></primitive>",
        sock.display()
    );
    must(&[
        "cibadmin",
        "--create",
        "-o",
        "resources",
        "--xml-text",
        &xml,
    ]);
    let locate = || must(&["crm_resource", "--resource", "g1-locks", "--locate"]);
    wait_for(Duration::from_secs(60), "g1-locks started", || {
        locate().contains("is running on: n1")
    });
    wait_for(Duration::from_secs(10), "g1 online in the daemon", || {
        d.groups()["g1"]["online"] == true
    });
    // crm_mon may show the start's transition a moment longer than crm_resource.
    wait_for(
        Duration::from_secs(20),
        "crm_mon shows g1-locks started",
        || {
            let mon = must(&["crm_mon", "-1"]);
            mon.contains("g1-locks") && mon.contains("Started n1")
        },
    );
    assert!(
        mounted(&d.dir.join("mnt-g1")),
        "g1's export is mounted with it"
    );
    // A monitor failure would show in crm_mon; several monitor intervals pass.
    std::thread::sleep(Duration::from_secs(5));
    let mon = must(&["crm_mon", "-1"]);
    assert!(
        !mon.contains("Failed Resource Actions"),
        "the agent's monitor passes:\n{mon}"
    );

    // Banned from its only node: Pacemaker stops it, and the group goes offline.
    must(&[
        "crm_resource",
        "--resource",
        "g1-locks",
        "--ban",
        "--node",
        "n1",
    ]);
    // Stopped, crm_resource says "NOT running" on stderr and nothing on stdout.
    wait_for(Duration::from_secs(60), "g1-locks stopped", || {
        !locate().contains("is running on")
    });
    assert_eq!(d.groups()["g1"]["online"], false, "the ban took g1 offline");
    assert!(shared.join("g1/.lockfs/clean-offline").exists());
    assert!(!mounted(&d.dir.join("mnt-g1")), "and released its export");
    let mon = must(&["crm_mon", "-1"]);
    assert!(
        mon.contains("No active resources") && !mon.contains("Failed Resource Actions"),
        "crm_mon shows the resource stopped:\n{mon}"
    );
    eprintln!("pacemaker run in {:?}", started.elapsed());
    drop(pm);
    drop(d);
}

// The two-node cluster: nodes A and B in network namespaces of their own, joined by a
// bridge to the namespace the test runs in, where the NLM clients and their status
// monitors live. Server IDs move between the nodes as the cluster manager's IPaddr2
// would move them.
const NODE_A: &str = "10.202.0.1";
const NODE_B: &str = "10.202.0.2";
const G1_IP: &str = "10.202.0.10";
const G2_IP: &str = "10.202.0.11";
const CLIENT_1: &str = "10.202.0.101";
const CLIENT_2: &str = "10.202.0.102";
const NEWCOMER: &str = "10.202.0.103";
const STEADY: &str = "10.202.0.104";
/// The libnfs client host, in a namespace of its own (its calls come from this address).
const LIBNFS_HOST: &str = "10.202.0.105";
const GRACE: Duration = Duration::from_secs(5);

fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

/// The nodes' namespaces, their veth links and the bridge; removed on drop.
struct Cluster {
    tag: String,
}

impl Cluster {
    fn new() -> Cluster {
        let c = Cluster {
            tag: format!("lfha{}", std::process::id() % 100_000),
        };
        let br = c.bridge();
        run(&["ip", "link", "set", "lo", "up"]);
        run(&["ip", "link", "add", &br, "type", "bridge"]);
        run(&["ip", "link", "set", &br, "up"]);
        for ip in [CLIENT_1, CLIENT_2, NEWCOMER, STEADY] {
            run(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &br]);
        }
        for (node, ip) in [("a", NODE_A), ("b", NODE_B), ("c", LIBNFS_HOST)] {
            let ns = c.ns(node);
            let (host_if, node_if) = (format!("{}{node}h", c.tag), c.node_if(node));
            run(&["ip", "netns", "add", &ns]);
            run(&[
                "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &node_if,
            ]);
            run(&["ip", "link", "set", &node_if, "netns", &ns]);
            run(&["ip", "link", "set", &host_if, "master", &br]);
            run(&["ip", "link", "set", &host_if, "up"]);
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                &node_if,
            ]);
            run(&["ip", "-n", &ns, "link", "set", &node_if, "up"]);
        }
        c
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    fn ns(&self, node: &str) -> String {
        format!("{}-{node}", self.tag)
    }

    fn node_if(&self, node: &str) -> String {
        format!("{}{node}n", self.tag)
    }

    /// Puts a server ID address on a node (IPaddr2's start) or takes it away (its stop).
    fn address(&self, node: &str, ip: &str, add: bool) {
        run(&[
            "ip",
            "-n",
            &self.ns(node),
            "addr",
            if add { "add" } else { "del" },
            &format!("{ip}/24"),
            "dev",
            &self.node_if(node),
        ]);
        // What IPaddr2's gratuitous ARP achieves: the clients look the address up anew.
        run(&["ip", "neigh", "flush", "dev", &self.bridge()]);
    }

    fn link(&self, node: &str, up: bool) {
        run(&[
            "ip",
            "-n",
            &self.ns(node),
            "link",
            "set",
            &self.node_if(node),
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in ["a", "b", "c"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(node)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .status();
    }
}

/// A client host's status monitor: what SM_NOTIFY brought (server name, state, sender).
struct StatusMonitor(std::sync::Mutex<mpsc::Sender<(String, i32, IpAddr)>>);

impl lockd_user::server::RpcProgram for StatusMonitor {
    fn program(&self) -> u32 {
        SM_PROG
    }
    fn versions(&self) -> (u32, u32) {
        (SM_VERS, SM_VERS)
    }
    fn call(
        &self,
        ctx: &lockd_user::server::CallContext,
        args: &mut lockd_user::xdr::Decoder<'_>,
    ) -> Result<lockd_user::server::Reply, lockd_user::server::ProcError> {
        use lockd_user::server::{decode_args, ProcError, Reply};
        match ctx.proc_ {
            nsm::proc_::NULL => Ok(Reply::Now(vec![])),
            nsm::proc_::NOTIFY => {
                let a: StatChge = decode_args(args)?;
                let _ = self
                    .0
                    .lock()
                    .unwrap()
                    .send((a.mon_name, a.state, ctx.peer.ip()));
                Ok(Reply::Now(vec![]))
            }
            _ => Err(ProcError::ProcUnavail),
        }
    }
}

/// Starts a status monitor and a portmapper (port 111) on `ip`; what they receive.
async fn client_services(
    ip: &str,
    keep: &mut Vec<lockd_user::RpcServer>,
) -> mpsc::Receiver<(String, i32, IpAddr)> {
    use lockd_user::portmap::Portmapper;
    use lockd_user::{RpcServer, ServerConfig, Transport};
    use std::sync::Arc;
    let (tx, rx) = mpsc::channel();
    let ip: IpAddr = ip.parse().unwrap();
    let sm = RpcServer::builder(ServerConfig::default())
        .program(Arc::new(StatusMonitor(std::sync::Mutex::new(tx))))
        .udp(SocketAddr::new(ip, 0))
        .start()
        .await
        .unwrap();
    let pm = Arc::new(Portmapper::new());
    pm.set_local(SM_PROG, SM_VERS, Transport::Udp, sm.udp_addrs()[0]);
    let pms = RpcServer::builder(ServerConfig::default())
        .program(pm)
        .udp(SocketAddr::new(ip, 111))
        .start()
        .await
        .unwrap();
    keep.push(sm);
    keep.push(pms);
    rx
}

/// Waits for an SM_NOTIFY naming `server` with a state above `above`; returns it.
fn expect_notify(
    rx: &mpsc::Receiver<(String, i32, IpAddr)>,
    who: &str,
    server: &str,
    from: &str,
    above: i64,
) -> i64 {
    let (name, state, peer) = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{who} got no SM_NOTIFY naming {server}"));
    assert_eq!(name, server, "{who} was notified in another group's name");
    assert_eq!(
        peer.to_string(),
        from,
        "{who}: notice not from {server}'s address"
    );
    assert!(
        i64::from(state) > above,
        "{who}: state {state} not above {above}"
    );
    i64::from(state)
}

/// LOCK and UNLOCK in a loop on a group that must not notice a failover, from its own
/// thread, until stopped; every answer that is not GRANTED is kept.
struct Steady {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u64, Vec<String>)>,
}

impl Steady {
    fn start(server: &'static str, fh: Vec<u8>) -> Steady {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let h = Host::new("steady", STEADY);
            let rt = rt();
            let mut pairs = 0;
            let mut bad = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                rt.block_on(async {
                    let st = h.lock(server, &fh, 300, false).await;
                    if st != v4::Stats::Granted {
                        bad.push(format!("LOCK {st:?}"));
                    }
                    let st = h.unlock(server, &fh, 300).await;
                    if st != v4::Stats::Granted {
                        bad.push(format!("UNLOCK {st:?}"));
                    }
                });
                pairs += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (pairs, bad)
        });
        Steady { stop, thread }
    }

    fn finish(self, what: &str) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (pairs, bad) = self.thread.join().unwrap();
        assert!(pairs >= 5, "{what}: only {pairs} LOCK+UNLOCK pairs");
        assert!(bad.is_empty(), "{what}: disturbed: {bad:?}");
        eprintln!("{what}: {pairs} LOCK+UNLOCK pairs, all granted");
    }
}

/// The header the libnfs client host is built against (Debian's libnfs-dev).
const LIBNFS_HEADER: &str = "/usr/include/nfsc/libnfs-raw-nlm.h";

/// A client host made of libnfs alone (lockfs/tests/c/libnfs_ha_client.c): libnfs's NLM v4
/// calls, and a status monitor and portmapper on libnfs server contexts, in network
/// namespace `ns` at `ip`. Killed on drop.
struct LibnfsHost {
    child: Child,
    stdin: std::process::ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl LibnfsHost {
    fn start(dir: &Path, ns: &str, ip: &str, fh: &[u8]) -> LibnfsHost {
        let bin = dir.join("libnfs_ha_client");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/libnfs_ha_client.c");
        let out = Command::new("cc")
            .args(["-Wall", "-Werror", "-o"])
            .arg(&bin)
            .arg(&src)
            .arg("-lnfs")
            .output()
            .unwrap();
        assert!(out.status.success(), "building the libnfs client: {out:?}");
        let hex: String = fh.iter().map(|b| format!("{b:02x}")).collect();
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&bin)
            .args(["libnfs-host", ip, &PORT.to_string(), &hex])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("[libnfs-host] {l}");
                let _ = tx.send(l);
            }
        });
        let h = LibnfsHost {
            child,
            stdin,
            lines,
        };
        h.next_line("READY");
        h
    }

    /// The next line starting with `prefix`; lines of other kinds are passed over.
    fn next_line(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let l = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("the libnfs host printed no {prefix} line"));
            if l.starts_with(prefix) {
                return l;
            }
        }
    }

    /// LOCK of byte `off` (exclusive, not blocking) at `server`: the NLM4 status number.
    fn lock(&mut self, server: &str, off: u64, reclaim: bool) -> i64 {
        use std::io::Write;
        writeln!(self.stdin, "lock {server} {off} {}", u8::from(reclaim)).unwrap();
        self.stdin.flush().unwrap();
        let l = self.next_line("LOCK ");
        l.trim_start_matches("LOCK stat=").parse().unwrap()
    }

    /// The next SM_NOTIFY it got: the name it carried and the state.
    fn notified(&self) -> (String, i64) {
        let l = self.next_line("NOTIFY ");
        let mut name = String::new();
        let mut state = -1;
        for w in l.split(' ') {
            if let Some(n) = w.strip_prefix("name=") {
                name = n.to_string();
            } else if let Some(s) = w.strip_prefix("state=") {
                state = s.parse().unwrap();
            }
        }
        (name, state)
    }
}

impl Drop for LibnfsHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// NLM4 status numbers as libnfs prints them.
const NLM4_GRANTED: i64 = 0;
const NLM4_DENIED_GRACE_PERIOD: i64 = 4;

/// Polls a new lock until its group's grace ends; returns when it was granted.
fn granted_after_grace(h: &Host, server: &str, fh: &[u8], off: u64, since: Instant) -> Duration {
    let rt = rt();
    loop {
        let st = rt.block_on(h.lock(server, fh, off, false));
        match st {
            v4::Stats::Granted => return since.elapsed(),
            v4::Stats::DeniedGracePeriod => {}
            other => panic!("a new lock during grace got {other:?}"),
        }
        assert!(
            since.elapsed() < GRACE + Duration::from_secs(15),
            "the grace never ended"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_nodes_crash_and_planned_move() {
    let ip_ok = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ip_ok {
        lockfs_testkit::skipping!("the two-node test needs ip (iproute2)");
        return;
    }
    if !Path::new(LIBNFS_HEADER).exists() {
        lockfs_testkit::skipping!(
            "the two-node test's libnfs client needs libnfs-dev and cc (scripts/setup.sh)"
        );
        return;
    }
    if can_run() {
        in_private_netns("two_nodes_in_namespaces", Duration::from_secs(240));
    }
}

#[test]
#[ignore = "run by two_nodes_crash_and_planned_move in a private network namespace"]
fn two_nodes_in_namespaces() {
    let cl = Cluster::new();
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    let groups = [
        GroupSpec {
            name: "g1",
            server_id: ("nfs-g1", G1_IP),
            online_at_start: false,
            grace_secs: GRACE.as_secs(),
        },
        GroupSpec {
            name: "g2",
            server_id: ("nfs-g2", G2_IP),
            online_at_start: false,
            grace_secs: GRACE.as_secs(),
        },
    ];
    let node = |n: &str, dir: &str| {
        Daemon::start_in(
            Some(&cl.ns(n)),
            &format!("node-{n}"),
            &tmp.path().join(dir),
            &shared,
            &["0.0.0.0"],
            &groups,
        )
    };
    let mut a = node("a", "a");
    let b = node("b", "b");
    cl.address("a", G1_IP, true);
    cl.address("b", G2_IP, true);
    a.group(&["online", "g1"]);
    b.group(&["online", "g2"]);
    let (f1, f2) = (a.fh("g1", "f", &shared), a.fh("g2", "f", &shared));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut services = Vec::new();
    let (m1, m2, m_new, _m_steady) = rt.block_on(async {
        (
            client_services(CLIENT_1, &mut services).await,
            client_services(CLIENT_2, &mut services).await,
            client_services(NEWCOMER, &mut services).await,
            client_services(STEADY, &mut services).await,
        )
    });
    let c1 = Host::new("client-1", CLIENT_1);
    let c2 = Host::new("client-2", CLIENT_2);
    let newcomer = Host::new("newcomer", NEWCOMER);
    rt.block_on(async {
        for (c, off) in [(&c1, 0), (&c2, 100)] {
            assert_eq!(c.lock(G1_IP, &f1, off, false).await, v4::Stats::Granted);
            assert_eq!(c.lock(G2_IP, &f2, off, false).await, v4::Stats::Granted);
        }
    });
    // The libnfs host, in a namespace of its own, holds byte 500 of g1's file.
    let mut lib = LibnfsHost::start(tmp.path(), &cl.ns("c"), LIBNFS_HOST, &f1);
    assert_eq!(lib.lock(G1_IP, 500, false), NLM4_GRANTED);
    let g1_state = a.groups()["g1"]["state"].as_i64().unwrap();

    // Crash: A dies; the cluster moves g1's address to B and brings g1 online there.
    let steady = Steady::start(G2_IP, f2.clone());
    std::thread::sleep(Duration::from_millis(300));
    a.kill();
    cl.address("a", G1_IP, false);
    cl.link("a", false);
    cl.address("b", G1_IP, true);
    let online = Instant::now();
    b.group(&["online", "g1"]);
    for (who, m) in [("client-1", &m1), ("client-2", &m2)] {
        expect_notify(m, who, "nfs-g1", G1_IP, g1_state);
    }
    let (name, state) = lib.notified();
    assert_eq!(name, "nfs-g1", "the libnfs host was notified in g1's name");
    assert!(
        state > g1_state,
        "libnfs host: state {state} not above {g1_state}"
    );
    let s = b.groups();
    assert_eq!(s["g1"]["in_grace"], true, "{s:?}");
    assert_eq!(s["g2"]["in_grace"], false, "{s:?}");
    rt.block_on(async {
        // Reclaims are granted in g1's grace; a new g1 lock is not.
        for (c, off) in [(&c1, 0), (&c2, 100)] {
            assert_eq!(c.lock(G1_IP, &f1, off, true).await, v4::Stats::Granted);
        }
        assert_eq!(
            newcomer.lock(G1_IP, &f1, 200, false).await,
            v4::Stats::DeniedGracePeriod
        );
    });
    // The libnfs host reclaims through libnfs's own reclaim flag; a new lock of its own is
    // refused until the grace ends.
    assert_eq!(lib.lock(G1_IP, 500, true), NLM4_GRANTED, "libnfs reclaim");
    assert_eq!(lib.lock(G1_IP, 501, false), NLM4_DENIED_GRACE_PERIOD);
    rt.block_on(async {
        // g2 keeps every lock and grants new ones.
        for off in [0, 100] {
            assert_eq!(
                newcomer.lock(G2_IP, &f2, off, false).await,
                v4::Stats::Denied
            );
        }
        assert_eq!(
            newcomer.lock(G2_IP, &f2, 200, false).await,
            v4::Stats::Granted
        );
    });
    let waited = granted_after_grace(&newcomer, G1_IP, &f1, 200, online);
    assert!(
        waited >= GRACE - Duration::from_millis(500),
        "g1's grace ended after {waited:?}"
    );
    rt.block_on(async {
        for off in [0, 100, 500] {
            assert_eq!(
                newcomer.lock(G1_IP, &f1, off, false).await,
                v4::Stats::Denied,
                "the reclaimed g1 lock at {off} is held"
            );
        }
    });
    steady.finish("g2 during g1's failover");
    assert_eq!(b.groups()["g2"]["in_grace"], false);
    for (who, m) in [("client-1", &m1), ("client-2", &m2), ("newcomer", &m_new)] {
        if let Ok(n) = m.try_recv() {
            panic!("{who} got an unexpected notice {n:?}");
        }
    }

    // Both groups are on B now, which listens on the wildcard address. client-2 reboots
    // and tells g2's server ID (over UDP, as status monitors do): its g2 lock goes, its
    // g1 lock stays.
    rt.block_on(async {
        c2.notify(G2_IP, 5).await;
        assert_eq!(
            newcomer.lock(G2_IP, &f2, 100, false).await,
            v4::Stats::Granted,
            "client-2's g2 lock is freed"
        );
        assert_eq!(newcomer.unlock(G2_IP, &f2, 100).await, v4::Stats::Granted);
        assert_eq!(
            newcomer.lock(G1_IP, &f1, 100, false).await,
            v4::Stats::Denied,
            "client-2's g1 lock stays"
        );
        assert_eq!(c2.lock(G2_IP, &f2, 100, false).await, v4::Stats::Granted);
    });

    // Node A comes back (a new daemon, nothing online) and g2 moves there as planned.
    cl.link("a", true);
    drop(a);
    let a = node("a", "a2");
    let g2_state = b.groups()["g2"]["state"].as_i64().unwrap();
    let steady = Steady::start(G1_IP, f1.clone());
    std::thread::sleep(Duration::from_millis(300));
    b.group(&["offline", "g2"]);
    cl.address("b", G2_IP, false);
    cl.address("a", G2_IP, true);
    let online = Instant::now();
    a.group(&["online", "g2"]);
    for (who, m) in [("client-1", &m1), ("client-2", &m2), ("newcomer", &m_new)] {
        expect_notify(m, who, "nfs-g2", G2_IP, g2_state);
    }
    let (sa, sb) = (a.groups(), b.groups());
    assert_eq!(
        (sa["g2"]["online"].clone(), sa["g2"]["in_grace"].clone()),
        (true.into(), true.into()),
        "{sa:?}"
    );
    assert_eq!(
        (sb["g1"]["online"].clone(), sb["g1"]["in_grace"].clone()),
        (true.into(), false.into()),
        "{sb:?}"
    );
    rt.block_on(async {
        for (c, off) in [(&c1, 0), (&c2, 100)] {
            assert_eq!(c.lock(G2_IP, &f2, off, true).await, v4::Stats::Granted);
        }
        assert_eq!(
            newcomer.lock(G2_IP, &f2, 400, false).await,
            v4::Stats::DeniedGracePeriod
        );
        // No g1 lock is disturbed.
        for off in [0, 100, 200] {
            let who = if off == 200 { &c1 } else { &newcomer };
            assert_eq!(
                who.lock(G1_IP, &f1, off, false).await,
                v4::Stats::Denied,
                "g1's lock at {off} is held"
            );
        }
    });
    let waited = granted_after_grace(&newcomer, G2_IP, &f2, 400, online);
    assert!(
        waited >= GRACE - Duration::from_millis(500),
        "g2's grace ended after {waited:?}"
    );
    rt.block_on(async {
        for off in [0, 100] {
            assert_eq!(
                newcomer.lock(G2_IP, &f2, off, false).await,
                v4::Stats::Denied
            );
        }
    });
    steady.finish("g1 during g2's move");
    assert_eq!(b.groups()["g1"]["in_grace"], false);

    // A group online on two nodes at once is refused, naming the node that has it.
    for (d, g, holder) in [(&a, "g1", "node-b"), (&b, "g2", "node-a")] {
        let out = d.group_raw(&["online", g]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{g} brought online twice");
        assert!(
            err.contains("online elsewhere") && err.contains(holder),
            "{err}"
        );
    }
    // The libnfs host holds nothing in g2: g2's moves never notified it.
    let extra: Vec<String> = lib.lines.try_iter().collect();
    assert!(
        !extra.iter().any(|l| l.starts_with("NOTIFY")),
        "the libnfs host got an unexpected notice: {extra:?}"
    );
    drop(lib);
    rt.block_on(async {
        for s in services {
            let _ = tokio::time::timeout(Duration::from_secs(5), s.shutdown()).await;
        }
    });
}
