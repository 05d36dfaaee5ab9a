"""Detector state per tracked entity, at 1x, 10x and 100x the nodes, and over a soak.

State bytes: the deep size of one :class:`~models.detector.Detector` (every object reachable
from it, each counted once; numpy arrays by their buffers) after it processed ``--seconds``
of the scenario, minus the deep size of a fresh Detector (runbook, rule tables, untrained
models: fixed cost, not per entity). Tracked entities: ranks + GPUs + NIC ports + nodes +
deployments of the topology. The world is ``bench-large`` with its replicas (hence nodes)
multiplied (``bench.prefill.scaled_scenario``).

Soak: one Detector fed ``--soak-seconds`` of event time (600: 10 minutes) of the 1x world,
its state measured every 60 s of event time; flat means the last reading is within 10% of
the reading at 2 minutes.

    .venv/bin/python -m bench.memory --scales 1 10 100 --soak-seconds 600

Limits: ``sys.getsizeof`` sizes (CPython object headers included, allocator slack not);
objects shared with the process (interned strings, small ints, classes, modules) are not
counted; the Detector runs in-process without Kafka.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from collections import deque
from typing import Any

import numpy as np

from bench.prefill import scaled_scenario
from models.detector import Detector
from producers.sim import Simulation

_SKIP = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


def deep_size_bytes(root: object) -> int:
    """Bytes of every object reachable from ``root``, each once (iterative, no recursion)."""
    seen: set[int] = set()
    stack = [root]
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _SKIP):
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            total += sys.getsizeof(obj) + (obj.nbytes if obj.base is not None else 0)
            continue
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset | deque):
            stack.extend(obj)
        elif isinstance(obj, str | bytes | int | float | bool | complex) or obj is None:
            continue
        else:
            if hasattr(obj, "__dict__"):
                stack.append(vars(obj))
            for slot in getattr(type(obj), "__slots__", ()):
                if hasattr(obj, slot):
                    stack.append(getattr(obj, slot))
    return total


def tracked_entities(det: Detector) -> int:
    """Ranks + GPUs + NIC ports + nodes + deployments the detector's topology knows."""
    gpus = det.topology.by_gpu()
    ports = det.topology.by_port()
    nodes = {place.node for place in gpus.values()}
    deployments = {place.deployment for place in gpus.values()}
    return 2 * len(gpus) + len(ports) + len(nodes) + len(deployments)


def state_at_scale(scale: int, seconds: float, seed: int = 0) -> dict[str, Any]:
    """State bytes per tracked entity after ``seconds`` of the world scaled ``scale`` times."""
    sim = Simulation(scaled_scenario("bench-large", scale), seed=seed)
    det = Detector()
    fixed = deep_size_bytes(det)
    for record in sim.topology:
        det.process("TopologyRecord", record)
    topology_bytes = deep_size_bytes(det.topology)
    began = time.perf_counter()
    for frame in sim.frames(seconds):
        det.process(frame.schema, frame.record)
    elapsed = time.perf_counter() - began
    state = deep_size_bytes(det) - fixed
    entities = tracked_entities(det)
    parts = {name: deep_size_bytes(value) for name, value in vars(det).items()}
    parts.update({f"extractors.{k}": deep_size_bytes(v) for k, v in det.extractors.items()})
    parts.pop("extractors")
    largest = sorted(parts.items(), key=lambda kv: kv[1], reverse=True)[:6]
    return {
        "scale": scale,
        "gpus": len(det.topology.by_gpu()),
        "tracked_entities": entities,
        "event_seconds": seconds,
        "windows_closed": det.stats.windows_closed,
        "samples": det.stats.samples,
        "state_bytes": state,
        "topology_bytes": topology_bytes,
        "state_bytes_per_entity": state / entities,
        "state_bytes_per_entity_without_topology": (state - topology_bytes) / entities,
        "fixed_bytes": fixed,
        "largest_parts_bytes": dict(largest),
        "run_s": elapsed,
    }


def soak(seconds: float, every_s: float = 60.0, seed: int = 0) -> dict[str, Any]:
    """State of one 1x Detector every ``every_s`` of event time over ``seconds``."""
    sim = Simulation(scaled_scenario("bench-large", 1), seed=seed)
    det = Detector()
    fixed = deep_size_bytes(det)
    for record in sim.topology:
        det.process("TopologyRecord", record)
    entities = tracked_entities(det)
    series = []
    next_ns = sim.start_ns + round(every_s * 1e9)
    for frame in sim.frames(seconds):
        det.process(frame.schema, frame.record)
        if frame.event_time_ns >= next_ns:
            state = deep_size_bytes(det) - fixed
            series.append(
                {
                    "event_s": round((frame.event_time_ns - sim.start_ns) / 1e9, 1),
                    "state_bytes": state,
                    "state_bytes_per_entity": state / entities,
                }
            )
            next_ns += round(every_s * 1e9)
    reference = next((s for s in series if s["event_s"] >= 2 * every_s), None)
    flat = bool(
        reference and series and series[-1]["state_bytes"] <= 1.1 * reference["state_bytes"]
    )
    return {"event_seconds": seconds, "tracked_entities": entities, "series": series, "flat": flat}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--seconds", type=float, default=3.0, help="event seconds per scale")
    parser.add_argument("--soak-seconds", type=float, default=600.0)
    parser.add_argument("--soak-every", type=float, default=60.0)
    args = parser.parse_args(argv)
    result = {
        "benchmark": "memory",
        "scales": [state_at_scale(s, args.seconds) for s in args.scales],
        "soak": soak(args.soak_seconds, args.soak_every) if args.soak_seconds else None,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
