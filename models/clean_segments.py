"""False verdicts across the whole of each Azure trace, not only its configured stretch.

``skewscope evaluate`` holds the detector to zero verdicts on each trace's bundled scenario
(one stretch, chosen for its utilization). Real traffic is not one stretch: the code trace
swings from idle to bursts that overload a replica for seconds. ``--clean-segments N`` replays
N stretches of ``clean_duration_s`` at the scenario's compression, their trace offsets evenly
spread from the start of the trace to the last stretch that fits, and counts false verdict
episodes per node-hour over them. A verdict that answers a true load label (the simulator
found real SLO harm while a peer had room) is not false; those labels are counted apart.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from models.scoring import clean_summary


def segment_offsets_s(
    trace_span_s: float, duration_s: float, compression: float, count: int
) -> list[float]:
    """Trace offsets of ``count`` stretches of ``duration_s`` simulated seconds, spread evenly
    over a trace of ``trace_span_s`` seconds (a stretch covers duration x compression of it)."""
    if count <= 0:
        return []
    last = max(0.0, trace_span_s - duration_s * compression)
    return [round(float(x), 1) for x in np.linspace(0.0, last, count)]


def clean_episode(episode_id: str, scenario: Any, seed: int, duration_s: float) -> Any:
    """A suite Episode of a scenario with no fault (scored as clean traffic)."""
    from producers.sim.suite import Episode

    return Episode(
        episode_id=episode_id,
        condition="clean",
        scenario=scenario,
        seed=seed,
        duration_s=duration_s,
        faults=(),
        reference=False,
        severity=0.0,
        lookalike=False,
    )


def clean_segments(
    names: Iterable[str],
    count: int,
    seed: int,
    duration_s: float,
    run: Callable[[list[Any]], Iterable[Any]],
) -> dict[str, dict[str, Any]]:
    """Per trace scenario: the stretches' false verdicts, node-hours, utilization and true
    load labels. ``run`` maps a list of suite Episodes to EpisodeResults (in order)."""
    from producers.sim import load_scenario
    from producers.sim.arrivals import read_trace, trace_path

    out: dict[str, dict[str, Any]] = {}
    for name in names:
        scenario = load_scenario(name)
        work = scenario.workload
        offsets_ns, _, _ = read_trace(trace_path(work))
        offsets = segment_offsets_s(
            float(offsets_ns[-1]) / 1e9, duration_s, work.time_compression, count
        )
        episodes = [
            clean_episode(
                f"clean-{name}-at-{offset:g}s",
                dataclasses.replace(
                    scenario, workload=dataclasses.replace(work, trace_offset_s=offset)
                ),
                seed,
                duration_s,
            )
            for offset in offsets
        ]
        rows = []
        false_total, hours_total = 0, 0.0
        by_condition: Counter[str] = Counter()
        harm: Counter[str] = Counter()
        for offset, res in zip(offsets, run(episodes), strict=True):
            summary = clean_summary(res.verdicts, res.node_hours, res.labels)
            false_total += summary["false_episodes"]
            hours_total += res.node_hours
            by_condition.update(summary["by_condition"])
            harm.update(label["condition"] for label in res.labels)
            rows.append(
                {
                    "trace_offset_s": offset,
                    "utilization": round(res.utilization["busy"], 4),
                    "false_verdicts": summary["false_episodes"],
                    "by_condition": summary["by_condition"],
                    "load_labels": len(res.labels),
                }
            )
        busy = [r["utilization"] for r in rows]
        out[name] = {
            "segments": len(rows),
            "duration_s": duration_s,
            "time_compression": work.time_compression,
            "node_hours": round(hours_total, 6),
            "false_verdicts": false_total,
            "false_per_node_hour": round(false_total / hours_total, 3) if hours_total else None,
            "by_condition": dict(sorted(by_condition.items())),
            "load_labels": dict(sorted(harm.items())),
            "utilization_median": round(float(np.median(busy)), 4) if busy else None,
            "utilization_range": [min(busy), max(busy)] if busy else None,
            "rows": rows,
        }
    return out
