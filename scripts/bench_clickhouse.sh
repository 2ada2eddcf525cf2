#!/usr/bin/env bash
# The ClickHouse benchmark (`lungfish bench clickhouse`) against a throwaway server:
# Debian's clickhouse-server (18.16), with a generated config and its data in a temporary
# directory, listening on free loopback ports, and stopped and deleted at the end.
# Usage: scripts/bench_clickhouse.sh [extra arguments of `lungfish bench clickhouse`]
#        e.g. scripts/bench_clickhouse.sh --runs 1 --per-row-rows 5000
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v clickhouse-server >/dev/null; then
    echo "ClickHouse is not installed: apt-get install clickhouse-server" >&2
    exit 1
fi

# Two free loopback ports (HTTP and native): ask the kernel for them.
read -r HTTP_PORT TCP_PORT < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')

D="$(mktemp -d)"
PID=""
stop() {
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PID" 2>/dev/null || true
    fi
    rm -rf "$D"
}
trap stop EXIT

cargo build --release -q -p lungfish-cli

mkdir -p "$D/data" "$D/tmp" "$D/user_files"
cat > "$D/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><console>1</console></logger>
  <http_port>$HTTP_PORT</http_port><tcp_port>$TCP_PORT</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>$D/data/</path><tmp_path>$D/tmp/</tmp_path><user_files_path>$D/user_files/</user_files_path>
  <users_config>/etc/clickhouse-server/users.xml</users_config>
  <default_profile>default</default_profile><default_database>default</default_database>
  <mark_cache_size>536870912</mark_cache_size>
</yandex>
XML
clickhouse-server --config-file="$D/config.xml" >"$D/server.log" 2>&1 &
PID=$!

URL="http://127.0.0.1:$HTTP_PORT"
for _ in $(seq 1 100); do
    curl -sf "$URL/?query=SELECT%201" >/dev/null 2>&1 && break
    kill -0 "$PID" 2>/dev/null || { cat "$D/server.log" >&2; exit 1; }
    sleep 0.2
done
VERSION="$(curl -sf "$URL/?query=SELECT%20version()")" || { cat "$D/server.log" >&2; exit 1; }

echo "== ClickHouse $VERSION (pid $PID), data in $D/data, HTTP port $HTTP_PORT"
cargo run --release -q -p lungfish-cli -- bench clickhouse --url "$URL" --server-pid "$PID" "$@"
