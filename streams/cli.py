"""``skewscope worker``: run the Faust worker (detector shards behind telemetry.* topics)."""

from __future__ import annotations

import argparse
from pathlib import Path

from skewscope.config import load_settings


def _worker(args: argparse.Namespace) -> int:
    from faust.worker import Worker

    from streams.app import build_app

    settings = load_settings(Path(args.config) if args.config else None)
    app, _ = build_app(settings, app_id=args.app_id, web_port=args.web_port)
    worker = Worker(app, loglevel=args.loglevel, quiet=args.quiet)
    worker.execute_from_commandline()
    return 0


def add_worker_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("worker", help="run the Faust detection worker")
    parser.add_argument("--app-id", default="skewscope-worker", help="consumer group / app id")
    parser.add_argument("--web-port", type=int, default=6066, help="status and health page port")
    parser.add_argument("--loglevel", default="warn", choices=["crit", "error", "warn", "info"])
    parser.add_argument("--quiet", action="store_true", help="no start-up banner")
    parser.set_defaults(func=_worker)
