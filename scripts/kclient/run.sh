#!/usr/bin/env bash
# Runs the kernel-client test once: a Linux guest (Debian's kernel under qemu, TCG)
# mounts an export over NFSv3 and runs guest/kguest.c in one of three modes.
#
#   locks     (default) against `lockfs serve`, while hostside.py holds and tries locks
#             on the same export's FUSE mount and, as a second NLM host, holds "hold"
#             over NLM; in the middle of the guest's last test the daemon is killed
#             with SIGKILL and started again, and the guest's lock must come back by
#             reclaim.
#   failover  two `lockfs serve` daemons, nodes A and B in network namespaces of their
#             own, share a directory as the storage of service group g1, whose server
#             ID (nfs-g1=10.77.0.10) starts on A. The guest locks a file through it; A
#             is killed with SIGKILL, the address moves to B (removed from A, added on
#             B with a gratuitous ARP, as IPaddr2 does) and `lockfs group online g1`
#             runs on B: the guest's kernel must reclaim its lock during g1's grace
#             (B's SM_NOTIFY reaches its statd) and B's `lockfs locks` must list it.
#   dd        the guest's dd of 64 MiB onto the mount (flushed) and back (after dropping
#             its page cache), for scale: TCG emulation, not a server figure. With
#             -s ganesha the same against nfs-ganesha (VFS FSAL) as a baseline.
#
# usage (as root, after build.sh): run.sh [-m MODE] [-s SERVER] [-d RUNDIR] [-l SECONDS]
#                                         [LOCKFS_BINARY]
#   -m MODE     locks (default), failover or dd
#   -s SERVER   lockfs (default) or, in dd mode only, ganesha
#   -d RUNDIR   where console.log, server.log, host.log and export/ go (default: a new
#               directory under $KCLIENT_DIR/runs)
#   -l SECONDS  the guest's whole budget (default 150); the host stops everything after
#               this plus 90 s however the guest fares
#   LOCKFS_BINARY defaults to `lockfs` on PATH
# The guest image comes from KCLIENT_OUT (default $KCLIENT_DIR/out, KCLIENT_DIR default
# /var/tmp/lockfs-kclient), as build.sh wrote it.
# Everything runs inside fresh network, mount and PID namespaces: the server listens on
# 10.77.0.1 (tap0), the guest is 10.77.0.2. When the run ends, the PID namespace's end
# kills every process started in it and the mount namespace's end drops the FUSE mounts
# and the nodes' network namespaces.
# Prints the "KC ..." (guest) and "HOST ..." (server side) lines; exits 0 only if the
# guest finished and nothing failed.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${KCLIENT_DIR:-/var/tmp/lockfs-kclient}
OUT=${KCLIENT_OUT:-$DIR/out}
SERVER_IP=10.77.0.1
GUEST_IP=10.77.0.2
# The failover mode's nodes and g1's server ID.
NODE_A=10.77.0.11 NODE_B=10.77.0.12 G1_IP=10.77.0.10

if [ "${1:-}" = "--inside" ]; then
    # PID 1 of the namespaces: RUNDIR LIMIT LOCKFS MODE SERVER
    RUN=$2 LIMIT=$3 LOCKFS=$4 MODE=$5 SERVER=$6
    mount -t tmpfs -o mode=755 kclient-run /run
    ip link set lo up
    ip tuntap add dev tap0 mode tap
    ip link set tap0 up
    SPID= HPID= QPID= APID= BPID= MNT=
    stop() {
        for p in $QPID $HPID $APID; do kill -TERM "$p" 2> /dev/null || true; done
        for p in $SPID $BPID; do
            kill -TERM "$p" 2> /dev/null || true
            for _ in $(seq 50); do kill -0 "$p" 2> /dev/null || break; sleep 0.1; done
            kill -KILL "$p" 2> /dev/null || true
        done
        if [ -n "$MNT" ] && mountpoint -q "$MNT"; then umount -l "$MNT" 2> /dev/null || true; fi
        for ns in kc-a kc-b; do ip netns del "$ns" 2> /dev/null || true; done
        ip link del kcbr0 2> /dev/null || true
        ip link del tap0 2> /dev/null || true
    }
    trap stop EXIT

    # The guest: APPEND holds its server, export and mode. no_timer_check: on a loaded
    # host the emulated IO-APIC timer can miss the kernel's boot-time check, which then
    # panics ("IO-APIC + timer doesn't work").
    boot_guest() { # SERVER_IP EXPORT
        timeout -k 5 $((LIMIT + 30)) qemu-system-x86_64 -accel tcg -m 512 -smp 1 \
            -nodefaults -no-user-config -display none -monitor none -no-reboot \
            -serial "file:$RUN/console.raw" \
            -kernel "$OUT/vmlinuz" -initrd "$OUT/initramfs.gz" \
            -append "console=ttyS0 quiet panic=-1 no_timer_check kc.server=$1 kc.guest=$GUEST_IP/24 kc.export=$2 kc.limit=$LIMIT kc.mode=$MODE" \
            -netdev tap,id=net0,ifname=tap0,script=no,downscript=no \
            -device e1000,netdev=net0 < /dev/null > "$RUN/qemu.log" 2>&1 &
        QPID=$!
    }
    # Waits for qemu; reports how it ended.
    wait_guest() {
        wait "$QPID" || echo "HOST qemu FAIL exited with status $? (124: stopped after the time limit)" >> "$RUN/host.log"
        QPID=
        sleep 0.5
    }
    wait_tcp() { # IP PORT SECONDS [COMMAND PREFIX, e.g. ip netns exec NS]
        local ip=$1 port=$2 secs=$3
        shift 3
        for _ in $(seq $((secs * 10))); do
            "$@" timeout 2 bash -c "exec 3<>/dev/tcp/$ip/$port" 2> /dev/null && return 0
            sleep 0.1
        done
        return 1
    }
    # A guest lock listed by `lockfs locks` (by path, or by device and inode once reclaimed).
    guest_lock_listed() { # SOCKET FILE OUTPUT
        local ino
        ino=$(stat -c %i "$2")
        "$LOCKFS" locks --socket "$1" > "$3" 2>&1 &&
            grep -qE "^kguest .* NLM +held +WRITE .*(/$(basename "$2")|:$ino\])\$" "$3"
    }

    if [ "$MODE" = failover ]; then
        # The guest and both nodes on one bridge; the nodes in network namespaces of
        # their own, as two machines would be.
        ip link add kcbr0 type bridge
        ip link set kcbr0 up
        ip link set tap0 master kcbr0
        SHARED=$RUN/shared
        mkdir -p "$SHARED/g1/data"
        chmod 1777 "$SHARED/g1/data"
        for node in a b; do
            ip=$NODE_A
            [ $node = b ] && ip=$NODE_B
            ip netns add "kc-$node"
            ip link add "kc$node" type veth peer name eth0 netns "kc-$node"
            ip link set "kc$node" master kcbr0
            ip link set "kc$node" up
            ip -n "kc-$node" link set lo up
            ip -n "kc-$node" addr add "$ip/24" dev eth0
            ip -n "kc-$node" link set eth0 up
            mkdir -p "$RUN/$node/state" "$RUN/$node/mnt"
            cat > "$RUN/$node/lockfs.toml" <<CONF
node_name = "node-$node"
state_dir = "$RUN/$node/state"
admin_socket = "$RUN/$node/admin.sock"

[listen]
addresses = ["0.0.0.0"]

[[group]]
name = "g1"
storage = "$SHARED/g1"
server_ids = ["nfs-g1=$G1_IP"]
grace_period = 30
online_at_start = false

[[export]]
name = "e-g1"
source = "$SHARED/g1/data"
mountpoint = "$RUN/$node/mnt"
group = "g1"
no_root_squash = true
CONF
            RUST_LOG=${RUST_LOG:-info} ip netns exec "kc-$node" "$LOCKFS" serve --config "$RUN/$node/lockfs.toml" \
                > "$RUN/server-$node.log" 2>&1 &
            if [ $node = a ]; then APID=$!; else BPID=$!; fi
        done
        group() { "$LOCKFS" group "$2" g1 --socket "$RUN/$1/admin.sock"; }
        for node in a b; do
            for _ in $(seq 300); do group $node status > /dev/null 2>&1 && break; sleep 0.1; done
            group $node status > /dev/null 2>&1 || { echo "HOST node-$node FAIL lockfs serve not ready"; exit 1; }
        done
        # IPaddr2's start: the address on the node, announced by gratuitous ARP (the guest
        # would otherwise keep sending to the old node's MAC address for a while).
        address() { # NODE add|del
            ip -n "kc-$1" addr "$2" "$G1_IP/24" dev eth0
            [ "$2" = add ] || return 0
            ip netns exec "kc-$1" python3 -c '
import socket, struct, sys, time
ip = socket.inet_aton(sys.argv[1])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
mac = s.getsockname()[4]
arp = struct.pack(">HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\0" * 6 + ip
for _ in range(3):
    s.send(b"\xff" * 6 + mac + struct.pack(">H", 0x0806) + arp)
    time.sleep(0.5)
' "$G1_IP"
        }
        address a add
        group a online > "$RUN/failover.log" 2>&1 || { echo "HOST online-a FAIL $(cat "$RUN/failover.log")"; exit 1; }
        if ! wait_tcp "$G1_IP" 2049 30 ip netns exec kc-a; then
            echo "HOST online-a FAIL nothing answers NFS at $G1_IP"
            exit 1
        fi
        echo "HOST online-a ok g1 online on node A: $(group a status | tail -n 1 | tr '\t' ' ')" > "$RUN/failover.log"
        boot_guest "$G1_IP" "$SHARED/g1/data"
        DATA=$SHARED/g1/data
        moved=0
        while kill -0 "$QPID" 2> /dev/null; do
            if [ $moved = 0 ] && [ -e "$DATA/failover.held" ]; then
                moved=1
                {
                    if guest_lock_listed "$RUN/a/admin.sock" "$DATA/failover" "$RUN/locks-a.txt"; then
                        echo "HOST held-a ok node A lists the guest's lock: $(grep '^kguest' "$RUN/locks-a.txt" | tr -s ' ')"
                    else
                        echo "HOST held-a FAIL node A does not list the guest's lock: $(tr '\n' ' ' < "$RUN/locks-a.txt")"
                    fi
                    before=$(group a status | awk -F'\t' '$1 == "g1" {print $5}')
                    kill -KILL "$APID"
                    wait "$APID" 2> /dev/null || true
                    APID=
                    address a del
                    ip -n kc-a link set eth0 down
                    address b add
                    t0=$(date +%s.%N)
                    if group b online > "$RUN/online-b.txt" 2>&1; then
                        after=$(group b status | awk -F'\t' '$1 == "g1" {print $5}')
                        echo "HOST online-b ok node A killed with SIGKILL, address moved, g1 online on node B: state_a=$before state_b=$after"
                    else
                        echo "HOST online-b FAIL $(cat "$RUN/online-b.txt")"
                    fi
                    result="no reclaim within 90 s"
                    for _ in $(seq 450); do
                        if guest_lock_listed "$RUN/b/admin.sock" "$DATA/failover" "$RUN/locks-b.txt"; then
                            result=RECLAIMED
                            break
                        fi
                        sleep 0.2
                    done
                    secs=$(printf '%.2f' "$(echo "$(date +%s.%N) - $t0" | bc)")
                    status=$(group b status | awk -F'\t' '$1 == "g1"')
                    grace=$(echo "$status" | cut -f3)
                    if [ $result = RECLAIMED ] && [ "$grace" = true ]; then
                        echo "HOST reclaim-b ok node B lists the guest's lock ${secs}s after group online, g1 still in grace: $(grep '^kguest' "$RUN/locks-b.txt" | tr -s ' ')"
                    elif [ $result = RECLAIMED ]; then
                        result="listed after g1's grace"
                        echo "HOST reclaim-b FAIL node B lists the guest's lock only after g1's grace (${secs}s): $status"
                    else
                        echo "HOST reclaim-b FAIL $result: $(tr '\n' ' ' < "$RUN/locks-b.txt")"
                    fi
                    echo "$result" > "$DATA/failover.result.tmp"
                    mv "$DATA/failover.result.tmp" "$DATA/failover.result"
                } >> "$RUN/failover.log" 2>&1
            fi
            sleep 0.2
        done
        wait_guest
        exit 0
    fi

    ip addr add "$SERVER_IP/24" dev tap0
    EXP=$RUN/export MNT=$RUN/mnt
    mkdir -p "$EXP" "$MNT" "$RUN/state"
    chmod 1777 "$EXP"
    # Read whole by the guest (its test "served"): written here, so the guest's READs of it
    # are served from the server's page cache.
    python3 -c 'import sys; sys.stdout.buffer.write(bytes(97 + i * 7 % 26 for i in range(300001)))' \
        > "$EXP/served"

    if [ "$SERVER" = ganesha ]; then
        # The baseline for the dd figures: nfs-ganesha with the VFS FSAL, NFSv3 only, no
        # NLM (dd takes no locks), with rpcbind for the guest's MOUNT lookup.
        MNT=
        mkdir -p /run/rpcbind /var/lib/nfs "$RUN/ganesha"
        mount -t tmpfs kclient-nfs /var/lib/nfs
        mkdir -p /var/lib/nfs/ganesha
        rpcbind -f -w > "$RUN/rpcbind.log" 2>&1 &
        HPID=$!
        for _ in $(seq 50); do rpcinfo -p 127.0.0.1 > /dev/null 2>&1 && break; sleep 0.1; done
        cat > "$RUN/ganesha/ganesha.conf" <<CONF
NFS_CORE_PARAM { Enable_NLM = false; Enable_RQUOTA = false; Protocols = 3; Bind_addr = $SERVER_IP; }
NFSv4 { Graceless = true; RecoveryBackend = fs; RecoveryRoot = $RUN/ganesha/recovery; }
EXPORT {
    Export_Id = 1; Path = $EXP; Pseudo = /kclient;
    Access_Type = RW; Squash = No_Root_Squash; Protocols = 3; Transports = TCP;
    FSAL { Name = VFS; }
}
CONF
        ganesha.nfsd -F -f "$RUN/ganesha/ganesha.conf" -L "$RUN/server.log" -p "$RUN/ganesha/pid" -N NIV_WARN &
        SPID=$!
        if ! wait_tcp "$SERVER_IP" 2049 60; then
            echo "HOST server FAIL nfs-ganesha not ready (see $RUN/server.log)"
            exit 1
        fi
        echo "HOST server ok nfs-ganesha $(dpkg-query -W -f='${Version}' nfs-ganesha 2> /dev/null)" > "$RUN/host.log"
        boot_guest "$SERVER_IP" "$EXP"
        wait_guest
        exit 0
    fi

    cat > "$RUN/lockfs.toml" <<CONF
node_name = "$SERVER_IP"
state_dir = "$RUN/state"
admin_socket = "$RUN/admin.sock"
grace_period = 0

[listen]
addresses = ["$SERVER_IP", "127.0.0.1"]

[[export]]
name = "export"
source = "$EXP"
mountpoint = "$MNT"
mandatory = "file"
no_root_squash = true
CONF
    RUST_LOG=${RUST_LOG:-info} "$LOCKFS" serve --config "$RUN/lockfs.toml" > "$RUN/server.log" 2>&1 &
    SPID=$!
    ready=0
    for _ in $(seq 300); do
        kill -0 "$SPID" 2> /dev/null || break
        if mountpoint -q "$MNT" && timeout 2 bash -c "exec 3<>/dev/tcp/$SERVER_IP/2049" 2> /dev/null; then
            ready=1
            break
        fi
        sleep 0.1
    done
    if [ $ready != 1 ]; then
        echo "HOST server FAIL lockfs serve not ready (see $RUN/server.log)"
        tail -n 20 "$RUN/server.log" >&2
        exit 1
    fi
    if [ "$MODE" = dd ]; then
        echo "HOST server ok lockfs serve" > "$RUN/host.log"
        boot_guest "$SERVER_IP" "$EXP"
        wait_guest
        exit 0
    fi
    restart_server() {
        kill -KILL "$SPID"
        wait "$SPID" 2> /dev/null || true
        umount -l "$MNT" 2> /dev/null || true
        sed -i 's/^grace_period = 0$/grace_period = 10/' "$RUN/lockfs.toml"
        RUST_LOG=${RUST_LOG:-info} "$LOCKFS" serve --config "$RUN/lockfs.toml" >> "$RUN/server.log" 2>&1 &
        SPID=$!
        echo "HOST restart ok lockfs killed with SIGKILL and started again"
        local result="no reclaim within 60 s"
        for _ in $(seq 300); do
            if guest_lock_listed "$RUN/admin.sock" "$EXP/restart" "$RUN/locks.txt"; then
                result=RECLAIMED
                break
            fi
            sleep 0.2
        done
        if [ $result = RECLAIMED ]; then
            echo "HOST reclaim ok lockfs locks shows the guest's lock again: $(grep '^kguest' "$RUN/locks.txt" | tr -s ' ')"
        else
            echo "HOST reclaim FAIL $result: $(tr '\n' ' ' < "$RUN/locks.txt")"
        fi
        echo "$result" > "$EXP/restart.result.tmp"
        mv "$EXP/restart.result.tmp" "$EXP/restart.result"
    }
    # The guest's kernel finds MOUNT, NFS and NLM through the portmapper on port 111,
    # which in this namespace can only be lockfs's own.
    rpcinfo -p "$SERVER_IP" > "$RUN/rpcinfo.txt" 2>&1 || true
    owner=$(ss -Htlnp "sport = :111" | grep -o 'users:(("[^"]*"' | head -n 1 | cut -d'"' -f2)
    missing=
    for want in "100005 3 tcp" "100003 3 tcp" "100021 4 tcp"; do
        awk -v w="$want" '($1" "$2" "$3) == w {f=1} END {exit !f}' "$RUN/rpcinfo.txt" || missing="$missing [$want]"
    done
    if [ "$owner" = lockfs ] && [ -z "$missing" ]; then
        echo "HOST portmap ok port 111 served by $owner, which maps MOUNT v3, NFS v3 and NLM v4 over TCP" > "$RUN/portmap.log"
    else
        echo "HOST portmap FAIL port 111 served by '${owner:-nobody}', missing:${missing:- none}" > "$RUN/portmap.log"
    fi
    python3 "$HERE/hostside.py" "$MNT" "$EXP" "$LIMIT" "$LOCKFS" "$RUN/lockfs.toml" "$SERVER_IP" > "$RUN/host.log" 2>&1 &
    HPID=$!
    for _ in $(seq 100); do grep -q '^HOST hold' "$RUN/host.log" && break; sleep 0.1; done
    grep -q '^HOST hold ok' "$RUN/host.log" || { echo "HOST hold FAIL"; cat "$RUN/host.log"; exit 1; }
    boot_guest "$SERVER_IP" "$EXP"
    # The restart step: once the guest holds its lock on "restart", the daemon dies by
    # SIGKILL and starts again (with a grace period, so that reclaims are expected); the
    # guest's kernel must reclaim the lock after the SM_NOTIFY of the new daemon.
    restarted=0
    while kill -0 "$QPID" 2> /dev/null; do
        if [ $restarted = 0 ] && [ -e "$EXP/restart.held" ]; then
            restarted=1
            restart_server >> "$RUN/restart.log" 2>&1
        fi
        sleep 0.2
    done
    wait_guest
    exit 0
fi

RUN= LIMIT=150 MODE=locks SERVER=lockfs
while getopts "m:s:d:l:h" o; do
    case $o in
    m) MODE=$OPTARG ;;
    s) SERVER=$OPTARG ;;
    d) RUN=$OPTARG ;;
    l) LIMIT=$OPTARG ;;
    *) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
case "$MODE/$SERVER" in
locks/lockfs | failover/lockfs | dd/lockfs | dd/ganesha) ;;
*) echo "run.sh: mode $MODE with server $SERVER is not a run this script makes" >&2; exit 2 ;;
esac
if [ "$SERVER" = ganesha ] && ! command -v ganesha.nfsd > /dev/null; then
    echo "run.sh: ganesha.nfsd missing (apt-get install nfs-ganesha nfs-ganesha-vfs)" >&2
    exit 2
fi
LOCKFS=-
if [ "$SERVER" = lockfs ]; then
    LOCKFS=$(command -v "${1:-lockfs}") || { echo "run.sh: no lockfs binary" >&2; exit 2; }
fi
[ "$(id -u)" = 0 ] || { echo "run.sh: run as root" >&2; exit 2; }
for f in vmlinuz initramfs.gz; do
    [ -s "$OUT/$f" ] || { echo "run.sh: $OUT/$f missing: run build.sh first" >&2; exit 2; }
done
if [ -z "$RUN" ]; then
    mkdir -p "$DIR/runs"
    RUN=$(mktemp -d "$DIR/runs/run.XXXXXX")
fi
mkdir -p "$RUN"
RUN=$(cd "$RUN" && pwd)
echo "run.sh: run directory $RUN" >&2
rc=0
timeout -k 10 $((LIMIT + 90)) unshare --net --mount --pid --fork --kill-child --mount-proc \
    --propagation private bash "$0" --inside "$RUN" "$LIMIT" "$LOCKFS" "$MODE" "$SERVER" || rc=$?
[ -f "$RUN/console.raw" ] && tr -d '\r' < "$RUN/console.raw" > "$RUN/console.log" || : > "$RUN/console.log"
grep -E '^KC(_STATD)? ' "$RUN/console.log" || true
LOGS=("$RUN/portmap.log" "$RUN/host.log" "$RUN/restart.log" "$RUN/failover.log")
grep -hsE '^HOST ' "${LOGS[@]}" || true
[ $rc = 0 ] || echo "run.sh: namespace exited with status $rc" >&2
if grep -q '^KC_END' "$RUN/console.log" && grep -q '^KC_DONE failures=0' "$RUN/console.log" &&
    ! grep -qsE '^(KC|HOST) [^ ]+ FAIL' "$RUN/console.log" "${LOGS[@]}"; then
    exit 0
fi
exit 1
