"""Replay throughput: the FULL pipeline over a pre-filled topic, in one process on one core.

One process does what the live path does end to end: read the telemetry history
(``streams.replay.history.HistoryReader``: librdkafka consume, per-partition merge of the
topics in broker-timestamp order), decode, windows, joins, rules, fusion
(``streams.shards.ShardPool``: one Detector per partition), produce verdicts and heartbeats to
the verdict topic (``EventProducer``: lz4, acks=all, idempotent) and write them to Redis
(``sinks.redis_writer.RedisWriter``: Lua script per change, one pipeline per batch). The
topology is loaded from its topic first. Samples/s per core = samples the detectors ingested /
CPU seconds of this process (all threads) from the first read to the last acknowledged write.

    taskset -c 1 .venv/bin/python -m bench.replay_throughput --prefix bench1234abcd.

``--in-memory`` measures the detector core alone (messages read into memory first, then
``ShardPool.process_bytes`` only): the share of the pipeline that is detection.

Limits: Redis keys go to db 13 under a fresh ``bench:<id>:`` prefix and are deleted
afterwards; the replay ends at the high watermarks seen when it starts.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.common import cpu_seconds
from bench.prefill import prefixed_settings
from models.detector import Output
from sinks.config import SinkConfig
from sinks.connection import connect
from sinks.redis_writer import RedisWriter
from skewscope.config import Settings, load_settings
from skewscope.kafka.producer import EventProducer
from streams.replay.history import HistoryReader, read_topic
from streams.shards import ShardPool

BENCH_REDIS_DB = 13
REDIS_BATCH = 500


def bench_redis_url(settings: Settings) -> str:
    """``settings.redis_url`` on the benchmarks' database (13)."""
    return urlunsplit(urlsplit(settings.redis_url)._replace(path=f"/{BENCH_REDIS_DB}"))


def load_topology(settings: Settings, pool: ShardPool) -> int:
    """Feed every topology record of the pre-fill to the pool; returns how many."""
    records = read_topic(settings, settings.topics.topology)
    for raw in records:
        pool.update_topology(pool.codec.decode(raw.value).record)
    return len(records)


class VerdictOut:
    """Verdict topic + Redis writer, batched as the worker and the sink batch them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = EventProducer(settings)
        self.config = SinkConfig(key_prefix=f"bench:{uuid.uuid4().hex[:8]}:")
        self.redis = connect(bench_redis_url(settings), self.config)
        self.writer = RedisWriter(self.redis, self.config)
        self.pending: list[tuple[dict[str, Any], int]] = []
        self.verdicts = 0

    def send(self, outputs: list[Output]) -> None:
        topic = self.settings.topics
        for out in outputs:
            target = topic.verdicts if out.schema == "Verdict" else topic.features
            self.producer.send(target, out.key, out.schema, out.record)
            if out.schema == "Verdict":
                self.pending.append((out.record, 0))
                self.verdicts += 1
        if len(self.pending) >= REDIS_BATCH:
            self.write()

    def write(self) -> None:
        if self.pending:
            self.writer.write_many(self.pending)
            self.pending = []

    def finish(self) -> None:
        self.write()
        self.producer.flush(120)

    def cleanup(self) -> None:
        keys = list(self.redis.scan_iter(match=f"{self.config.key_prefix}*"))
        if keys:
            self.redis.delete(*keys)


def measure(settings: Settings, profile_out: str = "") -> dict[str, Any]:
    """Replay every pre-filled telemetry message through the full pipeline once."""
    pool = ShardPool()
    topology = load_topology(settings, pool)
    sink = VerdictOut(settings)
    reader = HistoryReader(settings, list(settings.topics.telemetry()), None, None)
    profiler = cProfile.Profile() if profile_out else None
    messages = 0
    began_cpu, began_wall = cpu_seconds(), time.perf_counter()
    if profiler:
        profiler.enable()
    try:
        for raw in reader:
            sink.send(pool.process_bytes(raw.partition, raw.value))
            messages += 1
        sink.finish()
    finally:
        if profiler:
            profiler.disable()
        cpu_s = cpu_seconds() - began_cpu
        wall_s = time.perf_counter() - began_wall
        sink.cleanup()
    if profiler:
        profiler.dump_stats(profile_out)
    stats = [d.stats for d in pool.shards.values()]
    samples = sum(s.samples for s in stats)
    return {
        "benchmark": "replay",
        "messages": messages,
        "samples": samples,
        "topology_records": topology,
        "cpu_s": cpu_s,
        "wall_s": wall_s,
        "samples_per_cpu_s": samples / cpu_s,
        "messages_per_cpu_s": messages / cpu_s,
        "windows_closed": sum(s.windows_closed for s in stats),
        "verdicts": sink.verdicts,
        "late_frames": sum(s.late_frames for s in stats),
        "shards": len(stats),
    }


def measure_in_memory(settings: Settings) -> dict[str, Any]:
    """Detector core only: the same messages, read into memory first, then process_bytes."""
    pool = ShardPool()
    load_topology(settings, pool)
    messages = list(HistoryReader(settings, list(settings.topics.telemetry()), None, None))
    began_cpu = cpu_seconds()
    verdicts = 0
    for raw in messages:
        verdicts += len(pool.process_bytes(raw.partition, raw.value))
    cpu_s = cpu_seconds() - began_cpu
    samples = sum(d.stats.samples for d in pool.shards.values())
    return {
        "benchmark": "detector_core",
        "messages": len(messages),
        "samples": samples,
        "cpu_s": cpu_s,
        "samples_per_cpu_s": samples / cpu_s,
        "outputs": verdicts,
    }


def hot_spots(profile_path: str, top: int = 15) -> list[dict[str, Any]]:
    """The ``top`` functions by own time of a cProfile dump: file:line(function), seconds."""
    stats = pstats.Stats(profile_path)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)  # type: ignore[attr-defined]
    total = sum(v[2] for _, v in rows) or 1.0
    out = []
    for (filename, line, func), (_cc, calls, tottime, cumtime, _callers) in rows[:top]:
        short = filename.split("/work/main/")[-1].split("site-packages/")[-1]
        out.append(
            {
                "function": f"{short}:{line}({func})",
                "calls": calls,
                "own_s": round(tottime, 3),
                "own_share": round(tottime / total, 3),
                "cumulative_s": round(cumtime, 3),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", required=True, help="topic prefix of a pre-fill")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--in-memory", action="store_true", help="detector core only")
    parser.add_argument("--profile", default="", help="write a cProfile dump here")
    args = parser.parse_args(argv)
    settings = prefixed_settings(load_settings(), args.prefix, args.partitions)
    if args.in_memory:
        result = measure_in_memory(settings)
    else:
        result = measure(settings, args.profile)
        if args.profile:
            result["hot_spots"] = hot_spots(args.profile)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
