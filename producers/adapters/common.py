"""Shared vocabulary of the adapters: parse errors, skipped lines, frame context, sentinels.

Every adapter is tolerant by default: a line it cannot read is recorded as a
:class:`SkippedLine` (1-based line number, reason, the text) and parsing goes on. With
``strict=True`` the first such line raises :class:`ParseError` instead. No adapter lets a
bare ``ValueError``/``KeyError``/``IndexError`` escape on malformed input.

Sentinels for fields a source does not report (documented once here, used everywhere):
``MISSING_INT = -1`` for count/int columns, ``MISSING_FLOAT = NaN`` for float columns.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

MISSING_INT = -1
MISSING_FLOAT = math.nan


class ParseError(ValueError):
    """Input text that an adapter cannot read, with where and why.

    ``line_no`` is 1-based (0 when the problem is not tied to a line, e.g. empty input).
    """

    def __init__(self, source: str, line_no: int, reason: str, text: str = "") -> None:
        self.source = source
        self.line_no = line_no
        self.reason = reason
        self.text = text
        where = f"line {line_no}" if line_no else "input"
        shown = f": {text[:120]!r}" if text else ""
        super().__init__(f"{source} {where}: {reason}{shown}")


@dataclass(frozen=True)
class SkippedLine:
    """A line the tolerant parser left out, and why."""

    line_no: int
    reason: str
    text: str = ""


@dataclass
class Skips:
    """Collects skipped lines, or raises on the first one when ``strict``."""

    source: str
    strict: bool = False
    lines: list[SkippedLine] = field(default_factory=list)

    def skip(self, line_no: int, reason: str, text: str = "") -> None:
        if self.strict:
            raise ParseError(self.source, line_no, reason, text)
        self.lines.append(SkippedLine(line_no, reason, text))


@dataclass
class FrameContext:
    """Who the frames are about and how they are numbered.

    ``frame_seq`` is the next per-producer sequence number; :meth:`next_seq` hands it out and
    advances it, so one context used across scrapes numbers every frame once.
    """

    deployment: str
    node: str
    clock_id: str = "realtime"
    replica: str = ""
    frame_seq: int = 0
    # engine formats: the configured maximum running sequences (vLLM's max_num_seqs) when the
    # endpoint does not export it; without it the free-batch-slot features are unavailable
    batch_capacity: int = MISSING_INT
    _counter: Any = field(default=None, repr=False)

    def next_seq(self) -> int:
        if self._counter is None:
            self._counter = itertools.count(self.frame_seq)
        seq: int = next(self._counter)
        self.frame_seq = seq + 1
        return seq


@dataclass(frozen=True)
class Frame:
    """One record ready to encode: its schema short name, the ``Topics`` field, the record."""

    schema: str
    topic_field: str
    record: dict[str, Any]


def parse_int(text: str) -> int:
    """An integer counter value; accepts ``12``, ``12.0`` and ``1.2e+09`` when integral.

    Raises ``ValueError`` with the offending text when the value is not an integer.
    """
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"{text!r} is not an integer counter value") from None
        return int(value)


@dataclass
class AdapterOutput:
    """What one scrape turned into: frames to produce and the input lines left out."""

    frames: list[Frame] = field(default_factory=list)
    skipped: list[SkippedLine] = field(default_factory=list)
