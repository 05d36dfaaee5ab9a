"""Phase inference (experimental): the simulator's step copies, and the DPU-side classifier.

The accuracy on the simulator is measured by bench/phase_inference.py (docs/results/phase.md);
these tests check the mechanics and the classifier's logic on hand-made frames.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from producers.sim import Simulation, load_scenario
from producers.sim.pcie import SAMPLE_D2H_BYTES_PER_SEQ
from producers.sim.scenario import Scenario
from producers.sim.world import World
from schemas.columns import unpack
from streams.phase import (
    DECODE,
    IDLE,
    PREFILL,
    UNKNOWN,
    PhaseConfig,
    PhaseInference,
    two_means,
)
from streams.topology import Topology
from tests.synthetic import T0_NS, topology

ROW_NS = 10_000_000
BUCKET_NS = 100_000_000


# -- simulator mechanics --------------------------------------------------------------------
def _world(scenario: str = "phase-behind-dpu") -> World:
    return World(load_scenario(scenario), seed=1, start_ns=T0_NS)


def test_prefill_step_copies_inputs_in_and_no_samples_out() -> None:
    ex = _world().executors[0]
    ex.step(T0_NS, n_decode=0, prefill_tokens=4000, kv_tokens=0, n_prefill_seqs=2, n_sampled=0)
    assert ex.intervals.h2d_bytes[-1] > 4000 * 8  # ids, positions, slots: bytes per token
    assert ex.intervals.d2h_bytes[-1] == 0
    assert ex.intervals.prefill_tokens[-1] == 4000 and ex.intervals.n_decode[-1] == 0


def test_decode_step_returns_a_sample_per_sequence() -> None:
    ex = _world().executors[0]
    d2h = []
    for n in (8, 16, 32):
        ex.step(T0_NS, n_decode=n, prefill_tokens=0, kv_tokens=n * 500)
        d2h.append(ex.intervals.d2h_bytes[-1])
        assert ex.intervals.h2d_bytes[-1] > ex.intervals.d2h_bytes[-1] > 0
    assert d2h[1] == 2 * d2h[0] and d2h[2] == 4 * d2h[0]


def test_unfinished_prefill_chunk_samples_nothing_and_the_last_chunk_samples_one() -> None:
    world = _world()
    engine = world.engines[0]
    engine.max_batched_tokens = 1024  # a 3000-token prompt takes three chunks
    one = np.array([T0_NS], dtype=np.int64)
    engine.submit(one, one, np.array([3000]), np.array([4]), np.array([0]))
    engine.run_until(T0_NS + 2_000_000_000)
    iv = engine.executor.intervals
    assert iv.prefill_tokens[:3] == [1024, 1024, 952]
    assert iv.d2h_bytes[:3] == [0, 0, SAMPLE_D2H_BYTES_PER_SEQ]
    assert iv.n_decode[3:6] == [1, 1, 1]  # then it decodes: one sample per step
    assert iv.d2h_bytes[3:6] == [SAMPLE_D2H_BYTES_PER_SEQ] * 3


def _copy_residuals(scenario: Scenario, node: str) -> tuple[np.ndarray, np.ndarray]:
    """Per DPU row of 2 s: (DMA write - flows rx, DMA read - flows tx) bytes."""
    h2d, d2h = [], []
    for frame in Simulation(scenario, seed=1).frames(duration_s=2.0):
        if frame.schema != "DpuFrame" or frame.record["node"] != node:
            continue
        cols = unpack("DpuFrame", frame.record)
        for i, t in enumerate(cols["dev_ts_ns"]):
            sel = cols["flow_ts_ns"] == t
            h2d.append(cols["dev_pcie_write_bytes"][i] - cols["flow_rx_bytes"][sel].sum())
            d2h.append(cols["dev_pcie_read_bytes"][i] - cols["flow_tx_bytes"][sel].sum())
    return np.array(h2d), np.array(d2h)


def test_dpu_sees_host_copies_only_of_gpus_behind_it() -> None:
    scenario = load_scenario("phase-behind-dpu")
    h2d, d2h = _copy_residuals(scenario, "node00")
    assert np.median(h2d) > 10_000  # inputs and launch traffic of two busy GPUs
    assert (d2h > 510).mean() > 0.1  # sampled-token bursts above the unflowed background
    hidden = dataclasses.replace(
        scenario, cluster=dataclasses.replace(scenario.cluster, gpus_behind_dpu=())
    )
    h2d, d2h = _copy_residuals(hidden, "node00")
    assert h2d.max() < 2_000 and d2h.max() < 2_000  # only north-south traffic in no flow


def test_truth_keeps_the_prefill_share_of_compute() -> None:
    sim = Simulation(load_scenario("phase-behind-dpu"), seed=1)
    shares = []
    period: list = []
    for _ in sim.frames(duration_s=3.0):
        if sim.period_truths is period:
            continue
        period = sim.period_truths
        for truth in period:
            assert truth.prefill_share is not None
            shares.append(truth.prefill_share)
    share = np.concatenate(shares, axis=1)
    busy = ~np.isnan(share)
    assert busy.mean() > 0.5
    assert share[busy].min() >= 0.0 and share[busy].max() <= 1.0
    assert (share[busy] > 0.9).any() and (share[busy] < 0.1).any()  # both phases occur


# -- the classifier on hand-made DPU rows -----------------------------------------------------
def _topo(behind: bool = True, stages: int = 1) -> Topology:
    records = topology(nodes=stages, gpus_per_node=4)
    for r in records:
        r["gpu_behind_dpu"] = behind and r["gpu_index"] in (0, 1)
        r["pp_stage"] = r["rank"] // 4
    return Topology.from_records(records)


def _frame(node: str, bucket: int, phase: str, rng: np.random.Generator) -> tuple[dict, dict]:
    """One 100 ms DpuFrame of a node in a phase: ten rows, two client flows."""
    ts = T0_NS + bucket * BUCKET_NS + ROW_NS * np.arange(1, 11, dtype=np.int64)
    flow_rx = rng.integers(0, 5_000, (2, 10))
    flow_tx = rng.integers(0, 5_000, (2, 10))
    unflowed = 500  # health checks, scrapes: in no flow
    if phase == IDLE:
        h2d = np.zeros(10)
        d2h = np.zeros(10)
    else:
        h2d = rng.uniform(30_000, 60_000, 10)
        steps = 6 if phase == DECODE else int(rng.integers(0, 2))
        d2h = np.zeros(10)
        d2h[rng.choice(10, steps, replace=False)] = rng.uniform(200, 1_000, steps)
        h2d[rng.choice(10, 2, replace=False)] += 300_000  # step inputs
    record: dict[str, Any] = {
        "node": node,
        "interval_ns": ROW_NS,
        "flow_ids": ["conn-a-0", "conn-a-1"],
        "frame_end_ns": int(ts[-1]),
    }
    cols = {
        "flow_ts_ns": np.tile(ts, 2),
        "flow_index": np.repeat(np.arange(2), 10),
        "flow_rx_bytes": flow_rx.ravel(),
        "flow_tx_bytes": flow_tx.ravel(),
        "dev_ts_ns": ts,
        "dev_pcie_write_bytes": np.rint(flow_rx.sum(axis=0) + unflowed + h2d).astype(np.int64),
        "dev_pcie_read_bytes": np.rint(flow_tx.sum(axis=0) + unflowed + d2h).astype(np.int64),
    }
    return record, cols


def _phases(n: int, seed: int = 0) -> list[str]:
    """Alternating prefill-heavy and decode-heavy periods of 2-5 s, with idle gaps."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    while len(out) < n:
        out += [str(rng.choice([PREFILL, DECODE, DECODE, IDLE]))] * int(rng.integers(20, 50))
    return out[:n]


def _run(inference: PhaseInference, phases: list[str], node: str = "node0") -> list[Any]:
    rng = np.random.default_rng(1)
    out = []
    for b, phase in enumerate(phases):
        out += inference.ingest(*_frame(node, b, phase, rng))
    return out


def test_classifier_separates_synthetic_prefill_and_decode_buckets() -> None:
    phases = _phases(600)
    estimates = _run(PhaseInference(_topo()), phases)
    assert len(estimates) == len(phases)
    assert [e.bucket_start_ns for e in estimates] == [
        (T0_NS // BUCKET_NS + b) * BUCKET_NS for b in range(len(phases))
    ]
    known = [(p, e) for p, e in zip(phases, estimates, strict=True) if e.phase != UNKNOWN]
    assert len(known) > 0.9 * len(phases)
    assert all(e.phase == p for p, e in known)
    assert all(e.prefill_share > 0.7 for p, e in known if p == PREFILL)
    assert all(e.prefill_share < 0.3 for p, e in known if p == DECODE)
    reasons = {e.reason for e in estimates if e.phase == UNKNOWN}
    assert reasons <= {"calibrating", "one phase so far: no split"}


def test_the_ratio_feature_also_separates_them() -> None:
    phases = _phases(600)
    estimates = _run(PhaseInference(_topo(), PhaseConfig(feature="ratio")), phases)
    known = [(p, e) for p, e in zip(phases, estimates, strict=True) if e.phase != UNKNOWN]
    assert len(known) > 0.9 * len(phases)
    assert np.mean([e.phase == p for p, e in known]) > 0.9  # weaker than cadence


def test_node_without_gpu_behind_its_dpu_yields_no_estimate() -> None:
    estimates = _run(PhaseInference(_topo(behind=False)), _phases(200))
    assert estimates and all(e.phase == UNKNOWN for e in estimates)
    assert all(e.prefill_share is None for e in estimates)
    assert all("no GPU behind the DPU" in e.reason for e in estimates)


def test_gpus_behind_the_dpu_on_a_non_sampling_stage_yield_no_estimate() -> None:
    inference = PhaseInference(_topo(stages=2))
    assert inference.unobservable_reason("node1") == ""  # the last stage samples
    estimates = _run(inference, _phases(100), node="node0")
    assert estimates and all(e.phase == UNKNOWN and e.prefill_share is None for e in estimates)
    assert all("no sampling" in e.reason for e in estimates)
    assert "not in the topology" in inference.unobservable_reason("node9")


def test_one_phase_only_is_unknown_not_a_split_of_it() -> None:
    estimates = _run(PhaseInference(_topo()), [DECODE] * 300)
    assert all(e.phase == UNKNOWN for e in estimates)
    assert {e.reason for e in estimates[40:]} == {"one phase so far: no split"}


def test_bucket_missing_most_rows_is_unknown() -> None:
    inference = PhaseInference(_topo())
    record, cols = _frame("node0", 0, DECODE, np.random.default_rng(0))
    keep = np.arange(10) < 3
    cols["dev_ts_ns"] = cols["dev_ts_ns"][keep]
    for name in ("dev_pcie_write_bytes", "dev_pcie_read_bytes"):
        cols[name] = cols[name][keep]
    (estimate,) = inference.ingest(record, cols)
    assert estimate.phase == UNKNOWN and "too few" in estimate.reason


def test_rows_of_an_estimated_bucket_are_counted_late_not_estimated_twice() -> None:
    inference = PhaseInference(_topo())
    rng = np.random.default_rng(0)
    first = _frame("node0", 0, DECODE, rng)
    assert len(inference.ingest(*first)) == 1
    assert inference.ingest(*first) == []  # a redelivered frame
    assert inference._nodes["node0"].late_rows == 10
    assert len(inference.ingest(*_frame("node0", 1, DECODE, rng))) == 1


@pytest.mark.parametrize(
    ("values", "expected"),
    [([0.0, 0.1, 0.0, 0.6, 0.5, 0.6], (1 / 30, 17 / 30)), ([1.0, 1.0], None)],
)
def test_two_means_is_the_exact_split(values: list[float], expected: Any) -> None:
    split = two_means(values)
    if expected is None:
        assert split is None
        return
    assert split is not None
    assert split.prefill_mean == pytest.approx(expected[0])
    assert split.decode_mean == pytest.approx(expected[1])
    assert split.prefill_share(split.prefill_mean) == 1.0
    assert split.prefill_share(split.decode_mean) == 0.0
