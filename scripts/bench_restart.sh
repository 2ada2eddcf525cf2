#!/usr/bin/env bash
# Restart time with many open windows: state checkpoints on (checkpoint_interval = "5s",
# the default) vs off (checkpoint_interval = "0s": replay from the oldest open window),
# side by side in one run, median of RUNS.
#
# Per run and mode, in a fresh directory:
#   1. Fill: a generator (COUNT events, KEYS uniform keys, all in one 1-hour tumbling
#      window, so ~KEYS keys are open) plus an HTTP source that never finishes, so the
#      end of input never closes the windows. Wait (metrics endpoint) until every event
#      is in the log and processed: lungfish_consumer_offset = lungfish_log_end_offset
#      on every partition; with state checkpoints also until lungfish_consumer_lag = 0
#      (a state checkpoint covering everything is committed). Then kill -9.
#   2. Restart, measured: the same pipeline without the HTTP source, so the run is
#      bounded: it restores (state) or replays (0s) the open windows, finds the input
#      finished, closes every window and writes its rows, and exits. "Restart to caught
#      up" is the wall time of that run, from process start to exit: the only difference
#      between the modes is getting the open windows back (the emission of the ~KEYS
#      rows to the sink, a stdout sink written to a file, is the same work in both).
#      For state checkpoints, the time to the log line "restored open windows from the
#      committed state checkpoints" (from process start) and its keys= and elapsed= are
#      also shown.
#
# Usage: scripts/bench_restart.sh [RUNS] [KEYS] [COUNT]
#        (defaults: 3 runs, 1,000,000 keys, 5 x KEYS events; needs ~0.6 GB of disk per
#        10^6 keys at a time and a few GB of memory)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"
KEYS="${2:-1000000}"
COUNT="${3:-$((5 * KEYS))}"
if [ -n "${LUNGFISH_BIN:-}" ]; then
    LF="$LUNGFISH_BIN" # (to try the script itself with another build)
else
    cargo build --release -q -p lungfish-cli
    LF="${CARGO_TARGET_DIR:-$PWD/target}/release/lungfish"
fi
WORK="$(mktemp -d)"
PID=""
cleanup() {
    if [ -n "$PID" ]; then kill -9 "$PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }

# Event-time density: COUNT events over 3000 s, inside the first hour.
EPS=$(( (COUNT + 2999) / 3000 ))

# pipeline FILE INTERVAL WITH_HTTP
pipeline() {
    local file=$1 interval=$2 http=$3
    {
        cat <<EOF
name = "restart"
data_dir = "data"

[sources.gen]
type = "generator"
count = $COUNT
keys = $KEYS
events_per_second = $EPS
seed = 3
EOF
        if [ "$http" = yes ]; then
            cat <<EOF

[sources.api]
type = "http"
address = "127.0.0.1:$HTTP_PORT"
EOF
        fi
        cat <<EOF

[log]
partitions = 2
segment_size = "256MiB"

[pipeline]
out_of_orderness = "1s"
checkpoint_interval = "$interval"
memory_limit = "4GiB"
window = { type = "tumbling", size = "1h" }
aggregates = ["count", "sum(value)", "mean(value)"]

[sinks.out]
type = "stdout"

[metrics]
address = "127.0.0.1:$METRICS_PORT"
EOF
    } >"$file"
}

# Sum of a metric's values over its partitions (empty if absent).
metric() {
    curl -sf "127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null |
        awk -v m="$1" '$1 ~ "^"m"[{ ]" || $1 == m { s += $NF; n++ } END { if (n) printf "%d", s }'
}
# Partitions where the metric equals another's (both present), as "n/m".
all_caught_up() {
    local body
    body=$(curl -sf "127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null) || return 1
    python3 - "$1" "$body" <<'EOF'
import re, sys
mode, body = sys.argv[1], sys.argv[2]
def per(name):
    out = {}
    for m in re.finditer(r'^' + name + r'\{partition="(\d+)"\} (\S+)$', body, re.M):
        out[m.group(1)] = float(m.group(2))
    return out
end, off, lag = per("lungfish_log_end_offset"), per("lungfish_consumer_offset"), per("lungfish_consumer_lag")
if len(end) < 2 or sum(end.values()) == 0:
    sys.exit(1)
if any(off.get(p) != e for p, e in end.items()):
    sys.exit(1)
if mode == "state" and any(lag.get(p) != 0 for p in end):
    sys.exit(1)
EOF
}

# fill DIR MODE: runs the filling pipeline until everything is processed, then kill -9.
fill() {
    local dir=$1 mode=$2 t0
    (cd "$dir" && exec "$LF" run --quiet fill.toml >/dev/null 2>fill.err) &
    PID=$!
    t0=$(now)
    while ! all_caught_up "$mode"; do
        if ! kill -0 "$PID" 2>/dev/null; then
            echo "the filling run ended early:" >&2; cat "$dir/fill.err" >&2; exit 1
        fi
        if (( $(echo "$(now) - $t0 > 1800" | bc) )); then
            echo "not caught up within 30 min" >&2; exit 1
        fi
        sleep 0.2
    done
    # Events in the log: all of them.
    local in_log
    in_log=$(metric lungfish_log_end_offset)
    kill -9 "$PID"; wait "$PID" 2>/dev/null || true
    PID=""
    echo "$in_log"
}

# restart DIR: the bounded run; prints "seconds restored_at keys elapsed".
restart() {
    local dir=$1 t0 t1
    t0=$(now)
    (cd "$dir" && LUNGFISH_LOG=info NO_COLOR=1 exec "$LF" run --quiet bounded.toml >stdout.txt 2>restart.err) &
    PID=$!
    # Timestamp the "restored" line as it appears.
    local restored_at="-"
    while kill -0 "$PID" 2>/dev/null; do
        if [ "$restored_at" = "-" ] && grep -q "restored open windows" "$dir/restart.err" 2>/dev/null; then
            restored_at=$(printf '%.2f' "$(echo "$(now) - $t0" | bc)")
        fi
        sleep 0.01
    done
    wait "$PID" || { echo "the restart failed:" >&2; cat "$dir/restart.err" >&2; exit 1; }
    PID=""
    t1=$(now)
    local line keys="-" elapsed="-"
    line=$(sed 's/\x1b\[[0-9;]*m//g' "$dir/restart.err" | grep "restored open windows" || true)
    if [ -n "$line" ]; then
        keys=$(echo "$line" | grep -o 'keys=[0-9]*' | cut -d= -f2)
        elapsed=$(echo "$line" | grep -o 'elapsed=[^ ]*' | cut -d= -f2)
    fi
    echo "restart summary: $(grep -E '^ +(windows out|events/s)|complete' "$dir/stdout.txt" | tr -s ' ' | tr '\n' ';')" >&2
    rm -f "$dir/stdout.txt"
    echo "$(printf '%.2f' "$(echo "$t1 - $t0" | bc)") $restored_at $keys $elapsed"
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A TIMES RESTORED DETAIL
for run in $(seq "$RUNS"); do
    for mode in state replay; do
        interval=5s; [ "$mode" = replay ] && interval=0s
        dir="$WORK/$mode-$run"; mkdir -p "$dir"
        HTTP_PORT=$(free_port); METRICS_PORT=$(free_port)
        pipeline "$dir/fill.toml" "$interval" yes
        pipeline "$dir/bounded.toml" "$interval" no
        in_log=$(fill "$dir" "$mode")
        read -r secs restored_at keys elapsed < <(restart "$dir")
        [ -n "${secs:-}" ] || exit 1
        echo "run $run, $mode: $in_log events in the log; restart to caught up ${secs} s; restored line at ${restored_at} s (keys=$keys elapsed=$elapsed)" >&2
        TIMES[$mode]+="$secs "
        RESTORED[$mode]+="$restored_at "
        DETAIL[$mode]+="${secs} s, "
        rm -rf "$dir"
    done
done

echo
echo "Restart with ~$KEYS open keys ($COUNT events, 1-hour tumbling window, 2 partitions), median of $RUNS:"
echo "\`scripts/bench_restart.sh $RUNS $KEYS $COUNT\` ($(nproc) cores, $LF)"
echo
echo "| mode | restart to caught up (median) | \"restored\" line after start (median) | runs |"
echo "|---|---|---|---|"
for mode in state replay; do
    label="state checkpoints (checkpoint_interval = \"5s\")"
    [ "$mode" = replay ] && label="replay (checkpoint_interval = \"0s\")"
    t=$(echo "${TIMES[$mode]}" | tr ' ' '\n' | grep . | median)
    r="-"
    if [ "$mode" = state ]; then
        r="$(echo "${RESTORED[$mode]}" | tr ' ' '\n' | grep -v '^-$' | grep . | median) s"
    fi
    echo "| $label | ${t} s | $r | ${DETAIL[$mode]} |"
done
