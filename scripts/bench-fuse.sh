#!/usr/bin/env bash
# Benchmarks a lockfs mount against the native file system it serves, in one run:
# sequential 1 MiB read and write and 4 KiB random read (fio, warm page cache) on
# a plain (passthrough) file and a mandatory (direct I/O) file, fcntl lock+unlock
# pairs per second, and the no-op FUSE round trip that is their transport floor.
#
# Usage (as root, from anywhere): scripts/bench-fuse.sh [SECONDS_PER_JOB] [SIZE_MIB]
# Installs fio if it is missing. Set BENCH_DIR to a directory on the file system
# to measure (default: a new directory under /var/tmp); it is removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
size=${2:-512}

if ! command -v fio >/dev/null 2>&1; then
    apt-get install -y fio >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y fio >/dev/null; }
fi
if ! command -v cargo >/dev/null 2>&1; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
cargo build --release --locked -q -p lockfs -p fuse-lockfs --bins
bin=${CARGO_TARGET_DIR:-target}/release

base=$(mktemp -d "${BENCH_DIR:-/var/tmp}/lockfs-bench.XXXXXX")
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

# The data files: written once on the native side, read warm from the cache.
for f in plain mand; do
    dd if=/dev/urandom of="$src/$f" bs=1M count="$size" status=none
done
chmod 2644 "$src/mand"
: >"$src/lockfile"
: >"$src/mandlock"
chmod 2644 "$src/mandlock"

"$bin/lockfs" mount "$src" "$mnt" -o "mandatory=file,socket=$base/admin.sock" 2>"$base/daemon.log" &
daemon=$!
for _ in $(seq 100); do
    grep -q " $mnt .* - fuse.lockfs " /proc/self/mountinfo && break
    sleep 0.1
done
grep -q " $mnt .* - fuse.lockfs " /proc/self/mountinfo || { cat "$base/daemon.log"; exit 1; }

# fio JOB FILE -> "MiB/s IOPS"
fio_job() {
    local rw=$1 bs=$2 file=$3
    fio --name=b --filename="$file" --rw="$rw" --bs="$bs" --size="${size}M" \
        --ioengine=psync --direct=0 --time_based --runtime="$secs" --numjobs=1 \
        --invalidate=0 --output-format=json 2>/dev/null |
        python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
side = j["read"] if j["read"]["io_bytes"] else j["write"]
print("%.0f %.0f" % (side["bw_bytes"] / 2**20, side["iops"]))'
}

ratio() { python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print('%.2f' % (a / b if b else 0))" "$1" "$2"; }

printf '%-26s %12s %12s %12s %8s %8s\n' "test" "native" "passthrough" "mandatory" "pt/nat" "mand/nat"
for job in "read 1M MiB/s" "write 1M MiB/s" "randread 4k IOPS"; do
    set -- $job
    rw=$1 bs=$2 unit=$3
    col=1; [ "$unit" = IOPS ] && col=2
    n=$(fio_job "$rw" "$bs" "$src/plain" | cut -d' ' -f$col)
    p=$(fio_job "$rw" "$bs" "$mnt/plain" | cut -d' ' -f$col)
    m=$(fio_job "$rw" "$bs" "$mnt/mand" | cut -d' ' -f$col)
    printf '%-26s %12s %12s %12s %8s %8s\n' "$rw $bs ($unit)" "$n" "$p" "$m" "$(ratio "$p" "$n")" "$(ratio "$m" "$n")"
done

ln=$("$bin/lockfs-bench" locks "$src/lockfile" "$secs" | cut -d' ' -f2)
lp=$("$bin/lockfs-bench" locks "$mnt/lockfile" "$secs" | cut -d' ' -f2)
lm=$("$bin/lockfs-bench" locks "$mnt/mandlock" "$secs" | cut -d' ' -f2)
printf '%-26s %12s %12s %12s %8s %8s\n' "lock+unlock pairs/s" "$ln" "$lp" "$lm" "$(ratio "$lp" "$ln")" "$(ratio "$lm" "$ln")"

# The transport floor: lock+unlock pairs and pairs of no-op round trips in
# alternating quarter-second rounds on one descriptor, so that both see the same
# machine; the ratio is the median of the rounds' ratios.
echo
for f in lockfile mandlock; do
    out=$("$bin/lockfs-bench" compare "$mnt/$f" "$((secs * 2))")
    get() { echo "$out" | awk -v k="$1" '$1 == k { print $2 }'; }
    echo "$f: lock+unlock pairs/s $(get pairs_per_sec), no-op round trips/s $(get trips_per_sec)," \
        "pair / two no-op round trips $(get cost_ratio) (median of $(get rounds) alternating rounds; target <= 1.10)"
done
