#!/usr/bin/env bash
# Runs lockd-user's fuzz targets (fuzz/, cargo-fuzz and libFuzzer) for SECONDS each
# (default 60), two at a time, starting from the minimised corpus in fuzz/corpus.
# New inputs go to a scratch copy, so the kept corpus changes only by hand
# (scripts/fuzz.sh --cmin). A crash fails the run; its input is kept in
# fuzz/artifacts/TARGET/ and can be replayed with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run -s none --debug-assertions \
#     --target-dir fuzz/target-nosan TARGET fuzz/artifacts/TARGET/crash-...
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
#        scripts/fuzz.sh --cmin [TARGET...]   merge new inputs (FUZZ_NEW/TARGET,
#                                             default fuzz/corpus-new) into the
#                                             kept corpus, minimised
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
# cargo-fuzz's instrumentation flags are nightly-only; the stable compiler accepts
# them with this, as the eBPF build does.
export RUSTC_BOOTSTRAP=1

cmin=0
if [ "${1:-}" = "--cmin" ]; then
    cmin=1
    shift
    secs=0
else
    secs="${1:-60}"
    shift || true
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

# No sanitizer: the targets are safe Rust apart from the file-handle system calls,
# and libFuzzer runs them several times faster without ASan.
opts=(-s none --debug-assertions --target-dir fuzz/target-nosan)
cargo fuzz build "${opts[@]}"
bindir=fuzz/target-nosan/x86_64-unknown-linux-gnu/release

if [ "$cmin" = 1 ]; then
    for t in "${targets[@]}"; do
        new=$(mktemp -d)
        mkdir -p "fuzz/corpus/$t"
        from="${FUZZ_NEW:-fuzz/corpus-new}/$t"
        mkdir -p "$from"
        "$bindir/$t" -merge=1 "$new" "fuzz/corpus/$t" "$from" >/dev/null 2>&1
        rm -rf "fuzz/corpus/$t"
        mv "$new" "fuzz/corpus/$t"
        echo "$t: $(ls "fuzz/corpus/$t" | wc -l) inputs, $(du -sh "fuzz/corpus/$t" | cut -f1)"
    done
    exit 0
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
run_one() {
    local t=$1
    mkdir -p "$scratch/$t" "fuzz/artifacts/$t" "fuzz/corpus/$t"
    if "$bindir/$t" -max_total_time="$secs" -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" "$scratch/$t" "fuzz/corpus/$t" \
        >"$scratch/$t.log" 2>&1; then
        echo "fuzz $t: $(grep -E '^stat::number_of_executed_units' "$scratch/$t.log" | awk '{print $2}') runs, no crash"
        return 0
    fi
    echo "fuzz $t: FAILED"
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' -A3 "$scratch/$t.log" | head -40
    return 1
}

# Two targets at a time (the suite's two cores).
failed=0
pids=()
names=()
for t in "${targets[@]}"; do
    run_one "$t" &
    pids+=($!)
    names+=("$t")
    if [ ${#pids[@]} -eq 2 ]; then
        wait "${pids[0]}" || failed=1
        pids=("${pids[@]:1}")
        names=("${names[@]:1}")
    fi
done
for p in "${pids[@]}"; do
    wait "$p" || failed=1
done
if [ "$failed" != 0 ]; then
    echo "fuzz: a target crashed" >&2
    exit 1
fi
