//! Soak: many NLM clients lock and unlock against the real `lockfs serve` daemon,
//! which is killed with SIGKILL and restarted again and again. An independent checker
//! ([`checker`]) reads the clients' event log and proves that no two conflicting locks
//! were ever held at once and that every lock held at a kill was reclaimed.
//!
//! Each client has its own loopback address (127.0.0.2 and up), NLM caller name and
//! TCP connection, holds at most one lock at a time (exclusive or shared, on one of a
//! few files, over a small range so that clients often conflict), and runs at a set
//! pace. After a restart it reclaims its lock in the grace period. A restart reaches
//! the clients the way their status monitor would tell them (the killer announces it;
//! the clients run no statd of their own), and also through their failed calls.
//!
//! Everything runs in a private network namespace (the test re-runs itself under
//! `unshare -n`), so the daemon's fixed NLM port and built-in portmapper meet nobody
//! else's. `soak_kill_restart` (60 s) is the suite's short run; `scripts/soak-nlm.sh` runs the long
//! one. Settings (environment): LOCKFS_SOAK_SECS (60), LOCKFS_SOAK_CLIENTS (50),
//! LOCKFS_SOAK_OPS (total operations per second, 1000), LOCKFS_SOAK_KILL_EVERY
//! (seconds, 20), LOCKFS_SOAK_LOOPBACK_ONLY=1 (every client at 127.0.0.1, the
//! address of the daemon's own status service), LOCKFS_SOAK_LOG (keep the event log
//! there).
//!
//! Needs root, /dev/fuse and unshare; skips loudly without them.

#[path = "soak/checker.rs"]
mod checker;

use lockd_user::client::{ClientConfig, RpcClient};
use lockd_user::proto::nlm::{proc_, v4, NLM4_VERS, NLM_PROG};
use lockfs_testkit::daemon::{file_handle, fuse_missing, Daemon, Spawn};
use lockfs_testkit::nlm::{LockCall, Mode};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LOCKFS: &str = env!("CARGO_BIN_EXE_lockfs");
const NLM_PORT: u16 = 4045;
const FILES: u32 = 4;
const GRACE_SECS: u64 = 6;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn can_run() -> bool {
    let unshare = Command::new("unshare")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if let Some(why) = fuse_missing() {
        lockfs_testkit::skipping!("the soak test mounts a real lockfs: {why}");
        return false;
    }
    if !unshare {
        lockfs_testkit::skipping!("the soak test needs unshare (util-linux)");
        return false;
    }
    true
}

/// The suite's short run: 60 s with kills every 20 s, in a private network namespace.
#[test]
fn soak_kill_restart() {
    if !can_run() {
        return;
    }
    let secs: u64 = env_or("LOCKFS_SOAK_SECS", 60);
    lockfs_testkit::rerun::Rerun::new("soak_in_namespace", Duration::from_secs(secs + 120)).run();
}

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["export", "mnt", "state"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        for f in 0..FILES {
            std::fs::write(d.join("export").join(format!("f{f}")), vec![0u8; 4096]).unwrap();
        }
        let cfg = format!(
            "node_name = \"soak-server\"\nstate_dir = {state:?}\nadmin_socket = {sock:?}\n\
             grace_period = {GRACE_SECS}\n\
             [listen]\naddresses = [\"127.0.0.1\"]\nport = {NLM_PORT}\n\
             [[export]]\nname = \"x\"\nsource = {src:?}\nmountpoint = {mnt:?}\nmandatory = \"off\"\n",
            state = d.join("state"),
            sock = d.join("admin.sock"),
            src = d.join("export"),
            mnt = d.join("mnt"),
        );
        std::fs::write(d.join("lockfs.toml"), cfg).unwrap();
        Setup { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("lockfs.toml")
    }

    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// The daemon on this configuration, its log appended to `log`.
    fn start(&self, log: &Path) -> Daemon {
        Spawn::serve(LOCKFS, &self.config(), "info")
            .log_to(log)
            .unmounts(&self.mnt())
            .start_serve(Duration::from_secs(60))
    }

    fn fh(&self, name: &str) -> Vec<u8> {
        file_handle(
            LOCKFS,
            &self.config(),
            &self.dir.path().join("export").join(name),
        )
    }
}

/// The event log, one line an event, timestamps in ns since the start of the run.
struct Log {
    t0: Instant,
    out: Mutex<std::io::BufWriter<std::fs::File>>,
}

impl Log {
    fn now(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    fn event(&self, t: u64, client: u32, kind: &str, l: &Want) {
        let mut o = self.out.lock().unwrap();
        let _ = writeln!(
            o,
            "{t} {client} {kind} {} {} {} {}",
            l.file,
            l.start,
            l.len,
            u8::from(l.exclusive)
        );
    }

    fn mark(&self, kind: &str) {
        let t = self.now();
        let _ = writeln!(self.out.lock().unwrap(), "{t} - {kind}");
    }
}

#[derive(Debug, Clone, Copy)]
struct Want {
    file: u32,
    start: u64,
    len: u64,
    exclusive: bool,
}

/// Counters shared by the clients.
#[derive(Default)]
struct Counts {
    ops: AtomicU64,
    denied: AtomicU64,
    grace_denied: AtomicU64,
    errors: AtomicU64,
}

struct Shared {
    log: Log,
    fhs: Vec<Vec<u8>>,
    stop: AtomicBool,
    /// Advanced by the killer after each restart: the clients' "SM_NOTIFY".
    epoch: AtomicU64,
    counts: Counts,
    period: Duration,
}

/// A tiny deterministic generator (xorshift), one per client.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn nlm_lock(id: u32, fh: &[u8], w: &Want) -> v4::Lock {
    v4::Lock {
        caller_name: format!("soak-client-{id}"),
        fh: fh.to_vec(),
        oh: format!("owner-{id}").into_bytes(),
        svid: id as i32,
        l_offset: w.start,
        l_len: w.len,
    }
}

async fn lock(c: &RpcClient, s: &Shared, id: u32, w: &Want, reclaim: bool) -> Option<v4::Stats> {
    let mode = if w.exclusive {
        Mode::Exclusive
    } else {
        Mode::Shared
    };
    let args = LockCall::new(nlm_lock(id, &s.fhs[w.file as usize], w), mode)
        .reclaiming(reclaim)
        .cookie(&id.to_be_bytes())
        .args();
    s.counts.ops.fetch_add(1, Ordering::Relaxed);
    match c
        .call::<_, v4::Res>(NLM_PROG, NLM4_VERS, proc_::LOCK, &args)
        .await
    {
        Ok(r) => Some(r.stat),
        Err(_) => {
            s.counts.errors.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

async fn unlock(c: &RpcClient, s: &Shared, id: u32, w: &Want) -> bool {
    let args = v4::UnlockArgs {
        cookie: id.to_be_bytes().to_vec(),
        alock: nlm_lock(id, &s.fhs[w.file as usize], w),
    };
    s.counts.ops.fetch_add(1, Ordering::Relaxed);
    match c
        .call::<_, v4::Res>(NLM_PROG, NLM4_VERS, proc_::UNLOCK, &args)
        .await
    {
        Ok(r) => r.stat == v4::Stats::Granted,
        Err(_) => {
            s.counts.errors.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

async fn client(s: Arc<Shared>, id: u32, addr: IpAddr) {
    let server = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), NLM_PORT);
    let config = ClientConfig {
        total_timeout: Duration::from_secs(2),
        retransmit: Duration::from_millis(200),
        local_addr: Some(SocketAddr::new(addr, 0)),
        ..ClientConfig::default()
    };
    let c = loop {
        match RpcClient::tcp(server, config.clone()).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (u64::from(id + 1) * 0x1000_0001));
    let mut held: Option<Want> = None;
    let mut hold_until = Instant::now();
    let mut epoch = s.epoch.load(Ordering::Acquire);
    let mut recover = false;
    // Spread the clients' first calls over one period.
    tokio::time::sleep(s.period.mul_f64(rng.below(1000) as f64 / 1000.0)).await;
    let mut tick = tokio::time::interval(s.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let stopping = s.stop.load(Ordering::Acquire);
        let e = s.epoch.load(Ordering::Acquire);
        if e != epoch {
            epoch = e;
            recover = true;
        }
        if recover {
            if let Some(w) = held {
                match lock(&c, &s, id, &w, true).await {
                    Some(v4::Stats::Granted) => {
                        s.log.event(s.log.now(), id, "RECLAIMED", &w);
                        recover = false;
                    }
                    Some(v4::Stats::DeniedGracePeriod) | None => {} // not up yet: again
                    Some(other) => {
                        eprintln!("client {id}: reclaim of {w:?} answered {other:?}");
                        s.log.event(s.log.now(), id, "LOST", &w);
                        held = None;
                        recover = false;
                    }
                }
            } else {
                recover = false;
            }
            continue;
        }
        match held {
            Some(w) if stopping || Instant::now() >= hold_until => {
                let sent = s.log.now();
                if unlock(&c, &s, id, &w).await {
                    s.log.event(sent, id, "RELEASE", &w);
                    held = None;
                } else {
                    // Not released: the daemon is down or restarting; reclaim first.
                    recover = true;
                }
            }
            Some(_) => {}
            None if stopping => return,
            None => {
                let w = Want {
                    file: rng.below(u64::from(FILES)) as u32,
                    start: rng.below(64),
                    len: 1 + rng.below(32),
                    exclusive: rng.below(4) != 0,
                };
                match lock(&c, &s, id, &w, false).await {
                    Some(v4::Stats::Granted) => {
                        s.log.event(s.log.now(), id, "GRANT", &w);
                        held = Some(w);
                        hold_until = Instant::now() + s.period * (1 + rng.below(3) as u32);
                    }
                    Some(v4::Stats::Denied) => {
                        s.counts.denied.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(v4::Stats::DeniedGracePeriod) => {
                        s.counts.grace_denied.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(other) => panic!("client {id}: LOCK answered {other:?}"),
                    None => {
                        // The daemon may have granted it and died: it holds nothing now.
                    }
                }
            }
        }
    }
}

/// The soak run itself, inside the private network namespace `soak_kill_restart` made.
#[test]
#[ignore = "run by soak_kill_restart and scripts/soak-nlm.sh inside a private network namespace"]
fn soak_in_namespace() {
    let secs: u64 = env_or("LOCKFS_SOAK_SECS", 60);
    let clients: u32 = env_or("LOCKFS_SOAK_CLIENTS", 50);
    let ops: u64 = env_or("LOCKFS_SOAK_OPS", 1000);
    let kill_every: u64 = env_or("LOCKFS_SOAK_KILL_EVERY", 20);
    let loopback_only = std::env::var("LOCKFS_SOAK_LOOPBACK_ONLY").is_ok_and(|v| v == "1");
    assert!((1..=250).contains(&clients), "1 to 250 clients");
    let st = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(st.success(), "ip link set lo up");

    let setup = Setup::new();
    let work = setup.dir.path().to_path_buf();
    let daemon_log = work.join("daemon.log");
    let events = match std::env::var("LOCKFS_SOAK_LOG") {
        Ok(p) => PathBuf::from(p),
        Err(_) => work.join("events.log"),
    };
    let mut daemon = setup.start(&daemon_log);
    let fhs: Vec<Vec<u8>> = (0..FILES).map(|f| setup.fh(&format!("f{f}"))).collect();
    // Each client makes one call a period: `ops` calls a second in total.
    let period = Duration::from_secs_f64(f64::from(clients) / ops as f64);
    let shared = Arc::new(Shared {
        log: Log {
            t0: Instant::now(),
            out: Mutex::new(std::io::BufWriter::new(
                std::fs::File::create(&events).unwrap(),
            )),
        },
        fhs,
        stop: AtomicBool::new(false),
        epoch: AtomicU64::new(0),
        counts: Counts::default(),
        period,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let addr = if loopback_only {
                Ipv4Addr::LOCALHOST
            } else {
                Ipv4Addr::new(127, 0, 0, 2 + i as u8)
            };
            rt.spawn(client(shared.clone(), i, addr.into()))
        })
        .collect();

    let start = Instant::now();
    let mut kills = 0;
    let mut restart_ms = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        let next = Duration::from_secs(kill_every * (kills + 1));
        let left = Duration::from_secs(secs).saturating_sub(start.elapsed());
        let wait = next.saturating_sub(start.elapsed()).min(left);
        std::thread::sleep(wait);
        if start.elapsed() >= Duration::from_secs(secs) {
            break;
        }
        shared.log.mark("KILL");
        assert!(daemon.kill(), "the daemon outlived SIGKILL");
        kills += 1;
        let t = Instant::now();
        daemon = setup.start(&daemon_log);
        restart_ms.push(t.elapsed().as_millis());
        shared.log.mark("RESTARTED");
        shared.epoch.fetch_add(1, Ordering::AcqRel);
    }
    let ran = start.elapsed();
    shared.stop.store(true, Ordering::Release);
    rt.block_on(async {
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
    });
    shared.log.out.lock().unwrap().flush().unwrap();
    daemon.stop();

    let c = &shared.counts;
    let total_ops = c.ops.load(Ordering::Relaxed);
    println!(
        "soak: {clients} clients ({}), {:.1} s, {total_ops} NLM calls ({:.0}/s), \
         denied {} (conflict) {} (grace), failed calls {}, kills {kills}, restart times (ms) {restart_ms:?}",
        if loopback_only { "all at 127.0.0.1" } else { "127.0.0.2 and up" },
        ran.as_secs_f64(),
        total_ops as f64 / ran.as_secs_f64(),
        c.denied.load(Ordering::Relaxed),
        c.grace_denied.load(Ordering::Relaxed),
        c.errors.load(Ordering::Relaxed),
    );
    let log = std::fs::read_to_string(&events).unwrap();
    let report = checker::check(&log).expect("the event log is consistent");
    println!("checker: {report}");
    let daemon_text = std::fs::read_to_string(&daemon_log).unwrap_or_default();
    let rebooted = daemon_text
        .lines()
        .filter(|l| l.contains("rebooted"))
        .count();
    println!("daemon log: {rebooted} line(s) about a rebooted peer");
    for v in report.conflicts.iter().take(10) {
        println!("CONFLICT: {v}");
    }
    assert!(kills >= 1 || secs < kill_every, "no kill happened");
    assert!(report.grants > 0, "no lock was ever granted");
    assert!(
        report.ok(),
        "soak failed: {report}; daemon log lines about reboots: {rebooted}"
    );
}
