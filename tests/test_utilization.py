"""The clean runs' utilization: batch, KV and prefill shares of capacity."""

from __future__ import annotations

import numpy as np
import pytest

from models.utilization import Utilization, _prefill_share

TICK_NS = 10_000_000


def _frame(start: int, n: int, running: int, kv: float, tokens_per_s: float) -> dict:
    ts = start + TICK_NS * np.arange(n, dtype=np.int64)
    return {
        "ts_ns": ts,
        "batch_capacity": np.full(n, 64),
        "num_running": np.full(n, running),
        "kv_cache_usage_ratio": np.full(n, kv),
        "prompt_tokens_total": np.round(ts / 1e9 * tokens_per_s).astype(np.int64),
    }


def test_prefill_bound_replica_is_busy_with_free_batch_slots() -> None:
    util = Utilization({"dep": 10_000.0}, warmup_s=2.0)
    for k in range(100):  # 10 s in 100 ms frames, prefilling 9,000 tokens/s
        util.add("dep", _frame(k * 10 * TICK_NS, 10, running=16, kv=0.3, tokens_per_s=9000))
    out = util.summary()
    assert out["batch"] == 0.25
    assert abs(out["kv"] - 0.3) < 1e-12
    assert abs(out["prefill"] - 0.9) < 0.01
    assert out["busy"] == out["prefill"]


def test_warmup_is_left_out_and_replicas_pool() -> None:
    util = Utilization({"a": 1e4, "b": 1e4}, warmup_s=1.0)
    util.add("a", _frame(0, 100, running=64, kv=0.0, tokens_per_s=0))  # warm-up only
    util.add("a", _frame(100 * TICK_NS, 100, running=32, kv=0.0, tokens_per_s=0))
    util.add("b", _frame(0, 200, running=0, kv=0.1, tokens_per_s=0))
    out = util.summary()
    assert abs(out["batch"] - 0.25) < 1e-12  # 0.5 on a's counted half, 0 on b's
    assert abs(out["busy"] - (0.5 + 0.1) / 2) < 1e-12


def test_a_restarted_engine_counts_no_negative_prefill() -> None:
    util = Utilization({"dep": 1e4}, warmup_s=0.0)
    frame = _frame(0, 300, running=0, kv=0.0, tokens_per_s=5000)
    frame["prompt_tokens_total"][150:] -= frame["prompt_tokens_total"][150]
    util.add("dep", frame)
    # half capacity once a full second is behind a sample (ticks 100-149 and 250-299), 0
    # before it and across the reset (ticks 150-249: the counter fell, nothing counted)
    assert util.summary()["prefill"] == pytest.approx(100 * 0.5 / 300, abs=0.01)
    ts = np.arange(300, dtype=np.int64) * TICK_NS
    share = _prefill_share(ts, np.asarray(frame["prompt_tokens_total"]), 1e4)
    assert share.min() == 0.0 and share[160] == 0.0 and share[120] == pytest.approx(0.5, abs=0.01)
    assert Utilization({}).summary()["busy"] == 0.0
