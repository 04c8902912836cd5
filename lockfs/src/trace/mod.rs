//! `lockfs trace`: who waits on which file, for how long, behind whom.
//!
//! Loads the eBPF programs (through `lockfs-trace`), attaches them to the
//! kernel's `filelock` tracepoints and to a running daemon's probe points,
//! opens the daemon's probe gate, and shows what arrives: a screen that
//! refreshes like top, one snapshot (`--once`), or JSON lines (`--json`).
//! lockfs itself never depends on any of this: when BPF cannot be loaded
//! only this command fails, and it says why.

mod filter;
mod json;
mod paths;
mod target;
mod view;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use lockfs_trace::{DaemonGate, TraceOptions, Tracer, GATE_ALL, GATE_CONTENTION};

use filter::Filter;
use paths::{Name, PathIndex};
use view::{MapState, View};

/// Options of `lockfs trace`.
#[derive(clap::Args, Debug)]
pub struct TraceArgs {
    /// The daemon to trace (default: the only running lockfs process).
    #[arg(long, value_name = "PID")]
    pub daemon_pid: Option<u32>,
    /// Trace only the kernel's file locks (native file systems); attach to
    /// no daemon.
    #[arg(long, conflicts_with = "daemon_pid")]
    pub kernel_only: bool,
    /// Also trace uncontended requests, grants and releases in the daemon.
    /// Each then costs a uprobe trap (about 15 us): use it briefly.
    #[arg(long)]
    pub all_events: bool,
    /// Print one snapshot after --duration (default 1 s) and exit.
    #[arg(long)]
    pub once: bool,
    /// Stream events as JSON lines (with --once, then one snapshot line).
    #[arg(long)]
    pub json: bool,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Seconds between screen refreshes.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub interval: f64,
    /// Show only files below this directory; files are also named by their
    /// path under it. For a lockfs mount, give its source directory.
    #[arg(long, value_name = "DIR")]
    pub path_prefix: Option<PathBuf>,
    /// Show only events of this process (lock pid, NLM svid, or the process
    /// that asked).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Show only events of this NLM client host.
    #[arg(long)]
    pub host: Option<String>,
    /// Number of files shown.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// bpffs directory the maps are pinned in while tracing.
    #[arg(long, default_value = lockfs_trace::DEFAULT_PIN_DIR, value_name = "DIR")]
    pub pin_dir: PathBuf,
    /// Remove the pinned maps on exit (by default they stay for bpftool
    /// until the next `lockfs trace` replaces them).
    #[arg(long)]
    pub unpin: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn catch_stop_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an
        // atomic, which is async-signal-safe. No SA_RESTART, so a pending
        // poll returns early.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Closes the daemon's gate however the command ends.
struct OpenGate(DaemonGate);

impl Drop for OpenGate {
    fn drop(&mut self) {
        // A daemon that exited while traced has no gate left to close.
        if !Path::new(&format!("/proc/{}", self.0.pid())).exists() {
            return;
        }
        if let Err(e) = self.0.set(0) {
            eprintln!(
                "lockfs trace: could not close the probe gate of process {}: {e}",
                self.0.pid()
            );
        }
    }
}

fn read_maps(tracer: &Tracer) -> Result<MapState> {
    Ok(MapState {
        files: tracer.file_stats()?,
        waiters: tracer.waiters()?,
        histogram: tracer.wait_histogram()?,
        diagnostics: tracer.diagnostics()?,
        now_ns: monotonic_ns(),
    })
}

fn seconds(s: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .with_context(|| format!("{what} must be a positive number of seconds"))
}

/// Runs `lockfs trace`.
pub fn run(args: &TraceArgs) -> Result<()> {
    let interval = seconds(args.interval, "--interval")?.max(Duration::from_millis(50));
    let duration = match (args.duration, args.once) {
        (Some(d), _) => Some(seconds(d, "--duration")?),
        (None, true) => Some(Duration::from_secs(1)),
        (None, false) => None,
    };
    let daemon = if args.kernel_only {
        None
    } else {
        Some(target::daemon_pid(args.daemon_pid)?)
    };
    let filter = Filter {
        path_prefix: args.path_prefix.clone(),
        pid: args.pid,
        host: args.host.clone(),
    };

    let mut tracer = Tracer::load(TraceOptions {
        pin_dir: args.pin_dir.clone(),
        replace_stale_pins: true,
    })
    .context("cannot trace: loading the eBPF programs failed")?;
    let result = trace(&mut tracer, args, daemon, &filter, interval, duration);
    if args.unpin {
        if let Err(e) = tracer.unpin() {
            eprintln!("lockfs trace: {e}");
        }
    }
    result
}

fn trace(
    tracer: &mut Tracer,
    args: &TraceArgs,
    daemon: Option<u32>,
    filter: &Filter,
    interval: Duration,
    duration: Option<Duration>,
) -> Result<()> {
    let points = tracer
        .attach_kernel_filelock()
        .context("cannot trace kernel file locks")?;
    let mut header = format!("lockfs trace: kernel ({} tracepoints)", points.len());
    let _gate = match daemon {
        Some(pid) => {
            tracer
                .attach_daemon(Path::new(&format!("/proc/{pid}/exe")), Some(pid))
                .with_context(|| format!("cannot trace lockfs process {pid}"))?;
            let gate = DaemonGate::open(pid)
                .with_context(|| format!("cannot trace lockfs process {pid}"))?;
            let value = if args.all_events {
                GATE_CONTENTION | GATE_ALL
            } else {
                GATE_CONTENTION
            };
            // Installed before the gate opens, so a failure below still
            // leaves the daemon untraced.
            catch_stop_signals();
            let open = OpenGate(gate);
            open.0.set(value)?;
            header.push_str(&format!(
                " + lockfs pid {pid} ({})",
                if args.all_events {
                    "all events"
                } else {
                    "contention events; daemon holders need --all-events"
                }
            ));
            Some(open)
        }
        None => {
            catch_stop_signals();
            None
        }
    };
    // Built before the start is announced: a file created after that line
    // is one the first walk did not see.
    let mut paths = PathIndex::new(args.path_prefix.clone());
    tracing::info!(%header, "tracing");
    if args.json {
        // Tells a reader (and the tests) that events from now on are seen.
        emit_line(&serde_json::json!({ "tracing": header, "pin_dir": tracer.pin_dir() }))?;
    }

    let mut view = View::default();
    view.daemon_holders = args.all_events;
    let started = Instant::now();
    let mut next_screen = started + interval;
    let live = !args.once && !args.json;
    while !STOP.load(Ordering::Relaxed) {
        let now = Instant::now();
        if duration.is_some_and(|d| now >= started + d) {
            break;
        }
        let mut wait = next_screen
            .saturating_duration_since(now)
            .min(Duration::from_millis(200));
        if let Some(d) = duration {
            wait = wait.min((started + d).saturating_duration_since(now));
        }
        for ev in tracer.poll_events(wait)? {
            view.record(&ev, filter);
            if args.json && filter.matches_party(&ev) {
                emit_event(&ev, filter, &mut paths)?;
            }
        }
        if live && Instant::now() >= next_screen {
            next_screen += interval;
            let snap = view.snapshot(
                &read_maps(tracer)?,
                filter,
                &mut paths,
                args.top,
                started.elapsed(),
            );
            // Home, clear screen, then the new frame: a plain ANSI redraw.
            emit_text(&format!("\x1b[H\x1b[2J{}", view::render(&snap, &header)))?;
        }
    }
    // Events that arrived just before the end belong to the snapshot.
    for ev in tracer.drain_events() {
        view.record(&ev, filter);
        if args.json && filter.matches_party(&ev) {
            emit_event(&ev, filter, &mut paths)?;
        }
    }
    if args.once {
        // One snapshot: name files created since the last walk rather than
        // listing them by number.
        paths.walk_on_next_miss();
        let snap = view.snapshot(
            &read_maps(tracer)?,
            filter,
            &mut paths,
            args.top,
            started.elapsed(),
        );
        if args.json {
            emit_line(&serde_json::json!({ "snapshot": snap }))?;
        } else {
            emit_text(&view::render(&snap, &header))?;
        }
    }
    Ok(())
}

/// One JSON event line, unless the file is known to lie outside the prefix
/// (a file not named yet goes out with a null path and its device and inode).
fn emit_event(ev: &lockfs_trace::Event, filter: &Filter, paths: &mut PathIndex) -> Result<()> {
    let path = match paths.resolve(ev.dev, ev.ino) {
        Name::Path(p) if filter.matches_path(Some(&p)) => Some(p),
        Name::Unnamed => None,
        Name::Path(_) | Name::Outside => return Ok(()),
    };
    emit_line(&json::event(ev, path.as_deref()))
}

fn emit_text(s: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())
        .and_then(|()| out.flush())
        .context("writing to standard output")
}

fn emit_line(v: &serde_json::Value) -> Result<()> {
    emit_text(&format!("{v}\n"))
}
