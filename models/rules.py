"""Runbook rules with persistence: a condition holds when its evidence held in k of n windows."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from itertools import islice

from models.runbook import Cause, Condition, Evidence, Runbook
from streams.views import EntityView


@dataclass(frozen=True)
class Finding:
    """A condition whose evidence persisted on an entity in this window."""

    condition: Condition
    view: EntityView
    severity: float
    confidence: float
    root_cause: str
    directive: str
    directive_text: str
    evidence: tuple[tuple[Evidence, float], ...]
    sources_missing: tuple[str, ...]
    impact: str
    local_cause: bool = False  # refined to a ``local`` cause: no suppression mutes it
    # end of the earliest held window of the k of n that first fired it in this run (the
    # entity's evidence history, kept while any of its windows held): a suppressor whose own
    # run began later did not cause it
    since_ns: int = 0


# Lowest severity of a verdict: its severity feature is at (or below) the low end of its
# range. Readers (e.g. the closed-loop policy) treat it as "the symptom is barely there".
SEVERITY_FLOOR = 0.05

# A window in a condition's evidence history: its evidence held; held and met the
# condition's ``persistence_fast`` too (0: did not hold)
HELD, FAST = 1, 2


def _severity(cond: Condition, features: dict[str, float]) -> float:
    value = features.get(cond.severity_feature)
    if value is None:
        return 0.5
    span = cond.severity_high - cond.severity_low
    frac = (abs(value) - cond.severity_low) / span if span else 1.0
    return round(min(1.0, max(SEVERITY_FLOOR, frac)), 4)


def _impact(template: str, features: dict[str, float]) -> str:
    if not template:
        return ""

    class _Values(dict[str, object]):
        def __missing__(self, key: str) -> object:
            return float("nan")

    try:
        return template.format_map(_Values({k.replace(".", "_"): v for k, v in features.items()}))
    except (ValueError, KeyError, IndexError):
        return template


def _template(template: str) -> str:
    # "{nccl.caused_wait_ratio:.0%}" -> "{nccl_caused_wait_ratio:.0%}" (format_map keys).
    out: list[str] = []
    depth = 0
    for ch in template:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        out.append("_" if ch == "." and depth and not _in_spec(out) else ch)
    return "".join(out)


def _in_spec(chars: list[str]) -> bool:
    text = "".join(chars)
    return text.rfind(":") > text.rfind("{")


@dataclass
class RuleEngine:
    """Evaluates every runbook condition on every view, with per-entity persistence."""

    runbook: Runbook
    # per (entity, condition): a window's evidence, 0 (not held), HELD or FAST
    _history: dict[tuple[str, str], deque[int]] = field(default_factory=dict)
    # per (entity, condition): the end of each window in its history (the same length), and
    # once its k of n first held, the end of the earliest held window of those n
    _ends_ns: dict[tuple[str, str], deque[int]] = field(default_factory=dict)
    _since_ns: dict[tuple[str, str], int] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)

    def evaluate(self, views: list[EntityView], window_end_ns: int = 0) -> list[Finding]:
        """Findings of the window ending at ``window_end_ns``; entities that could not be
        judged land in ``held``."""
        findings = []
        self.held = set()
        for view in views:
            for cond in self.runbook.for_entity(view.kind):
                finding = self._evaluate_one(cond, view, window_end_ns)
                if finding is not None:
                    findings.append(finding)
        return findings

    def _evaluate_one(
        self, cond: Condition, view: EntityView, window_end_ns: int
    ) -> Finding | None:
        if cond.min_data is not None and not cond.min_data.holds(view.features):
            # Too little data to judge: neither evidence for nor against (no flapping on
            # an idle gap), and the persistence history stays as it was.
            if (view.entity, cond.id) in self._history:
                self.held.add(view.aliases.get(cond.report_as, view.entity))
            return None
        missing_required = [s for s in cond.required_sources if s not in view.sources_present]
        holds = not missing_required and all(e.holds(view.features) for e in cond.evidence)
        key = (view.entity, cond.id)
        history = self._history.get(key)
        if history is None:
            if not holds:
                return None  # nothing to remember: keeps state bounded to active suspects
            history = deque(maxlen=cond.history_windows)
            self._history[key] = history
            self._ends_ns[key] = deque(maxlen=cond.history_windows)
        fast = cond.persistence_fast
        if not holds:
            history.append(0)
        else:
            history.append(FAST if fast is not None and fast.holds(view.features) else HELD)
        ends = self._ends_ns[key]
        ends.append(window_end_ns)
        if not any(history):
            del self._history[key], self._ends_ns[key]
            self._since_ns.pop(key, None)
            return None
        if not holds:
            return None
        k, n = cond.persistence(view.features)
        by_fast = False
        if sum(1 for h in islice(reversed(history), n) if h) < k:
            by_fast = (
                fast is not None
                and history[-1] == FAST
                and sum(1 for h in islice(reversed(history), fast.n) if h == FAST) >= fast.k
            )
            if not by_fast:
                return None
        if key not in self._since_ns:
            # the run dates from the earliest held window of the n that first met k of n: a
            # stray window before them, or a sparse chain of them, is not its start
            span = fast.n if by_fast and fast is not None else n
            self._since_ns[key] = min(
                end
                for h, end in zip(islice(reversed(history), span), reversed(ends), strict=False)
                if h
            )
        missing = tuple(s for s in cond.optional_sources if s not in view.sources_present)
        confidence = self.runbook.missing_source_penalty ** len(missing)
        cause: Cause | None = next(
            (c for c in cond.causes if all(e.holds(view.features) for e in c.when)), None
        )
        # a skipped ``if_absent = "pass"`` guard has no value to show
        evidence = tuple(
            (e, view.features[e.feature]) for e in cond.evidence if e.feature in view.features
        )
        if cause is not None:
            evidence += tuple(
                (e, view.features[e.feature]) for e in cause.when if e.feature in view.features
            )
        if by_fast and fast is not None:  # what let the shorter run confirm it
            evidence += tuple((e, view.features[e.feature]) for e in fast.when)
        return Finding(
            condition=cond,
            view=view,
            severity=_severity(cond, view.features),
            confidence=round(confidence, 4),
            root_cause=cause.root_cause if cause else cond.root_cause,
            directive=cause.directive if cause else cond.directive,
            directive_text=cause.directive_text if cause else cond.directive_text,
            evidence=evidence,
            sources_missing=missing,
            impact=_impact(_template(cond.impact), view.features),
            local_cause=cause is not None and cause.local,
            since_ns=self._since_ns[key],
        )

    def active(self) -> int:
        return len(self._history)
