"""Which stretch of an Azure trace, at which compression, loads the cluster to the bound.

The design holds the detector to zero verdicts on the Azure traces "time-compressed until the
cluster runs at >= 80 % of its capacity". A trace is not uniform (the code trace idles for
minutes between bursts of long prompts), so where the stretch starts matters as much as the
compression, and compressing far past the bound only drowns both replicas alike (seconds of
queue everywhere, no peer with room: no load-family condition can hold, and the check
proves nothing). This sweep makes the bundled scenarios' choice reproducible:

* for each compression ``c`` (ascending), the stretch is the densest ``duration_s x c``
  seconds of the trace by prompt tokens per second (starts on a 30 s grid);
* each (compression, seed) runs as a clean episode through the detector, the same way as
  ``skewscope evaluate`` runs its clean traces (utilization from ``models/utilization.py``,
  false verdicts not answering a true load label);
* the chosen compression is the lowest whose utilization reaches the bound on every seed.

``python -m models.clean_sweep --scenario azure-code --compressions 2,2.25,2.5,2.75,3``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

OFFSET_GRID_S = 30.0


def densest_offset_s(
    offsets_ns: np.ndarray, prompt_tokens: np.ndarray, span_s: float, grid_s: float = OFFSET_GRID_S
) -> float:
    """Start (on a ``grid_s`` grid) of the ``span_s`` seconds of a trace, within it, holding
    the most prompt tokens; the first such start on ties. A trace shorter than the span
    starts at 0."""
    if span_s <= 0 or grid_s <= 0:
        raise ValueError(f"span {span_s} s and grid {grid_s} s must be positive")
    t_s = np.asarray(offsets_ns, dtype=np.float64) / 1e9
    tokens = np.asarray(prompt_tokens, dtype=np.float64)
    if t_s.size == 0:
        return 0.0
    cumulative = np.concatenate([[0.0], np.cumsum(tokens)])
    starts = np.arange(0.0, max(float(t_s[-1]) - span_s, 0.0) + grid_s / 2, grid_s)
    lo = np.searchsorted(t_s, starts, side="left")
    hi = np.searchsorted(t_s, starts + span_s, side="left")
    return float(starts[int(np.argmax(cumulative[hi] - cumulative[lo]))])


def lowest_compression(rows: Iterable[dict[str, Any]], bound: float) -> float | None:
    """The lowest compression whose every row reaches utilization ``bound`` (None: none)."""
    by_compression: dict[float, list[float]] = {}
    for row in rows:
        by_compression.setdefault(row["time_compression"], []).append(row["utilization"])
    for compression in sorted(by_compression):
        if min(by_compression[compression]) >= bound:
            return compression
    return None


def sweep(
    name: str,
    compressions: Sequence[float],
    seeds: Sequence[int],
    duration_s: float,
    processes: int,
) -> list[dict[str, Any]]:
    """One row per (compression, seed): the densest stretch, its utilization and verdicts."""
    from models.clean_segments import clean_episode
    from models.evaluate import stream_episodes
    from models.scoring import clean_summary, episodes
    from producers.sim import load_scenario
    from producers.sim.arrivals import read_trace, trace_path

    scenario = load_scenario(name)
    work = scenario.workload
    if work.arrivals != "azure":
        raise ValueError(f"scenario {name!r} does not replay an Azure trace")
    offsets_ns, prompt, _ = read_trace(trace_path(work))
    plan = []
    for compression in compressions:
        if compression <= 0:
            raise ValueError(f"compression {compression} must be positive")
        offset = densest_offset_s(offsets_ns, prompt, duration_s * compression)
        replaced = dataclasses.replace(
            work, trace_offset_s=offset, time_compression=float(compression)
        )
        for seed in seeds:
            episode = clean_episode(
                f"sweep-{name}-x{compression:g}-s{seed}",
                dataclasses.replace(scenario, workload=replaced),
                seed,
                duration_s,
            )
            plan.append((float(compression), offset, seed, episode))
    rows = []
    results = stream_episodes([p[3] for p in plan], frozenset(), "", processes)
    for (compression, offset, seed, _), res in zip(plan, results, strict=True):
        summary = clean_summary(res.verdicts, res.node_hours, res.labels)
        rows.append(
            {
                "scenario": name,
                "time_compression": compression,
                "trace_offset_s": offset,
                "seed": seed,
                "utilization": round(res.utilization["busy"], 4),
                "utilization_parts": {k: round(v, 4) for k, v in res.utilization.items()},
                "load_labels": len(res.labels),
                "verdict_episodes": len(episodes(res.verdicts)),
                "false_verdicts": summary["false_episodes"],
            }
        )
    return rows


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", required=True, help="an Azure scenario (azure-code, ...)")
    parser.add_argument("--compressions", type=_floats, default=[2.0, 2.25, 2.5, 2.75, 3.0])
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--duration-s", type=float, default=120.0)
    parser.add_argument("--bound", type=float, default=0.8, help="utilization to reach")
    parser.add_argument("--processes", type=int, default=0, help="0: one per core")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    rows = sweep(
        args.scenario,
        args.compressions,
        args.seeds,
        args.duration_s,
        args.processes or os.cpu_count() or 1,
    )
    print(
        f"{'compression':>11} {'offset s':>9} {'seed':>4} {'busy':>6} {'labels':>6} "
        f"{'verdicts':>8} {'false':>5}"
    )
    for r in rows:
        print(
            f"{r['time_compression']:>11g} {r['trace_offset_s']:>9g} {r['seed']:>4} "
            f"{r['utilization']:>6.1%} {r['load_labels']:>6} {r['verdict_episodes']:>8} "
            f"{r['false_verdicts']:>5}"
        )
    chosen = lowest_compression(rows, args.bound)
    if chosen is None:
        print(f"no compression reached {args.bound:.0%} on every seed")
    else:
        offset = next(r["trace_offset_s"] for r in rows if r["time_compression"] == chosen)
        print(
            f"lowest compression at >= {args.bound:.0%} on every seed: {chosen:g}x "
            f"from trace offset {offset:g} s"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
