"""Fault injectors: one per runbook condition, plus harmless look-alikes.

An injector changes CAUSES only — a GPU clock factor, a PCIe link's width, an optic's bit
error rate, a receiver's pause duty, router weights, a tokenizer's slow factor, an engine's
backfill switch, expert popularity, a clock step, a hung rank, a KV budget, client
behaviour, fabric load — and returns how to undo it. Every symptom in the telemetry emerges
from the mechanics (engine, collectives, fabric, pcie, gpu, clocks); this module must never
import the telemetry emitters or build frames (a structural test checks it).

Severity is drawn by the suite from ``KINDS[kind].range`` around ``reference``; the table is
reproduced in docs/simulator.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from producers.sim.arrivals import Lengths, MicroburstSource, PoissonSource
from producers.sim.gpu import THROTTLE_HW_THERMAL, THROTTLE_SW_THERMAL
from producers.sim.scenario import FaultSpec, Scenario, ScenarioError

if TYPE_CHECKING:
    from producers.sim.world import World

Undo = Callable[[], None]


@dataclass(frozen=True)
class FaultKind:
    """What an injector does and how its severity is stated."""

    name: str
    condition: str  # runbook id, or lookalike:<kind>
    family: str
    target: str  # rank | gpu | port | node | replica | fabric
    unit: str
    reference: float
    low: float
    high: float
    log_scale: bool = False
    load_family: bool = False  # labelled from true state, not from the injection
    default_duration_s: float = 0.0  # 0: until the end (look-alike bursts are brief)
    needs: str = ""  # moe | infiniband | roce | pp
    summary: str = ""


KINDS: dict[str, FaultKind] = {
    k.name: k
    for k in [
        FaultKind(
            "gpu-throttle",
            "tp-straggler",
            "compute",
            "rank",
            "clock_reduction_ratio",
            0.15,
            0.08,
            0.30,
            summary="GPU SM clock capped at (1 - severity) by HW thermal slowdown",
        ),
        FaultKind(
            "host-jitter",
            "tp-straggler",
            "compute",
            "rank",
            "host_delay_ratio",
            0.15,
            0.08,
            0.30,
            summary="CPU launch delay of severity x a kernel segment per collective; clocks normal",
        ),
        FaultKind(
            "static-batching",
            "early-stop-skew",
            "compute",
            "replica",
            "backfill_disabled",
            1.0,
            1.0,
            1.0,
            summary="engine stops backfilling freed batch slots",
        ),
        FaultKind(
            "stage-partition",
            "pp-stage-imbalance",
            "compute",
            "replica",
            "stage_layer_excess_ratio",
            0.2,
            0.1,
            0.4,
            needs="pp",
            summary="stage 0 holds (1 + severity)/pp of the layers",
        ),
        FaultKind(
            "hot-expert",
            "moe-expert-imbalance",
            "compute",
            "replica",
            "hot_expert_popularity_ratio",
            4.0,
            2.5,
            8.0,
            needs="moe",
            summary="one expert is severity x as popular as the others",
        ),
        FaultKind(
            "long-prompt-tenant",
            "request-length-skew",
            "compute",
            "replica",
            "tenant_prompt_tokens",
            6000.0,
            4000.0,
            9000.0,
            load_family=True,
            summary="a tenant with long prompts pinned to one replica by session affinity",
        ),
        FaultKind(
            "kv-budget",
            "kv-cache-pressure",
            "compute",
            "replica",
            "kv_budget_ratio",
            0.25,
            0.15,
            0.4,
            load_family=True,
            summary="KV cache budget cut to severity x its configured size",
        ),
        FaultKind(
            "tokenizer-slow",
            "host-preprocessing-delay",
            "compute",
            "node",
            "tokenizer_slowdown_factor",
            8.0,
            4.0,
            20.0,
            log_scale=True,
            summary="CPU pre-processing on the replica's front-end node severity x slower",
        ),
        FaultKind(
            "rank-hang",
            "rank-hang",
            "compute",
            "rank",
            "hung",
            1.0,
            1.0,
            1.0,
            summary="a rank's process wedges; it never reaches its next collective",
        ),
        FaultKind(
            "clock-step",
            "clock-desync",
            "compute",
            "node",
            "clock_step_ns",
            200_000.0,
            50_000.0,
            2_000_000.0,
            log_scale=True,
            summary="the node's host clock steps by severity ns",
        ),
        FaultKind(
            "kv-offload",
            "pcie-saturation",
            "pcie",
            "node",
            "offload_demand_over_link_ratio",
            1.3,
            1.05,
            2.0,
            summary="KV offload on every GPU of the node asks severity x its link bandwidth",
        ),
        FaultKind(
            "link-downtrain",
            "pcie-degradation",
            "pcie",
            "gpu",
            "lanes_lost",
            8.0,
            4.0,
            12.0,
            summary="PCIe link trains x16 -> x(16 - severity), replays from a bad riser",
        ),
        FaultKind(
            "router-weight",
            "ingress-imbalance",
            "network-ns",
            "replica",
            "request_share",
            0.9,
            0.8,
            0.95,
            load_family=True,
            summary="the router's weights send share severity of all requests to one replica",
        ),
        FaultKind(
            "bursty-clients",
            "ingress-microburst",
            "network-ns",
            "replica",
            "burst_requests",
            200.0,
            100.0,
            400.0,
            summary="clients send bursts of severity requests within 100 us",
        ),
        FaultKind(
            "fabric-load",
            "fabric-congestion",
            "network-ew",
            "fabric",
            "fabric_load_ratio",
            0.6,
            0.45,
            0.8,
            summary="fabric-wide background load of severity x line rate on every port",
        ),
        FaultKind(
            "optic-ber",
            "retransmit-storm",
            "network-ew",
            "port",
            "pre_fec_ber",
            1e-5,
            5e-6,
            3e-5,
            log_scale=True,
            summary="a degraded optic with pre-FEC bit error rate severity",
        ),
        FaultKind(
            "nic-stall",
            "novel:periodic-nic-stall",
            "network-ew",
            "port",
            "stall_ms_per_s",
            200.0,
            100.0,
            400.0,
            summary="a NIC port stops transmitting severity ms out of every second (outside "
            "the runbook: the novel fault an online model must flag)",
        ),
        FaultKind(
            "pfc-receiver",
            "pfc-pause-storm",
            "network-ew",
            "port",
            "pause_duty_ratio",
            0.3,
            0.15,
            0.6,
            needs="roce",
            summary="a slow receiver sends PFC pauses severity of the time",
        ),
        FaultKind(
            "credit-withhold",
            "credit-starvation",
            "network-ew",
            "port",
            "credit_withhold_ratio",
            0.3,
            0.15,
            0.6,
            needs="infiniband",
            summary="an InfiniBand receiver withholds credits severity of the time",
        ),
        # harmless look-alikes
        FaultKind(
            "load-burst",
            "lookalike:load-burst",
            "lookalike",
            "replica",
            "rate_multiplier",
            1.0,
            0.5,
            1.5,
            default_duration_s=1.5,
            summary="all clients send (1 + severity) x their rate for 1.5 s",
        ),
        FaultKind(
            "long-prompts",
            "lookalike:long-prompts",
            "lookalike",
            "replica",
            "tenant_prompt_tokens",
            3000.0,
            2000.0,
            5000.0,
            summary="a few long prompts spread over all replicas",
        ),
        FaultKind(
            "busier-node",
            "lookalike:busier-node",
            "lookalike",
            "replica",
            "router_weight_ratio",
            1.15,
            1.05,
            1.25,
            summary="one replica gets a little more traffic, within its capacity",
        ),
        FaultKind(
            "planned-drain",
            "lookalike:planned-drain",
            "lookalike",
            "replica",
            "drained",
            1.0,
            1.0,
            1.0,
            summary="a replica is drained on purpose; peers absorb its load",
        ),
    ]
}


def check_fault_spec(scenario: Scenario, f: FaultSpec) -> None:
    """Raise ScenarioError if the fault cannot run in this scenario."""
    kind = KINDS.get(f.kind)
    where = f"scenario {scenario.name} fault {f.kind}"
    if kind is None:
        raise ScenarioError(f"{where}: unknown kind; known kinds: {sorted(KINDS)}")
    if f.onset_s < 0 or (f.end_s and f.end_s <= f.onset_s):
        raise ScenarioError(f"{where}: need 0 <= onset_s < end_s (end_s 0 = until the end)")
    if kind.needs == "moe" and not any(d.model.n_experts for d in scenario.deployments):
        raise ScenarioError(f"{where}: needs a MoE deployment (model.n_experts > 0)")
    if kind.needs in ("roce", "infiniband") and scenario.cluster.fabric != kind.needs:
        raise ScenarioError(f"{where}: needs cluster.fabric = {kind.needs!r}")
    if kind.needs == "pp" and not any(d.pp > 1 for d in scenario.deployments):
        raise ScenarioError(f"{where}: needs a deployment with pp > 1")
    if kind.unit == "request_share" and not 0.0 < severity_of(f) < 1.0:
        raise ScenarioError(
            f"{where}: severity is the share of all requests the replica gets, "
            f"0 < severity < 1; got {severity_of(f)}"
        )
    if kind.target != "fabric" and not f.target:
        raise ScenarioError(
            f"{where}: needs target = a {kind.target} (e.g. {_TARGET_EXAMPLES[kind.target]})"
        )


_TARGET_EXAMPLES = {
    "rank": "'llama70b-a/rank3'",
    "gpu": "'node01/gpu2' or 'llama70b-a/rank3'",
    "port": "'node01/mlx5_2' or 'llama70b-a/rank3'",
    "node": "'node00' or a replica name (its front-end node)",
    "replica": "'llama70b-a'",
    "fabric": "''",
}


def severity_of(f: FaultSpec) -> float:
    return f.severity or KINDS[f.kind].reference


# -- entity resolution ----------------------------------------------------------------


def entity_of(world: World, f: FaultSpec) -> tuple[str, str]:
    """(deployment, entity id) the verdict for this fault should name."""
    kind = KINDS[f.kind]
    lay = world.layout
    if kind.target == "fabric":
        return "*", f"fabric:{lay.fabric_name}"
    if kind.target == "rank":
        dl, _, _ = lay.resolve_rank(f.target)
        return dl.name, f.target
    if kind.target == "replica":
        lay.deployment(f.target)
        return f.target, f.target
    if kind.target == "node":
        node = _node_of(world, f.target)
        return world.deployment_of_node(node), lay.node_names[node]
    g = lay.resolve_gpu(f.target)
    dep = world.deployment_of_node(int(lay.gpu_node[g]))
    if kind.target == "gpu":
        return dep, lay.gpu_entity(g)
    if kind.condition == "retransmit-storm":
        return dep, lay.path_entity(g)
    return dep, lay.port_entity(g)


def _node_of(world: World, target: str) -> int:
    lay = world.layout
    if target in lay.node_names:
        return lay.node_index(target)
    return lay.deployment(target).frontend_node


# -- injectors: change causes, return undo ---------------------------------------------


def apply(world: World, f: FaultSpec) -> Undo:
    """Inject fault f into world's causes now; returns the undo."""
    sev = severity_of(f)
    return _INJECTORS[f.kind](world, f, sev)


def _set(array: np.ndarray, index: Any, value: Any) -> Undo:
    old = np.array(array[index], copy=True)
    array[index] = value

    def undo() -> None:
        array[index] = old

    return undo


def _gpu_throttle(w: World, f: FaultSpec, sev: float) -> Undo:
    g = w.layout.resolve_gpu(f.target)
    undo_clock = _set(w.gpus.clock_factor, g, 1.0 - sev)
    undo_bits = _set(w.gpus.throttle_bits, g, THROTTLE_HW_THERMAL | THROTTLE_SW_THERMAL)
    return lambda: (undo_clock(), undo_bits(), None)[-1]


def _host_jitter(w: World, f: FaultSpec, sev: float) -> Undo:
    g = w.layout.resolve_gpu(f.target)
    dl, _, _ = w.layout.resolve_rank(f.target)
    spec = w.scenario.deployment(dl.name)
    segment_ns = spec.model.step_base_us * 1e3 / (2 * spec.model.layers)
    return _set(w.gpus.host_delay_ns, g, sev * segment_ns)


def _static_batching(w: World, f: FaultSpec, sev: float) -> Undo:
    engine = w.engine(f.target)
    old = engine.backfill
    engine.backfill = False

    def undo() -> None:
        engine.backfill = old

    return undo


def _stage_partition(w: World, f: FaultSpec, sev: float) -> Undo:
    ex = w.engine(f.target).executor
    pp = ex.spec.pp
    heavy = (1.0 + sev) / pp
    ratios = np.full(pp, (1.0 - heavy) / max(1, pp - 1))
    ratios[0] = heavy
    return _set(ex.stage_ratios, slice(None), ratios)


def _hot_expert(w: World, f: FaultSpec, sev: float) -> Undo:
    ex = w.engine(f.target).executor
    expert = int(f.param("expert", 0))
    return _set(ex.expert_weights, expert, sev)


def _long_prompt_tenant(w: World, f: FaultSpec, sev: float, pinned: bool = True) -> Undo:
    wl = w.scenario.workload
    lengths = Lengths(
        sev,
        0.25,
        wl.output_tokens_median,
        wl.output_tokens_sigma,
        max(wl.max_prompt_tokens, int(sev * 3)),
        wl.max_output_tokens,
    )
    rate = float(f.param("rate_per_s", 1.5 if pinned else 0.3))
    pin = w.replica_index(f.target) if pinned else -1
    source = PoissonSource(rate, lengths, pin=pin)
    w.arrivals.extra.append(source)
    return lambda: w.arrivals.extra.remove(source)


def _kv_budget(w: World, f: FaultSpec, sev: float) -> Undo:
    engine = w.engine(f.target)
    old = engine.kv_capacity_blocks
    engine.kv_capacity_blocks = max(64, int(old * sev))

    def undo() -> None:
        engine.kv_capacity_blocks = old

    return undo


def _tokenizer_slow(w: World, f: FaultSpec, sev: float) -> Undo:
    node = _node_of(w, f.target)
    undos = []
    for tok in w.tokenizers_on_node(node):
        old = tok.slow_factor
        tok.slow_factor = sev

        def undo(tok: Any = tok, old: float = old) -> None:
            tok.slow_factor = old

        undos.append(undo)

    def undo_all() -> None:
        for undo in undos:
            undo()

    return undo_all


def _rank_hang(w: World, f: FaultSpec, sev: float) -> Undo:
    g = w.layout.resolve_gpu(f.target)
    return _set(w.gpus.hung, g, True)


def _clock_step(w: World, f: FaultSpec, sev: float) -> Undo:
    node = _node_of(w, f.target)
    clock = w.clocks.host(node)
    before = float(w.clocks.step_ns[clock])
    w.clocks.set_step(clock, before + sev, w.now_ns)

    def undo() -> None:
        w.clocks.set_step(clock, before, w.now_ns)

    return undo


def _kv_offload(w: World, f: FaultSpec, sev: float) -> Undo:
    node = _node_of(w, f.target)
    gpus = np.flatnonzero(w.layout.gpu_node == node)
    cap = w.pcie.cap_bytes_per_s()[gpus]
    return _set(w.pcie.offload_demand_bytes_per_s, gpus, sev * cap)


def _link_downtrain(w: World, f: FaultSpec, sev: float) -> Undo:
    g = w.layout.resolve_gpu(f.target)
    width = int(max(1, w.pcie.width[g] - round(sev)))
    undo_width = _set(w.pcie.width, g, width)
    undo_replay = _set(w.pcie.replay_per_s, g, float(f.param("replay_per_s", 40.0)))
    return lambda: (undo_width(), undo_replay(), None)[-1]


def _router_weight(w: World, f: FaultSpec, sev: float) -> Undo:
    r = w.replica_index(f.target)
    others = float(np.delete(w.router.weights, r).sum())
    return _set(w.router.weights, r, sev / (1.0 - sev) * others)


def _scale_weight(w: World, f: FaultSpec, sev: float) -> Undo:
    r = w.replica_index(f.target)
    return _set(w.router.weights, r, w.router.weights[r] * sev)


def _bursty_clients(w: World, f: FaultSpec, sev: float) -> Undo:
    wl = w.scenario.workload
    source = MicroburstSource(
        float(f.param("period_s", 2.5)),
        int(sev),
        float(f.param("span_us", 100.0)),
        Lengths.of(wl),
        pin=w.replica_index(f.target),
    )
    w.arrivals.extra.append(source)
    return lambda: w.arrivals.extra.remove(source)


def _fabric_load(w: World, f: FaultSpec, sev: float) -> Undo:
    return _set(w.fabric.fabric_load, slice(None), sev)


def _optic_ber(w: World, f: FaultSpec, sev: float) -> Undo:
    return _set(w.fabric.pre_fec_ber, w.layout.resolve_gpu(f.target), sev)


def _nic_stall(w: World, f: FaultSpec, sev: float) -> Undo:
    return _set(w.fabric.stall_ns, w.layout.resolve_gpu(f.target), sev * 1e6)


def _pfc_receiver(w: World, f: FaultSpec, sev: float) -> Undo:
    return _set(w.fabric.pause_duty, w.layout.resolve_gpu(f.target), sev)


def _credit_withhold(w: World, f: FaultSpec, sev: float) -> Undo:
    return _set(w.fabric.credit_withhold, w.layout.resolve_gpu(f.target), sev)


def _load_burst(w: World, f: FaultSpec, sev: float) -> Undo:
    old = w.arrivals.rate_scale
    w.arrivals.rate_scale = old * (1.0 + sev)

    def undo() -> None:
        w.arrivals.rate_scale = old

    return undo


def _long_prompts(w: World, f: FaultSpec, sev: float) -> Undo:
    return _long_prompt_tenant(w, f, sev, pinned=False)


def _busier_node(w: World, f: FaultSpec, sev: float) -> Undo:
    return _scale_weight(w, f, sev)


def _planned_drain(w: World, f: FaultSpec, sev: float) -> Undo:
    return _set(w.router.drained, w.replica_index(f.target), True)


_INJECTORS: dict[str, Callable[[World, FaultSpec, float], Undo]] = {
    "gpu-throttle": _gpu_throttle,
    "host-jitter": _host_jitter,
    "static-batching": _static_batching,
    "stage-partition": _stage_partition,
    "hot-expert": _hot_expert,
    "long-prompt-tenant": _long_prompt_tenant,
    "kv-budget": _kv_budget,
    "tokenizer-slow": _tokenizer_slow,
    "rank-hang": _rank_hang,
    "clock-step": _clock_step,
    "kv-offload": _kv_offload,
    "link-downtrain": _link_downtrain,
    "router-weight": _router_weight,
    "bursty-clients": _bursty_clients,
    "fabric-load": _fabric_load,
    "optic-ber": _optic_ber,
    "nic-stall": _nic_stall,
    "pfc-receiver": _pfc_receiver,
    "credit-withhold": _credit_withhold,
    "load-burst": _load_burst,
    "long-prompts": _long_prompts,
    "busier-node": _busier_node,
    "planned-drain": _planned_drain,
}
assert set(_INJECTORS) == set(KINDS), "every fault kind needs an injector"
