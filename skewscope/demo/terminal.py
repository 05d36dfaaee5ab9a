"""The demo's terminal view: a live table of verdicts and what a scheduler reads.

Plain ANSI escapes, no curses: on a terminal every :meth:`TerminalView.show` redraws the
screen (cursor home, clear) with the verdict table (entity, condition, severity, directive,
key evidence), one line per deployment (health, staleness, avoid-list) and the scenario's
clock. When stdout is not a terminal (a pipe, a log file, a test), it degrades to lines:
one per verdict that starts or stops firing, one per change of a deployment's health or
avoid-list, and a status line every ``status_every_s``. ``NO_COLOR`` turns colours off.

The view knows nothing of Redis or Kafka: it draws a :class:`Snapshot`, which the live demo
fills from :class:`sinks.client.SchedulerClient` and the in-process fallback from the
detector itself.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

_RESET, _BOLD, _DIM = "\x1b[0m", "\x1b[1m", "\x1b[2m"
_RED, _YELLOW, _GREEN, _GREY = "\x1b[31m", "\x1b[33m", "\x1b[32m", "\x1b[90m"
_HEALTH_COLOUR = {"healthy": _GREEN, "unhealthy": _RED, "unknown": _GREY}


@dataclass(frozen=True)
class DeploymentLine:
    """What a scheduler reads for one deployment."""

    name: str
    health: str
    reason: str = ""
    staleness_s: float | None = None
    avoid: tuple[str, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """Everything one frame of the view shows."""

    title: str
    elapsed_s: float
    duration_s: float
    verdicts: Sequence[Mapping[str, Any]] = ()
    deployments: Sequence[DeploymentLine] = ()
    injecting: Sequence[str] = ()
    source: str = ""
    notes: Sequence[str] = field(default_factory=tuple)


def key_evidence(verdict: Mapping[str, Any], limit: int = 2) -> str:
    """The first ``limit`` evidence items as ``feature=value (op threshold, source)``."""
    items = []
    for ev in list(verdict.get("evidence") or [])[:limit]:
        items.append(
            f"{ev['feature']}={_num(ev['value'])} ({ev['comparator']} {_num(ev['threshold'])}, "
            f"{ev['source']})"
        )
    if not items and verdict.get("root_cause"):
        return str(verdict["root_cause"])
    return "; ".join(items)


def _num(value: Any) -> str:
    try:
        return f"{float(value):.3g}"
    except (TypeError, ValueError):
        return str(value)


def scheduler_line(deployments: Sequence[DeploymentLine]) -> str:
    """``scheduler reads: dep unhealthy avoid [a, b]; ...`` (one line)."""
    parts = []
    for d in deployments:
        stale = "" if d.staleness_s is None else f", data {d.staleness_s:.1f} s old"
        parts.append(f"{d.name} {d.health}{stale}, avoid [{', '.join(d.avoid)}]")
    return "scheduler reads: " + ("; ".join(parts) if parts else "no deployment yet")


class TerminalView:
    """Draw snapshots on ``stream``; ``tty=None`` asks the stream whether it is a terminal."""

    def __init__(
        self,
        stream: TextIO | None = None,
        tty: bool | None = None,
        colour: bool | None = None,
        status_every_s: float = 10.0,
        clock_s: Any = time.monotonic,
    ) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.colour = (self.tty and not os.environ.get("NO_COLOR")) if colour is None else colour
        self.status_every_s = status_every_s
        self.clock_s = clock_s
        self._firing: dict[str, str] = {}
        self._deployments: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._last_status = -float("inf")
        self.shown: set[tuple[str, str]] = set()

    # -- public --------------------------------------------------------------------------
    def say(self, text: str) -> None:
        """One progress line, printed at once."""
        self.stream.write(text + "\n")
        self.stream.flush()

    def show(self, snap: Snapshot) -> None:
        """Draw ``snap``: a full redraw on a terminal, changed lines otherwise."""
        for v in snap.verdicts:
            self.shown.add((str(v["entity"]), str(v["condition"])))
        if self.tty:
            self._redraw(snap)
        else:
            self._lines(snap)

    def close(self) -> None:
        """Leave the screen as it is and move below it."""
        if self.tty:
            self.stream.write(_RESET + "\n")
            self.stream.flush()

    # -- terminal ------------------------------------------------------------------------
    def _c(self, code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if self.colour else text

    def _redraw(self, snap: Snapshot) -> None:
        width = shutil.get_terminal_size((120, 40)).columns
        out = [
            self._c(_BOLD, snap.title)
            + f"   t = {snap.elapsed_s:5.1f} / {snap.duration_s:.0f} s   {snap.source}",
            "injecting now: " + (", ".join(snap.injecting) if snap.injecting else "nothing"),
            "",
        ]
        header = f"{'entity':<30} {'condition':<22} {'sev':>4} {'directive':<24} key evidence"
        out.append(self._c(_BOLD, header[:width]))
        if not snap.verdicts:
            out.append(self._c(_DIM, "(no firing verdict)"))
        for v in snap.verdicts:
            sev = float(v.get("severity", 0.0))
            colour = _RED if sev >= 0.5 else _YELLOW
            row = (
                f"{str(v['entity'])[:30]:<30} {str(v['condition'])[:22]:<22} {sev:4.2f} "
                f"{str(v.get('directive', ''))[:24]:<24} {key_evidence(v)}"
            )
            out.append(self._c(colour, row[:width]))
        out.append("")
        for d in snap.deployments:
            colour = _HEALTH_COLOUR.get(d.health, _GREY)
            stale = "" if d.staleness_s is None else f"  data {d.staleness_s:4.1f} s old"
            line = (
                f"{d.name:<16} {self._c(colour, f'{d.health:<9}')}{stale}  "
                f"avoid-list [{', '.join(d.avoid)}]  {d.reason}"
            )
            out.append(line[: width + 20])
        out.append(self._c(_DIM, "^ what a scheduler reads (" + snap.source + ")"))
        out += list(snap.notes)
        self.stream.write("\x1b[H\x1b[2J" + "\n".join(out) + "\n")
        self.stream.flush()

    # -- lines ---------------------------------------------------------------------------
    def _lines(self, snap: Snapshot) -> None:
        at = f"[{snap.elapsed_s:6.1f} s]"
        now: dict[str, str] = {}
        for v in snap.verdicts:
            entity, condition = str(v["entity"]), str(v["condition"])
            now[entity] = condition
            if self._firing.get(entity) != condition:
                self.say(
                    f"{at} FIRING   {entity} {condition} sev {float(v.get('severity', 0)):.2f} "
                    f"-> {v.get('directive', '')}; {key_evidence(v)}"
                )
        for entity, condition in self._firing.items():
            if now.get(entity) != condition:
                self.say(f"{at} resolved {entity} {condition}")
        self._firing = now
        changed = False
        for d in snap.deployments:
            state = (d.health, d.avoid)
            if self._deployments.get(d.name) != state:
                changed = True
                self._deployments[d.name] = state
        now_s = self.clock_s()
        if changed or now_s - self._last_status >= self.status_every_s:
            self._last_status = now_s
            self.say(f"{at} {scheduler_line(snap.deployments)}")
