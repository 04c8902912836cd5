//! Network partition: an NLM client in its own network namespace holds a lock, its
//! veth link is cut (`ip link set down`) and another client wants the same range.
//!
//! - With `release_unreachable_after`, the waiter gets the lock once that time has
//!   passed, not before.
//! - Without it, the lock stays until `lockfs clear --host`.
//! - When the link returns, the cut-off client's next request sees the truth.
//!
//! The daemon (`lockfs serve`) runs in a private network namespace (the test re-runs
//! itself under `unshare -n`); the client runs in a named namespace created for the
//! test (`ip netns add`, the name carries the pid) and removed on drop, reached over a
//! veth pair. The waiter asks from the daemon's side, polling with non-blocking LOCK.
//!
//! Needs root, /dev/fuse, unshare and ip; skips loudly without them.

use lockd_user::client::{ClientConfig, RpcClient};
use lockd_user::proto::nlm::{proc_, v4, NLM4_VERS, NLM_PROG};
use lockfs_testkit::daemon::{file_handle, fuse_missing, unhex, Daemon as TestDaemon, Spawn};
use lockfs_testkit::nlm::LockCall;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const LOCKFS: &str = env!("CARGO_BIN_EXE_lockfs");
const NLM_PORT: u16 = 4045;
const SERVER_IP: &str = "10.201.0.1";
const CLIENT_IP: &str = "10.201.0.2";
const CUT_OFF: &str = "cutoff-client";

fn can_run() -> bool {
    let tools = ["unshare", "ip"].iter().all(|t| {
        Command::new(t)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if let Some(why) = fuse_missing() {
        lockfs_testkit::skipping!("the partition tests mount a real lockfs: {why}");
        return false;
    }
    if !tools {
        lockfs_testkit::skipping!("the partition tests need unshare and ip (iproute2)");
        return false;
    }
    true
}

fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

/// Runs `test` (an ignored test of this file) in a private network namespace.
fn in_private_netns(test: &str, policy_secs: Option<u64>, outstanding: &str) {
    let mut rerun = lockfs_testkit::rerun::Rerun::new(test, Duration::from_secs(120))
        .env("LOCKFS_PARTITION_OUTSTANDING", outstanding);
    if let Some(s) = policy_secs {
        rerun = rerun.env("LOCKFS_PARTITION_POLICY", s.to_string());
    }
    rerun.run();
}

/// The client's namespace and the veth pair to it; removed on drop.
struct Netns {
    name: String,
    host_if: String,
}

impl Netns {
    fn new() -> Netns {
        let pid = std::process::id();
        let n = Netns {
            name: format!("lockfs-part-{pid}"),
            host_if: format!("lfp{pid}s"),
        };
        let client_if = format!("lfp{pid}c");
        run(&["ip", "link", "set", "lo", "up"]);
        run(&["ip", "netns", "add", &n.name]);
        run(&[
            "ip", "link", "add", &n.host_if, "type", "veth", "peer", "name", &client_if,
        ]);
        run(&["ip", "link", "set", &client_if, "netns", &n.name]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{SERVER_IP}/24"),
            "dev",
            &n.host_if,
        ]);
        run(&["ip", "link", "set", &n.host_if, "up"]);
        let ns = |args: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", &n.name];
            v.extend_from_slice(args);
            run(&v);
        };
        ns(&["ip", "link", "set", "lo", "up"]);
        ns(&[
            "ip",
            "addr",
            "add",
            &format!("{CLIENT_IP}/24"),
            "dev",
            &client_if,
        ]);
        ns(&["ip", "link", "set", &client_if, "up"]);
        n
    }

    fn link(&self, up: bool) {
        run(&[
            "ip",
            "link",
            "set",
            &self.host_if,
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// `lockfs serve`, stopped and unmounted when dropped.
struct Daemon {
    // Held for its drop, which stops the daemon and unmounts; declared before
    // `dir` so that the process ends before its directories go.
    _proc: TestDaemon,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn start(policy: Option<u64>) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["export", "mnt", "state"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        for name in ["f", "g"] {
            std::fs::write(d.join("export").join(name), vec![0u8; 4096]).unwrap();
        }
        let policy = policy
            .map(|s| format!("release_unreachable_after = \"{s}s\"\n"))
            .unwrap_or_default();
        let cfg = format!(
            "node_name = \"part-server\"\nstate_dir = {state:?}\nadmin_socket = {sock:?}\n\
             grace_period = 0\n{policy}\
             [listen]\naddresses = [\"127.0.0.1\", \"{SERVER_IP}\"]\nport = {NLM_PORT}\n\
             [[export]]\nname = \"x\"\nsource = {src:?}\nmountpoint = {mnt:?}\n",
            state = d.join("state"),
            sock = d.join("admin.sock"),
            src = d.join("export"),
            mnt = d.join("mnt"),
        );
        std::fs::write(d.join("lockfs.toml"), cfg).unwrap();
        let proc_ = Spawn::serve(LOCKFS, &d.join("lockfs.toml"), "info")
            .unmounts(&d.join("mnt"))
            .start_serve(Duration::from_secs(60));
        Daemon { _proc: proc_, dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("lockfs.toml")
    }

    fn fh(&self, name: &str) -> Vec<u8> {
        file_handle(
            LOCKFS,
            &self.config(),
            &self.dir.path().join("export").join(name),
        )
    }

    fn clear_host(&self, host: &str) {
        let out = Command::new(LOCKFS)
            .args(["clear", "--host", host, "--socket"])
            .arg(self.dir.path().join("admin.sock"))
            .output()
            .unwrap();
        assert!(out.status.success(), "lockfs clear: {out:?}");
    }
}

fn the_lock(host: &str, fh: &[u8]) -> v4::Lock {
    v4::Lock {
        caller_name: host.into(),
        fh: fh.to_vec(),
        oh: format!("{host}-owner").into_bytes(),
        // The holder a TEST reports is named by its svid.
        svid: if host == CUT_OFF { 7 } else { 42 },
        l_offset: 0,
        l_len: 100,
    }
}

/// One NLM call; the status, or `None` when the server could not be reached in time.
async fn call(c: &RpcClient, p: u32, host: &str, fh: &[u8]) -> Option<String> {
    call_as(c, p, host, fh, false).await
}

async fn call_as(c: &RpcClient, p: u32, host: &str, fh: &[u8], block: bool) -> Option<String> {
    let l = the_lock(host, fh);
    let cookie = vec![1];
    let r = match p {
        proc_::LOCK => c
            .call::<_, v4::Res>(
                NLM_PROG,
                NLM4_VERS,
                p,
                &LockCall::exclusive(l)
                    .blocking(block)
                    .cookie(&cookie)
                    .args(),
            )
            .await
            .map(|r| format!("{:?}", r.stat)),
        proc_::UNLOCK => c
            .call::<_, v4::Res>(NLM_PROG, NLM4_VERS, p, &v4::UnlockArgs { cookie, alock: l })
            .await
            .map(|r| format!("{:?}", r.stat)),
        _ => c
            .call::<_, v4::TestRes>(
                NLM_PROG,
                NLM4_VERS,
                proc_::TEST,
                &v4::TestArgs {
                    cookie,
                    exclusive: true,
                    alock: l,
                },
            )
            .await
            .map(|r| match r.stat {
                v4::TestReply::Denied(h) => format!("held-by-svid-{}", h.svid),
                v4::TestReply::Other(s) => format!("{s:?}"),
            }),
    };
    r.ok()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The cut-off client: this test binary run in the client's namespace, reading
/// `lock`, `unlock` or `test` lines and answering with the status (or `unreachable`).
#[test]
#[ignore = "run by the partition tests inside the client's network namespace"]
fn partition_client() {
    let server: SocketAddr = std::env::var("LOCKFS_PARTITION_SERVER")
        .unwrap()
        .parse()
        .unwrap();
    let fh = unhex(&std::env::var("LOCKFS_PARTITION_FH").unwrap());
    let fh2 = unhex(&std::env::var("LOCKFS_PARTITION_FH2").unwrap());
    let rt = rt();
    let config = ClientConfig {
        total_timeout: Duration::from_secs(2),
        retransmit: Duration::from_millis(300),
        ..ClientConfig::default()
    };
    let c = rt.block_on(RpcClient::tcp(server, config)).unwrap();
    println!("ready");
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let (p, fh, block) = match line.trim() {
            "lock" => (proc_::LOCK, &fh, false),
            "unlock" => (proc_::UNLOCK, &fh, false),
            "test" => (proc_::TEST, &fh, false),
            "wait-g" => (proc_::LOCK, &fh2, true),
            "quit" => return,
            other => panic!("unknown command {other}"),
        };
        let r = rt.block_on(call_as(&c, p, CUT_OFF, fh, block));
        println!("{}", r.unwrap_or_else(|| "unreachable".into()));
    }
}

struct Client {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Client {
    fn spawn(ns: &Netns, fh: &str, fh2: &str) -> Client {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "partition_client",
                "--ignored",
                "--nocapture",
                "--quiet",
            ])
            .env("LOCKFS_PARTITION_SERVER", format!("{SERVER_IP}:{NLM_PORT}"))
            .env("LOCKFS_PARTITION_FH", fh)
            .env("LOCKFS_PARTITION_FH2", fh2)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let c = Client {
            child,
            stdin,
            lines,
        };
        c.expect_line("ready");
        c
    }

    fn expect_line(&self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let l = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("client never said {want}"));
            if l.trim() == want {
                return;
            }
        }
    }

    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let l = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("client answer");
            let l = l.trim().to_string();
            // Skip the test harness's own output.
            if !l.is_empty() && !l.starts_with("running") && !l.starts_with("test ") {
                return l;
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls with non-blocking LOCK from the daemon's side until granted or `limit`
/// passes; returns when it was granted, measured from `since`.
fn wait_for_grant(fh: &[u8], since: Instant, limit: Duration) -> Option<Duration> {
    let rt = rt();
    rt.block_on(async {
        let c = RpcClient::tcp(
            SocketAddr::from(([127, 0, 0, 1], NLM_PORT)),
            ClientConfig::default(),
        )
        .await
        .unwrap();
        while since.elapsed() < limit {
            if call(&c, proc_::LOCK, "waiter", fh).await.as_deref() == Some("Granted") {
                return Some(since.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    })
}

/// What the cut-off client has outstanding besides its lock.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outstanding {
    /// Nothing: it only holds the lock.
    Nothing,
    /// A blocked request on another file, so the daemon has a GRANTED callback to make.
    BlockedRequest,
}

fn local_client(rt: &tokio::runtime::Runtime) -> RpcClient {
    rt.block_on(RpcClient::tcp(
        SocketAddr::from(([127, 0, 0, 1], NLM_PORT)),
        ClientConfig::default(),
    ))
    .unwrap()
}

fn scenario(policy: Option<u64>, outstanding: Outstanding) {
    let ns = Netns::new();
    let d = Daemon::start(policy);
    let (fh, fh2) = (d.fh("f"), d.fh("g"));
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let (fh_hex, fh2_hex) = (hex(&fh), hex(&fh2));
    let mut a = Client::spawn(&ns, &fh_hex, &fh2_hex);
    assert_eq!(a.ask("lock"), "Granted", "the client takes the lock");
    let rt = rt();
    let local = local_client(&rt);
    if outstanding == Outstanding::BlockedRequest {
        let held = rt.block_on(call(&local, proc_::LOCK, "blocker", &fh2));
        assert_eq!(held.as_deref(), Some("Granted"));
        assert_eq!(a.ask("wait-g"), "Blocked", "the client waits for g");
    }
    let waiter = rt.block_on(call(&local, proc_::LOCK, "waiter", &fh));
    assert_eq!(waiter.as_deref(), Some("Denied"), "held by the client");

    ns.link(false);
    let cut = Instant::now();
    assert_eq!(a.ask("test"), "unreachable", "the link is cut");
    if outstanding == Outstanding::BlockedRequest {
        // g is free: the daemon calls the cut-off client back, and fails.
        let r = rt.block_on(call(&local, proc_::UNLOCK, "blocker", &fh2));
        assert_eq!(r.as_deref(), Some("Granted"));
    }

    match policy {
        Some(secs) => {
            let limit = Duration::from_secs(secs);
            let got = wait_for_grant(&fh, cut, limit * 3 + Duration::from_secs(10));
            let got = got.unwrap_or_else(|| {
                panic!(
                    "the waiter was never granted: release_unreachable_after = {secs} s did \
                     not release the cut-off holder"
                )
            });
            assert!(got >= limit, "granted after {got:?}, before {limit:?}");
        }
        None => {
            // Well past any timeout the daemon might apply: still held.
            let got = wait_for_grant(&fh, cut, Duration::from_secs(8));
            assert_eq!(got, None, "the lock of a cut-off client must stay");
            d.clear_host(CUT_OFF);
            let got = wait_for_grant(&fh, Instant::now(), Duration::from_secs(5));
            assert!(got.is_some(), "lockfs clear --host released the lock");
        }
    }

    // The link returns: the client's next request that gets through learns that
    // its lock is gone and the waiter holds the range.
    ns.link(true);
    let back = Instant::now();
    let seen = loop {
        let r = a.ask("test");
        if r != "unreachable" || back.elapsed() > Duration::from_secs(20) {
            break r;
        }
    };
    assert_eq!(
        seen, "held-by-svid-42",
        "the cut-off client sees the waiter's lock"
    );
    assert_eq!(a.ask("lock"), "Denied");
}

/// The policy releases a host whose callbacks fail: the cut-off client had a blocked
/// request, so the daemon has a GRANTED callback to deliver to it.
#[test]
fn partition_with_release_unreachable_after() {
    if can_run() {
        in_private_netns("partition_in_namespace", Some(3), "blocked");
    }
}

/// The same with a client that only holds its lock: the daemon has nothing to call it
/// back for; the waiter's refused requests make the holder contended, and the daemon
/// probes it and releases it once it has not answered for the configured time.
#[test]
fn partition_with_release_unreachable_after_holder_only() {
    if can_run() {
        in_private_netns("partition_in_namespace", Some(3), "nothing");
    }
}

#[test]
fn partition_without_the_policy_needs_clear_host() {
    if can_run() {
        in_private_netns("partition_in_namespace", None, "nothing");
    }
}

#[test]
#[ignore = "run by the partition tests inside a private network namespace"]
fn partition_in_namespace() {
    let policy = std::env::var("LOCKFS_PARTITION_POLICY")
        .ok()
        .and_then(|s| s.parse().ok());
    let outstanding = match std::env::var("LOCKFS_PARTITION_OUTSTANDING").as_deref() {
        Ok("blocked") => Outstanding::BlockedRequest,
        _ => Outstanding::Nothing,
    };
    scenario(policy, outstanding);
}
