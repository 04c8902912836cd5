#!/usr/bin/env bash
# NFSv3 benchmark: lockfs's NFS door against nfs-ganesha 4.3 (VFS FSAL), driven
# in the same run by the same independent client (scripts/nfs-bench.c, built on
# libnfs's raw calls).
#
# Rows, each with 1 and 16 concurrent clients (one TCP connection and one
# request in flight each): sequential READ and WRITE (UNSTABLE, COMMIT at each
# 32 MiB wrap and at the end) in 1 MiB requests, 4 KiB random READ, GETATTR,
# LOOKUP, CREATE+REMOVE pairs; last, the server's RSS before and after 16
# clients LOOKUP 100,000 distinct files. Each server gets its own export
# directory; the read files are hard links of the same 16 files of 32 MiB.
#
# Everything runs in a private network and mount namespace the script enters
# itself: its own loopback, rpcbind, /run and /var/lib/nfs, so no port or
# registration of another daemon on this machine is touched, and nothing
# leaves the machine.
#
# The exported files live on a fresh ext4 made for each server just before its
# rows (mkfs defaults, so with a journal; a file-backed loop device with direct
# I/O, 6 GiB sparse under /tmp), not on whatever file system holds /tmp, and
# each row starts after a sync of it. Without a journal ext4 skips,
# when it allocates an inode, every inode freed in the last minute or so
# ("recently_deleted" in fs/ext4/ialloc.c), so a CREATE+REMOVE row there slows
# down with the number of files removed in the minute before it, by either
# server: one server's row measured the other's history. --fs tmp keeps the
# old placement, to compare.
#
# Usage (as root): scripts/bench-nfs.sh [--seconds N] [--only ganesha|lockfs] [--lockfs BIN]
#                                       [--fs image|tmp]
# Prints one line per run and a table of both servers with ratios. --lockfs runs that
# binary instead of building and running target/release/lockfs (to compare two builds in
# one sitting).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=5
only=""
fs=image
lockfs_bin=""
args=("$@")
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) secs="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        --lockfs) lockfs_bin=$(realpath "$2"); shift 2 ;;
        --fs) fs="$2"; shift 2 ;;
        *) echo "usage: $0 [--seconds N] [--only ganesha|lockfs] [--lockfs BIN] [--fs image|tmp]" >&2; exit 2 ;;
    esac
done
case "$fs" in image|tmp) ;; *) echo "--fs is image or tmp" >&2; exit 2 ;; esac

log() { printf 'bench-nfs: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "run as root (namespaces, servers on privileged ports)"
    exit 1
fi

target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir=$(pwd)/$target_dir ;; esac

if [ -z "${BENCH_NFS_INNER:-}" ]; then
    need=()
    for p in nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-dev e2fsprogs; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
    done
    if [ ${#need[@]} -gt 0 ]; then
        log "installing ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
    fi
    # Build outside the namespace (cargo may need the network), then enter it.
    [ "$only" = "ganesha" ] || [ -n "$lockfs_bin" ] || cargo build --release --locked -p lockfs >&2
    exec timeout --kill-after=30 3600 unshare --net --mount --propagation private -- \
        env BENCH_NFS_INNER=1 "$0" "${args[@]}"
fi

# ---- inside the private namespaces ----
ip link set lo up
# getaddrinfo(AI_ADDRCONFIG), which ganesha uses for Bind_addr, finds no IPv4
# with loopback alone: give the namespace one non-loopback address.
ip link add bench0 type veth peer name bench1
ip addr add 10.213.0.1/24 dev bench0
ip link set bench0 up
mount -t tmpfs tmpfs /run
mkdir -p /run/rpcbind /var/lib/nfs
mount -t tmpfs tmpfs /var/lib/nfs
mkdir -p /var/lib/nfs/ganesha

work=$(mktemp -d /tmp/lockfs-bench-nfs.XXXXXX)
pids=()
loop=""
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    done
    umount "$work/lockfs/mnt" 2>/dev/null || true
    if [ -n "$loop" ]; then
        umount "$work/fs" 2>/dev/null || true
        losetup -d "$loop" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# Where the exported files live (see the header): each server gets a file system of its
# own, made the same way just before its rows, so neither measures what the other left
# on the disk (a file system the first server already wrote to wrote the second one's
# WRITE rows 10-20% slower, whichever server came first).
files=$work
fresh_fs() { # name
    if [ "$fs" = image ]; then
        if [ -n "$loop" ]; then
            umount "$work/fs"
            losetup -d "$loop"
            rm -f "$work/fs.img"
        fi
        truncate -s 6G "$work/fs.img"
        # Inode tables and journal written now, so no lazy initialisation runs in the
        # background during the rows.
        mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0,nodiscard "$work/fs.img"
        loop=$(losetup -f --show --direct-io=on "$work/fs.img")
        mkdir -p "$work/fs"
        mount "$loop" "$work/fs"
        files=$work/fs
    else
        files=$work/$1
    fi
    # The files the server reads: 16 of 32 MiB.
    mkdir -p "$files/data"
    for i in $(seq 0 15); do
        dd if=/dev/urandom of="$files/data/bench-$i" bs=1M count=32 status=none
    done
}
mkdir -p "$work/ganesha" "$work/lockfs"

cc -O2 -o "$work/nfs-bench" scripts/nfs-bench.c -lnfs
nfs_port=2049
mount_port=20048

rpcbind -f -w &
pids+=($!)
for _ in $(seq 50); do rpcinfo -p 127.0.0.1 >/dev/null 2>&1 && break; sleep 0.1; done


prepare_export() { # dir
    mkdir -p "$1/many"
    for i in $(seq 0 15); do ln "$files/data/bench-$i" "$1/bench-$i"; done
    (cd "$1/many" && seq -f 'f%.0f' 0 99999 | xargs touch)
}

wait_port() { # port seconds
    for _ in $(seq $(( $2 * 10 ))); do
        rpcinfo -n "$1" -t 127.0.0.1 100003 3 >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

results=()
run_rows() { # label export server-pid
    local label=$1 export=$2 pid=$3 line
    drive() { timeout 120 "$work/nfs-bench" --server 127.0.0.1 --nfs-port $nfs_port --mount-port $mount_port \
        --export "$export" --label "$label" "$@"; }
    for row in "read --io-size 1048576" "write --io-size 1048576" "randread --io-size 4096" \
        "getattr" "lookup" "create"; do
        for c in 1 16; do
            # Each row starts with nothing left to write back: the file system's flush of
            # an earlier row (a WRITE's data, the 100,000 names made for the export) is
            # not measured as part of the next row, of either server.
            sync -f "$export"
            # shellcheck disable=SC2086
            if line=$(drive --mode $row --clients $c --seconds "$secs"); then
                results+=("$line")
            else
                log "$label: '$row' with $c clients failed: ${line:-no output}"
                results+=("${line:-$label ${row%% *} $c 0 0 0 0 0 0 failed}")
            fi
            echo "$line" >&2
        done
    done
    local before after
    sync -f "$export"
    before=$(rss_kib "$pid")
    if line=$(timeout 600 "$work/nfs-bench" --server 127.0.0.1 --nfs-port $nfs_port --mount-port $mount_port \
        --export "$export" --label "$label" --mode lookupmany --count 100000 --clients 16 --seconds 600); then
        results+=("$line")
    else
        log "$label: lookup of 100,000 names failed: ${line:-no output}"
    fi
    echo "$line" >&2
    after=$(rss_kib "$pid")
    results+=("$label rss_before_kib $before" "$label rss_after_kib $after")
}

run_ganesha() {
    fresh_fs ganesha
    local dir=$files/ganesha
    mkdir -p "$dir"
    prepare_export "$dir"
    # NLM off: no lock calls are measured, and it spares a statd.
    cat > "$work/ganesha/ganesha.conf" <<EOF
NFS_CORE_PARAM {
    Enable_NLM = false; Enable_RQUOTA = false; Bind_addr = 127.0.0.1; Protocols = 3;
    NFS_Port = $nfs_port; MNT_Port = $mount_port;
    MaxRPCRecvBufferSize = 4194304; MaxRPCSendBufferSize = 4194304;
}
NFSv4 { Graceless = true; RecoveryBackend = fs; }
EXPORT {
    Export_Id = 1; Path = $dir; Pseudo = /bench;
    Access_Type = RW; Squash = No_Root_Squash; Protocols = 3; Transports = TCP;
    MaxRead = 1048576; MaxWrite = 1048576;
    FSAL { Name = VFS; }
}
EOF
    ganesha.nfsd -F -f "$work/ganesha/ganesha.conf" -L "$work/ganesha/log" -p "$work/ganesha/pid" -N NIV_WARN &
    local g=$!
    pids+=($g)
    wait_port $nfs_port 30 || { log "ganesha does not answer NFS on $nfs_port"; tail -20 "$work/ganesha/log" >&2; exit 1; }
    run_rows ganesha "$dir" "$g"
    kill "$g"
    wait "$g" 2>/dev/null || true
    for p in 100003 100005; do for v in 1 3; do rpcinfo -d $p $v >/dev/null 2>&1 || true; done; done
}

run_lockfs() {
    fresh_fs lockfs
    local bin=${lockfs_bin:-$target_dir/release/lockfs} dir=$files/lockfs
    mkdir -p "$dir" "$work/lockfs/mnt" "$work/lockfs/state"
    prepare_export "$dir"
    cat > "$work/lockfs/lockfs.toml" <<EOF
state_dir = "$work/lockfs/state"
admin_socket = "$work/lockfs/admin.sock"
grace_period = "1s"

[listen]
addresses = ["127.0.0.1"]
nfs_port = $nfs_port
mount_port = $mount_port

[[export]]
name = "bench"
source = "$dir"
mountpoint = "$work/lockfs/mnt"
no_root_squash = true
EOF
    "$bin" serve --config "$work/lockfs/lockfs.toml" 2>"$work/lockfs/log" &
    local s=$!
    pids+=($s)
    wait_port $nfs_port 30 || { log "lockfs does not answer NFS on $nfs_port"; tail -20 "$work/lockfs/log" >&2; exit 1; }
    run_rows lockfs "$dir" "$s"
    kill "$s"
    wait "$s" 2>/dev/null || true
}

[ "$only" = "lockfs" ] || run_ganesha
[ "$only" = "ganesha" ] || run_lockfs

echo "label mode clients ops seconds ops_per_s MiB_per_s p50_us p99_us errors"
printf '%s\n' "${results[@]}" | grep -v ' rss_'
printf '%s\n' "${results[@]}" | awk '
    $2 ~ /^rss_/ { rss[$1 "/" $2] = $3; next }
    { k = $2 "/" $3; v = ($2 == "read" || $2 == "write") ? $7 : $6; val[$1 "/" k] = v; err[$1 "/" k] = $10; seen[k] = 1 }
    END {
        printf "\n%-22s %14s %14s %8s\n", "row", "ganesha", "lockfs", "ratio"
        n = split("read write randread getattr lookup create", modes, " ")
        for (i = 1; i <= n; i++) for (c = 1; c <= 16; c += 15) {
            m = modes[i]; k = m "/" c
            unit = (m == "read" || m == "write") ? "MiB/s" : (m == "create" ? "pairs/s" : "ops/s")
            g = val["ganesha/" k]; l = val["lockfs/" k]
            r = (g > 0 && l > 0) ? sprintf("%.2f", l / g) : "-"
            printf "%-22s %14s %14s %8s\n", m " c=" c " (" unit ")", (g == "" ? "-" : g), (l == "" ? "-" : l), r
        }
        g = val["ganesha/lookupmany/16"]; l = val["lockfs/lookupmany/16"]
        printf "%-22s %14s %14s %8s\n", "100k lookups (ops/s)", (g == "" ? "-" : g), (l == "" ? "-" : l), (g > 0 && l > 0) ? sprintf("%.2f", l / g) : "-"
        for (j = 1; j <= 2; j++) {
            w = j == 1 ? "rss_before_kib" : "rss_after_kib"
            g = rss["ganesha/" w]; l = rss["lockfs/" w]
            printf "%-22s %14s %14s %8s\n", (j == 1 ? "RSS before (MB)" : "RSS after 100k (MB)"), \
                (g == "" ? "-" : sprintf("%.1f", g / 1024)), (l == "" ? "-" : sprintf("%.1f", l / 1024)), \
                (g > 0 && l > 0) ? sprintf("%.2f", l / g) : "-"
        }
    }'
