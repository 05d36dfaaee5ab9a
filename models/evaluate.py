"""``skewscope evaluate``: the randomized suite through the detector core, in process, scored.

Each episode of :func:`producers.sim.suite.make_suite` is simulated and fed frame by frame to a
fresh :class:`~models.detector.Detector`, exactly as the live worker and the backtest feed it;
verdicts and the simulator's labels are collected and scored by :mod:`models.scoring`.
Episodes run in worker processes (one per core). Entities are prefixed with the episode id
before scoring, so episodes never match each other's labels.

The headline table (``conditions``) scores the reference-severity episodes together with the
look-alikes (whose verdicts are false positives); ``recall_by_severity`` comes from all fault
episodes, the severity sweep included. ``clean`` runs the Azure trace scenarios with no fault
and counts false verdict episodes per node-hour; ``clean_segments`` (``--clean-segments N``)
does the same on N stretches spread over each whole trace (models/clean_segments.py).

An episode is scored over its duration, but the simulator and the detector run
``EDGE_TAIL_S`` longer: a label that opens just before the end is then judged on the windows
that would have followed it live (it is scored; a verdict starting in the tail may answer it),
and the truth's labels and the detector's verdicts that begin in the tail are not scored
(the truth would have needed the same later windows to decide them).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.clean_segments import clean_episode
from models.clean_segments import clean_segments as segments_of
from models.detector import Detector, DetectorConfig
from models.runbook import Runbook, load_runbook
from models.scoring import (
    GRACE_NS,
    answers,
    clean_summary,
    confusion,
    episodes,
    match_labels,
    score,
)
from models.utilization import Utilization
from schemas.columns import unpack

EPISODE_SLOT_NS = 10**13  # 10,000 s of event time between episodes once scored together
EDGE_TAIL_S = GRACE_NS / 1e9  # simulated past an episode's end (see the module docstring)
SOURCE_SCHEMAS = {
    "engine": ("EngineRequestFrame", "EngineSampleFrame"),
    "nccl": ("CollectiveFrame",),
    "gpu": ("GpuSampleFrame",),
    "nic": ("NicCounterFrame",),
    "dpu": ("DpuFrame",),
}


@dataclass(frozen=True)
class EpisodeResult:
    episode_id: str
    condition: str
    reference: bool
    lookalike: bool
    severity: float
    labels: list[dict[str, Any]]
    verdicts: list[dict[str, Any]]
    samples: int
    sim_s: float
    wall_s: float
    node_count: int
    utilization: dict[str, float]  # models.utilization: busy, batch, kv, prefill

    @property
    def node_hours(self) -> float:
        """The simulated time times the nodes it covered: the clean-traffic budget's unit."""
        return self.node_count * self.sim_s / 3600


def run_episode(args: tuple[Any, frozenset[str], str, int]) -> EpisodeResult:
    """Simulate one episode and detect on it (a top-level function: picklable for a pool)."""
    from producers.sim import Simulation

    episode, dropped, runbook_path, index = args
    started = time.perf_counter()
    sim = Simulation(episode.scenario, seed=episode.seed)
    runbook = load_runbook(Path(runbook_path)) if runbook_path else load_runbook()
    det = Detector(runbook, DetectorConfig())
    skip = {schema for source in dropped for schema in SOURCE_SCHEMAS.get(source, ())}
    for record in sim.topology:
        det.process("TopologyRecord", record)
    verdicts: list[dict[str, Any]] = []
    busy = Utilization(
        {d.name: 1e6 / d.model.prefill_us_per_token for d in episode.scenario.deployments}
    )
    horizon_ns = sim.world.start_ns + round(episode.duration_s * 1e9)
    for frame in sim.frames(duration_s=episode.duration_s + EDGE_TAIL_S):
        if frame.schema == "EngineSampleFrame" and frame.event_time_ns <= horizon_ns:
            busy.add(frame.record["deployment"], unpack(frame.schema, frame.record))
        if frame.schema in skip:
            continue
        verdicts += [o.record for o in det.process(frame.schema, frame.record)]
    verdicts += [o.record for o in det.flush()]
    scored = [x for x in sim.labels if x["onset_ns"] < horizon_ns]
    verdicts = [v for v in verdicts if v["condition"] != "heartbeat"]
    # a verdict that began in the tail counts only where it answers a scored label
    verdicts = [
        v
        for v in verdicts
        if v["first_seen_ns"] < horizon_ns
        or answers(v["entity"], v["condition"], v["first_seen_ns"], scored, GRACE_NS)
    ]
    prefix = episode.episode_id + "|"
    offset_ns = index * EPISODE_SLOT_NS
    return EpisodeResult(
        episode_id=episode.episode_id,
        condition=episode.condition,
        reference=episode.reference,
        lookalike=episode.lookalike,
        severity=episode.severity,
        labels=[_isolated(x, prefix, offset_ns) for x in scored],
        verdicts=[_isolated(v, prefix, offset_ns) for v in verdicts],
        samples=det.stats.samples,
        sim_s=episode.duration_s,
        wall_s=time.perf_counter() - started,
        node_count=len(det.topology.nodes()),
        utilization=busy.summary(),
    )


def _isolated(record: dict[str, Any], prefix: str, offset_ns: int) -> dict[str, Any]:
    """Entity prefixed with the episode id and times shifted to the episode's own slot, so
    the scorer can never match one episode's verdict to another's label."""
    out = dict(record)
    out["entity"] = prefix + record["entity"]
    for key in ("onset_ns", "end_ns", "first_seen_ns", "last_seen_ns"):
        if out.get(key) is not None:
            out[key] = out[key] + offset_ns
    return out


def evaluate(
    episodes_per_condition: int = 30,
    seed: int = 0,
    without_sources: frozenset[str] = frozenset(),
    duration_s: float = 30.0,
    clean_duration_s: float = 120.0,
    runbook_path: str = "",
    processes: int | None = None,
    progress: bool = True,
    novel_episodes: int = 3,
    clean_segments: int = 0,
    frame_interval_ms: int | None = None,
) -> dict[str, Any]:
    """The suite's metrics. ``frame_interval_ms`` replaces every episode's telemetry frame
    period (its scenario's ``cluster.frame_interval_ms``): the detector judged at another
    frame cadence, on the same faults and seeds."""
    from producers.sim import load_scenario
    from producers.sim.suite import make_suite

    runbook: Runbook = load_runbook(Path(runbook_path)) if runbook_path else load_runbook()
    processes = processes or os.cpu_count() or 1
    suite = make_suite(
        episodes_per_condition=episodes_per_condition, seed=seed, duration_s=duration_s
    )
    framed = _Framed(frame_interval_ms)
    started = time.perf_counter()
    tty = sys.stdout.isatty()
    results: list[EpisodeResult] = []
    for i, result in enumerate(
        stream_episodes(framed.all(suite), without_sources, runbook_path, processes)
    ):
        results.append(result)
        if progress and (tty or (i + 1) % 20 == 0 or i + 1 == len(suite)):
            line = f"evaluate: {i + 1}/{len(suite)} episodes, {time.perf_counter() - started:.0f} s"
            print("\r" + line if tty else line, end="" if tty else "\n", flush=True)
    if progress and tty:
        print()
    headline = [r for r in results if r.reference or r.lookalike]
    out = score(
        [x for r in headline for x in r.labels],
        [v for r in headline for v in r.verdicts],
        runbook,
    )
    everything = score(
        [x for r in results for x in r.labels], [v for r in results for v in r.verdicts], runbook
    )
    for cid, row in out["conditions"].items():
        row["recall_by_severity"] = everything["conditions"][cid]["recall_by_severity"]
        row["episodes"] = sum(1 for r in headline if r.condition == cid)
    all_eps = episodes([v for r in results for v in r.verdicts])
    outcomes = match_labels([x for r in results for x in r.labels], all_eps, 5e9)
    clean_runs = {}
    for name in ("azure-code", "azure-conv"):
        scenario = load_scenario(name)
        ep = framed(clean_episode(f"clean-{name}", scenario, seed, clean_duration_s))
        res = run_episode((ep, without_sources, runbook_path, 0))
        summary = clean_summary(res.verdicts, res.node_hours, res.labels)
        clean_runs[name] = {
            "false_verdicts": summary["false_episodes"],
            "node_hours": summary["node_hours"],
            "false_per_node_hour": summary["false_episodes_per_node_hour"],
            "by_condition": summary["by_condition"],
            "utilization": round(res.utilization["busy"], 4),
            "utilization_parts": {k: round(v, 4) for k, v in res.utilization.items()},
            "time_compression": scenario.workload.time_compression,
            "trace_offset_s": scenario.workload.trace_offset_s,
        }
    out["novel"] = _novel(
        novel_episodes, seed, without_sources, runbook_path, runbook, processes, framed
    )
    unattributed = sum(
        c["by_condition"].get("unattributed-anomaly", 0) for c in clean_runs.values()
    )
    clean_hours = sum(c["node_hours"] for c in clean_runs.values())
    out["novel"]["false_per_node_hour"] = (
        round(unattributed / clean_hours, 3) if clean_hours else None
    )
    samples = sum(r.samples for r in results)
    wall = sum(r.wall_s for r in results)
    out["clean"] = clean_runs
    if clean_segments > 0:
        out["clean_segments"] = segments_of(
            ("azure-code", "azure-conv"),
            clean_segments,
            seed,
            clean_duration_s,
            lambda eps: stream_episodes(framed.all(eps), without_sources, runbook_path, processes),
        )
    out["confusion"] = confusion(outcomes)
    out["suite"] = {
        "episodes_per_condition": episodes_per_condition,
        "seed": seed,
        "episodes": len(results),
        "duration_s": duration_s,
        "without_sources": sorted(without_sources),
        "frame_interval_ms": frame_interval_ms,
        "samples": samples,
        "episode_wall_s_total": round(wall, 1),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    return out


def _novel(
    count: int,
    seed: int,
    dropped: frozenset[str],
    runbook_path: str,
    runbook: Runbook,
    processes: int,
    framed: _Framed,
) -> dict[str, Any]:
    """A fault outside the runbook (periodic 200 ms NIC stalls, after the models warmed up):
    the share flagged ``unattributed-anomaly`` on the stalled port or a related entity."""
    from producers.sim import load_scenario
    from producers.sim.suite import Episode

    scenario = load_scenario("novel-nic-stall")
    episodes_ = [
        Episode(
            episode_id=f"novel-{i:03d}",
            condition="novel:periodic-nic-stall",
            scenario=scenario,
            seed=seed * 1000 + i,
            duration_s=scenario.duration_s,
            faults=scenario.faults,
            reference=True,
            severity=200.0,
            lookalike=False,
        )
        for i in range(count)
    ]
    results = list(stream_episodes(framed.all(episodes_), dropped, runbook_path, processes))
    labels = [x for r in results for x in r.labels if x["condition"].startswith("novel:")]
    verdicts = [v for r in results for v in r.verdicts]
    novel = score(labels, verdicts, runbook)["novel"]
    return {
        "recall": novel["unattributed_ratio"],
        "recall_ci95": novel["unattributed_ci95"],
        "episodes": count,
        "misread_as_runbook": novel["misread_as_runbook"],
        "latency_p50_s": novel["latency_p50_s"],
    }


@dataclass(frozen=True)
class _Framed:
    """Episodes with their scenario's frame period replaced (None: left as they are)."""

    frame_interval_ms: int | None

    def __call__(self, episode: Any) -> Any:
        from producers.sim.scenario import with_frame_interval

        if self.frame_interval_ms is None:
            return episode
        scenario = with_frame_interval(episode.scenario, self.frame_interval_ms)
        return dataclasses.replace(episode, scenario=scenario)

    def all(self, episodes_: list[Any]) -> list[Any]:
        return [self(ep) for ep in episodes_]


def stream_episodes(
    suite: list[Any], dropped: frozenset[str], runbook_path: str, processes: int
) -> Iterable[EpisodeResult]:
    """Each episode's result, in order, from ``processes`` worker processes."""
    jobs = [(ep, dropped, runbook_path, i) for i, ep in enumerate(suite)]
    if processes <= 1:
        yield from (run_episode(j) for j in jobs)
        return
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(processes) as pool:
        yield from pool.imap(run_episode, jobs, chunksize=1)


def write(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=True))
