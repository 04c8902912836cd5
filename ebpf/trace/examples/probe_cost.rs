//! Measures what a `lockfs_probe_*` call costs with and without a uprobe.
//!
//! Run as root: `cargo run --release -p lockfs-trace --example probe_cost`.
//! Unattached, a probe point is a plain function call. Attached, every call
//! traps into the kernel, runs the eBPF program and returns, so the cost is
//! dominated by the uprobe trap. The attached loop drains the ring buffer
//! between batches (outside the timed part) so no event is dropped.

use std::{
    hint::black_box,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use lockfs_probes::{EventKind, OwnerKind, ProbeEvent};
use lockfs_trace::{TraceOptions, Tracer};

fn time_calls(ev: &ProbeEvent, calls: u32) -> Duration {
    let start = Instant::now();
    for _ in 0..calls {
        lockfs_probes::lock_requested(black_box(ev));
    }
    start.elapsed()
}

fn per_call(d: Duration, calls: u32) -> f64 {
    d.as_nanos() as f64 / f64::from(calls)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ev = ProbeEvent::new(EventKind::LockRequested, 1, 2).with_owner(OwnerKind::Posix, 3);

    let unattached_calls = 10_000_000;
    time_calls(&ev, 100_000);
    let d = time_calls(&ev, unattached_calls);
    println!(
        "unattached: {:.2} ns/call ({unattached_calls} calls)",
        per_call(d, unattached_calls)
    );

    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/lockfs-bench-{}", std::process::id()));
    let mut tracer = Tracer::load(TraceOptions {
        pin_dir,
        replace_stale_pins: true,
    })?;
    tracer.attach_daemon(Path::new("/proc/self/exe"), Some(std::process::id()))?;
    let _stats_on = Tracer::enable_program_stats()?;
    let (batch, batches) = (2_000u32, 50u32);
    let mut total = Duration::ZERO;
    let mut seen = 0usize;
    for _ in 0..batches {
        total += time_calls(&ev, batch);
        seen += tracer.drain_events().len();
    }
    let calls = batch * batches;
    println!(
        "attached:   {:.0} ns/call ({calls} calls, {seen} events received, {} dropped)",
        per_call(total, calls),
        tracer.diagnostics()?.ring_full
    );
    // Time inside the eBPF program itself; the rest of the attached cost is
    // the uprobe trap into the kernel and back.
    for stat in tracer.program_stats()? {
        if stat.run_count > 0 {
            println!(
                "  {}: ran {} times, {:.0} ns per run inside the program",
                stat.name,
                stat.run_count,
                stat.run_time.as_nanos() as f64 / stat.run_count as f64
            );
        }
    }
    tracer.unpin()?;
    Ok(())
}
