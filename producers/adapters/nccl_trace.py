"""Tolerant reader of the NCCL example profiler plugin's Chrome-trace-like output.

The trace is meant to be a JSON array with one event object per line, but real files (and
the plugin README's example) are not valid JSON: hex numbers are printed bare
(``"Stream": 0x5020000567d0``), enum values unquoted (``"datatype": ncclFloat32``), and
the array closes with ``{}]``. This reader takes one event per line and repairs exactly
those quirks, plus typographic quotes (``“ ” ‘ ’``) that editors put in; bare hex and bare
identifiers become strings. A line that still does not parse (``... [ trace truncated ]``)
is skipped with its number and the reason; ``[``, ``]``, ``{}`` and ``{}]`` are structure.

:func:`collective_spans` pairs ``COLL`` begin (``ph: b``) and end (``ph: e``) events by
``(pid, tid, id)``; unpaired events (a truncated trace) are left out. Limits: the plugin's
``ts`` is microseconds since the plugin started, not epoch time, so spans carry local
durations only, and they are not turned into frames here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from producers.adapters.common import SkippedLine, Skips

_QUOTES = str.maketrans({"“": '"', "”": '"', "„": '"', "‘": "'", "’": "'"})
_BARE = re.compile(r"(:\s*)(0x[0-9A-Fa-f]+|[A-Za-z_][A-Za-z0-9_]*)(\s*[,}])")
_JSON_WORDS = {"true", "false", "null"}
_STRUCTURE = {"[", "]", "{}", "{}]", "{},", "[{}]"}


@dataclass
class TraceEvents:
    """Events (dicts) in file order, how many lines needed repair, and what was skipped."""

    events: list[dict[str, Any]] = field(default_factory=list)
    repaired_lines: list[int] = field(default_factory=list)
    skipped: list[SkippedLine] = field(default_factory=list)


@dataclass(frozen=True)
class CollectiveSpan:
    """A paired COLL begin/end: name (AllReduce...), args of the begin event, duration."""

    name: str
    pid: int
    tid: int
    event_id: int
    begin_us: float
    duration_us: float
    args: dict[str, Any]


def _quote_bare(match: re.Match[str]) -> str:
    word = match.group(2)
    if word in _JSON_WORDS:
        return match.group(0)
    return f'{match.group(1)}"{word}"{match.group(3)}'


def _repair(line: str) -> str:
    fixed = line.translate(_QUOTES)
    previous = None
    while previous != fixed:  # adjacent bare values share a delimiter; repeat until stable
        previous = fixed
        fixed = _BARE.sub(_quote_bare, fixed)
    return fixed


def parse_trace(text: str, strict: bool = False) -> TraceEvents:
    """Parse the example plugin's trace line by line (see the module docstring)."""
    out = TraceEvents()
    skips = Skips("nccl profiler trace", strict)
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line in _STRUCTURE:
            continue
        body = line.removeprefix("[").rstrip(",")
        if body.endswith("]"):
            body = body[:-1].rstrip().rstrip(",")
        event = _loads(body)
        if event is None:
            fixed = _repair(body)
            event = _loads(fixed)
            if event is not None:
                out.repaired_lines.append(line_no)
        if event is None:
            skips.skip(line_no, "not a JSON event object, even after repair", line)
            continue
        if event:
            out.events.append(event)
    out.skipped = skips.lines
    return out


def _loads(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def collective_spans(trace: TraceEvents) -> list[CollectiveSpan]:
    """Paired ``COLL`` events in order of their begin events."""
    open_events: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
    spans: list[CollectiveSpan] = []
    for event in trace.events:
        if event.get("cat") != "COLL":
            continue
        key = (event.get("pid"), event.get("tid"), event.get("id"))
        if event.get("ph") == "b":
            open_events[key] = event
        elif event.get("ph") == "e" and key in open_events:
            begin = open_events.pop(key)
            spans.append(
                CollectiveSpan(
                    name=str(begin.get("name", "")),
                    pid=int(begin.get("pid", -1)),
                    tid=int(begin.get("tid", -1)),
                    event_id=int(begin.get("id", -1)),
                    begin_us=float(begin["ts"]),
                    duration_us=float(event["ts"]) - float(begin["ts"]),
                    args=dict(begin.get("args", {})),
                )
            )
    return spans
