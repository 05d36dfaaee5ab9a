"""Hugging Face TGI ``GET /metrics`` -> EngineSampleFrame (one engine, one row per scrape).

=========================  ==================================================================
frame column               TGI sample
=========================  ==================================================================
num_running                ``tgi_batch_current_size`` (requests in the running batch)
num_waiting                ``tgi_queue_size``
prompt_tokens_total        ``tgi_request_input_length_sum`` (input tokens of validated requests)
generation_tokens_total    ``tgi_request_generated_tokens_sum`` (tokens of finished requests)
step_duration_ns           with a :class:`~.step_timer.StepTimer` (the scrape loop keeps one):
                           the mean decode forward pass since the previous scrape,
                           ``tgi_batch_forward_duration{method="decode"}`` ``_sum``/``_count``;
                           ``-1`` on the first scrape
=========================  ==================================================================

Limits: TGI counts tokens when a request is validated/finished, not as they are processed,
so the two token totals move in steps. It exports no KV-cache usage, preemption count,
batch capacity or tokenizer queue: those are ``-1`` / ``NaN``.
"""

from __future__ import annotations

from producers.adapters.common import AdapterOutput, FrameContext
from producers.adapters.engine_frames import EngineSnapshot, as_count, engine_frame
from producers.adapters.prometheus_text import Exposition, parse
from producers.adapters.step_timer import StepTimer

_COUNTS = {
    "tgi_batch_current_size": "num_running",
    "tgi_queue_size": "num_waiting",
    "tgi_request_input_length_sum": "prompt_tokens_total",
    "tgi_request_generated_tokens_sum": "generation_tokens_total",
}


def snapshot_from_exposition(expo: Exposition) -> EngineSnapshot | None:
    """The engine snapshot, or None when none of the TGI samples above is present."""
    snap = EngineSnapshot()
    found = False
    for name, attr in _COUNTS.items():
        value = expo.value(name)
        if value is not None:
            setattr(snap, attr, as_count(value))
            found = True
    return snap if found else None


def tgi_frames(
    text: str, ctx: FrameContext, ts_ns: int, timer: StepTimer | None = None
) -> AdapterOutput:
    """The EngineSampleFrame of one TGI scrape (none when the body has no TGI gauges). With
    the ``timer`` of this source's earlier scrapes, ``step_duration_ns`` is filled in."""
    expo = parse(text, source="tgi /metrics")
    snap = snapshot_from_exposition(expo)
    if snap is not None and timer is not None:
        snap.step_duration_ns = timer.step_ns(
            (ctx.deployment, ctx.replica, ctx.node),
            expo.value("tgi_batch_forward_duration_sum", method="decode"),
            expo.value("tgi_batch_forward_duration_count", method="decode"),
        )
    frames = [engine_frame(snap, ctx, ts_ns)] if snap is not None else []
    return AdapterOutput(frames, expo.skipped)
