//! What `lockfs trace` shows: events folded into per-file rows (counters from
//! the kernel maps, holders and waiters, wait times) and rendered as a
//! top-like text screen or as JSON.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use lockfs_trace::{
    Diagnostics, Event, EventKind, FileKey, FileStats, LockType, OwnerKind, Source, WaitEndReason,
    WaitHistogram, WaiterEntry, WaiterKey, TO_EOF,
};
use serde::Serialize;

use super::filter::Filter;
use super::paths::{Name, PathIndex};

/// Wait samples kept per file for percentiles; older ones are dropped.
const SAMPLES_PER_FILE: usize = 4096;

/// A lock holder or waiter as the screen lists it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Party {
    pub source: &'static str,
    pub pid: u32,
    pub tgid: u32,
    pub owner: &'static str,
    pub lock: &'static str,
    pub start: u64,
    /// Inclusive end; `None` means to end of file.
    pub end: Option<u64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// For waiters: how long it has waited so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_ns: Option<u64>,
}

/// Wait-time percentiles over the waits seen (nanoseconds).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

impl Percentiles {
    pub fn of(samples: &[u64]) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        let mut v = samples.to_vec();
        v.sort_unstable();
        let at = |q: f64| v[(((v.len() - 1) as f64) * q).round() as usize];
        Percentiles {
            count: v.len() as u64,
            p50_ns: at(0.50),
            p90_ns: at(0.90),
            p99_ns: at(0.99),
            max_ns: v[v.len() - 1],
        }
    }
}

/// One file of the snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct FileRow {
    pub dev: u64,
    pub ino: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub attempts: u64,
    pub conflicts: u64,
    pub blocked: u64,
    pub waits: u64,
    pub wait_ns_total: u64,
    pub wait_ns_max: u64,
    pub wait: Percentiles,
    pub holders: Vec<Party>,
    pub waiters: Vec<Party>,
}

/// One histogram bucket `[low_ns, high_ns)`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Bucket {
    pub low_ns: u64,
    pub high_ns: u64,
    pub count: u64,
}

/// Everything one screen (or `--once`) shows.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub elapsed_ms: u64,
    pub events: u64,
    pub files: Vec<FileRow>,
    pub wait: Percentiles,
    pub histogram: Vec<Bucket>,
    pub diagnostics: DiagRow,
}

/// [`Diagnostics`] in serialisable form.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct DiagRow {
    pub ring_full: u64,
    pub read_failed: u64,
    pub malformed: u64,
    pub wait_unmatched: u64,
    pub map_full: u64,
}

impl From<Diagnostics> for DiagRow {
    fn from(d: Diagnostics) -> Self {
        DiagRow {
            ring_full: d.ring_full,
            read_failed: d.read_failed,
            malformed: d.malformed,
            wait_unmatched: d.wait_unmatched,
            map_full: d.map_full,
        }
    }
}

/// The kernel-map reads a snapshot is built from.
pub struct MapState {
    pub files: Vec<(FileKey, FileStats)>,
    pub waiters: Vec<(WaiterKey, WaiterEntry)>,
    pub histogram: WaitHistogram,
    pub diagnostics: Diagnostics,
    /// `CLOCK_MONOTONIC` now, to age the waiters.
    pub now_ns: u64,
}

#[derive(Default)]
struct FileSeen {
    holders: Vec<Party>,
    samples: Vec<u64>,
    /// Whether an event of this file passed the pid and host filters.
    matched: bool,
}

/// Events folded per file.
#[derive(Default)]
pub struct View {
    /// Whether the daemon announces grants and releases (`--all-events`).
    /// Without them a daemon holder would never be seen to let go, so
    /// holders are then listed for kernel locks only.
    pub daemon_holders: bool,
    files: HashMap<(u64, u64), FileSeen>,
    /// Host names of daemon waiters, from their `LockBlocked` event.
    waiter_hosts: HashMap<(u32, u64), String>,
    /// Daemon waiters that wait for I/O, not a lock: their grant holds nothing.
    io_waiters: std::collections::HashSet<(u32, u64)>,
    all_samples: Vec<u64>,
    events: u64,
}

pub fn source_name(s: Source) -> &'static str {
    match s {
        Source::Kernel => "kernel",
        Source::Daemon => "lockfs",
    }
}

pub fn owner_name(o: OwnerKind) -> &'static str {
    match o {
        OwnerKind::Unknown => "-",
        OwnerKind::Posix => "posix",
        OwnerKind::Ofd => "ofd",
        OwnerKind::Flock => "flock",
        OwnerKind::Nlm => "nlm",
    }
}

pub fn lock_name(l: LockType) -> &'static str {
    match l {
        LockType::Shared => "read",
        LockType::Exclusive => "write",
        LockType::Unlock => "unlock",
    }
}

fn party(ev: &Event) -> Party {
    Party {
        source: source_name(ev.source),
        pid: ev.pid,
        tgid: ev.tgid,
        owner: owner_name(ev.owner_kind),
        lock: lock_name(ev.lock_type),
        start: ev.start,
        end: (ev.end != TO_EOF).then_some(ev.end),
        host: ev.host.clone(),
        waiting_ns: None,
    }
}

fn overlaps(p: &Party, start: u64, end: u64) -> bool {
    p.start <= end && start <= p.end.unwrap_or(TO_EOF)
}

impl View {
    /// Folds one event in. Events the pid or host filter rejects still
    /// update holders (a holder matters to whoever waits behind it).
    pub fn record(&mut self, ev: &Event, filter: &Filter) {
        self.events += 1;
        let seen = self.files.entry((ev.dev, ev.ino)).or_default();
        if filter.matches_party(ev) {
            seen.matched = true;
        }
        let same_owner =
            |p: &Party| p.source == source_name(ev.source) && p.pid == ev.pid && p.host == ev.host;
        let holders_known = ev.source == Source::Kernel || self.daemon_holders;
        match ev.kind {
            EventKind::LockGranted => {
                seen.holders
                    .retain(|p| !(same_owner(p) && overlaps(p, ev.start, ev.end)));
                seen.holders.push(party(ev));
            }
            EventKind::IoBlocked if ev.waiter != 0 => {
                self.io_waiters.insert((ev.tgid, ev.waiter));
            }
            EventKind::WaitEnded
                if holders_known
                    && ev.wait_reason == WaitEndReason::Granted
                    && ev.lock_type != LockType::Unlock
                    && !self.io_waiters.contains(&(ev.tgid, ev.waiter)) =>
            {
                seen.holders
                    .retain(|p| !(same_owner(p) && overlaps(p, ev.start, ev.end)));
                seen.holders.push(party(ev));
            }
            EventKind::LockReleased => {
                seen.holders
                    .retain(|p| !(same_owner(p) && overlaps(p, ev.start, ev.end)));
            }
            EventKind::LockBlocked if !ev.host.is_empty() => {
                self.waiter_hosts
                    .insert((ev.tgid, ev.waiter), ev.host.clone());
            }
            _ => {}
        }
        if ev.kind == EventKind::WaitEnded {
            self.waiter_hosts.remove(&(ev.tgid, ev.waiter));
            self.io_waiters.remove(&(ev.tgid, ev.waiter));
            if let Some(w) = ev.wait {
                let ns = w.as_nanos().min(u64::MAX as u128) as u64;
                if filter.matches_party(ev) {
                    push_capped(&mut seen.samples, ns, SAMPLES_PER_FILE);
                    push_capped(&mut self.all_samples, ns, SAMPLES_PER_FILE * 16);
                }
            }
        }
    }

    /// Builds a snapshot of the `top` most contended files that pass the filter.
    pub fn snapshot(
        &self,
        maps: &MapState,
        filter: &Filter,
        paths: &mut PathIndex,
        top: usize,
        elapsed: Duration,
    ) -> Snapshot {
        let mut waiters: BTreeMap<(u64, u64), Vec<Party>> = BTreeMap::new();
        for (key, w) in &maps.waiters {
            let source = Source::from_raw(key.source).unwrap_or(Source::Kernel);
            waiters.entry((w.dev, w.ino)).or_default().push(Party {
                source: source_name(source),
                pid: w.pid,
                tgid: key.tgid,
                owner: OwnerKind::from_raw(w.owner_kind).map_or("-", owner_name),
                lock: LockType::from_raw(w.lock_type).map_or("-", lock_name),
                start: w.start,
                end: (w.end != TO_EOF).then_some(w.end),
                host: self
                    .waiter_hosts
                    .get(&(key.tgid, key.token))
                    .cloned()
                    .unwrap_or_default(),
                waiting_ns: Some(maps.now_ns.saturating_sub(w.start_ns)),
            });
        }
        let mut rows = Vec::new();
        for (key, stats) in &maps.files {
            let id = (key.dev, key.ino);
            let seen = self.files.get(&id);
            let file_waiters = waiters.remove(&id).unwrap_or_default();
            // A file that cannot be named yet is listed by device and inode:
            // only one known to be outside the prefix is left out.
            let path = match paths.resolve(key.dev, key.ino) {
                Name::Path(p) if filter.matches_path(Some(&p)) => Some(p),
                Name::Unnamed => None,
                Name::Path(_) | Name::Outside => continue,
            };
            if filter.filters_parties()
                && !seen.is_some_and(|s| s.matched)
                && !file_waiters
                    .iter()
                    .any(|w| filter.matches(w.pid, w.tgid, &w.host))
            {
                continue;
            }
            rows.push(FileRow {
                dev: key.dev,
                ino: key.ino,
                path,
                attempts: stats.attempts,
                conflicts: stats.conflicts,
                blocked: stats.blocked,
                waits: stats.waits,
                wait_ns_total: stats.wait_ns_total,
                wait_ns_max: stats.wait_ns_max,
                wait: Percentiles::of(seen.map_or(&[][..], |s| &s.samples)),
                holders: seen.map(|s| s.holders.clone()).unwrap_or_default(),
                waiters: file_waiters,
            });
        }
        rows.sort_by(|a, b| {
            (b.conflicts, b.wait_ns_total, b.attempts).cmp(&(
                a.conflicts,
                a.wait_ns_total,
                a.attempts,
            ))
        });
        rows.truncate(top);
        Snapshot {
            elapsed_ms: elapsed.as_millis() as u64,
            events: self.events,
            files: rows,
            wait: Percentiles::of(&self.all_samples),
            histogram: maps
                .histogram
                .non_empty()
                .map(|(lo, hi, count)| Bucket {
                    low_ns: lo.as_nanos() as u64,
                    high_ns: hi.as_nanos().min(u64::MAX as u128) as u64,
                    count,
                })
                .collect(),
            diagnostics: maps.diagnostics.into(),
        }
    }
}

fn push_capped(v: &mut Vec<u64>, x: u64, cap: usize) {
    if v.len() >= cap {
        v.remove(0);
    }
    v.push(x);
}

/// A duration in the unit that keeps it short.
pub fn human_ns(ns: u64) -> String {
    match ns {
        0..=9_999 => format!("{ns}ns"),
        10_000..=9_999_999 => format!("{:.1}us", ns as f64 / 1e3),
        10_000_000..=999_999_999 => format!("{:.1}ms", ns as f64 / 1e6),
        1_000_000_000..=9_999_999_999 => format!("{:.2}s", ns as f64 / 1e9),
        _ => format!("{:.1}s", ns as f64 / 1e9),
    }
}

fn range_text(start: u64, end: Option<u64>) -> String {
    match end {
        Some(e) => format!("{start}-{e}"),
        None => format!("{start}-EOF"),
    }
}

fn party_text(p: &Party) -> String {
    let mut s = format!(
        "{} {} pid {} {} {}",
        p.source,
        p.owner,
        p.pid,
        p.lock,
        range_text(p.start, p.end)
    );
    if !p.host.is_empty() {
        let _ = write!(s, " host {}", p.host);
    }
    if let Some(w) = p.waiting_ns {
        let _ = write!(s, " waiting {}", human_ns(w));
    }
    s
}

/// The text screen.
pub fn render(snap: &Snapshot, header: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{header}  elapsed {:.1}s  events {}",
        snap.elapsed_ms as f64 / 1000.0,
        snap.events
    );
    let w = &snap.wait;
    let _ = writeln!(
        out,
        "waits {}  p50 {}  p90 {}  p99 {}  max {}",
        w.count,
        human_ns(w.p50_ns),
        human_ns(w.p90_ns),
        human_ns(w.p99_ns),
        human_ns(w.max_ns)
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<40} {:>8} {:>9} {:>7} {:>6} {:>9} {:>9} {:>9}",
        "FILE", "ATTEMPTS", "CONFLICTS", "BLOCKED", "WAITS", "WAIT-P50", "WAIT-P99", "WAIT-MAX"
    );
    if snap.files.is_empty() {
        let _ = writeln!(out, "(no lock activity seen yet)");
    }
    for f in &snap.files {
        let name = f
            .path
            .clone()
            .unwrap_or_else(|| format!("dev {:#x} ino {}", f.dev, f.ino));
        let _ = writeln!(
            out,
            "{:<40} {:>8} {:>9} {:>7} {:>6} {:>9} {:>9} {:>9}",
            name,
            f.attempts,
            f.conflicts,
            f.blocked,
            f.waits,
            human_ns(f.wait.p50_ns),
            human_ns(f.wait.p99_ns),
            human_ns(f.wait_ns_max)
        );
        for h in &f.holders {
            let _ = writeln!(out, "    holder  {}", party_text(h));
        }
        for w in &f.waiters {
            let _ = writeln!(out, "    waiter  {}", party_text(w));
        }
    }
    if !snap.histogram.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "wait time histogram (all files)");
        let most = snap.histogram.iter().map(|b| b.count).max().unwrap_or(1);
        for b in &snap.histogram {
            let bar = "#".repeat(((b.count * 40).div_ceil(most)) as usize);
            let _ = writeln!(
                out,
                "  {:>9} .. {:<9} {:>7} {bar}",
                human_ns(b.low_ns),
                human_ns(b.high_ns),
                b.count
            );
        }
    }
    let d = &snap.diagnostics;
    if d.ring_full + d.read_failed + d.malformed + d.map_full > 0 {
        let _ = writeln!(
            out,
            "\ndropped: ring full {}, unreadable {}, malformed {}, map full {}",
            d.ring_full, d.read_failed, d.malformed, d.map_full
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks() {
        let v: Vec<u64> = (1..=100).collect();
        let p = Percentiles::of(&v);
        assert_eq!((p.count, p.max_ns), (100, 100));
        assert_eq!(p.p50_ns, 51);
        assert_eq!(p.p99_ns, 99);
        assert_eq!(Percentiles::of(&[]), Percentiles::default());
    }

    fn event(kind: EventKind, pid: u32) -> Event {
        Event {
            source: Source::Daemon,
            kind,
            point: lockfs_trace::KernelPoint::None,
            ts_ns: 1,
            caller_ts_ns: 0,
            dev: 5,
            ino: 6,
            start: 0,
            end: 99,
            lock_type: LockType::Exclusive,
            owner_kind: OwnerKind::Posix,
            pid,
            tgid: 100,
            waiter: 0,
            wait: None,
            wait_reason: WaitEndReason::None,
            ret: 0,
            host: String::new(),
        }
    }

    #[test]
    fn holders_follow_grants_and_releases() {
        let f = Filter::default();
        let mut v = View {
            daemon_holders: true,
            ..View::default()
        };
        v.record(&event(EventKind::LockGranted, 1), &f);
        v.record(&event(EventKind::LockBlocked, 2), &f);
        let mut rel = event(EventKind::LockReleased, 1);
        rel.lock_type = LockType::Unlock;
        v.record(&rel, &f);
        let mut got = event(EventKind::WaitEnded, 2);
        got.wait_reason = WaitEndReason::Granted;
        got.wait = Some(Duration::from_millis(3));
        v.record(&got, &f);
        let holders: Vec<u32> = v.files[&(5, 6)].holders.iter().map(|p| p.pid).collect();
        assert_eq!(holders, [2]);
        assert_eq!(v.files[&(5, 6)].samples, [3_000_000]);

        // Without daemon grants and releases no daemon holder is guessed.
        let mut quiet = View::default();
        quiet.record(&got, &f);
        assert!(quiet.files[&(5, 6)].holders.is_empty());
    }

    /// The screen of `--path-prefix DIR` for a file created under DIR after
    /// the index walked it: listed by device and inode, not "no activity".
    #[test]
    fn a_file_not_named_yet_is_listed_by_device_and_inode() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let mut paths = PathIndex::new(Some(dir.path().to_path_buf()));
        let late = dir.path().join("late");
        std::fs::write(&late, b"x").unwrap();
        let m = std::fs::metadata(&late).unwrap();
        // And a file of another file system, which the prefix excludes.
        let other = std::fs::metadata("/proc/self/stat").unwrap();
        let stats = FileStats {
            blocked: 1,
            waits: 1,
            wait_ns_total: 5_000_000,
            wait_ns_max: 5_000_000,
            ..FileStats::default()
        };
        let maps = MapState {
            files: vec![
                (
                    FileKey {
                        dev: m.dev(),
                        ino: m.ino(),
                    },
                    stats,
                ),
                (
                    FileKey {
                        dev: other.dev(),
                        ino: other.ino(),
                    },
                    stats,
                ),
            ],
            waiters: Vec::new(),
            histogram: WaitHistogram {
                buckets: std::array::from_fn(|_| 0),
            },
            diagnostics: Diagnostics::default(),
            now_ns: 0,
        };
        let filter = Filter {
            path_prefix: Some(dir.path().to_path_buf()),
            ..Filter::default()
        };
        let snap = View::default().snapshot(&maps, &filter, &mut paths, 10, Duration::ZERO);
        assert_eq!(snap.files.len(), 1, "{:?}", snap.files);
        assert_eq!((snap.files[0].ino, snap.files[0].waits), (m.ino(), 1));
        assert_eq!(snap.files[0].path, None);
        let screen = render(&snap, "test");
        assert!(
            screen.contains(&format!("dev {:#x} ino {}", m.dev(), m.ino())),
            "{screen}"
        );
        assert!(!screen.contains("no lock activity"), "{screen}");

        // A one-shot snapshot walks again and names it.
        paths.walk_on_next_miss();
        let snap = View::default().snapshot(&maps, &filter, &mut paths, 10, Duration::ZERO);
        assert_eq!(snap.files.len(), 1, "{:?}", snap.files);
        assert_eq!(snap.files[0].path.as_deref(), Some(late.to_str().unwrap()));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_ns(950), "950ns");
        assert_eq!(human_ns(15_000), "15.0us");
        assert_eq!(human_ns(201_000_000), "201.0ms");
        assert_eq!(human_ns(3_000_000_000), "3.00s");
        assert_eq!(human_ns(30_000_000_000), "30.0s");
    }
}
