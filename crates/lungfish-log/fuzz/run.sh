#!/usr/bin/env bash
# Runs every fuzz target of lungfish-log for FUZZ_SECONDS seconds each (default 30) and
# fails if any of them finds a crash (a panic, a hang past -timeout, or memory past
# -rss_limit_mb). Usage: ./run.sh [TARGET...]   (default: every target)
#
# cargo-fuzz needs nightly compiler flags (-Zsanitizer, sancov); with only the stable
# toolchain they are enabled with RUSTC_BOOTSTRAP=1. cargo-fuzz itself is installed
# into ~/.cargo/bin on first use, so later runs reuse it.
#
# Inputs that find new coverage accumulate in corpus/TARGET (not in git); the seeds in
# seeds/TARGET are read too. A crash is written to artifacts/TARGET/ and its command
# line to reproduce and minimise it is printed.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-30}
export RUSTC_BOOTSTRAP=1
# A smaller AddressSanitizer quarantine keeps the RSS well below -rss_limit_mb.
export ASAN_OPTIONS="${ASAN_OPTIONS:-quarantine_size_mb=64}"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz into ${CARGO_HOME:-$HOME/.cargo}/bin"
    cargo install cargo-fuzz --version "^0.13" --locked
fi

# batch_roundtrip keeps one log (and its background thread) open across inputs: a
# thread that the log starts during an input may still be starting when libFuzzer
# looks for leaks, which LeakSanitizer then reports as a leak (the spawn closure, the
# TLS destructor list). Leak detection is off for it; the other targets close every log.
extra_flags() {
    case "$1" in
        batch_roundtrip) echo -detect_leaks=0 ;;
    esac
}

max_len() {
    case "$1" in
        recovery_scan) echo 65536 ;;
        *) echo 16384 ;;
    esac
}

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

logs=$(mktemp -d)
# The targets keep their logs here (on tmpfs when there is one); libFuzzer exits
# without running destructors, so this script removes them.
if [ -d /dev/shm ]; then
    LUNGFISH_FUZZ_TMP=$(mktemp -d -p /dev/shm lungfish-fuzz.XXXXXX)
else
    LUNGFISH_FUZZ_TMP=$(mktemp -d)
fi
export LUNGFISH_FUZZ_TMP
trap 'rm -rf "$logs" "$LUNGFISH_FUZZ_TMP"' EXIT
failed=()
summary=()
for target in "${targets[@]}"; do
    echo "=== fuzzing $target for ${seconds}s"
    mkdir -p "corpus/$target"
    dirs=("corpus/$target")
    [ -d "seeds/$target" ] && dirs+=("seeds/$target")
    # -a: debug assertions and overflow checks, as in the tests.
    if cargo fuzz run -a "$target" "${dirs[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=512 \
        -max_len="$(max_len "$target")" -print_final_stats=1 $(extra_flags "$target") \
        2>&1 | tee "$logs/$target.log" | grep -E --line-buffered "^(#[0-9]+.*(DONE|pulse)|Done |==[0-9]+==|thread .* panicked)"; then
        :
    fi
    status=${PIPESTATUS[0]}
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$target.log" | tail -1)
    if [ "$status" -ne 0 ]; then
        failed+=("$target")
        summary+=("$target: FAILED after ${execs:-?} executions")
        echo "--- $target failed (status $status):"
        grep -E -A1 "panicked at|==[0-9]+==ERROR|^SUMMARY|Test unit written to" "$logs/$target.log" | head -n 20 || true
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$logs/$target.log" | tail -1)
        if [ -n "$artifact" ]; then
            echo "reproduce: (cd $(pwd) && RUSTC_BOOTSTRAP=1 cargo fuzz run -a $target $artifact)"
        fi
    else
        summary+=("$target: ok, ${execs:-?} executions in ${seconds}s")
    fi
done

echo "=== summary"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzzing found crashes in: ${failed[*]} (inputs in artifacts/)"
    exit 1
fi
