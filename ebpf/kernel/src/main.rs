//! lockfs's kernel-side eBPF programs.
//!
//! Two sources feed one set of maps:
//! - the kernel's own file locks, through the `filelock` tracepoints (plus
//!   `syscalls:sys_exit_flock` to see interrupted `flock` waits end);
//! - the lockfs daemon's lock table, through uprobes on its `lockfs_probe_*`
//!   symbols, which hand over a `ProbeEvent` in the first argument.
//!
//! Every event updates per-file counters and, for waits, the wait histogram
//! in the kernel, and is also sent to userspace through a ring buffer. See
//! `waits.rs` for how a kernel lock wait is measured from tracepoints alone.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod record;
#[cfg(target_arch = "bpf")]
mod tracepoints;
#[cfg(target_arch = "bpf")]
mod uprobes;
#[cfg(target_arch = "bpf")]
mod waits;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this loop, so a
    // panic path that survives optimisation shows up as a load error.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Built for the host only by mistake; the real programs need the BPF target.
}
