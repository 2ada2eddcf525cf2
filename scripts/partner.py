#!/usr/bin/env python3
"""A stand-in "partner" lookup service for scripts/bench_resilience.sh (Python 3 stdlib only).

    GET  /lookup?key=K             -> {"weight": len(K)}
    POST /lookup {"keys": [...]}   -> {"K1": {"weight": len(K1)}, "K2": {...}, ...}
    GET  /health                   -> {"ok": true} at once (no latency)

Every /lookup answer waits --latency-ms first (one thread per connection, so concurrent
calls wait in parallel). len(K) is the key's length in UTF-8 bytes, as the Rust test
partner computes it. Logging is off; the process stops on SIGINT or SIGTERM.

Usage: scripts/partner.py --port 18099 --latency-ms 800
"""

import argparse
import json
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def weight(key):
    return {"weight": len(key.encode("utf-8"))}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the enrichment client reuses connections
    latency = 0.0

    def log_message(self, *args):  # quiet
        pass

    def answer(self, status, body):
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/health":
            return self.answer(200, {"ok": True})
        if url.path != "/lookup":
            return self.answer(404, {"error": "not found"})
        keys = parse_qs(url.query).get("key")
        if not keys:
            return self.answer(400, {"error": "missing key"})
        time.sleep(self.latency)
        self.answer(200, weight(keys[0]))

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if urlsplit(self.path).path != "/lookup":
            return self.answer(404, {"error": "not found"})
        try:
            keys = json.loads(raw)["keys"]
            if not isinstance(keys, list):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return self.answer(400, {"error": 'expected {"keys": [...]}'})
        time.sleep(self.latency)
        self.answer(200, {k: weight(k) for k in keys if isinstance(k, str)})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--latency-ms", type=float, default=0.0)
    args = p.parse_args()
    Handler.latency = args.latency_ms / 1000.0
    server = Server((args.host, args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever(poll_interval=0.1)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
