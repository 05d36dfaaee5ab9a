"""Event-time hopping windows built from panes.

A window of ``size_ns`` that starts every ``hop_ns`` is the union of ``size_ns / hop_ns``
consecutive *panes* of ``hop_ns``. Each sample lands in exactly one pane, so hopping costs no
extra work per sample: aggregates are kept per pane and combined when a window closes.
Windows close when the watermark passes their end; a sample whose pane already left every
open window is *late*: counted, never silently dropped, and not used.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HoppingSpec:
    """Window geometry. Defaults: 1 s windows every 250 ms."""

    size_ns: int = 1_000_000_000
    hop_ns: int = 250_000_000

    def __post_init__(self) -> None:
        if self.hop_ns <= 0 or self.size_ns % self.hop_ns:
            raise ValueError(
                f"window size {self.size_ns} ns must be a positive multiple of hop {self.hop_ns} ns"
            )

    @property
    def panes_per_window(self) -> int:
        return self.size_ns // self.hop_ns

    def pane_of(self, event_ns: int) -> int:
        """Index of the pane holding ``event_ns`` (pane i covers [i*hop, (i+1)*hop))."""
        return event_ns // self.hop_ns

    def window_end_ns(self, last_pane: int) -> int:
        """End (exclusive) of the window whose last pane is ``last_pane``."""
        return (last_pane + 1) * self.hop_ns

    def window_start_ns(self, last_pane: int) -> int:
        return self.window_end_ns(last_pane) - self.size_ns

    def panes_of_window(self, last_pane: int) -> range:
        return range(last_pane - self.panes_per_window + 1, last_pane + 1)

    def closable_panes(self, after_pane: int, watermark_ns: int) -> range:
        """Last-pane indices of windows that closed since ``after_pane`` given the watermark.

        A window closes when the watermark reaches its end.
        """
        newest = watermark_ns // self.hop_ns - 1
        return range(after_pane + 1, newest + 1)
