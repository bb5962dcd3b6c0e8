#!/usr/bin/env python3
"""Reads a pgwarden audit topic from the beginning and checks, per session,
that `session.seq` runs 1, 2, 3... without gaps. Delivery is at-least-once:
duplicates (the same event_id again) are counted and dropped, as a SIEM
consumer should. Needs confluent-kafka (tests/requirements.txt).

    scripts/kafka-check-seq.py --brokers HOST:PORT --topic NAME [--idle SECONDS]

Prints one line per session with a gap, then a summary; exits 1 when any
session has a gap (a session still open has no gap, only an unfinished run).
"""

import argparse
import json
import sys
import time
import uuid
from collections import defaultdict

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--idle", type=float, default=3.0,
                    help="stop after this many seconds without a message (default 3)")
    ap.add_argument("--property", action="append", default=[], metavar="NAME=VALUE",
                    help="a librdkafka consumer property (security.protocol, sasl.*, ...)")
    args = ap.parse_args()

    conf = {"bootstrap.servers": args.brokers, "group.id": "pgwarden-check-%s" % uuid.uuid4(),
            "enable.auto.commit": False, "auto.offset.reset": "earliest"}
    for p in args.property:
        k, _, v = p.partition("=")
        conf[k] = v
    c = Consumer(conf)
    md = c.list_topics(args.topic, timeout=30)
    if args.topic not in md.topics or not md.topics[args.topic].partitions:
        sys.exit("no such topic: %s" % args.topic)
    c.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING)
              for p in md.topics[args.topic].partitions])

    ids = set()
    seqs = defaultdict(set)
    dups = events = gaps_reported = bad_keys = 0
    last = time.monotonic()
    while time.monotonic() - last < args.idle:
        for m in c.consume(num_messages=5000, timeout=0.5):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    continue
                sys.exit("consumer: %s" % m.error())
            last = time.monotonic()
            ev = json.loads(m.value())
            if ev["event_id"] in ids:
                dups += 1
                continue
            ids.add(ev["event_id"])
            events += 1
            if ev.get("kind") == "audit_gap":
                gaps_reported += ev.get("dropped", 0)
                continue
            sid = ev["session"]["id"]
            if m.key() is None or m.key().decode() != sid:
                bad_keys += 1
            seqs[sid].add(ev["session"]["seq"])
    c.close()

    bad = 0
    for sid, s in sorted(seqs.items()):
        missing = sorted(set(range(1, max(s) + 1)) - s)
        if missing:
            bad += 1
            print("session %s: %d event(s), missing seq %s" % (sid, len(s), missing[:20]))
    print("%d event(s), %d session(s), %d duplicate(s) dropped, %d session(s) with gaps, "
          "%d event(s) reported dropped by audit_gap, %d wrong key(s)"
          % (events, len(seqs), dups, bad, gaps_reported, bad_keys))
    sys.exit(1 if bad or bad_keys else 0)


if __name__ == "__main__":
    main()
