#!/usr/bin/env bash
# Kafka benchmark, side by side in one run on this machine (medians of BENCH_RUNS runs,
# the cases interleaved within each run), on a backlog of BENCH_EVENTS (10,000,000)
# JSON events over 10,000 keys (10 events per ms of event time) in a 4-partition topic
# of a local test broker:
#   floor:    an independent librdkafka consumer (Python confluent-kafka, consume() in
#             batches of 10,000) reading the whole backlog with no processing: the client
#             floor. Messages/s from the assignment to the last message.
#   source:   `lungfish run` with the Kafka source (bounded) -> 1 h tumbling windows
#             (count: 10,000 rows in all) -> a JSON-lines file: the source and the
#             engine, with next to nothing to store.
#   pipeline: 10 s tumbling windows (count, sum(value), mean(value): about a million
#             rows) -> SQLite.
# Lungfish's rate is its messages over the time from the first message to the last (the
# run summary's "kafka: ... messages/s" line), like the floor's; peak RSS from
# /usr/bin/time (%M) for every case. RSS against the backlog: the source case also runs
# on a topic with a tenth of the events.
# The broker is tools/test-broker's patched tansu (in-memory storage), started on a free
# loopback port; producing the backlog takes a while (a Python producer).
# Usage: scripts/bench_kafka.sh
#   BENCH_RUNS=3          runs of each case (medians are reported)
#   BENCH_EVENTS=10000000 events in the backlog
#   BENCH_BUILD=0         do not run `cargo build` first
#   TANSU=/path/to/broker another Kafka-compatible broker binary (tansu's command line)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${BENCH_RUNS:-3}"
EVENTS="${BENCH_EVENTS:-10000000}"
SMALL=$((EVENTS / 10))
BROKER_BIN="${TANSU:-$(command -v tansu-lungfish-3 || echo "$HOME/.cargo/bin/tansu-lungfish-3")}"
[ -x "$BROKER_BIN" ] || { echo "no test broker at $BROKER_BIN: bash tools/test-broker/build.sh" >&2; exit 1; }

[ "${BENCH_BUILD:-1}" = 0 ] || cargo build --release -q -p lungfish-cli
WORK="$(mktemp -d)"
BROKER_PID=""
cleanup() {
    [ -z "$BROKER_PID" ] || kill -KILL "$BROKER_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cp target/release/lungfish "$WORK/lungfish"
LF="$WORK/lungfish"
RES="$WORK/results"
mkdir -p "$RES"

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
BROKER="127.0.0.1:$PORT"
"$BROKER_BIN" broker --listener-url "tcp://$BROKER" --advertised-listener-url "tcp://$BROKER" \
    --storage-engine memory://tansu/ >"$WORK/broker.log" 2>&1 &
BROKER_PID=$!
for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null && break
    sleep 0.1
done
"$BROKER_BIN" topic create --broker "tcp://$BROKER" --partitions 4 big >/dev/null
"$BROKER_BIN" topic create --broker "tcp://$BROKER" --partitions 4 small >/dev/null

cat >"$WORK/produce.py" <<'PY'
import random, sys, time
from confluent_kafka import Producer
broker, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
p = Producer({"bootstrap.servers": broker, "enable.idempotence": True,
              "linger.ms": 50, "batch.size": 1 << 20, "compression.type": "none",
              "queue.buffering.max.messages": 1000000})
rng = random.Random(42)
t0 = 1_700_000_000_000
started = time.monotonic()
for i in range(n):
    key = "u%d" % rng.randrange(10_000)
    value = '{"user":"%s","ts":%d,"value":%d}' % (key, t0 + i // 10, rng.randrange(1000))
    while True:
        try:
            p.produce(topic, key=key, value=value)
            break
        except BufferError:
            p.poll(0.05)
    if i % 1000 == 0:
        p.poll(0)
left = p.flush(120)
assert left == 0, f"{left} messages not delivered"
print(f"produced {n} to {topic} in {time.monotonic() - started:.1f} s", file=sys.stderr)
PY
python3 "$WORK/produce.py" "$BROKER" big "$EVENTS"
python3 "$WORK/produce.py" "$BROKER" small "$SMALL"

pipeline() { # name topic group sink-toml aggregates window
    cat >"$WORK/$1.toml" <<EOF
name = "$1"
data_dir = "$WORK/data-$3"
[sources.k]
type = "kafka"
brokers = "$BROKER"
topics = ["$2"]
group = "$3"
bounded = true
[pipeline]
key = "user"
time = "ts"
out_of_orderness = "1s"
window = { type = "tumbling", size = "$6" }
aggregates = [$5]
$4
EOF
}

measure() { # case run topic events sink aggregates window
    local case="$1" run="$2" topic="$3" events="$4" out
    pipeline "$case" "$topic" "$case-$run" "$5" "$6" "$7"
    out="$(/usr/bin/time -f 'RSS %M' "$LF" run "$WORK/$case.toml" 2>&1)"
    echo "$out" | grep -q "complete after" || { echo "$out" >&2; exit 1; }
    local read
    read="$(echo "$out" | sed -n 's/.*kafka: \([0-9,]*\) messages read.*(\([0-9,]*\) messages\/s.*/\1 \2/p' | tr -d ,)"
    [ "${read%% *}" = "$events" ] || { echo "$case read ${read%% *} of $events" >&2; echo "$out" >&2; exit 1; }
    echo "${read##* }" >>"$RES/$case.rate"
    echo "$out" | sed -n 's/^RSS \([0-9]*\)/\1/p' >>"$RES/$case.rss"
}

for run in $(seq "$RUNS"); do
    out="$(/usr/bin/time -f 'RSS %M' python3 scripts/kafka_client.py floor --broker "$BROKER" \
        --topic big --count "$EVENTS" --batch 10000 --timeout 600 2>&1)"
    python3 - "$out" "$RES" <<'PY'
import json, sys
out, res = sys.argv[1], sys.argv[2]
line = [l for l in out.splitlines() if l.startswith("{")][-1]
f = json.loads(line)
open(res + "/floor.rate", "a").write("%d\n" % (f["messages"] / f["seconds"]))
rss = [l.split()[1] for l in out.splitlines() if l.startswith("RSS ")][-1]
open(res + "/floor.rss", "a").write(rss + "\n")
PY
    measure source "$run" big "$EVENTS" \
        "[sinks.rows]"$'\n'"type = \"file\""$'\n'"path = \"$WORK/rows-$run.jsonl\"" \
        '"count"' 1h
    measure pipeline "$run" big "$EVENTS" \
        "[sinks.db]"$'\n'"type = \"sqlite\""$'\n'"path = \"$WORK/out-$run.db\"" \
        '"count", "sum(value)", "mean(value)"' 10s
    measure small "$run" small "$SMALL" \
        "[sinks.rows]"$'\n'"type = \"file\""$'\n'"path = \"$WORK/small-$run.jsonl\"" \
        '"count"' 1h
    rm -f "$WORK"/out-*.db "$WORK"/*.jsonl
    echo "run $run done" >&2
done

python3 - "$RES" "$EVENTS" "$SMALL" <<'PY'
import statistics, sys
res, events, small = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def vals(name):
    return [float(x) for x in open(f"{res}/{name}").read().split()]
floor = statistics.median(vals("floor.rate"))
print(f"backlog: {events:,} events, 4 partitions; medians of {len(vals('floor.rate'))} runs")
print("| case | events/s | x floor | peak RSS |")
print("|---|---:|---:|---:|")
for case, label in [("floor", "client floor (confluent-kafka, no processing)"),
                    ("source", "Lungfish Kafka source -> 1 h windows -> file"),
                    ("pipeline", "Lungfish topic -> 10 s windows -> SQLite"),
                    ("small", f"source case on a {small:,}-event backlog")]:
    rate = statistics.median(vals(case + ".rate"))
    rss = statistics.median(vals(case + ".rss")) / 1024
    print(f"| {label} | {rate:,.0f} | {rate / floor:.2f} | {rss:.0f} MiB |")
for case in ["floor", "source", "pipeline", "small"]:
    print(case, "runs:", [f"{v:,.0f}" for v in vals(case + ".rate")])
PY
