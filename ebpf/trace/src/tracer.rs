//! Loading, pinning, attaching and reading: the [`Tracer`].

use std::{
    num::NonZeroU32,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{uprobe::UProbeScope, ProgramError, TracePoint, UProbe},
    Ebpf, EbpfError, EbpfLoader,
};
use lockfs_ebpf_common::{
    EventKind, FileKey, FileStats, WaiterEntry, WaiterKey, ALL_MAPS, DIAG_SLOTS, HIST_BUCKETS,
    MAP_DIAG, MAP_EVENTS, MAP_FILES, MAP_WAITERS, MAP_WAIT_HIST,
};

use crate::{
    error::is_permission,
    event::Event,
    fs::{ensure_bpffs, ensure_tracefs},
    stats::{Diagnostics, WaitHistogram},
    symbols::require_probe_symbols,
    tracefs::{check_layout, read_format, POINTS},
    TraceError,
};

/// Where maps are pinned unless [`TraceOptions::pin_dir`] says otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lockfs";

const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The compiled programs, or an empty slice when built with `AYA_BUILD_SKIP`.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lockfs-ebpf"));

/// How to load the tracer.
#[derive(Clone, Debug)]
pub struct TraceOptions {
    /// Directory (on bpffs) the maps are pinned in; created if missing.
    pub pin_dir: PathBuf,
    /// Replace pins left by an earlier tracer instead of failing.
    pub replace_stale_pins: bool,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            replace_stale_pins: true,
        }
    }
}

/// Loaded programs and pinned maps. Dropping it detaches every program; the
/// pins stay (so counters can still be dumped) until [`Tracer::unpin`].
pub struct Tracer {
    ebpf: Ebpf,
    events: RingBuf<MapData>,
    pin_dir: PathBuf,
    pinned: Vec<PathBuf>,
    attached_points: Vec<String>,
    daemon_targets: Vec<PathBuf>,
    undecodable: u64,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("pin_dir", &self.pin_dir)
            .field("attached_points", &self.attached_points)
            .field("daemon_targets", &self.daemon_targets)
            .finish_non_exhaustive()
    }
}

fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass and nothing else.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        // Modern kernels charge BPF memory to the memory cgroup, so a
        // fixed memlock limit is harmless; older ones fail map creation later
        // with a clear error of their own.
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "could not raise RLIMIT_MEMLOCK; continuing"
        );
    }
}

fn load_error(err: EbpfError) -> TraceError {
    if let Some(source) = is_permission(&err) {
        return TraceError::NoPrivilege {
            action: "create BPF maps".to_owned(),
            source,
        };
    }
    if let EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error, .. }) = &err {
        if io_error.raw_os_error() == Some(libc::EINVAL) && name == MAP_EVENTS {
            return TraceError::FeatureMissing {
                feature: "BPF ring buffer maps (Linux 5.8+)".to_owned(),
                detail: err.to_string(),
            };
        }
    }
    TraceError::Load(Box::new(err))
}

fn program_error(program: &str, err: ProgramError) -> TraceError {
    if let Some(source) = is_permission(&err) {
        return TraceError::NoPrivilege {
            action: format!("load program {program}"),
            source,
        };
    }
    TraceError::Verifier {
        program: program.to_owned(),
        detail: err.to_string(),
    }
}

fn attach_error(program: &str, target: String, err: ProgramError) -> TraceError {
    if let Some(source) = is_permission(&err) {
        return TraceError::NoPrivilege {
            action: format!("attach {program} to {target}"),
            source,
        };
    }
    TraceError::Attach {
        program: program.to_owned(),
        target,
        source: Box::new(err),
    }
}

/// The uprobe program for each probe point, in [`EventKind::ALL`] order.
const UPROBE_PROGRAMS: [&str; 8] = [
    "lfs_up_request",
    "lfs_up_granted",
    "lfs_up_refused",
    "lfs_up_blocked",
    "lfs_up_waitend",
    "lfs_up_release",
    "lfs_up_shareref",
    "lfs_up_ioblock",
];

impl Tracer {
    /// Loads every program, creates and pins the maps. Nothing is attached yet.
    pub fn load(opts: TraceOptions) -> Result<Tracer, TraceError> {
        if PROGRAMS.is_empty() {
            return Err(TraceError::ProgramsNotBuilt);
        }
        if !Path::new(KERNEL_BTF).exists() {
            return Err(TraceError::NoBtf {
                path: PathBuf::from(KERNEL_BTF),
            });
        }
        raise_memlock();
        let mut ebpf = EbpfLoader::new().load(PROGRAMS).map_err(load_error)?;

        let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_owned()).collect();
        for name in &names {
            let Some(prog) = ebpf.program_mut(name) else {
                continue;
            };
            let res = match prog {
                aya::programs::Program::TracePoint(p) => p.load(),
                aya::programs::Program::UProbe(p) => p.load(),
                _ => continue,
            };
            res.map_err(|e| program_error(name, e))?;
        }

        ensure_bpffs(&opts.pin_dir)?;
        let pin_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source: std::io::Error| {
                if source.raw_os_error() == Some(libc::EPERM)
                    || source.raw_os_error() == Some(libc::EACCES)
                {
                    TraceError::NoPrivilege {
                        action: format!("pin maps at {}", path.display()),
                        source,
                    }
                } else {
                    TraceError::Pin { path, source }
                }
            }
        };
        std::fs::create_dir_all(&opts.pin_dir).map_err(pin_err(&opts.pin_dir))?;
        let mut pinned = Vec::new();
        for name in ALL_MAPS {
            let path = opts.pin_dir.join(name);
            if path.exists() {
                if !opts.replace_stale_pins {
                    return Err(TraceError::Pin {
                        path,
                        source: std::io::Error::from_raw_os_error(libc::EEXIST),
                    });
                }
                std::fs::remove_file(&path).map_err(pin_err(&path))?;
            }
            let map = ebpf.map(name).ok_or_else(|| {
                TraceError::Load(format!("the eBPF object has no map {name}").into())
            })?;
            map.pin(&path).map_err(|e| {
                let source = match e {
                    aya::pin::PinError::SyscallError(s) => s.io_error,
                    other => std::io::Error::other(other.to_string()),
                };
                pin_err(&path)(source)
            })?;
            pinned.push(path);
        }

        let events = ebpf.take_map(MAP_EVENTS).ok_or_else(|| {
            TraceError::Load(format!("the eBPF object has no map {MAP_EVENTS}").into())
        })?;
        let events = RingBuf::try_from(events).map_err(|e| TraceError::Load(Box::new(e)))?;

        Ok(Tracer {
            ebpf,
            events,
            pin_dir: opts.pin_dir,
            pinned,
            attached_points: Vec::new(),
            daemon_targets: Vec::new(),
            undecodable: 0,
        })
    }

    /// The directory the maps are pinned in.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Attaches the kernel lock tracepoints. Returns the `category:name` of
    /// each attached point; optional points the kernel lacks are skipped.
    pub fn attach_kernel_filelock(&mut self) -> Result<Vec<String>, TraceError> {
        let root = ensure_tracefs()?;
        let mut attached = Vec::new();
        for spec in POINTS {
            let event = format!("{}:{}", spec.category, spec.name);
            if self.attached_points.contains(&event) {
                continue;
            }
            let Some(format) = read_format(root, spec.category, spec.name)? else {
                if spec.optional {
                    tracing::info!(%event, "tracepoint not present; skipped");
                    continue;
                }
                return Err(TraceError::FeatureMissing {
                    feature: format!("tracepoint {event}"),
                    detail: format!(
                        "{} has no events/{}/{}",
                        root.display(),
                        spec.category,
                        spec.name
                    ),
                });
            };
            check_layout(spec, &format)?;
            let prog: &mut TracePoint = self
                .ebpf
                .program_mut(spec.program)
                .ok_or_else(|| TraceError::Load(format!("no program {}", spec.program).into()))?
                .try_into()
                .map_err(|e| program_error(spec.program, e))?;
            prog.attach(spec.category, spec.name)
                .map_err(|e| attach_error(spec.program, event.clone(), e))?;
            self.attached_points.push(event.clone());
            attached.push(event);
        }
        Ok(attached)
    }

    /// Attaches the uprobes to a lockfs daemon binary (for a running daemon,
    /// `/proc/<pid>/exe`), limited to process `pid` if given.
    pub fn attach_daemon(&mut self, exe: &Path, pid: Option<u32>) -> Result<(), TraceError> {
        require_probe_symbols(exe)?;
        let scope = match pid.and_then(NonZeroU32::new) {
            Some(pid) => UProbeScope::OneProcess(pid),
            None => UProbeScope::AllProcesses,
        };
        for (kind, program) in EventKind::ALL.iter().zip(UPROBE_PROGRAMS) {
            let symbol = kind.symbol();
            let prog: &mut UProbe = self
                .ebpf
                .program_mut(program)
                .ok_or_else(|| TraceError::Load(format!("no program {program}").into()))?
                .try_into()
                .map_err(|e| program_error(program, e))?;
            prog.attach(symbol, exe, scope)
                .map_err(|e| attach_error(program, format!("{}:{symbol}", exe.display()), e))?;
        }
        self.daemon_targets.push(exe.to_path_buf());
        Ok(())
    }

    /// The ring buffer's file descriptor, readable when events are waiting
    /// (for integration with an event loop such as tokio's `AsyncFd`).
    pub fn events_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }

    /// Takes every event already in the ring buffer, without waiting.
    /// Records that do not decode are counted ([`Tracer::undecodable`]) and skipped.
    pub fn drain_events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            match Event::decode(&item) {
                Ok(ev) => out.push(ev),
                Err(err) => {
                    self.undecodable += 1;
                    tracing::warn!(%err, "dropping undecodable event");
                }
            }
        }
        out
    }

    /// Waits up to `timeout` for at least one event, then drains.
    pub fn poll_events(&mut self, timeout: Duration) -> Result<Vec<Event>, TraceError> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.drain_events();
            if !got.is_empty() {
                return Ok(got);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(got);
            }
            let mut pfd = libc::pollfd {
                fd: self.events.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd, count 1.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(TraceError::Io {
                        action: "polling the event ring buffer".to_owned(),
                        source: err,
                    });
                }
            }
        }
    }

    /// An iterator over events that ends once `idle` passes with none.
    pub fn events(&mut self, idle: Duration) -> Events<'_> {
        Events {
            tracer: self,
            idle,
            buffered: std::collections::VecDeque::new(),
        }
    }

    /// Records seen in the ring buffer that did not decode.
    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }

    /// Per-file counters, summed over CPUs (`wait_ns_max` is the largest).
    pub fn file_stats(&self) -> Result<Vec<(FileKey, FileStats)>, TraceError> {
        let map_err = |e: aya::maps::MapError| TraceError::MapRead {
            map: MAP_FILES,
            source: Box::new(e),
        };
        let map = self.map(MAP_FILES)?;
        let files: PerCpuHashMap<_, FileKey, FileStats> =
            PerCpuHashMap::try_from(map).map_err(map_err)?;
        let mut out = Vec::new();
        for item in files.iter() {
            let (key, per_cpu) = item.map_err(map_err)?;
            let mut sum = FileStats::default();
            for s in per_cpu.iter() {
                sum.attempts += s.attempts;
                sum.conflicts += s.conflicts;
                sum.blocked += s.blocked;
                sum.waits += s.waits;
                sum.wait_ns_total += s.wait_ns_total;
                sum.wait_ns_max = sum.wait_ns_max.max(s.wait_ns_max);
            }
            out.push((key, sum));
        }
        out.sort_by_key(|(k, _)| (k.dev, k.ino));
        Ok(out)
    }

    /// Counters of one file, if it has any.
    pub fn file_stat(&self, dev: u64, ino: u64) -> Result<Option<FileStats>, TraceError> {
        Ok(self
            .file_stats()?
            .into_iter()
            .find(|(k, _)| k.dev == dev && k.ino == ino)
            .map(|(_, s)| s))
    }

    /// The wait-time histogram, summed over CPUs.
    pub fn wait_histogram(&self) -> Result<WaitHistogram, TraceError> {
        let slots = self.per_cpu_sums(MAP_WAIT_HIST, HIST_BUCKETS)?;
        let mut buckets = [0u64; HIST_BUCKETS as usize];
        buckets.copy_from_slice(&slots);
        Ok(WaitHistogram { buckets })
    }

    /// Counters of dropped or unmatched input.
    pub fn diagnostics(&self) -> Result<Diagnostics, TraceError> {
        Ok(Diagnostics::from_slots(
            &self.per_cpu_sums(MAP_DIAG, DIAG_SLOTS)?,
        ))
    }

    /// Waits in progress right now.
    pub fn waiters(&self) -> Result<Vec<(WaiterKey, WaiterEntry)>, TraceError> {
        let map_err = |e: aya::maps::MapError| TraceError::MapRead {
            map: MAP_WAITERS,
            source: Box::new(e),
        };
        let waiters: HashMap<_, WaiterKey, WaiterEntry> =
            HashMap::try_from(self.map(MAP_WAITERS)?).map_err(map_err)?;
        waiters
            .iter()
            .map(|r| r.map_err(map_err))
            .collect::<Result<Vec<_>, _>>()
    }

    /// Run counts and total run time of every loaded program. The kernel
    /// only collects them while statistics are on (see
    /// [`Tracer::enable_program_stats`] or `sysctl kernel.bpf_stats_enabled`).
    pub fn program_stats(&self) -> Result<Vec<ProgramStat>, TraceError> {
        let mut out = Vec::new();
        for (name, prog) in self.ebpf.programs() {
            let info = match prog.info() {
                Ok(info) => info,
                // Loaded lazily or detached: nothing to report.
                Err(ProgramError::NotLoaded) => continue,
                Err(e) => return Err(program_error(name, e)),
            };
            out.push(ProgramStat {
                name: name.to_owned(),
                run_count: info.run_count(),
                run_time: info.run_time(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Turns on the kernel's BPF run-time statistics for as long as the
    /// returned descriptor stays open.
    pub fn enable_program_stats() -> Result<std::os::fd::OwnedFd, TraceError> {
        aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| {
            let source = e.io_error;
            if matches!(
                source.raw_os_error(),
                Some(libc::EPERM) | Some(libc::EACCES)
            ) {
                TraceError::NoPrivilege {
                    action: "enable BPF statistics".to_owned(),
                    source,
                }
            } else {
                TraceError::Io {
                    action: "enabling BPF statistics".to_owned(),
                    source,
                }
            }
        })
    }

    /// Removes the pinned maps and the pin directory (if then empty). The
    /// programs stay attached until the tracer is dropped.
    pub fn unpin(&mut self) -> Result<(), TraceError> {
        for path in self.pinned.drain(..) {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(TraceError::Pin { path, source }),
            }
        }
        match std::fs::remove_dir(&self.pin_dir) {
            Ok(()) => Ok(()),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTEMPTY) =>
            {
                Ok(())
            }
            Err(source) => Err(TraceError::Pin {
                path: self.pin_dir.clone(),
                source,
            }),
        }
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, TraceError> {
        self.ebpf.map(name).ok_or_else(|| TraceError::MapRead {
            map: name,
            source: "map missing from the eBPF object".into(),
        })
    }

    fn per_cpu_sums(&self, name: &'static str, len: u32) -> Result<Vec<u64>, TraceError> {
        let map_err = |e: aya::maps::MapError| TraceError::MapRead {
            map: name,
            source: Box::new(e),
        };
        let arr: PerCpuArray<_, u64> = PerCpuArray::try_from(self.map(name)?).map_err(map_err)?;
        (0..len)
            .map(|i| Ok(arr.get(&i, 0).map_err(map_err)?.iter().sum()))
            .collect()
    }
}

/// Run statistics of one program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramStat {
    /// Program name (as in `bpftool prog show`).
    pub name: String,
    /// Times the program ran while statistics were on.
    pub run_count: u64,
    /// Total time spent in the program while statistics were on.
    pub run_time: Duration,
}

/// Iterator returned by [`Tracer::events`].
pub struct Events<'a> {
    tracer: &'a mut Tracer,
    idle: Duration,
    buffered: std::collections::VecDeque<Event>,
}

impl Iterator for Events<'_> {
    type Item = Result<Event, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(ev) = self.buffered.pop_front() {
            return Some(Ok(ev));
        }
        match self.tracer.poll_events(self.idle) {
            Ok(evs) if evs.is_empty() => None,
            Ok(evs) => {
                self.buffered.extend(evs);
                self.buffered.pop_front().map(Ok)
            }
            Err(e) => Some(Err(e)),
        }
    }
}
