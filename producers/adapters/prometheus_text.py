"""A tolerant parser of the Prometheus text exposition format (version 0.0.4).

Reads what exporters really print, not only what the format document promises:

* ``# HELP`` / ``# TYPE`` are optional, may come in either order, may have no text, and a
  ``# TYPE`` with no sample after it (a cut-off scrape) is fine; other ``#`` lines are comments.
* label order is free, a trailing comma is allowed, values may hold ``\\\\``, ``\\"``, ``\\n``,
  ``}`` and ``,``; names may contain ``:`` (``vllm:num_requests_running``).
* values may be integers, decimals, exponent notation (``9.75e-06``), ``NaN``, ``+Inf``,
  ``-Inf``; an optional integer timestamp in milliseconds may follow.
* the last line may lack its newline; ``\\r\\n`` line ends are accepted.

What it does not read, it skips with a reason (see :class:`~producers.adapters.common.Skips`):
a cut-off or malformed sample line, a non-numeric value, or a *duplicate series* (same name
and label set as an earlier line; the first one is kept). ``strict=True`` raises
:class:`~producers.adapters.common.ParseError` instead.

Limits: OpenMetrics-only syntax (``# EOF``, exemplars after ``#``, ``_created`` semantics)
is not interpreted; exemplars are skipped as malformed lines. Histograms and summaries are
returned as their flat ``_bucket``/``_sum``/``_count`` samples, not assembled.

>>> expo = parse('# TYPE up gauge\\nup{job="a",le="1"} 1e0\\nup{le="1",job="a"} 2')
>>> expo.value("up", job="a", le="1"), [s.reason for s in expo.skipped]
(1.0, ['duplicate series; first at line 2'])
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from producers.adapters.common import SkippedLine, Skips

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(
    rf"^(?P<name>{_NAME})\s*(?:\{{(?P<labels>.*)\}})?\s+(?P<value>\S+)(?:\s+(?P<ts>-?\d+))?\s*$"
)
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_META = re.compile(rf"^#\s*(HELP|TYPE)\s+(?P<name>{_NAME})(?:\s+(?P<rest>.*))?$")
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped", "unknown", "info", "stateset"}
_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created", "_info")
_SPECIAL_VALUES = {"nan": math.nan, "+inf": math.inf, "inf": math.inf, "-inf": -math.inf}


@dataclass(frozen=True)
class Sample:
    """One sample line: metric name, labels, value, optional timestamp (ms), line number."""

    name: str
    labels: dict[str, str]
    value: float
    timestamp_ms: int | None
    line_no: int

    def label(self, *names: str, default: str = "") -> str:
        """The first of ``names`` present in the labels (e.g. ``Hostname``, ``hostname``)."""
        for name in names:
            if name in self.labels:
                return self.labels[name]
        return default


@dataclass
class Exposition:
    """Parsed samples in file order, with HELP/TYPE metadata and the skipped lines."""

    samples: list[Sample] = field(default_factory=list)
    types: dict[str, str] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)
    skipped: list[SkippedLine] = field(default_factory=list)

    def find(self, name: str) -> list[Sample]:
        """All samples named exactly ``name``."""
        return [s for s in self.samples if s.name == name]

    def value(self, name: str, **labels: str) -> float | None:
        """Value of the first sample named ``name`` whose labels include ``labels``."""
        for sample in self.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
        return None

    def family_type(self, name: str) -> str:
        """The declared TYPE of the sample's family ('' when none was declared)."""
        if name in self.types:
            return self.types[name]
        for suffix in _SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in self.types:
                return self.types[name[: -len(suffix)]]
        return ""


def parse_value(text: str) -> float:
    """A sample value: a float literal, ``NaN`` or ``[+-]Inf``; ValueError otherwise."""
    special = _SPECIAL_VALUES.get(text.lower())
    if special is not None:
        return special
    if "_" in text:  # float() takes 1_000; the exposition format does not
        raise ValueError(f"{text!r} is not a number")
    return float(text)


def _labels(text: str) -> dict[str, str] | None:
    labels: dict[str, str] = {}
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _LABEL.match(text, pos)
        if match is None:
            return None
        raw = match.group(2)
        labels[match.group(1)] = (
            raw.replace("\\\\", "\x00")
            .replace('\\"', '"')
            .replace("\\n", "\n")
            .replace("\x00", "\\")
        )
        pos = match.end()
    return labels


def _lines(text: str) -> Iterator[tuple[int, str]]:
    for line_no, line in enumerate(text.splitlines(), start=1):
        yield line_no, line.strip()


def parse(text: str, strict: bool = False, source: str = "prometheus text") -> Exposition:
    """Parse exposition ``text``; see the module docstring for what is tolerated."""
    expo = Exposition()
    skips = Skips(source, strict)
    seen: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
    for line_no, line in _lines(text):
        if not line:
            continue
        if line.startswith("#"):
            meta = _META.match(line)
            if meta is None:
                continue
            rest = (meta.group("rest") or "").strip()
            if meta.group(1) == "HELP":
                expo.helps[meta.group("name")] = rest
            elif rest.lower() in _TYPES:
                expo.types[meta.group("name")] = rest.lower()
            else:
                skips.skip(line_no, f"unknown metric type {rest!r}", line)
            continue
        match = _SAMPLE.match(line)
        if match is None:
            skips.skip(line_no, "malformed or cut-off sample line", line)
            continue
        labels = _labels(match.group("labels") or "")
        if labels is None:
            skips.skip(line_no, "malformed label set", line)
            continue
        try:
            value = parse_value(match.group("value"))
        except ValueError:
            skips.skip(line_no, f"value {match.group('value')!r} is not a number", line)
            continue
        name = match.group("name")
        key = (name, tuple(sorted(labels.items())))
        if key in seen:
            skips.skip(line_no, f"duplicate series; first at line {seen[key]}", line)
            continue
        seen[key] = line_no
        ts = match.group("ts")
        expo.samples.append(Sample(name, labels, value, int(ts) if ts else None, line_no))
    expo.skipped = skips.lines
    return expo
