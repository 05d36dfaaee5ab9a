"""Write script throughput: verdicts and heartbeats per second through ``RedisWriter``.

What one sink process can apply, with nothing else in the way (no Kafka, no client): live-like
traffic of one deployment, ``--entities`` entities refreshed in turn with their event time
advancing ``--step-ms`` per write, a heartbeat every ``--heartbeat-every`` writes, pipelined in
batches of ``--batch`` (the sink writes one pipeline per poll). With ``--stale-share`` that
share of the entities is never refreshed after its first write, so the deployment's event time
passes their expiry and the write script ends them (the catch-up case of docs/redis-layout.md).

    .venv/bin/python -m bench.sink_write --writes 20000 --out /tmp/sink_write.json

Keys go to db 13 under a fresh ``bench:<id>:`` prefix and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.common import machine_info
from sinks.config import SinkConfig
from sinks.connection import connect
from sinks.redis_writer import RedisWriter
from sinks.verdict_topic import heartbeat_record
from skewscope.config import load_settings

BENCH_DB = 13
NS_PER_MS = 1_000_000
DEPLOYMENT = "bench"


def _verdict(entity: str, version: int, seen_ns: int, ttl_ns: int) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "entity": entity,
        "entity_kind": "rank",
        "deployment": DEPLOYMENT,
        "condition": "tp-straggler",
        "state": "firing",
        "severity": 0.5,
        "confidence": 0.9,
        "root_cause": "throttled GPU",
        "directive": "drain-node",
        "directive_text": "drain the node",
        "evidence": [],
        "model_score": None,
        "sources_missing": [],
        "impact": "",
        "first_seen_ns": seen_ns,
        "last_seen_ns": seen_ns,
        "ttl_ns": ttl_ns,
        "version": version,
        "suppressed_by": None,
    }


def traffic(args: argparse.Namespace, start_ns: int) -> list[dict[str, Any]]:
    """The records to write, in order."""
    stale = round(args.entities * args.stale_share)
    records: list[dict[str, Any]] = []
    seen_ns = start_ns
    beats = 0
    for i in range(args.writes):
        seen_ns += args.step_ms * NS_PER_MS
        if args.heartbeat_every and i % args.heartbeat_every == 0:
            beats += 1
            records.append(heartbeat_record(DEPLOYMENT, seen_ns, beats, 10_000 * NS_PER_MS))
            continue
        index = i % args.entities
        if index < stale and i >= args.entities:
            index = stale + i % max(1, args.entities - stale)
        records.append(_verdict(f"{DEPLOYMENT}/e{index}", i + 1, seen_ns, args.ttl_ms * NS_PER_MS))
    return records


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=20_000)
    parser.add_argument("--entities", type=int, default=256)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--heartbeat-every", type=int, default=50)
    parser.add_argument("--step-ms", type=int, default=5, help="event time per write")
    parser.add_argument("--ttl-ms", type=int, default=30_000)
    parser.add_argument("--stale-share", type=float, default=0.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/sink_write.json"))
    args = parser.parse_args(argv)
    if args.writes < 1 or args.entities < 1 or args.batch < 1:
        parser.error("--writes, --entities and --batch must be >= 1")
    if not 0.0 <= args.stale_share < 1.0:
        parser.error("--stale-share must be in [0, 1)")
    return args


def measure(redis_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Write the traffic of ``args`` to db 13 of ``redis_url``; the figures as a dict."""
    url = urlunsplit(urlsplit(redis_url)._replace(path=f"/{BENCH_DB}"))
    config = SinkConfig(key_prefix=f"bench:{uuid.uuid4().hex[:8]}:")
    conn = connect(url, config)
    writer = RedisWriter(conn, config)
    records = traffic(args, time.time_ns())
    try:
        writer.set_capacity(DEPLOYMENT, args.entities)
        began = time.perf_counter()
        applied = 0
        for at in range(0, len(records), args.batch):
            chunk = records[at : at + args.batch]
            applied += sum(r.applied for r in writer.write_many([(r, 0) for r in chunk]))
        wall_s = time.perf_counter() - began
        current = conn.zcard(writer.layout.ranked(DEPLOYMENT))
    finally:
        keys = list(conn.scan_iter(match=f"{config.key_prefix}*"))
        if keys:
            conn.delete(*keys)
        conn.close()
    return {
        "benchmark": "sink_write",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine_info(),
        "writes": len(records),
        "applied": applied,
        "ranked_at_end": current,
        "wall_s": round(wall_s, 4),
        "writes_per_s": round(len(records) / wall_s, 1),
    }


def main() -> int:
    args = parse_args()
    result = measure(load_settings().redis_url, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
