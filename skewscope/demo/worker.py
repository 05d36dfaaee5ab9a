"""The demo's worker process: ``skewscope worker`` plus the live health page.

Builds the same app as ``skewscope worker`` (:func:`streams.app.build_app`) and registers
:func:`streams.health_page.register_health_page` on it before the worker starts. The
registration is idempotent, so once ``build_app`` registers the page itself this entry point
changes nothing. Settings come from the environment the demo sets (topic prefix etc.)::

    python -m skewscope.demo.worker --app-id demo-1.worker --web-port 6066
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from skewscope.config import load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skewscope.demo.worker")
    parser.add_argument("--app-id", required=True, help="consumer group / app id")
    parser.add_argument("--web-port", type=int, required=True, help="health page port")
    parser.add_argument("--loglevel", default="warn", choices=["crit", "error", "warn", "info"])
    parser.add_argument("--no-page", action="store_true", help="do not add the health page")
    parser.add_argument("--config", default=None, help="TOML settings file")
    args = parser.parse_args(argv)

    from faust.worker import Worker

    from streams.app import build_app
    from streams.health_page import register_health_page

    settings = load_settings(Path(args.config) if args.config else None)
    app, pool = build_app(settings, app_id=args.app_id, web_port=args.web_port)
    if not args.no_page:
        register_health_page(app, pool, settings)
    worker = Worker(app, loglevel=args.loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
