"""``skewscope infra up|down|status``: argparse wiring for the local services.

Usage from skewscope/cli.py::

    sub = parser.add_subparsers(dest="command")
    add_infra_commands(sub)
    args = parser.parse_args()
    return args.func(args)        # every infra command sets func; it returns an exit code

Settings come from ``skewscope.config.load_settings(args.config)``: ``--config`` of the
top-level parser if it has one, or ``skewscope infra --config FILE ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infra import services
from infra.common import InfraError, say
from skewscope.config import Settings, load_settings


def add_infra_commands(subparsers: Any) -> None:
    """Register ``infra`` with ``up``, ``down`` and ``status`` on an argparse subparsers object."""
    infra = subparsers.add_parser(
        "infra",
        help="run the local Kafka 4.x broker and Redis (no Docker needed)",
        description="Local services for development and tests: Kafka (KRaft, from Maven "
        "jars, needs Java 17+) and Redis. Existing services at KAFKA_BOOTSTRAP / REDIS_URL "
        "are used as they are.",
    )
    # SUPPRESS: never overwrite a --config parsed by the top-level parser.
    infra.add_argument(
        "--config", default=argparse.SUPPRESS, help="TOML settings file (table [skewscope])"
    )
    actions = infra.add_subparsers(dest="infra_command", required=True)
    start = actions.add_parser("up", help="start Kafka and Redis if needed, create topics")
    start.add_argument("--no-topics", action="store_true", help="do not create the topics")
    start.set_defaults(func=_cmd_up)
    stop = actions.add_parser("down", help="stop the services skewscope started")
    stop.set_defaults(func=_cmd_down)
    show = actions.add_parser(
        "status", help="versions, addresses and pids (exit 3 when a service is down)"
    )
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(func=_cmd_status)


def _settings(args: argparse.Namespace) -> Settings:
    config = getattr(args, "config", None)
    return load_settings(Path(config) if config else None)


def _cmd_up(args: argparse.Namespace) -> int:
    return _guard(lambda: services.up(_settings(args), say, topics=not args.no_topics))


def _cmd_down(args: argparse.Namespace) -> int:
    return _guard(lambda: services.down(_settings(args), say))


def _cmd_status(args: argparse.Namespace) -> int:
    """Exit code 0 when both services answer, 3 otherwise (2: bad settings)."""
    try:
        report = services.status(_settings(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for line in services.status_lines(report):
            print(line)
    return 0 if report["kafka"]["answering"] and report["redis"]["answering"] else 3


def _guard(action: Callable[[], object]) -> int:
    """Run action; InfraError or a settings error becomes one "error: ..." line and exit 2."""
    try:
        action()
    except (InfraError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m infra [--config FILE] up|down|status``."""
    parser = argparse.ArgumentParser(prog="python -m")
    add_infra_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["infra", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))
