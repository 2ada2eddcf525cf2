#!/usr/bin/env bash
# The log's kill -9 loop in release mode: a child process appends under load and is
# killed with SIGKILL at a random moment, CYCLES times (default 1000); after each kill
# the log is recovered and every acknowledged id must be in it exactly once.
# See crates/lungfish-log/tests/kill9.rs.
#
# Usage: scripts/kill9.sh [CYCLES]       (LUNGFISH_KILL9_SEED=N to change the seed)
set -euo pipefail
cd "$(dirname "$0")/.."
cycles=${1:-1000}
case "$cycles" in
    '' | *[!0-9]*) echo "usage: $0 [CYCLES]" >&2; exit 2 ;;
esac
export LUNGFISH_KILL9_CYCLES="$cycles"
# --nocapture shows the report line (it starts with "kill9:").
cargo test --release -p lungfish-log --test kill9 -- --exact kill9_loop --nocapture
