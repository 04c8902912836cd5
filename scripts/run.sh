#!/usr/bin/env bash
# The main job: installs what lockfs needs, builds it, and runs the daemon.
# Usage (as root): scripts/run.sh [--config FILE]
# Without --config the daemon runs its embedded default: ./lockfs-data/export
# (created if missing) mounted on ./lockfs-data/mnt with mandatory locking by
# the set-group-ID convention, NLM and NSM on 127.0.0.1, state in
# ./lockfs-data/state. Ctrl-C or SIGTERM stops it and unmounts.
set -euo pipefail
here=$(pwd)
cd "$(dirname "$0")/.."

bash scripts/setup.sh
if ! command -v cargo >/dev/null 2>&1; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
cargo build --release --locked -p lockfs
target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir=$(pwd)/$target_dir ;; esac
bin=$target_dir/release/lockfs
cd "$here"
exec "$bin" serve "$@"
