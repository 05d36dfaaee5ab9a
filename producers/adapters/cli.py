"""``skewscope produce scrape``: poll real telemetry and produce skewscope frames.

Register with ``add_adapter_commands`` (adds ``produce`` with its ``scrape`` subcommand) or,
when another module already owns ``produce``, with ``add_scrape_parser(produce_subparsers)``.

Example::

    skewscope produce scrape --url http://node07:8000/metrics --format vllm \\
        --deployment llama70b-a --node node07 --replica llama70b-a-r0
    skewscope produce scrape --command "ethtool -S eth2" --format ethtool --port mlx5_2/1 \\
        --deployment llama70b-a --node node07
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from producers.adapters.common import FrameContext
from producers.adapters.nic_frame import FABRICS, PLANES
from producers.adapters.scrape import (
    FORMATS,
    NicOptions,
    ProducerSink,
    Scraper,
    converter,
    make_fetch,
)
from skewscope.config import load_settings
from skewscope.kafka.producer import EventProducer

log = logging.getLogger(__name__)


def add_scrape_parser(produce_sub: argparse._SubParsersAction) -> None:
    """Add ``scrape`` to the subparsers of ``produce``."""
    p = produce_sub.add_parser("scrape", help="poll an endpoint, file or command into frames")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", default="", help="HTTP(S) endpoint, e.g. .../metrics")
    source.add_argument("--file", default="", help="local file read on every scrape")
    source.add_argument("--command", default="", help="command whose stdout is read")
    p.add_argument("--format", required=True, choices=sorted(FORMATS), help="adapter")
    p.add_argument("--deployment", required=True, help="deployment id (the Kafka key)")
    p.add_argument("--node", required=True, help="node id of the source")
    p.add_argument("--replica", default="", help="replica id (engine formats; default: deployment)")
    p.add_argument("--clock-id", default="realtime", help="clock that stamps ts_ns")
    p.add_argument("--interval-s", type=float, default=1.0, help="seconds between scrapes")
    p.add_argument("--timeout-s", type=float, default=2.0, help="fetch timeout, seconds")
    p.add_argument("--retries", type=int, default=3, help="fetch retries per scrape")
    p.add_argument("--backoff-s", type=float, default=0.5, help="first retry delay (doubles)")
    p.add_argument("--count", type=int, default=0, help="stop after N scrapes (0: run forever)")
    p.add_argument("--port", default="", help="port id for --format ethtool, e.g. mlx5_0/1")
    p.add_argument(
        "--fabric", default="roce", choices=FABRICS, help="link layer when the text does not say"
    )
    p.add_argument("--plane", default="east_west", choices=PLANES, help="traffic plane")
    p.add_argument(
        "--max-num-seqs",
        type=int,
        default=-1,
        help="engine formats: the engine's configured max running sequences, reported as "
        "batch_capacity when the endpoint does not export it (vLLM does not)",
    )
    p.set_defaults(func=run_scrape)


def add_adapter_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``produce`` (with ``scrape``) to the top-level subcommands."""
    produce = sub.add_parser("produce", help="produce telemetry frames to Kafka")
    produce_sub = produce.add_subparsers(dest="produce_command", metavar="SOURCE", required=True)
    add_scrape_parser(produce_sub)


def run_scrape(args: argparse.Namespace) -> int:
    """Handler: 0 when at least one scrape succeeded (or the loop was stopped), else 1."""
    settings = load_settings(Path(args.config) if getattr(args, "config", None) else None)
    fetch = make_fetch(args.url, args.file, args.command, timeout_s=args.timeout_s)
    ctx = FrameContext(
        args.deployment,
        args.node,
        clock_id=args.clock_id,
        replica=args.replica,
        batch_capacity=args.max_num_seqs,
    )
    producer = EventProducer(settings)
    scraper = Scraper(
        fetch,
        converter(args.format),
        ProducerSink(producer, settings.topics),
        ctx,
        nic=NicOptions(port=args.port, fabric=args.fabric, plane=args.plane),
        interval_s=args.interval_s,
        retries=args.retries,
        backoff_s=args.backoff_s,
    )
    try:
        stats = scraper.run(max_scrapes=args.count or None)
    except KeyboardInterrupt:
        scraper.stop.set()
        stats = scraper.stats
    finally:
        producer.flush()
    log.info(
        "scrapes ok=%d failed=%d frames=%d skipped_lines=%d last_error=%s",
        stats.scrapes_ok,
        stats.scrapes_failed,
        stats.frames_sent,
        stats.skipped_lines,
        stats.last_error or "-",
    )
    return 0 if stats.scrapes_ok or not stats.scrapes_failed else 1
