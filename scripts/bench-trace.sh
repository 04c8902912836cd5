#!/usr/bin/env bash
# What tracing costs: lock+unlock pairs per second with `lockfs trace`'s probes
# attached against detached, measured in the same run (alternating rounds,
# medians, ratio attached/detached). Three paths:
#   mount  - fcntl pairs on a lockfs FUSE mount (locks in the daemon's table);
#            attached = kernel filelock tracepoints + uprobes on the daemon with
#            its probe gate open for contention events (the default of
#            `lockfs trace`), and with every event (`--all-events`)
#   table  - the daemon-side path alone: lock_table::SharedTable in one process
#            with its probe points; attached with the gate closed, open for
#            contention, and open for every event
#   native - fcntl pairs on a native file; attached = kernel tracepoints
# The pairs are uncontended, the common case the probe gate keeps trap-free.
#
# Usage (as root, from anywhere): scripts/bench-trace.sh [SECONDS_PER_ROUND]
# BENCH_ROUNDS (default 9) sets the number of alternating rounds.
# Needs what scripts/setup-ebpf.sh installs. BENCH_DIR picks the directory the
# files live in (default: a new directory under /var/tmp, removed afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-1}

if ! command -v cargo >/dev/null 2>&1; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
cargo build --release --locked -q -p lockfs -p lockfs-trace --bins --example bench_trace
bin=${CARGO_TARGET_DIR:-target}/release
bench=$bin/examples/bench_trace

base=$(mktemp -d "${BENCH_DIR:-/var/tmp}/lockfs-bench-trace.XXXXXX")
src=$base/src
mnt=$base/mnt
mkdir -p "$src" "$mnt"
daemon=""
cleanup() {
    if [ -n "$daemon" ]; then
        kill -TERM "$daemon" 2>/dev/null || true
        wait "$daemon" 2>/dev/null || true
    fi
    if grep -q " $mnt " /proc/self/mountinfo; then umount -l "$mnt" || true; fi
    rm -rf "$base"
}
trap cleanup EXIT

: >"$src/lockfile"
"$bin/lockfs" mount "$src" "$mnt" -o "socket=$base/admin.sock" 2>"$base/daemon.log" &
daemon=$!
for _ in $(seq 100); do
    grep -q " $mnt .* - fuse.lockfs " /proc/self/mountinfo && break
    sleep 0.1
done
grep -q " $mnt .* - fuse.lockfs " /proc/self/mountinfo || { cat "$base/daemon.log"; exit 1; }

echo "== mount (FUSE, locks in the daemon's table)"
"$bench" mount "$mnt/lockfile" "$daemon" "$secs"
echo
echo "== table (daemon-side path without FUSE)"
"$bench" table "$secs"
echo
echo "== native (kernel locks, $(findmnt -n -o FSTYPE -T "$src"))"
"$bench" native "$src/lockfile" "$secs"
