"""``requests.waiting_mean``: requests waiting to be scheduled, averaged over the window from
the request events, so a queue that builds during a long engine step and clears at the next
admission counts (the engine's waiting gauge moves only at step boundaries)."""

from __future__ import annotations

import pytest

from schemas.columns import unpack
from streams.features.requests import RequestExtractor
from streams.hopping import HoppingSpec
from tests.synthetic import request_frame

S = 1_000_000_000
MS = 1_000_000
T0_NS = 1_800_000_000 * S
ARRIVED, SCHEDULED, PREEMPTED = 0, 1, 5


def _join(rows: list[tuple[int, int, int]], n: int, end_ns: int) -> RequestExtractor:
    join = RequestExtractor(HoppingSpec())
    frame = request_frame("a", "node0", rows, [f"a-{i}" for i in range(n)], 0, end_ns)
    join.ingest(frame, unpack("EngineRequestFrame", frame))
    return join


def _window(end_ns: int) -> range:
    spec = HoppingSpec()
    return spec.panes_of_window(end_ns // spec.hop_ns - 1)


def test_requests_queued_behind_a_long_step_count_for_the_time_they_waited() -> None:
    """Four requests arrive during a 600 ms step and are all admitted when it ends: over the
    1 s window the queue held 4 x 300 ms on average = 1.2 requests, whatever the gauge read."""
    step_end = T0_NS + 700 * MS
    rows = []
    for i in range(4):
        rows += [(i, ARRIVED, T0_NS + 250 * MS + i * 100 * MS), (i, SCHEDULED, step_end)]
    join = _join(rows, 4, T0_NS + S)
    waited_ms = sum(700 - (250 + i * 100) for i in range(4))  # 450 + 350 + 250 + 150
    assert join.waiting_mean("a", _window(T0_NS + S)) == pytest.approx(waited_ms / 1000)


def test_a_request_still_waiting_counts_to_the_window_end_and_an_earlier_admission_not() -> None:
    rows = [
        (0, ARRIVED, T0_NS - 2 * S),
        (0, SCHEDULED, T0_NS - S),  # admitted before the window: nothing
        (1, ARRIVED, T0_NS + 400 * MS),  # still waiting at the end: 600 ms
        (2, ARRIVED, T0_NS - 500 * MS),
        (2, SCHEDULED, T0_NS + 200 * MS),  # waited into the window: 200 ms of it
    ]
    join = _join(rows, 3, T0_NS + S)
    assert join.waiting_mean("a", _window(T0_NS + S)) == pytest.approx(0.8)


def test_a_preempted_request_waits_again_until_it_is_readmitted() -> None:
    rows = [
        (0, ARRIVED, T0_NS),
        (0, SCHEDULED, T0_NS + 100 * MS),
        (0, PREEMPTED, T0_NS + 300 * MS),
        (0, SCHEDULED, T0_NS + 800 * MS),
    ]
    join = _join(rows, 1, T0_NS + S)
    assert join.waiting_mean("a", _window(T0_NS + S)) == pytest.approx(0.1 + 0.5)


def test_admissions_older_than_the_window_are_forgotten() -> None:
    rows = [(0, ARRIVED, T0_NS), (0, SCHEDULED, T0_NS + 100 * MS)]
    join = _join(rows, 1, T0_NS + S)
    join.forget_first_tokens_before(_window(T0_NS + 3 * S).start)
    assert join.admissions_by_pane == {}
    assert join.waiting_mean("a", _window(T0_NS + S)) == 0.0


def _spare_of_a(peer_engine: dict[str, float], peer_requests: dict[str, float]) -> float:
    from streams.topology import Topology
    from streams.views import WindowInputs, build_views
    from tests.synthetic import topology

    topo = Topology()
    for dep in ("a", "b"):
        for rec in topology(dep, nodes=1, gpus_per_node=1):
            topo.update(rec)
    engine = {"a": {"batch_fill_ratio": 0.9, "kv_cache_usage_ratio": 0.9, "num_waiting": 5.0}}
    engine["b"] = peer_engine
    inputs = WindowInputs(
        nccl={}, gpu={}, nic={}, dpu={}, engine=engine,
        requests={"a": {"arrivals": 1.0}, "b": peer_requests},
        clock_step_abs_ns={}, silent=set(), port_plane={}, port_fabric={}, window_s=1.0,
    )  # fmt: skip
    (view,) = [v for v in build_views(inputs, topo) if v.entity == "a" and v.kind == "replica"]
    return view.features["peers.spare_capacity"]


def test_a_peer_whose_requests_queue_between_steps_has_no_spare_room() -> None:
    """The peer's gauge read no queue (it moves at step boundaries), its requests waited 1.5
    on average: no room. Without request events the gauge decides."""
    idle_gauge = {"batch_fill_ratio": 0.4, "kv_cache_usage_ratio": 0.4, "num_waiting": 0.0}
    assert _spare_of_a(idle_gauge, {"arrivals": 3.0, "waiting_mean": 1.5}) == 0.0
    assert _spare_of_a(idle_gauge, {"arrivals": 3.0, "waiting_mean": 0.2}) == 1.0
    assert _spare_of_a(idle_gauge, {}) == 1.0


def test_a_peer_out_of_the_routers_rotation_has_no_spare_room() -> None:
    """An idle peer that got no request in the last 3 s is drained (or at weight 0): its
    capacity is not the router's to use, so harm beside it is no routing condition."""
    idle_gauge = {"batch_fill_ratio": 0.0, "kv_cache_usage_ratio": 0.0, "num_waiting": 0.0}
    assert _spare_of_a(idle_gauge, {"arrivals": 0.0, "arrivals_recent": 0.0}) == 0.0
    assert _spare_of_a(idle_gauge, {"arrivals": 0.0, "arrivals_recent": 2.0}) == 1.0


def test_the_detector_counts_a_replicas_requests_of_the_last_3_s() -> None:
    from models.detector import Detector, DetectorConfig
    from models.runbook import load_runbook
    from tests.synthetic import topology

    det = Detector(load_runbook(), DetectorConfig(emit_features=True, anomaly_model=False))
    for dep in ("a", "b"):
        for rec in topology(dep, nodes=1, gpus_per_node=1):
            det.process("TopologyRecord", rec)
    recent: dict[int, float] = {}
    for k in range(140):  # 14 s of 100 ms frames; b is drained at 2 s
        start = T0_NS + k * S // 10
        for dep in ("a", "b"):
            arrivals = [start + 10 * MS] if dep == "a" or k < 20 else []
            # each request's whole life (arrive .. finish, kinds 0-4) within 60 ms
            rows = [
                (i, kind, t + kind * 15 * MS) for i, t in enumerate(arrivals) for kind in range(5)
            ]
            ids = [f"{dep}-{k}-{i}" for i in range(len(arrivals))]
            frame = request_frame(dep, f"{dep}-node0", rows, ids, k, start + S // 10)
            for out in det.process("EngineRequestFrame", frame):
                if out.schema == "FeatureWindow" and out.record["entity"] == "b":
                    end_s = round((out.record["window_end_ns"] - T0_NS) / S, 2)
                    recent[end_s] = out.record["features"]["requests.arrivals_recent"]
    assert recent[2.0] == 20.0  # 10 a second since 0 s
    assert recent[4.0] == 10.0  # the last second of them
    assert recent[5.0] == 0.0  # 3 s after the drain
    assert recent[13.5] == 0.0  # and still, with no request of b's left in the 10 s window


def test_a_preempted_request_needs_room_for_what_it_had_generated_too() -> None:
    """500-token prompts (tests.synthetic); the preempted one had generated 1 token."""
    end = T0_NS + S
    rows = [(0, ARRIVED, T0_NS), (0, SCHEDULED, T0_NS + 100 * MS)]
    assert _join(rows, 1, end).waiting_need_tokens_max("a", end) == 0  # admitted, none waits
    rows += [(1, ARRIVED, T0_NS + 200 * MS)]
    assert _join(rows, 2, end).waiting_need_tokens_max("a", end) == 500
    rows += [(0, PREEMPTED, T0_NS + 300 * MS)]
    assert _join(rows, 2, end).waiting_need_tokens_max("a", end) == 501


def test_a_join_from_a_checkpoint_written_before_admissions_were_kept_still_works() -> None:
    import pickle

    rows = [(0, ARRIVED, T0_NS)]
    old = _join(rows, 1, T0_NS + S)
    del old.admissions_by_pane  # as pickled by the detector before this field existed
    join = pickle.loads(pickle.dumps(old))
    frame = request_frame("a", "node0", [(0, SCHEDULED, T0_NS + 500 * MS)], ["a-0"], 1, T0_NS + S)
    join.ingest(frame, unpack("EngineRequestFrame", frame))
    assert join.waiting_mean("a", _window(T0_NS + S)) == pytest.approx(0.5)


def test_what_waited_at_a_window_end_does_not_depend_on_how_far_the_events_were_read() -> None:
    """Live, the request events may be read past a window's end before it closes (another
    source holds the watermark back); requests admitted after the end still waited at it."""
    end = T0_NS + S
    up_to_end = [
        (0, ARRIVED, T0_NS + 200 * MS),
        (1, ARRIVED, T0_NS),
        (1, SCHEDULED, T0_NS + 100 * MS),
        (1, PREEMPTED, T0_NS + 300 * MS),  # back in the queue with its 1 generated token
    ]
    beyond = [(1, SCHEDULED, end + 200 * MS), (0, SCHEDULED, end + 300 * MS)]
    assert _join(up_to_end, 2, end).waiting_need_tokens_max("a", end) == 501
    assert _join(up_to_end + beyond, 2, end + S).waiting_need_tokens_max("a", end) == 501
    # and a request that arrived after the end did not wait at it
    later = [(2, ARRIVED, end + 100 * MS)]
    assert _join(later, 3, end + S).waiting_need_tokens_max("a", end) == 0
