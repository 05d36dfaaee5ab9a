"""``skewscope bench --json OUT [--quick]``: every benchmark in one run, one JSON document.

Order: machine info; one pre-fill of ``bench-large`` telemetry (fresh topics); then, ``--runs``
times each (medians reported, baselines always in the same run): the raw ceiling, the full
replay pipeline, the detector core alone, the Faust baseline with Tables and with plain dicts
(each measuring process pinned to core 1); then the live run at 100,000 samples/s (worker on
core 1, producer and sink on core 0) and at a load one core sustains; then memory per entity
and the soak. Ratios and target verdicts are computed from the medians.

``--quick``: a small pre-fill, one run each, short live and soak: minutes, for a smoke check,
not for the record.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench.common import machine_info, run_child, summarize
from bench.prefill import drop_topics, prefill
from skewscope.config import load_settings

TARGETS = {
    "replay_samples_per_core_s": 1_000_000.0,
    "replay_share_of_ceiling": 0.40,
    "replay_over_baseline": 10.0,
    "live_latency_p99_ms": 500.0,
    "state_bytes_per_entity": 2048.0,
}


def _throughput(prefix: str, partitions: int, runs: int, baseline_messages: int) -> dict[str, Any]:
    common = ["--prefix", prefix, "--partitions", str(partitions)]
    plan = {
        "ceiling": ("bench.ceiling", []),
        "replay": ("bench.replay_throughput", []),
        "detector_core": ("bench.replay_throughput", ["--in-memory"]),
        "baseline_faust_tables": (
            "bench.baseline_faust",
            ["--messages", str(baseline_messages), "--state", "table"],
        ),
        "baseline_faust_dicts": (
            "bench.baseline_faust",
            ["--messages", str(baseline_messages), "--state", "dict"],
        ),
    }
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name in plan}
    for _ in range(runs):  # interleaved, so drift on the shared machine hits all alike
        for name, (module, extra) in plan.items():
            raw[name].append(run_child(module, [*common, *extra], core=1))
    out: dict[str, Any] = {}
    for name, results in raw.items():
        out[name] = {
            "samples_per_cpu_s": summarize([r["samples_per_cpu_s"] for r in results]),
            "runs": results,
        }
    return out


def run_all(quick: bool, runs: int) -> dict[str, Any]:
    """Every benchmark; see the module docstring."""
    base = load_settings()
    doc: dict[str, Any] = {"machine": machine_info(), "started_at": time.strftime("%FT%T%z")}
    sim_seconds = 4.0 if quick else 20.0
    filled = prefill(base, "bench-large", sim_seconds, partitions=4)
    doc["prefill"] = filled.as_dict()
    try:
        doc["throughput"] = _throughput(
            filled.prefix, filled.partitions, 1 if quick else runs, 600 if quick else 4000
        )
        profile = run_child(
            "bench.replay_throughput",
            ["--prefix", filled.prefix, "--partitions", "4", "--profile", "/tmp/bench-replay.prof"],
            core=1,
        )
        doc["replay_hot_spots"] = profile["hot_spots"]
    finally:
        drop_topics(filled.settings(base))
    live_s, warm_s = (8.0, 4.0) if quick else (40.0, 10.0)
    doc["live"] = [
        run_child("bench.live", ["--seconds", str(live_s), "--warmup", str(warm_s),
                                 "--rate", "100000", "--scale", "4"], core=None),
        run_child("bench.live", ["--seconds", str(live_s), "--warmup", str(warm_s),
                                 "--rate", "40000", "--scale", "2"], core=None),
    ]  # fmt: skip
    memory_args = (
        ["--scales", "1", "10", "--seconds", "2", "--soak-seconds", "60", "--soak-every", "20"]
        if quick
        else ["--scales", "1", "10", "100", "--seconds", "2", "--soak-seconds", "600"]
    )
    doc["memory"] = run_child("bench.memory", memory_args, core=1, timeout_s=3600)
    doc["summary"] = summary(doc)
    doc["finished_at"] = time.strftime("%FT%T%z")
    return doc


def summary(doc: dict[str, Any]) -> dict[str, Any]:
    """Medians, ratios and which targets are met."""
    tp = doc["throughput"]
    med = {name: tp[name]["samples_per_cpu_s"]["median"] for name in tp}
    live100 = doc["live"][0]
    scales = doc["memory"]["scales"]
    worst_entity_bytes = max(s["state_bytes_per_entity"] for s in scales)
    ratios = {
        "replay_share_of_ceiling": med["replay"] / med["ceiling"],
        "replay_over_baseline_tables": med["replay"] / med["baseline_faust_tables"],
        "replay_over_baseline_dicts": med["replay"] / med["baseline_faust_dicts"],
        "detector_core_share_of_replay_cpu": med["replay"] / med["detector_core"],
    }
    met = {
        "replay >= 1,000,000 samples/s per core": med["replay"]
        >= TARGETS["replay_samples_per_core_s"],
        "replay >= 40% of ceiling": ratios["replay_share_of_ceiling"]
        >= TARGETS["replay_share_of_ceiling"],
        "replay >= 10x baseline (Faust Tables)": ratios["replay_over_baseline_tables"]
        >= TARGETS["replay_over_baseline"],
        "replay >= 10x baseline (Faust, plain dicts)": ratios["replay_over_baseline_dicts"]
        >= TARGETS["replay_over_baseline"],
        "live 100k samples/s: lag bounded": bool(live100["lag_bounded"]),
        "live 100k samples/s: p99 <= 500 ms": live100["latency_p99_ms"]
        <= TARGETS["live_latency_p99_ms"],
        "state <= 2 KB per entity": worst_entity_bytes <= TARGETS["state_bytes_per_entity"],
        "state flat over the soak": bool(doc["memory"]["soak"]["flat"]),
    }
    return {"medians_samples_per_cpu_s": med, "ratios": ratios, "targets_met": met}


def _bench(args: argparse.Namespace) -> int:
    doc = run_all(args.quick, args.runs)
    doc["command"] = f"skewscope bench --json {args.json}" + (" --quick" if args.quick else "")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc["summary"], indent=1))
    return 0


def add_bench_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``skewscope bench``."""
    parser = sub.add_parser("bench", help="run the throughput, live and memory benchmarks")
    parser.add_argument("--json", required=True, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="small inputs, one run each")
    parser.add_argument("--runs", type=int, default=5, help="runs per throughput figure")
    parser.set_defaults(func=_bench)


def main() -> int:
    """``python -m bench.cli --json OUT [--quick]`` (the same as ``skewscope bench``)."""
    parser = argparse.ArgumentParser(prog="bench")
    sub = parser.add_subparsers(required=True)
    add_bench_commands(sub)
    args = parser.parse_args(["bench", *__import__("sys").argv[1:]])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
