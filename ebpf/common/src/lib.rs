//! Types shared by lockfs's eBPF programs and their userspace loader.
//!
//! Everything here is a `#[repr(C)]` struct with explicit padding because the
//! same bytes are written by the kernel-side programs and read back by the
//! loader (and by `bpftool`, which prints the field names from BTF). Map
//! names live here too, so the loader, the programs and the documentation
//! cannot drift apart.
#![cfg_attr(not(test), no_std)]

pub use lockfs_probes::{
    EventKind, LockType, OwnerKind, ProbeEvent, WaitEndReason, HOST_NAME_LEN, TO_EOF,
};

mod maps;

pub use maps::*;
