"""CLI: ``skewscope produce sim``, ``skewscope scenarios``, ``skewscope suite``.

Register with ``add_sim_commands(subparsers)`` in skewscope/cli.py's table, after the module
that creates ``produce`` (producers.adapters.cli); ``add_sim_parser(produce_subparsers)`` adds
only ``produce sim``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from producers.sim.scenario import bundled_scenarios, load_scenario, with_frame_interval


def add_sim_parser(produce_sub: argparse._SubParsersAction) -> None:
    """Add ``sim`` to the subparsers of ``produce``."""
    sim = produce_sub.add_parser(
        "sim",
        help="run the cluster simulator",
        description="Simulate a scenario and produce its topology, frames and labels to Kafka "
        "(EventProducer: lz4, batching, delivery reports, murmur2_random), or write them to "
        "an Avro capture file with --out (docs/capture-format.md).",
    )
    sim.add_argument("--scenario", required=True, help="bundled scenario name or TOML file")
    sim.add_argument(
        "--duration",
        type=float,
        default=None,
        help="simulated seconds (default: the scenario's duration_s)",
    )
    sim.add_argument(
        "--rate-scale",
        type=float,
        default=1.0,
        help="multiply the client request rate (default 1.0)",
    )
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument(
        "--frame-interval-ms",
        type=int,
        default=None,
        help="period every source's frame covers, a multiple of 100 "
        "(default: the scenario's cluster.frame_interval_ms, 200)",
    )
    sim.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write an Avro capture file instead of producing to Kafka",
    )
    sim.set_defaults(func=_produce_sim)


def add_sim_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``scenarios`` and ``suite``, and ``sim`` under ``produce`` (creating ``produce``
    when no other module registered it first)."""
    produce = sub.choices.get("produce")
    if produce is None:
        produce = sub.add_parser("produce", help="produce telemetry to Kafka")
        produce_sub = produce.add_subparsers(
            dest="produce_command", metavar="SOURCE", required=True
        )
    else:
        produce_sub = next(a for a in produce._actions if isinstance(a, argparse._SubParsersAction))
    add_sim_parser(produce_sub)

    scen = sub.add_parser("scenarios", help="list the bundled simulator scenarios")
    scen.set_defaults(func=_scenarios)

    suite = sub.add_parser(
        "suite",
        help="generate a randomized labelled fault suite",
        description="Randomized episodes per runbook condition (onsets off window boundaries, "
        "severities around the reference, overlapping faults, look-alikes). Prints the "
        "episode list; --out DIR writes suite.json and one scenario TOML per episode.",
    )
    suite.add_argument("--episodes", type=int, default=30, help="episodes per condition")
    suite.add_argument("--seed", type=int, default=0)
    suite.add_argument("--out", type=Path, default=None)
    suite.add_argument(
        "--capture",
        action="store_true",
        help="with --out: also simulate each episode into <episode>.avro",
    )
    suite.set_defaults(func=_suite)


def _produce_sim(args: argparse.Namespace) -> int:
    from producers.sim.publish import publish
    from producers.sim.simulation import Simulation
    from skewscope.config import load_settings
    from skewscope.kafka.producer import EventProducer

    scenario = load_scenario(args.scenario)
    if args.frame_interval_ms is not None:
        scenario = with_frame_interval(scenario, args.frame_interval_ms)
    duration = args.duration if args.duration is not None else scenario.duration_s
    settings = load_settings(Path(args.config) if args.config else None)
    sim = Simulation(scenario, seed=args.seed, rate_scale=args.rate_scale, topics=settings.topics)
    if args.out is not None:
        stats = publish(sim, duration, capture=args.out, topics=settings.topics)
        print(f"{args.out}: {stats.line()}")
        return 0
    producer = EventProducer(settings)
    stats = publish(sim, duration, producer=producer, topics=settings.topics)
    print(f"{settings.kafka_bootstrap}: {stats.line()}")
    return 0


def _scenarios(args: argparse.Namespace) -> int:
    for name in bundled_scenarios():
        scenario = load_scenario(name)
        faults = ", ".join(f.kind for f in scenario.faults) or "no fault"
        print(f"{name:28s} {faults:30s} {scenario.description}")
    return 0


def _suite(args: argparse.Namespace) -> int:
    from producers.sim.suite import make_suite, write_suite

    episodes = make_suite(episodes_per_condition=args.episodes, seed=args.seed)
    if args.out is None:
        json.dump([e.summary() for e in episodes], sys.stdout, indent=1)
        print()
        return 0
    path = write_suite(episodes, args.out, capture=args.capture)
    print(f"{len(episodes)} episodes -> {path}")
    return 0
