"""Entity views: one window's features joined through the topology, absolute and peer-relative.

Each view is a flat ``{"<source>.<feature>": value}`` mapping for one entity, the input of
rules and models. Peer-relative features compare an entity with its peers at the same moment
(``_peer_ratio``: value over the peers' median; ``_peer_delta``: value minus the median), so a
rank is slow *compared with its group*, not against a fixed number.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from streams.topology import Topology

# Usable bandwidth per lane per direction by PCIe generation, bytes/s.
PCIE_LANE_BYTES_PER_S = {1: 0.25e9, 2: 0.5e9, 3: 0.985e9, 4: 1.969e9, 5: 3.938e9, 6: 7.563e9}
# ECN marks + CNPs per port and second that count as congested; MoE all-to-all incast alone
# reaches tens of thousands, a congested fabric hundreds of thousands.
CONGESTION_EVENTS_PER_S = 75_000.0
PCIE_STALLS_PER_S = 1000.0
PEER_RATIO_FLOOR = {"events_per_s": 10.0, "s": 0.01, "bytes": 1024.0, "default": 1.0}
PHY_DOMINANCE_RATIO = 10.0  # a culprit optic's PHY errors over a partner's it explains


@dataclass
class EntityView:
    entity: str
    kind: str
    deployment: str
    features: dict[str, float] = field(default_factory=dict)
    sources_present: set[str] = field(default_factory=set)
    sources_silent: set[str] = field(default_factory=set)
    node: str = ""
    # Population this entity is compared with by the online models (e.g. the NIC's plane).
    model_class: str = ""
    # Other ids this view's verdict may be reported under (runbook `report_as`).
    aliases: dict[str, str] = field(default_factory=dict)


@dataclass
class WindowInputs:
    """What the extractors produced for one window, by source name."""

    nccl: dict[str, dict[str, float]]
    gpu: dict[str, dict[str, float]]
    nic: dict[str, dict[str, float]]
    dpu: dict[str, dict[str, float]]
    engine: dict[str, dict[str, float]]
    requests: dict[str, dict[str, float]]
    clock_step_abs_ns: dict[str, float]
    silent: set[tuple[str, str, str]]  # (deployment, source, node)
    port_plane: dict[str, str]
    port_fabric: dict[str, str]
    window_s: float
    frontend_node: dict[str, str] = field(default_factory=dict)  # deployment -> node


_AGGREGATE_SUFFIXES = ("_min", "_max", "_mean")


def _floor(feature: str) -> float:
    """Denominator floor of a peer ratio, by the feature's unit (named in its suffix; an
    aggregate's suffix such as ``_min`` is looked through: ``arrival_to_prefill_s_min`` is
    in seconds)."""
    for suffix in _AGGREGATE_SUFFIXES:
        if feature.endswith(suffix):
            feature = feature[: -len(suffix)]
            break
    if feature.endswith("_per_s"):
        # Event rates: a handful of background events per second must not become a ratio of
        # hundreds against a median of zero.
        return PEER_RATIO_FLOOR["events_per_s"]
    if feature.endswith("_s") or "_s_per_" in feature:
        return PEER_RATIO_FLOOR["s"]
    if "bytes" in feature:
        return PEER_RATIO_FLOOR["bytes"]
    return PEER_RATIO_FLOOR["default"]


def add_peer_ratios(views: Iterable[EntityView], features: Iterable[str]) -> None:
    """Add ``<f>_peer_ratio`` against the median of the *other* entities of the group."""
    group = list(views)
    for feature in features:
        values = {v.entity: v.features[feature] for v in group if feature in v.features}
        if len(values) < 2:
            continue
        medians = _medians_of_others(values)
        floor = _floor(feature)
        for view in group:
            if feature not in view.features:
                continue
            median = medians[view.entity]
            view.features[f"{feature}_peers_median"] = median
            view.features[f"{feature}_peer_ratio"] = view.features[feature] / max(median, floor)


def _medians_of_others(values: dict[str, float]) -> dict[str, float]:
    """Per entity, ``np.median`` of the other entities' values, from one sort of them all."""
    ordered = sorted(values.values())
    if not _median_by_sort_exact(ordered):
        return {
            entity: float(np.median([x for e, x in values.items() if e != entity]))
            for entity in values
        }
    return {entity: _middle(ordered, skip=bisect_left(ordered, x)) for entity, x in values.items()}


def _median(values: list[float]) -> float:
    """``float(np.median(values))`` without numpy's per-call cost on a handful of values."""
    ordered = sorted(values)
    if not ordered or not _median_by_sort_exact(ordered):
        return float(np.median(values))
    return _middle(ordered, skip=len(ordered))


def _median_by_sort_exact(ordered: list[float]) -> bool:
    """Whether :func:`_middle` gives ``np.median``'s bits: not with NaN (sorting is undefined
    with it) nor -0.0 (numpy's mean of the middle values adds it to +0.0)."""
    return not any(x != x or (x == 0 and math.copysign(1.0, x) < 0) for x in ordered)


def _middle(ordered: list[float], skip: int) -> float:
    """Median of sorted values leaving out index ``skip`` (``len(ordered)``: none), as numpy
    computes it: the middle value, or the mean of the two middle values."""
    n = len(ordered) - (skip < len(ordered))
    mid = n // 2
    upper = float(ordered[mid if mid < skip else mid + 1])
    if n % 2:
        return upper
    lower = float(ordered[mid - 1 if mid - 1 < skip else mid])
    return (lower + upper) / 2


def _prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}.{k}": v for k, v in values.items()}


def build_views(inputs: WindowInputs, topo: Topology) -> list[EntityView]:
    views: list[EntityView] = []
    views += _rank_views(inputs, topo)
    views += _gpu_views(inputs, topo)
    node_views = _node_views(inputs, topo)
    views += node_views
    views += _replica_views(inputs, topo)
    port_views = _port_views(inputs, topo)
    views += port_views
    views += _fabric_views(inputs, port_views, topo)
    return views


def _silent(inputs: WindowInputs, deployment: str, source: str, node: str) -> bool:
    return (deployment, source, node) in inputs.silent


def _rank_views(inputs: WindowInputs, topo: Topology) -> list[EntityView]:
    out = []
    gpu_clock: dict[str, list[float]] = {}
    for place in topo.ranks.values():
        g = inputs.gpu.get(place.gpu_entity, {})
        if "sm_clock_ratio" in g:
            gpu_clock.setdefault(place.deployment, []).append(g["sm_clock_ratio"])
    for place in topo.ranks.values():
        view = EntityView(place.entity, "rank", place.deployment, node=place.node)
        tp = inputs.nccl.get(place.entity)
        if tp is not None:
            view.features.update(_prefixed("nccl", tp))
            view.sources_present.add("nccl")
        gpu = inputs.gpu.get(place.gpu_entity)
        if gpu is not None:
            g = gpu
            view.features.update(_prefixed("gpu", g))
            view.sources_present.add("gpu")
            peers = gpu_clock.get(place.deployment, [])
            if "sm_clock_ratio" in g and len(peers) >= 2:
                view.features["gpu.sm_clock_ratio_peer_delta"] = g["sm_clock_ratio"] - _median(
                    peers
                )
        for source in ("nccl", "gpu"):
            if _silent(inputs, place.deployment, source, place.node):
                view.sources_silent.add(source)
        out.append(view)
    _add_util_below_tp_peers(out, topo)
    for dep in topo.deployments():
        group = [v for v in out if v.deployment == dep]
        add_peer_ratios(group, ["gpu.gpu_util_ratio"])
        for view in group:
            view.features["hang.suspect"] = _hang_suspect(view.features)
            view.features["straggler.beyond_spread"] = beyond_spread(view.features)
    return out


def _add_util_below_tp_peers(views: list[EntityView], topo: Topology) -> None:
    """``gpu.util_below_tp_peers_ratio``: the median GPU utilization of the rank's TP group
    (same deployment and pipeline stage) minus its own. A rank whose host is late to launch
    its kernels idles between them while its peers spin in the collective waiting for it (a
    running NCCL kernel counts as busy), so its utilization reads below theirs; a rank late
    because its GPU computes slower is busy all along."""
    groups: dict[tuple[str, int], dict[str, float]] = {}
    for view in views:
        util = view.features.get("gpu.gpu_util_ratio")
        place = topo.ranks.get(view.entity)
        if util is not None and place is not None:
            groups.setdefault((place.deployment, place.pp_stage), {})[view.entity] = util
    by_entity = {view.entity: view for view in views}
    for members in groups.values():
        if len(members) < 2:
            continue
        for entity, peers_median in _medians_of_others(members).items():
            view = by_entity[entity]
            view.features["gpu.util_below_tp_peers_ratio"] = peers_median - members[entity]


STRAGGLER_CLOCK_DEFICIT = -0.05  # SM clock this far below the deployment's median
STRAGGLER_THROTTLED_SHARE = 0.3
# Without GPU evidence only the wait's size tells a straggler from the lasting spread: the
# rank a few percent slower than its peers is the last arriver in every step, and its wait
# rises with the share of compute in the step (0.05 in decode, 0.09-0.22 in prefill-heavy
# windows of the suite's load bursts, which gave all 14 of its false tp-straggler episodes
# at 0.08).
STRAGGLER_WAIT_WITHOUT_GPU_EVIDENCE = 0.12
# A late rank idling this much more than its TP peers waits on its host, not its GPU (host
# jitter at the suite's reference severity: 0.03-0.05; ranks late by the lasting spread and
# their peers are all busy, 0.00).
STRAGGLER_UTIL_BELOW_TP_PEERS = 0.015


def beyond_spread(f: dict[str, float]) -> float:
    """1 when a late rank is more than the fleet's lasting per-GPU spread: its GPU is slowed
    (clock deficit or throttle reasons), it makes its peers wait far longer than spread does,
    its GPU idles between kernels while its TP peers are busy (the host is late to launch
    them: host jitter leaves the GPU clocks normal), or it has become the last arriver it was
    not before (``straggler.new_last_arriver``, set by :mod:`streams.last_arriver`)."""
    slowed = (
        f.get("gpu.sm_clock_ratio_peer_delta", 0.0) <= STRAGGLER_CLOCK_DEFICIT
        or f.get("gpu.throttled_share", 0.0) >= STRAGGLER_THROTTLED_SHARE
    )
    host_late = f.get("gpu.util_below_tp_peers_ratio", 0.0) >= STRAGGLER_UTIL_BELOW_TP_PEERS
    large = f.get("nccl.caused_wait_ratio", 0.0) >= STRAGGLER_WAIT_WITHOUT_GPU_EVIDENCE
    new = f.get("straggler.new_last_arriver", 0.0) >= 1.0
    return 1.0 if slowed or host_late or large or new else 0.0


def _hang_suspect(f: dict[str, float]) -> float:
    """1 when the rank looks wedged: the collective join saw peers blocked on it, or its GPU
    idles while its peers spin (a blocked NCCL kernel keeps a GPU busy)."""
    blocked = f.get("nccl.missing_steps", 0.0) >= 1 and f.get("nccl.blocked_s", 0.0) >= 0.3
    idle = (
        f.get("gpu.gpu_util_ratio", 1.0) <= 0.2
        and f.get("gpu.gpu_util_ratio_peers_median", 0.0) >= 0.7
    )
    return 1.0 if blocked or idle else 0.0


def _pcie_capacity(gen: float, width: float) -> float:
    return PCIE_LANE_BYTES_PER_S.get(int(gen), 0.0) * width


def _gpu_views(inputs: WindowInputs, topo: Topology) -> list[EntityView]:
    out = []
    for gpu_entity, place in topo.by_gpu().items():
        g = inputs.gpu.get(gpu_entity)
        view = EntityView(gpu_entity, "gpu", place.deployment, node=place.node)
        if _silent(inputs, place.deployment, "gpu", place.node):
            view.sources_silent.add("gpu")
        if g is None:
            out.append(view)
            continue
        view.sources_present.add("gpu")
        view.features.update(_prefixed("gpu", g))
        expected = _pcie_capacity(place.pcie_gen_expected, place.pcie_width_expected)
        gen, width = g.get("pcie_link_gen_min"), g.get("pcie_link_width_min")
        if gen is not None and width is not None and expected > 0:
            actual = _pcie_capacity(gen, width)
            view.features["gpu.pcie_capacity_ratio"] = actual / expected
            view.features["gpu.pcie_capacity_deficit_ratio"] = 1.0 - actual / expected
            if actual > 0 and "pcie_bytes_per_s_max" in g:
                # PCIe is full duplex: compare the busier direction's share with one direction.
                view.features["gpu.pcie_util_ratio"] = g["pcie_bytes_per_s_max"] / (2 * actual)
        out.append(view)
    return out


def _node_views(inputs: WindowInputs, topo: Topology) -> list[EntityView]:
    gpu_views = {v.entity: v for v in _gpu_views(inputs, topo)}
    ports = topo.by_port()
    out = []
    for node in topo.nodes():
        places = topo.ranks_on(node)
        deployment = places[0].deployment if places else ""
        view = EntityView(node, "node", deployment, node=node)
        fronted = [d for d, n in inputs.frontend_node.items() if n == node]
        if fronted:
            view.aliases["replica"] = fronted[0]
        utils = [
            gpu_views[p.gpu_entity].features["gpu.pcie_util_ratio"]
            for p in places
            if p.gpu_entity in gpu_views
            and "gpu.pcie_util_ratio" in gpu_views[p.gpu_entity].features
        ]
        if utils:
            view.features["gpu.pcie_util_ratio_max"] = max(utils)
            view.sources_present.add("gpu")
        stalls = [
            inputs.nic[port].get("outbound_pci_stalled_rd_per_s", 0.0)
            + inputs.nic[port].get("outbound_pci_stalled_wr_per_s", 0.0)
            for port in ports
            if port.startswith(node + "/") and port in inputs.nic
        ]
        d = inputs.dpu.get(node)
        stall_evidence = 0.0
        if stalls:
            view.sources_present.add("nic")
            view.features["nic.outbound_pci_stalled_per_s_max"] = max(stalls)
            stall_evidence = max(stall_evidence, float(max(stalls) >= PCIE_STALLS_PER_S))
        if d is not None:
            view.sources_present.add("dpu")
            view.features.update(_prefixed("dpu", d))
            stall_evidence = max(stall_evidence, float(d.get("dpu_pcie_stall_ratio", 0.0) >= 0.05))
        if stalls or d is not None:
            view.features["pcie.stall_evidence"] = stall_evidence
        if node in inputs.clock_step_abs_ns:
            view.features["clock.step_abs_ns"] = inputs.clock_step_abs_ns[node]
            view.sources_present.add("nccl")
        for source in ("gpu", "dpu", "nic", "nccl"):
            if any(_silent(inputs, dep, source, node) for dep in topo.deployments_on(node)):
                view.sources_silent.add(source)
        out.append(view)
    add_peer_ratios(out, ["dpu.dpu_max_burst_bytes", "dpu.dpu_rx_queue_depth_bytes_max"])
    return out


def _add_admitted_prompts_per_step(features: dict[str, float]) -> None:
    """Prefill work per engine step, in prompts of the replica's mean length.

    An engine that backfills freed slots admits waiting requests every step (unless its KV
    cache is full); one that does not (static batching) prefills nothing while requests
    wait. An engine flooded by a burst is also underfilled with a queue, but it prefills its
    whole token budget every step: many prompts' worth."""
    rate = features.get("engine.prompt_tokens_per_s")
    step_ns = features.get("engine.step_duration_ns")
    prompt = features.get("requests.prompt_tokens_mean_long")
    if rate is None or step_ns is None or not prompt or prompt <= 0:
        return
    features["engine.admitted_prompts_per_step"] = rate * step_ns / 1e9 / prompt


def _add_kv_admission_blocked(features: dict[str, float]) -> None:
    """Share of the window in which admission was held back by a full KV cache.

    The engine admits the head of its queue when its prompt fits in the free KV blocks.
    With the engine's KV capacity known, the free tokens while requests wait beside free
    batch slots are set against the longest prompt of the last 10 s (the request that is
    left at the head is the one that does not fit; short ones got in): when the free room
    is less than that prompt, the share of such samples is the blocked share. Without the
    capacity, the share of those samples with the cache at least 90 % full stands in (it
    misses a cache cut so small that 80 % use already blocks a long prompt). A request
    waiting now counts too (``requests.waiting_need_tokens_max``): one that arrived over 10 s
    ago, or one preempted back into the queue, which needs room for the tokens it had
    generated as well."""
    headroom = features.get("engine.kv_headroom_tokens_queued")
    longest = max(
        features.get("requests.prompt_tokens_max_long", 0.0),
        features.get("requests.waiting_need_tokens_max", 0.0),
    )
    queued = features.get("engine.queued_with_free_slots_share")
    if headroom is not None and longest and queued is not None:
        ratio = headroom / longest
        features["engine.kv_headroom_over_longest_prompt"] = ratio
        features["engine.kv_admission_blocked_share"] = queued if ratio < 1.0 else 0.0
    elif "engine.kv_blocked_share" in features:
        features["engine.kv_admission_blocked_share"] = features["engine.kv_blocked_share"]


def _replica_views(inputs: WindowInputs, topo: Topology) -> list[EntityView]:
    out = []
    for deployment in topo.deployments():
        view = EntityView(deployment, "replica", deployment)
        frontend = inputs.frontend_node.get(deployment)
        if frontend:
            view.node = frontend
            view.aliases["node"] = frontend
        e = inputs.engine.get(deployment)
        r = inputs.requests.get(deployment)
        if e is not None:
            view.features.update(_prefixed("engine", e))
            view.sources_present.add("engine")
        if r is not None:
            view.features.update(_prefixed("requests", r))
            view.sources_present.add("engine")
        _add_admitted_prompts_per_step(view.features)
        _add_kv_admission_blocked(view.features)
        stage_waits = [
            v["downstream_wait_ns"]
            for e, v in inputs.nccl.items()
            if e.startswith(deployment + "#stage") and "downstream_wait_ns" in v
        ]
        if len(stage_waits) >= 2 and min(stage_waits) > 0:
            view.features["pp.stage_wait_ratio"] = max(stage_waits) / min(stage_waits)
            view.sources_present.add("nccl")
        nodes = {p.node for p in topo.ranks_of(deployment)}
        if any(_silent(inputs, deployment, "engine", n) for n in nodes):
            view.sources_silent.add("engine")
        out.append(view)
    # The load family's peers are the other replicas of the same router pool: the copies of
    # one model that one router balances across. Another model's idle replica is no room for
    # this one's requests, and its prompts and prefill times are not this one's norm.
    pool_of = topo.pools()
    pools: dict[str, list[EntityView]] = {}
    for view in out:
        pools.setdefault(pool_of.get(view.deployment, ""), []).append(view)
    for pool in pools.values():
        _add_pool_features(pool)
    return out


def _add_pool_features(pool: list[EntityView]) -> None:
    """Features that compare each replica with the others of its router pool."""
    # The mean over the replicas whose requests this detector reads (an idle one counts,
    # with 0): a replica of the pool held by another shard, or not heard from yet, has no
    # request window here, and counting it as 0 would inflate every local share.
    arrivals = [
        v.features["requests.arrivals_long"] for v in pool if "requests.arrivals_long" in v.features
    ]
    mean_arrivals = float(np.mean(arrivals)) if arrivals else 0.0
    # The pool's prompt tokens per request, weighted by requests (not the mean of the
    # replicas' means): a replica that also receives more requests weighs in with them, as
    # in the simulator's truth; the unweighted mean over-read length skew on it.
    weighted = [
        (v.features["requests.arrivals_long"], v.features["requests.prompt_tokens_mean_long"])
        for v in pool
        if "requests.prompt_tokens_mean_long" in v.features
        and v.features.get("requests.arrivals_long", 0.0) > 0
    ]
    fleet_requests = sum(n for n, _ in weighted)
    fleet_prompt = sum(n * m for n, m in weighted) / fleet_requests if fleet_requests else 0.0
    for view in pool:
        if mean_arrivals > 0 and "requests.arrivals_long" in view.features:
            view.features["requests.arrivals_share_ratio"] = (
                view.features["requests.arrivals_long"] / mean_arrivals
            )
        if fleet_prompt > 0 and "requests.prompt_tokens_mean_long" in view.features:
            view.features["requests.prompt_tokens_fleet_ratio"] = (
                view.features["requests.prompt_tokens_mean_long"] / fleet_prompt
            )
        peers = [
            o.features for o in pool if o is not view and "engine.batch_fill_ratio" in o.features
        ]
        if peers:
            view.features["peers.min_batch_fill_ratio"] = min(
                p["engine.batch_fill_ratio"] for p in peers
            )
            # A peer replica with room: batch < 70 % full, KV < 70 %, no queue (the SLO
            # harm of a load condition only counts while capacity sits idle elsewhere), and
            # in the router's rotation: one drained on purpose (or at weight 0) received no
            # request lately, and its idle capacity is not the router's to use.
            view.features["peers.spare_capacity"] = float(
                any(
                    p.get("requests.arrivals_recent", 1.0) > 0
                    and p["engine.batch_fill_ratio"] < 0.7
                    and p.get("engine.kv_cache_usage_ratio", 0.0) < 0.7
                    and p.get("requests.waiting_mean", p.get("engine.num_waiting", 0.0)) < 1
                    for p in peers
                )
            )
    add_peer_ratios(
        pool,
        [
            "requests.prompt_tokens_mean",
            "requests.prefill_s",
            "requests.arrival_to_prefill_s",
            "requests.arrival_to_prefill_s_min",
            "requests.arrival_to_prefill_s_per_ktok_min",
        ],
    )


def _port_views(inputs: WindowInputs, topo: Topology) -> list[EntityView]:
    ports = topo.by_port()
    out = []
    for port, n in inputs.nic.items():
        places = ports.get(port, [])
        node = port.split("/", 1)[0]
        deployment = places[0].deployment if places else ""
        view = EntityView(port, "nic_port", deployment, node=node)
        view.model_class = f"nic_port:{inputs.port_plane.get(port, 'east_west')}"
        if places:
            view.aliases["path"] = places[0].path_entity
        view.sources_present.add("nic")
        view.features.update(_prefixed("nic", n))
        view.features["nic.retransmit_events_per_s"] = (
            n.get("out_of_sequence_per_s", 0.0)
            + n.get("packet_seq_err_per_s", 0.0)
            + n.get("local_ack_timeout_err_per_s", 0.0)
        )
        view.features["nic.phy_errors_per_s"] = n.get("rx_symbol_err_phy_per_s", 0.0) + n.get(
            "rx_corrected_bits_phy_per_s", 0.0
        )
        tx_mean, tx_min = n.get("tx_bytes_phy_per_s"), n.get("tx_bytes_phy_per_s_min")
        if tx_mean and tx_min is not None:
            view.features["nic.tx_dip_ratio"] = tx_min / tx_mean
        view.features["nic.congestion_events_per_s"] = (
            n.get("np_cnp_sent_per_s", 0.0)
            + n.get("rp_cnp_handled_per_s", 0.0)
            + n.get("np_ecn_marked_roce_packets_per_s", 0.0)
        )
        # Link-level credits exist on InfiniBand only; on RoCE, transmit waits are pauses.
        view.features["nic.infiniband"] = float(inputs.port_fabric.get(port) == "infiniband")
        out.append(view)
    for plane in {inputs.port_plane.get(v.entity, "east_west") for v in out}:
        group = [v for v in out if inputs.port_plane.get(v.entity, "east_west") == plane]
        add_peer_ratios(
            group,
            [
                "nic.retransmit_events_per_s",
                "nic.phy_errors_per_s",
                "nic.tx_prio3_pause_per_s",
                "nic.port_xmit_wait_per_s",
            ],
        )
        # A bad optic corrupts traffic both ways: its link partners retransmit too, and their
        # receivers may count a little of its corruption, but the culprit's own receiver counts
        # far more PHY/FEC errors. Loss on a port whose plane has a culprit with at least
        # PHY_DOMINANCE_RATIO x its own PHY errors is explained elsewhere.
        culprits = [
            v for v in group if v.features.get("nic.phy_errors_per_s_peer_ratio", 0.0) >= 5.0
        ]
        for view in group:
            own = view.features.get("nic.phy_errors_per_s", 0.0)
            elsewhere = any(
                c is not view and c.features["nic.phy_errors_per_s"] >= PHY_DOMINANCE_RATIO * own
                for c in culprits
            )
            view.features["nic.loss_explained_elsewhere"] = 1.0 if elsewhere else 0.0
    return out


def _fabric_views(
    inputs: WindowInputs, port_views: list[EntityView], topo: Topology
) -> list[EntityView]:
    by_fabric: dict[str, list[EntityView]] = {}
    names = {p.port_entity: p.fabric_name for p in topo.ranks.values()}
    for view in port_views:
        if inputs.port_plane.get(view.entity, "east_west") != "east_west":
            continue
        name = names.get(view.entity) or inputs.port_fabric.get(view.entity, "roce")
        by_fabric.setdefault(name, []).append(view)
    out = []
    for fabric, views in sorted(by_fabric.items()):
        view = EntityView(f"fabric:{fabric}", "fabric", "*")
        congested = [
            v.features["nic.congestion_events_per_s"] >= CONGESTION_EVENTS_PER_S for v in views
        ]
        view.features["fabric.congested_port_share"] = float(np.mean(congested))
        view.features["fabric.congestion_events_per_s_median"] = _median(
            [v.features["nic.congestion_events_per_s"] for v in views]
        )
        view.features["fabric.ports"] = float(len(views))
        view.sources_present.add("nic")
        out.append(view)
    return out
