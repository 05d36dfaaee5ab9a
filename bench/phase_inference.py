"""Phase inference accuracy (experimental): prefill vs decode from DPU DMA, against the truth.

Runs a scenario in process (no Kafka) for each seed, feeds every DpuFrame (decoded columns)
and the TopologyRecords to :class:`streams.phase.PhaseInference`, and compares each node's
per-bucket estimate (100 ms of DPU event time) with the simulator's true state of the same
100 ms chunk, read from ``Simulation.period_truths`` (never emitted): over the node's GPUs behind
its DPU, the busy fraction and the busy-time-weighted prefill share of compute (nominal split
of each step: ``prefill_us_per_token * prefill_tokens`` against
``decode_us_per_seq * n_decode``). True class: ``idle`` when the GPUs are busy less than half
the bucket, else ``prefill`` when the prefill share exceeds 0.5, else ``decode``.

Cases (each over every seed): ``main``, the ``phase-behind-dpu`` scenario with the default
inference (cadence feature); ``ratio``, the same runs with the D2H/H2D byte-ratio feature (the
ablation); ``loss``, the same scenario with 1 % of the DPU's rows dropped (the suites' sample
loss); ``clean-pp``, the ``clean`` world (Poisson clients, 700-token prompts, TP4 x PP2)
with GPUs 0 and 1 behind every DPU: its stage-1 nodes are measured, its stage-0 nodes (no
sampling rank) must stay unknown.

Reported: coverage (buckets of observable nodes with an estimate, not ``unknown``), accuracy
over estimated buckets, per-class precision and recall, the confusion matrix (true class x
estimate, ``unknown`` included), the mean absolute error of the prefill share over buckets
both truth and estimate call busy, and the majority-class baseline.

    .venv/bin/python bench/phase_inference.py --seeds 1 2 3 --seconds 60 \\
        --out docs/results/phase.md
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from producers.sim import Simulation, load_scenario
from producers.sim.scenario import Scenario
from schemas.columns import unpack
from streams.phase import (
    DECODE,
    IDLE,
    PREFILL,
    RATIO,
    UNKNOWN,
    PhaseConfig,
    PhaseInference,
)
from streams.topology import Topology

SCENARIO = "phase-behind-dpu"
CASES = ("main", "ratio", "loss", "clean-pp")
TRUE_CLASSES = (IDLE, PREFILL, DECODE)
ESTIMATES = (IDLE, PREFILL, DECODE, UNKNOWN)
BUSY_RATIO = 0.5  # a bucket is busy (truth) when the GPUs compute at least half of it
PREFILL_SHARE = 0.5  # a busy bucket is prefill-dominated above this true prefill share


@dataclass
class Tally:
    """Pairs of (truth, estimate) and share errors of one or more runs."""

    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)
    share_errors: list[float] = field(default_factory=list)
    unobservable: Counter[str] = field(default_factory=Counter)  # reason -> buckets

    def add(self, other: Tally) -> None:
        self.confusion.update(other.confusion)
        self.share_errors += other.share_errors
        self.unobservable.update(other.unobservable)

    def summary(self) -> dict[str, Any]:
        c = self.confusion
        total = sum(c.values())
        known = sum(v for (_, e), v in c.items() if e != UNKNOWN)
        right = sum(c[(k, k)] for k in TRUE_CLASSES)
        out: dict[str, Any] = {
            "buckets": total,
            "coverage": known / total if total else float("nan"),
            "accuracy": right / known if known else float("nan"),
            "share_mae": float(np.mean(self.share_errors)) if self.share_errors else float("nan"),
            "share_buckets": len(self.share_errors),
        }
        truth_counts = {t: sum(c[(t, e)] for e in ESTIMATES if e != UNKNOWN) for t in TRUE_CLASSES}
        out["majority_baseline"] = max(truth_counts.values()) / known if known else float("nan")
        for k in TRUE_CLASSES:
            said = sum(c[(t, k)] for t in TRUE_CLASSES)
            true = truth_counts[k]
            out[f"{k}_precision"] = c[(k, k)] / said if said else float("nan")
            out[f"{k}_recall"] = c[(k, k)] / true if true else float("nan")
        return out


def case_scenario(case: str) -> Scenario:
    """The scenario of one case (see the module docstring)."""
    if case == "clean-pp":
        base = load_scenario("clean")
        return dataclasses.replace(
            base, cluster=dataclasses.replace(base.cluster, gpus_behind_dpu=(0, 1))
        )
    base = load_scenario(SCENARIO)
    if case == "loss":
        return dataclasses.replace(
            base, cluster=dataclasses.replace(base.cluster, sample_loss_ratio=0.01)
        )
    return base


def case_config(case: str) -> PhaseConfig:
    return PhaseConfig(feature=RATIO) if case == "ratio" else PhaseConfig()


def run(scenario: Scenario, seed: int, seconds: float, config: PhaseConfig) -> Tally:
    """One simulated run: every observable node's buckets, truth against estimate."""
    sim = Simulation(scenario, seed=seed)
    lay = sim.world.layout
    topo = Topology.from_records(sim.topology)
    inference = PhaseInference(topo, config)
    behind = {
        node: [
            g
            for g in range(lay.n_gpus)
            if lay.gpu_node[g] == node and int(lay.gpu_local[g]) in lay.gpus_behind_dpu
        ]
        for node in range(lay.n_nodes)
    }
    observable = {n for n in lay.node_names if not inference.unobservable_reason(n)}
    truth: dict[tuple[str, int], tuple[str, float]] = {}
    estimates = []
    period: list[Any] = []
    for frame in sim.frames(duration_s=seconds):
        for t in sim.period_truths if sim.period_truths is not period else []:
            assert t.prefill_share is not None
            bucket = t.chunk_start // config.bucket_ns
            for node, gpus in behind.items():
                if lay.node_names[node] not in observable:
                    continue
                util = t.util[gpus]
                busy = float(util.mean())
                shares = t.prefill_share[gpus]
                weight = np.where(np.isnan(shares), 0.0, util)
                total = float(weight.sum())
                share = float((np.nan_to_num(shares) * weight).sum() / total) if total else 0.0
                cls = IDLE if busy < BUSY_RATIO else PREFILL if share > PREFILL_SHARE else DECODE
                truth[(lay.node_names[node], bucket)] = (cls, share)
        period = sim.period_truths
        if frame.schema == "DpuFrame":
            estimates += inference.ingest(frame.record, unpack("DpuFrame", frame.record))
    estimates += inference.flush()
    tally = Tally()
    for e in estimates:
        key = (e.node, e.bucket_start_ns // config.bucket_ns)
        if e.node not in observable:
            tally.unobservable[f"{e.phase}: {e.reason}"] += 1
            continue
        if key not in truth:
            continue  # a bucket past the run's end (flushed)
        cls, share = truth[key]
        tally.confusion[(cls, e.phase)] += 1
        if cls != IDLE and e.phase in (PREFILL, DECODE) and e.prefill_share is not None:
            tally.share_errors.append(abs(e.prefill_share - share))
    return tally


def _fmt(v: float) -> str:
    return "n/a" if v != v else f"{v:.3f}"


def _row(name: str, tally: Tally) -> str:
    s = tally.summary()
    pr = [f"{_fmt(s[f'{k}_precision'])} / {_fmt(s[f'{k}_recall'])}" for k in TRUE_CLASSES]
    return (
        f"| {name} | {s['buckets']} | {_fmt(s['coverage'])} | {_fmt(s['accuracy'])} | "
        f"{_fmt(s['majority_baseline'])} | {_fmt(s['share_mae'])} | " + " | ".join(pr) + " |"
    )


HEADER = [
    "| {} | buckets | coverage | accuracy | majority baseline | share MAE |"
    " idle P/R | prefill P/R | decode P/R |",
    "|---|---|---|---|---|---|---|---|---|",
]


def report(
    seconds: float, results: dict[str, dict[int, Tally]], command: str, elapsed_s: float
) -> str:
    pooled: dict[str, Tally] = {}
    for case, per_seed in results.items():
        pooled[case] = Tally()
        for tally in per_seed.values():
            pooled[case].add(tally)
    seeds = next(iter(results.values())).keys()
    lines = [
        "# Phase inference (experimental): measured accuracy",
        "",
        f"{seconds:g} s of simulated time per seed, seeds {', '.join(str(s) for s in seeds)}; "
        "one estimate per observable node and 100 ms bucket, against the simulator's true "
        "state (bench/phase_inference.py says how the truth is read and what each case is). "
        f"Took {elapsed_s:.0f} s.",
        "",
        "```",
        command,
        "```",
        "",
        f"Case `main` ({SCENARIO}, cadence feature), per seed:",
        "",
        HEADER[0].format("seed"),
        HEADER[1],
    ]
    lines += [_row(str(seed), tally) for seed, tally in results["main"].items()]
    lines += ["", "Every case, pooled over the seeds:", "", HEADER[0].format("case"), HEADER[1]]
    lines += [_row(case, tally) for case, tally in pooled.items()]
    for case, tally in pooled.items():
        lines += [
            "",
            f"Confusion matrix of `{case}`, all seeds (rows: truth; columns: estimate):",
            "",
            "| truth \\ estimate | " + " | ".join(ESTIMATES) + " |",
            "|---|" + "---|" * len(ESTIMATES),
        ]
        for t in TRUE_CLASSES:
            cells = " | ".join(str(tally.confusion[(t, e)]) for e in ESTIMATES)
            lines.append(f"| {t} | {cells} |")
        if tally.unobservable:
            lines += ["", "Buckets of nodes whose phase is not observable:", ""]
            lines += [f"* {reason}: {n}" for reason, n in sorted(tally.unobservable.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, help="write the Markdown report here")
    args = parser.parse_args(argv)
    if "main" not in args.cases:
        args.cases.insert(0, "main")
    started = time.monotonic()
    results = {
        case: {
            seed: run(case_scenario(case), seed, args.seconds, case_config(case))
            for seed in args.seeds
        }
        for case in args.cases
    }
    command = (
        f".venv/bin/python bench/phase_inference.py --seeds "
        f"{' '.join(str(s) for s in args.seeds)} --seconds {args.seconds:g}"
        + ("" if args.cases == list(CASES) else f" --cases {' '.join(args.cases)}")
        + (f" --out {args.out}" if args.out else "")
    )
    text = report(args.seconds, results, command, time.monotonic() - started)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
