#!/usr/bin/env bash
# The main job: installs what lockfs needs, builds it, and runs it.
# Usage (as root, from anywhere): scripts/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
if ! command -v cargo >/dev/null 2>&1; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
cargo build --release --locked -p lockfs
exec target/release/lockfs demo "$@"
