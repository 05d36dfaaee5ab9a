"""Engine sample features: KV-blocked admission, free KV room against the longest recent
prompt (streams/views.py), and the window's longest engine step."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from schemas.codec import AvroCodec
from schemas.columns import pack, unpack
from streams.features.engine import EngineExtractor
from streams.hopping import HoppingSpec
from streams.views import EntityView, _add_kv_admission_blocked

T0_NS = 1_790_000_000_000_000_000
SAMPLE_NS = 10_000_000


def _frame(
    rows: list[tuple[int, int, float]], capacity_tokens: int, steps_ns: list[int] | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """An EngineSampleFrame of (running, waiting, KV usage) rows, 16 batch slots, engine
    steps of ``steps_ns`` (default 20 ms each; -1 is unreported)."""
    n = len(rows)
    columns = {
        "ts_ns": [T0_NS + i * SAMPLE_NS for i in range(n)],
        "num_running": [r[0] for r in rows],
        "num_waiting": [r[1] for r in rows],
        "batch_capacity": [16] * n,
        "kv_cache_usage_ratio": [r[2] for r in rows],
        "preemptions_total": [0] * n,
        "prompt_tokens_total": [0] * n,
        "generation_tokens_total": [0] * n,
        "step_duration_ns": steps_ns or [20_000_000] * n,
        "tokenizer_queue_depth": [0] * n,
    }
    record = pack(
        "EngineSampleFrame",
        columns,
        schema_version=1,
        source="engine",
        deployment="r0",
        replica="r0",
        node="n0",
        clock_id="n0/host",
        frame_seq=1,
        n_samples=n,
        n_experts=0,
        kv_capacity_tokens=capacity_tokens,
    )
    codec = AvroCodec()
    decoded = codec.decode(codec.encode("EngineSampleFrame", record)).record
    return decoded, unpack("EngineSampleFrame", decoded)


ROWS = [
    (10, 3, 0.85),  # queued beside free slots, 15 % of the cache free
    (10, 3, 0.80),  # queued beside free slots, 20 % free
    (16, 3, 0.99),  # batch full: not an admission the KV cache holds back
    (5, 0, 0.30),  # no queue
]


def _window(capacity_tokens: int) -> dict[str, float]:
    ex = EngineExtractor(HoppingSpec())
    ex.ingest(*_frame(ROWS, capacity_tokens))
    return ex.window(range(T0_NS // ex.spec.hop_ns, T0_NS // ex.spec.hop_ns + 4))["r0"]


def test_free_kv_room_is_averaged_over_samples_that_queue_beside_free_slots() -> None:
    w = _window(capacity_tokens=16_000)
    assert w["queued_with_free_slots_share"] == pytest.approx(0.5)
    assert w["kv_headroom_tokens_queued"] == pytest.approx((0.15 + 0.20) / 2 * 16_000, rel=1e-6)
    assert w["kv_blocked_share"] == 0.0  # never 90 % full: the old test saw nothing
    assert "kv_headroom_tokens_queued" not in _window(capacity_tokens=0)


def _blocked(features: dict[str, float]) -> dict[str, float]:
    view = EntityView("r0", "replica", "r0")
    view.features.update(features)
    _add_kv_admission_blocked(view.features)
    return view.features


def test_admission_is_kv_blocked_when_the_free_room_is_less_than_the_longest_prompt() -> None:
    w = {f"engine.{k}": v for k, v in _window(capacity_tokens=16_000).items()}
    # 2,800 free tokens on average while requests wait: a 4,000-token prompt does not fit
    blocked = _blocked({**w, "requests.prompt_tokens_max_long": 4_000.0})
    assert blocked["engine.kv_headroom_over_longest_prompt"] == pytest.approx(0.7, rel=1e-6)
    assert blocked["engine.kv_admission_blocked_share"] == pytest.approx(0.5)
    # every recent prompt fits: the queue is held back by something else
    fits = _blocked({**w, "requests.prompt_tokens_max_long": 2_000.0})
    assert fits["engine.kv_admission_blocked_share"] == 0.0


def test_without_the_kv_capacity_a_full_cache_stands_in() -> None:
    w = {f"engine.{k}": v for k, v in _window(capacity_tokens=0).items()}
    out = _blocked({**w, "requests.prompt_tokens_max_long": 4_000.0})
    assert "engine.kv_headroom_over_longest_prompt" not in out
    assert out["engine.kv_admission_blocked_share"] == out["engine.kv_blocked_share"] == 0.0
    full = _blocked({"engine.kv_blocked_share": 0.75})
    assert full["engine.kv_admission_blocked_share"] == 0.75


def test_the_longest_engine_step_of_a_window_is_kept_beside_the_mean() -> None:
    """A request that arrives during a long step waits for its end; a window's mean step can
    be short while one step was long (host-preprocessing-delay's fast path reads the max)."""
    ex = EngineExtractor(HoppingSpec())
    ex.ingest(*_frame(ROWS, 16_000, steps_ns=[20_000_000, 620_000_000, 30_000_000, 10_000_000]))
    w = ex.window(range(T0_NS // ex.spec.hop_ns, T0_NS // ex.spec.hop_ns + 4))["r0"]
    assert w["step_duration_ns_max"] == 620_000_000
    assert w["step_duration_ns"] == pytest.approx(170_000_000)
    unreported = EngineExtractor(HoppingSpec())
    unreported.ingest(*_frame(ROWS, 16_000, steps_ns=[-1] * len(ROWS)))
    w = unreported.window(range(T0_NS // ex.spec.hop_ns, T0_NS // ex.spec.hop_ns + 4))["r0"]
    assert "step_duration_ns" not in w and "step_duration_ns_max" not in w
