"""One engine's scheduler state at one scrape, and its EngineSampleFrame.

Engine adapters (:mod:`.vllm`, :mod:`.tgi`) fill an :class:`EngineSnapshot`; fields the
source does not report keep their sentinel: ``-1`` (:data:`~.common.MISSING_INT`) for the
integer columns, ``NaN`` for ``kv_cache_usage_ratio``. A frame holds one row (one scrape);
``n_experts`` is 0 and ``expert_tokens`` empty, because no engine /metrics endpoint we read
reports tokens per expert.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from producers.adapters.common import MISSING_FLOAT, MISSING_INT, Frame, FrameContext
from schemas.columns import pack


@dataclass
class EngineSnapshot:
    """Scheduler state of one engine. ``engine`` is the engine label ('' when absent)."""

    engine: str = ""
    num_running: int = MISSING_INT
    num_waiting: int = MISSING_INT
    batch_capacity: int = MISSING_INT
    kv_cache_usage_ratio: float = MISSING_FLOAT
    preemptions_total: int = MISSING_INT
    prompt_tokens_total: int = MISSING_INT
    generation_tokens_total: int = MISSING_INT
    step_duration_ns: int = MISSING_INT
    tokenizer_queue_depth: int = MISSING_INT
    kv_capacity_tokens: int = 0  # 0: not reported (the frame field's own default)

    def replica_id(self, replica: str) -> str:
        """``<replica>/engine<N>`` for a labelled engine, else ``replica`` itself."""
        return f"{replica}/engine{self.engine}" if self.engine else replica


def as_count(value: float | None) -> int:
    """A gauge/counter float as an int count; missing or non-finite gives -1."""
    if value is None or not math.isfinite(value):
        return MISSING_INT
    return round(value)


def engine_frame(snapshot: EngineSnapshot, ctx: FrameContext, ts_ns: int) -> Frame:
    """The one-row EngineSampleFrame of ``snapshot`` taken at ``ts_ns``."""
    columns = {
        "ts_ns": [ts_ns],
        "num_running": [snapshot.num_running],
        "num_waiting": [snapshot.num_waiting],
        "batch_capacity": [
            ctx.batch_capacity
            if snapshot.batch_capacity == MISSING_INT
            else snapshot.batch_capacity
        ],
        "kv_cache_usage_ratio": [snapshot.kv_cache_usage_ratio],
        "preemptions_total": [snapshot.preemptions_total],
        "prompt_tokens_total": [snapshot.prompt_tokens_total],
        "generation_tokens_total": [snapshot.generation_tokens_total],
        "step_duration_ns": [snapshot.step_duration_ns],
        "tokenizer_queue_depth": [snapshot.tokenizer_queue_depth],
    }
    record = pack(
        "EngineSampleFrame",
        columns,
        schema_version=1,
        source="engine",
        deployment=ctx.deployment,
        replica=snapshot.replica_id(ctx.replica or ctx.deployment),
        node=ctx.node,
        clock_id=ctx.clock_id,
        frame_seq=ctx.next_seq(),
        n_samples=1,
        n_experts=0,
        kv_capacity_tokens=snapshot.kv_capacity_tokens,
    )
    return Frame("EngineSampleFrame", "engine_samples", record)
