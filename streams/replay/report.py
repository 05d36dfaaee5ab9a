"""The backtest report: one self-contained HTML file (inline CSS, inline SVG, a few lines of
inline script that measure the drawn plots; no external assets, no CDN).

Sections: summary and speed; per-condition scores (side by side with ``--compare``); the
root-cause confusion matrix (label condition x condition of the first answering verdict);
detection-latency distributions; per-entity timelines with fault-label spans and verdict
spans overlaid on the key evidence features (FeatureWindow features when the run emitted
them, else the evidence values carried by the verdict records themselves).

Limits: at most ``max_entities`` timelines (labelled entities first) and 3 feature panels per
entity; series are thinned to ``max_points`` points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Any

from models.scoring import confusion, episodes, match_labels
from streams.replay.backtest import RunResult
from streams.replay.svg import COLORS, Canvas, strip_plot

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222}
h1{font-size:22px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}
th{background:#f4f4f4} td.name,th.name{text-align:left}
.entity{margin:14px 0} .entity h3{font-size:13px;margin:4px 0;font-family:monospace}
.note{color:#666;font-size:12px} .side{display:flex;gap:24px;flex-wrap:wrap}
"""

# Measures what the browser actually drew, for humans (hover) and headless checks.
_SCRIPT = """
document.addEventListener('DOMContentLoaded', function () {
  var plots = document.querySelectorAll('svg.plot'); var ok = 0;
  plots.forEach(function (svg) {
    var marks = svg.querySelectorAll('.series,.point,.label-span,.verdict-span,.bar');
    var w = 0, h = 0;
    marks.forEach(function (m) { var b = m.getBBox(); w = Math.max(w, b.width);
                                 h = Math.max(h, b.height); });
    svg.setAttribute('data-marks', marks.length);
    svg.setAttribute('data-drawn-width', w.toFixed(1));
    svg.setAttribute('data-drawn-height', h.toFixed(1));
    if (marks.length > 0 && w > 0 && h > 0) { ok += 1; }
  });
  document.body.setAttribute('data-plots', plots.length);
  document.body.setAttribute('data-plots-drawn', ok);
});
"""


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v, digits) for v in value) + "]"
    return escape(str(value))


def html_table(head: Sequence[str], rows: list[list[str]], name_cols: int = 1) -> str:
    """An HTML table; the first ``name_cols`` columns are names (left-aligned by the CSS)."""
    th = "".join(
        f'<th class="{"name" if i < name_cols else ""}">{escape(h)}</th>'
        for i, h in enumerate(head)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"name" if i < name_cols else ""}">{c}</td>' for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def _scores(runs: list[tuple[RunResult, dict[str, Any]]]) -> str:
    keys = ("f1", "f1_ci95", "precision", "recall", "attribution", "latency_p50_s", "episodes")
    head = ["condition", "class", "labels"]
    for run, _ in runs:
        head += [f"{run.config.name} {k}" for k in keys]
    conds = runs[0][1]["evaluation"]["conditions"]
    rows = []
    for cid, base in conds.items():
        if not base["labels"] and not any(
            doc["evaluation"]["conditions"].get(cid, {}).get("episodes") for _, doc in runs
        ):
            continue
        row = [escape(cid), escape(base["class"]), str(base["labels"])]
        for _, doc in runs:
            c = doc["evaluation"]["conditions"].get(cid, {})
            row += [_fmt(c.get(k)) for k in keys]
        rows.append(row)
    if not rows:
        return '<p class="note">No labels and no verdict episodes of any runbook condition.</p>'
    return html_table(head, rows, 2)


def _confusion(run: RunResult, labels: list[dict[str, Any]], grace_ns: float) -> str:
    table = confusion(match_labels(labels, episodes(run.verdicts), grace_ns))
    if not table:
        return '<p class="note">No labels: no confusion matrix.</p>'
    cols = [*sorted({c for row in table.values() for c in row} - {"none"}), "none"]
    rows = []
    for label_cond, row in table.items():
        total = sum(row.values()) or 1
        cells = [escape(label_cond)]
        for c in cols:
            n = row.get(c, 0)
            right = c == label_cond or (label_cond.startswith("lookalike:") and c == "none")
            hue = "42,157,143" if right else "230,57,70"
            alpha = 0.15 + 0.75 * n / total if n else 0
            style = f' style="background:rgba({hue},{alpha:.2f})"' if n else ""
            cells.append(f"<span{style}>&nbsp;{n}&nbsp;</span>" if n else "")
        rows.append(cells)
    return html_table(["label \\ first verdict", *cols], rows)


def _latencies(
    runs: list[tuple[RunResult, dict[str, Any]]], labels: list[dict[str, Any]], grace_ns: float
) -> str:
    rows: list[tuple[str, list[float], str]] = []
    for run, _ in runs:
        color = COLORS.get(run.config.name, COLORS["A"])
        per: dict[str, list[float]] = {}
        for o in match_labels(labels, episodes(run.verdicts), grace_ns):
            if o.latency_s is not None:
                per.setdefault(o.label["condition"], []).append(o.latency_s)
        for cond, values in sorted(per.items()):
            rows.append((f"{run.config.name} {cond}", values, color))
    if not rows:
        return '<p class="note">No detected label: no latency distribution.</p>'
    hi = max(v for _, values, _ in rows for v in values)
    return strip_plot(rows, x_hi=max(hi * 1.05, 0.5))


def _entities(runs: list[RunResult], labels: list[dict[str, Any]], limit: int) -> list[str]:
    order: dict[str, float] = {}
    for x in sorted(labels, key=lambda x: x["onset_ns"]):
        order.setdefault(x["entity"], x["onset_ns"])
    ranked = list(order)
    later: dict[str, int] = {}
    for run in runs:
        for e in episodes(run.verdicts):
            if e.entity not in order:
                later.setdefault(e.entity, e.start_ns)
    ranked += sorted(later, key=lambda k: later[k])
    return ranked[:limit]


def _thin(points: list[tuple[float, float]], max_points: int) -> list[tuple[float, float]]:
    if len(points) <= max_points:
        return points
    step = math.ceil(len(points) / max_points)
    return points[::step]


def _series(
    entity: str, runs: list[RunResult], conditions: set[str], max_points: int, t0_ns: int
) -> list[tuple[str, list[tuple[float, float]], float | None]]:
    """(feature, points, threshold) for the evidence features of ``conditions``."""
    run = runs[0]
    thresholds: dict[str, float] = {}
    for cond in run.config.runbook.conditions:
        if cond.id in conditions:
            for ev in cond.evidence:
                thresholds.setdefault(ev.feature, ev.threshold)
    found = run.features.get(entity, {})
    out: list[tuple[str, list[tuple[float, float]], float | None]] = []
    if found:
        for name in thresholds:
            if name in found:
                pts = [((t - t0_ns) / 1e9, v) for t, v in found[name]]
                out.append((name, _thin(pts, max_points), thresholds[name]))
    else:
        from_verdicts: dict[str, list[tuple[float, float]]] = {}
        for v in run.verdicts:
            if v["entity"] == entity and v["state"] == "firing":
                for ev in v["evidence"]:
                    thresholds.setdefault(ev["feature"], ev["threshold"])
                    from_verdicts.setdefault(ev["feature"], []).append(
                        ((v["last_seen_ns"] - t0_ns) / 1e9, ev["value"])
                    )
        out = [(k, _thin(p, max_points), thresholds.get(k)) for k, p in from_verdicts.items()]
    return out[:3]


def _timeline(
    entity: str,
    runs: list[RunResult],
    labels: list[dict[str, Any]],
    t0_ns: int,
    t1_ns: int,
    max_points: int,
) -> str:
    canvas = Canvas(960, 0.0, (t1_ns - t0_ns) / 1e9)
    mine = [x for x in labels if x["entity"] == entity]
    spans = []
    for x in mine:
        end = x["end_ns"] if x.get("end_ns") is not None else t1_ns
        look = str(x["condition"]).startswith("lookalike:")
        spans.append(
            (
                (x["onset_ns"] - t0_ns) / 1e9,
                (end - t0_ns) / 1e9,
                str(x["condition"]),
                COLORS["lookalike" if look else "label"],
                "label-span",
            )
        )
    canvas.band("fault labels", spans)
    conditions = {str(x["condition"]) for x in mine}
    for run in runs:
        vspans = []
        for e in episodes(run.verdicts):
            if e.entity == entity:
                end = e.end_ns if e.end_ns is not None else t1_ns
                vspans.append(
                    (
                        (e.start_ns - t0_ns) / 1e9,
                        (end - t0_ns) / 1e9,
                        e.condition,
                        COLORS.get(run.config.name, COLORS["A"]),
                        "verdict-span",
                    )
                )
                conditions.add(e.condition)
        canvas.band(f"{run.config.name} verdicts", vspans)
    for name, points, threshold in _series(entity, runs, conditions, max_points, t0_ns):
        canvas.panel(name, points, threshold)
    canvas.x_axis()
    return f'<div class="entity"><h3>{escape(entity)}</h3>{canvas.svg(entity)}</div>'


def render_report(
    source: dict[str, Any],
    runs: list[tuple[RunResult, dict[str, Any]]],
    labels: list[dict[str, Any]],
    grace_ns: float,
    max_entities: int = 30,
    max_points: int = 600,
) -> str:
    """The HTML document. ``runs`` pairs each replay with its JSON section
    (:func:`streams.replay.backtest.evaluate`); the first is the baseline."""
    results = [r for r, _ in runs]
    starts = [r.stats.event_first_ns for r in results if r.stats.event_first_ns is not None]
    ends = [r.stats.event_last_ns for r in results if r.stats.event_last_ns is not None]
    starts += [x["onset_ns"] for x in labels]
    ends += [x["end_ns"] for x in labels if x.get("end_ns") is not None]
    for run in results:
        eps = episodes(run.verdicts)
        ends += [e.end_ns if e.end_ns is not None else e.start_ns for e in eps]
        ends += [pts[-1][0] for series in run.features.values() for pts in series.values() if pts]
    t0 = min(starts) if starts else 0
    t1 = max(ends) if ends else t0 + 1
    t1 = max(t1, t0 + 1)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        "<title>skewscope backtest</title>",
        f"<style>{_CSS}</style><script>{_SCRIPT}</script></head><body>",
        "<h1>skewscope backtest</h1>",
        f'<p class="note">{escape(_describe(source))}; event time t=0 at {t0} ns; '
        f"grace {grace_ns / 1e9:g} s; {len(labels)} labels.</p>",
        "<h2>Runs</h2>",
        _runs_table(runs),
        "<h2>Scores per condition</h2>",
        _scores(runs),
        "<h2>Root-cause confusion</h2>",
        '<div class="side">',
    ]
    for run, _ in runs:
        parts.append(f"<div><h3>{escape(run.config.name)}</h3>")
        parts.append(_confusion(run, labels, grace_ns) + "</div>")
    parts += ["</div>", "<h2>Detection latency (onset to first verdict)</h2>"]
    parts.append(_latencies(runs, labels, grace_ns))
    entities = _entities(results, labels, max_entities)
    parts.append(f"<h2>Timelines ({len(entities)} entities)</h2>")
    parts.append(
        '<p class="note">Bands: fault labels (grey: look-alikes), verdict episodes per run. '
        "Panels: evidence features with their runbook thresholds (dashed)"
        + (
            ", from FeatureWindows."
            if any(r.features for r in results)
            else ", from the values the verdict records carry (--features: full series)."
        )
        + "</p>"
    )
    for entity in entities:
        parts.append(_timeline(entity, results, labels, t0, t1, max_points))
    parts.append("</body></html>")
    return "\n".join(parts)


def _describe(source: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in source.items() if v not in (None, "", []))


def _runs_table(runs: list[tuple[RunResult, dict[str, Any]]]) -> str:
    rows = []
    for run, doc in runs:
        speed, stats = doc["speed"], doc["stats"]
        clean = doc["clean"]
        rows.append(
            [
                escape(run.config.name),
                escape(run.config.runbook_path),
                _fmt(stats["frames"]),
                _fmt(stats["samples"]),
                _fmt(speed["samples_per_s"]),
                _fmt(speed["x_real_time"]),
                _fmt(speed["event_span_s"]),
                _fmt(len(doc["episodes"])),
                _fmt(clean["false_episodes_per_node_hour"]),
                _fmt(stats["bad_messages"]),
                _fmt(stats["late_frames"]),
            ]
        )
    return html_table(
        [
            "run",
            "runbook",
            "frames",
            "samples",
            "samples/s",
            "x real time",
            "event span s",
            "episodes",
            "false episodes / node-hour",
            "bad messages",
            "late frames",
        ],
        rows,
        2,
    )


__all__ = ["render_report"]
