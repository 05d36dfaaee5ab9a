"""Raw ceiling: confluent-kafka consume + Avro decode + ``np.frombuffer`` of the same bytes.

What no detector on this frame format can beat on one core: every message of the pre-filled
telemetry topics is fetched (librdkafka, lz4), decoded (``AvroCodec.decode``: header,
fingerprint, fastavro) and its packed columns are turned into numpy arrays
(``schemas.columns.unpack``: length checks, ``np.frombuffer``); nothing else. Samples/s per
core = samples / CPU seconds of this process (all threads) over the read.

    taskset -c 1 .venv/bin/python -m bench.ceiling --prefix bench1234abcd. --partitions 4

Limits: assign-only consumer (no group), partitions read in whatever order librdkafka
delivers them (no event-time merge: that belongs to the detector's cost, not the ceiling).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bench.common import cpu_seconds, samples_of
from bench.prefill import prefixed_settings
from schemas.codec import AvroCodec
from schemas.columns import unpack
from skewscope.config import Settings, load_settings
from skewscope.kafka.client_config import base_config


def assigned_consumer(settings: Settings, topics: list[str]) -> tuple[Consumer, int]:
    """A group-less consumer assigned to every partition of ``topics`` from the beginning,
    with the number of messages there are to read (high minus low watermarks)."""
    conf = base_config(settings)
    conf.update(
        {
            "group.id": f"bench-nogroup-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
        }
    )
    consumer = Consumer(conf)
    parts, total = [], 0
    for topic in topics:
        for p in range(settings.telemetry_partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            total += high - low
            parts.append(TopicPartition(topic, p, OFFSET_BEGINNING))
    consumer.assign(parts)
    return consumer, total


def measure(settings: Settings, limit_messages: int = 0) -> dict[str, Any]:
    """Read every telemetry message (or ``limit_messages``) once; samples/s per CPU second."""
    consumer, total = assigned_consumer(settings, list(settings.topics.telemetry()))
    if limit_messages:
        total = min(total, limit_messages)
    codec = AvroCodec()
    messages = samples = nbytes = 0
    began_cpu, began_wall = cpu_seconds(), time.perf_counter()
    try:
        while messages < total:
            for msg in consumer.consume(1000, 1.0):
                if msg.error() is not None:
                    continue
                value = msg.value() or b""
                decoded = codec.decode(value)
                unpack(decoded.name, decoded.record)
                samples += samples_of(decoded.record)
                nbytes += len(value)
                messages += 1
            if time.perf_counter() - began_wall > 600:
                raise RuntimeError(f"ceiling read only {messages} of {total} messages in 600 s")
        cpu_s = cpu_seconds() - began_cpu
        wall_s = time.perf_counter() - began_wall
    finally:
        consumer.close()
    return {
        "benchmark": "ceiling",
        "messages": messages,
        "samples": samples,
        "bytes": nbytes,
        "cpu_s": cpu_s,
        "wall_s": wall_s,
        "samples_per_cpu_s": samples / cpu_s,
        "messages_per_cpu_s": messages / cpu_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", required=True, help="topic prefix of a pre-fill")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--limit-messages", type=int, default=0)
    args = parser.parse_args(argv)
    settings = prefixed_settings(load_settings(), args.prefix, args.partitions)
    print(json.dumps(measure(settings, args.limit_messages)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
