"""``skewscope evaluate``: score the detector on the randomized suite."""

from __future__ import annotations

import argparse
from pathlib import Path


def _evaluate(args: argparse.Namespace) -> int:
    from models.evaluate import evaluate, write

    if not args.suite:
        raise ValueError("nothing to evaluate: pass --suite (the randomized fault suite)")
    dropped = frozenset(s for s in args.without_sources.split(",") if s)
    unknown = dropped - {"engine", "nccl", "gpu", "nic", "dpu"}
    if unknown:
        raise ValueError(f"--without-sources: unknown sources {sorted(unknown)}")
    result = evaluate(
        episodes_per_condition=args.episodes,
        seed=args.seed,
        without_sources=dropped,
        duration_s=args.duration_s,
        clean_duration_s=args.clean_duration_s,
        runbook_path=args.runbook or "",
        processes=args.processes,
        novel_episodes=args.novel_episodes,
        clean_segments=args.clean_segments,
        frame_interval_ms=args.frame_interval_ms,
    )
    write(result, Path(args.json))
    if args.markdown:
        from models.report_table import markdown

        Path(args.markdown).write_text(markdown(result))
    print(f"{'condition':<26}{'F1':>6}{'attr':>6}{'p50 s':>7}  class")
    for cid, row in result["conditions"].items():
        f1, attr, p50 = row["f1"], row["attribution"], row["latency_p50_s"]
        print(f"{cid:<26}{_fmt(f1):>6}{_fmt(attr):>6}{_fmt(p50):>7}  {row['class']}")
    for name, clean in result["clean"].items():
        print(
            f"clean {name}: {clean['false_verdicts']} false verdicts in "
            f"{clean['node_hours']:.3f} node-hours (utilization {clean['utilization']:.0%})"
        )
    for name, seg in result.get("clean_segments", {}).items():
        print(
            f"clean {name}, {seg['segments']} stretches: {seg['false_verdicts']} false verdicts "
            f"in {seg['node_hours']:.3f} node-hours {seg['by_condition']}"
        )
    novel = result["novel"]
    print(
        f"novel fault (periodic NIC stalls): unattributed-anomaly in {novel['recall']} of "
        f"{novel['episodes']} episodes; {novel['false_per_node_hour']} false per node-hour"
    )
    print(f"wrote {args.json}")
    return 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def add_evaluate_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("evaluate", help="score the detector on the randomized fault suite")
    parser.add_argument("--suite", action="store_true", help="run the randomized suite")
    parser.add_argument("--episodes", type=int, default=30, help="reference episodes per condition")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--duration-s", type=float, default=30.0, help="simulated seconds per episode"
    )
    parser.add_argument("--clean-duration-s", type=float, default=120.0, help="per Azure clean run")
    parser.add_argument(
        "--clean-segments",
        type=int,
        default=0,
        help="also replay N stretches spread over each whole Azure trace (false verdicts there)",
    )
    parser.add_argument("--without-sources", default="", help="ablation, e.g. dpu,nic")
    parser.add_argument("--runbook", help="runbook TOML (default: the bundled one)")
    parser.add_argument("--novel-episodes", type=int, default=3, help="novel-fault episodes")
    parser.add_argument(
        "--processes", type=int, default=0, help="worker processes (0: one per core)"
    )
    parser.add_argument(
        "--frame-interval-ms",
        type=int,
        help="telemetry frame period of every episode (default: each scenario's, 200 ms)",
    )
    parser.add_argument("--json", required=True, help="where to write the metrics JSON")
    parser.add_argument("--markdown", help="also write the table as Markdown")
    parser.set_defaults(func=_evaluate)
