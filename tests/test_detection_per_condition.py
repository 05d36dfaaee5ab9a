"""Each runbook condition yields its verdict on its bundled scenario; each look-alike yields
none of the condition it imitates (detector core in process, no broker).

The randomized suite (``skewscope evaluate --suite``, docs/results/evaluate.md) measures the
rates; these tests pin one deterministic episode per condition and per look-alike, so a
change that breaks a condition outright fails here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from models.detector import Detector
from models.runbook import load_runbook
from producers.sim import Simulation, load_scenario
from producers.sim.suite import CONDITIONS, make_suite

SECONDS = 20.0
CONDITION_IDS = [c.id for c in load_runbook().conditions]


def _firing(scenario: Any, seed: int, seconds: float) -> tuple[Simulation, list[dict]]:
    sim = Simulation(scenario, seed=seed)
    det = Detector()
    for record in sim.topology:
        det.process("TopologyRecord", record)
    out = []
    for frame in sim.frames(duration_s=seconds):
        out += [o.record for o in det.process(frame.schema, frame.record)]
    out += [o.record for o in det.flush()]
    return sim, [v for v in out if v["condition"] != "heartbeat" and v["state"] == "firing"]


@pytest.mark.parametrize("condition", CONDITION_IDS)
def test_condition_yields_its_verdict_on_the_labelled_entity(condition: str) -> None:
    sim, firing = _firing(load_scenario(condition), seed=1, seconds=SECONDS)
    labels = [x for x in sim.labels if x["condition"] == condition]
    assert labels, f"the bundled {condition} scenario injects no {condition}"
    onset_ns = min(x["onset_ns"] for x in labels)
    entities = {x["entity"] for x in labels}
    hits = [
        v
        for v in firing
        if v["condition"] == condition
        and v["last_seen_ns"] >= onset_ns
        and (v["entity"] in entities or any(v["entity"].startswith(e + "/") for e in entities))
    ]
    named = sorted({(v["entity"], v["condition"]) for v in firing})
    assert hits, f"no {condition} verdict on {sorted(entities)}; firing: {named}"


def _lookalikes() -> list[Any]:
    suite = make_suite(episodes_per_condition=3, seed=0, duration_s=SECONDS)
    return [pytest.param(e, id=e.episode_id) for e in suite if e.lookalike]


@pytest.mark.parametrize("episode", _lookalikes())
def test_lookalike_yields_no_verdict_of_the_condition_it_imitates(episode: Any) -> None:
    imitated = episode.episode_id.rsplit("-look-", 1)[0]
    assert imitated in CONDITIONS
    _, firing = _firing(episode.scenario, episode.seed, episode.duration_s)
    wrong = sorted({v["entity"] for v in firing if v["condition"] == imitated})
    assert not wrong, f"{episode.faults[0].kind} read as {imitated} on {wrong}"


@pytest.mark.parametrize("node", ["node00", "node01", "node02", "node03"])
def test_clock_step_is_named_on_the_stepped_node_also_when_it_is_the_reference(
    node: str,
) -> None:
    """Each deployment spans two nodes, and the aligner measures one clock against the other
    (node00 and node02 are the references): the stepped one is told by its own sample grid."""
    scenario = load_scenario("clock-desync")
    scenario = dataclasses.replace(
        scenario, faults=(dataclasses.replace(scenario.faults[0], target=node),)
    )
    _, firing = _firing(scenario, seed=1, seconds=SECONDS)
    named = sorted({v["entity"] for v in firing if v["condition"] == "clock-desync"})
    assert named == [node]


@pytest.mark.parametrize(
    "episode_id",
    ["clock-desync-ref-018", "ingress-imbalance-ref-011", "ingress-microburst-ref-020"],
)
def test_a_clock_step_seen_late_by_sparse_collectives_is_named_on_its_node(
    episode_id: str,
) -> None:
    """Seed-1 suite episodes where node02 (its deployment's reference clock) steps while
    the sampled collectives are sparse or paused: the aligner found the step seconds after
    it (in two halves, or after a pause), past the clock cadence's reach, and the verdict
    named the measured peer node03 (docs/detection.md, known gaps)."""
    suite = make_suite(episodes_per_condition=30, seed=1, duration_s=20.0)
    episode = next(e for e in suite if e.episode_id == episode_id)
    assert any(f.kind == "clock-step" and f.target == "node02" for f in episode.faults)
    _, firing = _firing(episode.scenario, episode.seed, episode.duration_s)
    named = sorted({v["entity"] for v in firing if v["condition"] == "clock-desync"})
    assert named == ["node02"]


def test_a_stage_imbalance_from_the_start_is_not_muted_by_a_later_congested_fabric() -> None:
    """Seed-1 suite episode: a stage partition from the start and a fabric congested from
    3.9 s. The fabric's verdict muted the stage imbalance as a symptom it explains, and the
    label was missed (docs/detection.md, "Another seed")."""
    suite = make_suite(episodes_per_condition=30, seed=1, duration_s=20.0)
    episode = next(e for e in suite if e.episode_id == "pp-stage-imbalance-ref-005")
    assert {f.kind for f in episode.faults} == {"stage-partition", "fabric-load"}
    _, firing = _firing(episode.scenario, episode.seed, episode.duration_s)
    named = {(v["condition"], v["entity"]) for v in firing}
    assert ("fabric-congestion", "fabric:roce0") in named
    assert ("pp-stage-imbalance", "llama70b-b") in named


def test_a_burst_prefilled_at_full_budget_is_not_early_stop_skew() -> None:
    """After a 200-request microburst the engine is underfilled with a long queue while it
    prefills its whole token budget every step: not an engine that stopped backfilling.
    (This suite episode read as early-stop-skew before engine.admitted_prompts_per_step.)"""
    suite = make_suite(episodes_per_condition=6, seed=11, duration_s=SECONDS)
    episode = next(e for e in suite if e.episode_id == "ingress-microburst-ref-004")
    _, firing = _firing(episode.scenario, episode.seed, episode.duration_s)
    conditions = {v["condition"] for v in firing}
    assert "ingress-microburst" in conditions
    assert "early-stop-skew" not in conditions


def test_a_bad_optic_is_named_and_not_its_link_partner_when_tp_crosses_nodes() -> None:
    """TP8 over two 4-GPU nodes: every all-reduce crosses the optic, so its partner port
    retransmits heavily and even counts some PHY errors; the culprit counts far more."""
    scenario = load_scenario("retransmit-storm")
    deployment = dataclasses.replace(scenario.deployments[0], tp=8, pp=1)
    scenario = dataclasses.replace(scenario, deployments=(deployment,))
    sim, firing = _firing(scenario, seed=1, seconds=SECONDS)
    culprit = next(x["entity"] for x in sim.labels if x["condition"] == "retransmit-storm")
    named = sorted({v["entity"] for v in firing if v["condition"] == "retransmit-storm"})
    assert named and all(e.startswith(culprit) for e in named), (culprit, named)


HOST_LAUNCH_CAUSE = next(
    c.root_cause
    for c in load_runbook().condition("tp-straggler").causes
    if c.root_cause.startswith("host launch delay")
)


def test_host_jitter_straggler_is_told_from_the_lasting_spread() -> None:
    """Host jitter at the reference severity (a CPU delay of 15 % of a kernel segment per
    collective, GPU clocks normal) costs its peers ~3.5 % of each step, no more than the rank
    that is always a little slower does; it is found, and named with the host-launch cause,
    because the rank's GPU idles between kernels while its TP peers are busy."""
    scenario = load_scenario("tp-straggler")
    jitter = dataclasses.replace(scenario.faults[0], kind="host-jitter")
    sim, firing = _firing(dataclasses.replace(scenario, faults=(jitter,)), seed=1, seconds=12.0)
    named = sorted({(v["entity"], v["root_cause"]) for v in firing})
    assert named == [(jitter.target, HOST_LAUNCH_CAUSE)]
    onset_ns = min(x["onset_ns"] for x in sim.labels)
    assert min(v["first_seen_ns"] for v in firing) - onset_ns < 2_000_000_000


def _lasting_last_arriver(scenario: Any, seed: int) -> str:
    """The rank of llama70b-a's stage 1 that the per-GPU spread makes the slowest."""
    sim = Simulation(scenario, seed=seed)
    layout = next(d for d in sim.world.layout.deployments if d.name == "llama70b-a")
    gpus = layout.rank_gpu[1]
    slowest = int(np.argmin(sim.world.gpus.efficiency[gpus]))
    return f"llama70b-a/rank{layout.rank_gpu.shape[1] + slowest}"


def test_host_jitter_on_the_rank_that_was_already_the_last_arriver_is_found() -> None:
    """The rank a little slower than its peers is the last arriver before the onset too, so
    it never becomes a *new* last arriver, and its wait is no larger than the spread's: only
    its GPU idling between kernels tells the fault (the suite missed such episodes before)."""
    scenario = load_scenario("tp-straggler")
    target = _lasting_last_arriver(scenario, seed=1)
    jitter = dataclasses.replace(scenario.faults[0], kind="host-jitter", target=target)
    _, firing = _firing(dataclasses.replace(scenario, faults=(jitter,)), seed=1, seconds=12.0)
    named = sorted({(v["entity"], v["root_cause"]) for v in firing})
    assert named == [(target, HOST_LAUNCH_CAUSE)]


def test_host_jitter_is_not_muted_by_a_congested_fabric() -> None:
    """A congested fabric explains ranks waiting on the network, not a GPU idling while its
    host is late to launch kernels: the host-launch cause is local and survives suppression."""
    scenario = load_scenario("tp-straggler")
    congestion = load_scenario("fabric-congestion").faults[0]
    jitter = dataclasses.replace(scenario.faults[0], kind="host-jitter")
    both = dataclasses.replace(
        scenario, faults=(jitter, dataclasses.replace(congestion, onset_s=jitter.onset_s))
    )
    _, firing = _firing(both, seed=1, seconds=14.0)
    conditions = {(v["condition"], v["entity"]) for v in firing}
    assert ("fabric-congestion", "fabric:roce0") in conditions, conditions
    assert ("tp-straggler", jitter.target) in conditions, conditions
