"""What the controller can do to a cluster, and the actuator that does it to the simulator.

An :class:`Action` is a kind and a target (a replica, a node, a NIC port, or the router). Its
cost is the serving capacity it removes, in replica units (:func:`capacity_units`): a drained
replica is 1, a replica whose router weight is halved is 0.5, one that admits half its new
requests is 0.5, one whose maximum batch is halved is 0.5. Fixes that remove no capacity
(backfill, re-path, offload throttle, router rebalance) cost 0.

A failover (:attr:`ActionKind.FAILOVER`) drains the replica and puts a warm spare (a replica
held at router weight 0) in its place with the drained replica's weight: it removes no
serving capacity (cost 0) but uses up the spare.

Reversible actions (drain, deprioritize, admission control, reduce batch) are undone once
their cause is gone and their dwell time has passed (:mod:`sinks.controller.safety`). Fixes
are *sticky*: a resolved verdict means the symptom went away, not that the cause was
repaired, so undoing a fix would bring the symptom back; they stay until an operator reverts
them (the audit log lists them). A failover is sticky too: the drained replica's hardware
needs an operator before it serves again (an undrained throttled GPU would straggle again).

:class:`SimActuator` applies actions through the simulator's control surface
(``producers/sim/control.py``) and records every call it makes (``calls``), so the audit log
can be checked against what was really done. Limits: it knows router weights only as it set
them (weights are read from the router once, on first touch). A restart
(:attr:`ActionKind.RESTART`) takes the replica out for ``restart_downtime_s`` (model reload;
the router sends it nothing meanwhile) and ends by itself: it is neither reversible nor kept
as active; :mod:`sinks.controller.safety` limits how often it may happen.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from producers.sim.control import Control


class ActionKind(StrEnum):
    DRAIN = "drain-replica"
    DEPRIORITIZE = "deprioritize-replica"
    ADMISSION = "admission-control"
    REDUCE_BATCH = "reduce-batch"
    RESTART = "restart-replica"
    ENABLE_BACKFILL = "enable-backfill"
    REBALANCE_ROUTER = "rebalance-router"
    REPATH = "re-path"
    THROTTLE_OFFLOAD = "throttle-offload"
    FAILOVER = "failover-to-spare"


REVERSIBLE = frozenset(
    {ActionKind.DRAIN, ActionKind.DEPRIORITIZE, ActionKind.ADMISSION, ActionKind.REDUCE_BATCH}
)
ROUTER_TARGET = "router"


@dataclass(frozen=True)
class Action:
    """One action on one target; ``ratio`` is the kind's setting (see :func:`capacity_units`).

    ``ratio``: DEPRIORITIZE, the router weight kept (0.5 halves it); ADMISSION, the share of
    the replica's new requests admitted (the rest are rejected); REDUCE_BATCH, the share of
    the configured maximum batch kept; THROTTLE_OFFLOAD, the share of offload bandwidth
    kept; unused otherwise. ``spare``: FAILOVER, the spare replica that takes over.
    """

    kind: ActionKind
    target: str
    ratio: float = 1.0
    spare: str = ""

    @property
    def key(self) -> tuple[str, str]:
        """Identity for bookkeeping: one active action per (kind, target)."""
        return (self.kind.value, self.target)

    @property
    def reversible(self) -> bool:
        return self.kind in REVERSIBLE

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind.value, "target": self.target, "ratio": self.ratio}
        if self.spare:
            out["spare"] = self.spare
        return out


def capacity_units(action: Action) -> float:
    """Serving capacity the action removes from its replica, in replica units (0..1)."""
    if action.kind is ActionKind.DRAIN:
        return 1.0
    if action.kind in (ActionKind.DEPRIORITIZE, ActionKind.ADMISSION, ActionKind.REDUCE_BATCH):
        return max(0.0, min(1.0, 1.0 - action.ratio))
    return 0.0  # fixes, failovers; a restart has its own rules (sinks.controller.safety)


class Actuator(Protocol):
    """Something that carries actions out (the simulator here, a real router elsewhere)."""

    def apply(self, action: Action, at_ns: int) -> None: ...

    def undo(self, action: Action, at_ns: int) -> None: ...


@dataclass(frozen=True)
class ControlCall:
    """One call made into the simulator's control surface."""

    at_ns: int
    method: str
    args: tuple[Any, ...]
    action: Action
    undo: bool


class SimActuator:
    """Applies actions to a :class:`producers.sim.control.Control` and records every call.

    ``router_weights`` and ``max_batch`` are the router's current weights and each replica's
    configured maximum batch, as the scheduler that owns them knows them; ``spares`` the warm
    spares among the replicas (``Placement.spares``): a router rebalance leaves them out until
    a failover puts one in service.
    """

    def __init__(
        self,
        control: Control,
        router_weights: dict[str, float],
        max_batch: dict[str, int],
        restart_downtime_s: float = 20.0,
        spares: Iterable[str] = (),
    ) -> None:
        self._control = control
        self.restart_downtime_s = restart_downtime_s
        self._base_weight = dict(router_weights)
        self._factor: dict[str, float] = {}
        self._max_batch = dict(max_batch)
        self._idle_spares = set(spares)
        self.calls: list[ControlCall] = []

    def _call(self, at_ns: int, action: Action, undo: bool, method: str, *args: Any) -> None:
        getattr(self._control, method)(*args)
        self.calls.append(ControlCall(at_ns, method, tuple(args), action, undo))

    def _set_weight(self, at_ns: int, action: Action, undo: bool, replica: str) -> None:
        weight = self._base_weight.get(replica, 1.0) * self._factor.get(replica, 1.0)
        self._call(at_ns, action, undo, "set_router_weight", replica, weight)

    def apply(self, action: Action, at_ns: int) -> None:
        kind, target = action.kind, action.target
        if kind is ActionKind.DRAIN:
            self._call(at_ns, action, False, "drain_replica", target)
        elif kind is ActionKind.DEPRIORITIZE:
            self._factor[target] = action.ratio
            self._set_weight(at_ns, action, False, target)
        elif kind is ActionKind.ADMISSION:
            self._call(at_ns, action, False, "set_admission_ratio", target, action.ratio)
        elif kind is ActionKind.RESTART:
            self._call(at_ns, action, False, "restart_replica", target, self.restart_downtime_s)
        elif kind is ActionKind.REDUCE_BATCH:
            cap = self._replica_max_batch(target)
            self._call(
                at_ns, action, False, "set_max_batch", target, max(1, round(cap * action.ratio))
            )
        elif kind is ActionKind.ENABLE_BACKFILL:
            self._call(at_ns, action, False, "enable_backfill", target)
        elif kind is ActionKind.FAILOVER:
            self._failover(at_ns, action)
        elif kind is ActionKind.REBALANCE_ROUTER:
            for replica in sorted(self._base_weight.keys() - self._idle_spares):
                self._base_weight[replica] = 1.0
                self._set_weight(at_ns, action, False, replica)
        elif kind is ActionKind.REPATH:
            self._call(at_ns, action, False, "repath", target)
        elif kind is ActionKind.THROTTLE_OFFLOAD:
            self._call(at_ns, action, False, "throttle_offload", target, action.ratio)
        else:  # pragma: no cover - exhaustive over ActionKind
            raise ValueError(f"unknown action kind {kind!r}")

    def undo(self, action: Action, at_ns: int) -> None:
        kind, target = action.kind, action.target
        if kind is ActionKind.DRAIN:
            self._call(at_ns, action, True, "undrain_replica", target)
        elif kind is ActionKind.DEPRIORITIZE:
            self._factor.pop(target, None)
            self._set_weight(at_ns, action, True, target)
        elif kind is ActionKind.ADMISSION:
            self._call(at_ns, action, True, "set_admission_ratio", target, 1.0)
        elif kind is ActionKind.REDUCE_BATCH:
            self._call(
                at_ns, action, True, "set_max_batch", target, self._replica_max_batch(target)
            )
        else:
            raise ValueError(
                f"{kind.value} on {target} is a sticky fix and is never undone automatically; "
                "revert it by hand"
            )

    def _failover(self, at_ns: int, action: Action) -> None:
        """Drain the target; the spare takes the target's weight (1 when it had none)."""
        spare = action.spare
        if spare not in self._idle_spares:
            raise ValueError(
                f"failover of {action.target} to {spare or '(no spare)'!r}: not an idle spare; "
                f"idle spares: {sorted(self._idle_spares)}"
            )
        self._idle_spares.discard(spare)
        self._call(at_ns, action, False, "drain_replica", action.target)
        self._base_weight[spare] = self._base_weight.get(action.target, 1.0) or 1.0
        self._set_weight(at_ns, action, False, spare)

    def _replica_max_batch(self, replica: str) -> int:
        try:
            return self._max_batch[replica]
        except KeyError:
            raise KeyError(
                f"no configured maximum batch for replica {replica!r}; known: "
                f"{sorted(self._max_batch)}"
            ) from None
