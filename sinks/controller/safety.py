"""Safety rules of the controller, as a real scheduler needs them. All times are event time.

* **Capacity cap**: the serving capacity removed by active actions (replica units, see
  :func:`sinks.controller.actions.capacity_units`; per replica at most 1) over the number of
  replicas never exceeds ``max_capacity_removed_ratio``. An action that would cross it is
  shrunk to the largest version that fits (:meth:`Safety.clamp`: a drain becomes a
  deprioritization, a deprioritization keeps more weight), or refused when less than
  ``min_action_units`` would be left, whatever the verdict says.
* **Rate limit**: at most ``max_actions_per_window`` new actions in any ``rate_window_ns``.
* **Dwell**: a reversible action stays at least its dwell time before it may be undone, so a
  target is undone at most once per dwell period. Each time a target's action comes back after
  an undo its dwell doubles (``dwell_backoff_factor``, up to ``max_dwell_ns``): a verdict that
  flaps gets slower and slower answers instead of an oscillation.
* **Re-apply cooldown**: after an undo the same action waits ``reapply_cooldown_ns`` before it
  may come back, so an undo is never followed at once by the same action.
* **Restarts** (a hung rank's replica is restarted) are not counted in the capacity cap, as a
  liveness restart is not a voluntary disruption: the replica the verdict names has stopped
  serving already. A wrong attribution could restart a serving replica, so restarts have their
  own limits: at most ``max_concurrent_restarts`` replicas restarting (within
  ``restart_downtime_ns``) fleet-wide, never while the others' capacity removed by actions
  is at the cap, and a crash-loop backoff per replica: after a restart the same replica
  waits ``restart_backoff_ns``, doubling with each further restart (up to
  ``max_restart_backoff_ns``).

Limits: capacity is counted in replica units, not in requests per second: it does not know
that one replica is bigger or busier than another.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from sinks.controller.actions import Action, ActionKind, capacity_units

S = 1_000_000_000


@dataclass(frozen=True)
class SafetyConfig:
    """Limits of the controller (event-time durations in ns)."""

    max_capacity_removed_ratio: float = 0.25
    min_action_units: float = 0.1
    max_actions_per_window: int = 4
    rate_window_ns: int = 10 * S
    min_dwell_ns: int = 10 * S
    dwell_backoff_factor: float = 2.0
    max_dwell_ns: int = 120 * S
    reapply_cooldown_ns: int = 5 * S
    max_concurrent_restarts: int = 1
    restart_downtime_ns: int = 20 * S
    restart_backoff_ns: int = 60 * S
    max_restart_backoff_ns: int = 30 * 60 * S

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_capacity_removed_ratio < 1.0:
            raise ValueError(
                f"max_capacity_removed_ratio={self.max_capacity_removed_ratio} must be in "
                "[0, 1): removing all capacity is never safe"
            )
        if self.max_actions_per_window < 1 or self.rate_window_ns <= 0:
            raise ValueError(
                f"rate limit {self.max_actions_per_window} per {self.rate_window_ns} ns: both "
                "must be positive"
            )
        if self.min_dwell_ns <= 0 or self.max_dwell_ns < self.min_dwell_ns:
            raise ValueError(
                f"dwell {self.min_dwell_ns}..{self.max_dwell_ns} ns: need 0 < min <= max"
            )
        if self.dwell_backoff_factor < 1.0 or self.reapply_cooldown_ns < 0:
            raise ValueError("dwell_backoff_factor must be >= 1 and reapply_cooldown_ns >= 0")
        if self.max_concurrent_restarts < 0 or self.restart_downtime_ns < 0:
            raise ValueError("max_concurrent_restarts and restart_downtime_ns must be >= 0")
        if not 0 < self.restart_backoff_ns <= self.max_restart_backoff_ns:
            raise ValueError(
                f"restart backoff {self.restart_backoff_ns}..{self.max_restart_backoff_ns} ns: "
                "need 0 < backoff <= max"
            )


def removed_ratio(actions: Iterable[Action], replica_count: int) -> float:
    """Share of serving capacity the actions remove (per replica capped at one replica)."""
    per_replica: dict[str, float] = {}
    for a in actions:
        units = capacity_units(a)
        if units > 0:
            per_replica[a.target] = min(1.0, per_replica.get(a.target, 0.0) + units)
    return sum(per_replica.values()) / max(1, replica_count)


class Safety:
    """The rules' state: recent applies (rate), undo counts (dwell backoff), last undos."""

    def __init__(self, config: SafetyConfig, replica_count: int) -> None:
        if replica_count < 1:
            raise ValueError(f"replica_count={replica_count}: the controller needs >= 1 replica")
        self.config = config
        self.replica_count = replica_count
        self._applied_at: deque[int] = deque()
        self._undos: dict[tuple[str, str], int] = {}
        self._undone_at: dict[tuple[str, str], int] = {}
        self._restarts: dict[str, list[int]] = {}  # replica -> restart times

    def restarting(self, now_ns: int) -> list[str]:
        """Replicas restarted less than the restart downtime ago."""
        down = self.config.restart_downtime_ns
        return sorted(r for r, ts in self._restarts.items() if now_ns - ts[-1] < down)

    def _restart_refusal(self, action: Action, active: Iterable[Action], now_ns: int) -> str:
        c = self.config
        past = self._restarts.get(action.target, [])
        if past:
            backoff = min(c.max_restart_backoff_ns, c.restart_backoff_ns * 2 ** (len(past) - 1))
            if now_ns - past[-1] < backoff:
                return (
                    f"restart backoff: {action.target} restarted {(now_ns - past[-1]) / S:.1f} s "
                    f"ago ({len(past)} restarts, backoff {backoff / S:g} s)"
                )
        busy = [r for r in self.restarting(now_ns) if r != action.target]
        if len(busy) >= c.max_concurrent_restarts:
            return f"restart limit: {', '.join(busy) or 'none allowed'} restarting"
        others = removed_ratio([a for a in active if a.target != action.target], 1)
        if others > 0 and others >= c.max_capacity_removed_ratio * self.replica_count - 1e-9:
            return "capacity cap: actions on other replicas already remove the capped share"
        return ""

    def refusal(self, action: Action, active: Iterable[Action], now_ns: int) -> str:
        """Why ``action`` may not be applied now ('' when it may)."""
        c = self.config
        last_undo = self._undone_at.get(action.key)
        if last_undo is not None and now_ns - last_undo < c.reapply_cooldown_ns:
            wait_s = (last_undo + c.reapply_cooldown_ns - now_ns) / S
            return f"cooldown: undone {(now_ns - last_undo) / S:.2f} s ago, {wait_s:.2f} s to go"
        while self._applied_at and now_ns - self._applied_at[0] >= c.rate_window_ns:
            self._applied_at.popleft()
        if len(self._applied_at) >= c.max_actions_per_window:
            return (
                f"rate limit: {len(self._applied_at)} actions in the last "
                f"{c.rate_window_ns / S:g} s (max {c.max_actions_per_window})"
            )
        if action.kind is ActionKind.RESTART:
            return self._restart_refusal(action, active, now_ns)
        after = removed_ratio([*active, action], self.replica_count)
        if after > c.max_capacity_removed_ratio + 1e-9:
            return (
                f"capacity cap: would remove {after:.0%} of serving capacity "
                f"(cap {c.max_capacity_removed_ratio:.0%})"
            )
        return ""

    def clamp(self, action: Action, active: Iterable[Action]) -> Action | None:
        """The largest version of ``action`` the capacity cap admits (itself when it fits).

        A drain or deprioritization becomes a deprioritization keeping just enough weight, a
        batch reduction keeps more batch; None when under ``min_action_units`` would be left.
        """
        active = list(active)
        if capacity_units(action) == 0:
            return action
        c = self.config
        budget = c.max_capacity_removed_ratio * self.replica_count
        others = removed_ratio([a for a in active if a.target != action.target], 1)
        mine = removed_ratio([a for a in active if a.target == action.target], 1)
        room = min(1.0, budget - others) - mine
        if capacity_units(action) <= room + 1e-9:
            return action
        if room < c.min_action_units:
            return None
        kind = ActionKind.DEPRIORITIZE if action.kind is ActionKind.DRAIN else action.kind
        return Action(kind, action.target, round(1.0 - room, 6))

    def dwell_ns(self, action: Action) -> int:
        """Dwell of the action's next application: doubles with each past undo of its target."""
        c = self.config
        undos = self._undos.get(action.key, 0)
        return int(min(c.max_dwell_ns, c.min_dwell_ns * c.dwell_backoff_factor**undos))

    def note_apply(self, now_ns: int, action: Action | None = None) -> None:
        self._applied_at.append(now_ns)
        if action is not None and action.kind is ActionKind.RESTART:
            self._restarts.setdefault(action.target, []).append(now_ns)

    def note_undo(self, action: Action, now_ns: int) -> None:
        self._undos[action.key] = self._undos.get(action.key, 0) + 1
        self._undone_at[action.key] = now_ns
