"""The closed-loop report: one self-contained HTML file (inline CSS and SVG, no assets).

Sections: per condition, the figures of the controller off and on (means over episodes) with
the improved / worse counts; per episode, the three modes side by side and time series of
p99 TTFT, p99 ITL, goodput, GPU idle and capacity removed (off, dry-run and on overlaid), with
the on-run's actions (apply above, undo below) as marks on a band.

Limits: time series are per 1 s bin; a dry-run series equal to the off one is drawn under it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from html import escape
from typing import Any

from streams.replay.report import html_table
from streams.replay.svg import COLORS, Canvas

MODE_COLORS = {"off": "#7a7a7a", "dry-run": "#457b9d", "on": "#e63946"}
PANELS = (
    ("ttft_p99_s", "p99 TTFT (s)"),
    ("itl_p99_ms", "p99 ITL (ms)"),
    ("goodput_tokens_per_s", "goodput (tokens/s)"),
    ("gpu_idle_ratio", "GPU idle ratio"),
    ("capacity_removed_ratio", "capacity removed"),
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222}
h1{font-size:22px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
h3{font-size:14px;font-family:monospace}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}
th{background:#f4f4f4} td.name,th.name{text-align:left}
.note{color:#666;font-size:12px} .good{color:#1a7f37} .bad{color:#c62828}
"""


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return escape(str(value))


def _pct(value: Any) -> str:
    if value is None or not isinstance(value, int | float) or not math.isfinite(value):
        return "–"
    css = "good" if value < 0 else "bad" if value > 0 else ""
    return f'<span class="{css}">{value:+.1%}</span>'


def _pct_up(value: Any) -> str:
    """A change where up is good (goodput)."""
    if value is None or not isinstance(value, int | float) or not math.isfinite(value):
        return "–"
    css = "good" if value > 0 else "bad" if value < 0 else ""
    return f'<span class="{css}">{value:+.1%}</span>'


def _multi_panel(
    canvas: Canvas, title: str, series: Mapping[str, list[tuple[float, float]]], h: int = 80
) -> None:
    """Several series on one shared y scale (off, dry-run, on)."""
    top = canvas.height + 8
    values = [y for pts in series.values() for _, y in pts if math.isfinite(y)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 1.0, hi + 1.0

    def y(v: float) -> float:
        return top + h - (v - lo) / (hi - lo) * h

    parts = canvas.parts
    parts.append(
        f'<rect x="{canvas.left}" y="{top}" width="{canvas.width - canvas.left - canvas.right}" '
        f'height="{h}" fill="none" stroke="#ddd"/>'
    )
    parts.append(
        f'<text class="axis" x="{canvas.left - 6}" y="{top + h / 2:.1f}" text-anchor="end" '
        f'font-size="10" fill="{COLORS["axis"]}">{escape(title)}</text>'
    )
    for v, anchor in ((hi, top + 10), (lo, top + h)):
        parts.append(
            f'<text class="axis" x="{canvas.left + 3}" y="{anchor:.1f}" font-size="9" '
            f'fill="{COLORS["axis"]}">{v:.4g}</text>'
        )
    for mode, pts in series.items():
        finite = [(px, py) for px, py in pts if math.isfinite(py)]
        if len(finite) < 2:
            continue
        coords = " ".join(f"{canvas.x(px):.1f},{y(py):.1f}" for px, py in finite)
        dash = ' stroke-dasharray="5 3"' if mode == "dry-run" else ""
        parts.append(
            f'<polyline class="series mode-{escape(mode)}" points="{coords}" fill="none" '
            f'stroke="{MODE_COLORS.get(mode, COLORS["series"])}" stroke-width="1.5"{dash}>'
            f"<title>{escape(mode)}</title></polyline>"
        )
    canvas.height = top + h + 2


def _actions_band(canvas: Canvas, audit: list[dict[str, Any]], start_ns: int) -> None:
    y = canvas.height + 4
    canvas.parts.append(
        f'<text class="axis" x="{canvas.left - 6}" y="{y + 12}" text-anchor="end" '
        f'font-size="10" fill="{COLORS["axis"]}">actions (on)</text>'
    )
    for e in audit:
        if e["decision"] not in ("apply", "undo") or e["action"] is None:
            continue
        x = canvas.x((e["at_ns"] - start_ns) / 1e9)
        up = e["decision"] == "apply"
        pts = f"{x - 4:.1f},{y + 14} {x + 4:.1f},{y + 14} {x:.1f},{y + 4}"
        if not up:
            pts = f"{x - 4:.1f},{y + 4} {x + 4:.1f},{y + 4} {x:.1f},{y + 14}"
        text = (
            f"{e['decision']} {e['action']['kind']} {e['action']['target']} at "
            f"{(e['at_ns'] - start_ns) / 1e9:.2f} s; verdict {e['verdict']['entity']} "
            f"{e['verdict']['condition']} v{e['verdict']['version']}"
        )
        color = "#e63946" if up else "#2a9d8f"
        canvas.parts.append(
            f'<polygon class="point action-{e["decision"]}" points="{pts}" fill="{color}">'
            f"<title>{escape(text)}</title></polygon>"
        )
    canvas.height = y + 20


def episode_svg(row: Mapping[str, Any], width: int = 760) -> str:
    series = row["series"]
    t = series["on"]["t_s"]
    canvas = Canvas(width, 0.0, max(t) if t else 1.0, left=150)
    for key, title in PANELS:
        by_mode = {
            mode: list(zip(s["t_s"], s.get(key, []), strict=False))
            for mode, s in series.items()
            if not (key == "capacity_removed_ratio" and mode == "off")
        }
        _multi_panel(canvas, title, by_mode)
    _actions_band(canvas, row.get("audit_on", []), row["start_ns"])
    canvas.x_axis()
    return canvas.svg(f"{row['scenario']} seed {row['seed']}")


def _condition_rows(conditions: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for cid, c in sorted(conditions.items()):
        off, on = c["off"], c["on"]
        rows.append(
            [
                escape(cid),
                _fmt(c["applicable"]),
                str(c["episodes"]),
                f"{_fmt(off.get('itl_p99_ms'))} → {_fmt(on.get('itl_p99_ms'))}",
                f"{_fmt(off.get('ttft_p99_ms'))} → {_fmt(on.get('ttft_p99_ms'))}",
                f"{_fmt(off.get('goodput_tokens_per_s'))} → {_fmt(on.get('goodput_tokens_per_s'))}",
                f"{_fmt(off.get('gpu_idle_ratio'))} → {_fmt(on.get('gpu_idle_ratio'))}",
                str(c["actions_taken"]),
                str(c["actions_undone"]),
                str(c["wrong_actions"]),
                f"{c['improved']}/{c['episodes']}",
                f"{c['worse']}/{c['episodes']}",
            ]
        )
    return rows


def _episode_section(row: Mapping[str, Any]) -> str:
    head = ["mode", "ITL p50 ms", "ITL p99 ms", "TTFT p50 ms", "TTFT p99 ms", "goodput tok/s"]
    head += ["GPU idle", "actions", "undone", "refused", "advisory", "wrong"]
    rows = []
    for mode, m in row["modes"].items():
        rows.append(
            [
                escape(mode),
                *(
                    _fmt(m[k])
                    for k in (
                        "itl_p50_ms",
                        "itl_p99_ms",
                        "ttft_p50_ms",
                        "ttft_p99_ms",
                        "goodput_tokens_per_s",
                        "gpu_idle_ratio",
                    )
                ),
                *(
                    str(m[k])
                    for k in (
                        "actions_taken",
                        "actions_undone",
                        "refused",
                        "advisories",
                        "wrong_actions",
                    )
                ),
            ]
        )
    j = row["on_vs_off"]
    verdict = (
        f"on vs off: p99 ITL {_pct(j['itl_p99_change_ratio'])}, p99 TTFT "
        f"{_pct(j['ttft_p99_change_ratio'])}, goodput {_pct_up(j['goodput_change_ratio'])}; "
        f"improved: {_fmt(j['improved'])}, worse: {_fmt(j['worse'])}; dry-run equals off: "
        f"{_fmt(row['dry_run_equals_off'])}"
    )
    return (
        f'<section class="episode"><h3>{escape(row["scenario"])} seed {row["seed"]} '
        f"({escape(row['condition'])}, {row['duration_s']:g} s)</h3>"
        f"{html_table(head, rows)}<p class='note'>{verdict}</p>{episode_svg(row)}</section>"
    )


def render(result: Mapping[str, Any]) -> str:
    """The HTML report of a :func:`sinks.controller.experiment.run_experiment` result."""
    head = ["condition", "applicable", "episodes", "p99 ITL ms off → on"]
    head += ["p99 TTFT ms off → on", "goodput tok/s off → on", "GPU idle off → on"]
    head += ["actions", "undone", "wrong", "improved", "worse"]
    cfg = escape(str(result.get("config", {})))
    legend = " ".join(
        f'<span style="color:{c}">■ {escape(m)}</span>' for m, c in MODE_COLORS.items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>skewscope closed loop"
        f"</title><style>{_CSS}</style></head><body><h1>skewscope closed loop</h1>"
        f"<p class='note'>configuration: {cfg}</p>"
        "<h2>Per condition (means over episodes)</h2>"
        f"{html_table(head, _condition_rows(result['conditions']))}"
        f"<h2>Episodes</h2><p class='note'>{legend}; ▲ apply, ▼ undo (on run)</p>"
        + "".join(_episode_section(r) for r in result["episodes"])
        + "</body></html>"
    )


def _md_num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}g}"


def _md_pct(new: Any, old: Any) -> str:
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in (new, old)) or not old:
        return "–"
    return f"{(new - old) / abs(old):+.1%}"


def markdown_table(conditions: Mapping[str, Any]) -> str:
    """Per-condition figures as a Markdown table (for docs/closed-loop.md): means over the
    episodes, off -> on, and the change of the means."""
    lines = [
        "| condition | acts | episodes | ITL p50 ms | ITL p99 ms | TTFT p50 ms | TTFT p99 ms | "
        "goodput tok/s | GPU idle | actions | undone | wrong | improved | worse |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = ("itl_p50_ms", "itl_p99_ms", "ttft_p50_ms", "ttft_p99_ms", "goodput_tokens_per_s")
    for cid, c in sorted(conditions.items()):
        off, on = c["off"], c["on"]
        cells = [cid, "yes" if c["applicable"] else "no", str(c["episodes"])]
        for key in keys:
            a, b = off.get(key), on.get(key)
            cells.append(f"{_md_num(a)} → {_md_num(b)} ({_md_pct(b, a)})")
        idle_off, idle_on = off.get("gpu_idle_ratio"), on.get("gpu_idle_ratio")
        cells.append(f"{_md_num(idle_off, 3)} → {_md_num(idle_on, 3)}")
        cells += [str(c["actions_taken"]), str(c["actions_undone"]), str(c["wrong_actions"])]
        cells += [f"{c['improved']}/{c['episodes']}", f"{c['worse']}/{c['episodes']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
