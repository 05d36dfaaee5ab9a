"""A watermark that jumps far (every source paused, or a frame dated far ahead) closes the
windows the last data needs and skips the empty ones, instead of closing every one."""

from __future__ import annotations

from typing import Any

import numpy as np

from models.detector import Detector, DetectorConfig, Output
from schemas.columns import column_specs, pack, unpack
from tests.synthetic import collective_frames, topology

S = 1_000_000_000
YEAR_NS = 365 * 24 * 3600 * S


def _shifted(schema: str, record: dict[str, Any], by_ns: int) -> dict[str, Any]:
    """The frame ``by_ns`` later: every *_ns time, scalar or packed column, moved."""
    names = {spec.name for spec in column_specs(schema)}
    columns = {
        name: (values + by_ns if name.endswith("_ns") else values)
        for name, values in unpack(schema, record).items()
    }
    scalars = {
        key: (value + by_ns if key.endswith("_ns") and isinstance(value, int) else value)
        for key, value in record.items()
        if key not in names
    }
    return pack(schema, columns, **scalars)


def _detector(gap_drain_s: int = 15) -> Detector:
    det = Detector(config=DetectorConfig(anomaly_model=False, gap_drain_ns=gap_drain_s * S))
    for record in topology():
        det.process("TopologyRecord", record)
    return det


def _paused(pause_s: int, gap_drain_s: int) -> tuple[list[dict[str, Any]], Detector]:
    """A straggler for 6 s, every source quiet for ``pause_s``, 6 s more: the verdict
    records (heartbeats left out) and the detector."""
    det = _detector(gap_drain_s)
    out: list[Output] = []
    for schema, record in collective_frames({5: 1.2}, seconds=6):
        out += det.process(schema, record)
    for schema, record in collective_frames({5: 1.2}, seconds=6, seed=1):
        out += det.process(schema, _shifted(schema, record, pause_s * S))
    out += det.flush()
    return [o.record for o in out if o.record.get("condition") != "heartbeat"], det


def test_skipping_a_pauses_empty_windows_changes_no_verdict() -> None:
    """Over a 2 min pause, closing every window and skipping the empty ones give the same
    verdict records; only the empty windows' heartbeats are missing."""
    skipping, det = _paused(120, gap_drain_s=15)
    closing, every = _paused(120, gap_drain_s=1000)
    assert det.stats.windows_skipped > 400 and every.stats.windows_skipped == 0
    assert any(r["condition"] == "tp-straggler" for r in closing)
    assert skipping == closing


def test_an_hours_pause_is_not_closed_window_by_window() -> None:
    _, det = _paused(3600, gap_drain_s=15)
    hop_ns = det.config.window.hop_ns
    assert det.stats.windows_skipped > 3600 * S // hop_ns - 200
    assert det.stats.windows_closed < 200


def test_a_frame_dated_a_year_ahead_does_not_hang_the_detector() -> None:
    """One node's frame a year ahead (a clock or unit error) with the hold off (the hold
    keeps such a frame back: tests/test_clock_ahead.py): the detector closes a bounded
    number of windows, not one per 250 ms of the year."""
    frames = collective_frames({}, seconds=3)
    det = Detector(config=DetectorConfig(anomaly_model=False, ahead_hold_ns=0))
    for record in topology():
        det.process("TopologyRecord", record)
    for schema, record in frames[:-1]:
        det.process(schema, record)
    schema, record = frames[-1]
    det.process(schema, _shifted(schema, record, YEAR_NS))
    assert det.stats.windows_closed < 200
    assert det.stats.windows_skipped > YEAR_NS // det.config.window.hop_ns - 200
    assert np.isfinite(det.watermark_ns)
