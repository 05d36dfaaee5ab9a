"""Simulator mechanics, asserted on emitted frames (decoded with schemas.columns.unpack)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from producers.sim import Simulation, load_scenario
from producers.sim.clocks import Clocks
from producers.sim.nic_counters import COUNTERS
from producers.sim.readback import Readback
from producers.sim.scenario import Scenario, ScenarioError, validate
from schemas.codec import AvroCodec
from schemas.columns import unpack

FAULTS_PY = Path(__file__).resolve().parent.parent / "producers" / "sim" / "faults.py"


def _early(name: str, onset_s: float = 1.37) -> Scenario:
    s = load_scenario(name)
    return dataclasses.replace(
        s, faults=tuple(dataclasses.replace(f, onset_s=onset_s) for f in s.faults)
    )


def _run(scenario: Scenario, seconds: float, seed: int = 1) -> tuple[Simulation, Readback]:
    sim = Simulation(scenario, seed=seed)
    return sim, Readback().extend(sim.frames(duration_s=seconds))


def _late_and_shortest_shares(
    tab: dict[str, np.ndarray], after: np.ndarray, rank: int
) -> tuple[float, float, int]:
    """Over the steps selected by ``after``: the share in which ``rank`` started last, the
    share in which its collective duration was the shortest, and the number of steps."""
    steps = np.unique(tab["step"][after])
    latest, shortest = 0, 0
    for step in steps:
        sel = after & (tab["step"] == step)
        ranks = tab["rank"][sel]
        latest += ranks[np.argmax(tab["first_start_ns"][sel])] == rank
        shortest += ranks[np.argmin(tab["duration_sum_ns"][sel])] == rank
    return latest / steps.size, shortest / steps.size, int(steps.size)


def test_throttled_rank_starts_last_and_has_the_shortest_collective_duration() -> None:
    sim, rb = _run(_early("tp-straggler"), 4.0)
    onset = sim.start_ns + 1_370_000_000
    # rank 5 of llama70b-a = stage 1, tp_rank 1: communicator rank 1 of group tp1
    tab = rb.collective_table("llama70b-a", "tp1")
    after = tab["first_start_ns"] > onset + 50_000_000
    latest, shortest, steps = _late_and_shortest_shares(tab, after, rank=1)
    assert steps > 30
    assert latest > 0.9
    assert shortest > 0.9
    mine = tab["duration_sum_ns"][after & (tab["rank"] == 1)].mean()
    peers = tab["duration_sum_ns"][after & (tab["rank"] != 1)].mean()
    assert peers > 2.0 * mine  # the peers wait for it
    # and its GPU says why: clock at 0.85 of max, thermal throttle bits
    gpu = rb.gpu_table("node01")
    busy = (gpu["ts_ns"] > onset + 20_000_000) & (gpu["gpu_util_ratio"] > 0.5)
    mine_clock = gpu["sm_clock_mhz"][busy & (gpu["gpu_index"] == 1)] / gpu["sm_clock_max_mhz"][0]
    assert abs(float(np.median(mine_clock)) - 0.85) < 0.01
    assert np.all(gpu["throttle_reasons"][busy & (gpu["gpu_index"] == 1)] & 0x40)
    assert not np.any(gpu["throttle_reasons"][busy & (gpu["gpu_index"] != 1)] & 0x40)


def test_host_jitter_rank_arrives_last_and_idles_while_its_peers_are_busy() -> None:
    """A CPU launch delay before each kernel (host jitter, clocks normal): the rank is the
    late arriver, and its GPU idles between kernels while its TP peers spin in the
    collective waiting for it, so only its utilization drops. A throttled GPU, late by the
    same mechanics, computes all along and reads as busy as its peers."""
    scenario = _early("tp-straggler")
    jitter = dataclasses.replace(scenario.faults[0], kind="host-jitter", severity=0.3)
    sim, rb = _run(dataclasses.replace(scenario, faults=(jitter,)), 4.0)
    onset = sim.start_ns + 1_370_000_000
    tab = rb.collective_table("llama70b-a", "tp1")
    after = tab["first_start_ns"] > onset + 50_000_000
    latest, _, _ = _late_and_shortest_shares(tab, after, rank=1)
    assert latest > 0.9
    gpu = rb.gpu_table("node01")  # llama70b-a stage 1: GPUs 0-3, rank 5 on GPU 1
    window = gpu["ts_ns"] > onset + 100_000_000
    before = (gpu["ts_ns"] > sim.start_ns + 300_000_000) & (gpu["ts_ns"] < onset)
    util = {i: gpu["gpu_util_ratio"][window & (gpu["gpu_index"] == i)].mean() for i in range(4)}
    peers = float(np.median([util[i] for i in (0, 2, 3)]))
    assert peers > 0.9
    assert 0.03 < peers - util[1] < 0.2, util
    assert max(util[i] for i in (0, 2, 3)) - min(util[i] for i in (0, 2, 3)) < 0.005
    early = [gpu["gpu_util_ratio"][before & (gpu["gpu_index"] == i)].mean() for i in range(4)]
    assert max(early) - min(early) < 0.005  # before the onset the rank is not special
    _, throttled = _run(_early("tp-straggler"), 4.0)
    tgpu = throttled.gpu_table("node01")
    twindow = tgpu["ts_ns"] > onset + 100_000_000
    tutil = [tgpu["gpu_util_ratio"][twindow & (tgpu["gpu_index"] == i)].mean() for i in range(4)]
    assert max(tutil) - min(tutil) < 0.005


def test_before_the_onset_the_throttled_rank_is_not_special() -> None:
    _, rb = _run(_early("tp-straggler", onset_s=3.37), 3.0)
    tab = rb.collective_table("llama70b-a", "tp1")
    means = [tab["duration_sum_ns"][tab["rank"] == r].mean() for r in range(4)]
    assert max(means) < 2.0 * min(means)


def test_clean_run_has_no_labels_background_on_every_counter_and_no_throttling() -> None:
    sim, rb = _run(load_scenario("clean"), 10.0)
    assert sim.labels == []
    grew = dict.fromkeys(COUNTERS, False)
    for node, port in rb.nic:
        for name in COUNTERS:
            _, values = rb.counter(node, port, name)
            assert values.min() > 0, (node, port, name)  # accumulated since boot
            grew[name] |= bool(values[-1] > values[0])
    assert all(grew.values()), [k for k, v in grew.items() if not v]
    for node in rb.gpu:
        gpu = rb.gpu_table(node)
        assert not np.any(gpu["throttle_reasons"] & ~0x1)  # only "idle" ever
    # the lasting per-GPU spread shows as a few percent of compute, not as a straggler
    tab = rb.collective_table("llama70b-a", "tp0")
    means = np.array([tab["duration_sum_ns"][tab["rank"] == r].mean() for r in range(4)])
    assert means.max() < 2.5 * means.min()


def test_same_seed_gives_the_same_frames() -> None:
    scenario = _early("retransmit-storm")
    one = [f.record for f in Simulation(scenario, seed=3).frames(duration_s=1.5)]
    two = [f.record for f in Simulation(scenario, seed=3).frames(duration_s=1.5)]
    assert one == two


def test_a_fault_does_not_change_the_client_arrivals() -> None:
    def arrivals(scenario: Scenario) -> list[int]:
        _, rb = _run(scenario, 3.0, seed=5)
        out: list[int] = []
        for dep in sorted(rb.requests):
            req = rb.request_table(dep)
            out += req["prompt_tokens"][req["kind"] == 0].tolist()
        return out

    base = load_scenario("clean")
    faulty = _early("tp-straggler")
    assert arrivals(base) == arrivals(dataclasses.replace(faulty, name="clean"))


def test_every_frame_encodes_and_decodes_with_the_avro_codec() -> None:
    codec = AvroCodec()
    sim = Simulation(_early("moe-expert-imbalance"), seed=1)
    frames = list(sim.frames(duration_s=2.0))
    schemas = {f.schema for f in frames}
    assert schemas == {
        "EngineRequestFrame",
        "EngineSampleFrame",
        "CollectiveFrame",
        "GpuSampleFrame",
        "NicCounterFrame",
        "DpuFrame",
    }
    for frame in frames:
        decoded = codec.decode(codec.encode(frame.schema, frame.record))
        assert decoded.name == frame.schema
        assert decoded.record == frame.record
    for rec in sim.topology:
        codec.encode("TopologyRecord", rec)
    for label in sim.labels:
        codec.encode("FaultLabel", label)


def test_frames_come_one_per_source_and_period_in_event_time_order() -> None:
    sim = Simulation(load_scenario("clean"), seed=1)
    assert sim.scenario.cluster.frame_interval_ms == 200  # the default period
    frames = list(sim.frames(duration_s=1.1))
    times = [f.event_time_ns for f in frames]
    assert times == sorted(times)
    # every frame says how far its source reports, in its own clock (within clock error): its
    # period's end, or for a collective frame at most that (not past the start of a step it
    # has not reported: test_arrival_order.py)
    for f in frames:
        reach_ns = f.record["frame_end_ns"] - f.event_time_ns
        assert reach_ns < 50_000
        assert reach_ns > -50_000 or (f.schema == "CollectiveFrame" and reach_ns > -200_000_000)
    periods = sorted(set(times))
    # five whole 200 ms periods, then the 100 ms the call ends with
    assert np.diff([sim.start_ns, *periods]).tolist() == [200_000_000] * 5 + [100_000_000]
    per_period = [sum(1 for t in times if t == p) for p in periods]
    assert len(set(per_period)) == 1  # every source, one frame each period
    gpu = [f for f in frames if f.schema == "GpuSampleFrame"]
    # a period's frame holds every 10 ms sample of its GPUs (4 GPUs x 20 ticks)
    assert [f.record["n_samples"] for f in gpu[:2]] == [80, 80]


def test_the_frame_period_groups_samples_without_changing_the_mechanics() -> None:
    scenario = load_scenario("tp-straggler")
    runs = {}
    for period_ms in (100, 200, 500):
        cluster = dataclasses.replace(scenario.cluster, frame_interval_ms=period_ms)
        sim = Simulation(dataclasses.replace(scenario, cluster=cluster), seed=2)
        frames = list(sim.frames(duration_s=6.0))
        util = np.concatenate(  # [gpu, tick] of node01 (a frame's rows are GPU-major)
            [
                unpack("GpuSampleFrame", f.record)["gpu_util_ratio"].reshape(4, -1)
                for f in frames
                if f.schema == "GpuSampleFrame" and f.record["node"] == "node01"
            ],
            axis=1,
        )
        steps = sorted(
            (int(s), int(r), int(d))
            for f in frames
            if f.schema == "CollectiveFrame"
            for s, r, d in zip(
                *(
                    unpack("CollectiveFrame", f.record)[c]
                    for c in ("step", "rank", "duration_sum_ns")
                ),
                strict=True,
            )
        )
        runs[period_ms] = (len(frames), util, steps, sim.labels)
    assert runs[100][0] == 2 * runs[200][0] == 5 * runs[500][0]
    for period_ms in (200, 500):
        # the same GPU utilisation in every tick, the same collectives, the same labels:
        # only the grouping into frames (and the draws of measurement noise) differ
        assert np.array_equal(runs[period_ms][1], runs[100][1])
        assert runs[period_ms][2] == runs[100][2]
        assert runs[period_ms][3] == runs[100][3]


def test_a_clock_step_stamps_only_the_times_from_its_onset_on() -> None:
    """A frame is stamped after its whole period is simulated: the times in it from before
    a step (or its undoing) read the clock as it was then."""
    spec = dataclasses.replace(load_scenario("clock-desync").cluster, clock_jitter_ns=0.0)
    clocks = Clocks(["node00", "node01"], spec, 0, np.random.default_rng(0))
    t = np.array([1_000, 2_000, 3_000], dtype=np.int64) * 1_000_000
    before = clocks.to_local(0, t)
    clocks.set_step(0, 200_000.0, 2_000_000_000)  # stepped at 2 s, stamped at 3 s
    assert (clocks.to_local(0, t) - before).tolist() == [0, 200_000, 200_000]
    assert (clocks.to_local_each(np.array([0, 2, 0]), t) - before).tolist()[::2] == [0, 200_000]
    other = clocks.to_local(2, t)
    clocks.set_step(0, 0.0, 2_500_000_000)  # and back at 2.5 s
    assert (clocks.to_local(0, t) - before).tolist() == [0, 200_000, 0]
    assert np.array_equal(clocks.to_local(2, t), other)


def test_a_clock_step_shows_from_its_onset_whatever_the_frame_period() -> None:
    """The stepped node's collective start times before the onset are the same (within
    the clock's jitter) with 100 ms and 1 s frames: the step is not read a frame early."""
    scenario = load_scenario("clock-desync")  # node01 steps +200 us at 4.37 s
    onset_ns = round(4.37e9)
    starts = {}
    for period_ms in (100, 1000):
        cluster = dataclasses.replace(scenario.cluster, frame_interval_ms=period_ms)
        sim = Simulation(dataclasses.replace(scenario, cluster=cluster), seed=3)
        rows = {}
        for f in sim.frames(duration_s=6.0):
            if f.schema != "CollectiveFrame" or f.record["node"] != "node01":
                continue
            cols = unpack("CollectiveFrame", f.record)
            keys = zip(cols["step"].tolist(), cols["rank"].tolist(), strict=True)
            for (step, rank), start in zip(keys, cols["first_start_ns"].tolist(), strict=True):
                rows[(f.record["group_id"], step, rank)] = start - sim.world.start_ns
        starts[period_ms] = rows
    common = starts[100].keys() & starts[1000].keys()
    diff = {k: starts[1000][k] - starts[100][k] for k in common}
    before = [d for k, d in diff.items() if starts[100][k] < onset_ns - 1_000_000]
    after = [d for k, d in diff.items() if starts[100][k] > onset_ns + 1_000_000]
    assert len(before) > 100 and len(after) > 100
    assert max(abs(d) for d in before) < 2_000  # jitter (150 ns), never the 200 us step
    assert max(abs(d) for d in after) < 2_000


def test_a_frame_period_off_the_chunk_grid_is_refused() -> None:
    scenario = load_scenario("clean")
    for bad in (0, 150):
        cluster = dataclasses.replace(scenario.cluster, frame_interval_ms=bad)
        with pytest.raises(ScenarioError, match="frame_interval_ms"):
            validate(dataclasses.replace(scenario, cluster=cluster))


def test_counter_reset_restarts_the_count_and_wrap_bounds_values() -> None:
    scenario = load_scenario("clean")
    cluster = dataclasses.replace(
        scenario.cluster, counter_resets=(("node01", "mlx5_2", 1.234),), counter_wrap_bits=32
    )
    sim, rb = _run(dataclasses.replace(scenario, cluster=cluster), 2.0)
    ts, tx = rb.counter("node01", "mlx5_2", "tx_bytes_phy")
    reset_at = sim.start_ns + 1_234_000_000
    before, after = tx[ts < reset_at - 20_000_000], tx[ts > reset_at + 20_000_000]
    assert after[0] < before[-1]  # restarted
    assert after[-1] - after[0] > 0  # and counting again
    for node, port in rb.nic:
        _, values = rb.counter(node, port, "tx_bytes_phy")
        assert values.max() < 2**32


def test_one_percent_sample_loss_drops_about_one_percent_of_rows() -> None:
    scenario = load_scenario("clean")
    cluster = dataclasses.replace(scenario.cluster, sample_loss_ratio=0.01)
    _, rb = _run(dataclasses.replace(scenario, cluster=cluster), 5.0)
    rows = sum(rb.gpu_table(node)["ts_ns"].size for node in rb.gpu)
    expected = 4 * 4 * 500  # nodes x GPUs x samples
    assert 0.97 * expected < rows < 0.999 * expected


def test_topology_names_entities_as_the_event_model_says() -> None:
    sim = Simulation(load_scenario("clean"), seed=0)
    recs = {(r["deployment"], r["rank"]): r for r in sim.topology}
    assert len(recs) == 16
    r5 = recs[("llama70b-a", 5)]
    assert (r5["tp_rank"], r5["pp_stage"], r5["node"], r5["gpu_index"]) == (1, 1, "node01", 1)
    assert r5["nic_port"] == "mlx5_1" and r5["switch_port"].startswith("leaf0:")
    assert recs[("llama70b-b", 0)]["node"] == "node02"


def test_drained_replica_gets_no_new_requests() -> None:
    sim = Simulation(load_scenario("clean"), seed=2)
    list(sim.frames(duration_s=1.0))
    sim.control.drain_replica("llama70b-a")
    rb = Readback().extend(sim.frames(duration_s=2.0))
    arrived_a = rb.request_table("llama70b-a")
    arrived_b = rb.request_table("llama70b-b")
    late = sim.start_ns + 1_100_000_000
    assert not np.any((arrived_a["kind"] == 0) & (arrived_a["ts_ns"] > late))
    assert np.sum((arrived_b["kind"] == 0) & (arrived_b["ts_ns"] > late)) > 5


def test_restart_ends_a_rank_hang_after_the_downtime_and_recomputes_in_flight_work() -> None:
    sim = Simulation(_early("rank-hang", onset_s=0.5), seed=1)
    list(sim.frames(duration_s=1.5))
    hung = sim.world.engine("llama70b-a")
    assert hung.stalled and sim.world.gpus.hung.any()
    running = int((hung.slot_req >= 0).sum())
    generated = hung.generation_tokens_total
    restart_at = sim.now_ns
    sim.control.restart_replica("llama70b-a", downtime_s=2.0)
    assert not sim.world.gpus.hung.any() and not hung.stalled
    assert int((hung.slot_req >= 0).sum()) == 0 and len(hung.waiting) >= running
    rb = Readback().extend(sim.frames(duration_s=4.0))
    arrived = rb.request_table("llama70b-a")
    ready = restart_at + 2_000_000_000
    # not ready: requests routed to it during the downtime are refused; it serves again after
    refused = np.concatenate([t for t, _ in sim.world.rejected])
    assert refused.size and np.all((refused >= restart_at) & (refused < ready))
    during = (arrived["kind"] == 0) & (arrived["ts_ns"] > restart_at + 100_000_000)
    assert not np.any(during & (arrived["ts_ns"] < ready - 100_000_000))
    assert np.any(arrived["kind"] == 0) and hung.generation_tokens_total > generated + 100
    assert hung.t_ns > ready


def test_admission_control_rejects_the_share_it_is_told_to() -> None:
    sim = Simulation(load_scenario("clean"), seed=3)
    sim.control.set_admission_ratio("llama70b-a", 0.25)
    list(sim.frames(duration_s=20.0))
    rejected = np.concatenate([r for _, r in sim.world.rejected])
    a = sim.world.replica_index("llama70b-a")
    assert set(rejected.tolist()) == {a}
    admitted = len(sim.world.engine("llama70b-a").req_arrival)
    share = rejected.size / (rejected.size + admitted)
    assert 0.6 < share < 0.9, share  # 75 % rejected, binomial noise on ~100 requests
    with pytest.raises(ValueError, match="admission ratio"):
        sim.control.set_admission_ratio("llama70b-a", 1.5)


def test_faults_module_cannot_reach_telemetry() -> None:
    """Injectors change causes only: faults.py must not import emitters or build frames."""
    tree = ast.parse(FAULTS_PY.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            imported |= {f"{node.module}.{a.name}" for a in node.names}
    forbidden_modules = (
        "telemetry",
        "nic_counters",
        "ingress",
        "readback",
        "publish",
        "capture",
        "schemas",
        "labels",
    )
    bad = sorted(m for m in imported if any(part in m.split(".") for part in forbidden_modules))
    assert not bad, f"faults.py imports {bad}"
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    touching = sorted(
        n
        for n in names
        if any(
            word in n.lower() for word in ("emit", "frame", "pack", "telemetry", "counter", "codec")
        )
    )
    assert not touching, f"faults.py references {touching}"


def test_load_truth_reads_each_engine_as_it_is_at_the_tick_end() -> None:
    """The load labeller's state at a tick is the engine's state then, not at the end of the
    step in progress (up to a long prefill step later): only requests ready by the tick wait,
    and the step's sequences hold their slots until it ends."""
    sim = Simulation(_early("request-length-skew", onset_s=0.5), seed=1)
    seen: list[tuple[int, np.ndarray]] = []
    tick = sim._load.tick

    def record(state: np.ndarray) -> None:
        seen.append((sim.world.now_ns, state.copy()))
        tick(state)

    sim._load.tick = record  # type: ignore[method-assign]
    for _ in sim.frames(duration_s=8.0):
        pass
    engines = sim.world.engines
    assert all(e.preemptions_total == 0 for e in engines)  # waiting below is ready..scheduled
    queued_ticks = 0
    for r, e in enumerate(engines):
        ready = np.array(e.req_ready)
        scheduled = np.array(e.req_scheduled)
        scheduled = np.where(scheduled < 0, np.iinfo(np.int64).max, scheduled)
        for t_ns, state in seen:
            waiting = int(np.count_nonzero((ready <= t_ns) & (scheduled > t_ns)))
            assert state[r, 2] == waiting, (e.name, t_ns)
            queued_ticks += waiting > 0
    assert queued_ticks > 50  # requests did queue behind long steps


class _Steps:
    """An executor whose every step takes 20 ms, until a rank hangs at ``hang_ns``."""

    def __init__(self, hang_ns: int | None = None) -> None:
        self.hang_ns = hang_ns

    def step(self, t0: int, *args: object, **kwargs: object) -> int | None:
        return None if self.hang_ns is not None and t0 >= self.hang_ns else t0 + 20_000_000


@pytest.mark.parametrize(
    ("batching", "blocked_mid_batch"), [("continuous", True), ("static", False)]
)
def test_truth_counts_admission_as_kv_blocked_only_while_the_cache_holds_it_back(
    batching: str, blocked_mid_batch: bool
) -> None:
    """A batch that fills the KV cache leaves the next long prompt waiting. An engine that
    backfills keeps trying to admit it and is held back by the cache; one that batches
    statically admits nothing until its batch drains, whatever the room, so the truth must not
    read that wait as KV pressure (a stale flag from the admission that filled the batch once
    labelled early-stop-skew's harm as kv-cache-pressure)."""
    from producers.sim.engine import Engine
    from producers.sim.scenario import DeploymentSpec

    spec = DeploymentSpec("r0", kv_capacity_tokens=4_000, batching=batching)
    engine = Engine(spec, _Steps())  # type: ignore[arg-type]
    n = 3
    engine.submit(
        np.zeros(n, dtype=np.int64),
        np.zeros(n, dtype=np.int64),
        np.array([1_500, 1_500, 1_500]),  # the third does not fit beside the first two
        np.array([500, 500, 500]),  # long answers: the batch runs for seconds
        np.zeros(n, dtype=np.int64),
    )
    engine.run_until(100_000_000)  # five steps into the first batch
    assert engine.n_running() == 2 and len(engine.waiting) == 1
    assert engine.kv_blocked is blocked_mid_batch


def test_truth_counts_the_requests_that_reach_a_hung_engine_as_waiting() -> None:
    """A hung engine takes nothing from its queue, yet requests keep reaching it: the truth
    reads them as waiting, so a hung replica never counts as a peer with room (it once did,
    and the truth blamed ingress-imbalance on the replica beside it)."""
    from producers.sim.engine import Engine
    from producers.sim.scenario import DeploymentSpec

    engine = Engine(DeploymentSpec("r0"), _Steps(hang_ns=100_000_000))  # type: ignore[arg-type]
    arrivals = np.array([0, 300_000_000, 400_000_000, 500_000_000], dtype=np.int64)
    n = arrivals.size
    engine.submit(arrivals, arrivals, np.full(n, 100), np.full(n, 500), np.zeros(n, np.int64))
    engine.run_until(600_000_000)
    assert engine.stalled
    running, _, waiting = engine.state_at(450_000_000)
    assert (running, waiting) == (1, 2)  # the first request holds its slot; two have arrived since
    assert engine.state_at(600_000_000)[2] == 3
    assert not engine.kv_blocked  # the hang holds the queue, not the KV cache


@pytest.mark.parametrize(
    ("kind", "target", "severity", "labelled"),
    [("planned-drain", "llama70b-b", 1.0, False), ("router-weight", "llama70b-a", 0.9, True)],
)
def test_truth_counts_no_room_on_a_replica_out_of_the_routers_rotation(
    kind: str, target: str, severity: float, labelled: bool
) -> None:
    """Both ways llama70b-a takes (nearly) all of the traffic and its SLO breaks. A peer
    sent a tenth of it still has room the router could use: ingress-imbalance. A peer drained
    on purpose has none to offer (the truth once counted it spare, and labelled every
    planned-drain look-alike's busy replica ingress-imbalance, whose remedy undoes the drain)."""
    from producers.sim.scenario import FaultSpec

    base = dataclasses.replace(load_scenario("ingress-imbalance"), faults=())
    fault = FaultSpec(kind=kind, target=target, onset_s=1.0, severity=severity)
    sim = Simulation(dataclasses.replace(base, faults=(fault,)), seed=1)
    for _ in sim.frames(duration_s=12.0):
        pass
    found = {(x["condition"], x["entity"]) for x in sim.labels}
    assert (("ingress-imbalance", "llama70b-a") in found) is labelled


def _engine(kv_capacity_tokens: int, max_batched_tokens: int) -> Any:
    from producers.sim.engine import Engine
    from producers.sim.scenario import DeploymentSpec

    spec = DeploymentSpec(
        "r0", kv_capacity_tokens=kv_capacity_tokens, max_batched_tokens=max_batched_tokens
    )
    return Engine(spec, _Steps())  # type: ignore[arg-type]


def _submit(engine: Any, prompts: list[int], outputs: list[int]) -> None:
    n = len(prompts)
    zeros = np.zeros(n, dtype=np.int64)
    engine.submit(zeros, zeros, np.array(prompts), np.array(outputs), zeros)


def test_admission_allocates_the_first_chunk_and_the_gauge_counts_what_was_allocated() -> None:
    """As vLLM V1: a request is admitted when its first chunk's blocks fit and the step has
    token budget left; the rest of its prompt is allocated chunk by chunk, and the KV use the
    engine reports is exactly the blocks allocated. A request held back by the token budget
    waits, and the truth does not read that as KV pressure."""
    engine = _engine(kv_capacity_tokens=64_000, max_batched_tokens=1024)
    _submit(engine, [3000, 3000], [10, 10])
    engine.run_until(1)  # the first step: the first prompt's first chunk takes the budget
    assert engine.n_running() == 1 and len(engine.waiting) == 1
    assert not engine.kv_blocked
    _, used_blocks, _ = engine.state_at(1)
    assert used_blocks == 1024 // engine.block_tokens  # one chunk allocated, not the prompt
    engine.run_until(20_000_001)  # the first step's sample: the gauge read after it
    assert engine.snap[0][2] * engine.kv_capacity_blocks == 1024 // engine.block_tokens


def test_a_preempted_prompt_keeps_its_cached_blocks_and_waits_for_room() -> None:
    """A long prompt admitted on its first chunk whose next chunk does not fit is preempted;
    the prefix cache keeps its computed blocks, so it waits at the head of the queue, blocked
    by the cache, until room frees, and then recomputes only the rest. Without the cache it
    would be admitted again on its first chunk every other step and preempted again (a
    livelock at full KV use that the truth read as unblocked)."""
    engine = _engine(kv_capacity_tokens=3000, max_batched_tokens=2048)
    _submit(engine, [1000, 2500], [50, 2])
    engine.run_until(40_000_001)  # admits both, then the second's next chunk does not fit
    assert engine.preemptions_total == 1
    assert engine.cached_tokens == {1: 1040}  # 1048 computed, kept in whole 16-token blocks
    assert engine.kv_blocked and list(engine.waiting) == [1]
    engine.run_until(2_000_000_000)  # the first request finishes; the second completes
    assert engine.preemptions_total == 1
    assert engine.req_first_token[1] > 0
    assert engine.prompt_tokens_total == 1000 + 1048 + (2500 - 1040)
