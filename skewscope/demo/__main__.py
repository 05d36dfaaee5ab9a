"""``python -m skewscope.demo [--config FILE] [options]``: the demo, without skewscope/cli.py."""

from __future__ import annotations

import argparse
import logging
import sys

from skewscope.demo.cli import add_demo_commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skewscope.demo")
    parser.add_argument("--config", help="TOML settings file (table [skewscope])")
    add_demo_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["demo", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"skewscope demo: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
