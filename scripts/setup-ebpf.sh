#!/usr/bin/env bash
# Installs what building and testing lockfs's eBPF side needs on a Debian 12 machine.
# Idempotent: every step checks first and does nothing when already satisfied.
# Run as root (apt-get and mounting bpffs/tracefs need it).
set -euo pipefail

BPF_LINKER_VERSION=0.10.0
TOOLCHAIN=stable

log() { printf 'setup-ebpf: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root" >&2
    exit 1
fi

# The kernel-side crate is built with -Z build-std=core, which needs the
# standard library sources of the toolchain that builds it.
if rustup component list --installed --toolchain "$TOOLCHAIN" | grep -q '^rust-src'; then
    log "rust-src already installed for $TOOLCHAIN"
else
    log "installing rust-src for $TOOLCHAIN"
    rustup component add rust-src --toolchain "$TOOLCHAIN"
fi

# bpf-linker links the BPF object with the toolchain's own LLVM; newer
# releases need a newer rustc, so pin the version that matches aya 0.14.
current=""
if command -v bpf-linker >/dev/null 2>&1; then
    current="$(bpf-linker --version 2>/dev/null | awk '{print $2}')"
fi
if [ "$current" = "$BPF_LINKER_VERSION" ]; then
    log "bpf-linker $BPF_LINKER_VERSION already installed"
else
    log "installing bpf-linker $BPF_LINKER_VERSION (found '${current:-none}'); this takes a few minutes"
    cargo install "bpf-linker@$BPF_LINKER_VERSION" --locked --force
fi

# bpftool is what operators use to inspect the pinned maps; the tests run it,
# and `strip` (binutils) to check the error for a stripped daemon binary.
missing=()
command -v bpftool >/dev/null 2>&1 || missing+=(bpftool)
command -v strip >/dev/null 2>&1 || missing+=(binutils)
if [ "${#missing[@]}" -eq 0 ]; then
    log "bpftool and strip already installed"
else
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# The loader pins maps in bpffs and reads tracepoint formats from tracefs.
if ! mountpoint -q /sys/fs/bpf; then
    log "mounting bpffs on /sys/fs/bpf"
    mount -t bpf bpf /sys/fs/bpf
fi
if [ ! -d /sys/kernel/tracing/events ]; then
    log "mounting tracefs on /sys/kernel/tracing"
    mount -t tracefs tracefs /sys/kernel/tracing
fi

log "done"
