"""The ``skewscope`` command: one entry point, one subcommand per job.

Each subcommand lives with the code it drives and registers itself through a small
``add_*_commands(subparsers)`` function, so this file stays a table of contents.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

# (module, function): each adds its subcommands; a module that is absent is skipped so a
# partial install still runs what it has.
_COMMAND_MODULES: tuple[tuple[str, str], ...] = (
    ("infra.cli", "add_infra_commands"),
    ("schemas.cli", "add_schema_commands"),
    ("producers.adapters.cli", "add_adapter_commands"),
    ("producers.sim.cli", "add_sim_commands"),
    ("streams.cli", "add_worker_commands"),
    ("sinks.cli", "add_sink_commands"),
    ("models.cli", "add_evaluate_commands"),
    ("streams.replay.cli", "add_backtest_commands"),
    ("skewscope.demo.cli", "add_demo_commands"),
    ("bench.cli", "add_bench_commands"),
    ("sinks.controller.cli", "add_closed_loop_commands"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skewscope",
        description="Skew, straggler and pathology detection for multi-node LLM inference.",
    )
    parser.add_argument("--config", help="TOML settings file (table [skewscope])")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name, func_name in _COMMAND_MODULES:
        module = importlib.import_module(module_name)
        register: Callable[[argparse._SubParsersAction], None] = getattr(module, func_name)
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"skewscope {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
