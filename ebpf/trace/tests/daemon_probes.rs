//! The daemon's probe points, traced through uprobes on a real process, and
//! the clear error for a stripped binary.

mod support;

use std::{path::Path, time::Duration};

use lockfs_trace::{
    missing_probe_symbols, EventKind, KernelPoint, LockType, OwnerKind, Source, TraceError,
    WaitEndReason, MAP_DIAG, MAP_WAITERS, PROBE_SYMBOLS, TO_EOF,
};
use support::{bpftool_dump, collect_events, load_tracer, Fixture, FIXTURE};

const DEV: u64 = 0x1234;
const INO: u64 = 0x5678;

#[test]
fn probe_points_reach_the_tracer_with_their_fields() {
    let Some(mut tracer) = load_tracer("probes") else {
        return;
    };
    let mut fixture = Fixture::spawn(&["probes"]);
    fixture.expect_line("ready");
    let pid = fixture.pid();
    let exe = format!("/proc/{pid}/exe");
    tracer
        .attach_daemon(Path::new(&exe), Some(pid))
        .expect("attaching uprobes");
    let stats_on = lockfs_trace::Tracer::enable_program_stats().expect("enabling BPF stats");
    fixture.send_line();
    fixture.expect_line("done");
    fixture.finish();

    let events = collect_events(
        &mut tracer,
        |e| e.source == Source::Daemon && e.tgid == pid,
        |evs| evs.len() >= 8,
        Duration::from_secs(5),
    );
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::LockRequested,
            EventKind::LockBlocked,
            EventKind::WaitEnded,
            EventKind::LockRefused,
            EventKind::LockReleased,
            EventKind::ShareRefused,
            EventKind::IoBlocked,
            EventKind::WaitEnded,
        ],
        "{events:#?}"
    );
    for e in &events {
        assert_eq!((e.dev, e.ino), (DEV, INO));
        assert_eq!(e.point, KernelPoint::None);
    }
    let req = &events[0];
    assert_eq!((req.owner_kind, req.pid), (OwnerKind::Posix, 4242));
    assert_eq!((req.start, req.end), (10, 19));
    assert_eq!(req.lock_type, LockType::Exclusive);
    assert_eq!(req.host, "");

    assert_eq!(events[1].waiter, 77);
    let ended = &events[2];
    assert_eq!(ended.waiter, 77);
    assert_eq!(ended.wait_reason, WaitEndReason::Granted);
    assert_eq!(ended.caller_ts_ns, 999);
    let wait = ended.wait.expect("measured wait");
    assert!(
        wait >= Duration::from_millis(25) && wait < Duration::from_secs(5),
        "wait {wait:?} should be about the fixture's 30 ms sleep"
    );

    let nlm = &events[3];
    assert_eq!((nlm.owner_kind, nlm.pid), (OwnerKind::Nlm, 7));
    assert_eq!(nlm.host, "client-a.example");
    assert_eq!((nlm.start, nlm.end), (0, TO_EOF));
    assert_eq!(nlm.lock_type, LockType::Shared);

    assert_eq!(events[4].lock_type, LockType::Unlock);

    // The unannounced wait end arrives without a measured wait.
    let orphan = &events[7];
    assert_eq!(orphan.waiter, 31337);
    assert_eq!(orphan.wait_reason, WaitEndReason::Cancelled);
    assert_eq!(orphan.wait, None);

    let stats = tracer
        .file_stat(DEV, INO)
        .expect("counters")
        .expect("counters for the probe file");
    // requested 1; refused + blocked + share + io = 4 conflicts; one timed wait.
    assert_eq!(stats.attempts, 1, "{stats:?}");
    assert_eq!(stats.conflicts, 4, "{stats:?}");
    assert_eq!(stats.blocked, 1, "{stats:?}");
    assert_eq!(stats.waits, 1, "{stats:?}");
    assert_eq!(stats.wait_ns_max, wait.as_nanos() as u64);

    let diag = tracer.diagnostics().expect("diagnostics");
    assert!(diag.malformed >= 1, "{diag:?}");
    assert!(diag.wait_unmatched >= 1, "{diag:?}");
    assert!(diag.read_failed >= 1, "{diag:?}");
    assert!(tracer
        .waiters()
        .expect("waiters")
        .iter()
        .all(|(k, _)| k.tgid != pid));

    let runs = tracer.program_stats().expect("program stats");
    drop(stats_on);
    let request = runs
        .iter()
        .find(|r| r.name == "lfs_up_request")
        .expect("stats of lfs_up_request");
    // The valid request and the malformed one both ran the program.
    assert!(request.run_count >= 2, "{request:?}");
    assert!(!request.run_time.is_zero(), "{request:?}");

    let dump = bpftool_dump(&tracer.pin_dir().join(MAP_WAITERS));
    assert!(
        dump.trim_start().starts_with('['),
        "unexpected bpftool output:\n{dump}"
    );
    let diag_dump = bpftool_dump(&tracer.pin_dir().join(MAP_DIAG));
    assert!(
        diag_dump.contains("\"cpu\""),
        "per-CPU values expected:\n{diag_dump}"
    );
}

#[test]
fn fixture_has_every_probe_symbol() {
    let (missing, stripped) = missing_probe_symbols(Path::new(FIXTURE)).expect("reading ELF");
    assert!(!stripped);
    assert!(missing.is_empty(), "missing {missing:?}");
    assert_eq!(PROBE_SYMBOLS.len(), 8);
}

fn stripped_copy(dir: &Path) -> Option<std::path::PathBuf> {
    let copy = dir.join("fixture-stripped");
    std::fs::copy(FIXTURE, &copy).expect("copying the fixture");
    match std::process::Command::new("strip").arg(&copy).status() {
        Ok(s) if s.success() => Some(copy),
        other => {
            support::skip_notice(&format!(
                "stripped-binary check: `strip` unavailable ({other:?})"
            ));
            None
        }
    }
}

#[test]
fn stripped_binary_gives_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(copy) = stripped_copy(dir.path()) else {
        return;
    };
    let (missing, stripped) = missing_probe_symbols(&copy).expect("reading ELF");
    assert!(stripped, "strip should remove the symbol table");
    assert_eq!(missing.len(), 8);

    let Some(mut tracer) = load_tracer("stripped") else {
        return;
    };
    let err = tracer
        .attach_daemon(&copy, None)
        .expect_err("a stripped binary cannot be traced");
    match &err {
        TraceError::SymbolNotFound {
            symbol, stripped, ..
        } => {
            assert_eq!(symbol, "lockfs_probe_lock_requested");
            assert!(*stripped);
        }
        other => panic!("unexpected error {other:?}"),
    }
    let msg = err.to_string();
    eprintln!("stripped binary error: {msg}");
    assert!(
        msg.contains("stripped") && msg.contains("lockfs_probe_lock_requested"),
        "{msg}"
    );
}
