"""The fleet's request shares count every replica, also one with no request in the window."""

from __future__ import annotations

from typing import Any

import numpy as np

from models.detector import Detector, DetectorConfig
from models.runbook import load_runbook
from tests.synthetic import T0_NS, request_frame, topology

S = 1_000_000_000
ARRIVED, SCHEDULED, PREFILL_START, FIRST_TOKEN, FINISHED = range(5)


def _requests(
    deployment: str,
    seq: int,
    start_ns: int,
    arrivals_ns: list[int],
    kinds: tuple[int, ...] = (ARRIVED, SCHEDULED, PREFILL_START, FIRST_TOKEN, FINISHED),
) -> dict[str, Any]:
    """One 100 ms frame: each request's life (by default all of it: arrive, schedule,
    prefill, first token, finish) within 60 ms of its arrival."""
    rows = [(i, kind, t + kind * 15_000_000) for i, t in enumerate(arrivals_ns) for kind in kinds]
    ids = [f"{deployment}-{seq}-{i}" for i in range(len(arrivals_ns))]
    return request_frame(deployment, f"{deployment}-node0", rows, ids, seq, start_ns + S // 10)


def _detector() -> Detector:
    det = Detector(load_runbook(), DetectorConfig(emit_features=True, anomaly_model=False))
    for dep in ("a", "b"):
        for rec in topology(dep, nodes=1, gpus_per_node=1):
            rec["node"] = f"{dep}-node0"
            det.process("TopologyRecord", rec)
    return det


def test_an_idle_moment_does_not_hand_the_peer_the_whole_fleet_share() -> None:
    """b took 6 requests in the first 6 s and none after; a takes one a second throughout.
    At 10 s, a has 10 of the last 10 s's 16 requests: 1.25x the replicas' mean, not 2x (the
    share it got when b, quiet in the 2 s window, was left out of the mean)."""
    det = _detector()
    windows: dict[int, dict[str, float]] = {}
    for k in range(110):  # 11 s of 100 ms frames
        start = T0_NS + k * S // 10
        second_starts = k % 10 == 0
        for dep in ("a", "b"):
            arrivals = [start + 20_000_000] if second_starts and (dep == "a" or k < 60) else []
            for out in det.process("EngineRequestFrame", _requests(dep, k, start, arrivals)):
                if out.schema == "FeatureWindow" and out.record["entity"] == "a":
                    windows[out.record["window_end_ns"]] = out.record["features"]
    at_10s = windows[T0_NS + 10 * S]
    assert at_10s["requests.arrivals_long"] == 10.0
    assert np.isclose(at_10s["requests.arrivals_share_ratio"], 10 / 8)


def test_a_request_stuck_with_no_event_in_the_window_still_shows_its_wait() -> None:
    """b's one request arrived at 0.02 s and never got a first token; with no event of b's
    in the window ending at 5 s, its wait (~5 s) is still b's p99 TTFT, and its harm is the
    lesser of that and the window before's (~4 s) over the 2 s SLO."""
    det = _detector()
    p99: dict[int, float] = {}
    harm: dict[int, float] = {}
    for k in range(60):
        start = T0_NS + k * S // 10
        det.process("EngineRequestFrame", _requests("a", k, start, [start + 20_000_000]))
        stuck = [start + 20_000_000] if k == 0 else []
        for out in det.process("EngineRequestFrame", _requests("b", k, start, stuck, (ARRIVED,))):
            if out.schema == "FeatureWindow" and out.record["entity"] == "b":
                features = out.record["features"]
                p99[out.record["window_end_ns"]] = features.get("requests.ttft_p99_s", 0.0)
                harm[out.record["window_end_ns"]] = features.get(
                    "requests.ttft_p99_over_slo_ratio", 0.0
                )
    assert np.isclose(p99[T0_NS + 5 * S], 5.0 - 0.02)
    assert np.isclose(harm[T0_NS + 5 * S], (4.0 - 0.02) / 2.0)
