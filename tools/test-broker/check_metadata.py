#!/usr/bin/env python3
"""Check that a tansu broker returns committed offset metadata.

Starts BROKER on a free loopback port with the in-memory storage engine,
creates a topic, commits offsets with metadata, and reads them back from a new
consumer in the same group, both with librdkafka's default protocol versions
(OffsetFetch v9, the `groups` form) and with old ones (v1, the `topics` form).
Exits 1 if the metadata does not round-trip (as with unpatched tansu 0.6.0).

  check_metadata.py [--broker ~/.cargo/bin/tansu-lungfish-1] [--throughput N]

--throughput N also produces and consumes N small messages and prints the rates.
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

PARTITIONS = 4
# librdkafka settings that make it use OffsetFetch v1 (the `topics` form of v0-7).
OLD_PROTOCOL = {"api.version.request": False, "broker.version.fallback": "0.9.0",
                "log_level": 3}  # (silences the deprecation warnings)


def free_port():
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in (9092, 19092, 29093):
            return port


class Broker:
    def __init__(self, binary):
        self.binary = binary
        self.port = free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.bootstrap = f"127.0.0.1:{self.port}"
        # tansu reads a .env file from its working directory: use an empty one.
        self.cwd = tempfile.TemporaryDirectory(prefix="tansu-check-")
        self.log = open(os.path.join(self.cwd.name, "broker.log"), "w+")
        env = {k: v for k, v in os.environ.items()
               if k not in ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL",
                            "STORAGE_ENGINE", "OTEL_EXPORTER_OTLP_ENDPOINT")}
        self.proc = subprocess.Popen(
            [binary, "broker", "--listener-url", self.url,
             "--advertised-listener-url", self.url,
             "--storage-engine", "memory://tansu/"],
            cwd=self.cwd.name, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited: {self.tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("broker did not listen within 30s")
                time.sleep(0.1)

    def tail(self):
        self.log.seek(0)
        return self.log.read()[-2000:]

    def create_topic(self, name):
        subprocess.run([self.binary, "topic", "create", "--broker", self.url,
                        "--partitions", str(PARTITIONS), name],
                       cwd=self.cwd.name, check=True, stdout=subprocess.DEVNULL)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        self.cwd.cleanup()


def consumer(broker, group, **extra):
    return Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                     "enable.auto.commit": False, "auto.offset.reset": "earliest",
                     **extra})


def produce(broker, topic, count, size=100):
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5,
                  "queue.buffering.max.messages": 1_000_000})
    payload = b"x" * size
    for i in range(count):
        while True:
            try:
                p.produce(topic, payload, partition=i % PARTITIONS)
                break
            except BufferError:
                p.poll(0.05)
    if p.flush(120) != 0:
        raise RuntimeError("producer did not flush")


def check_roundtrip(broker, topic, label, extra):
    """Commit (offset, metadata) per partition, read back from a new consumer."""
    group = f"check-{label}-{uuid.uuid4().hex[:8]}"
    want = {p: (3 + p, f"lungfish:{label}:{p}" if p != 3 else "") for p in range(PARTITIONS)}
    c = consumer(broker, group, **extra)
    c.commit(offsets=[TopicPartition(topic, p, off, md) for p, (off, md) in want.items()],
             asynchronous=False)
    c.close()

    c = consumer(broker, group, **extra)
    got = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=20)
    c.close()
    ok = True
    for tp in got:
        off, md = want[tp.partition]
        good = tp.error is None and tp.offset == off and (tp.metadata or "") == md
        ok &= good
        print(f"  [{label}] partition {tp.partition}: offset {tp.offset} "
              f"metadata {tp.metadata!r} (want {off} {md!r}) {'ok' if good else 'MISMATCH'}")
    return ok


def throughput(broker, topic, count):
    start = time.monotonic()
    produce(broker, topic, count)
    t_produce = time.monotonic() - start

    c = consumer(broker, f"tput-{uuid.uuid4().hex[:8]}")
    c.subscribe([topic])
    start = time.monotonic()
    seen, deadline = 0, start + 300
    while seen < count and time.monotonic() < deadline:
        for m in c.consume(10_000, timeout=1.0):
            if m.error() is None:
                seen += 1
    t_consume = time.monotonic() - start
    c.close()
    print(f"throughput: produced {count} x 100 B in {t_produce:.1f}s "
          f"({count / t_produce:,.0f} msg/s); consumed {seen} in {t_consume:.1f}s "
          f"({seen / t_consume:,.0f} msg/s, incl. group join)")
    return seen == count


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", default=os.path.expanduser("~/.cargo/bin/tansu-lungfish-1"))
    ap.add_argument("--throughput", type=int, default=0, metavar="N")
    args = ap.parse_args()

    broker = Broker(args.broker)
    try:
        topic = f"metadata-check-{uuid.uuid4().hex[:8]}"
        broker.create_topic(topic)
        produce(broker, topic, 40)
        print(f"broker {args.broker} on {broker.bootstrap}")
        ok = check_roundtrip(broker, topic, "groups-form-v9", {})
        ok &= check_roundtrip(broker, topic, "topics-form-v1", OLD_PROTOCOL)
        if args.throughput:
            tput_topic = f"tput-{uuid.uuid4().hex[:8]}"
            broker.create_topic(tput_topic)
            ok &= throughput(broker, tput_topic, args.throughput)
    except (KafkaException, RuntimeError, subprocess.CalledProcessError) as e:
        print(f"error: {e}\n--- broker log ---\n{broker.tail()}", file=sys.stderr)
        ok = False
    finally:
        broker.stop()
    print("metadata round-trip: " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
