"""Event time, not arrival order: the same events read in another interleaving of sources
give the same windows and verdicts.

Live, a worker reads several topics and nodes whose frames interleave as the broker hands
them out; a replay interleaves them by timestamp. Each source is read in its own order in
both, but one source may run ahead of another. Before, a collective step was judged with
its rank's step period as of the moment the step closed, which counted however many later
steps of that rank had been read by then: the features, and so the verdicts' severities and
versions, depended on the interleaving.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.order_audit import Frame, Run, run
from models.detector import Detector, DetectorConfig, Output
from schemas.columns import unpack
from tests.synthetic import collective_frames, topology

Frames = list[tuple[str, dict[str, Any]]]


def _frames(clock_offset_ns: dict[str, int] | None = None) -> Frames:
    # a straggler to name, and a step period that varies (a long step every 7 steps)
    return collective_frames(
        {5: 1.2},
        seconds=6,
        seed=4,
        long_step_every=7,
        long_step_ns=120_000_000,
        clock_offset_ns=clock_offset_ns,
    )


def _run(frames: Frames) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    det = Detector(config=DetectorConfig(emit_features=True))
    for record in topology():
        det.process("TopologyRecord", record)
    outputs: list[Output] = []
    for schema, record in frames:
        outputs += det.process(schema, record)
    outputs += det.flush()
    verdicts = [o.record for o in outputs if o.schema == "Verdict"]
    windows = [o.record for o in outputs if o.schema == "FeatureWindow"]
    return verdicts, windows


def _node_ahead(frames: Frames, node: str, frames_ahead: int) -> Frames:
    """The same frames with ``node``'s read ``frames_ahead`` frames (100 ms each) early, once
    both nodes have spoken (before a source's first frame nothing waits for it)."""
    start = 4  # two frames of each node in order
    mine = [f for f in frames[start:] if f[1]["node"] == node]
    others = [f for f in frames[start:] if f[1]["node"] != node]
    out: Frames = list(frames[:start])
    for i, frame in enumerate(others):
        if i == 0:
            out += mine[: frames_ahead + 1]
        elif i + frames_ahead < len(mine):
            out.append(mine[i + frames_ahead])
        out.append(frame)
    assert sorted(id(f) for f in out) == sorted(id(f) for f in frames)
    return out


def _rank_features(windows: list[dict[str, Any]]) -> dict[tuple[int, str], dict[str, float]]:
    return {
        (w["window_end_ns"], w["entity"]): w["features"]
        for w in windows
        if w["entity_kind"] == "rank"
    }


@pytest.mark.parametrize(
    "clock_offset_ns",
    [None, {"node0": 40_000_000, "node1": -25_000_000}],
    ids=["clocks-agree", "clocks-offset"],
)
def test_a_node_read_ahead_of_its_peers_changes_no_feature_and_no_verdict(
    clock_offset_ns: dict[str, int] | None,
) -> None:
    frames = _frames(clock_offset_ns)
    verdicts, windows = _run(frames)
    assert any(
        v["entity"] == "dep0/rank5" and v["condition"] == "tp-straggler" for v in verdicts
    ), "the scenario should name the straggler"
    in_order = _rank_features(windows)
    assert any("nccl.step_period_ns" in f for f in in_order.values())
    for node in ("node0", "node1"):
        ahead_verdicts, ahead_windows = _run(_node_ahead(frames, node, 4))
        assert _rank_features(ahead_windows) == in_order, f"{node} read 400 ms ahead"
        assert ahead_verdicts == verdicts, f"{node} read 400 ms ahead"


# -- one source, several feeds ------------------------------------------------------------
# A node's NIC sends one frame per port for each interval, and an engine's samples and
# requests travel on two topics. The watermark waits for each feed: before, a node's NIC was
# one stream, so the first port's frame of an interval moved it on and, when that node was the
# slowest, its other ports' frames of the same interval arrived behind the watermark (late,
# their samples missing from the window that had just closed).

SIM_S = 6.0
DELAY_NS = 400_000_000


def _sim_frames(seed: int = 2, seconds: float = SIM_S) -> tuple[list[dict[str, Any]], list[Frame]]:
    from producers.sim.scenario import load_scenario
    from producers.sim.simulation import Simulation

    sim = Simulation(load_scenario("mixed"), seed=seed)
    frames = [(f.event_time_ns, f.schema, f.record) for f in sim.frames(duration_s=seconds)]
    return list(sim.topology), frames


def _run_delayed(
    topology_records: list[dict[str, Any]], frames: list[Frame], delayed: str | None
) -> Run:
    """Frames in event-time order, those of schema ``delayed`` read 400 ms late once every
    feed has spoken (after the first second)."""
    settled_ns = frames[0][0] + 1_000_000_000
    return run(topology_records, frames, {delayed: DELAY_NS} if delayed else {}, settled_ns)


def _of(features: dict[tuple[int, str], dict[str, float]], prefix: str, after_ns: int) -> Any:
    return {
        key: {k: v for k, v in f.items() if k.startswith(prefix)}
        for key, f in features.items()
        if key[0] > after_ns
    }


@pytest.mark.parametrize(
    ("delayed", "prefix"),
    [("NicCounterFrame", "nic."), ("EngineSampleFrame", "engine.")],
    ids=["nic-ports", "engine-samples-behind-requests"],
)
def test_a_source_read_late_is_waited_for_feed_by_feed(delayed: str, prefix: str) -> None:
    topology_records, frames = _sim_frames()
    in_order = _run_delayed(topology_records, frames, None)
    late = _run_delayed(topology_records, frames, delayed)
    assert late.late_frames <= in_order.late_frames
    after_ns = frames[0][0] + 1_000_000_000
    mine = _of(in_order.windows, prefix, after_ns)
    assert any(mine.values())
    assert _of(late.windows, prefix, after_ns) == mine
    assert late.verdicts == in_order.verdicts


@pytest.mark.parametrize("shift_ns", [DELAY_NS, -DELAY_NS], ids=["late", "early"])
def test_collectives_read_out_of_step_with_the_rest_change_no_window(shift_ns: int) -> None:
    """A step is reported when it ends, which can be a frame after it started (a long
    prefill step). A collective frame claimed to report up to its period's end, past such a
    step's start, so in event-time order that step's rows came behind the watermark and
    counted only in the windows still open, while read 400 ms late relative to the rest they
    were on time: features differed between orderings. The simulator's frames now claim no
    further than the first step they have not reported."""
    topology_records, frames = _sim_frames(seed=1, seconds=10.0)
    in_order = _run_delayed(topology_records, frames, None)
    settled_ns = frames[0][0] + 1_000_000_000
    if shift_ns > 0:
        shifted = run(topology_records, frames, {"CollectiveFrame": shift_ns}, settled_ns)
    else:  # collectives early: every other source late
        others = {f[1]: -shift_ns for f in frames if f[1] != "CollectiveFrame"}
        shifted = run(topology_records, frames, others, settled_ns)
    assert any(f for f in in_order.windows.values() if any(k.startswith("nccl.") for k in f))
    assert shifted.windows == in_order.windows
    assert shifted.verdicts == in_order.verdicts


def test_a_collective_frame_claims_no_further_than_its_first_unreported_step() -> None:
    """Every collective row starts at or after the reach (``frame_end_ns``) of the frames of
    its feed before it (less its clock's jitter: the reach is stated without one), so none
    is late by design."""
    _, frames = _sim_frames(seed=1, seconds=10.0)
    reach: dict[tuple[str, str, str], int] = {}
    held = 0
    for end_ns, schema, record in frames:
        if schema != "CollectiveFrame":
            continue
        feed = (record["deployment"], record["group_id"], record["node"])
        cols = unpack(schema, record)
        if feed in reach and len(cols["first_start_ns"]):
            assert int(cols["first_start_ns"].min()) >= reach[feed] - 1_000_000
        reach[feed] = max(reach.get(feed, 0), record["frame_end_ns"])
        held += record["frame_end_ns"] < end_ns - 1_000_000  # clocks differ by < 1 ms here
    assert held, "no frame held back: the scenario should have steps across a frame's end"


def _silent_sources(verdicts: list[dict[str, Any]]) -> set[str]:
    return {
        v["entity"]
        for v in verdicts
        if v["condition"] == "source-silent" and v["state"] == "firing"
    }


def test_a_source_is_silent_when_all_its_feeds_are_and_not_when_one_is() -> None:
    topology_records, frames = _sim_frames()
    stop_ns = frames[0][0] + 2_000_000_000

    def without_node01_nic(port: str | None) -> list[Frame]:
        return [
            (t, schema, record)
            for t, schema, record in frames
            if not (
                schema == "NicCounterFrame"
                and record["node"] == "node01"
                and (port is None or record["port"] == port)
                and t > stop_ns
            )
        ]

    ports = sorted(
        {r["port"] for _, s, r in frames if s == "NicCounterFrame" and r["node"] == "node01"}
    )
    assert len(ports) > 1
    one_port = _run_delayed(topology_records, without_node01_nic(ports[0]), None)
    assert "node01#nic" not in _silent_sources(one_port.verdicts)
    assert ("llama70b-a", "nic", "node01") not in one_port.silent_sources
    every_port = _run_delayed(topology_records, without_node01_nic(None), None)
    assert "node01#nic" in _silent_sources(every_port.verdicts)
    assert ("llama70b-a", "nic", "node01") in every_port.silent_sources
