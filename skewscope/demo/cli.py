"""``skewscope demo``: register with ``add_demo_commands(subparsers)`` in skewscope/cli.py."""

from __future__ import annotations

import argparse
from pathlib import Path

from skewscope.demo.options import DEFAULT_WEB_PORT


def add_demo_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``demo [--duration S] [--scenario NAME] [--web-port P] [--no-page] [--in-process]``."""
    demo = sub.add_parser(
        "demo",
        help="run the live pipeline on a bundled scenario (terminal view + health page)",
        description="Start Kafka and Redis if needed, then the worker, the Redis sink and the "
        "simulator in real time, each isolated under a fresh topic prefix; show the verdicts "
        "a scheduler reads, live, and a health page; end after --duration seconds with a "
        "summary of each injected fault and whether a verdict named it. Without a broker "
        "(no Java) the same detector runs in process. docs/demo.md.",
    )
    demo.add_argument(
        "--duration",
        type=float,
        default=120.0,
        help="most seconds the demo runs once the services are up (default 120); it ends "
        "earlier when the scenario's script is over (mixed: 60 s of simulated time)",
    )
    demo.add_argument("--scenario", default="mixed", help="bundled scenario name or TOML file")
    demo.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    demo.add_argument(
        "--web-port",
        type=int,
        default=None,
        help=f"health page port (default {DEFAULT_WEB_PORT}, or a free one when it is taken)",
    )
    demo.add_argument("--no-page", action="store_true", help="do not announce the health page")
    demo.add_argument(
        "--in-process",
        action="store_true",
        help="no Kafka/Redis: run the detector in this process on the simulator",
    )
    demo.add_argument(
        "--keep", action="store_true", help="keep the run's topics and Redis keys afterwards"
    )
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from skewscope.demo.options import DemoOptions
    from skewscope.demo.orchestrator import run_demo

    if args.duration <= 0:
        raise ValueError(f"--duration must be positive, got {args.duration:g}")
    options = DemoOptions(
        duration_s=args.duration,
        scenario=args.scenario,
        seed=args.seed,
        web_port=args.web_port,
        page=not args.no_page,
        in_process=args.in_process,
        keep=args.keep,
        config=Path(args.config) if getattr(args, "config", None) else None,
    )
    return run_demo(options)
