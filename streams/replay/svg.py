"""Tiny inline-SVG drawing for the report: no library, no external assets.

Every element a test or reader may look for carries a class: ``plot`` on each ``<svg>``,
``series`` (polyline), ``point`` (circle), ``threshold`` (dashed line), ``label-span`` and
``verdict-span`` (rects), ``bar`` (histogram bars), ``axis`` (ticks and text).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from html import escape

COLORS = {
    "series": "#1d3557",
    "threshold": "#7a7a7a",
    "label": "#f4a261",
    "lookalike": "#b8b8b8",
    "A": "#e63946",
    "B": "#2a9d8f",
    "axis": "#444444",
}


def attr(value: object) -> str:
    return escape(str(value), quote=True)


def _short(text: str, limit: int = 34) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=raw)
    first = math.ceil(lo / step) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 10))
        t += step
    return ticks


@dataclass
class Canvas:
    """An SVG under construction, with an x scale shared by every band and panel."""

    width: int
    x_lo: float
    x_hi: float
    left: int = 210
    right: int = 20
    parts: list[str] = field(default_factory=list)
    height: int = 0
    css_class: str = "plot"

    def x(self, value: float) -> float:
        span = self.x_hi - self.x_lo or 1.0
        inner = self.width - self.left - self.right
        return self.left + (value - self.x_lo) / span * inner

    def band(
        self, title: str, spans: list[tuple[float, float, str, str, str]], h: int = 18
    ) -> None:
        """A row of spans ``(start, end, text, color, css_class)`` under a title."""
        y = self.height + 2
        self.parts.append(
            f'<text class="axis" x="{self.left - 6}" y="{y + h - 5}" text-anchor="end" '
            f'font-size="11" fill="{COLORS["axis"]}">{escape(title)}</text>'
        )
        for start, end, text, color, css in spans:
            x0, x1 = self.x(start), self.x(end)
            w = max(2.0, x1 - x0)
            self.parts.append(
                f'<rect class="{css}" x="{x0:.1f}" y="{y}" width="{w:.1f}" height="{h}" '
                f'fill="{color}"><title>{escape(text)}</title></rect>'
            )
            if w > 40:
                self.parts.append(
                    f'<text x="{x0 + 3:.1f}" y="{y + h - 5}" font-size="10" fill="#fff">'
                    f"{escape(text[: int(w / 6)])}</text>"
                )
        self.height = y + h + 2

    def panel(
        self,
        title: str,
        points: list[tuple[float, float]],
        threshold: float | None = None,
        h: int = 90,
        color: str = COLORS["series"],
    ) -> None:
        """A line (or dots, when sparse) of ``(x, y)`` with an optional threshold line."""
        top = self.height + 8
        values = [p[1] for p in points if math.isfinite(p[1])]
        if threshold is not None and math.isfinite(threshold):
            values.append(threshold)
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        if hi <= lo:
            lo, hi = lo - 1.0, hi + 1.0

        def y(v: float) -> float:
            return top + h - (v - lo) / (hi - lo) * h

        self.parts.append(
            f'<rect x="{self.left}" y="{top}" width="{self.width - self.left - self.right}" '
            f'height="{h}" fill="none" stroke="#ddd"/>'
        )
        self.parts.append(
            f'<text class="axis" x="{self.left - 6}" y="{top + h / 2:.1f}" text-anchor="end" '
            f'font-size="10" fill="{COLORS["axis"]}">{escape(_short(title))}</text>'
        )
        for v, anchor in ((hi, top + 10), (lo, top + h)):
            self.parts.append(
                f'<text class="axis" x="{self.left + 3}" y="{anchor:.1f}" font-size="9" '
                f'fill="{COLORS["axis"]}">{v:.4g}</text>'
            )
        if threshold is not None and math.isfinite(threshold):
            ty = y(threshold)
            self.parts.append(
                f'<line class="threshold" x1="{self.left}" x2="{self.width - self.right}" '
                f'y1="{ty:.1f}" y2="{ty:.1f}" stroke="{COLORS["threshold"]}" '
                f'stroke-dasharray="4 3"/>'
            )
        finite = [(px, py) for px, py in points if math.isfinite(py)]
        if len(finite) > 1:
            coords = " ".join(f"{self.x(px):.1f},{y(py):.1f}" for px, py in finite)
            self.parts.append(
                f'<polyline class="series" points="{coords}" fill="none" stroke="{color}" '
                f'stroke-width="1.6"/>'
            )
        if len(finite) <= 60:
            for px, py in finite:
                self.parts.append(
                    f'<circle class="point" cx="{self.x(px):.1f}" cy="{y(py):.1f}" r="2.6" '
                    f'fill="{color}"/>'
                )
        self.height = top + h + 2

    def x_axis(self, unit: str = "s") -> None:
        y = self.height + 4
        for t in nice_ticks(self.x_lo, self.x_hi):
            xt = self.x(t)
            self.parts.append(
                f'<line class="axis" x1="{xt:.1f}" x2="{xt:.1f}" y1="{y}" y2="{y + 4}" '
                f'stroke="{COLORS["axis"]}"/><text class="axis" x="{xt:.1f}" y="{y + 15}" '
                f'font-size="10" text-anchor="middle" fill="{COLORS["axis"]}">{t:g}{unit}</text>'
            )
        self.height = y + 20

    def svg(self, title: str = "") -> str:
        head = (
            f'<svg class="{self.css_class}" xmlns="http://www.w3.org/2000/svg" '
            f'width="{self.width}" height="{self.height}" '
            f'viewBox="0 0 {self.width} {self.height}" role="img" aria-label="{attr(title)}">'
        )
        return head + "".join(self.parts) + "</svg>"


def strip_plot(
    rows: list[tuple[str, list[float], str]], x_hi: float, width: int = 640, unit: str = "s"
) -> str:
    """Dots per row ``(title, values, color)`` on a shared linear axis from 0, with the
    median marked by a bar (latency distributions)."""
    canvas = Canvas(width, 0.0, max(x_hi, 1e-9), left=190, css_class="plot latency")
    for title, values, color in rows:
        y = canvas.height + 4
        canvas.parts.append(
            f'<text class="axis" x="{canvas.left - 6}" y="{y + 11}" text-anchor="end" '
            f'font-size="11" fill="{COLORS["axis"]}">{escape(title)} (n={len(values)})</text>'
        )
        for v in values:
            canvas.parts.append(
                f'<circle class="point" cx="{canvas.x(v):.1f}" cy="{y + 7}" r="3" '
                f'fill="{color}" fill-opacity="0.6"><title>{v:.3f} {unit}</title></circle>'
            )
        if values:
            med = statistics.median(values)
            canvas.parts.append(
                f'<rect class="bar" x="{canvas.x(med) - 1:.1f}" y="{y - 1}" width="2.5" '
                f'height="16" fill="#000"><title>median {med:.3f} {unit}</title></rect>'
            )
        canvas.height = y + 16
    canvas.x_axis(unit)
    return canvas.svg("detection latency")
