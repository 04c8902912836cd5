#!/bin/bash
# Server setup command for a kernel-client harness that boots a Linux NFS client in a
# network namespace and expects an NFSv3 server on $KC_SERVER_IP: `lockfs serve` with one
# export of $KC_EXPORT_DIR (NFS v3, MOUNT, NLM, NSM and lockfs's own portmapper), its FUSE
# mount under $KC_RUNDIR/lockfs/mnt for local lock holders. Stays in the foreground.
#   LOCKFS=/path/to/lockfs run.sh -e "$KC_RUNDIR/export" scripts/kclient-lockfs.sh
set -eu
RUN=${KC_RUNDIR:?KC_RUNDIR not set}
EXP=${KC_EXPORT_DIR:-$RUN/export}
IP=${KC_SERVER_IP:?KC_SERVER_IP not set}
LOCKFS=${LOCKFS:-lockfs}
ST=$RUN/lockfs
mkdir -p "$EXP" "$ST/mnt" "$ST/state"
chmod 1777 "$EXP"
cat > "$ST/lockfs.toml" <<CONF
node_name = "$IP"
state_dir = "$ST/state"
admin_socket = "$ST/admin.sock"
grace_period = 0

[listen]
addresses = ["$IP", "127.0.0.1"]

[[export]]
name = "export"
source = "$EXP"
mountpoint = "$ST/mnt"
mandatory = "file"
no_root_squash = true
CONF
exec "$LOCKFS" serve --config "$ST/lockfs.toml"
