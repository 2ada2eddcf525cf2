#!/usr/bin/env bash
# The HTTP edge's benchmark (issue: "The HTTP edge and the load generator"), side by side
# in one run on this machine:
#   1. the log's own append rate (lungfish bench log, every 10ms, 1 producer, 100-byte
#      records in batches of 1000);
#   2. `lungfish load` against `lungfish run examples/http.toml` (fsync every 10ms),
#      1,000 events per request, as fast as C concurrent requests go, RUNS times each;
#   3. the spike shape: a steady base with 20x for 10 s; ack p99 in and out of the
#      spike, and the server's peak RSS.
# Usage: scripts/bench_http.sh [RUNS] [BASE_RATE] [CONCURRENCIES]
#        (defaults: 3 runs, base 50000/s, concurrency "8 32")
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"
BASE="${2:-50000}"
CONCURRENCIES="${3:-8 32}"
cargo build --release -q -p lungfish-cli
LF="$PWD/target/release/lungfish"
WORK="$(mktemp -d)"
trap 'pkill -INT -f "lungfish run $PWD/examples/http.toml" || true; rm -rf "$WORK"' EXIT

echo "== log append (every 10ms, 1 producer)"
"$LF" bench log --producers 1 --runs "$RUNS" --bytes 256MiB --backlog-bytes 64MiB \
    --dir "$WORK/log" | grep -E "every 10ms|floor|measurement"

serve() {
    rm -rf "$WORK/run" && mkdir -p "$WORK/run"
    (cd "$WORK/run" && exec "$LF" run --quiet "$OLDPWD/examples/http.toml" >summary.txt 2>stderr.txt) &
    SERVER=$!
    for _ in $(seq 100); do curl -sf localhost:8080/health >/dev/null && return; sleep 0.1; done
    echo "server did not start"; cat "$WORK/run/stderr.txt"; exit 1
}
stop() {
    kill -INT "$SERVER"; wait "$SERVER" || true
    grep -E "peak memory" "$WORK/run/summary.txt"
}

for c in $CONCURRENCIES; do
    for i in $(seq "$RUNS"); do
        echo "== steady, unlimited, concurrency $c, run $i"
        serve
        "$LF" load http://127.0.0.1:8080/v1/events --rate 0 --duration 10s \
            --events-per-request 1000 --concurrency "$c" --no-progress | grep -E "achieved|all |^ +200"
        stop
    done
done

echo "== spike: base $BASE/s, 20x for 10 s from 10 s, 30 s in all"
serve
"$LF" load http://127.0.0.1:8080/v1/events --rate "$BASE" --shape spike --spike-factor 20 \
    --spike-at 10s --spike-for 10s --duration 30s --events-per-request 1000 \
    --concurrency 32 --no-progress
stop
