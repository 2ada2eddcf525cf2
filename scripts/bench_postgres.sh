#!/usr/bin/env bash
# The Postgres benchmark (`lungfish bench postgres`) against a throwaway server: Debian's
# postgresql (the newest version installed), initialised in a temporary directory with its
# defaults (fsync and synchronous_commit on), started on a free loopback port, and stopped
# and deleted at the end. Runs as root (the server runs as the `postgres` user) or as an
# ordinary user.
# Usage: scripts/bench_postgres.sh [extra arguments of `lungfish bench postgres`]
#        e.g. scripts/bench_postgres.sh --runs 1 --per-row-rows 20000
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
if [ -z "$BIN" ] || [ ! -x "$BIN/pg_ctl" ]; then
    echo "Postgres is not installed: apt-get install postgresql" >&2
    exit 1
fi

# A free loopback port: ask the kernel for one.
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

D="$(mktemp -d)"
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        su postgres -s /bin/sh -c "$1"
    else
        sh -c "$1"
    fi
}
[ "$(id -u)" -ne 0 ] || chown postgres:postgres "$D"
stop() {
    as_pg "$BIN/pg_ctl -D $D/data -m fast -w stop" >/dev/null 2>&1 || true
    rm -rf "$D"
}
trap stop EXIT

cargo build --release -q -p lungfish-cli

as_pg "$BIN/initdb -D $D/data -A trust -U postgres" >"$D/initdb.log" 2>&1 \
    || { cat "$D/initdb.log" >&2; exit 1; }
as_pg "$BIN/pg_ctl -D $D/data -l $D/server.log -o '-p $PORT -k $D -c listen_addresses=127.0.0.1' -w start" \
    >/dev/null || { cat "$D/server.log" >&2; exit 1; }

echo "== $("$BIN/postgres" --version), data in $D/data, port $PORT (defaults: fsync on, synchronous_commit on)"
cargo run --release -q -p lungfish-cli -- bench postgres \
    --url "postgres://postgres@127.0.0.1:$PORT/postgres" --data-dir "$D/data" "$@"
