"""The evaluate JSON as a Markdown table (for docs/detection.md): values, Wilson intervals,
targets, and which targets are met."""

from __future__ import annotations

from typing import Any

LATENCY_TARGET_S = {"acute": 2.0, "load": 10.0, "config": 60.0}
F1_TARGET = 0.95
ATTRIBUTION_TARGET = 0.9


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ci(ci: list[float] | None) -> str:
    return "-" if not ci else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def markdown(result: dict[str, Any]) -> str:
    rows = [
        "| condition | class | F1 | F1 95% CI | precision | recall | attribution | "
        "latency p50 s | p95 s | episodes | targets met |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cid, r in result["conditions"].items():
        target = LATENCY_TARGET_S[r["class"]]
        met = (
            r["f1"] is not None
            and r["f1"] >= F1_TARGET
            and (r["attribution"] or 0) >= ATTRIBUTION_TARGET
            and r["latency_p50_s"] is not None
            and r["latency_p50_s"] <= target
        )
        rows.append(
            f"| {cid} | {r['class']} | {_num(r['f1'])} | {_ci(r['f1_ci95'])} | "
            f"{_num(r['precision'])} | {_num(r['recall'])} | {_num(r['attribution'])} | "
            f"{_num(r['latency_p50_s'])} | {_num(r['latency_p95_s'])} | {r['episodes']} | "
            f"{'yes' if met else 'no'} |"
        )
    lines = ["\n".join(rows), ""]
    for name, clean in result.get("clean", {}).items():
        lines.append(
            f"- clean `{name}`{_stretch(clean)}: {clean['false_verdicts']} false verdict "
            f"episodes in {clean['node_hours']:.3f} node-hours "
            f"({clean['false_per_node_hour']} per node-hour), "
            f"utilization {clean['utilization']:.0%}{_parts(clean)}; "
            f"by condition {clean['by_condition']}"
        )
    for name, seg in result.get("clean_segments", {}).items():
        low, high = seg["utilization_range"] or (0.0, 0.0)
        lines.append(
            f"- `{name}` over its whole trace, {seg['segments']} stretches of "
            f"{seg['duration_s']:g} s (offsets spread evenly, compression "
            f"{seg['time_compression']:g}): {seg['false_verdicts']} false verdict episodes in "
            f"{seg['node_hours']:.3f} node-hours ({seg['false_per_node_hour']} per node-hour), "
            f"by condition {seg['by_condition']}; utilization median "
            f"{seg['utilization_median']:.0%} ({low:.0%}-{high:.0%}); true load-harm labels "
            f"{seg['load_labels']} (verdicts answering them are not counted false)"
        )
    novel = result.get("novel")
    if novel:
        lines.append(
            f"- novel fault (periodic 200 ms NIC stalls): `unattributed-anomaly` in "
            f"{_num(novel['recall'])} of {novel['episodes']} episodes "
            f"(95% CI {_ci(novel['recall_ci95'])}), misread as a runbook condition in "
            f"{novel['misread_as_runbook']}; {novel['false_per_node_hour']} false anomalies "
            "per node-hour on the clean traces"
        )
    return "\n".join(lines) + "\n"


def _parts(clean: dict[str, Any]) -> str:
    """The shares behind the utilization (models/utilization.py), when the run has them."""
    parts = clean.get("utilization_parts")
    if not parts:
        return ""
    return (
        f" (mean of the largest share per sample; means: batch {parts['batch']:.0%}, "
        f"KV {parts['kv']:.0%}, prefill {parts['prefill']:.0%})"
    )


def _stretch(clean: dict[str, Any]) -> str:
    """Where in its trace the clean run ran, when the run records it."""
    if clean.get("time_compression") is None:
        return ""
    return f" ({clean['time_compression']:g}x from {clean.get('trace_offset_s') or 0:g} s)"
