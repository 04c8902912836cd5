#!/usr/bin/env bash
# Runs the kernel-client test once: a Linux guest (Debian's kernel under qemu, TCG)
# mounts an export of `lockfs serve` over NFSv3 and runs guest/kguest.c while
# hostside.py holds and tries locks on the same export's FUSE mount; in the middle of
# the guest's last test the daemon is killed with SIGKILL and started again, and the
# guest's lock must come back by reclaim.
#
# usage (as root, after build.sh): run.sh [-d RUNDIR] [-l SECONDS] [LOCKFS_BINARY]
#   -d RUNDIR   where console.log, server.log, host.log and export/ go (default: a new
#               directory under $KCLIENT_DIR/runs)
#   -l SECONDS  the guest's whole budget (default 150); the host stops everything after
#               this plus 90 s however the guest fares
#   LOCKFS_BINARY defaults to `lockfs` on PATH
# Everything runs inside fresh network, mount and PID namespaces: the server listens on
# 10.77.0.1 (tap0), the guest is 10.77.0.2. When the run ends, the PID namespace's end
# kills every process started in it and the mount namespace's end drops the FUSE mount.
# Prints the "KC ..." (guest) and "HOST ..." (server side: host.log, restart.log) lines;
# exits 0 only if the guest finished and nothing failed.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${KCLIENT_DIR:-/var/tmp/lockfs-kclient}
SERVER_IP=10.77.0.1
GUEST_IP=10.77.0.2

if [ "${1:-}" = "--inside" ]; then
    # PID 1 of the namespaces: RUNDIR LIMIT LOCKFS
    RUN=$2 LIMIT=$3 LOCKFS=$4
    mount -t tmpfs -o mode=755 kclient-run /run
    ip link set lo up
    ip tuntap add dev tap0 mode tap
    ip addr add "$SERVER_IP/24" dev tap0
    ip link set tap0 up
    EXP=$RUN/export MNT=$RUN/mnt
    mkdir -p "$EXP" "$MNT" "$RUN/state"
    chmod 1777 "$EXP"
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
    SPID= HPID= QPID=
    stop() {
        for p in $QPID $HPID; do kill -TERM "$p" 2> /dev/null || true; done
        if [ -n "$SPID" ]; then
            kill -TERM "$SPID" 2> /dev/null || true
            for _ in $(seq 50); do kill -0 "$SPID" 2> /dev/null || break; sleep 0.1; done
            kill -KILL "$SPID" 2> /dev/null || true
        fi
        if mountpoint -q "$MNT"; then umount -l "$MNT" 2> /dev/null || true; fi
        ip link del tap0 2> /dev/null || true
    }
    trap stop EXIT
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
    restart_server() {
        kill -KILL "$SPID"
        wait "$SPID" 2> /dev/null || true
        umount -l "$MNT" 2> /dev/null || true
        sed -i 's/^grace_period = 0$/grace_period = 10/' "$RUN/lockfs.toml"
        RUST_LOG=${RUST_LOG:-info} "$LOCKFS" serve --config "$RUN/lockfs.toml" >> "$RUN/server.log" 2>&1 &
        SPID=$!
        echo "HOST restart ok lockfs killed with SIGKILL and started again"
        local result="no reclaim within 60 s"
        # A reclaimed lock may be listed by device and inode rather than by path.
        local ino
        ino=$(stat -c %i "$EXP/restart")
        for _ in $(seq 300); do
            if "$LOCKFS" locks --socket "$RUN/admin.sock" > "$RUN/locks.txt" 2>&1 &&
                grep -qE "^kguest .* NLM +held +WRITE .*(/restart|:$ino\])\$" "$RUN/locks.txt"; then
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
    python3 "$HERE/hostside.py" "$MNT" "$EXP" "$LIMIT" > "$RUN/host.log" 2>&1 &
    HPID=$!
    for _ in $(seq 100); do grep -q '^HOST hold' "$RUN/host.log" && break; sleep 0.1; done
    grep -q '^HOST hold ok' "$RUN/host.log" || { echo "HOST hold FAIL"; cat "$RUN/host.log"; exit 1; }
    timeout -k 5 $((LIMIT + 30)) qemu-system-x86_64 -accel tcg -m 512 -smp 1 \
        -nodefaults -no-user-config -display none -monitor none -no-reboot \
        -serial "file:$RUN/console.raw" \
        -kernel "$DIR/out/vmlinuz" -initrd "$DIR/out/initramfs.gz" \
        -append "console=ttyS0 quiet panic=-1 kc.server=$SERVER_IP kc.guest=$GUEST_IP/24 kc.export=$EXP kc.limit=$LIMIT" \
        -netdev tap,id=net0,ifname=tap0,script=no,downscript=no \
        -device e1000,netdev=net0 < /dev/null > "$RUN/qemu.log" 2>&1 &
    QPID=$!
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
    wait "$QPID" || echo "HOST qemu FAIL exited with status $? (124: stopped after the time limit)" >> "$RUN/host.log"
    QPID=
    sleep 0.5
    exit 0
fi

RUN= LIMIT=150
while getopts "d:l:h" o; do
    case $o in
    d) RUN=$OPTARG ;;
    l) LIMIT=$OPTARG ;;
    *) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
LOCKFS=$(command -v "${1:-lockfs}") || { echo "run.sh: no lockfs binary" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run.sh: run as root" >&2; exit 2; }
for f in vmlinuz initramfs.gz; do
    [ -s "$DIR/out/$f" ] || { echo "run.sh: $DIR/out/$f missing: run build.sh first" >&2; exit 2; }
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
    --propagation private bash "$0" --inside "$RUN" "$LIMIT" "$LOCKFS" || rc=$?
[ -f "$RUN/console.raw" ] && tr -d '\r' < "$RUN/console.raw" > "$RUN/console.log" || : > "$RUN/console.log"
grep -E '^KC ' "$RUN/console.log" || true
grep -hE '^HOST ' "$RUN/portmap.log" "$RUN/host.log" "$RUN/restart.log" 2> /dev/null || true
[ $rc = 0 ] || echo "run.sh: namespace exited with status $rc" >&2
if grep -q '^KC_END' "$RUN/console.log" && grep -q '^KC_DONE failures=0' "$RUN/console.log" &&
    ! grep -qsE '^(KC|HOST) [^ ]+ FAIL' "$RUN/console.log" "$RUN/portmap.log" "$RUN/host.log" "$RUN/restart.log"; then
    exit 0
fi
exit 1
