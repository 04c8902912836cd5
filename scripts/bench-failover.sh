#!/usr/bin/env bash
# Failover benchmark: one service group with HOSTS simulated client hosts holding
# LOCKS locks each is taken offline and brought online again in a running daemon
# (its clients notified, reclaiming on receipt), while another group's client
# keeps locking; then the whole daemon is restarted for comparison. The driver is
# lockfs/examples/failover_bench.rs; it runs in a private network namespace (its
# own loopback, so ports 111 and 4045 and 127.0.x.y addresses are its own).
#
# Usage (as root): scripts/bench-failover.sh [--debug] [HOSTS [LOCKS [GROUP_NOTIFY_PER_SECOND]]]
# Defaults: 1000 hosts, 10 locks, the daemon's default group_notify_per_second.
# BENCH_CLIENT_NICE=N runs the simulated hosts' threads at nice N (default 0: the
# daemon's priority; see BENCHMARKS.md for why). BENCH_SAMPLES=FILE appends g2's
# latencies to FILE (to pool several runs); BENCH_SPLIT=1 runs the daemon on CPU 0
# and the driver on the other CPUs.
# Builds (release unless --debug) and prints the figures and the machine's load
# average.
set -euo pipefail
cd "$(dirname "$0")/.."

# Figures come from an optimised build; --debug is for trying the driver out.
profile=release
flag=(--release)
if [ "${1:-}" = "--debug" ]; then
    profile=debug
    flag=()
    shift
elif [ "${1:-}" = "--release" ]; then
    shift
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "bench-failover: run as root (FUSE mounts, a network namespace)" >&2
    exit 1
fi
cargo build -q "${flag[@]}" -p lockfs --bin lockfs --example failover_bench
bin="target/$profile/lockfs"
driver="target/$profile/examples/failover_bench"
echo "build: $profile; load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores"
unshare -n -- sh -c 'ip link set lo up && exec "$0" "$@"' "$driver" "$bin" "$@"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
