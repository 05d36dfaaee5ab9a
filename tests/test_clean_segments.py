"""Clean stretches spread over a whole Azure trace: offsets and the summary."""

from __future__ import annotations

from models.clean_segments import clean_segments, segment_offsets_s
from models.evaluate import run_episode


def test_offsets_spread_from_the_start_to_the_last_stretch_that_fits() -> None:
    assert segment_offsets_s(3600.0, 120.0, 3.0, 4) == [0.0, 1080.0, 2160.0, 3240.0]
    assert segment_offsets_s(100.0, 120.0, 1.0, 3) == [0.0, 0.0, 0.0]
    assert segment_offsets_s(3600.0, 120.0, 3.0, 0) == []


def test_stretches_are_simulated_at_their_offsets_and_summed() -> None:
    seen: list[float] = []

    def run(episodes):  # type: ignore[no-untyped-def]
        for ep in episodes:
            seen.append(ep.scenario.workload.trace_offset_s)
            yield run_episode((ep, frozenset(), "", 0))

    out = clean_segments(["azure-conv"], 2, 0, 12.0, run)["azure-conv"]
    assert seen[0] == 0.0 and seen[1] > 3000.0  # the conv trace is about an hour long
    assert out["segments"] == 2 and len(out["rows"]) == 2
    assert [r["trace_offset_s"] for r in out["rows"]] == seen
    assert out["node_hours"] > 0
    assert out["false_verdicts"] == sum(r["false_verdicts"] for r in out["rows"])
    low, high = out["utilization_range"]
    assert 0.0 <= low <= out["utilization_median"] <= high <= 1.0
