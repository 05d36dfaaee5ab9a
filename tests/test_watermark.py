"""Watermarks and silence: a source that reports in coarse steps is not silent between them."""

from __future__ import annotations

import dataclasses

from models.detector import Detector
from producers.sim import Simulation, load_scenario
from streams.watermark import WatermarkTracker

S = 1_000_000_000


def _frames(tracker: WatermarkTracker, stream: str, step_ns: int, until_ns: int) -> None:
    """Frames of ``stream`` every ``step_ns``, each reporting up to its end."""
    for end in range(step_ns, until_ns + 1, step_ns):
        tracker.observe(stream, end - step_ns + 10_000_000)
        tracker.observe(stream, end)
        tracker.observe_frame(stream, end - step_ns + 10_000_000, end)


def test_a_stream_of_coarse_frames_is_silent_only_after_two_of_its_steps() -> None:
    tracker = WatermarkTracker(allowed_lateness_ns=100_000_000, idle_timeout_ns=S)
    _frames(tracker, "fine", S // 10, 5 * S)
    _frames(tracker, "coarse", S, 4 * S)  # one whole step behind "fine"
    tracker.observe("fine", 5 * S + S // 10)  # and a little more
    _, changes = tracker.advance()
    assert changes == [] and tracker.timeout_ns("coarse") == 2 * S  # median step 1 s
    assert tracker.timeout_ns("fine") == S  # steps below half the idle timeout: unchanged
    tracker.observe("fine", 6 * S + S // 10)  # more than two steps behind: silent
    _, changes = tracker.advance()
    assert [(c.stream, c.silent) for c in changes] == [("coarse", True)]


def test_one_long_gap_does_not_stretch_the_timeout_and_tiny_steps_are_not_steps() -> None:
    tracker = WatermarkTracker(allowed_lateness_ns=0, idle_timeout_ns=S)
    _frames(tracker, "s", S // 5, 2 * S)
    tracker.observe_frame("s", 30 * S, 30 * S)  # back after an outage
    tracker.observe_frame("s", 30 * S, 30 * S + 200)  # a second port, clocks apart
    assert tracker.timeout_ns("s") == S
    tracker.observe_frame("late", 0, 0)  # an empty first frame: no step yet
    assert tracker.timeout_ns("late") == S


def test_the_steps_survive_a_checkpoint_and_old_checkpoints_still_restore() -> None:
    tracker = WatermarkTracker(allowed_lateness_ns=0, idle_timeout_ns=S)
    _frames(tracker, ("dep", "nic", "node0"), S, 5 * S)
    state = tracker.snapshot()
    again = WatermarkTracker.restore(state, 0, S)
    assert tracker.timeout_ns(("dep", "nic", "node0")) == 2 * S  # learned: two 1 s steps
    assert again.timeout_ns(("dep", "nic", "node0")) == 2 * S
    old = {k: v for k, v in state.items() if k not in ("steps", "frame_ends")}
    assert WatermarkTracker.restore(old, 0, S).timeout_ns(("dep", "nic", "node0")) == S


def _silences(frame_interval_ms: int, drop_gpu_of_node01_after_s: float | None) -> list[dict]:
    scenario = load_scenario("clean")
    cluster = dataclasses.replace(scenario.cluster, frame_interval_ms=frame_interval_ms)
    sim = Simulation(dataclasses.replace(scenario, cluster=cluster), seed=1)
    det = Detector()
    for rec in sim.topology:
        det.process("TopologyRecord", rec)
    out = []
    for frame in sim.frames(duration_s=8.0):
        dropped = (
            drop_gpu_of_node01_after_s is not None
            and frame.schema == "GpuSampleFrame"
            and frame.record["node"] == "node01"
            and frame.event_time_ns > sim.start_ns + drop_gpu_of_node01_after_s * S
        )
        if not dropped:
            out += det.process(frame.schema, frame.record)
    return [
        o.record
        for o in out
        if o.record.get("condition") == "source-silent" and o.record.get("state") == "firing"
    ]


def test_one_second_frames_raise_no_silence_and_a_silent_source_is_still_found() -> None:
    assert _silences(1000, None) == []
    (silent,) = _silences(1000, 3.0)
    assert silent["entity"] == "node01#gpu"
    # the record dates the silence from the source's last event: its last frame ended at 3 s
    # (in node01's clock, microseconds off the reference)
    assert abs(load_scenario("clean").epoch_ns + 3 * S - silent["first_seen_ns"]) < S // 10
