#!/usr/bin/env python3
"""Check that a consumer group survives the death of its leader.

Starts BROKER on a free loopback port with the in-memory storage engine. Each
round creates a 4-partition topic, produces a few messages, and starts two
consumer processes, A then B, in a new group (cooperative-sticky,
session.timeout.ms=6000, manual commits), each polling in a loop and printing
its assignment. A joins first and is the group leader. Once the partitions are
split between them (or, in the `mid` rounds, as soon as B's JoinGroup names the
leader), the leader is killed with SIGKILL, and the survivor must own all 4
partitions within --timeout seconds. Exits 1 if it does not in any round (as
with tansu 0.6.0, whose group coordinator kept the dead leader as the leader of
every later generation: see README.md beside this file).

  check_group.py [--broker ~/.cargo/bin/tansu-lungfish-3] [--rounds N] [--timeout S]
                 [--kill follower]

Rounds cycle through the kill delays 0, mid, 1, 2.5 and 4 s (0: right after the
rebalance that split the partitions). --kill follower kills the other member
instead, leaving the leader alone.
"""

import argparse
import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from check_metadata import PARTITIONS, Broker, produce  # noqa: E402

ALL = set(range(PARTITIONS))
DELAYS = ["0", "mid", "1", "2.5", "4"]
# librdkafka cgrp debug line, e.g. "JoinGroup response: GenerationId 3, Protocol
# cooperative-sticky, LeaderId A-1f.. (me), my MemberId A-1f.., member metadata count 2: ..."
JOIN_RE = re.compile(r"JoinGroup response: GenerationId (-?\d+), Protocol \S*, "
                     r"LeaderId (\S*?)( \(me\))?, my MemberId (\S*?), member metadata")


# --- member process -------------------------------------------------------

def member(bootstrap, topic, group, name, lifetime):
    """Consume TOPIC in GROUP until SIGTERM (or LIFETIME s); print JSON events."""
    from confluent_kafka import Consumer, KafkaException

    def emit(**event):
        print(json.dumps({"name": name, "t": time.time(), **event}), flush=True)

    class JoinLog(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            print(msg, file=sys.stderr, flush=True)
            m = JOIN_RE.search(msg)
            if m:
                emit(event="join", generation=int(m[1]), leader=m[2], me=m[4],
                     is_leader=bool(m[3]))

    log = logging.getLogger(f"member-{name}")
    log.setLevel(logging.DEBUG)
    log.addHandler(JoinLog())
    log.propagate = False

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "client.id": name,
                  "partition.assignment.strategy": "cooperative-sticky",
                  "session.timeout.ms": 6000, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "debug": "cgrp", "logger": log})
    c.subscribe([topic])
    deadline = time.monotonic() + lifetime
    last, consumed = None, 0
    while not stop.is_set() and time.monotonic() < deadline:
        msgs = c.consume(100, timeout=0.2)
        good = [m for m in msgs if m.error() is None]
        consumed += len(good)
        if good:
            try:
                c.commit(asynchronous=True)
            except KafkaException:
                pass  # e.g. during a rebalance; the next batch commits again
        now = sorted(tp.partition for tp in c.assignment())
        if now != last:
            emit(event="assignment", partitions=now, consumed=consumed)
            last = now
    c.close()


# --- driver ---------------------------------------------------------------

class Member:
    def __init__(self, broker, topic, group, name, logdir):
        self.name = name
        self.events = queue.Queue()
        self.assignment = set()
        self.joins = []  # join events, latest last
        self.stderr_path = os.path.join(logdir, f"{group}-{name}.log")
        self.stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--member", broker.bootstrap,
             topic, group, name],
            stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                pass

    def update(self):
        while True:
            try:
                e = self.events.get_nowait()
            except queue.Empty:
                return
            if e["event"] == "assignment":
                self.assignment = set(e["partitions"])
            elif e["event"] == "join":
                self.joins.append(e)

    def is_leader(self):
        return bool(self.joins) and self.joins[-1]["is_leader"]

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()

    def group_log(self, lines=12):
        with open(self.stderr_path) as f:
            hits = [ln.rstrip() for ln in f if "JoinGroup response" in ln
                    or "SyncGroup response" in ln or "Heartbeat" in ln and "error" in ln.lower()]
        return "\n".join(f"    {self.name}: {ln[:240]}" for ln in hits[-lines:])


def wait_for(members, cond, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in members:
            m.update()
            if m.proc.poll() is not None and m.proc.returncode != -signal.SIGKILL:
                raise RuntimeError(f"member {m.name} exited with {m.proc.returncode}")
        if cond():
            return True
        time.sleep(0.05)
    for m in members:
        m.update()
    return cond()


def run_round(broker, index, delay, timeout, kill):
    topic = f"group-check-{uuid.uuid4().hex[:8]}"
    group = f"group-check-{index}-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic)
    produce(broker, topic, 40)
    a = Member(broker, topic, group, "A", broker.cwd.name)
    members = [a]
    try:
        if not wait_for(members, lambda: a.assignment == ALL, 40):
            return False, f"A alone did not get all partitions: {sorted(a.assignment)}"
        b = Member(broker, topic, group, "B", broker.cwd.name)
        members.append(b)
        if delay == "mid":
            # Kill as soon as B's JoinGroup completed, in the middle of the rebalance.
            ok = wait_for(members, lambda: bool(b.joins), 40)
            what = "B's first JoinGroup response"
        else:
            ok = wait_for(members, lambda: a.assignment and b.assignment
                          and a.assignment | b.assignment == ALL
                          and not a.assignment & b.assignment, 40)
            what = "the partitions split between A and B"
        if not ok:
            return False, f"no {what}: A {sorted(a.assignment)}, B {sorted(b.assignment)}"
        if delay != "mid":
            time.sleep(float(delay))
            wait_for(members, lambda: False, 0)
        leader = next((m for m in members if m.is_leader()), None)
        if leader is None:
            # B's view: who it was told is the leader.
            leader = a if b.joins and b.joins[-1]["leader"].startswith("A-") else b
        follower = b if leader is a else a
        victim, survivor = (leader, follower) if kill == "leader" else (follower, leader)
        victim.kill()
        killed = time.monotonic()
        ok = wait_for([survivor], lambda: survivor.assignment == ALL, timeout)
        took = time.monotonic() - killed
        detail = (f"killed {kill} {victim.name} (delay {delay}); survivor {survivor.name} "
                  f"holds {sorted(survivor.assignment)} after {took:.1f}s")
        if not ok:
            detail += "\n  survivor's last group messages:\n" + survivor.group_log()
        return ok, detail
    finally:
        for m in members:
            m.stop()


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--member":
        bootstrap, topic, group, name = sys.argv[2:6]
        member(bootstrap, topic, group, name, lifetime=180)
        return 0

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", default=os.path.expanduser("~/.cargo/bin/tansu-lungfish-3"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=20,
                    help="seconds the survivor has to own all partitions (default 20)")
    ap.add_argument("--kill", choices=["leader", "follower"], default="leader")
    args = ap.parse_args()

    broker = Broker(args.broker)
    print(f"broker {args.broker} on {broker.bootstrap}")
    failed = 0
    try:
        for i in range(args.rounds):
            delay = DELAYS[i % len(DELAYS)]
            try:
                ok, detail = run_round(broker, i, delay, args.timeout, args.kill)
            except (RuntimeError, subprocess.CalledProcessError) as e:
                ok, detail = False, f"error: {e}"
            failed += not ok
            print(f"round {i + 1}/{args.rounds}: {'ok' if ok else 'FAILED'}: {detail}",
                  flush=True)
        if broker.proc.poll() is not None:
            print(f"broker exited\n--- broker log ---\n{broker.tail()}", file=sys.stderr)
            failed += 1
    finally:
        broker.stop()
    print(f"group failover ({args.kill} killed): {args.rounds - failed} of {args.rounds} rounds ok, "
          + ("OK" if not failed else "FAILED"))
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
