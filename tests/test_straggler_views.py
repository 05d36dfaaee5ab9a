"""streams/views.py: the per-rank straggler evidence built from GPU utilization."""

from __future__ import annotations

from producers.sim import Simulation, load_scenario
from streams.topology import Topology
from streams.views import WindowInputs, build_views


def _views(util_by_rank: dict[int, float]) -> dict[str, dict[str, float]]:
    """Views of llama70b-a (TP4 x PP2) whose GPUs read the given utilization (1.0 for
    ranks not given), and no other telemetry."""
    topo = Topology.from_records(Simulation(load_scenario("tp-straggler"), seed=1).topology)
    gpu = {
        place.gpu_entity: {"gpu_util_ratio": util_by_rank.get(place.rank, 1.0)}
        for place in topo.ranks_of("llama70b-a")
    }
    inputs = WindowInputs(
        nccl={}, gpu=gpu, nic={}, dpu={}, engine={}, requests={}, clock_step_abs_ns={},
        silent=set(), port_plane={}, port_fabric={}, window_s=1.0,
    )  # fmt: skip
    return {v.entity: v.features for v in build_views(inputs, topo) if v.kind == "rank"}


def test_a_rank_idling_while_its_tp_peers_are_busy_reads_below_them() -> None:
    views = _views({5: 0.96})
    assert abs(views["llama70b-a/rank5"]["gpu.util_below_tp_peers_ratio"] - 0.04) < 1e-9
    assert views["llama70b-a/rank5"]["straggler.beyond_spread"] == 1.0
    for rank in (4, 6, 7):  # its TP peers: their median of others includes the idle rank
        assert views[f"llama70b-a/rank{rank}"]["gpu.util_below_tp_peers_ratio"] == 0.0
        assert views[f"llama70b-a/rank{rank}"]["straggler.beyond_spread"] == 0.0


def test_peers_are_the_ranks_of_the_same_pipeline_stage() -> None:
    """Pipeline stages idle in turn (bubbles): a whole stage reading lower is not a rank
    waiting on its host, and is not compared with the other stage's ranks."""
    views = _views({0: 0.9, 1: 0.9, 2: 0.9, 3: 0.9})
    for rank in range(8):
        assert views[f"llama70b-a/rank{rank}"]["gpu.util_below_tp_peers_ratio"] == 0.0
        assert views[f"llama70b-a/rank{rank}"]["straggler.beyond_spread"] == 0.0
