"""Fusion: findings -> one current verdict per entity, with hysteresis and suppression.

* One verdict per entity (the topic is keyed by entity): the strongest finding
  (severity x confidence) wins; a change of condition is a new version.
* Hysteresis: a verdict fires once a condition's evidence persisted (k of n windows, in
  :mod:`models.rules`) and resolves only after ``resolve_after_windows`` windows without it,
  so a condition hovering at its threshold does not flap.
* Hierarchical suppression: a firing condition with ``suppresses`` mutes those conditions on
  entities inside its ``scope`` (``fabric``: everything; ``node``: entities on that node;
  ``replica``: that deployment's entities). A muted verdict resolves with ``suppressed_by``.
  A firing verdict keeps suppressing through its hysteresis (the windows it waits before
  resolving), so a condition it explains does not take over its entity, or another in its
  scope, for the window or two its own evidence dips (kv-cache-pressure under a
  request-length-skew verdict). A finding refined to a ``local`` cause (the late rank's own
  GPU is throttled) is never muted: a congested fabric explains waits, not a GPU's clock.
  Nor is a ``config`` condition whose evidence run began well before the suppressor's
  (:meth:`Fusion.predates_ns`): a congested fabric explains stage waits that began with
  it, not a partition they predate.
* Maintenance windows and acknowledgements mute verdicts for a time (event time).
* Versions are monotonic per entity; a refresh is re-emitted every ``refresh_ns`` so readers'
  TTLs stay alive while the condition lasts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models.rules import Finding


@dataclass
class _Current:
    record: dict[str, Any]
    last_emit_ns: int
    clear_windows: int = 0
    finding: Finding | None = None  # the latest finding behind the record


@dataclass
class Mute:
    entity_prefix: str
    start_ns: int
    end_ns: int
    condition: str = "*"
    reason: str = "maintenance"


@dataclass
class Fusion:
    resolve_after_windows: int = 4
    ttl_ns: int = 30_000_000_000
    refresh_ns: int = 5_000_000_000
    _current: dict[str, _Current] = field(default_factory=dict)
    _versions: dict[str, int] = field(default_factory=dict)
    mutes: list[Mute] = field(default_factory=list)
    suppressed_count: int = 0
    # the detector's windows: how far ahead of a suppressor a static condition's evidence
    # must have begun to be no symptom of it (:meth:`predates_ns`)
    window_ns: int = 1_000_000_000
    hop_ns: int = 250_000_000

    def predates_ns(self, f: Finding) -> int:
        """How far ahead of a suppressor's evidence run ``f``'s must have begun to be no
        symptom of it: one window (a cause shows first in the window that holds its onset,
        and the suppressor's run may begin a window later) plus the misses ``f``'s k of n
        lets into the run (stray windows just before it count as its start)."""
        c = f.condition
        return self.window_ns + (c.persistence_n - c.persistence_k) * self.hop_ns

    def mute(self, mute: Mute) -> None:
        """A suppression window (deploy, model loading, maintenance) or an acknowledgement."""
        self.mutes.append(mute)

    def _muted(self, entity: str, condition: str, at_ns: int) -> Mute | None:
        for m in self.mutes:
            if (
                m.start_ns <= at_ns < m.end_ns
                and entity.startswith(m.entity_prefix)
                and m.condition in ("*", condition)
            ):
                return m
        return None

    def update(
        self, findings: list[Finding], window_end_ns: int, held: frozenset[str] = frozenset()
    ) -> list[dict[str, Any]]:
        """Fold one window's findings into verdict records to emit (possibly none).

        ``held``: entities whose evidence could not be judged this window (too little data);
        their current verdict neither refreshes nor counts a clear window.
        """
        self.mutes = [m for m in self.mutes if m.end_ns > window_end_ns]
        suppressors = [f for f in findings if f.condition.suppresses]
        found = {(reported_entity(f), f.condition.id) for f in findings}
        lingering = {
            e: c.finding
            for e, c in self._current.items()
            if c.finding is not None
            and c.finding.condition.suppresses
            and (e, c.finding.condition.id) not in found
        }
        best: dict[str, Finding] = {}
        muted_by: dict[str, str] = {}
        for f in findings:
            entity = reported_entity(f)
            lead_ns = self.predates_ns(f)
            by = _suppressed_by(f, suppressors, lead_ns)
            if (
                by is None
                and entity in lingering
                and _suppressed_by(f, [lingering[entity]], lead_ns)
            ):
                # the entity's own firing verdict explains it: that verdict stays, this waits
                self.suppressed_count += 1
                continue
            by = by or _suppressed_by(f, [s for e, s in lingering.items() if e != entity], lead_ns)
            mute = self._muted(entity, f.condition.id, window_end_ns)
            if by is not None or mute is not None:
                self.suppressed_count += 1
                muted_by[entity] = by or f"{mute.reason}:{mute.entity_prefix}"  # type: ignore[union-attr]
                continue
            score = f.severity * f.confidence
            old = best.get(entity)
            if old is None or score > old.severity * old.confidence:
                best[entity] = f
        out: list[dict[str, Any]] = []
        for entity, finding in best.items():
            record = self._record(finding, window_end_ns)
            current = self._current.get(entity)
            if current is None or current.record["condition"] != finding.condition.id:
                if current is not None:
                    record["first_seen_ns"] = window_end_ns
                out.append(self._emit(entity, record, window_end_ns, finding))
                continue
            record["first_seen_ns"] = current.record["first_seen_ns"]
            current.clear_windows = 0
            current.finding = finding
            changed = abs(record["severity"] - current.record["severity"]) >= 0.2
            if changed or window_end_ns - current.last_emit_ns >= self.refresh_ns:
                out.append(self._emit(entity, record, window_end_ns, finding))
            else:
                current.record["last_seen_ns"] = window_end_ns
        for entity in list(self._current):
            if entity in best or (entity in held and entity not in muted_by):
                continue
            current = self._current[entity]
            current.clear_windows += 1
            suppressor = muted_by.get(entity)
            if suppressor is None and current.clear_windows < self.resolve_after_windows:
                continue
            resolved = dict(current.record)
            resolved["state"] = "resolved"
            resolved["suppressed_by"] = suppressor
            resolved["last_seen_ns"] = window_end_ns
            del self._current[entity]
            out.append(self._stamp(entity, resolved))
        return out

    def _emit(
        self, entity: str, record: dict[str, Any], at_ns: int, finding: Finding
    ) -> dict[str, Any]:
        stamped = self._stamp(entity, record)
        # Keep our own copy: the emitted record must never change after it was handed out.
        self._current[entity] = _Current(dict(stamped), at_ns, finding=finding)
        return stamped

    def _stamp(self, entity: str, record: dict[str, Any]) -> dict[str, Any]:
        version = self._versions.get(entity, 0) + 1
        self._versions[entity] = version
        out = dict(record)
        out["version"] = version
        return out

    def _record(self, f: Finding, at_ns: int) -> dict[str, Any]:
        report_as = f.condition.report_as
        return {
            "entity": reported_entity(f),
            "entity_kind": report_as if report_as in f.view.aliases else f.view.kind,
            "deployment": f.view.deployment or "*",
            "condition": f.condition.id,
            "state": "firing",
            "severity": f.severity,
            "confidence": f.confidence,
            "root_cause": f.root_cause,
            "directive": f.directive,
            "directive_text": f.directive_text,
            "evidence": [
                {
                    "feature": e.feature,
                    "value": float(v),
                    "threshold": e.threshold,
                    "comparator": e.op,
                    "source": e.source,
                }
                for e, v in f.evidence
            ],
            "model_score": f.view.features.get("model.score"),
            "sources_missing": list(f.sources_missing),
            "impact": f.impact,
            "first_seen_ns": at_ns,
            "last_seen_ns": at_ns,
            "ttl_ns": self.ttl_ns,
            "suppressed_by": None,
        }

    def firing(self) -> dict[str, dict[str, Any]]:
        return {e: c.record for e, c in self._current.items()}


def reported_entity(f: Finding) -> str:
    """The id a verdict names: the view's entity, or its alias the runbook asks for."""
    return f.view.aliases.get(f.condition.report_as, f.view.entity)


def _suppressed_by(f: Finding, suppressors: list[Finding], lead_ns: int) -> str | None:
    """The suppressor that explains ``f``, if any. ``lead_ns``: how far ahead of a
    suppressor's evidence run a static condition's must have begun to be no symptom of it."""
    if f.local_cause:
        return None
    for s in suppressors:
        if s is f or f.condition.id not in s.condition.suppresses:
            continue
        if f.condition.latency_class == "config" and f.since_ns + lead_ns <= s.since_ns:
            # a static condition (a stage partition, a link's trained width) whose evidence
            # was there before the suppressor's began is not its symptom
            continue
        scope = s.condition.scope
        if (
            scope == "fabric"
            or (scope == "node" and s.view.node and s.view.node == f.view.node)
            or (scope == "replica" and s.view.deployment == f.view.deployment)
        ):
            return f"{s.view.entity}/{s.condition.id}"
    return None
