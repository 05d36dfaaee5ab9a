"""Render the tables of BENCHMARKS.md from a ``skewscope bench --json`` file.

.venv/bin/python -m bench.report bench/results/bench.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _header(first: str, *rest: str) -> str:
    """A markdown table header: first column left-aligned, the others right-aligned."""
    return f"| {first} | {' | '.join(rest)} |\n|---|{'---:|' * len(rest)}"


def _k(x: float) -> str:
    return f"{x:,.0f}"


def render(doc: dict[str, Any]) -> str:
    """Markdown: machine, frame format, throughput medians and ratios, live, memory, targets."""
    m, p, tp = doc["machine"], doc["prefill"], doc["throughput"]
    out = [
        f"Machine: {m['cpu_model']}, {m['nproc']} cores, `{m['uname']}`; load average at "
        f"start {m['load_avg_1_5_15']}. Python {m['python']}, confluent-kafka "
        f"{m['confluent_kafka']} (librdkafka {m['librdkafka']}), faust-streaming "
        f"{m['faust_streaming']}, aiokafka {m['aiokafka']}, numpy {m['numpy']}, fastavro "
        f"{m['fastavro']}, river {m['river']}, redis-py {m['redis_py']}.",
        "",
        f"Pre-fill: {p['scenario']}, {p['sim_seconds']:g} s of event time, "
        f"{_k(p['messages'])} messages, {_k(p['samples'])} samples, "
        f"{p['bytes'] / 1e6:.1f} MB, {p['partitions']} partitions.",
        "",
        "| schema | frames | samples/frame | bytes/frame | bytes/sample |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in p["by_schema"].items():
        out.append(
            f"| {name} | {_k(row['frames'])} | {row['samples_per_frame']:.1f} | "
            f"{_k(row['bytes_per_frame'])} | {row['bytes_per_sample']:.1f} |"
        )
    out += ["", _header("measurement", "median samples/s per core", "min", "max", "runs")]
    for name, row in tp.items():
        s = row["samples_per_cpu_s"]
        out.append(
            f"| {name} | {_k(s['median'])} | {_k(s['min'])} | {_k(s['max'])} | {s['runs']:.0f} |"
        )
    summary = doc["summary"]
    out += ["", "| ratio (medians) | value |", "|---|---:|"]
    for name, value in summary["ratios"].items():
        out.append(f"| {name} | {value:.3f} |")
    out += [
        "",
        _header("live run", "offered", "achieved", "worker core", "p50 ms", "p99 ms", "probes",
                "lag bounded", "max lag (msgs)"),
    ]  # fmt: skip
    for run in doc["live"]:
        out.append(
            f"| {run['scenario']} ({run['gpus']} GPUs) | {_k(run['offered_rate_per_s'])} | "
            f"{_k(run['achieved_rate_per_s'])} | {run['worker_core_utilization']:.0%} | "
            f"{run['latency_p50_ms']:,.0f} | {run['latency_p99_ms']:,.0f} | "
            f"{run['latency_probes']} | {run['lag_bounded']} | "
            f"{run['lag_max_messages_while_sending']} |"
        )
    out += [
        "",
        _header("scale", "GPUs", "tracked entities", "state bytes", "bytes/entity", "largest"),
    ]
    for row in doc["memory"]["scales"]:
        parts = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in row["largest_parts_bytes"].items())
        out.append(
            f"| {row['scale']}x | {row['gpus']} | {_k(row['tracked_entities'])} | "
            f"{_k(row['state_bytes'])} | {_k(row['state_bytes_per_entity'])} | {parts} |"
        )
    soak = doc["memory"]["soak"]
    series = ", ".join(f"{s['event_s']:.0f} s: {_k(s['state_bytes'])}" for s in soak["series"])
    out += [
        "",
        f"Soak ({soak['event_seconds']:g} s event time, 1x): {series}; flat: {soak['flat']}.",
    ]
    out += ["", "| target | met |", "|---|---|"]
    for name, met in summary["targets_met"].items():
        out.append(f"| {name} | {'yes' if met else 'NO'} |")
    out += ["", "Replay hot spots (cProfile, own time):", ""]
    out += [_header("function", "calls", "own s", "share")]
    for row in doc["replay_hot_spots"][:12]:
        out.append(
            f"| `{row['function']}` | {_k(row['calls'])} | {row['own_s']:.2f} | "
            f"{row['own_share']:.0%} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m bench.report RESULTS.json", file=sys.stderr)
        return 2
    print(render(json.loads(Path(args[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
