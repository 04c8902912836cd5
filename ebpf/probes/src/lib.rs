//! Probe points of the lockfs daemon.
//!
//! Every decision the lock table makes is announced by calling one of the
//! `lockfs_probe_*` functions below with a [`ProbeEvent`]. The functions do
//! nothing; they exist so that an eBPF uprobe can attach to a stable,
//! unmangled symbol and read the event from the daemon's memory. When no
//! probe is attached a call costs one plain function call: no syscall, no
//! allocation, no lock.
//!
//! Call sites first ask the gate ([`contention_enabled`], [`all_enabled`])
//! whether a tracer wants the event: an attached uprobe traps on every hit,
//! so uncontended operations must not reach a probe point unless asked.
//!
//! The crate is `no_std` and has no dependencies because the kernel-side eBPF
//! programs share [`ProbeEvent`] with it: the layout here is the wire format
//! between the daemon and the probes.
#![cfg_attr(not(test), no_std)]

mod event;

pub use event::{EventKind, LockType, OwnerKind, ProbeEvent, WaitEndReason, HOST_NAME_LEN, TO_EOF};

#[cfg(not(target_arch = "bpf"))]
mod points;

#[cfg(not(target_arch = "bpf"))]
pub use points::*;

#[cfg(not(target_arch = "bpf"))]
mod gate;

#[cfg(not(target_arch = "bpf"))]
pub use gate::{
    all_enabled, contention_enabled, gate, monotonic_ns, set_gate, GATE_ALL, GATE_CONTENTION,
    GATE_SYMBOL, LOCKFS_PROBE_GATE,
};
