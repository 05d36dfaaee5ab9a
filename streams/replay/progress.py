"""A one-line progress bar on stderr: fraction done, samples/s, multiple of real time."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Redraws at most ``per_s`` times a second; silent when not ``enabled``."""

    def __init__(
        self, label: str, enabled: bool, stream: TextIO | None = None, per_s: float = 5.0
    ) -> None:
        self.label = label
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.min_gap_s = 1.0 / per_s
        self.began = time.perf_counter()
        self._last_draw = 0.0
        self._drawn = False

    def update(
        self, fraction: float | None, messages: int, samples: int, event_span_ns: int
    ) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last_draw < self.min_gap_s:
            return
        self._last_draw = now
        self.draw(fraction, messages, samples, event_span_ns)

    def draw(self, fraction: float | None, messages: int, samples: int, event_span_ns: int) -> None:
        """Redraw now (the final state, say)."""
        if not self.enabled:
            return
        wall_s = time.perf_counter() - self.began
        width = 24
        if fraction is None:
            bar = ""
        else:
            filled = round(max(0.0, min(1.0, fraction)) * width)
            bar = f"[{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%} "
        rate = samples / wall_s if wall_s > 0 else 0.0
        speed = event_span_ns / 1e9 / wall_s if wall_s > 0 else 0.0
        self.stream.write(
            f"\r{self.label}: {bar}{messages:,} msgs {samples:,} samples "
            f"{rate:,.0f} samples/s {speed:.1f}x real time "
        )
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
