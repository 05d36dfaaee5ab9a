"""Simulator throughput into the real broker: samples/s produced, median of N runs.

A sample is one row of any packed column group: one GPU row, one NIC port sample (all
counters of it), one collective summary row, one engine sample, one DPU flow or device row,
one request event. Each run simulates ``--seconds`` of the ``--scenario`` world and produces
every frame to fresh uuid-suffixed topics on the broker (EventProducer: lz4, batching,
delivery reports, murmur2_random), flushing at the end; elapsed time covers simulation,
encoding, producing and the final flush. The topics are deleted afterwards.

    .venv/bin/python bench/sim_throughput.py --scenario bench-large --seconds 10 --runs 5

``--frame-interval-ms 100 200`` runs each frame period in turn within every run (same seed),
so the periods are compared under the same load.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka.admin import AdminClient, NewTopic

from producers.sim import Simulation, load_scenario
from producers.sim.publish import publish
from producers.sim.scenario import validate
from skewscope.config import Topics, load_settings
from skewscope.kafka.producer import EventProducer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="bench-large")
    parser.add_argument("--seconds", type=float, default=10.0, help="simulated seconds per run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--frame-interval-ms",
        type=int,
        nargs="+",
        default=None,
        help="frame periods to compare, run after run in the same process "
        "(default: the scenario's)",
    )
    args = parser.parse_args(argv)
    base = load_settings()
    admin = AdminClient({"bootstrap.servers": base.kafka_bootstrap})
    suffix = uuid.uuid4().hex[:10]
    names = {
        f: f"bench.sim.{f}.{suffix}"
        for f in (
            "engine_requests",
            "engine_samples",
            "collectives",
            "gpu",
            "nic",
            "dpu",
            "topology",
            "labels",
        )
    }
    topics = Topics(**names)
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=args.partitions, replication_factor=-1) for n in names.values()]
    )
    for future in futures.values():
        future.result(timeout=30)
    settings = dataclasses.replace(base, topics=topics)
    scenario = load_scenario(args.scenario)
    periods = args.frame_interval_ms or [scenario.cluster.frame_interval_ms]
    rates: dict[int, list[float]] = {p: [] for p in periods}
    try:
        for run in range(args.runs):
            for period_ms in periods:  # interleaved, so drift on the machine hits each alike
                cluster = dataclasses.replace(scenario.cluster, frame_interval_ms=period_ms)
                world = dataclasses.replace(scenario, cluster=cluster)
                validate(world)
                producer = EventProducer(settings)
                sim = Simulation(world, seed=run, topics=topics)
                stats = publish(sim, args.seconds, producer=producer, topics=topics)
                rates[period_ms].append(stats.samples / stats.elapsed_s)
                print(
                    f"run {run + 1}, {period_ms} ms frames: {stats.line()}; "
                    f"delivered {producer.stats.delivered}",
                    flush=True,
                )
    finally:
        for future in admin.delete_topics(list(names.values())).values():
            future.result(timeout=30)
    for period_ms, got in rates.items():
        print(
            f"scenario {args.scenario}, {period_ms} ms frames, {args.seconds:g} simulated s per "
            f"run, {args.runs} runs: median {statistics.median(got):,.0f} samples/s "
            f"(min {min(got):,.0f}, max {max(got):,.0f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
