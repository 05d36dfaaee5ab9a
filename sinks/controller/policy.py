"""Policy: a verdict's directive -> the actions that carry it out, on which targets.

The directive codes are those of ``models/runbook.toml``. Each maps to actions of the
simulator's control surface, or to nothing (the directive is then *advisory*: logged, not
applied). The mapping, and why:

================================  =====================  ========================================
directive                         action                 why
================================  =====================  ========================================
deprioritize-replica              deprioritize replica   as written
drain-node                        failover to a spare    when a warm spare is free: the spare
                                                         serves in the node's replica's place, no
                                                         capacity is lost, so any slowdown is
                                                         worth it
drain-node (no spare free)        deprioritize replica   the node's replica keeps serving a smaller
                                  (``drain`` optional)   share: draining one of two replicas at
                                                         60 % load overloads the other
restart-rank                      restart replica        a hung rank's replica serves nothing
                                                         until its processes restart (restarts
                                                         have their own limits, see safety)
enable-backfill                   enable backfill        as written
admission-control                 admission control      admit a share of the replica's new
                                                         requests, reject the rest (a smaller
                                                         maximum batch changes nothing while the
                                                         KV budget, not the batch, limits it)
length-aware-routing              deprioritize replica   the router's only length lever: move the
                                                         unpinned share off the harmed replica
rebalance-router                  rebalance router       router weights back to equal
throttle-offload                  throttle offload       on the node
re-path, inspect-link, re-route   re-path                flows off the port's path ("re-path
                                                         meanwhile" for inspect-link)
fix-pfc                           re-path                the culprit's pauses stop hitting flows
everything else                   advisory               no actuator: repartition-stages,
                                                         fix-time-sync, rebalance-experts,
                                                         scale-preprocessing, rate-shape,
                                                         tune-congestion-control, investigate...
================================  =====================  ========================================

Conditions of the runbook's ``config`` latency class (pp-stage-imbalance, pcie-degradation)
are advisory whatever their directive: they stand since the deployment started, so there is no
onset to react to, and their fix (repartition, reseat a link) is maintenance; removing
serving capacity for them automatically costs throughput for a harm the scheduler cannot
measure (in the simulator a link trained x16 -> x8 leaves serving latency unchanged).

Warm spares (``Placement.spares``: replicas the router holds at weight 0) serve nothing until
a failover puts one in service; the controller knows which are still free.

Entities are resolved with the topology (TopologyRecords): a replica (``llama70b-a``), a rank
(``llama70b-a/rank5``) -> its replica; a node (``node01``), GPU (``node01/gpu2``), port
(``node01/mlx5_2``) or path (``node01/mlx5_2->leaf0:p7``) -> its node, the replicas placed on
it, and the port. A fabric entity resolves to nothing (advisory).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from models.rules import SEVERITY_FLOOR
from sinks.controller.actions import ROUTER_TARGET, Action, ActionKind

DIRECTIVE_ACTIONS: dict[str, tuple[ActionKind, ...]] = {
    "deprioritize-replica": (ActionKind.DEPRIORITIZE,),
    "drain-node": (ActionKind.DEPRIORITIZE,),
    "restart-rank": (ActionKind.RESTART,),
    "enable-backfill": (ActionKind.ENABLE_BACKFILL,),
    "admission-control": (ActionKind.ADMISSION,),
    "length-aware-routing": (ActionKind.DEPRIORITIZE,),
    "rebalance-router": (ActionKind.REBALANCE_ROUTER,),
    "throttle-offload": (ActionKind.THROTTLE_OFFLOAD,),
    "re-path": (ActionKind.REPATH,),
    "inspect-link": (ActionKind.REPATH,),
    "re-route": (ActionKind.REPATH,),
    "fix-pfc": (ActionKind.REPATH,),
}

_REPLICA_KINDS = frozenset(
    {
        ActionKind.DRAIN,
        ActionKind.FAILOVER,
        ActionKind.DEPRIORITIZE,
        ActionKind.ADMISSION,
        ActionKind.REDUCE_BATCH,
        ActionKind.RESTART,
        ActionKind.ENABLE_BACKFILL,
    }
)


@dataclass(frozen=True)
class PolicyConfig:
    """Settings of the actions (ratios are what is *kept*: 0.5 halves)."""

    deprioritize_weight_ratio: float = 0.75
    # A verdict whose evidence measures the replica's slowdown (the share of its step time
    # spent waiting for the culprit) deprioritizes in proportion: weight kept = 1 - slowdown,
    # never below min_weight_ratio. The replica keeps the load its remaining speed carries
    # instead of handing a fixed share to peers that may have no headroom.
    slowdown_features: tuple[str, ...] = ("nccl.caused_wait_ratio",)
    min_weight_ratio: float = 0.5
    # ...and below this slowdown it is advisory: shifting a few percent of the load re-draws
    # which requests land where and costs more than it recovers (tp-straggler at its
    # reference severity: 6 % slowdown, goodput -0.7 % and p99 ITL +1.9 % when acted on).
    min_slowdown_ratio: float = 0.1
    # Load-class verdicts (kv-cache-pressure, request-length-skew, ingress-imbalance) at the
    # floor of their severity scale (harm at the edge of the SLO) are advisory: moving or
    # shedding load for them cost more than the harm (clean runs: goodput -1.6 %).
    act_on_load_floor: bool = False
    admission_ratio: float = 0.6
    reduce_batch_ratio: float = 0.5
    throttle_offload_ratio: float = 0.5
    drain_node_as: ActionKind = ActionKind.DEPRIORITIZE  # or ActionKind.DRAIN
    advisory_classes: frozenset[str] = frozenset({"config"})  # runbook latency classes
    # Verdicts with severity * confidence below this are advisory: the detector's false
    # positives sit just above its thresholds, at the lowest severities (0 = act on all).
    min_score: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_slowdown_ratio < 1.0:
            raise ValueError(
                f"policy min_slowdown_ratio={self.min_slowdown_ratio} must be in [0, 1)"
            )
        for name in (
            "deprioritize_weight_ratio",
            "min_weight_ratio",
            "admission_ratio",
            "reduce_batch_ratio",
            "throttle_offload_ratio",
        ):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"policy {name}={value} must be in (0, 1]; it is the share kept")
        if self.drain_node_as not in (ActionKind.DEPRIORITIZE, ActionKind.DRAIN):
            raise ValueError(
                f"policy drain_node_as={self.drain_node_as!r}: use "
                f"{ActionKind.DEPRIORITIZE.value!r} or {ActionKind.DRAIN.value!r}"
            )


@dataclass
class Placement:
    """Where entities live: replicas, the nodes each replica uses, from TopologyRecords."""

    replicas: list[str] = field(default_factory=list)
    node_replicas: dict[str, list[str]] = field(default_factory=dict)
    spares: tuple[str, ...] = ()  # warm spares among ``replicas`` (router weight 0)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.spares) - set(self.replicas))
        if unknown:
            raise ValueError(f"spares {unknown} are not replicas of the topology {self.replicas}")

    @property
    def serving_count(self) -> int:
        """Replicas that serve (spares do not until a failover)."""
        return len(self.replicas) - len(self.spares)

    @classmethod
    def from_topology(
        cls, records: Iterable[Mapping[str, Any]], spares: Iterable[str] = ()
    ) -> Placement:
        replicas: dict[str, None] = {}
        nodes: dict[str, dict[str, None]] = {}
        for rec in records:
            if rec.get("removed"):
                continue
            replica = str(rec.get("replica") or rec["deployment"])
            replicas[replica] = None
            nodes.setdefault(str(rec["node"]), {})[replica] = None
        return cls(
            sorted(replicas),
            {n: sorted(r) for n, r in sorted(nodes.items())},
            tuple(sorted(set(spares))),
        )

    def node_of(self, entity: str) -> str | None:
        head = entity.split("/", 1)[0]
        return head if head in self.node_replicas else None

    def replicas_of(self, entity: str, deployment: str = "") -> list[str]:
        """Replicas an entity belongs to (a node may host several); [] when unknown."""
        head = entity.split("/", 1)[0]
        if head in self.replicas:
            return [head]
        node = self.node_of(entity)
        if node is not None:
            return list(self.node_replicas[node])
        return [deployment] if deployment in self.replicas else []

    def port_of(self, entity: str) -> str | None:
        """'<node>/mlx5_<i>' of a port or path entity ('<node>/mlx5_2->leaf0:p7')."""
        node = self.node_of(entity)
        if node is None or "/" not in entity:
            return None
        local = entity.split("/", 1)[1].split("->", 1)[0]
        return f"{node}/{local}" if local.startswith("mlx5_") else None

    def deployment_of_node(self) -> dict[str, str]:
        """Node -> the first replica on it (the scheduler client needs a deployment per node)."""
        return {n: r[0] for n, r in self.node_replicas.items() if r}


@dataclass(frozen=True)
class Plan:
    """What a verdict asks for: actions, or why it is advisory only (``advisory`` set)."""

    actions: tuple[Action, ...]
    advisory: str = ""


def runbook_classes() -> dict[str, str]:
    """Condition id -> latency class (acute, load, config), from the runbook."""
    from models.runbook import load_runbook

    return {c.id: c.latency_class for c in load_runbook().conditions}


class Policy:
    """Turns a firing verdict into a :class:`Plan` (pure: no I/O, no state).

    ``condition_classes`` maps condition ids to runbook latency classes (default: the
    runbook's); conditions of a class in ``config.advisory_classes`` are advisory.
    """

    def __init__(
        self,
        placement: Placement,
        config: PolicyConfig | None = None,
        condition_classes: Mapping[str, str] | None = None,
    ) -> None:
        self.placement = placement
        self.config = config or PolicyConfig()
        self.classes = dict(runbook_classes() if condition_classes is None else condition_classes)

    def plan(self, verdict: Mapping[str, Any], spare_free: bool = False) -> Plan:
        """The verdict's actions; ``spare_free``: a warm spare can take a drained replica's
        place (the controller knows which spares are in use)."""
        directive = str(verdict.get("directive", ""))
        entity = str(verdict["entity"])
        latency_class = self.classes.get(str(verdict.get("condition", "")), "")
        if latency_class in self.config.advisory_classes:
            return Plan(
                (),
                f"{verdict.get('condition')} is a {latency_class}-class condition: maintenance, "
                f"not automatic action ({verdict.get('directive_text', directive)})",
            )
        severity = float(verdict.get("severity") or 0.0)
        if (
            latency_class == "load"
            and not self.config.act_on_load_floor
            and severity <= SEVERITY_FLOOR
        ):
            return Plan(
                (),
                f"{verdict.get('condition')} at the floor of its severity scale "
                f"({severity:g}): the harm is at the SLO's edge, moving load costs more",
            )
        score = severity * float(verdict.get("confidence") or 0.0)
        if score < self.config.min_score:
            return Plan(
                (),
                f"severity x confidence {score:.3f} is below the action threshold "
                f"{self.config.min_score:g}",
            )
        kinds = DIRECTIVE_ACTIONS.get(directive)
        if not kinds:
            return Plan(
                (),
                f"directive {directive or '(none)'!r} has no actuator in this cluster: "
                f"{verdict.get('directive_text', '')}".rstrip(": "),
            )
        if directive == "drain-node":
            kinds = (ActionKind.FAILOVER,) if spare_free else (self.config.drain_node_as,)
        slowdown = _evidence_value(verdict, self.config.slowdown_features)
        if (
            ActionKind.DEPRIORITIZE in kinds
            and slowdown is not None
            and slowdown < self.config.min_slowdown_ratio
        ):
            return Plan(
                (),
                f"replica slowed by {slowdown:.1%}, under the {self.config.min_slowdown_ratio:.0%} "
                f"worth moving load for: {verdict.get('directive_text', directive)}",
            )
        actions: list[Action] = []
        for kind in kinds:
            targets = self._targets(kind, entity, str(verdict.get("deployment", "")))
            if not targets:
                return Plan((), f"directive {directive!r}: cannot place {entity!r} for {kind}")
            actions += [Action(kind, t, self._ratio(kind, slowdown)) for t in targets]
        return Plan(tuple(actions))

    def _targets(self, kind: ActionKind, entity: str, deployment: str) -> list[str]:
        p = self.placement
        if kind in _REPLICA_KINDS:
            return p.replicas_of(entity, deployment)
        if kind is ActionKind.REBALANCE_ROUTER:
            return [ROUTER_TARGET] if len(p.replicas) > 1 else []
        if kind is ActionKind.REPATH:
            port = p.port_of(entity)
            return [port] if port else []
        if kind is ActionKind.THROTTLE_OFFLOAD:
            node = p.node_of(entity)
            return [node] if node else []
        return []

    def _ratio(self, kind: ActionKind, slowdown: float | None) -> float:
        """The action's ratio; a deprioritization keeps 1 - the verdict's measured slowdown."""
        c = self.config
        if kind is ActionKind.DEPRIORITIZE and slowdown is not None:
            return round(max(c.min_weight_ratio, min(1.0, 1.0 - slowdown)), 4)
        return {
            ActionKind.DEPRIORITIZE: c.deprioritize_weight_ratio,
            ActionKind.ADMISSION: c.admission_ratio,
            ActionKind.REDUCE_BATCH: c.reduce_batch_ratio,
            ActionKind.THROTTLE_OFFLOAD: c.throttle_offload_ratio,
        }.get(kind, 1.0)


def _evidence_value(verdict: Mapping[str, Any], features: tuple[str, ...]) -> float | None:
    """The first of ``features`` found in the verdict's evidence (None when none is)."""
    for item in verdict.get("evidence") or ():
        if item.get("feature") in features:
            value = float(item.get("value", float("nan")))
            if value == value:  # not nan
                return max(0.0, value)
    return None
