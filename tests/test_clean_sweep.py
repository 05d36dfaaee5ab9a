"""The sweep behind the Azure scenarios' stretch and compression (models/clean_sweep.py)."""

from __future__ import annotations

import numpy as np
import pytest

from models.clean_sweep import densest_offset_s, lowest_compression, sweep


def test_the_densest_span_is_found_on_the_grid() -> None:
    t_ns = np.array([0, 10, 100, 130, 140, 150, 380, 400], dtype=np.int64) * 1_000_000_000
    tokens = np.array([5, 5, 10, 10, 10, 10, 100, 1])
    # 60 s spans that fit in the trace (starts up to 340 s): the lone 100-token prompt at
    # 380 s outweighs the burst at 100-150 s
    assert densest_offset_s(t_ns, tokens, 60.0, grid_s=30.0) == 330.0
    assert densest_offset_s(t_ns[:6], tokens[:6], 60.0, grid_s=30.0) == 90.0  # [90, 150)
    # a span longer than the trace starts at 0; an empty trace too
    assert densest_offset_s(t_ns, tokens, 1000.0) == 0.0
    assert densest_offset_s(np.array([], dtype=np.int64), np.array([]), 60.0) == 0.0
    with pytest.raises(ValueError, match="positive"):
        densest_offset_s(t_ns, tokens, 0.0)


def test_the_lowest_compression_must_reach_the_bound_on_every_seed() -> None:
    rows = [
        {"time_compression": 2.0, "utilization": 0.85},
        {"time_compression": 2.0, "utilization": 0.79},
        {"time_compression": 2.5, "utilization": 0.81},
        {"time_compression": 2.5, "utilization": 0.83},
        {"time_compression": 3.0, "utilization": 0.95},
    ]
    assert lowest_compression(rows, 0.8) == 2.5
    assert lowest_compression(rows, 0.9) == 3.0
    assert lowest_compression(rows, 0.99) is None


def test_a_sweep_runs_each_compression_and_seed_on_its_densest_stretch() -> None:
    rows = sweep("azure-conv", [1.0, 2.0], [0], 12.0, 1)
    assert [(r["time_compression"], r["seed"]) for r in rows] == [(1.0, 0), (2.0, 0)]
    for r in rows:
        assert r["trace_offset_s"] % 30.0 == 0.0
        assert 0.0 <= r["utilization"] <= 1.0
        assert r["false_verdicts"] <= r["verdict_episodes"]
    with pytest.raises(ValueError, match="does not replay an Azure trace"):
        sweep("mixed", [1.0], [0], 12.0, 1)
