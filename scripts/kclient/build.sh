#!/usr/bin/env bash
# Builds the guest used by the kernel-client test (scripts/kclient/run.sh): Debian's own
# kernel (linux-image-*-amd64) and an initramfs holding busybox, the NFS client modules,
# rpcbind and rpc.statd (the Linux NLM client needs both: lockd registers with the
# local portmapper, and the kernel asks statd to monitor the server before its first
# lock), and the static guest test program. Idempotent: packages are installed only when
# missing, downloads are cached, and the initramfs is rebuilt only when an input changed.
#
# Output (KCLIENT_DIR, default /var/tmp/lockfs-kclient): out/vmlinuz, out/initramfs.gz.
# Environment: KCLIENT_DIR, KCLIENT_KVER (kernel ABI, e.g. 6.1.0-56-amd64), KCLIENT_OUT
# (where vmlinuz and initramfs.gz go, default $KCLIENT_DIR/out: a guest built from a
# changed tree can go elsewhere while the downloads stay shared). Run as root.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${KCLIENT_DIR:-/var/tmp/lockfs-kclient}
DEBS=$DIR/debs
OUT=${KCLIENT_OUT:-$DIR/out}
mkdir -p "$DEBS" "$OUT"
say() { printf 'kclient-build: %s\n' "$*" >&2; }

# Host packages: qemu (TCG), busybox-static for the guest's shell and tools, a static
# libc for the guest program, cpio/kmod/dpkg for assembling the initramfs, and the
# rpcbind/statd binaries copied into the guest.
PKGS=(qemu-system-x86 busybox-static libc6-dev gcc cpio kmod dpkg gzip rpcbind nfs-common iproute2 python3)
absent=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || absent+=("$p")
done
if [ ${#absent[@]} -gt 0 ]; then
    say "installing ${absent[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout=600 "${absent[@]}" >&2
fi

# The kernel: the ABI the linux-image-amd64 metapackage points at, unless pinned or
# already downloaded.
KVER=${KCLIENT_KVER:-}
if [ -z "$KVER" ]; then
    have=$(find "$DEBS" -maxdepth 1 -name 'linux-image-*-amd64_*.deb' -printf '%f\n' | sort -V | tail -n 1)
    if [ -n "$have" ]; then
        KVER=${have#linux-image-}
        KVER=${KVER%%_*}
    else
        KVER=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {sub("linux-image-", "", $2); print $2; exit}')
    fi
fi
[ -n "$KVER" ] || { say "no kernel version found; set KCLIENT_KVER"; exit 1; }
deb=$(find "$DEBS" -maxdepth 1 -name "linux-image-${KVER}_*.deb" | head -n 1)
if [ -z "$deb" ]; then
    say "downloading linux-image-$KVER"
    (cd "$DEBS" && apt-get download "linux-image-$KVER" >&2)
    deb=$(find "$DEBS" -maxdepth 1 -name "linux-image-${KVER}_*.deb" | head -n 1)
fi
KTREE=$DIR/kernel-$KVER
if [ ! -f "$KTREE/.extracted" ]; then
    say "extracting $(basename "$deb")"
    rm -rf "$KTREE"
    dpkg-deb -x "$deb" "$KTREE"
    depmod -b "$KTREE" "$KVER"
    touch "$KTREE/.extracted"
fi
MODS=$KTREE/lib/modules/$KVER

# Rebuild the initramfs only when an input changed.
stamp=$( { echo "$KVER"; cat "$HERE/build.sh" "$HERE/guest/init" "$HERE/guest/kguest.c";
           for b in busybox rpcbind rpc.statd rpcinfo; do sha1sum "$(command -v "$b")"; done; } | sha1sum | cut -c1-40)
if [ -s "$OUT/initramfs.gz" ] && [ -s "$OUT/vmlinuz" ] && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$stamp" ]; then
    say "up to date ($OUT)"
    exit 0
fi

ROOT=$(mktemp -d "$OUT/root.XXXXXX")
chmod 755 "$ROOT"   # the guest root: statd runs unprivileged
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT"/{bin,sbin,etc,proc,sys,dev,tmp,run,mnt,lib/modules,lib64,lib/x86_64-linux-gnu,var/lib/nfs/sm,var/lib/nfs/sm.bak}
cp "$(command -v busybox)" "$ROOT/bin/busybox"
file "$ROOT/bin/busybox" 2>/dev/null | grep -q 'statically linked' || \
    ldd "$ROOT/bin/busybox" 2>&1 | grep -q 'not a dynamic' || { say "busybox is not static"; exit 1; }
install -m 755 "$HERE/guest/init" "$ROOT/init"
gcc -O2 -Wall -static -o "$ROOT/bin/kguest" "$HERE/guest/kguest.c"

# rpcbind and statd are dynamic: bring their libraries along.
with_libs() {
    cp -L "$1" "$ROOT/sbin/"
    ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
        case $lib in
        /lib64/*) cp -Ln "$lib" "$ROOT/lib64/" ;;
        *) cp -Ln "$lib" "$ROOT/lib/x86_64-linux-gnu/" ;;
        esac
    done
}
with_libs "$(command -v rpcbind)"
with_libs "$(command -v rpc.statd)"
with_libs "$(command -v rpcinfo)"
cp /etc/netconfig /etc/services /etc/protocols /etc/rpc "$ROOT/etc/"
printf 'root:x:0:0::/:/bin/sh\n_rpc:x:100:65534::/run/rpcbind:/bin/false\nstatd:x:101:65534::/var/lib/nfs:/bin/false\n' > "$ROOT/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$ROOT/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files\nrpc: files\nservices: files\nprotocols: files\n' > "$ROOT/etc/nsswitch.conf"
chown 101 "$ROOT/var/lib/nfs/sm" "$ROOT/var/lib/nfs/sm.bak"

# The modules the guest loads, dependencies first: the NIC and the NFSv3 client with
# its lock manager. modprobe --show-depends resolves the order against the extracted tree.
: > "$ROOT/lib/modules/load"
for m in e1000 sunrpc grace lockd nfs_acl nfs nfsv3; do
    modprobe -d "$KTREE" -S "$KVER" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
    cp "$ko" "$ROOT/lib/modules/"
    basename "$ko" >> "$ROOT/lib/modules/load"
done
[ -s "$ROOT/lib/modules/load" ] || { say "no modules resolved"; exit 1; }

(cd "$ROOT" && find . -print0 | cpio --null -o -H newc --quiet | gzip -6) > "$OUT/initramfs.gz.$$"
mv "$OUT/initramfs.gz.$$" "$OUT/initramfs.gz"
cp "$KTREE/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
echo "$stamp" > "$OUT/stamp"
say "built $OUT (kernel $KVER, modules: $(tr '\n' ' ' < "$ROOT/lib/modules/load"))"
