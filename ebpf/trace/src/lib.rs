//! Userspace side of lockfs's eBPF tracing.
//!
//! [`Tracer`] loads the programs built from `ebpf/kernel`, pins their maps in
//! bpffs (so `bpftool map dump pinned ...` works while tracing), attaches the
//! kernel `filelock` tracepoints and the uprobes on a lockfs daemon's probe
//! points, and reads back events, per-file counters and the wait histogram.
//! `lockfs trace` is a thin command line over this API.

mod error;
mod event;
mod fs;
mod gate;
mod stats;
mod symbols;
mod tracefs;
mod tracer;

pub use error::TraceError;
pub use event::DecodeError;
pub use event::Event;
pub use gate::{DaemonGate, GATE_ALL, GATE_CONTENTION, GATE_SYMBOL};
pub use lockfs_ebpf_common::{
    EventKind, FileKey, FileStats, KernelPoint, LockType, OwnerKind, Source, WaitEndReason,
    WaiterEntry, WaiterKey, ALL_MAPS, MAP_DIAG, MAP_EVENTS, MAP_FILES, MAP_WAITERS, MAP_WAIT_HIST,
    TO_EOF,
};
pub use stats::{Diagnostics, WaitHistogram};
pub use symbols::{missing_probe_symbols, PROBE_SYMBOLS};
pub use tracer::{Events, ProgramStat, TraceOptions, Tracer, DEFAULT_PIN_DIR};
