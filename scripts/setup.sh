#!/usr/bin/env bash
# Installs everything building, running and testing lockfs needs on a fresh
# Debian 12 machine, as root. Idempotent: every step checks first and does
# nothing when already satisfied, so the README's two commands can both call
# it every time.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    log "run as root: lockfs mounts FUSE file systems, serves RPC and loads BPF" >&2
    exit 1
fi

# Debian packages: fuse3 (fusermount3 for auto-unmount and recovery),
# rpcbind and nfs-common (the system portmapper and statd peers),
# libnfs-dev and libtirpc-dev (independent NLM/NSM clients in the tests),
# libnfs-utils (nfs-ls, nfs-cat, nfs-cp: an independent NFSv3 client),
# tshark (wire decoding checks), bpftool, iproute2 (network namespaces),
# attr (xattr tools), procps/psmisc (process checks), pkg-config and a C
# compiler for the test clients. The Debian package (scripts/build-deb.sh)
# and its test: dpkg-dev (dpkg-shlibdeps), binutils (objcopy), lintian,
# man-db (man -l) and systemd (systemd-analyze verify). The Pacemaker agent's
# test: resource-agents (ocf-tester) and libxml2-utils (xmllint, which
# ocf-tester validates the agent's meta-data with); pacemaker, corosync and
# pacemaker-cli-utils for the test that runs it under a single-node cluster
# of its own (the packages' own services are disabled below: the test starts
# its cluster in private namespaces). The kernel-client test
# (scripts/kclient): qemu-system-x86, busybox-static, cpio and libc6-dev (its
# static guest program).
APT_PACKAGES=(
    build-essential pkg-config ca-certificates
    fuse3 attr procps psmisc util-linux iproute2 kmod
    rpcbind nfs-common libnfs-dev libnfs-utils libtirpc-dev
    tshark bpftool
    dpkg-dev binutils lintian man-db systemd
    resource-agents libxml2-utils pacemaker corosync pacemaker-cli-utils
    qemu-system-x86 busybox-static cpio libc6-dev
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    log "Debian packages present"
fi
# Installing them enables the node's own cluster services; this machine is no
# cluster node.
if [ -d /run/systemd/system ]; then
    for u in pacemaker corosync; do
        if systemctl is-enabled --quiet "$u" 2>/dev/null || systemctl is-active --quiet "$u"; then
            log "disabling the $u service (the tests run their own)"
            systemctl disable --now "$u" >/dev/null 2>&1 || true
        fi
    done
fi

# The Rust toolchain comes from rustup (Debian 12's rustc is too old).
if ! command -v cargo >/dev/null 2>&1; then
    for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do
        [ -x "$d/cargo" ] && export PATH="$d:$PATH"
    done
fi
if ! command -v cargo >/dev/null 2>&1 || ! command -v rustup >/dev/null 2>&1; then
    log "no Rust toolchain found: lockfs needs rustup with a stable toolchain >= 1.85" >&2
    exit 1
fi
for c in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
        log "adding rustup component $c"
        rustup component add "$c"
    fi
done

# cargo-nextest runs every test in its own process with a hard timeout, so
# a stuck FUSE request fails its test instead of hanging the run.
if ! command -v cargo-nextest >/dev/null 2>&1; then
    log "installing cargo-nextest (a few minutes)"
    cargo install cargo-nextest --locked
else
    log "cargo-nextest present"
fi

# cargo-fuzz builds and runs the libFuzzer targets under fuzz/ (scripts/fuzz.sh).
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    log "installing cargo-fuzz (a few minutes)"
    cargo install cargo-fuzz --locked
else
    log "cargo-fuzz present"
fi

# The eBPF side: rust-src, bpf-linker, bpffs and tracefs.
bash scripts/setup-ebpf.sh

# The kernel-client test's guest: Debian's kernel package (downloaded once with
# apt-get download) and an initramfs, cached under /var/tmp/lockfs-kclient.
bash scripts/kclient/build.sh

log "done"
