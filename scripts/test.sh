#!/usr/bin/env bash
# Runs the whole lockfs test suite, after installing what it needs.
# Usage (as root, from anywhere): scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
if ! command -v cargo >/dev/null 2>&1; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

echo "== format"
cargo fmt --all -- --check

echo "== lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== doc tests"
cargo test --workspace --locked --doc

echo "== tests"
# The property test runs 10,000 random cases unless PROPTEST_CASES says
# otherwise. Per-test timeouts are in .config/nextest.toml.
cargo nextest run --workspace --locked --profile ci --no-tests=fail

echo "== fuzz"
# Every fuzz target for 60 s from the kept corpus, two at a time (about 3 minutes
# after the build); a crash fails the suite.
bash scripts/fuzz.sh 60
