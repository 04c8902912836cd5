//! The probe gate: with it cleared an attached daemon announces nothing,
//! with it set (from outside, as `lockfs trace` does) events arrive, and
//! clearing it stops them again.

mod support;

use std::{path::Path, time::Duration};

use lockfs_trace::{DaemonGate, EventKind, Source, WaitEndReason, GATE_CONTENTION};
use support::{collect_events, load_tracer, Fixture};

const DEV: u64 = 0x1234;
const INO: u64 = 0x5678;

#[test]
fn events_flow_only_while_the_gate_is_open() {
    let Some(mut tracer) = load_tracer("gate") else {
        return;
    };
    let mut fixture = Fixture::spawn(&["gated"]);
    fixture.expect_line("ready");
    let pid = fixture.pid();
    tracer
        .attach_daemon(Path::new(&format!("/proc/{pid}/exe")), Some(pid))
        .expect("attaching uprobes");
    let mine = |e: &lockfs_trace::Event| e.source == Source::Daemon && e.tgid == pid;

    // Attached but gated: the fixture runs its call sites, nothing arrives.
    fixture.send_line();
    fixture.expect_line("gate 0");
    let quiet = collect_events(&mut tracer, mine, |_| false, Duration::from_millis(500));
    assert!(quiet.is_empty(), "events with the gate closed: {quiet:#?}");

    let gate = DaemonGate::open(pid).expect("finding the fixture's gate");
    assert_eq!(gate.get().expect("reading the gate"), 0);
    gate.set(GATE_CONTENTION).expect("opening the gate");
    fixture.send_line();
    fixture.expect_line(&format!("gate {GATE_CONTENTION}"));
    let events = collect_events(&mut tracer, mine, |e| e.len() >= 2, Duration::from_secs(5));
    let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::LockBlocked, EventKind::WaitEnded]);
    assert!(events.iter().all(|e| (e.dev, e.ino) == (DEV, INO)));
    assert_eq!(events[1].wait_reason, WaitEndReason::Granted);
    assert!(events[1].wait.is_some(), "the wait was timed");
    let stats = tracer
        .file_stat(DEV, INO)
        .expect("counters")
        .expect("entry");
    assert_eq!((stats.blocked, stats.waits), (1, 1), "{stats:?}");

    gate.set(0).expect("closing the gate");
    fixture.send_line();
    fixture.expect_line("gate 0");
    let after = collect_events(&mut tracer, mine, |_| false, Duration::from_millis(500));
    assert!(
        after.is_empty(),
        "events after closing the gate: {after:#?}"
    );
    drop(fixture); // stdin closes: the fixture exits at end of input
}

#[test]
fn a_binary_without_the_gate_is_refused_clearly() {
    // `sleep` carries no lockfs symbols.
    let mut child = std::process::Command::new("sleep")
        .arg("10")
        .spawn()
        .expect("spawning sleep");
    let err = DaemonGate::open(child.id()).expect_err("sleep has no gate");
    let msg = err.to_string();
    let _ = child.kill();
    let _ = child.wait();
    assert!(msg.contains("LOCKFS_PROBE_GATE"), "{msg}");
}
