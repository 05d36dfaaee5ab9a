"""Load and validate the runbook (``models/runbook.toml``), with errors that say where.

>>> rb = load_runbook()
>>> rb.condition("tp-straggler").directive
'deprioritize-replica'
"""

from __future__ import annotations

import operator
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUNBOOK_PATH = Path(__file__).resolve().parent / "runbook.toml"
SOURCES = ("engine", "nccl", "gpu", "nic", "dpu", "host")
ENTITY_KINDS = ("rank", "node", "gpu", "nic_port", "replica", "fabric")
CLASSES = ("acute", "load", "config")
REPORT_AS = ("", "node", "path", "replica")
FAMILIES = ("compute", "pcie", "network-ns", "network-ew")
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


class RunbookError(ValueError):
    """The runbook file is malformed; the message names the entry and field."""


@dataclass(frozen=True)
class Evidence:
    feature: str
    op: str
    threshold: float
    source: str
    # ``if_absent = "pass"``: a guard that rules out a look-alike where the telemetry reports
    # what it needs (e.g. engine step durations, which vLLM does not export); where it is
    # not reported the guard is skipped, so the condition keeps working on such sources.
    # Default ``"fail"``: an absent feature is no evidence, never a healthy reading.
    absent_passes: bool = False

    def holds(self, features: dict[str, float]) -> bool | None:
        """True/False on the feature's value; when it is absent, True for an ``if_absent =
        "pass"`` guard, else None."""
        value = features.get(self.feature)
        if value is None:
            return True if self.absent_passes else None
        return OPERATORS[self.op](value, self.threshold)


@dataclass(frozen=True)
class Cause:
    root_cause: str
    directive: str
    directive_text: str
    when: tuple[Evidence, ...]
    # ``local = true``: the cause's evidence is the entity's own hardware (a GPU's clock,
    # its throttle reasons), which no other condition explains: another condition's
    # ``suppresses`` does not mute a finding refined to it.
    local: bool = False


@dataclass(frozen=True)
class FastPath:
    """``persistence_fast``: a shorter run, of windows whose evidence also meets ``when``.

    Where the usual run waits out windows that look like the condition for a benign reason
    (a guard that a window's mean can pass while a look-alike still shows), stronger evidence
    in every window of the run confirms sooner. ``when`` fails on an absent feature, so a
    source that does not report it keeps the usual run."""

    k: int
    n: int
    when: tuple[Evidence, ...]

    def holds(self, features: dict[str, float]) -> bool:
        return all(e.holds(features) for e in self.when)


@dataclass(frozen=True)
class Condition:
    id: str
    family: str
    entity: str
    latency_class: str
    required_sources: tuple[str, ...]
    optional_sources: tuple[str, ...]
    root_cause: str
    directive: str
    directive_text: str
    persistence_k: int
    persistence_n: int
    severity_feature: str
    severity_low: float
    severity_high: float
    impact: str
    evidence: tuple[Evidence, ...]
    causes: tuple[Cause, ...] = ()
    suppresses: tuple[str, ...] = ()
    scope: str = ""
    report_as: str = ""
    min_data: Evidence | None = None
    # ``persistence_if_absent``: the k of n that applies in a window where an ``if_absent =
    # "pass"`` guard had no value (less evidence, so a longer run before firing)
    persistence_if_absent: tuple[int, int] | None = None
    persistence_fast: FastPath | None = None

    def persistence(self, features: dict[str, float]) -> tuple[int, int]:
        """(k, n) for a window with these features: ``persistence_if_absent`` where one of
        the ``if_absent = "pass"`` guards was skipped, else ``persistence``."""
        if self.persistence_if_absent is not None and any(
            e.absent_passes and e.feature not in features for e in self.evidence
        ):
            return self.persistence_if_absent
        return self.persistence_k, self.persistence_n

    @property
    def history_windows(self) -> int:
        """How many windows of evidence the longest of its persistence rules looks at."""
        fast = self.persistence_fast.n if self.persistence_fast else 0
        return max(self.persistence_n, (self.persistence_if_absent or (0, 0))[1], fast)


@dataclass(frozen=True)
class Runbook:
    version: int
    missing_source_penalty: float
    conditions: tuple[Condition, ...] = field(default_factory=tuple)

    def condition(self, condition_id: str) -> Condition:
        for cond in self.conditions:
            if cond.id == condition_id:
                return cond
        raise KeyError(f"no runbook condition {condition_id!r}")

    def for_entity(self, kind: str) -> list[Condition]:
        return [c for c in self.conditions if c.entity == kind]


def _need(entry: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if key not in entry:
        raise RunbookError(f"{where}: missing field '{key}'")
    value = entry[key]
    if not isinstance(value, kind):
        raise RunbookError(f"{where}: field '{key}' should be {kind}, got {type(value).__name__}")
    return value


def _flag(entry: dict[str, Any], key: str, where: str) -> bool:
    value = entry.get(key, False)
    if not isinstance(value, bool):
        raise RunbookError(f"{where}: {key} must be true or false, got {value!r}")
    return value


def _one_of(value: str, allowed: tuple[str, ...], where: str, key: str) -> str:
    if value not in allowed:
        raise RunbookError(f"{where}: {key} {value!r} is not one of {list(allowed)}")
    return value


def _evidence(items: Any, where: str) -> tuple[Evidence, ...]:
    if not isinstance(items, list) or not items:
        raise RunbookError(f"{where}: needs a non-empty list of {{feature, op, threshold, source}}")
    out = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        feature = _need(item, "feature", at, str)
        if "." not in feature:
            raise RunbookError(f"{at}: feature {feature!r} must be '<source>.<name>'")
        op = _one_of(_need(item, "op", at, str), tuple(OPERATORS), at, "op")
        threshold = float(_need(item, "threshold", at, (int, float)))
        source = _one_of(_need(item, "source", at, str), SOURCES, at, "source")
        absent = _one_of(item.get("if_absent", "fail"), ("fail", "pass"), at, "if_absent")
        out.append(Evidence(feature, op, threshold, source, absent_passes=absent == "pass"))
    return tuple(out)


def _condition(entry: dict[str, Any], index: int) -> Condition:
    cid = entry.get("id", f"#{index}")
    where = f"runbook condition {cid}"
    k, n = _persistence(_need(entry, "persistence", where, dict), f"{where}: persistence")
    evidence = _evidence(entry.get("evidence"), f"{where} evidence")
    if_absent = None
    if "persistence_if_absent" in entry:
        at = f"{where}: persistence_if_absent"
        if_absent = _persistence(_need(entry, "persistence_if_absent", where, dict), at)
        if not any(e.absent_passes for e in evidence):
            raise RunbookError(f'{at} needs an evidence guard with if_absent = "pass"')
    fast = None
    if "persistence_fast" in entry:
        at = f"{where}: persistence_fast"
        table = _need(entry, "persistence_fast", where, dict)
        fk, fn = _persistence(table, at)
        if fk >= k:
            raise RunbookError(f"{at} must need fewer windows than persistence (k={fk} >= {k})")
        fast = FastPath(fk, fn, _evidence(table.get("when"), f"{at} when"))
    severity = _need(entry, "severity", where, dict)
    required = tuple(_need(entry, "required_sources", where, list))
    optional = tuple(entry.get("optional_sources", []))
    for src in (*required, *optional):
        _one_of(src, SOURCES, where, "source")
    causes = tuple(
        Cause(
            _need(c, "root_cause", f"{where} cause {j}", str),
            _need(c, "directive", f"{where} cause {j}", str),
            _need(c, "directive_text", f"{where} cause {j}", str),
            _evidence(c.get("when"), f"{where} cause {j} when"),
            _flag(c, "local", f"{where} cause {j}"),
        )
        for j, c in enumerate(entry.get("cause", []))
    )
    return Condition(
        id=_need(entry, "id", where, str),
        family=_one_of(_need(entry, "family", where, str), FAMILIES, where, "family"),
        entity=_one_of(_need(entry, "entity", where, str), ENTITY_KINDS, where, "entity"),
        latency_class=_one_of(_need(entry, "class", where, str), CLASSES, where, "class"),
        required_sources=required,
        optional_sources=optional,
        root_cause=_need(entry, "root_cause", where, str),
        directive=_need(entry, "directive", where, str),
        directive_text=_need(entry, "directive_text", where, str),
        persistence_k=k,
        persistence_n=n,
        severity_feature=_need(severity, "feature", f"{where} severity", str),
        severity_low=float(_need(severity, "low", f"{where} severity", (int, float))),
        severity_high=float(_need(severity, "high", f"{where} severity", (int, float))),
        impact=str(entry.get("impact", "")),
        evidence=evidence,
        causes=causes,
        suppresses=tuple(entry.get("suppresses", [])),
        scope=str(entry.get("scope", "")),
        report_as=_one_of(str(entry.get("report_as", "")), REPORT_AS, where, "report_as"),
        min_data=_evidence([entry["min_data"]], f"{where} min_data")[0]
        if "min_data" in entry
        else None,
        persistence_if_absent=if_absent,
        persistence_fast=fast,
    )


def _persistence(table: dict[str, Any], where: str) -> tuple[int, int]:
    k, n = table.get("k", 0), table.get("n", 0)
    if not (isinstance(k, int) and isinstance(n, int) and 1 <= k <= n):
        raise RunbookError(f"{where} needs integers 1 <= k <= n, got k={k!r} n={n!r}")
    return k, n


def parse_runbook(text: str, origin: str = "<runbook>") -> Runbook:
    """Parse runbook TOML text; raise RunbookError naming the file, entry and field."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RunbookError(f"{origin}: not valid TOML: {exc}") from exc
    entries = doc.get("condition")
    if not isinstance(entries, list) or not entries:
        raise RunbookError(f"{origin}: no [[condition]] entries")
    try:
        conditions = tuple(_condition(e, i) for i, e in enumerate(entries))
    except RunbookError as exc:
        raise RunbookError(f"{origin}: {exc}") from exc
    ids = [c.id for c in conditions]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise RunbookError(f"{origin}: duplicate condition ids {dupes}")
    for cond in conditions:
        unknown = [s for s in cond.suppresses if s not in ids and s != "unattributed-anomaly"]
        if unknown:
            raise RunbookError(f"{origin}: condition {cond.id} suppresses unknown {unknown}")
    return Runbook(
        version=int(doc.get("version", 1)),
        missing_source_penalty=float(doc.get("missing_source_penalty", 0.7)),
        conditions=conditions,
    )


def load_runbook(path: Path = RUNBOOK_PATH) -> Runbook:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise RunbookError(f"cannot read runbook {path}: {exc}") from exc
    return parse_runbook(text, str(path))
