"""The controller: reads verdicts through the scheduler client, decides, acts, audits.

It never looks inside the pipeline: everything it knows comes from
:class:`sinks.client.SchedulerClient` (the local cache of Redis) plus the topology. Each
:meth:`Controller.tick` (event time ``now_ns``):

1. **Wanted actions.** Firing, unsuppressed verdicts (``client.worst``), worst first, that are
   still live in event time (``last_seen_ns + ttl_ns``) and whose data is fresh
   (``client.health`` is not ``unknown``) are turned into actions by
   :class:`~sinks.controller.policy.Policy`; directives without an actuator are logged as
   advisory. Under ``FailPolicy.CLOSED`` a replica whose health is ``unknown`` (its data went
   stale, or Redis is unreachable) is wanted deprioritized; under ``OPEN`` (default) unknown
   changes nothing. A replica that never reported is not treated as unknown (start-up).
   A restart is applied once and ends by itself (its own safety limits apply).
2. **Undo.** An active reversible action that no current verdict asks for is undone once its
   dwell has passed, unless its replica's health is ``unknown`` (then nobody can tell whether
   the cause is gone: hold). Sticky fixes are never undone (:mod:`sinks.controller.actions`).
3. **Apply.** Wanted actions not yet active pass the safety rules
   (:mod:`sinks.controller.safety`) or are refused. A failover takes the first free warm
   spare (``Placement.spares``); a spare in service is a serving replica like the others.

Every decision goes to the audit log with the verdict that caused it. In dry-run the
decisions, the bookkeeping and the audit are the same, but the actuator is never called and
entries are marked ``dry_run``.

Limits: one controller per fleet (no coordination between controllers); verdicts are
re-read from the cache every tick, so a tick costs O(firing verdicts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sinks.client import FailPolicy, Health, SchedulerClient
from sinks.controller.actions import Action, ActionKind, Actuator
from sinks.controller.audit import AuditLog, verdict_ref
from sinks.controller.policy import Placement, Policy, PolicyConfig
from sinks.controller.safety import Safety, SafetyConfig, removed_ratio

UNKNOWN_CONDITION = "unknown"


@dataclass(frozen=True)
class ControllerConfig:
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    dry_run: bool = False
    unknown_policy: FailPolicy = FailPolicy.OPEN
    max_verdicts: int = 10_000  # firing verdicts read per tick (worst first)


@dataclass
class ActiveAction:
    action: Action
    applied_at_ns: int
    dwell_ns: int
    cause: dict[str, Any]


@dataclass(frozen=True)
class TickResult:
    at_ns: int
    applied: int
    undone: int
    refused: int
    advisories: int
    capacity_removed_ratio: float
    active: int


class Controller:
    """Closed-loop scheduler policy over a :class:`SchedulerClient`; see the module docstring."""

    def __init__(
        self,
        client: SchedulerClient,
        actuator: Actuator,
        placement: Placement,
        audit: AuditLog,
        config: ControllerConfig | None = None,
    ) -> None:
        self.client = client
        self.actuator = actuator
        self.placement = placement
        self.audit = audit
        self.config = config or ControllerConfig()
        self.policy = Policy(placement, self.config.policy)
        self.safety = Safety(self.config.safety, max(1, placement.serving_count))
        self.active: dict[tuple[str, str], ActiveAction] = {}
        self._advised: set[tuple[str, str, str]] = set()
        self._refused: set[tuple[tuple[str, str], str, int, str]] = set()

    # -- reading ------------------------------------------------------------------------
    def _live_firing(self, now_ns: int) -> list[dict[str, Any]]:
        """Firing, unsuppressed verdicts still live in event time, worst first."""
        return [
            v
            for v in self.client.worst(self.config.max_verdicts)
            if int(v["last_seen_ns"]) + int(v["ttl_ns"]) >= now_ns
        ]  # (Redis expires verdicts on the wall clock; the TTL is defined on event time)

    def _fresh(self, verdict: Mapping[str, Any]) -> bool:
        """False when the verdict's data is stale (health unknown): neither act nor trust."""
        report = self.client.health(str(verdict["entity"]), deployment=str(verdict["deployment"]))
        return report.health is not Health.UNKNOWN

    def _unknown_replicas(self) -> dict[str, str]:
        """Replica -> why its health is unknown (stale data, Redis unreachable).

        A replica that never reported (no freshness record while Redis is reachable) is not
        yet known rather than lost: at start-up every replica is in that state, and failing
        closed on it would deprioritize the whole fleet.
        """
        out = {}
        for replica in self.placement.replicas:
            report = self.client.health(replica, deployment=replica)
            if report.health is not Health.UNKNOWN:
                continue
            state = self.client.deployment_state(replica)
            if self.client.connected and (state is None or state.last_event_ns is None):
                continue
            out[replica] = report.reason
        return out

    def _wanted(
        self, now_ns: int, unknown: Mapping[str, str]
    ) -> dict[tuple[str, str], tuple[Action, dict[str, Any]]]:
        wanted: dict[tuple[str, str], tuple[Action, dict[str, Any]]] = {}
        firing = self._live_firing(now_ns)
        still: set[tuple[str, str, str]] = set()
        spare_free = bool(self.free_spares())
        failed_over = {
            a.action.target for a in self.active.values() if a.action.kind is ActionKind.FAILOVER
        }
        for v in firing:
            # a replica failed over already keeps wanting its failover (no second plan for it)
            replicas = self.placement.replicas_of(str(v["entity"]), str(v.get("deployment", "")))
            plan = self.policy.plan(v, spare_free=spare_free or bool(failed_over & set(replicas)))
            if plan.advisory:
                memo = (str(v["entity"]), str(v["condition"]), str(v["directive"]))
                still.add(memo)
                if memo not in self._advised:
                    self._advised.add(memo)
                    self.audit.record(
                        "advisory",
                        now_ns,
                        v,
                        dry_run=self.config.dry_run,
                        reason=plan.advisory,
                        capacity_removed_ratio=self.removed_ratio(),
                    )
                continue
            if not self._fresh(v):
                continue
            for action in plan.actions:
                wanted.setdefault(action.key, (action, v))
        self._advised &= still
        if self.config.unknown_policy is FailPolicy.CLOSED:
            for replica, why in sorted(unknown.items()):
                action = Action(
                    ActionKind.DEPRIORITIZE, replica, self.config.policy.deprioritize_weight_ratio
                )
                cause = {
                    "entity": replica,
                    "deployment": replica,
                    "condition": UNKNOWN_CONDITION,
                    "state": UNKNOWN_CONDITION,
                    "version": 0,
                    "directive": "fail-closed",
                    "root_cause": why,
                }
                wanted.setdefault(action.key, (action, cause))
        return wanted

    # -- deciding -----------------------------------------------------------------------
    def removed_ratio(self) -> float:
        return removed_ratio(
            (a.action for a in self.active.values()), max(1, self.placement.serving_count)
        )

    def free_spares(self) -> list[str]:
        """Warm spares no failover has put in service yet."""
        used = {a.action.spare for a in self.active.values() if a.action.spare}
        return [r for r in self.placement.spares if r not in used]

    def _with_spare(self, action: Action) -> tuple[Action, str]:
        """A failover with its spare assigned, or why there is none ('' when assigned)."""
        if action.kind is not ActionKind.FAILOVER:
            return action, ""
        free = self.free_spares()
        if action.target in self.placement.spares and action.target in free:
            return action, f"failover: {action.target} is an idle spare, it serves nothing"
        if not free:
            return action, "no spare: every warm spare is in service already"
        return dataclasses.replace(action, spare=free[0]), ""

    def tick(self, now_ns: int) -> TickResult:
        """One decision round at event time ``now_ns``; see the module docstring."""
        unknown = self._unknown_replicas()
        before = len(self.audit.entries)
        wanted = self._wanted(now_ns, unknown)
        undone = self._undo_pass(now_ns, wanted, unknown)
        applied, refused = self._apply_pass(now_ns, wanted)
        advisories = sum(1 for e in self.audit.entries[before:] if e["decision"] == "advisory")
        return TickResult(
            now_ns, applied, undone, refused, advisories, self.removed_ratio(), len(self.active)
        )

    def _undo_pass(
        self,
        now_ns: int,
        wanted: Mapping[tuple[str, str], tuple[Action, dict[str, Any]]],
        unknown: Mapping[str, str],
    ) -> int:
        undone = 0
        for key, act in sorted(self.active.items()):
            if key in wanted or not act.action.reversible:
                continue
            if act.action.target in unknown:
                continue  # cannot tell whether the cause is gone: hold
            if now_ns - act.applied_at_ns < act.dwell_ns:
                continue
            trigger = self._why_not_wanted(act.cause, now_ns)
            if not self.config.dry_run:
                self.actuator.undo(act.action, now_ns)
            self.safety.note_undo(act.action, now_ns)
            del self.active[key]
            undone += 1
            self.audit.record(
                "undo",
                now_ns,
                act.cause,
                action=act.action,
                dry_run=self.config.dry_run,
                reason=f"held {(now_ns - act.applied_at_ns) / 1e9:.2f} s "
                f"(dwell {act.dwell_ns / 1e9:.0f} s); cause {trigger['state']}",
                capacity_removed_ratio=self.removed_ratio(),
                trigger=trigger,
            )
        return undone

    def _why_not_wanted(self, cause: Mapping[str, Any], now_ns: int) -> dict[str, Any]:
        if cause.get("condition") == UNKNOWN_CONDITION:
            return {"state": "known", "entity": cause["entity"]}
        current = self.client.verdict(str(cause["entity"]))
        if current is None:
            return {"state": "expired", "entity": cause["entity"]}
        ref = verdict_ref(current)
        if current["state"] == "firing":
            if int(current["last_seen_ns"]) + int(current["ttl_ns"]) < now_ns:
                ref["state"] = "expired"
            elif current.get("suppressed_by"):
                ref["state"] = "suppressed"
            else:
                ref["state"] = "superseded"
        return ref

    def _apply_pass(
        self, now_ns: int, wanted: Mapping[tuple[str, str], tuple[Action, dict[str, Any]]]
    ) -> tuple[int, int]:
        applied = refused = 0
        for key, (wanted_action, cause) in wanted.items():
            if key in self.active:
                continue
            active = [a.action for a in self.active.values()]
            assigned, reason = self._with_spare(wanted_action)
            action = self.safety.clamp(assigned, active) or assigned
            reason = reason or self.safety.refusal(action, active, now_ns)
            if reason:
                refused += 1
                self._refuse(now_ns, key, action, cause, reason)
                continue
            if not self.config.dry_run:
                self.actuator.apply(action, now_ns)
            self.safety.note_apply(now_ns, action)
            dwell = self.safety.dwell_ns(action)
            if action.kind is not ActionKind.RESTART:  # a restart ends by itself
                self.active[key] = ActiveAction(action, now_ns, dwell, dict(cause))
            applied += 1
            note = str(cause.get("directive", ""))
            if action != assigned:
                note += (
                    f"; clamped by the capacity cap from {wanted_action.kind.value} "
                    f"(ratio {wanted_action.ratio:g})"
                )
            self.audit.record(
                "apply",
                now_ns,
                cause,
                action=action,
                dry_run=self.config.dry_run,
                reason=note,
                capacity_removed_ratio=self.removed_ratio(),
                dwell_ns=dwell if action.reversible else None,
            )
        return applied, refused

    def _refuse(
        self,
        now_ns: int,
        key: tuple[str, str],
        action: Action,
        cause: Mapping[str, Any],
        reason: str,
    ) -> None:
        """Audit a refusal once per action, cause version and rule (not every tick)."""
        rule = reason.split(":", 1)[0]
        memo = (key, str(cause["entity"]), int(cause.get("version") or 0), rule)
        if memo in self._refused:
            return
        self._refused.add(memo)
        self.audit.record(
            "refuse",
            now_ns,
            cause,
            action=action,
            dry_run=self.config.dry_run,
            reason=reason,
            capacity_removed_ratio=self.removed_ratio(),
        )
