"""vLLM ``GET /metrics`` -> EngineSampleFrame, one frame per engine per scrape.

Metric names read (V0 and V1 spell some differently; either is taken):

=========================  ==========================================================
frame column               vLLM sample
=========================  ==========================================================
num_running                ``vllm:num_requests_running``
num_waiting                ``vllm:num_requests_waiting``
kv_cache_usage_ratio       ``vllm:kv_cache_usage_perc`` (V1 >= 0.10), else
                           ``vllm:gpu_cache_usage_perc`` (V0, early V1); both are
                           already ratios 0..1 despite the name
preemptions_total          ``vllm:num_preemptions_total``
prompt_tokens_total        ``vllm:prompt_tokens_total``
generation_tokens_total    ``vllm:generation_tokens_total``
kv_capacity_tokens         ``vllm:cache_config_info`` labels ``num_gpu_blocks`` x
                           ``block_size`` (0 when either is absent or not a number)
step_duration_ns           with a :class:`~.step_timer.StepTimer` (the scrape loop keeps
                           one): the mean inter-token latency between this scrape and the
                           engine's previous one, ``vllm:inter_token_latency_seconds``
                           ``_sum``/``_count`` (V1 >= 0.11), else
                           ``vllm:time_per_output_token_seconds`` (V0, V1 before 0.11,
                           where it was the per-token latency); ``-1`` on the first scrape
=========================  ==========================================================

Sentinels for what vLLM does not export: ``batch_capacity`` (max_num_seqs is not in
/metrics; ``FrameContext.batch_capacity``, ``produce scrape --max-num-seqs``, supplies the
configured value) and ``tokenizer_queue_depth`` are ``-1``; a missing gauge is ``-1`` (counts)
or ``NaN`` (``kv_cache_usage_ratio``).

Engines: samples are grouped by the ``engine`` label (data-parallel vLLM >= 0.10 reports
``engine="0"``, ``engine="1"``...). A labelled engine's frame has
``replica = "<replica>/engine<N>"``; unlabelled samples form one engine with
``replica = <replica>``. An engine gets a frame only when at least one of the samples above
is present (a fragment holding only histogram buckets yields none). With several
``model_name`` values in one engine, the first sample of each name wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from producers.adapters.common import AdapterOutput, FrameContext, SkippedLine
from producers.adapters.engine_frames import EngineSnapshot, as_count, engine_frame
from producers.adapters.prometheus_text import Exposition, parse
from producers.adapters.step_timer import StepTimer

_COUNTS = {
    "vllm:num_requests_running": "num_running",
    "vllm:num_requests_waiting": "num_waiting",
    "vllm:num_preemptions_total": "preemptions_total",
    "vllm:prompt_tokens_total": "prompt_tokens_total",
    "vllm:generation_tokens_total": "generation_tokens_total",
}
# Later entries win: the V1 name is preferred when both are exported.
_KV_NAMES = ("vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc")
_CACHE_CONFIG = "vllm:cache_config_info"
# Per-token latency histograms, later entries preferred (vLLM 0.11 renamed the per-token one
# and gave the old name to a per-request TPOT histogram).
_ITL_NAMES = ("vllm:time_per_output_token_seconds", "vllm:inter_token_latency_seconds")


@dataclass
class VllmScrape:
    """Engines found in one scrape, keyed by engine label, plus the lines skipped."""

    engines: dict[str, EngineSnapshot] = field(default_factory=dict)
    skipped: list[SkippedLine] = field(default_factory=list)
    exposition: Exposition = field(default_factory=Exposition)
    # per engine: (sum_s, count) of the preferred per-token latency histogram present
    token_latency: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)


def from_exposition(expo: Exposition) -> VllmScrape:
    """Engine snapshots from already-parsed exposition samples."""
    scrape = VllmScrape(skipped=list(expo.skipped), exposition=expo)
    kv_rank: dict[str, int] = {}
    capacities: dict[str, int] = {}
    filled: set[tuple[str, str]] = set()
    for sample in expo.samples:
        engine = sample.labels.get("engine", "")
        if sample.name in _COUNTS:
            attr = _COUNTS[sample.name]
            if (engine, attr) in filled:
                continue
            filled.add((engine, attr))
            snap = scrape.engines.setdefault(engine, EngineSnapshot(engine=engine))
            setattr(snap, attr, as_count(sample.value))
        elif sample.name in _KV_NAMES:
            rank = _KV_NAMES.index(sample.name)
            if kv_rank.get(engine, -1) >= rank:
                continue
            kv_rank[engine] = rank
            snap = scrape.engines.setdefault(engine, EngineSnapshot(engine=engine))
            snap.kv_cache_usage_ratio = sample.value
        elif sample.name == _CACHE_CONFIG:
            capacities.setdefault(engine, _kv_capacity_tokens(sample.labels))
    # Config alone makes no frame: it completes the engines whose gauges were seen. An
    # unlabelled config is the server's, shared by its data-parallel engines.
    for engine, snap in scrape.engines.items():
        snap.kv_capacity_tokens = capacities.get(engine, capacities.get("", 0))
        scrape.token_latency[engine] = _token_latency(expo, engine)
    return scrape


def _token_latency(expo: Exposition, engine: str) -> tuple[float | None, float | None]:
    """``(sum_s, count)`` of the engine's per-token latency histogram (first sample of each,
    preferred name first); ``(None, None)`` when neither name is exported."""
    labels = {"engine": engine} if engine else {}
    for name in reversed(_ITL_NAMES):
        total, count = expo.value(f"{name}_sum", **labels), expo.value(f"{name}_count", **labels)
        if total is not None or count is not None:
            return total, count
    return None, None


def _kv_capacity_tokens(labels: dict[str, str]) -> int:
    """KV tokens of ``cache_config_info``'s labels; 0 when they do not say."""
    try:
        blocks, block_size = int(labels["num_gpu_blocks"]), int(labels["block_size"])
    except (KeyError, ValueError):  # absent, or "None" before the engine profiled memory
        return 0
    return blocks * block_size if blocks > 0 and block_size > 0 else 0


def parse_vllm(text: str, strict: bool = False) -> VllmScrape:
    """Parse a vLLM /metrics body (tolerant unless ``strict``; see prometheus_text)."""
    return from_exposition(parse(text, strict=strict, source="vllm /metrics"))


def vllm_frames(
    text: str, ctx: FrameContext, ts_ns: int, timer: StepTimer | None = None
) -> AdapterOutput:
    """EngineSampleFrames of one scrape taken at ``ts_ns``, engines in label order. With the
    ``timer`` of this source's earlier scrapes, ``step_duration_ns`` is filled in."""
    scrape = parse_vllm(text)
    if timer is not None:
        for engine, snap in scrape.engines.items():
            total, count = scrape.token_latency[engine]
            key = (ctx.deployment, ctx.replica, ctx.node, engine)
            snap.step_duration_ns = timer.step_ns(key, total, count)
    frames = [engine_frame(scrape.engines[e], ctx, ts_ns) for e in sorted(scrape.engines)]
    return AdapterOutput(frames, scrape.skipped)
