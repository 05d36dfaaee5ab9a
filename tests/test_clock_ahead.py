"""A clock that runs far ahead does not carry the watermark off: its frames wait until another
clock confirms the new time, and a clock that never gets confirmed goes silent (unknown)."""

from __future__ import annotations

import copy
from typing import Any

from models.detector import Detector, DetectorConfig, Output
from streams.checkpoint import checkpoint_detector, read_checkpoint
from streams.topology import Topology
from streams.watermark import WatermarkTracker
from tests.synthetic import T0_NS, collective_frames, topology
from tests.test_watermark_gap import YEAR_NS, S, _shifted

Frames = list[tuple[str, dict[str, Any]]]


def _detector(**config: Any) -> Detector:
    det = Detector(config=DetectorConfig(anomaly_model=False, **config))
    for record in topology():
        det.process("TopologyRecord", record)
    return det


def _run(det: Detector, frames: Frames) -> list[dict[str, Any]]:
    out: list[Output] = []
    for schema, record in frames:
        out += det.process(schema, record)
    out += det.flush()
    return [copy.deepcopy(o.record) for o in out]


def _straggler() -> Frames:
    return collective_frames({5: 1.2}, seconds=6)


def _node(record: dict[str, Any]) -> str:
    return str(record["node"])


def test_one_frame_dated_a_year_ahead_is_dropped_when_its_clock_is_back() -> None:
    frames = _straggler()
    rogue = next(i for i, (_, r) in enumerate(frames) if i > 20 and _node(r) == "node1")
    schema, record = frames[rogue]
    with_rogue = [
        *frames[:rogue],
        (schema, _shifted(schema, record, YEAR_NS)),
        *frames[rogue + 1 :],
    ]
    det = _detector()
    got = _run(det, with_rogue)
    assert det.stats.frames_held == 1 and det.stats.frames_dropped_ahead == 1
    assert det.stats.late_frames == 0 and det.stats.windows_skipped == 0
    without = _run(_detector(), [*frames[:rogue], *frames[rogue + 1 :]])
    assert any(r.get("condition") == "tp-straggler" for r in got)
    assert got == without


def test_without_the_hold_that_frame_turns_every_other_frame_late() -> None:
    """The failure the hold prevents (``ahead_hold_ns=0``: the old behaviour)."""
    frames = _straggler()
    schema, record = frames[21]
    det = _detector(ahead_hold_ns=0)
    _run(det, [*frames[:21], (schema, _shifted(schema, record, YEAR_NS)), *frames[22:]])
    assert det.stats.late_frames > 30 and det.stats.frames_held == 0


def test_a_clock_that_stays_ahead_leaves_its_node_silent_and_the_rest_detected() -> None:
    frames = _straggler()
    ahead = [
        (schema, _shifted(schema, r, YEAR_NS) if i >= 20 and _node(r) == "node1" else r)
        for i, (schema, r) in enumerate(frames)
    ]
    held = sum(1 for i, (_, r) in enumerate(frames) if i >= 20 and _node(r) == "node1")
    det = _detector(ahead_hold_frames=8)
    records = _run(det, ahead)
    assert det.stats.late_frames == 0
    assert det.stats.frames_held == held and det.stats.frames_dropped_ahead == held - 8
    silent = {r["entity"] for r in records if r.get("condition") == "source-silent"}
    assert silent and all("node1" in entity for entity in silent), silent
    assert T0_NS + 5 * S < det.watermark_ns < T0_NS + 10 * S  # on time, not a year on


def test_sources_resuming_after_a_pause_confirm_each_other() -> None:
    """Every source quiet for 2 min, then back one after another: the first one's frames wait
    for the second clock's, nothing is dropped, and no source reads silent on the way."""
    before = collective_frames({5: 1.2}, seconds=6)
    after = [
        (schema, _shifted(schema, r, 120 * S))
        for schema, r in collective_frames({5: 1.2}, seconds=6, seed=1)
    ]
    det = _detector()
    records = _run(det, before + after)
    assert det.stats.frames_held >= 1 and det.stats.frames_dropped_ahead == 0
    assert det.stats.late_frames == 0
    assert not [r for r in records if r.get("condition") == "source-silent"]
    unheld = _detector(ahead_hold_ns=0)
    flapping = _run(unheld, before + after)
    assert [r for r in flapping if r.get("condition") == "source-silent"], (
        "without the hold the first resumer turns the others silent: the test shows nothing"
    )

    def verdicts(rs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        keep = {"tp-straggler"}
        return [(r["entity"], r["state"]) for r in rs if r.get("condition") in keep]

    assert verdicts(records) and verdicts(records) == verdicts(flapping)


def test_a_checkpoint_keeps_the_held_frames() -> None:
    frames = _straggler()
    ahead = [
        (schema, _shifted(schema, r, 60 * S) if 20 <= i < 24 else r)
        for i, (schema, r) in enumerate(frames[:24])
    ]
    det = _detector()
    for schema, record in ahead:
        det.process(schema, record)
    assert det.stats.frames_held >= 1
    blob = checkpoint_detector(det, {})
    restored = read_checkpoint(blob).restore(topology=Topology.from_records(topology()))
    assert restored._ahead == det._ahead and restored.stats == det.stats
    rest = frames[24:]
    assert _run(restored, rest) == _run(det, rest)


def test_a_dead_nodes_clock_does_not_hold_the_living_one() -> None:
    """One clock stopped long ago (a dead node) cannot confirm anything: the living one runs
    on, and resumes after a pause, untouched; a third clock's runaway is still held."""
    tracker = WatermarkTracker(0, S, ahead_limit_ns=30 * S)
    tracker.claim("dead", 0)
    tracker.observe(("dead",), 0)
    for t in [*range(0, 60 * S, S // 2), *range(180 * S, 200 * S, S // 2)]:  # a 2 min pause
        assert tracker.claim("alive", t)
        tracker.observe(("alive",), t)
    assert not tracker.claim("rogue", 10**9 * S)


def test_a_clock_that_came_back_confirms_nothing_at_its_old_date() -> None:
    """A clock ran a year ahead, then came back: its old claim does not let another clock's
    jump to that date through unconfirmed."""
    tracker = WatermarkTracker(0, S, ahead_limit_ns=30 * S)
    for t in range(0, 10 * S, S // 2):
        for clock in ("a", "b"):
            assert tracker.claim(clock, t)
            tracker.observe((clock,), t)
    assert not tracker.claim("b", YEAR_NS)  # b runs away: held
    assert tracker.claim("b", 10 * S)  # and comes back
    tracker.observe(("b",), 10 * S)
    assert not tracker.claim("a", YEAR_NS), "b's old claim confirmed a's jump"
