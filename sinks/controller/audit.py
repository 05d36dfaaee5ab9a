"""Append-only audit log of the controller: one JSON object per line, one line per decision.

Every decision is logged with the verdict that caused it (entity, condition, version, state):

* ``apply``: an action was applied (or, with ``dry_run`` true, would have been);
* ``undo``: a reversible action was undone; ``trigger`` says why (the verdict resolved, expired
  in event time, or no longer asks for it);
* ``refuse``: a safety rule stopped an action (``reason`` says which); logged once per action
  and cause version, not every tick;
* ``advisory``: the verdict's directive has no actuator; logged once per firing episode.

Each entry also carries the event time (``at_ns``), the capacity removed after the decision
and a sequence number. The file is opened in append mode and flushed per line, so a crash
loses at most the line being written. Limits: no rotation; one writer per file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from sinks.controller.actions import Action

DECISIONS = ("apply", "undo", "refuse", "advisory")


def verdict_ref(verdict: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a verdict the audit keeps: who, what, which version, how bad."""
    return {
        "entity": str(verdict.get("entity", "")),
        "condition": str(verdict.get("condition", "")),
        "version": int(verdict.get("version") or 0),
        "state": str(verdict.get("state", "")),
        "deployment": str(verdict.get("deployment", "")),
        "directive": str(verdict.get("directive", "")),
        "severity": float(verdict.get("severity") or 0.0),
        "confidence": float(verdict.get("confidence") or 0.0),
        "last_seen_ns": int(verdict.get("last_seen_ns") or 0),
    }


class AuditLog:
    """Writes decisions to ``path`` (JSON lines, appended) and keeps them in ``entries``."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.entries: list[dict[str, Any]] = []
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")

    def record(
        self,
        decision: str,
        at_ns: int,
        verdict: Mapping[str, Any],
        *,
        action: Action | None = None,
        dry_run: bool = False,
        reason: str = "",
        capacity_removed_ratio: float = 0.0,
        trigger: Mapping[str, Any] | None = None,
        dwell_ns: int | None = None,
    ) -> dict[str, Any]:
        if decision not in DECISIONS:
            raise ValueError(f"audit decision {decision!r} is not one of {DECISIONS}")
        entry: dict[str, Any] = {
            "seq": len(self.entries),
            "at_ns": int(at_ns),
            "decision": decision,
            "dry_run": bool(dry_run),
            "action": action.as_dict() if action is not None else None,
            "verdict": verdict_ref(verdict),
            "reason": reason,
            "capacity_removed_ratio": round(float(capacity_removed_ratio), 6),
        }
        if trigger is not None:
            entry["trigger"] = dict(trigger)
        if dwell_ns is not None:
            entry["dwell_ns"] = int(dwell_ns)
        self.entries.append(entry)
        if self._file is not None:
            self._file.write(json.dumps(entry, separators=(",", ":"), sort_keys=True) + "\n")
            self._file.flush()
        return entry

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_audit(path: Path) -> list[dict[str, Any]]:
    """Entries of an audit file, in order; raises ValueError naming a line that is not JSON."""
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: audit line is not JSON ({exc})") from exc
    return out
