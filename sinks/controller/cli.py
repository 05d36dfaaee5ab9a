"""``skewscope closed-loop``: the same episodes with the controller off, in dry-run and on.

    skewscope closed-loop --scenario tp-straggler --json out/cl.json --html out/cl.html
    skewscope closed-loop --suite runbook --seeds 3 --duration 60 --json out/cl.json \\
        --markdown out/cl.md --audit-dir out/audit
    skewscope closed-loop --scenario clean \\
        --inject-wrong llama70b-b/rank2:rank-hang:restart-rank:1.5

Redis comes from ``Settings.redis_url`` (``REDIS_URL``), the key prefix and credentials from
the ``[sinks]`` settings; every episode writes under its own prefix and removes it after.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from sinks.client import FailPolicy
from sinks.config import load_sink_config
from sinks.controller.controller import ControllerConfig
from sinks.controller.experiment import (
    EpisodeSpec,
    run_experiment,
    suite_names,
    summarize,
    write_json,
)
from sinks.controller.inject import WrongAttribution
from sinks.controller.loop import LoopConfig
from sinks.controller.metrics import SloSpec
from sinks.controller.policy import PolicyConfig
from sinks.controller.report import markdown_table, render
from sinks.controller.safety import S, SafetyConfig
from skewscope.config import load_settings


def add_closed_loop_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "closed-loop",
        help="run episodes with the controller off, in dry-run and on; report what changed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--scenario", help="bundled scenario name or TOML file")
    which.add_argument(
        "--suite", help="'runbook' (every runbook condition's scenario and clean) or A,B,C"
    )
    p.add_argument("--seeds", type=int, default=1, help="episodes per scenario (seeds 1..N)")
    p.add_argument("--duration", type=float, default=None, help="seconds (default: scenario's)")
    p.add_argument("--json", type=Path, help="write the full result here")
    p.add_argument("--html", type=Path, help="write the HTML report here")
    p.add_argument("--markdown", type=Path, help="write the per-condition Markdown table here")
    p.add_argument("--audit-dir", type=Path, help="write one audit JSON-lines file per run")
    p.add_argument(
        "--fail-closed", action="store_true", help="unknown health: avoid (default open)"
    )
    p.add_argument("--cap", type=float, default=0.25, help="max share of capacity removed")
    p.add_argument("--dwell", type=float, default=10.0, help="min seconds before an undo")
    p.add_argument(
        "--min-score",
        type=float,
        default=0.0,
        help="act only on verdicts with severity x confidence >= this (others advisory)",
    )
    p.add_argument(
        "--inject-wrong",
        action="append",
        default=[],
        metavar="ENTITY:CONDITION:DIRECTIVE[:FLAP_S]",
        help="inject a wrong attribution into the verdicts (repeatable)",
    )
    p.add_argument("--processes", type=int, default=1, help="episodes run in parallel")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    config_file = Path(args.config) if args.config else None
    settings = load_settings(config_file)
    safety = SafetyConfig(max_capacity_removed_ratio=args.cap, min_dwell_ns=round(args.dwell * S))
    base = LoopConfig(
        duration_s=args.duration,
        redis_url=settings.redis_url,
        sink=load_sink_config(config_file),
        controller=ControllerConfig(
            safety=safety,
            policy=PolicyConfig(min_score=args.min_score),
            unknown_policy=FailPolicy.CLOSED if args.fail_closed else FailPolicy.OPEN,
        ),
        wrong=tuple(WrongAttribution.parse(w) for w in args.inject_wrong),
        slo=SloSpec(),
    )
    names = [args.scenario] if args.scenario else suite_names(args.suite)
    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds}: need at least 1")
    specs = [
        EpisodeSpec(n, seed, args.duration) for n in names for seed in range(1, args.seeds + 1)
    ]
    started = time.perf_counter()
    rows = []
    for row in run_experiment(specs, base, args.audit_dir, args.processes):
        rows.append(row)
        off, on, j = row["modes"]["off"], row["modes"]["on"], row["on_vs_off"]
        print(
            f"{row['scenario']}@{row['seed']}: p99 ITL {off['itl_p99_ms']:.1f} -> "
            f"{on['itl_p99_ms']:.1f} ms, goodput {off['goodput_tokens_per_s']:.0f} -> "
            f"{on['goodput_tokens_per_s']:.0f} tok/s, actions {on['actions_taken']} "
            f"(undone {on['actions_undone']}, wrong {on['wrong_actions']}); improved "
            f"{j['improved']}, worse {j['worse']} [{time.perf_counter() - started:.0f} s]",
            flush=True,
        )
    result: dict[str, Any] = {
        "config": {
            "episodes": len(specs),
            "seeds": args.seeds,
            "duration_s": args.duration,
            "cap": args.cap,
            "dwell_s": args.dwell,
            "min_score": args.min_score,
            "fail_closed": args.fail_closed,
            "inject_wrong": args.inject_wrong,
            "slo": vars(base.slo),
        },
        "conditions": summarize(rows),
        "episodes": rows,
    }
    table = markdown_table(result["conditions"])
    sys.stdout.write(table)
    if args.json:
        write_json(result, args.json)
    if args.html:
        args.html.parent.mkdir(parents=True, exist_ok=True)
        args.html.write_text(render(result), encoding="utf-8")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table, encoding="utf-8")
    return 0
