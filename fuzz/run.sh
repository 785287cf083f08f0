#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Runs every cargo-fuzz target for SECONDS seconds each and fails on the first
# crash (or on a target that does not build). Run from anywhere:
#
#     bash fuzz/run.sh 20          # CI smoke run
#     bash fuzz/run.sh 600         # ten minutes per target
#     bash fuzz/run.sh 60 type1_ops set_irqs   # only these targets
#
# Needs a nightly toolchain; installs cargo-fuzz if it is missing. New inputs go
# to fuzz/corpus/TARGET (ignored by git), crashes to fuzz/artifacts/TARGET; the
# checked-in seeds in fuzz/seeds/TARGET are read, never written. Prints one
# summary line per target: executions, seconds, executions per second.
set -euo pipefail

seconds="${1:-20}"
shift || true
cd "$(dirname "${BASH_SOURCE[0]}")"

all_targets=(
    irq_set_header
    cap_chain
    abi_sequence
    config_access
    type1_ops
    set_irqs
    hostile_device
)
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=("${all_targets[@]}")
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: no nightly toolchain (cargo-fuzz needs one)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz missing: cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked
fi
cargo fuzz --version

# Resolve dependencies as the main workspace does.
cp ../Cargo.lock Cargo.lock

# Build every target once up front so that fuzzing time is fuzzing time.
cargo +nightly fuzz build >/dev/null

summary=()
for target in "${targets[@]}"; do
    echo "--- fuzz target $target (${seconds} s)"
    mkdir -p "corpus/$target"
    log="$(mktemp)"
    # -print_final_stats gives the totals; per-second progress lines are dropped.
    if ! cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        grep -vE '^#[0-9]+[[:space:]]+(pulse|NEW|REDUCE|INITED)' "$log" | tail -n 60
        rm -f "$log"
        echo "fuzz target $target FAILED (crash input in fuzz/artifacts/$target)"
        exit 1
    fi
    runs="$(sed -nE 's/^stat::number_of_executed_units:[[:space:]]*([0-9]+).*/\1/p' "$log" | tail -n1)"
    elapsed="$(sed -nE 's/^Done ([0-9]+) runs in ([0-9]+) second.*/\2/p' "$log" | tail -n1)"
    rm -f "$log"
    runs="${runs:-0}"
    elapsed="${elapsed:-$seconds}"
    rate=$((runs / (elapsed > 0 ? elapsed : 1)))
    line="$(printf '%-16s %12s execs %6s s %10s exec/s' "$target" "$runs" "$elapsed" "$rate")"
    echo "$line"
    summary+=("$line")
done

echo
echo "fuzz summary (${seconds} s per target):"
printf '%s\n' "${summary[@]}"
