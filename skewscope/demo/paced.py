"""Publish a simulation in real time: a frame of event time t goes out at wall time t.

The demo starts the simulation at the current wall time (``Simulation(start_ns=now)``), so
event time and wall time are the same clock: the detector's verdicts, the Redis freshness
bookkeeping and the health page all read as live. :func:`paced` sleeps until each frame's
event time has come; the simulator is faster than real time (about 10x on one core for the
default cluster), so it keeps up.

Labels (``skew.labels``) are sent as soon as the simulator opens them (``end_ns`` null),
and once more, with their end, when the run is over or stopped, so a reader that keeps the
last record per ``label_id`` sees the whole truth. Run as a process by the demo::

    python -m skewscope.demo.paced --scenario mixed --duration 60 --start-ns 1790000000000000000

Limits: when the machine cannot keep up, frames go out late (never dropped; the lag is
reported at the end); a run stopped early (SIGTERM) ends its open injected labels at the last
published event time, and a load-family label that was still open is not sent.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from producers.sim import SimFrame, Simulation, load_scenario
from producers.sim.publish import PublishStats, samples_in
from skewscope.config import Settings, Topics, load_settings
from skewscope.kafka.producer import EventProducer


def paced(
    frames: Iterable[SimFrame],
    stop: threading.Event,
    clock_ns: Callable[[], int] = time.time_ns,
) -> Iterator[SimFrame]:
    """Yield each frame once the wall clock has reached its event time; end early on ``stop``."""
    for frame in frames:
        wait_ns = frame.event_time_ns - clock_ns()
        if wait_ns > 0 and stop.wait(wait_ns / 1e9):
            return
        if stop.is_set():
            return
        yield frame


@dataclass
class PacedStats(PublishStats):
    """What a paced run published, and how late it ran behind the wall clock at worst."""

    max_behind_s: float = 0.0
    stopped_early: bool = False

    def line(self) -> str:
        behind = f", at most {self.max_behind_s:.2f} s behind real time"
        early = " (stopped early)" if self.stopped_early else ""
        return super().line() + behind + early


def publish_paced(
    sim: Simulation,
    duration_s: float,
    producer: EventProducer,
    topics: Topics,
    stop: threading.Event | None = None,
    topology: bool = True,
    clock_ns: Callable[[], int] = time.time_ns,
) -> PacedStats:
    """Send ``sim``'s topology, then its frames paced to the wall clock, then its labels."""
    stop = stop or threading.Event()
    stats = PacedStats()
    began = time.perf_counter()
    sent_labels: set[str] = set()

    def send_labels(labels: Iterable[dict[str, Any]], again: bool) -> None:
        for label in labels:
            if not again and label["label_id"] in sent_labels:
                continue
            sent_labels.add(label["label_id"])
            producer.send(topics.labels, label["deployment"], "FaultLabel", label)
            stats.labels += 1

    if topology:
        for rec in sim.topology:
            key = f"{rec['deployment']}/rank{rec['rank']}"
            producer.send(topics.topology, key, "TopologyRecord", rec)
            stats.topology += 1
        producer.flush()
    last_event_ns = sim.start_ns
    frames = sim.frames(duration_s)
    for frame in paced(frames, stop, clock_ns):
        value = producer.codec.encode(frame.schema, frame.record, topic=frame.topic)
        producer.send_raw(frame.topic, frame.key, value)
        stats.frames += 1
        stats.samples += samples_in(frame)
        stats.bytes += len(value)
        last_event_ns = frame.event_time_ns
        stats.max_behind_s = max(stats.max_behind_s, (clock_ns() - frame.event_time_ns) / 1e9)
        send_labels(sim.labels, again=False)
    if stop.is_set():
        stats.stopped_early = True
        for label in sim.labels:
            if label.get("end_ns") is None:
                label["end_ns"] = last_event_ns
    send_labels(sim.labels, again=True)
    producer.flush()
    stats.elapsed_s = time.perf_counter() - began
    return stats


def main(argv: list[str] | None = None) -> int:
    """Entry point of the demo's producer process (settings from the environment)."""
    parser = argparse.ArgumentParser(
        prog="python -m skewscope.demo.paced",
        description="Produce a simulator scenario to Kafka in real time (event time = wall time).",
    )
    parser.add_argument("--scenario", required=True, help="bundled scenario name or TOML file")
    parser.add_argument("--duration", type=float, required=True, help="simulated seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--start-ns", type=int, default=0, help="event time of the first frame (0: now)"
    )
    parser.add_argument("--no-topology", action="store_true", help="topology already published")
    parser.add_argument("--config", default=None, help="TOML settings file")
    args = parser.parse_args(argv)
    settings = load_settings(Path(args.config) if args.config else None)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    start_ns = args.start_ns or time.time_ns()
    sim = Simulation(
        load_scenario(args.scenario), seed=args.seed, start_ns=start_ns, topics=settings.topics
    )
    with EventProducer(settings) as producer:
        stats = publish_paced(
            sim, args.duration, producer, settings.topics, stop, topology=not args.no_topology
        )
    print(f"{settings.kafka_bootstrap}: {stats.line()}", flush=True)
    return 0


def publish_topology(settings: Settings, scenario: str, seed: int) -> int:
    """Send the scenario's topology records (so a worker started next finds them); returns
    how many."""
    sim = Simulation(load_scenario(scenario), seed=seed, topics=settings.topics)
    with EventProducer(settings) as producer:
        for rec in sim.topology:
            producer.send(
                settings.topics.topology,
                f"{rec['deployment']}/rank{rec['rank']}",
                "TopologyRecord",
                rec,
            )
        producer.flush()
    return len(sim.topology)


if __name__ == "__main__":
    sys.exit(main())
