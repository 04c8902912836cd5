#!/usr/bin/env bash
# Benchmarks lock value blocks on a lockfs mount: LOCKFS_IOC_LVB_GET and _SET per
# call against the plain FUSE ioctl round trip (a request code the daemon answers
# ENOTTY at once), alternating short rounds on one descriptor so both sides see
# the same load, then the lock table's own cost per get and set (criterion).
#
# Usage (as root, from anywhere): scripts/bench-lvb.sh [SECONDS]
# The mount's source lives under BENCH_DIR (default /var/tmp), which must keep
# trusted.* extended attributes (ext4, xfs, tmpfs do).
# LOCKFS_BIN_DIR=DIR takes `lockfs` and `lockfs-bench` from DIR instead of
# building them (to compare two builds under the same load); LVB_TABLE=0 skips
# the lock table's criterion part.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
if ! command -v cargo >/dev/null 2>&1; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if [ -n "${LOCKFS_BIN_DIR:-}" ]; then
    bin=$LOCKFS_BIN_DIR
else
    cargo build --release --locked -q -p lockfs -p fuse-lockfs --bins
    bin=${CARGO_TARGET_DIR:-target}/release
fi

base=$(mktemp -d "${BENCH_DIR:-/var/tmp}/lockfs-bench-lvb.XXXXXX")
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
: >"$src/value"

"$bin/lockfs" mount "$src" "$mnt" -o "socket=$base/admin.sock" 2>"$base/daemon.log" &
daemon=$!
for _ in $(seq 100); do
    grep -q " $mnt .* - fuse.lockfs " /proc/self/mountinfo && break
    sleep 0.1
done
grep -q " $mnt .* - fuse.lockfs " /proc/self/mountinfo || { cat "$base/daemon.log"; exit 1; }

echo "== ioctl round trips on the mount (${secs}s, alternating rounds)"
"$bin/lockfs-bench" lvb "$mnt/value" "$secs"

[ "${LVB_TABLE:-1}" = 0 ] && exit 0
echo "== lock table alone (criterion)"
cargo bench -q -p lock-table --bench lvb 2>&1 | grep -E "^lvb|time:"
