#!/usr/bin/env bash
# NLM benchmark: lockfs's lockd against nfs-ganesha 4.3's, driven in the same
# run by the same independent client (scripts/nlm-bench.c, built on libnfs).
#
# For each server: two NULL calls per iteration (the transport floor of one
# pair), then LOCK+UNLOCK pairs with 1 and 16 concurrent clients, each with
# its own TCP connection, host name, owner and byte range. Last, for lockfs,
# LOCK+UNLOCK against two NULL calls in alternating quarter-second rounds on one
# connection (the pair's cost over its transport floor, both under one load).
#
# Usage (as root): scripts/bench-nlm.sh [--seconds N] [--only ganesha|lockfs]
# Prints one line per run and a summary table with ratios.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=5
only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) secs="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        *) echo "usage: $0 [--seconds N] [--only ganesha|lockfs]" >&2; exit 2 ;;
    esac
done

log() { printf 'bench-nlm: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "run as root (servers bind privileged ports and register with rpcbind)"
    exit 1
fi

need=()
for p in nfs-ganesha nfs-ganesha-vfs rpcbind nfs-common libnfs-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

work=$(mktemp -d /tmp/lockfs-bench-nlm.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

cc -O2 -o "$work/nlm-bench" scripts/nlm-bench.c -lnfs
bench() { "$work/nlm-bench" --server 127.0.0.1 --seconds "$secs" "$@"; }

# A portmapper: reuse one that answers, else start our own.
if ! rpcinfo -p 127.0.0.1 >/dev/null 2>&1; then
    mkdir -p /run/rpcbind
    rpcbind -f -w &
    pids+=($!)
    for _ in $(seq 50); do rpcinfo -p 127.0.0.1 >/dev/null 2>&1 && break; sleep 0.1; done
fi

wait_registered() { # program version seconds
    for _ in $(seq $(( $3 * 10 ))); do
        rpcinfo -p 127.0.0.1 2>/dev/null | awk -v p="$1" -v v="$2" '$1==p && $2==v && $3=="tcp" {f=1} END {exit !f}' && return 0
        sleep 0.1
    done
    return 1
}

results=()
compares=()

run_ganesha() {
    mkdir -p "$work/ganesha/export" /var/lib/nfs/ganesha
    : > "$work/ganesha/export/file"
    cat > "$work/ganesha/ganesha.conf" <<EOF
NFS_CORE_PARAM { Enable_NLM = true; Bind_addr = 127.0.0.1; Protocols = 3; }
NFSv4 { Graceless = true; RecoveryBackend = fs; }
EXPORT {
    Export_Id = 1; Path = $work/ganesha/export; Pseudo = /bench;
    Access_Type = RW; Squash = No_Root_Squash; Protocols = 3; Transports = TCP;
    FSAL { Name = VFS; }
}
EOF
    # ganesha monitors every client host through the system statd.
    rpc.statd -F --no-notify &
    local statd=$!
    pids+=($statd)
    ganesha.nfsd -F -f "$work/ganesha/ganesha.conf" -L "$work/ganesha/log" -p "$work/ganesha/pid" -N NIV_WARN &
    local g=$!
    pids+=($g)
    wait_registered 100021 4 30 || { log "ganesha did not register nlockmgr 4"; tail -20 "$work/ganesha/log" >&2; exit 1; }
    # Its grace period refuses new locks for a while after start; wait it out.
    for _ in $(seq 120); do
        bench --mount "$work/ganesha/export:/file" --clients 1 --seconds 0.2 --label probe >/dev/null 2>&1 && break
        sleep 1
    done
    results+=("$(bench --null --clients 1 --label ganesha-null)")
    results+=("$(bench --mount "$work/ganesha/export:/file" --clients 1 --label ganesha-pairs)")
    results+=("$(bench --mount "$work/ganesha/export:/file" --clients 16 --label ganesha-pairs)")
    kill "$g" "$statd"
    wait "$g" "$statd" 2>/dev/null || true
    for v in 1 3 4; do rpcinfo -d 100021 "$v" >/dev/null 2>&1 || true; done
    rpcinfo -d 100024 1 >/dev/null 2>&1 || true
    rpcinfo -d 100003 3 >/dev/null 2>&1 || true
    rpcinfo -d 100005 3 >/dev/null 2>&1 || true
}

run_lockfs() {
    cargo build --release --locked -p lockfs >&2
    local target_dir=${CARGO_TARGET_DIR:-target}
    case "$target_dir" in /*) ;; *) target_dir=$(pwd)/$target_dir ;; esac
    local bin=$target_dir/release/lockfs
    if ! "$bin" serve --help >/dev/null 2>&1 || ! "$bin" fh --help >/dev/null 2>&1; then
        log "this lockfs has no NLM server yet ('lockfs serve' and 'lockfs fh'): skipping its runs"
        return 0
    fi
    mkdir -p "$work/lockfs/export" "$work/lockfs/mnt" "$work/lockfs/state"
    : > "$work/lockfs/export/file"
    cat > "$work/lockfs/lockfs.toml" <<EOF
state_dir = "$work/lockfs/state"
grace_period = "1s"

[[export]]
name = "bench"
source = "$work/lockfs/export"
mountpoint = "$work/lockfs/mnt"
EOF
    "$bin" serve --config "$work/lockfs/lockfs.toml" &
    local s=$!
    pids+=($s)
    wait_registered 100021 4 30 || { log "lockfs did not register nlockmgr 4"; exit 1; }
    sleep 1.5 # grace
    local fh
    fh=$("$bin" fh --config "$work/lockfs/lockfs.toml" "$work/lockfs/export/file")
    results+=("$(bench --null --clients 1 --label lockfs-null)")
    results+=("$(bench --fh "$fh" --clients 1 --label lockfs-pairs)")
    results+=("$(bench --fh "$fh" --clients 16 --label lockfs-pairs)")
    compares+=("$("$work/nlm-bench" --server 127.0.0.1 --seconds $((secs * 2)) --fh "$fh" --compare --label lockfs)")
    kill "$s"
    wait "$s" 2>/dev/null || true
}

[ "$only" = "lockfs" ] || run_ganesha
[ "$only" = "ganesha" ] || run_lockfs

echo "label clients pairs seconds pairs_per_s p50_us p99_us errors"
printf '%s\n' "${results[@]}"
printf '%s\n' "${results[@]}" | awk '
    { rate[$1 "/" $2] = $5; p99[$1 "/" $2] = $7 }
    END {
        for (c = 1; c <= 16; c += 15) {
            g = rate["ganesha-pairs/" c]; l = rate["lockfs-pairs/" c]
            if (g > 0 && l > 0) printf "clients=%d lockfs/ganesha pairs ratio %.2f (p99 %s us vs %s us)\n", c, l / g, p99["lockfs-pairs/" c], p99["ganesha-pairs/" c]
        }
        n = rate["lockfs-null/1"]; p = rate["lockfs-pairs/1"]
        if (n > 0 && p > 0) printf "lockfs pair time / two-NULL time: %.2f\n", n / p
    }'
if [ ${#compares[@]} -gt 0 ]; then
    printf '%s\n' "${compares[@]}"
    printf '%s\n' "${compares[@]}" | awk '{ printf "%s pair time / two-NULL time, alternating rounds: %s (median of %s; target <= 1.25)\n", $2, $10, $4 }'
fi
