"""``skewscope sink redis`` runs the Redis sink; ``skewscope verdicts show|watch`` reads Redis."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from sinks.client import SchedulerClient
from sinks.config import SinkConfig, load_sink_config
from sinks.connection import connect, redacted_url
from sinks.metrics import start_metrics_server
from sinks.redis_sink import RedisSink
from skewscope.config import Settings, load_settings

log = logging.getLogger(__name__)


def add_sink_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``sink redis`` and ``verdicts show|watch``."""
    sink = sub.add_parser("sink", help="run a verdict sink")
    sink_sub = sink.add_subparsers(dest="sink_command", metavar="SINK", required=True)
    redis_cmd = sink_sub.add_parser(
        "redis", help="fill Redis from the verdict topic (commits only what Redis acknowledged)"
    )
    redis_cmd.add_argument(
        "--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port (0: off)"
    )
    redis_cmd.set_defaults(func=_run_sink)

    verdicts = sub.add_parser("verdicts", help="read current verdicts and health from Redis")
    v_sub = verdicts.add_subparsers(dest="verdicts_command", metavar="ACTION", required=True)
    show = v_sub.add_parser("show", help="print deployments' freshness, avoid-lists, verdicts")
    show.add_argument("--json", action="store_true", help="one JSON document")
    show.set_defaults(func=_show)
    watch = v_sub.add_parser("watch", help="print changes as they happen (Ctrl-C to stop)")
    watch.add_argument("--count", type=int, default=0, help="stop after this many (0: never)")
    watch.set_defaults(func=_watch)


def _load(args: argparse.Namespace) -> tuple[Settings, SinkConfig]:
    path = Path(args.config) if getattr(args, "config", None) else None
    return load_settings(path), load_sink_config(path)


def _run_sink(args: argparse.Namespace) -> int:
    settings, config = _load(args)
    client = connect(settings.redis_url, config)
    if args.metrics_port:
        start_metrics_server(args.metrics_port)
        log.info("metrics on http://127.0.0.1:%d/metrics", args.metrics_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sink = RedisSink(settings, config, client)
    try:
        sink.run(stop)
    except KeyboardInterrupt:
        stop.set()
    finally:
        sink.close()
    log.info(
        "redis sink stopped after %d verdicts (%s)", sink.written, redacted_url(settings.redis_url)
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    settings, config = _load(args)
    with SchedulerClient(settings.redis_url, config) as client:
        if not client.connected:
            print(f"Redis at {redacted_url(settings.redis_url)} is unreachable: health unknown")
            return 1
        doc = snapshot(client)
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    for dep, info in doc["deployments"].items():
        print(f"{dep}: {info['health']} (staleness {info['staleness_s']} s, avoid {info['avoid']})")
    for v in doc["verdicts"]:
        print(
            f"  {v['entity']:<32} {v['state']:<8} {v['condition']:<24} "
            f"sev {v['severity']:.2f} conf {v['confidence']:.2f} -> {v['directive']}"
        )
    return 0


def snapshot(client: SchedulerClient) -> dict[str, Any]:
    """Deployments (health, staleness, avoid-list) and current verdicts, JSON-ready."""
    deployments: dict[str, Any] = {}
    for dep in client.deployments():
        report = client.deployment_health(dep)
        staleness = report.staleness_ns
        deployments[dep] = {
            "health": report.health.value,
            "reason": report.reason,
            "staleness_s": None if staleness is None else round(staleness / 1e9, 3),
            "avoid": [e for e, _ in client.avoid_list(dep)],
        }
    verdicts = [v for v in (client.verdict(e) for e in client.entities()) if v is not None]
    return {"deployments": deployments, "verdicts": verdicts}


def _watch(args: argparse.Namespace) -> int:
    settings, config = _load(args)
    seen = 0
    with SchedulerClient(settings.redis_url, config) as client:
        for change in client.watch():
            state = change.verdict["state"] if change.verdict else ""
            print(
                f"{change.kind:<12} {change.deployment:<20} {change.entity:<32} "
                f"v{change.version or ''} {state}",
                flush=True,
            )
            seen += 1
            if args.count and seen >= args.count:
                break
    return 0
