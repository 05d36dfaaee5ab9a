"""Arrival-order audit: do the detector's windows and verdicts depend on how sources interleave?

Live, a worker reads six telemetry topics whose frames interleave as the broker hands them
out; a replay merges them by timestamp. Each source keeps its own order either way, but one
may be read ahead of another. This feeds a simulated scenario through one Detector in
event-time order, then again with each source's frames read ``--shift-ms`` later, and
earlier (every other source's later), than the rest, and counts the verdict records and
the windows (from ``--skip-s`` on, where the shifts start) that differ from the event-time
run.

    .venv/bin/python -m bench.order_audit --scenario clock-desync --seconds 20

Limits: in process, no Kafka; the simulator's frames, not a capture's; the shifts start after
the first seconds, as windows there close before a source that has not spoken yet can hold
them. Exit status 1 when any ordering changes the verdict records.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from models.detector import Detector, DetectorConfig
from producers.sim import Simulation, load_scenario

SOURCES = (
    "CollectiveFrame",
    "GpuSampleFrame",
    "NicCounterFrame",
    "DpuFrame",
    "EngineSampleFrame",
    "EngineRequestFrame",
)

Frame = tuple[int, str, dict[str, Any]]
Windows = dict[tuple[int, str], dict[str, float]]


@dataclass
class Run:
    verdicts: list[dict[str, Any]]
    windows: Windows
    late_frames: int
    silent_sources: frozenset[tuple[str, str, str]]


@dataclass
class Difference:
    source: str
    shift_ms: int
    verdicts_equal: bool
    windows_differing: int
    late_frames: int
    features: list[tuple[str, int]]


def run(
    topology: list[dict[str, Any]], frames: list[Frame], shift: dict[str, int], from_ns: int = 0
) -> Run:
    """Frames read at event time plus ``shift[schema]`` ns from ``from_ns`` on (before it, in
    event-time order, so that every feed has spoken), ties in the simulator's order."""

    def read_at(i: int) -> int:
        t, schema, _ = frames[i]
        return t + (shift.get(schema, 0) if t >= from_ns else 0)

    order = sorted(range(len(frames)), key=lambda i: (read_at(i), i))
    det = Detector(config=DetectorConfig(emit_features=True))
    for record in topology:
        det.process("TopologyRecord", record)
    verdicts: list[dict[str, Any]] = []
    windows: Windows = {}
    for i in order:
        _, schema, record = frames[i]
        for out in det.process(schema, record):
            if out.schema == "Verdict":
                verdicts.append(out.record)
            elif out.schema == "FeatureWindow":
                windows[(out.record["window_end_ns"], out.record["entity"])] = out.record[
                    "features"
                ]
    return Run(verdicts, windows, det.stats.late_frames, det.silent_sources())


def compare(base: Run, other: Run, from_ns: int) -> tuple[bool, int, Counter[str]]:
    differing: Counter[str] = Counter()
    windows: set[int] = set()
    for key in set(base.windows) | set(other.windows):
        if key[0] < from_ns:
            continue
        a, b = base.windows.get(key, {}), other.windows.get(key, {})
        for name in set(a) | set(b):
            x, y = a.get(name), b.get(name)
            if x is None or y is None or not (x == y or (math.isnan(x) and math.isnan(y))):
                differing[name] += 1
                windows.add(key[0])
    return base.verdicts == other.verdicts, len(windows), differing


def audit(
    scenario: str, seconds: float, seed: int, shift_ms: int, skip_s: float
) -> tuple[Run, int, list[Difference]]:
    sim = Simulation(load_scenario(scenario), seed=seed)
    frames = [(f.event_time_ns, f.schema, f.record) for f in sim.frames(duration_s=seconds)]
    topology = list(sim.topology)
    base = run(topology, frames, {})
    from_ns = frames[0][0] + round(skip_s * 1e9)
    rows = []
    for source in SOURCES:
        for sign in (1, -1):
            # reading a source early is reading every other one late: a shift is a delay
            # from ``from_ns`` on, so no feed's frames are read out of their own order
            delay_ns = shift_ms * 1_000_000
            if sign > 0:
                shift = {source: delay_ns}
            else:
                shift = {other: delay_ns for other in SOURCES if other != source}
            other = run(topology, frames, shift, from_ns)
            equal, n_windows, features = compare(base, other, from_ns)
            rows.append(
                Difference(
                    source,
                    sign * shift_ms,
                    equal,
                    n_windows,
                    other.late_frames,
                    features.most_common(3),
                )
            )
    compared = len({end for end, _ in base.windows if end >= from_ns})
    return base, compared, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="mixed")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shift-ms", type=int, default=400)
    parser.add_argument("--skip-s", type=float, default=2.0)
    args = parser.parse_args(argv)
    base, compared, rows = audit(args.scenario, args.seconds, args.seed, args.shift_ms, args.skip_s)
    print(
        f"{args.scenario}, {args.seconds:g} s, seed {args.seed}, event-time order: "
        f"{len(base.verdicts)} verdict records, {base.late_frames} late frames; "
        f"{compared} windows compared (from {args.skip_s:g} s, where the shifts start)"
    )
    for r in rows:
        verdicts = "equal" if r.verdicts_equal else "DIFFER"
        print(
            f"  {r.source:20s} {r.shift_ms:+5d} ms  verdicts {verdicts:6s}  "
            f"windows differing {r.windows_differing:3d}  late frames {r.late_frames:4d}  "
            f"{r.features}"
        )
    return 0 if all(r.verdicts_equal for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
