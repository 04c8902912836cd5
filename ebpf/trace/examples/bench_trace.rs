//! Lock+unlock pairs per second with tracing attached against detached, in
//! the same run (`scripts/bench-trace.sh` runs it).
//!
//! ```text
//! bench_trace native FILE [SECS]            kernel locks on a native file;
//!                                           attached = filelock tracepoints
//! bench_trace table [SECS]                  the daemon-side path: a SharedTable
//!                                           in this process; attached = uprobes
//!                                           on this binary + the probe gate
//! bench_trace mount FILE DAEMON_PID [SECS]  fcntl on a lockfs mount; attached =
//!                                           what `lockfs trace` does: tracepoints,
//!                                           uprobes on the daemon, its gate opened
//! ```
//!
//! Each mode runs several rounds, alternating which variant goes first so a
//! drift of the machine does not favour one, and reports the median of each
//! variant and their ratio, for throughput and for the CPU time spent per
//! pair by the locking thread plus the daemon (on a shared machine the CPU
//! figure is the steadier one: it does not count time spent waiting for a
//! CPU that other work holds). While attached, a second thread consumes the
//! ring buffer as `lockfs trace` would. Run as root.
//!
//! Attached rounds also read the kernel's own accounting of the programs
//! (`kernel.bpf_stats_enabled`): how often they ran per pair, how long they
//! ran, and how many of the runs were uprobes (each a trap into the kernel and
//! back, about 15 us on these VMs, not included in the run time). With no
//! uprobe runs, the programs' run time is all that attaching adds to a pair,
//! a figure that does not drift with the load of the machine as the
//! throughput and CPU medians do.

use std::{
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use lock_table::{
    Event, FileId, LockKind, LockOutcome, LockRequest, Owner, Range, ScopeId, SharedTable, Wait,
};
use lockfs_trace::{DaemonGate, TraceOptions, Tracer, GATE_ALL, GATE_CONTENTION};

type Error = Box<dyn std::error::Error>;

/// Rounds per variant unless `BENCH_ROUNDS` says otherwise. Many short
/// rounds, alternating, resist the drift of a shared machine better than a
/// few long ones.
const ROUNDS: usize = 9;

fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(ROUNDS)
}

fn fcntl_pair(fd: i32) {
    // SAFETY: all-zero is a valid flock; fields set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_len = 100;
    for typ in [libc::F_WRLCK, libc::F_UNLCK] {
        fl.l_type = typ as libc::c_short;
        // SAFETY: fd is open, fl is a valid flock.
        let rc = unsafe { libc::fcntl(fd, libc::F_SETLK, &fl) };
        assert_eq!(rc, 0, "fcntl: {}", std::io::Error::last_os_error());
    }
}

/// CPU time of the calling thread (user + system), nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time of every thread of process `pid` (user + system), nanoseconds.
fn process_cpu_ns(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may contain spaces, in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * (1_000_000_000 / hz)
}

/// One timed run: throughput, and CPU spent per pair by the locking thread
/// plus the daemon serving it (the cost that does not depend on how busy
/// the rest of the machine is).
#[derive(Clone, Copy)]
struct Sample {
    pairs_per_s: f64,
    cpu_ns_per_pair: f64,
    pairs: u64,
}

/// What the kernel counted for the attached programs during one round.
#[derive(Clone, Copy, Default)]
struct BpfCost {
    runs: u64,
    uprobe_runs: u64,
    run_ns: u64,
}

/// Runs `pair` for `secs`.
fn rate(secs: f64, daemon: Option<u32>, mut pair: impl FnMut()) -> Sample {
    let dur = Duration::from_secs_f64(secs);
    let cpu0 = thread_cpu_ns() + daemon.map_or(0, process_cpu_ns);
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        for _ in 0..256 {
            pair();
        }
        n += 256;
        let el = start.elapsed();
        if el >= dur {
            let cpu = thread_cpu_ns() + daemon.map_or(0, process_cpu_ns) - cpu0;
            return Sample {
                pairs_per_s: n as f64 / el.as_secs_f64(),
                cpu_ns_per_pair: cpu as f64 / n as f64,
                pairs: n,
            };
        }
    }
}

/// A loaded tracer whose ring buffer a thread drains until [`Attached::stop`].
struct Attached {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Tracer, usize)>,
    gate: Option<DaemonGate>,
}

impl Attached {
    fn start(kernel: bool, daemon: Option<u32>, gate: u32) -> Result<Attached, Error> {
        let mut tracer = Tracer::load(TraceOptions {
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/lockfs-bench-{}", std::process::id())),
            replace_stale_pins: true,
        })?;
        if kernel {
            tracer.attach_kernel_filelock()?;
        }
        let mut opened = None;
        if let Some(pid) = daemon {
            tracer.attach_daemon(Path::new(&format!("/proc/{pid}/exe")), Some(pid))?;
            let g = DaemonGate::open(pid)?;
            g.set(gate)?;
            opened = Some(g);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = 0;
            while !flag.load(Ordering::Relaxed) {
                seen += tracer
                    .poll_events(Duration::from_millis(100))
                    .map_or(0, |v| v.len());
            }
            seen += tracer.drain_events().len();
            (tracer, seen)
        });
        Ok(Attached {
            stop,
            thread,
            gate: opened,
        })
    }

    fn stop(self) -> Result<(usize, BpfCost), Error> {
        if let Some(g) = &self.gate {
            g.set(0)?;
        }
        self.stop.store(true, Ordering::Relaxed);
        let (mut tracer, seen) = self.thread.join().map_err(|_| "drain thread panicked")?;
        let mut cost = BpfCost::default();
        for st in tracer.program_stats()? {
            cost.runs += st.run_count;
            cost.run_ns += st.run_time.as_nanos() as u64;
            if st.name.starts_with("lfs_up_") {
                cost.uprobe_runs += st.run_count;
            }
        }
        tracer.unpin()?;
        Ok((seen, cost))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `ROUNDS` rounds of detached and each attached variant.
fn compare(
    what: &str,
    secs: f64,
    cpu_of: Option<u32>,
    variants: &[(&str, bool, Option<u32>, u32)],
    mut pair: impl FnMut(),
) -> Result<(), Error> {
    rate(secs / 4.0, cpu_of, &mut pair); // warm up
    let _stats_on = Tracer::enable_program_stats()?;
    let mut detached = Vec::new();
    let mut attached: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    let mut costs: Vec<Vec<(BpfCost, u64)>> = vec![Vec::new(); variants.len()];
    let mut events = vec![0usize; variants.len()];
    let rounds = rounds();
    for round in 0..rounds {
        if round % 2 == 0 {
            detached.push(rate(secs, cpu_of, &mut pair));
        }
        for (i, &(_, kernel, daemon, gate)) in variants.iter().enumerate() {
            let a = Attached::start(kernel, daemon, gate)?;
            let s = rate(secs, cpu_of, &mut pair);
            attached[i].push(s);
            let (seen, cost) = a.stop()?;
            events[i] += seen;
            costs[i].push((cost, s.pairs));
        }
        if round % 2 == 1 {
            detached.push(rate(secs, cpu_of, &mut pair));
        }
    }
    let stats = |v: &[Sample]| {
        let rates: Vec<f64> = v.iter().map(|s| s.pairs_per_s).collect();
        let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rates.iter().copied().fold(0.0, f64::max);
        (
            median(rates),
            median(v.iter().map(|s| s.cpu_ns_per_pair).collect()),
            format!("rounds {lo:.0}..{hi:.0}"),
        )
    };
    let (base, base_cpu, spread) = stats(&detached);
    println!("{what}: {rounds} rounds of {secs} s per variant, medians");
    println!(
        "  {:<22} {:>10} {:>7} {:>13} {:>9}  events",
        "", "pairs/s", "ratio", "CPU ns/pair", "CPU ratio"
    );
    println!(
        "  {:<22} {base:>10.0} {:>7} {base_cpu:>13.0} {:>9}  -       ({spread})",
        "detached", "1.000", "1.000"
    );
    for (i, (name, ..)) in variants.iter().enumerate() {
        let (m, cpu, spread) = stats(&attached[i]);
        println!(
            "  {:<22} {m:>10.0} {:>7.3} {cpu:>13.0} {:>9.3}  {:<7} ({spread})",
            format!("attached, {name}"),
            m / base,
            cpu / base_cpu,
            events[i]
        );
    }
    println!("  kernel accounting of the attached programs (all rounds):");
    println!(
        "  {:<22} {:>10} {:>13} {:>13} {:>13}",
        "", "runs/pair", "uprobe runs", "BPF ns/pair", "of detached"
    );
    for (i, (name, ..)) in variants.iter().enumerate() {
        let (runs, uprobes, ns, pairs) = costs[i].iter().fold((0, 0, 0, 0), |a, (c, p)| {
            (a.0 + c.runs, a.1 + c.uprobe_runs, a.2 + c.run_ns, a.3 + p)
        });
        let per_pair = ns as f64 / pairs.max(1) as f64;
        println!(
            "  {:<22} {:>10.2} {uprobes:>13} {per_pair:>13.0} {:>12.2}%",
            format!("attached, {name}"),
            runs as f64 / pairs.max(1) as f64,
            100.0 * per_pair / base_cpu
        );
    }
    Ok(())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let secs = |i: usize| args.get(i).map_or(Ok(2.0), |s| s.parse::<f64>());
    match args.first().map(String::as_str) {
        Some("native") | Some("mount") => {
            let mount = args[0] == "mount";
            let path = args.get(1).ok_or("missing FILE")?;
            let daemon = if mount {
                Some(args.get(2).ok_or("missing DAEMON_PID")?.parse::<u32>()?)
            } else {
                None
            };
            let secs = secs(if mount { 3 } else { 2 })?;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)?;
            let fd = file.as_raw_fd();
            let what = if mount {
                format!("fcntl lock+unlock on a lockfs mount ({path})")
            } else {
                format!("fcntl lock+unlock on a native file ({path})")
            };
            let variants: &[(&str, bool, Option<u32>, u32)] = if mount {
                &[
                    ("contention", true, daemon, GATE_CONTENTION),
                    ("all events", true, daemon, GATE_CONTENTION | GATE_ALL),
                ]
            } else {
                &[("tracepoints", true, None, 0)]
            };
            compare(&what, secs, daemon, variants, || fcntl_pair(fd))
        }
        Some("table") => {
            let secs = secs(1)?;
            let table = SharedTable::new(|_e: Event| {});
            let file = FileId::new(1, 2);
            let owner = Owner::posix(7);
            let range = Range::new(0, 99)?;
            let req = LockRequest {
                file,
                scope: ScopeId::DEFAULT,
                owner,
                pid: 7,
                kind: LockKind::Exclusive,
                range,
                wait: Wait::No,
                reclaim: false,
            };
            let me = Some(std::process::id());
            compare(
                "lock_table::SharedTable lock+unlock (the daemon-side path, no FUSE)",
                secs,
                None,
                &[
                    ("gate closed", false, me, 0),
                    ("contention", false, me, GATE_CONTENTION),
                    ("all events", false, me, GATE_CONTENTION | GATE_ALL),
                ],
                || {
                    let out = table.with(|t| t.lock(&req));
                    assert_eq!(out, LockOutcome::Granted);
                    table.with(|t| t.unlock(file, owner, range));
                },
            )
        }
        _ => Err(
            "usage: bench_trace native FILE [SECS] | table [SECS] | mount FILE DAEMON_PID [SECS]"
                .into(),
        ),
    }
}
