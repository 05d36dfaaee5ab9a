"""The same episodes with the controller off, in dry-run and on; what changed, per condition.

For each episode (scenario, seed) :func:`compare_episode` runs the three modes and reports per
mode the metrics of :mod:`sinks.controller.metrics`, the actions taken and undone, refusals,
advisories and *wrong actions* (actions whose causing verdict matches no label of the
simulator: wrong entity or wrong condition, or no fault at that time), and for ``on`` against
``off`` the deltas and two judgements:

* ``improved``: p99 ITL down or goodput up by more than ``IMPROVE_RATIO`` (1 %);
* ``worse``: goodput down, or p99 ITL or p99 TTFT up, by more than ``WORSE_RATIO`` (1 %).

A condition is *applicable* when its runbook directive (or one of its causes' directives)
maps to an action (:data:`sinks.controller.policy.DIRECTIVE_ACTIONS`) and its latency class
is not advisory (:class:`sinks.controller.policy.PolicyConfig`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.runbook import load_runbook
from producers.sim import load_scenario
from producers.sim.faults import KINDS
from producers.sim.scenario import Scenario, bundled_scenarios
from sinks.controller.loop import EpisodeRun, LoopConfig, Mode, run_episode
from sinks.controller.policy import DIRECTIVE_ACTIONS, PolicyConfig

IMPROVE_RATIO = 0.01
WORSE_RATIO = 0.01
LABEL_GRACE_NS = 10_000_000_000
CLEAN = "clean"
MODES = (Mode.OFF, Mode.DRY_RUN, Mode.ON)


@dataclass(frozen=True)
class EpisodeSpec:
    scenario: str  # bundled name or TOML path
    seed: int = 1
    duration_s: float | None = None


def condition_of(scenario: Scenario) -> str:
    """The runbook condition a scenario injects (its first non-look-alike fault), or clean."""
    for fault in scenario.faults:
        condition = KINDS[fault.kind].condition
        if not condition.startswith("lookalike:"):
            return condition
    return CLEAN


def applicable(condition: str, policy: PolicyConfig | None = None) -> bool:
    """True when the policy acts on the condition: its directive (or a cause's) has an
    actuator and its runbook latency class is not advisory."""
    if condition == CLEAN:
        return False
    entry = load_runbook().condition(condition)
    if entry.latency_class in (policy or PolicyConfig()).advisory_classes:
        return False
    directives = {entry.directive, *(c.directive for c in entry.causes)}
    return any(d in DIRECTIVE_ACTIONS for d in directives)


def runbook_suite() -> list[str]:
    """Bundled scenarios named after a runbook condition, and ``clean``."""
    ids = {c.id for c in load_runbook().conditions}
    return [n for n in bundled_scenarios() if n in ids] + [CLEAN]


def suite_names(text: str) -> list[str]:
    """``runbook`` (every runbook scenario and clean) or comma-separated scenario names."""
    if text.strip() == "runbook":
        return runbook_suite()
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"--suite {text!r}: give 'runbook' or comma-separated scenario names")
    return names


def _matches(action: Mapping[str, Any], label: Mapping[str, Any]) -> bool:
    cause = action["verdict"]
    if cause["condition"] != label["condition"]:
        return False
    v, lab = str(cause["entity"]), str(label["entity"])
    same = v == lab or v.startswith(lab + "/") or lab.startswith(v + "/")
    if not (same or v == label.get("deployment")):
        return False
    end = label.get("end_ns")
    at = int(action["at_ns"])
    return int(label["onset_ns"]) <= at and (end is None or at <= int(end) + LABEL_GRACE_NS)


def wrong_actions(audit: Iterable[Mapping[str, Any]], labels: list[dict[str, Any]]) -> int:
    """Applied actions whose causing verdict matches no label (fail-closed ones excluded)."""
    return sum(
        1
        for e in audit
        if e["decision"] == "apply"
        and e["verdict"]["condition"] != "unknown"
        and not any(_matches(e, lab) for lab in labels)
    )


def mode_summary(run: EpisodeRun) -> dict[str, Any]:
    decisions = [e["decision"] for e in run.audit]
    return {
        **run.metrics.as_dict(),
        "actions_taken": decisions.count("apply"),
        "actions_undone": decisions.count("undo"),
        "refused": decisions.count("refuse"),
        "advisories": decisions.count("advisory"),
        "wrong_actions": wrong_actions(run.audit, run.labels),
        "records_written": run.records_written,
        "injected_written": run.injected_written,
        "wall_s": round(run.wall_s, 2),
    }


def _ratio(new: float, old: float) -> float:
    if not (math.isfinite(new) and math.isfinite(old)) or old == 0:
        return float("nan")
    return (new - old) / abs(old)


def judge(on: Mapping[str, Any], off: Mapping[str, Any]) -> dict[str, Any]:
    """Deltas of ``on`` against ``off`` and the improved / worse judgements."""
    itl = _ratio(on["itl_p99_ms"], off["itl_p99_ms"])
    ttft = _ratio(on["ttft_p99_ms"], off["ttft_p99_ms"])
    good = _ratio(on["goodput_tokens_per_s"], off["goodput_tokens_per_s"])
    if off["goodput_tokens_per_s"] == 0:
        good = math.inf if on["goodput_tokens_per_s"] > 0 else 0.0
    return {
        "itl_p99_change_ratio": round(itl, 4),
        "ttft_p99_change_ratio": round(ttft, 4),
        "goodput_change_ratio": round(good, 4),
        "itl_p50_change_ratio": round(_ratio(on["itl_p50_ms"], off["itl_p50_ms"]), 4),
        "ttft_p50_change_ratio": round(_ratio(on["ttft_p50_ms"], off["ttft_p50_ms"]), 4),
        "gpu_idle_change": round(on["gpu_idle_ratio"] - off["gpu_idle_ratio"], 4),
        "improved": bool(itl < -IMPROVE_RATIO or good > IMPROVE_RATIO),
        "worse": bool(good < -WORSE_RATIO or itl > WORSE_RATIO or ttft > WORSE_RATIO),
    }


def compare_episode(
    spec: EpisodeSpec, base: LoopConfig, audit_dir: Path | None = None
) -> dict[str, Any]:
    """Run one episode in the three modes; see the module docstring."""
    scenario = load_scenario(spec.scenario)
    condition = condition_of(scenario)
    runs: dict[str, EpisodeRun] = {}
    for mode in MODES:
        audit_path = None
        if audit_dir is not None and mode is not Mode.OFF:
            audit_path = audit_dir / f"{scenario.name}@{spec.seed}.{mode.value}.audit.jsonl"
            audit_path.unlink(missing_ok=True)
        config = dataclasses.replace(
            base, mode=mode, duration_s=spec.duration_s or base.duration_s, audit_path=audit_path
        )
        runs[mode.value] = run_episode(scenario, spec.seed, config)
    modes = {m: mode_summary(r) for m, r in runs.items()}
    on = runs[Mode.ON.value]
    return {
        "scenario": scenario.name,
        "seed": spec.seed,
        "condition": condition,
        "applicable": applicable(condition, base.controller.policy),
        "duration_s": on.duration_s,
        "modes": modes,
        "on_vs_off": judge(modes[Mode.ON.value], modes[Mode.OFF.value]),
        "dry_run_equals_off": _same_metrics(modes[Mode.DRY_RUN.value], modes[Mode.OFF.value]),
        "series": {m: r.series for m, r in runs.items()},
        "audit_on": on.audit,
        "labels": on.labels,
        "start_ns": on.start_ns,
    }


def _same_metrics(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    keys = ("ttft_p99_ms", "itl_p99_ms", "goodput_tokens_per_s", "gpu_idle_ratio")
    return all(a[k] == b[k] for k in keys)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per condition: episodes, improved / worse counts, mean changes and action counts."""
    out: dict[str, Any] = {}
    for row in rows:
        c = out.setdefault(
            row["condition"],
            {
                "applicable": row["applicable"],
                "episodes": 0,
                "improved": 0,
                "worse": 0,
                "off": {},
                "on": {},
                "actions_taken": 0,
                "actions_undone": 0,
                "wrong_actions": 0,
            },
        )
        c["episodes"] += 1
        c["improved"] += int(row["on_vs_off"]["improved"])
        c["worse"] += int(row["on_vs_off"]["worse"])
        on = row["modes"][Mode.ON.value]
        for key in ("actions_taken", "actions_undone", "wrong_actions"):
            c[key] += on[key]
        for mode in ("off", "on"):
            for k, v in row["modes"][mode].items():
                if isinstance(v, float):
                    c[mode].setdefault(k, []).append(v)
    for c in out.values():
        for mode in ("off", "on"):
            c[mode] = {k: round(sum(v) / len(v), 4) for k, v in c[mode].items()}
    return out


def _job(args: tuple[EpisodeSpec, LoopConfig, Path | None]) -> dict[str, Any]:
    return compare_episode(*args)


def run_experiment(
    specs: list[EpisodeSpec],
    base: LoopConfig,
    audit_dir: Path | None = None,
    processes: int = 1,
) -> Iterator[dict[str, Any]]:
    """Episode rows, in order (episodes in ``processes`` worker processes when > 1)."""
    jobs = [(s, base, audit_dir) for s in specs]
    if processes <= 1:
        yield from (_job(j) for j in jobs)
        return
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        yield from pool.imap(_job, jobs, chunksize=1)


def write_json(result: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(result), indent=1, sort_keys=True, allow_nan=False))


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as None and enums/paths as strings (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)
