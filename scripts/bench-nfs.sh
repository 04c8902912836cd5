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
# Both servers run at once, each in network and mount namespaces of its own (its own
# loopback, rpcbind and /run), and every row alternates between them: ganesha then
# lockfs, then lockfs then ganesha (--reps N rounds, 2 by default), each measurement
# --seconds long, and a server's figure is the total of its rounds. This machine's
# CPUs change speed by up to a third for seconds at a time (a busy loop pinned to one
# CPU ran 6,600-15,700 iterations per half second, with no steal time counted), so two
# servers measured one after the other, a minute apart, measured the machine as much
# as themselves; alternating within each row, in both orders, cancels most of that.
# The ratio of each round is printed too, to show the spread.
#
# The exported files live on a fresh ext4 for each server (mkfs defaults, so with a
# journal; a file-backed loop device with direct I/O, 6 GiB sparse under /tmp), not on
# whatever file system holds /tmp, and each measurement starts after a sync of both.
# Without a journal ext4 skips, when it allocates an inode, every inode freed in the
# last minute or so ("recently_deleted" in fs/ext4/ialloc.c), so a CREATE+REMOVE row
# there slows down with the number of files removed in the minute before it, by either
# server: one server's row measured the other's history. --fs tmp keeps the old
# placement, to compare.
#
# Usage (as root): scripts/bench-nfs.sh [--seconds N] [--reps N] [--only ganesha|lockfs]
#                                       [--lockfs BIN] [--fs image|tmp] [--rows "MODE ..."]
# --rows runs only the named rows (read write randread getattr lookup create; the
# lookup of 100,000 names and RSS are always last).
# Prints one line per run and a table of both servers with ratios and each server's CPU
# per operation. --lockfs runs that
# binary instead of building and running target/release/lockfs (to compare two builds in
# one sitting).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=5
reps=2
rows="read write randread getattr lookup create"
only=""
fs=image
lockfs_bin=""
args=("$@")
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) secs="$2"; shift 2 ;;
        --reps) reps="$2"; shift 2 ;;
        --rows) rows="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        --lockfs) lockfs_bin=$(realpath "$2"); shift 2 ;;
        --fs) fs="$2"; shift 2 ;;
        *) echo "usage: $0 [--seconds N] [--reps N] [--only ganesha|lockfs] [--lockfs BIN] [--fs image|tmp] [--rows \"MODE ...\"]" >&2; exit 2 ;;
    esac
done
case "$fs" in image|tmp) ;; *) echo "--fs is image or tmp" >&2; exit 2 ;; esac
case "$reps" in ''|*[!0-9]*|0) echo "--reps is a number of rounds, at least 1" >&2; exit 2 ;; esac
case "$only" in ''|ganesha|lockfs) ;; *) echo "--only is ganesha or lockfs" >&2; exit 2 ;; esac
for m in $rows; do
    case "$m" in read|write|randread|getattr|lookup|create) ;; *) echo "--rows: no row '$m'" >&2; exit 2 ;; esac
done

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

work=$(mktemp -d /tmp/lockfs-bench-nfs.XXXXXX)
pids=()
loops=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    done
    for s in ganesha lockfs; do
        [ -f "$work/$s/rpcbind.pid" ] && kill "$(cat "$work/$s/rpcbind.pid")" 2>/dev/null || true
    done
    for s in ganesha lockfs; do umount "$work/$s/fs" 2>/dev/null || true; done
    for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# Where a server's exported files live (see the header): a file system of its own, so
# neither measures what the other left on the disk (with one file system for both, the
# server that wrote second wrote 10-20% slower, whichever it was). Prints the directory.
fresh_fs() { # server
    local files=$work/$1
    if [ "$fs" = image ]; then
        files=$work/$1/fs
        truncate -s 6G "$work/$1/fs.img"
        # Inode tables and journal written now, so no lazy initialisation runs in the
        # background during the rows.
        mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0,nodiscard "$work/$1/fs.img"
        local l
        l=$(losetup -f --show --direct-io=on "$work/$1/fs.img")
        loops+=("$l")
        mkdir -p "$files"
        mount "$l" "$files"
    fi
    local dir=$files/export
    mkdir -p "$dir/many" "$files/data"
    # The files the server reads: 16 of 32 MiB, exported under hard links.
    for i in $(seq 0 15); do
        dd if=/dev/urandom of="$files/data/bench-$i" bs=1M count=32 status=none
        ln "$files/data/bench-$i" "$dir/bench-$i"
    done
    (cd "$dir/many" && seq -f 'f%.0f' 0 99999 | xargs touch)
    exported=$dir
}

cc -O2 -o "$work/nfs-bench" scripts/nfs-bench.c -lnfs
nfs_port=2049
mount_port=20048

# Starts a server in network and mount namespaces of its own: its own loopback (both
# servers use the standard ports), an address that is not loopback (ganesha's Bind_addr
# is resolved with AI_ADDRCONFIG, which finds no IPv4 with loopback alone), and its own
# /run with an rpcbind. The file systems mounted above are seen there too. Sets $started.
start_in_ns() { # server, then its command line
    local name=$1
    shift
    unshare --net --mount --propagation private -- sh -c '
        ip link set lo up
        ip link add bench0 type veth peer name bench1
        ip addr add 10.213.0.1/24 dev bench0
        ip link set bench0 up
        mount -t tmpfs tmpfs /run
        mkdir -p /run/rpcbind /var/lib/nfs
        mount -t tmpfs tmpfs /var/lib/nfs
        mkdir -p /var/lib/nfs/ganesha
        rpcbind -f -w &
        echo $! > "$0"
        for _ in $(seq 50); do rpcinfo -p 127.0.0.1 >/dev/null 2>&1 && break; sleep 0.1; done
        exec "$@"' "$work/$name/rpcbind.pid" "$@" &
    started=$!
    pids+=("$started")
}

# Runs a command in a server's network namespace.
in_ns() { # server-pid, then the command
    local pid=$1
    shift
    nsenter --net --target "$pid" -- "$@"
}

wait_nfs() { # server-pid seconds
    for _ in $(seq $(( $2 * 10 ))); do
        in_ns "$1" rpcinfo -n "$nfs_port" -t 127.0.0.1 100003 3 >/dev/null 2>&1 && return 0
        kill -0 "$1" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# User plus system CPU of a process and all its threads, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

declare -A pid_of export_of
start_ganesha() {
    mkdir -p "$work/ganesha"
    fresh_fs ganesha
    local dir=$exported
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
    start_in_ns ganesha ganesha.nfsd -F -f "$work/ganesha/ganesha.conf" -L "$work/ganesha/log" \
        -p "$work/ganesha/pid" -N NIV_WARN
    wait_nfs "$started" 30 || { log "ganesha does not answer NFS on $nfs_port"; tail -20 "$work/ganesha/log" >&2; exit 1; }
    pid_of[ganesha]=$started
    export_of[ganesha]=$dir
}

start_lockfs() {
    mkdir -p "$work/lockfs/mnt" "$work/lockfs/state"
    fresh_fs lockfs
    local bin=${lockfs_bin:-$target_dir/release/lockfs} dir=$exported
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
    start_in_ns lockfs "$bin" serve --config "$work/lockfs/lockfs.toml" 2>"$work/lockfs/log"
    wait_nfs "$started" 30 || { log "lockfs does not answer NFS on $nfs_port"; tail -20 "$work/lockfs/log" >&2; exit 1; }
    pid_of[lockfs]=$started
    export_of[lockfs]=$dir
}

servers=()
[ "$only" = "lockfs" ] || servers+=(ganesha)
[ "$only" = "ganesha" ] || servers+=(lockfs)
for srv in "${servers[@]}"; do "start_$srv"; done

drive() { # server, then the driver's options
    local srv=$1
    shift
    in_ns "${pid_of[$srv]}" timeout 600 "$work/nfs-bench" --server 127.0.0.1 --nfs-port $nfs_port \
        --mount-port $mount_port --export "${export_of[$srv]}" --label "$srv" "$@"
}

# Each measurement starts with nothing left to write back, on either file system: the
# flush of an earlier row (a WRITE's data, the 100,000 names made for an export) is not
# measured as part of the next one, of either server.
sync_all() {
    local s
    for s in "${servers[@]}"; do sync -f "${export_of[$s]}"; done
}

results=()
for mode in $rows; do
    case "$mode" in
        read|write) row="$mode --io-size 1048576" ;;
        randread) row="$mode --io-size 4096" ;;
        *) row=$mode ;;
    esac
    for c in 1 16; do
        for r in $(seq "$reps"); do
            order=("${servers[@]}")
            if [ $(( r % 2 )) -eq 0 ]; then
                order=()
                for (( i = ${#servers[@]} - 1; i >= 0; i-- )); do order+=("${servers[$i]}"); done
            fi
            for srv in "${order[@]}"; do
                sync_all
                t0=$(cpu_ticks "${pid_of[$srv]}")
                # shellcheck disable=SC2086
                if line=$(drive "$srv" --mode $row --clients $c --seconds "$secs"); then
                    line="$line round=$r cpu_ticks=$(( $(cpu_ticks "${pid_of[$srv]}") - t0 ))"
                    results+=("$line")
                else
                    log "$srv: '$row' with $c clients failed: ${line:-no output}"
                    results+=("${line:-$srv ${row%% *} $c 0 0 0 0 0 0 failed} round=$r cpu_ticks=0")
                fi
                echo "$line" >&2
            done
        done
    done
done

# Last, each server in turn: RSS before and after 16 clients look up 100,000 names.
for srv in "${servers[@]}"; do
    sync_all
    before=$(rss_kib "${pid_of[$srv]}")
    if line=$(drive "$srv" --mode lookupmany --count 100000 --clients 16 --seconds 600); then
        results+=("$line round=1")
    else
        log "$srv: lookup of 100,000 names failed: ${line:-no output}"
    fi
    echo "$line" >&2
    after=$(rss_kib "${pid_of[$srv]}")
    results+=("$srv rss_before_kib $before" "$srv rss_after_kib $after")
done

echo "label mode clients ops seconds ops_per_s MiB_per_s p50_us p99_us errors round cpu_ticks"
printf '%s\n' "${results[@]}" | grep -v ' rss_'
# A server's figure for a row is the total of its rounds (operations or MiB over
# seconds); "rounds" gives each round's ratio, in the order the rounds ran. "g us/op"
# and "l us/op" are each server process's user and system CPU (all its threads, in
# clock ticks of 10 ms) over the operations of all its rounds, in microseconds: what
# an operation costs the server, which the machine's drifting speed moves less than
# a rate does.
printf '%s\n' "${results[@]}" | awk -v hz="$(getconf CLK_TCK)" '
    $2 ~ /^rss_/ { rss[$1 "/" $2] = $3; next }
    {
        k = $2 "/" $3; r = substr($11, 7)
        v = ($2 == "read" || $2 == "write") ? $7 : $6
        amount[$1 "/" k] += v * $5; secs[$1 "/" k] += $5; round[$1 "/" k "/" r] = v
        if ($12 ~ /^cpu_ticks=/) { ticks[$1 "/" k] += substr($12, 11); ops[$1 "/" k] += $4 }
        if (r > nr[k]) nr[k] = r
    }
    function cpu(s, k) {
        return ops[s "/" k] > 0 ? sprintf("%.1f", ticks[s "/" k] / hz * 1e6 / ops[s "/" k]) : "-"
    }
    function total(s, k) { return secs[s "/" k] > 0 ? amount[s "/" k] / secs[s "/" k] : "" }
    function line(name, k,    g, l, r, i, rr, a, b) {
        g = total("ganesha", k); l = total("lockfs", k)
        r = (g > 0 && l > 0) ? sprintf("%.2f", l / g) : "-"
        rr = ""
        for (i = 1; i <= nr[k]; i++) {
            a = round["ganesha/" k "/" i]; b = round["lockfs/" k "/" i]
            rr = rr (a > 0 && b > 0 ? sprintf(" %.2f", b / a) : " -")
        }
        printf "%-22s %14s %14s %8s  %-12s %9s %9s\n", name, (g == "" ? "-" : sprintf("%.1f", g)), \
            (l == "" ? "-" : sprintf("%.1f", l)), r, rr, cpu("ganesha", k), cpu("lockfs", k)
    }
    END {
        printf "\n%-22s %14s %14s %8s  %-12s %9s %9s\n", "row", "ganesha", "lockfs", "ratio", "rounds", \
            "g us/op", "l us/op"
        n = split("read write randread getattr lookup create", modes, " ")
        for (i = 1; i <= n; i++) for (c = 1; c <= 16; c += 15) {
            m = modes[i]
            unit = (m == "read" || m == "write") ? "MiB/s" : (m == "create" ? "pairs/s" : "ops/s")
            line(m " c=" c " (" unit ")", m "/" c)
        }
        line("100k lookups (ops/s)", "lookupmany/16")
        for (j = 1; j <= 2; j++) {
            w = j == 1 ? "rss_before_kib" : "rss_after_kib"
            g = rss["ganesha/" w]; l = rss["lockfs/" w]
            printf "%-22s %14s %14s %8s\n", (j == 1 ? "RSS before (MB)" : "RSS after 100k (MB)"), \
                (g == "" ? "-" : sprintf("%.1f", g / 1024)), (l == "" ? "-" : sprintf("%.1f", l / 1024)), \
                (g > 0 && l > 0) ? sprintf("%.2f", l / g) : "-"
        }
    }'
