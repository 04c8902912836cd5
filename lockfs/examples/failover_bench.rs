//! Failover benchmark driver (run by scripts/bench-failover.sh inside a private network
//! namespace; not a test).
//!
//! One `lockfs serve` daemon with two moving groups, g1 (server ID 127.0.1.1) and g2
//! (127.0.1.2). HOSTS simulated client hosts (each its own 127.0.2.x-127.0.6.x address,
//! with a portmapper there and one status monitor for all) take LOCKS locks each in g1.
//! Then g1 is taken offline and brought online again: its clients get SM_NOTIFY and
//! reclaim on receipt. Measured: time from `lockfs group online g1` to the last reclaim
//! granted, the SM_NOTIFY fan-out rate, and LOCK+UNLOCK latency in g2 (one client, one
//! TCP connection) during that failover against the same client's latency before it.
//! Last, for comparison, the whole daemon is restarted (SIGTERM, start): how long a new
//! lock in g2 is refused.
//!
//! Usage: failover_bench LOCKFS_BINARY [HOSTS] [LOCKS] [GROUP_NOTIFY_PER_SECOND]
//! (the last one sets `group_notify_per_second`, the pace of a group coming online;
//! without it the daemon's default applies).
//!
//! The simulated hosts stand for other machines but share this machine's cores with the
//! daemon. g2's client runs on a thread and runtime of its own, so its latencies are not
//! queued behind the simulated hosts' tasks. The hosts' threads (reclaims, portmappers,
//! status monitor) may be run at a lower priority with `BENCH_CLIENT_NICE=N` (default 0,
//! the daemon's own); a niced monitor answers late on a loaded machine, and the daemon
//! then retransmits its notices, so the default leaves them at the daemon's priority. The
//! daemon's and the driver's CPU time during the failover are printed beside the figures.
//!
//! `BENCH_SAMPLES=FILE` appends g2's latencies to FILE, to pool several runs.
//!
//! `BENCH_SPLIT=1` runs the daemon on CPU 0 alone and the driver on the other CPUs, as a
//! server with one CPU would meet clients on other machines: the daemon's groups then
//! compete only with each other, not with the simulated hosts.

use lockd_user::client::{ClientConfig, RpcClient};
use lockd_user::portmap::Portmapper;
use lockd_user::proto::nlm::{proc_, v4, NLM4_VERS, NLM_PROG};
use lockd_user::proto::nsm::{self, StatChge, SM_PROG, SM_VERS};
use lockd_user::server::{decode_args, CallContext, ProcError, Reply, RpcProgram};
use lockd_user::xdr::Decoder;
use lockd_user::{RpcServer, ServerConfig, Transport};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const PORT: u16 = 4045;
const G1: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 1);
const G2: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 2);
const STEADY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 50);
const GRACE_SECS: u64 = 5;

fn host_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, (2 + i / 250) as u8, (1 + i % 250) as u8)
}

/// The status monitor of every simulated host: a notice for host X arrives at X's
/// address (the server looked X's monitor up through X's portmapper).
struct Monitor(mpsc::UnboundedSender<(IpAddr, Instant)>);

impl RpcProgram for Monitor {
    fn program(&self) -> u32 {
        SM_PROG
    }
    fn versions(&self) -> (u32, u32) {
        (SM_VERS, SM_VERS)
    }
    fn call(&self, ctx: &CallContext, args: &mut Decoder<'_>) -> Result<Reply, ProcError> {
        match ctx.proc_ {
            nsm::proc_::NULL => Ok(Reply::Now(vec![])),
            nsm::proc_::NOTIFY => {
                let _a: StatChge = decode_args(args)?;
                let _ = self.0.send((ctx.local.ip(), Instant::now()));
                Ok(Reply::Now(vec![]))
            }
            _ => Err(ProcError::ProcUnavail),
        }
    }
}

fn config_for(ip: Ipv4Addr) -> ClientConfig {
    ClientConfig {
        retransmit: Duration::from_millis(500),
        total_timeout: Duration::from_secs(30),
        local_addr: Some(SocketAddr::new(IpAddr::V4(ip), 0)),
        ..ClientConfig::default()
    }
}

fn lock_of(name: &str, fh: &[u8], off: u64) -> v4::Lock {
    v4::Lock {
        caller_name: name.into(),
        fh: fh.to_vec(),
        oh: name.as_bytes().to_vec(),
        svid: 1,
        l_offset: off,
        l_len: 1,
    }
}

async fn lock(c: &RpcClient, l: v4::Lock, reclaim: bool) -> v4::Stats {
    let r: Result<v4::Res, _> = c
        .call(
            NLM_PROG,
            NLM4_VERS,
            proc_::LOCK,
            &v4::LockArgs {
                cookie: vec![1],
                block: false,
                exclusive: true,
                alock: l,
                reclaim,
                state: 1,
            },
        )
        .await;
    r.map_or(v4::Stats::Failed, |r| r.stat)
}

async fn unlock(c: &RpcClient, l: v4::Lock) -> v4::Stats {
    let r: Result<v4::Res, _> = c
        .call(
            NLM_PROG,
            NLM4_VERS,
            proc_::UNLOCK,
            &v4::UnlockArgs {
                cookie: vec![2],
                alock: l,
            },
        )
        .await;
    r.map_or(v4::Stats::Failed, |r| r.stat)
}

/// Host `i` takes (or reclaims) its `locks` locks in g1: byte `i` of each file.
async fn host_locks(i: usize, fhs: Arc<Vec<Vec<u8>>>, locks: usize, reclaim: bool) -> Instant {
    let ip = host_ip(i);
    let name = format!("sim-{i}");
    let c = RpcClient::tcp(SocketAddr::new(G1.into(), PORT), config_for(ip))
        .await
        .expect("connect to g1");
    for fh in fhs.iter().take(locks) {
        let st = lock(&c, lock_of(&name, fh, i as u64), reclaim).await;
        assert_eq!(st, v4::Stats::Granted, "{name} reclaim={reclaim}");
    }
    Instant::now()
}

struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(lockfs: &Path, cfg: &Path) -> Daemon {
        let mut cmd = if split() {
            let mut c = Command::new("taskset");
            c.arg("-c").arg("0").arg(lockfs);
            c
        } else {
            Command::new(lockfs)
        };
        let mut child = cmd
            .arg("serve")
            .arg("--config")
            .arg(cfg)
            .env("RUST_LOG", "warn,lockfs=info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("lockfs serve");
        let err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let l = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("daemon ready");
            if l.contains("admin socket") {
                break;
            }
        }
        Daemon { child }
    }

    fn stop(self) {
        drop(self);
    }
}

/// Stopped with SIGTERM (which unmounts its exports) also when the driver panics, so no
/// daemon outlives a failed run.
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

fn group(lockfs: &Path, sock: &Path, args: &[&str]) {
    let out = Command::new(lockfs)
        .arg("group")
        .args(args)
        .arg("--socket")
        .arg(sock)
        .output()
        .unwrap();
    assert!(out.status.success(), "lockfs group {args:?}: {out:?}");
}

fn fh(lockfs: &Path, cfg: &Path, path: &Path) -> Vec<u8> {
    let out = Command::new(lockfs)
        .arg("fh")
        .arg("--config")
        .arg(cfg)
        .arg(path)
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

/// CPU time (user + system) a process has used so far, from /proc.
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which ends with the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / hz)
}

/// Whether the daemon and the driver run on CPUs of their own (`BENCH_SPLIT=1`).
fn split() -> bool {
    std::env::var("BENCH_SPLIT").is_ok_and(|v| v == "1")
}

/// Keeps this thread, and the threads it starts, off CPU 0 (the daemon's under split).
fn leave_cpu0() {
    // SAFETY: cpu_set_t is plain data, initialised by CPU_ZERO before use; the calls
    // concern the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        for c in 1..n.max(2) {
            libc::CPU_SET(c, &mut set);
        }
        let r = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            r,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Lowers the calling thread's priority to nice `n` (Linux nice values are per thread).
fn nice_this_thread(n: i32) {
    // SAFETY: gettid and setpriority on the calling thread; no memory is shared.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, n);
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// LOCK+UNLOCK pairs in g2 from one client on one connection until told to stop; each
/// pair's start time and latency.
async fn steady(fh: Vec<u8>, stop: Arc<std::sync::atomic::AtomicBool>) -> Vec<(Instant, Duration)> {
    let c = RpcClient::tcp(SocketAddr::new(G2.into(), PORT), config_for(STEADY))
        .await
        .expect("connect to g2");
    let mut out = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let t = Instant::now();
        let l = lock_of("steady", &fh, 0);
        assert_eq!(lock(&c, l.clone(), false).await, v4::Stats::Granted);
        assert_eq!(unlock(&c, l).await, v4::Stats::Granted);
        out.push((t, t.elapsed()));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let lockfs = PathBuf::from(
        args.get(1)
            .expect("usage: failover_bench LOCKFS [HOSTS] [LOCKS] [GROUP_NOTIFY_PER_SECOND]"),
    );
    let hosts: usize = args.get(2).map_or(1000, |s| s.parse().unwrap());
    let locks: usize = args.get(3).map_or(10, |s| s.parse().unwrap());
    let rate: Option<u32> = args.get(4).map(|s| s.parse().unwrap());
    let pace = rate.map_or(String::new(), |r| {
        format!("group_notify_per_second = {r}\n")
    });
    let rate = rate.map_or_else(
        || format!("{} (default)", lockd_user::lockd::GROUP_NOTIFY_PER_SECOND),
        |r| r.to_string(),
    );
    assert!(hosts <= 1250 && locks <= 64);
    if split() {
        leave_cpu0();
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for g in ["g1", "g2"] {
        std::fs::create_dir_all(d.join(g).join("data")).unwrap();
    }
    let files: Vec<PathBuf> = (0..locks)
        .map(|k| {
            let p = d.join("g1/data").join(format!("f{k}"));
            std::fs::write(&p, b"x").unwrap();
            p
        })
        .collect();
    std::fs::write(d.join("g2/data/f"), b"x").unwrap();
    let cfg = d.join("lockfs.toml");
    let sock = d.join("admin.sock");
    std::fs::write(
        &cfg,
        format!(
            "node_name = \"bench\"\nstate_dir = {state:?}\nadmin_socket = {sock:?}\n\
             grace_period = {GRACE_SECS}\n\
             [listen]\naddresses = [\"127.0.0.1\", \"{G1}\", \"{G2}\"]\nport = {PORT}\n\
             [limits]\n{pace}connections = 4096\n\
             [[group]]\nname = \"g1\"\nstorage = {g1:?}\nserver_ids = [\"nfs-g1={G1}\"]\n\
             online_at_start = true\n\
             [[group]]\nname = \"g2\"\nstorage = {g2:?}\nserver_ids = [\"nfs-g2={G2}\"]\n\
             online_at_start = true\n\
             [[export]]\nname = \"e1\"\nsource = {s1:?}\nmountpoint = {m1:?}\ngroup = \"g1\"\n\
             [[export]]\nname = \"e2\"\nsource = {s2:?}\nmountpoint = {m2:?}\ngroup = \"g2\"\n",
            state = d.join("state"),
            g1 = d.join("g1"),
            g2 = d.join("g2"),
            s1 = d.join("g1/data"),
            s2 = d.join("g2/data"),
            m1 = d.join("m1"),
            m2 = d.join("m2"),
        ),
    )
    .unwrap();
    for m in ["m1", "m2"] {
        std::fs::create_dir_all(d.join(m)).unwrap();
    }
    let fhs: Arc<Vec<Vec<u8>>> = Arc::new(files.iter().map(|f| fh(&lockfs, &cfg, f)).collect());
    let fh2 = fh(&lockfs, &cfg, &d.join("g2/data/f"));
    let daemon = Daemon::start(&lockfs, &cfg);

    let nice: i32 = std::env::var("BENCH_CLIENT_NICE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(move || {
            if nice != 0 {
                nice_this_thread(nice)
            }
        })
        .enable_all()
        .build()
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _services = rt.block_on(async {
        let sm = RpcServer::builder(ServerConfig::default())
            .program(Arc::new(Monitor(tx)))
            .udp("0.0.0.0:0".parse().unwrap())
            .start()
            .await
            .unwrap();
        let pm = Arc::new(Portmapper::new());
        pm.set_local(SM_PROG, SM_VERS, Transport::Udp, sm.udp_addrs()[0]);
        let mut b = RpcServer::builder(ServerConfig::default()).program(pm);
        for i in 0..hosts {
            b = b.udp(SocketAddr::new(host_ip(i).into(), 111));
        }
        (sm, b.start().await.unwrap())
    });

    // Every host takes its locks, 64 hosts at a time.
    let t = Instant::now();
    rt.block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(64));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..hosts {
            let fhs = fhs.clone();
            let permit = sem.clone().acquire_owned().await.unwrap();
            set.spawn(async move {
                host_locks(i, fhs, locks, false).await;
                drop(permit);
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    });
    eprintln!(
        "{} locks taken by {hosts} hosts in {:.1?}",
        hosts * locks,
        t.elapsed()
    );

    // g2's client runs throughout; 3 s alone first (the baseline).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let steady_task = {
        let (fh2, stop) = (fh2.clone(), stop.clone());
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(steady(fh2, stop))
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    group(&lockfs, &sock, &["offline", "g1"]);
    let daemon_cpu = cpu_of(daemon.child.id());
    let own_cpu = cpu_of(std::process::id());
    let online = Instant::now();
    group(&lockfs, &sock, &["online", "g1"]);
    let online_returned = online.elapsed();
    let (first_notice, last_notice, last_reclaim) = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        let mut first = None;
        let mut last = online;
        let mut seen = std::collections::HashSet::new();
        while seen.len() < hosts {
            let (ip, at) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .expect("every host notified within 60 s")
                .unwrap();
            let IpAddr::V4(v4) = ip else { continue };
            let o = v4.octets();
            let i = (o[2] as usize - 2) * 250 + (o[3] as usize - 1);
            if !seen.insert(i) {
                continue;
            }
            first.get_or_insert(at);
            last = at;
            let fhs = fhs.clone();
            set.spawn(host_locks(i, fhs, locks, true));
        }
        let mut last_reclaim = online;
        while let Some(r) = set.join_next().await {
            last_reclaim = last_reclaim.max(r.unwrap());
        }
        (first.unwrap_or(online), last, last_reclaim)
    });
    let failover_end = Instant::now();
    let daemon_cpu = cpu_of(daemon.child.id()).saturating_sub(daemon_cpu);
    let own_cpu = cpu_of(std::process::id()).saturating_sub(own_cpu);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = steady_task.join().unwrap();
    let mut before: Vec<Duration> = samples
        .iter()
        .filter(|(t, _)| *t < online)
        .map(|(_, l)| *l)
        .collect();
    let mut during: Vec<Duration> = samples
        .iter()
        .filter(|(t, _)| *t >= online && *t <= failover_end)
        .map(|(_, l)| *l)
        .collect();
    before.sort();
    during.sort();
    // Runs are short and their tails few samples: `BENCH_SAMPLES=FILE` appends every
    // latency ("before"/"during" and microseconds, one per line) so runs can be pooled.
    if let Ok(path) = std::env::var("BENCH_SAMPLES") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("BENCH_SAMPLES file");
        for (tag, v) in [("before", &before), ("during", &during)] {
            for l in v.iter() {
                writeln!(f, "{tag} {}", l.as_micros()).expect("BENCH_SAMPLES write");
            }
        }
    }

    // The field's way: the whole daemon restarts and every group is in grace.
    let restart = Instant::now();
    daemon.stop();
    let daemon = Daemon::start(&lockfs, &cfg);
    let started = restart.elapsed();
    let refused_for = rt.block_on(async {
        let c = RpcClient::tcp(SocketAddr::new(G2.into(), PORT), config_for(STEADY))
            .await
            .expect("connect to g2");
        loop {
            let l = lock_of("steady", &fh2, 0);
            if lock(&c, l.clone(), false).await == v4::Stats::Granted {
                unlock(&c, l).await;
                return restart.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    daemon.stop();

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "hosts {hosts}, locks per host {locks}, group_notify_per_second {rate}, grace {GRACE_SECS} s"
    );
    let wall = (failover_end - online).as_secs_f64();
    println!(
        "{}simulated hosts at nice {nice}; CPU during the failover ({:.2} s): daemon {:.2} s ({:.0}% of one core), driver {:.2} s ({:.0}%)",
        if split() {
            "daemon on CPU 0, driver on the others; "
        } else {
            ""
        },
        wall,
        daemon_cpu.as_secs_f64(),
        100.0 * daemon_cpu.as_secs_f64() / wall,
        own_cpu.as_secs_f64(),
        100.0 * own_cpu.as_secs_f64() / wall
    );
    println!(
        "failover of g1: group online returned in {:.1} ms; last reclaim granted {:.3} s after group online",
        online_returned.as_secs_f64() * 1e3,
        (last_reclaim - online).as_secs_f64()
    );
    let spread = (last_notice - first_notice).as_secs_f64();
    println!(
        "SM_NOTIFY fan-out: {hosts} hosts notified between {:.3} s and {:.3} s after group online: {:.0} notices/s",
        (first_notice - online).as_secs_f64(),
        (last_notice - online).as_secs_f64(),
        if spread > 0.0 { (hosts - 1) as f64 / spread } else { f64::INFINITY }
    );
    println!(
        "g2 LOCK+UNLOCK before: n={} p50={:.0} us p99={:.0} us; during g1's failover: n={} p50={:.0} us p99={:.0} us; p99 ratio {:.2}",
        before.len(),
        us(pct(&before, 0.5)),
        us(pct(&before, 0.99)),
        during.len(),
        us(pct(&during, 0.5)),
        us(pct(&during, 0.99)),
        us(pct(&during, 0.99)) / us(pct(&before, 0.99)).max(1.0)
    );
    println!(
        "whole-daemon restart: daemon back in {:.2} s; a new g2 lock refused for {:.2} s after the restart began (per-group failover: g2 never refused)",
        started.as_secs_f64(),
        refused_for.as_secs_f64()
    );
}
