#!/usr/bin/env bash
# Soak test of the NLM side: 50 NLM clients on their own loopback addresses lock
# and unlock at about 1,000 calls a second in total against the real daemon
# (`lockfs serve`), which is killed with SIGKILL and restarted every 20 s; an
# independent checker then proves from the clients' event log that no two
# conflicting locks were ever held at once and that every lock held at a kill was
# reclaimed. It runs in a private network namespace (lockfs/tests/soak.rs).
#
# Usage (as root): scripts/soak-nlm.sh [SECONDS]      (default 300)
# Environment: LOCKFS_SOAK_CLIENTS (50), LOCKFS_SOAK_OPS (1000 calls/s),
# LOCKFS_SOAK_KILL_EVERY (20 s), LOCKFS_SOAK_LOG (keep the event log there),
# LOCKFS_SOAK_LOOPBACK_ONLY=1 (every client at 127.0.0.1).
# The suite runs the same test for 60 s.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
export LOCKFS_SOAK_SECS="${1:-300}"
cargo test -p lockfs --locked --test soak -- --exact soak_kill_restart --nocapture
