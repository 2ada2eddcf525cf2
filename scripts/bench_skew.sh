#!/usr/bin/env bash
# Issue 8 (a): key skew. The same pipeline (file source -> log -> 1 s tumbling windows,
# count/sum/mean -> SQLite) over 10M events with 100,000 keys drawn uniformly, by Zipf's
# law with s = 1.1, and with one key carrying 50% of the events (with the hot-key first
# stage, and again with `pre_aggregate = false`). Interleaved runs,
# medians of 3, events/s from the run summary (first event in to last processed).
#
#   bash scripts/bench_skew.sh            # COUNT=10000000 RUNS=3 by default
set -euo pipefail
COUNT=${COUNT:-10000000}
RUNS=${RUNS:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q -p lungfish-cli --manifest-path "$ROOT/Cargo.toml"
BIN="$ROOT/target/release/lungfish"
WORK=$(mktemp -d /tmp/lungfish-skew.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
"$BIN" generate --count "$COUNT" --keys 100000 --uniform -o uniform.jsonl
"$BIN" generate --count "$COUNT" --keys 100000 --zipf-exponent 1.1 -o zipf.jsonl
"$BIN" generate --count "$COUNT" --keys 100000 --hot-share 0.5 -o hot.jsonl
declare -A RATES
for run in $(seq 1 "$RUNS"); do
  for case in uniform zipf hot hot-nopre; do
    rm -rf data out.db
    input=${case%-nopre}
    pre=true; [ "$case" = hot-nopre ] && pre=false
    cat > p.toml <<TOML
name = "skew"
data_dir = "data"
[sources.f]
type = "file"
paths = ["$input.jsonl"]
[log]
max_size = "8GiB"
[pipeline]
pre_aggregate = $pre
out_of_orderness = "2s"
window = { type = "tumbling", size = "1s" }
aggregates = ["count", "sum(value)", "mean(value)"]
[sinks.out]
type = "sqlite"
path = "out.db"
TOML
    rate=$("$BIN" run p.toml 2>/dev/null | awk '/events\/s/ {gsub(",", "", $2); print $2}')
    echo "run $run $case: $rate events/s" >&2
    RATES[$case]="${RATES[$case]:-} $rate"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
U=$(echo "${RATES[uniform]}" | median)
echo
echo "| keys ($COUNT events, 100,000 keys) | events/s (median of $RUNS) | x uniform |"
echo "|---|---:|---:|"
for case in uniform zipf hot hot-nopre; do
  M=$(echo "${RATES[$case]}" | median)
  label=$case; [ "$case" = zipf ] && label="Zipf s=1.1"; [ "$case" = hot ] && label="one key 50%, pre_aggregate = true"; [ "$case" = hot-nopre ] && label="one key 50% (default: no first stage)"
  echo "| $label | $M | $(awk -v m="$M" -v u="$U" 'BEGIN {printf "%.2f", m/u}') |"
done
