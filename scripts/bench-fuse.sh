#!/usr/bin/env bash
# Benchmarks a lockfs mount against the native file system it serves, in one run:
# sequential 1 MiB read and 4 KiB random read (lockfs-bench, warm page cache) and
# sequential 1 MiB write (fio) on a plain (passthrough) file and a mandatory
# (direct I/O) file, fcntl lock+unlock pairs per second, and the no-op FUSE round
# trip that is their transport floor.
#
# The reads use lockfs-bench's `readcmp`, which alternates quarter-second rounds
# between the native file and the same data through the mount and reports the
# median of the per-round ratios: fio with `psync` stopped at about 2.4 GiB/s on
# these machines where a page-aligned `pread` loop reads the warm page cache at
# 5-10 GiB/s, so fio's native side was not the page cache's speed.
#
# Usage (as root, from anywhere): scripts/bench-fuse.sh [SECONDS_PER_JOB] [SIZE_MIB]
# Installs fio if it is missing. Set BENCH_DIR to a directory on the file system
# to measure (default: a new directory under /var/tmp); it is removed afterwards.
# ROUNDS (default 5) is the number of alternating rounds per fio test: each round
# runs native, passthrough and mandatory back to back, and the figures are the
# medians over the rounds, the ratios the medians of the per-round ratios, so a
# machine whose speed drifts weighs on both sides alike. Each read test runs for
# ROUNDS x SECONDS_PER_JOB seconds per file in alternating quarter-second rounds. BENCH_MOUNT_OPTS adds
# `lockfs mount -o` options (for instance `nosplice`, `max_read=131072`,
# `threads=4`); FIO_JOBS (default 1) runs that many readers or writers at once
# (more than one reader is measured with fio);
# FIO_TESTS (default "read write randread") chooses the tests. LOCKFS names
# another `lockfs` binary to mount with (to compare two builds with the same
# drivers; default: the one this script builds).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
size=${2:-512}
rounds=${ROUNDS:-5}
fio_jobs=${FIO_JOBS:-1}
fio_tests=${FIO_TESTS:-read write randread}
extra_opts=${BENCH_MOUNT_OPTS:+,$BENCH_MOUNT_OPTS}

if ! command -v fio >/dev/null 2>&1; then
    apt-get install -y fio >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y fio >/dev/null; }
fi
if ! command -v cargo >/dev/null 2>&1; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
cargo build --release --locked -q -p lockfs -p fuse-lockfs --bins
bin=${CARGO_TARGET_DIR:-target}/release
lockfs=${LOCKFS:-$bin/lockfs}

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

"$lockfs" mount "$src" "$mnt" -o "mandatory=file,socket=$base/admin.sock$extra_opts" 2>"$base/daemon.log" &
daemon=$!
for _ in $(seq 100); do
    grep -q " $mnt .* - fuse.lockfs " /proc/self/mountinfo && break
    sleep 0.1
done
grep -q " $mnt .* - fuse.lockfs " /proc/self/mountinfo || { cat "$base/daemon.log"; exit 1; }

# The baseline must be the warm page cache the mount reads from too: read every
# file once, natively and through the mount, before anything is timed.
for f in plain mand; do
    cat "$src/$f" >/dev/null
    cat "$mnt/$f" >/dev/null
done

# fio JOB FILE -> "MiB/s IOPS"
fio_job() {
    local rw=$1 bs=$2 file=$3
    fio --name=b --filename="$file" --rw="$rw" --bs="$bs" --size="${size}M" \
        --ioengine=psync --direct=0 --time_based --runtime="$secs" --numjobs="$fio_jobs" \
        --group_reporting --invalidate=0 --output-format=json 2>/dev/null |
        python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
side = j["read"] if j["read"]["io_bytes"] else j["write"]
print("%.0f %.0f" % (side["bw_bytes"] / 2**20, side["iops"]))'
}

# median of the numbers on stdin
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print('%.2f' % (a / b if b else 0))" "$1" "$2"; }

# readcmp TEST FILE -> "native mount ratio" (MiB/s, or IOPS for 4 KiB reads)
readcmp() {
    local out
    case $1 in
        read) out=$("$bin/lockfs-bench" readcmp "$src/plain" "$2" "$((secs * rounds))" 1048576) ;;
        randread) out=$("$bin/lockfs-bench" readcmp "$src/plain" "$2" "$((secs * rounds))" 4096 rand) ;;
    esac
    local get
    get() { echo "$out" | awk -v k="$1" '$1 == k { print $2 }'; }
    if [ "$1" = randread ]; then
        echo "$(($(get base_mib_per_sec) * 256)) $(($(get mib_per_sec) * 256)) $(get ratio)"
    else
        echo "$(get base_mib_per_sec) $(get mib_per_sec) $(get ratio)"
    fi
}

echo "reads: lockfs-bench readcmp, $((secs * rounds)) s per file in alternating quarter-second rounds against native; medians"
echo "write: fio, $rounds alternating rounds of ${secs}s per file, $fio_jobs job(s); medians"
printf '%-26s %12s %12s %12s %8s %8s\n' "test" "native" "passthrough" "mandatory" "pt/nat" "mand/nat"
for test in $fio_tests; do
    case $test in
        read) set -- read 1M MiB/s ;;
        write) set -- write 1M MiB/s ;;
        randread) set -- randread 4k IOPS ;;
        *) echo "unknown test $test" >&2; exit 2 ;;
    esac
    rw=$1 bs=$2 unit=$3
    if [ "$rw" != write ] && [ "$fio_jobs" = 1 ]; then
        read -r n1 p pr <<<"$(readcmp "$rw" "$mnt/plain")"
        read -r n2 m mr <<<"$(readcmp "$rw" "$mnt/mand")"
        printf '%-26s %12s %12s %12s %8s %8s\n' "$rw $bs ($unit)" "$n1 / $n2" "$p" "$m" "$pr" "$mr"
        continue
    fi
    col=1; [ "$unit" = IOPS ] && col=2
    ns="" ps="" ms="" prs="" mrs=""
    for _ in $(seq "$rounds"); do
        n=$(fio_job "$rw" "$bs" "$src/plain" | cut -d' ' -f$col)
        p=$(fio_job "$rw" "$bs" "$mnt/plain" | cut -d' ' -f$col)
        m=$(fio_job "$rw" "$bs" "$mnt/mand" | cut -d' ' -f$col)
        ns="$ns $n" ps="$ps $p" ms="$ms $m"
        prs="$prs $(ratio "$p" "$n")" mrs="$mrs $(ratio "$m" "$n")"
    done
    med() { echo "$1" | tr ' ' '\n' | grep . | median; }
    printf '%-26s %12s %12s %12s %8s %8s\n' "$rw $bs ($unit)" "$(med "$ns")" "$(med "$ps")" "$(med "$ms")" "$(med "$prs")" "$(med "$mrs")"
    echo "    rounds: native$ns | passthrough$ps | mandatory$ms"
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
