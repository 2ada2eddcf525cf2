#!/usr/bin/env python3
"""An independent Kafka client for lungfish's tests and benchmarks (confluent-kafka).

Install: pip install 'confluent-kafka==2.16.*'

Subcommands (all take --brokers HOST:PORT[,...] and --topic NAME):

  produce   Reads JSON lines from stdin, one message each:
              {"key": "k" | null, "value": "payload", "partition": 0}
            ("key_hex"/"value_hex" instead of "key"/"value" give raw bytes; "partition"
            is optional). Produces them with an idempotent producer (acks=all), waits for
            every delivery report and prints {"produced": N}. Exits 1 if any failed.

  consume   Reads the topic from the beginning (every partition assigned, a fresh group,
            nothing committed) until N messages (--count), --timeout seconds, or (with
            --idle S) S seconds without a new message once one came, and prints
            one JSON line per message:
              {"key": str|null, "value": str|null, "key_hex": ..., "value_hex": ...,
               "partition": P, "offset": O, "timestamp": T}
            (str fields decode UTF-8 with replacement; the *_hex fields are exact).

  offsets   Prints {"partitions": [high watermark of partition 0, 1, ...]}: how many
            messages each partition holds (from offset 0, no compaction or retention).
            Caution: tansu 0.6 (memory engine) answers the base offset of the last
            record batch + 1, too low when producers batch; count by consuming there.

  floor     A benchmark floor: consumes the topic's whole backlog with no processing, as
            fast as the client can, with consume(num_messages=--batch), and prints
              {"messages": N, "seconds": S, "bytes": B}
            (seconds: from the assignment to the last message; bytes: keys plus values).
            The backlog is --count messages if given (use it with tansu, see
            `offsets`), else the high watermarks at the start. Exits 1 if fewer came
            within --timeout.
"""

import argparse
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka import OFFSET_BEGINNING


def _bytes(obj, name):
    if obj.get(name + "_hex") is not None:
        return bytes.fromhex(obj[name + "_hex"])
    value = obj.get(name)
    if value is None:
        return None
    return value.encode("utf-8")


def produce(args):
    producer = Producer(
        {
            "bootstrap.servers": args.brokers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": int(args.timeout * 1000),
        }
    )
    failed = []
    delivered = [0]

    def report(err, _msg):
        if err is not None:
            failed.append(str(err))
        else:
            delivered[0] += 1

    sent = 0
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        obj = json.loads(line)
        kwargs = {"value": _bytes(obj, "value"), "key": _bytes(obj, "key"), "on_delivery": report}
        if obj.get("partition") is not None:
            kwargs["partition"] = int(obj["partition"])
        while True:
            try:
                producer.produce(args.topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        producer.poll(0)
    remaining = producer.flush(args.timeout)
    if failed or remaining or delivered[0] != sent:
        print(
            json.dumps({"produced": delivered[0], "failed": failed[:10], "undelivered": remaining}),
            flush=True,
        )
        sys.exit(1)
    print(json.dumps({"produced": delivered[0]}), flush=True)


def _consumer(args, **extra):
    config = {
        "bootstrap.servers": args.brokers,
        "group.id": "lungfish-test-" + uuid.uuid4().hex,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
    }
    config.update(extra)
    return Consumer(config)


def _partitions(consumer, topic, timeout):
    deadline = time.monotonic() + timeout
    while True:
        try:
            meta = consumer.list_topics(topic, timeout=max(0.5, deadline - time.monotonic()))
            t = meta.topics.get(topic)
            if t is not None and t.error is None and t.partitions:
                return sorted(t.partitions)
        except KafkaException:
            pass
        if time.monotonic() >= deadline:
            raise SystemExit(f"topic {topic!r}: no metadata within {timeout} s")
        time.sleep(0.2)


def _high_watermarks(consumer, topic, partitions, timeout):
    highs = []
    for p in partitions:
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
        highs.append(high)
    return highs


def _text(b):
    return None if b is None else b.decode("utf-8", errors="replace")


def consume(args):
    consumer = _consumer(args)
    partitions = _partitions(consumer, args.topic, args.timeout)
    consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in partitions])
    deadline = time.monotonic() + args.timeout
    last = time.monotonic()
    seen = 0
    out = sys.stdout
    while seen < args.count:
        now = time.monotonic()
        left = deadline - now
        if left <= 0 or (args.idle is not None and seen > 0 and now - last >= args.idle):
            break
        wait = min(left, 0.1 if args.idle is not None else 0.5)
        for msg in consumer.consume(num_messages=min(10000, args.count - seen), timeout=wait):
            last = time.monotonic()
            if msg.error() is not None:
                continue
            key, value = msg.key(), msg.value()
            out.write(
                json.dumps(
                    {
                        "key": _text(key),
                        "value": _text(value),
                        "key_hex": None if key is None else key.hex(),
                        "value_hex": None if value is None else value.hex(),
                        "partition": msg.partition(),
                        "offset": msg.offset(),
                        "timestamp": msg.timestamp()[1],
                    }
                )
            )
            out.write("\n")
            seen += 1
    out.flush()
    consumer.close()


def offsets(args):
    consumer = _consumer(args)
    partitions = _partitions(consumer, args.topic, args.timeout)
    highs = _high_watermarks(consumer, args.topic, partitions, args.timeout)
    print(json.dumps({"partitions": highs}), flush=True)
    consumer.close()


def floor(args):
    consumer = _consumer(args, **{"fetch.max.bytes": 64 << 20, "queued.min.messages": 1000000})
    partitions = _partitions(consumer, args.topic, args.timeout)
    if args.count is not None:
        total = args.count
    else:
        total = sum(_high_watermarks(consumer, args.topic, partitions, args.timeout))
    started = time.monotonic()
    last = started
    consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in partitions])
    deadline = started + args.timeout
    messages = 0
    size = 0
    while messages < total and time.monotonic() < deadline:
        batch = consumer.consume(num_messages=args.batch, timeout=0.1)
        if batch:
            last = time.monotonic()
        for msg in batch:
            if msg.error() is not None:
                continue
            messages += 1
            size += len(msg.value() or b"") + len(msg.key() or b"")
    seconds = last - started
    consumer.close()
    print(json.dumps({"messages": messages, "seconds": seconds, "bytes": size}), flush=True)
    if messages < total:
        sys.exit(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("produce", "consume", "offsets", "floor"):
        p = sub.add_parser(name)
        p.add_argument("--brokers", required=True)
        p.add_argument("--topic", required=True)
        p.add_argument("--timeout", type=float, default=30.0, help="seconds")
        if name == "consume":
            p.add_argument("--count", type=int, required=True)
            p.add_argument("--idle", type=float, default=None, help="seconds")
        if name == "floor":
            p.add_argument("--count", type=int, default=None)
            p.add_argument("--batch", type=int, default=10000)
    args = parser.parse_args()
    {"produce": produce, "consume": consume, "offsets": offsets, "floor": floor}[args.command](args)


if __name__ == "__main__":
    main()
