"""Faults in the *verdicts*, to test the controller's safety: wrong attributions and outages.

* :class:`WrongAttribution`: a verdict the detector did not produce, naming a healthy entity
  (e.g. ``llama70b-b/rank2`` as a straggler). With ``flap_period_s`` it fires and resolves
  alternately, the worst case for oscillation. While firing it is refreshed every 5 s of event
  time (as the detector's fusion does), so it stays live.
* :class:`Outage`: the pipeline of one deployment stops delivering (its verdicts and
  heartbeats are dropped before Redis), so the scheduler client reads it ``unknown`` once its
  freshness bound has passed.

Limits: injected verdicts use versions from 10**12 up, so a real verdict for the same entity
(versions from 1) is ignored by Redis while the injection lasts: inject on healthy entities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

S = 1_000_000_000
INJECTED_VERSION_BASE = 10**12
REFRESH_NS = 5 * S
TTL_NS = 30 * S


@dataclass(frozen=True)
class WrongAttribution:
    """A verdict naming ``entity`` (in ``deployment``) for ``condition`` with ``directive``."""

    entity: str
    deployment: str
    condition: str = "tp-straggler"
    directive: str = "deprioritize-replica"
    entity_kind: str = "rank"
    start_s: float = 2.0
    end_s: float = 0.0  # 0: until the end of the run
    flap_period_s: float = 0.0  # > 0: firing and resolved alternately, each this long
    severity: float = 0.6

    @classmethod
    def parse(cls, text: str) -> WrongAttribution:
        """``ENTITY:CONDITION:DIRECTIVE[:FLAP_S]``, the deployment taken from the entity."""
        parts = text.split(":")
        if len(parts) not in (3, 4) or not all(parts[:3]):
            raise ValueError(
                f"wrong attribution {text!r}: expected ENTITY:CONDITION:DIRECTIVE[:FLAP_S], e.g. "
                "llama70b-b/rank2:tp-straggler:deprioritize-replica:1.5"
            )
        entity, condition, directive = parts[:3]
        flap = float(parts[3]) if len(parts) == 4 else 0.0
        kind = "rank" if "/rank" in entity else ("replica" if "/" not in entity else "node")
        return cls(entity, entity.split("/", 1)[0], condition, directive, kind, flap_period_s=flap)

    def firing_at(self, t_s: float) -> bool:
        if t_s < self.start_s or (self.end_s and t_s >= self.end_s):
            return False
        if self.flap_period_s <= 0:
            return True
        return int((t_s - self.start_s) // self.flap_period_s) % 2 == 0


@dataclass(frozen=True)
class Outage:
    """Drop every verdict and heartbeat of ``deployment`` written in [start_s, end_s)."""

    deployment: str
    start_s: float
    end_s: float

    def drops(self, record: Mapping[str, Any], t_s: float) -> bool:
        return record.get("deployment") == self.deployment and self.start_s <= t_s < self.end_s


class VerdictInjector:
    """Verdict records the wrong attributions call for at each control step."""

    def __init__(self, items: Sequence[WrongAttribution], start_ns: int) -> None:
        self.items = list(items)
        self.start_ns = start_ns
        self._state: dict[int, tuple[bool, int]] = {}  # item -> (firing, last emit ns)
        self._version: dict[str, int] = {}
        self._first_seen: dict[int, int] = {}

    def due(self, now_ns: int) -> list[dict[str, Any]]:
        t_s = (now_ns - self.start_ns) / S
        out = []
        for i, item in enumerate(self.items):
            firing = item.firing_at(t_s)
            was, last_ns = self._state.get(i, (False, 0))
            if firing == was and not (firing and now_ns - last_ns >= REFRESH_NS):
                continue
            if not firing and i not in self._first_seen:
                continue  # never fired: nothing to resolve
            if firing and not was:
                self._first_seen[i] = now_ns
            self._state[i] = (firing, now_ns)
            out.append(self._record(item, firing, now_ns, self._first_seen[i]))
        return out

    def _record(
        self, item: WrongAttribution, firing: bool, now_ns: int, first_ns: int
    ) -> dict[str, Any]:
        version = self._version.get(item.entity, INJECTED_VERSION_BASE) + 1
        self._version[item.entity] = version
        return {
            "schema_version": 1,
            "entity": item.entity,
            "entity_kind": item.entity_kind,
            "deployment": item.deployment,
            "condition": item.condition,
            "state": "firing" if firing else "resolved",
            "severity": item.severity,
            "confidence": 1.0,
            "root_cause": "injected wrong attribution (closed-loop safety test)",
            "directive": item.directive,
            "directive_text": f"injected: {item.directive}",
            "evidence": [],
            "model_score": None,
            "sources_missing": [],
            "impact": "none: the entity is healthy",
            "first_seen_ns": first_ns,
            "last_seen_ns": now_ns,
            "ttl_ns": TTL_NS,
            "version": version,
            "suppressed_by": None,
        }
