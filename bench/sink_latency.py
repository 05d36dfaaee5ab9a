"""Verdict sink benchmark: produce -> visible in a scheduler client's cache, and lookup rates.

Measures, in one run, against the configured Kafka broker and Redis (``load_settings()``):

1. latency from ``VerdictPublisher.publish`` (wall clock at the call) to the verdict being
   applied in a ``SchedulerClient``'s cache (wall clock in the client's listener thread), over
   ``--verdicts`` verdicts produced at ``--rate`` per second through a fresh compacted topic,
   the ``RedisSink`` and Redis pub/sub; p50/p90/p99/max;
2. cached lookups per second (``health()``, ``verdict()``) in one thread;
3. raw Redis ``GET`` per second of the same verdict keys from one redis-py client (one round
   trip each), beside ``redis-benchmark -t get`` with 1 and with 50 clients in the same run.

Prints one JSON document and writes it (with machine info: uname, nproc, versions) to
``--out``. Keys live under a fresh prefix on db 13 and are deleted afterwards.

Usage: ``.venv/bin/python bench/sink_latency.py [--verdicts 2000] [--rate 1000]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from confluent_kafka.admin import NewTopic

from infra.kafka_admin import admin_client
from sinks.client import SchedulerClient
from sinks.config import SinkConfig
from sinks.connection import connect
from sinks.redis_sink import RedisSink
from sinks.verdict_topic import VERDICT_TOPIC_CONFIG, VerdictPublisher, heartbeat_record
from skewscope.config import Settings, load_settings

BENCH_DB = 13
NS_PER_S = 1_000_000_000


def verdict(entity: str, version_: int, now_ns: int) -> dict[str, Any]:
    return {
        "schema_version": 1, "entity": entity, "entity_kind": "rank", "deployment": "bench",
        "condition": "tp-straggler", "state": "firing", "severity": 0.5, "confidence": 0.9,
        "root_cause": "throttled GPU", "directive": "drain-node",
        "directive_text": "drain the node", "model_score": None, "sources_missing": [],
        "evidence": [{"feature": "lateness_ns", "value": 2e5, "threshold": 5e4,
                      "comparator": ">", "source": "nccl"}],
        "impact": "", "first_seen_ns": now_ns, "last_seen_ns": now_ns,
        "ttl_ns": 600 * NS_PER_S, "version": version_, "suppressed_by": None,
    }  # fmt: skip


def machine_info(settings: Settings) -> dict[str, Any]:
    redis_server = shutil.which("redis-server")
    redis_version = (
        subprocess.run([redis_server, "--version"], capture_output=True, text=True).stdout.strip()
        if redis_server
        else "absent"
    )
    return {
        "uname": " ".join(platform.uname()),
        "nproc": os.cpu_count(),
        "python": sys.version.split()[0],
        "redis_server": redis_version,
        "kafka_version_setting": settings.kafka_version,
        "redis_py": version("redis"),
        "confluent_kafka": version("confluent-kafka"),
        "numpy": version("numpy"),
    }


def percentiles_ms(samples_ns: list[int]) -> dict[str, float]:
    arr = np.asarray(samples_ns, dtype=np.float64) / 1e6
    return {
        "count": int(arr.size),
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p90_ms": round(float(np.percentile(arr, 90)), 3),
        "p99_ms": round(float(np.percentile(arr, 99)), 3),
        "max_ms": round(float(arr.max()), 3),
    }


def measure_latency(
    settings: Settings, config: SinkConfig, topic: str, count: int, rate_per_s: float
) -> tuple[dict[str, float], SchedulerClient, list[str]]:
    stop = threading.Event()
    sink = RedisSink(settings, config, connect(settings.redis_url, config), topic=topic)
    sink_thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    sink_thread.start()
    client = SchedulerClient(settings.redis_url, config).start()
    publisher = VerdictPublisher(settings, topic=topic)
    # Warm-up: the sink joins its group and the first write loads the scripts.
    publisher.publish(heartbeat_record("bench", time.time_ns(), 1, 600 * NS_PER_S))
    publisher.flush()
    changes = client.watch(timeout_s=30)
    for change in changes:
        if change.kind == "heartbeat":
            break
    entities = [f"bench/rank{i}" for i in range(256)]
    sent_ns: dict[tuple[str, int], int] = {}
    seen_ns: dict[tuple[str, int], int] = {}

    def collect() -> None:
        for change in changes:
            if change.kind == "verdict" and change.version is not None:
                seen_ns[(change.entity, change.version)] = time.time_ns()
                if len(seen_ns) >= count:
                    return

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    interval_s = 1.0 / rate_per_s
    began = time.perf_counter()
    for i in range(count):
        entity, ver = entities[i % len(entities)], 1 + i // len(entities)
        target = began + i * interval_s
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        now_ns = time.time_ns()
        sent_ns[(entity, ver)] = now_ns
        publisher.publish(verdict(entity, ver, now_ns))
    publisher.flush()
    collector.join(timeout=60)
    stop.set()
    sink_thread.join(timeout=30)
    missing = len(sent_ns) - len(seen_ns)
    if missing:
        raise RuntimeError(f"{missing} of {count} verdicts never reached the client's cache")
    latencies = [seen_ns[k] - sent_ns[k] for k in sent_ns]
    result = percentiles_ms(latencies)
    result["offered_rate_per_s"] = rate_per_s
    return result, client, entities


def rate(fn: Any, calls: int) -> float:
    began = time.perf_counter()
    fn(calls)
    return calls / (time.perf_counter() - began)


def redis_benchmark(url: str, clients: int, requests: int) -> dict[str, Any]:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return {"error": "redis-benchmark not installed"}
    parts = urlsplit(url)
    argv = [binary, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379),
            "-t", "get", "-n", str(requests), "-c", str(clients), "--csv"]  # fmt: skip
    if parts.password:
        argv += ["-a", parts.password, "--user", parts.username or "default"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    rows = [line.split(",") for line in proc.stdout.splitlines() if line.startswith('"GET"')]
    if not rows:
        return {"error": proc.stderr.strip()[-300:]}
    return {
        "clients": clients,
        "requests": requests,
        "rps": float(rows[0][1].strip('"')),
        "p50_ms": float(rows[0][5].strip('"')),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verdicts", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=1000.0, help="verdicts per second")
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--gets", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/sink_latency.json"))
    args = parser.parse_args()

    base = load_settings()
    url = urlunsplit(urlsplit(base.redis_url)._replace(path=f"/{BENCH_DB}"))
    settings = dataclasses.replace(base, redis_url=url)
    run_id = uuid.uuid4().hex[:8]
    config = SinkConfig(key_prefix=f"bench:{run_id}:", group_id=f"bench-sink-{run_id}",
                        capacity={"bench": 256})  # fmt: skip
    topic = f"bench.verdicts.{run_id}"
    admin = admin_client(settings)
    new = NewTopic(topic, num_partitions=settings.telemetry_partitions, replication_factor=-1,
                   config=VERDICT_TOPIC_CONFIG)  # fmt: skip
    admin.create_topics([new])[topic].result(timeout=30)
    redis_conn = connect(url, config)
    try:
        latency, client, entities = measure_latency(
            settings, config, topic, args.verdicts, args.rate
        )
        with client:
            n_entities = len(entities)

            def health_calls(n: int) -> None:
                for i in range(n):
                    client.health(entities[i % n_entities])

            def verdict_calls(n: int) -> None:
                for i in range(n):
                    client.verdict(entities[i % n_entities])

            keys = [client.layout.verdict(e) for e in entities]

            def get_calls(n: int) -> None:
                for i in range(n):
                    redis_conn.get(keys[i % n_entities])

            lookups = {
                "cached_health_per_s": round(rate(health_calls, args.lookups)),
                "cached_verdict_per_s": round(rate(verdict_calls, args.lookups)),
                "raw_redis_get_per_s_one_client": round(rate(get_calls, args.gets)),
            }
        bench = {
            "redis_benchmark_get_c1": redis_benchmark(url, 1, 50_000),
            "redis_benchmark_get_c50": redis_benchmark(url, 50, 100_000),
        }
    finally:
        stale = list(redis_conn.scan_iter(match=f"{config.key_prefix}*"))
        if stale:
            redis_conn.delete(*stale)
        admin.delete_topics([topic])
    doc = {
        "benchmark": "sink_latency",
        "produced_to_client_cache": latency,
        "lookups": lookups,
        "redis_benchmark": bench,
        "path": "VerdictPublisher -> Kafka (linger.ms=5, acks=all) -> RedisSink (poll 20 ms, "
        "Lua write) -> PUBLISH -> SchedulerClient cache",
        "redis_url_db": BENCH_DB,
        "machine": machine_info(settings),
        "command": " ".join(sys.argv),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    text = json.dumps(doc, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
