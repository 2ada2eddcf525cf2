#!/usr/bin/env bash
# Resilience benchmark: what faults cost, side by side in one run on this machine
# (medians of BENCH_RUNS runs, the cases interleaved within each run):
#   a. no faults: a generator (5,000,000 events, 100,000 keys Zipf, disorder 2 s, seed 42)
#      -> the log (4 partitions, fsync every 10ms) -> 1 s tumbling windows (count,
#      sum(value), mean(value)) -> SQLite. Events/s and peak memory from the run summary.
#   b. 10% failing: the same plus a filter that dead-letters every event with value >= 900
#      (the generator's value is uniform in [0, 1000)). Events/s, its ratio to (a) (target
#      >= 0.8) and the dead-letter entries of stage operator:sane.
#   c. a partner API answering after 800 ms (scripts/partner.py), through an `enrich`
#      operator (POST, batches of 500 keys), cache on (100,000 keys for 10 min) and off
#      (cache_size 1, cache_ttl 1ms), on 1,000,000 events over 10,000 keys; with the same
#      pipeline without enrichment as the baseline. Events/s and the share of events
#      enriched (an extra sum(enriched) aggregate over the SQLite rows).
#   d. a 30 s sink stall at 20x input: an HTTP source, SQLite sink (write_timeout 1s);
#      `lungfish load` sends 500,000 events/s (20x a 25,000/s base) for 35 s with 16
#      requests in flight, while another connection holds BEGIN EXCLUSIVE on the SQLite file
#      for 30 s (from 2 s in). VmRSS of the pipeline is sampled every 200 ms from /proc.
#      Events acknowledged, achieved rate, peak RSS, and at the end of the stall the log's
#      size on disk and the events waiting in it (log end - consumer offset). After the
#      release: how long until the sink writes again and the backlog is read; then the
#      pipeline is stopped with SIGINT and must exit 0.
# Everything runs in a temporary directory (deleted at the end) on free loopback ports,
# with a copy of the release binary (so a concurrent rebuild cannot change it mid-run).
# Takes about 2.5 min per run on 2 cores (so ~8 min with the default 3 runs).
# Usage: scripts/bench_resilience.sh
#   BENCH_RUNS=3     runs of each case (medians are reported)
#   BENCH_ENRICH=0   skip case (c) (e.g. a build without the enrichment operator)
#   BENCH_BUILD=0    do not run `cargo build` first (use target/release/lungfish as is)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${BENCH_RUNS:-3}"
ENRICH="${BENCH_ENRICH:-1}"
LATENCY_MS=800
STALL_S=30
LOAD_RATE=500000
LOAD_S=35

[ "${BENCH_BUILD:-1}" = 0 ] || cargo build --release -q -p lungfish-cli
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    local p
    for p in ${PIDS[@]+"${PIDS[@]}"}; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.3
    for p in ${PIDS[@]+"${PIDS[@]}"}; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cp target/release/lungfish "$WORK/lungfish"
LF="$WORK/lungfish"
RES="$WORK/results"   # one file per case and quantity, one value a line
mkdir -p "$RES"

# Small helpers (Python 3 stdlib), written to the temporary directory.
cat >"$WORK/h.py" <<'PY'
import os, socket, sqlite3, statistics, sys, time, urllib.request

def ports(n):
    socks = [socket.socket() for _ in range(int(n))]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    print(" ".join(str(s.getsockname()[1]) for s in socks))

def metric_sum(url, name):
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return sum(float(l.split()[-1]) for l in text.splitlines()
               if l.startswith(name + "{") or l.startswith(name + " "))

def disk_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total

def rss(pid, out):
    # VmRSS every 200 ms until the process is gone; the samples and the last VmHWM.
    peak = hwm = 0
    with open(out + ".samples", "w") as log:
        while True:
            try:
                with open(f"/proc/{pid}/status") as f:
                    status = dict(l.split(":", 1) for l in f if ":" in l)
            except (FileNotFoundError, ProcessLookupError):
                break
            if "VmRSS" not in status:  # a zombie
                break
            kib = int(status["VmRSS"].split()[0])
            hwm = int(status["VmHWM"].split()[0])
            peak = max(peak, kib)
            log.write(f"{time.time():.1f} {kib}\n")
            time.sleep(0.2)
    with open(out, "w") as f:
        f.write(f"{peak} {hwm}\n")

def backlog(metrics):
    # Events in the log the consumer has not read: log end minus consumer position (not
    # lungfish_consumer_lag, which trails to the committed offset: the last windows stay
    # open after the load stops, so it never reaches 0 here).
    return int(metric_sum(metrics, "lungfish_log_end_offset")
               - metric_sum(metrics, "lungfish_consumer_offset"))

def lock(db, delay, seconds, metrics, logdir, timeout):
    # Hold BEGIN EXCLUSIVE for `seconds` (from `delay` in), note the backlog just before
    # letting go; then watch until the sink's breaker is closed and it has written again,
    # and the consumer has read the whole log. Prints: seconds held, backlog (events),
    # log bytes on disk, and the seconds after the release until the sink wrote again and
    # until the backlog was gone ("timeout" if not within `timeout` seconds).
    time.sleep(float(delay))
    c = sqlite3.connect(db, timeout=60, isolation_level=None)
    c.execute("BEGIN EXCLUSIVE")
    t0 = time.time()
    time.sleep(float(seconds))
    lag = backlog(metrics)
    size = disk_bytes(logdir)
    rows0 = metric_sum(metrics, "lungfish_sink_rows_total")
    held = time.time() - t0
    c.execute("COMMIT")
    c.close()
    since = time.time()
    recovered = drained = "timeout"
    while time.time() < since + float(timeout):
        time.sleep(0.1)
        try:
            rows = metric_sum(metrics, "lungfish_sink_rows_total")
            closed = metric_sum(metrics, "lungfish_breaker_state") == 0
            left = backlog(metrics)
        except OSError:
            continue
        now = time.time()
        if recovered == "timeout" and closed and rows > rows0:
            recovered = f"{now - since:.1f}"
        if recovered != "timeout" and left <= 0:
            drained = f"{now - since:.1f}"
            break
    print(f"{held:.1f} {lag} {size} {recovered} {drained}")

def enriched(db):
    c = sqlite3.connect(db)
    ev, en, rows, full = c.execute(
        "SELECT sum(count), sum(sum_enriched), count(*), sum(min_enriched = 1) FROM windows"
    ).fetchone()
    print(f"{100 * en / ev:.1f} {100 * full / rows:.1f}")

def spread(path):
    values = [float(l) for l in open(path) if l.strip()]
    print(f"{min(values):,.0f}-{max(values):,.0f}")

def median(path, digits="0"):
    values = [float(l) for l in open(path) if l.strip()]
    m = statistics.median(values)
    print(f"{m:,.{int(digits)}f}")

globals()[sys.argv[1]](*sys.argv[2:])
PY
h() { python3 "$WORK/h.py" "$@"; }
num() { echo "$1" | sed ':a;s/\B[0-9]\{3\}\>/,&/;ta'; }  # 1234567 -> 1,234,567
forget() {  # drop a finished process from PIDS, so the exit trap never signals a reused id
    local keep=() p
    for p in ${PIDS[@]+"${PIDS[@]}"}; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=(${keep[@]+"${keep[@]}"})
}
rec() { echo "$2" >>"$RES/$1"; }                       # rec FILE VALUE
med() { if [ -s "$RES/$1" ]; then h median "$RES/$1" "${2:-0}"; else echo "n/a"; fi; }

# A generator pipeline: gen_toml FILE NAME COUNT KEYS AGGREGATES [OPERATORS...]
gen_toml() {
    local file="$1" name="$2" count="$3" keys="$4" aggs="$5"
    shift 5
    cat >"$file" <<EOF
name = "$name"
data_dir = "$WORK/$name/data"

[sources.gen]
type = "generator"
count = $count
keys = $keys
distribution = "zipf"
disorder = "2s"
events_per_second = 100_000
seed = 42

[log]
partitions = 4
fsync = "every 10ms"

$(printf '%s\n' "$@")

[pipeline]
key = "user"
time = "ts"
out_of_orderness = "2s"
window = { type = "tumbling", size = "1s" }
aggregates = [$aggs]

[sinks.results]
type = "sqlite"
path = "$WORK/$name/out.db"
table = "windows"
EOF
}

# Runs a generator pipeline from scratch; records events/s and peak memory (MiB) under CASE.
# Returns 1 (after printing its error) if the run fails.
run_gen() {
    local case="$1" name="$2" rc=0
    rm -rf "${WORK:?}/$name/data" "$WORK/$name"/out.db*
    timeout -k 10 900 "$LF" run --quiet "$WORK/$name.toml" >"$WORK/$name/summary.txt" \
        2>"$WORK/$name/stderr.txt" || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "   $case: lungfish run exited $rc:" >&2
        sed 's/^/     /' "$WORK/$name/stderr.txt" "$WORK/$name/summary.txt" >&2
        return 1
    fi
    local eps mem
    eps="$(awk '/^ *events\/s/ {gsub(",", "", $2); print $2}' "$WORK/$name/summary.txt")"
    mem="$(awk '/^ *peak memory/ {v = $3; if ($4 == "GiB") v *= 1024; if ($4 == "KiB") v /= 1024; print v}' \
        "$WORK/$name/summary.txt")"
    rec "$case.eps" "$eps"
    rec "$case.mem" "$mem"
    printf '   %-14s %12s events/s  peak %s MiB' "$case" "$(num "$eps")" "$mem"
}

AGGS='"count", "sum(value)", "mean(value)"'
mkdir -p "$WORK/nofaults" "$WORK/fail10" "$WORK/cbase" "$WORK/cache_on" "$WORK/cache_off" "$WORK/stall"
gen_toml "$WORK/nofaults.toml" nofaults 5_000_000 100_000 "$AGGS"
gen_toml "$WORK/fail10.toml" fail10 5_000_000 100_000 "$AGGS" \
    '[operators.sane]' 'type = "filter"' 'condition = "value < 900"' 'otherwise = "dead_letter"'
gen_toml "$WORK/cbase.toml" cbase 1_000_000 10_000 "$AGGS"

if [ "$ENRICH" != 0 ]; then
    PARTNER_PORT="$(h ports 1)"
    python3 scripts/partner.py --port "$PARTNER_PORT" --latency-ms "$LATENCY_MS" &
    PIDS+=($!)
    for _ in $(seq 50); do curl -sf "127.0.0.1:$PARTNER_PORT/health" >/dev/null && break; sleep 0.1; done
    curl -sf "127.0.0.1:$PARTNER_PORT/health" >/dev/null || { echo "partner did not start" >&2; exit 1; }
    enrich_op() {  # enrich_op CACHE_SIZE CACHE_TTL
        printf '%s\n' '[operators.lookup]' 'type = "enrich"' \
            "url = \"http://127.0.0.1:$PARTNER_PORT/lookup\"" 'method = "post"' \
            'fields = ["weight"]' 'flag = "enriched"' 'batch_keys = 500' 'timeout = "2s"' \
            'slow_call = "1500ms"' "cache_size = $1" "cache_ttl = \"$2\"" \
            'max_concurrency = 64' 'on_unavailable = "pass"'
    }
    EAGGS="$AGGS, \"sum(weight)\", \"min(enriched)\", \"sum(enriched)\""
    gen_toml "$WORK/cache_on.toml" cache_on 1_000_000 10_000 "$EAGGS" "$(enrich_op 100000 10m)"
    gen_toml "$WORK/cache_off.toml" cache_off 1_000_000 10_000 "$EAGGS" "$(enrich_op 1 1ms)"
fi
ENRICH_NOTE=""

# Case (d): one stall run; records under stall.*.
STALL_FAILED=0
run_stall() {
    local d="$WORK/stall" http metrics pid load lock sampler rc=0
    read -r http metrics <<<"$(h ports 2)"
    rm -rf "$d/data" "$d"/out.db* "$d"/*.txt "$d"/*.json "$d"/rss*
    cat >"$d/stall.toml" <<EOF
name = "stall"
data_dir = "$d/data"

[sources.api]
type = "http"
address = "127.0.0.1:$http"
max_body_size = "16MiB"
max_connections = 1024
max_inflight_bytes = "256MiB"
ack_timeout = "10s"

[log]
partitions = 4
fsync = "every 10ms"
max_size = "4GiB"

[pipeline]
key = "user"
time = "ts"
out_of_orderness = "2s"
window = { type = "tumbling", size = "1s" }
aggregates = [$AGGS]

[sinks.results]
type = "sqlite"
path = "$d/out.db"
table = "windows"
write_timeout = "1s"

[metrics]
address = "127.0.0.1:$metrics"
EOF
    "$LF" run --quiet "$d/stall.toml" >"$d/summary.txt" 2>"$d/stderr.txt" &
    pid=$!
    PIDS+=("$pid")
    # Up once the metrics endpoint answers /health and the source itself /ready (the
    # metrics endpoint can be up before the source listens).
    up() { curl -sf "127.0.0.1:$metrics/health" >/dev/null && curl -sf "127.0.0.1:$http/ready" >/dev/null; }
    for _ in $(seq 100); do
        up && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if ! up; then
        echo "stall pipeline did not start" >&2; cat "$d/stderr.txt" >&2; exit 1
    fi
    h rss "$pid" "$d/rss" &
    sampler=$!
    PIDS+=("$sampler")
    "$LF" load "http://127.0.0.1:$http/v1/events" --rate "$LOAD_RATE" --duration "${LOAD_S}s" \
        --concurrency 16 --no-progress --json-report "$d/load.json" >"$d/load.txt" 2>&1 &
    load=$!
    PIDS+=("$load")
    h lock "$d/out.db" 2 "$STALL_S" "http://127.0.0.1:$metrics/metrics" "$d/data/log" 120 \
        >"$d/lock.txt" &
    lock=$!
    PIDS+=("$lock")
    wait "$load" || true   # refused or failed requests show in its report
    forget "$load"
    [ -s "$d/load.json" ] || { echo "lungfish load failed:" >&2; cat "$d/load.txt" >&2; exit 1; }
    wait "$lock" || { echo "the lock holder failed" >&2; exit 1; }
    forget "$lock"
    local held lag logbytes recovered drained
    read -r held lag logbytes recovered drained <"$d/lock.txt"
    kill -INT "$pid"
    wait "$pid" || rc=$?
    forget "$pid"
    wait "$sampler" || true
    forget "$sampler"
    local peak hwm acked sent eps p99 answers
    read -r peak hwm <"$d/rss"
    read -r acked sent eps p99 answers < <(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
answers = ",".join(f"{k}:{v}" for k, v in sorted(r["responses"].items()))
print(r["accepted"], r["events_sent"], round(r["events_per_s"]), r["latency_ms"]["p99"], answers or "none")' "$d/load.json")
    [ "$acked" = "$sent" ] || echo "   stall run: $((sent - acked)) events not acknowledged; answers $answers; $(grep -E "refused|failed" "$d/load.txt" | tr -s ' ' | paste -sd ';')"
    rec stall.eps "$eps"
    rec stall.peak "$(awk -v k="$peak" 'BEGIN {printf "%.1f", k / 1024}')"
    rec stall.hwm "$(awk -v k="$hwm" 'BEGIN {printf "%.1f", k / 1024}')"
    rec stall.acked "$acked"
    rec stall.sent "$sent"
    rec stall.p99 "$p99"
    rec stall.lag "$lag"
    rec stall.held "$held"
    rec stall.logmib "$(awk -v b="$logbytes" 'BEGIN {printf "%.0f", b / 1048576}')"
    [ "$recovered" = timeout ] || rec stall.recovered_s "$recovered"
    [ "$drained" = timeout ] || rec stall.drained_s "$drained"
    rec stall.rc "$rc"
    [ "$rc" -eq 0 ] || { STALL_FAILED=1; echo "   stall run exited $rc:" >&2; tail -n 5 "$d/stderr.txt" >&2; }
    printf '   %-14s %12s events/s  acked %s of %s  peak RSS %s MiB' \
        stall "$(num "$eps")" "$(num "$acked")" "$(num "$sent")" "$(tail -n 1 "$RES/stall.peak")"
    printf '  at the end of the stall: log %s MiB, %s events unread' \
        "$(tail -n 1 "$RES/stall.logmib")" "$(num "$lag")"
    printf '  after it: sink writing in %s s, log drained in %s s  exit %s\n' "$recovered" "$drained" "$rc"
    rm -rf "$d/data"
}

START=$SECONDS
LOAD0="$(cut -d' ' -f1-3 /proc/loadavg)"   # other work on the machine skews every number
for i in $(seq "$RUNS"); do
    echo "== run $i of $RUNS"
    run_gen nofaults nofaults || exit 1
    echo
    rm -rf "$WORK/nofaults/data"
    run_gen fail10 fail10 || exit 1
    dlq="$("$LF" dlq list "$WORK/fail10.toml" --stage operator:sane --limit 0 2>&1 >/dev/null \
        | sed -nE 's/^([0-9,]+) matching.*/\1/p' | tr -d ,)"
    rec fail10.dlq "${dlq:-0}"
    echo "  dlq $(num "${dlq:-0}")"
    rm -rf "$WORK/fail10/data"
    if [ "$ENRICH" != 0 ]; then
        run_gen cbase cbase || exit 1
        echo
        for c in cache_on cache_off; do
            if run_gen "$c" "$c"; then
                read -r share full <<<"$(h enriched "$WORK/$c/out.db")"
                rec "$c.share" "$share"
                rec "$c.full" "$full"
                echo "  enriched $share% of events, $full% of windows fully"
            elif grep -qiE "enrich.*(not available|no enrichment)" "$WORK/$c/stderr.txt"; then
                ENRICH=0
                ENRICH_NOTE="skipped: enrichment is not available in this build"
                echo "   (c) skipped: enrichment is not available in this build" >&2
                break
            else
                exit 1
            fi
            rm -rf "${WORK:?}/$c/data"
        done
    fi
    run_stall
done
ELAPSED=$((SECONDS - START))

# The table.
ratio() { python3 -c "import sys; a, b = (float(x.replace(',', '')) for x in sys.argv[1:]); print(f'{a / b:.2f}')" "$1" "$2"; }
A="$(med nofaults.eps)"
B="$(med fail10.eps)"
RB="$(ratio "$B" "$A")"
VERDICT="$(python3 -c "import sys; print('meets' if float(sys.argv[1]) >= 0.8 else 'BELOW')" "$RB")"
echo
echo "== medians of $RUNS run(s), $ELAPSED s of runs; $(nproc) cores; load average at the start $LOAD0, at the end $(cut -d' ' -f1-3 /proc/loadavg); lungfish $("$LF" --version | awk '{print $2}')"
echo
echo "| case | events/s | vs no faults | peak RSS | notes |"
echo "|---|---:|---:|---:|---|"
echo "| (a) no faults: 5M events, 100k keys Zipf | $A | 1.00 | $(med nofaults.mem) MiB | runs $(h spread "$RES/nofaults.eps") events/s; generator -> log (4 partitions, fsync every 10ms) -> 1 s windows -> SQLite |"
echo "| (b) 10% failing: filter \`value < 900\`, otherwise dead_letter | $B | $RB | $(med fail10.mem) MiB | runs $(h spread "$RES/fail10.eps") events/s; target >= 0.8: $VERDICT; DLQ entries (operator:sane): $(med fail10.dlq) of 5,000,000 |"
if [ -s "$RES/cache_on.eps" ]; then
    CB="$(med cbase.eps)"
    CON="$(med cache_on.eps)"
    COFF="$(med cache_off.eps)"
    echo "| (c) baseline: 1M events, 10k keys, no enrichment | $CB | - | $(med cbase.mem) MiB | runs $(h spread "$RES/cbase.eps") events/s; the reference for the two rows below |"
    echo "| (c) partner at ${LATENCY_MS} ms, cache on (100k keys, 10m) | $CON | $(ratio "$CON" "$CB") of (c) baseline | $(med cache_on.mem) MiB | enriched: $(med cache_on.share 1)% of events, $(med cache_on.full 1)% of windows fully |"
    echo "| (c) partner at ${LATENCY_MS} ms, cache off (size 1, ttl 1ms) | $COFF | $(ratio "$COFF" "$CB") of (c) baseline | $(med cache_off.mem) MiB | enriched: $(med cache_off.share 1)% of events, $(med cache_off.full 1)% of windows fully; cache on is $(ratio "$CON" "$COFF")x faster |"
else
    echo "| (c) partner at ${LATENCY_MS} ms, cache on / off | - | - | - | ${ENRICH_NOTE:-skipped (BENCH_ENRICH=0)} |"
fi
echo "| (d) ${STALL_S} s SQLite stall, load at $(num "$LOAD_RATE")/s (20x 25k/s) for ${LOAD_S} s | $(med stall.eps) (achieved load) | - | $(med stall.peak 1) MiB | acked $(med stall.acked) of $(med stall.sent) sent (ack p99 $(med stall.p99 1) ms); at the end of the stall: log $(med stall.logmib) MiB on disk, $(med stall.lag) events unread (log end - consumer offset); after the release the sink wrote again in $(med stall.recovered_s 1) s and the backlog was read in $(med stall.drained_s 1) s; VmHWM $(med stall.hwm 1) MiB; exit status(es) $(tr '\n' ' ' <"$RES/stall.rc" | sed 's/ $//') |"
exit "$STALL_FAILED"
