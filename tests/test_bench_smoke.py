"""Smoke test of the benchmarks: each runs on a tiny input and returns sane numbers.

No timing is asserted (the machine is shared): only that every benchmark measures the work
it was given (every pre-filled message and sample, windows closed, heartbeats seen) and
reports positive rates.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bench import ceiling, live, memory, replay_throughput, sink_write
from bench.common import run_child
from bench.prefill import Prefill, drop_topics, prefill, scaled_scenario, watermark_shortfall
from skewscope.config import Settings


@pytest.fixture(scope="module")
def filled(kafka_bootstrap: str, redis_url: str) -> Iterator[tuple[Settings, Prefill]]:
    import dataclasses

    from skewscope.config import load_settings

    base = dataclasses.replace(
        load_settings(), kafka_bootstrap=kafka_bootstrap, redis_url=redis_url
    )
    result = prefill(base, "bench-large", sim_seconds=1.6, partitions=2)
    try:
        yield result.settings(base), result
    finally:
        drop_topics(result.settings(base))


def test_prefill_documents_the_frame_format(filled: tuple[Settings, Prefill]) -> None:
    _, result = filled
    assert result.messages == sum(int(s["frames"]) for s in result.by_schema.values())
    assert set(result.by_schema) >= {"GpuSampleFrame", "NicCounterFrame", "CollectiveFrame"}
    # 8 GPUs x one sample per 10 ms of the 200 ms frame period
    assert result.by_schema["GpuSampleFrame"]["samples_per_frame"] == 160


def test_prefill_delivery_reports_match_the_broker_watermarks(
    filled: tuple[Settings, Prefill],
) -> None:
    settings, result = filled
    acknowledged = sum(p["messages"] for p in result.delivered.values())
    assert acknowledged == result.messages + result.topology_records
    assert watermark_shortfall(settings, result) == []


def test_ceiling_reads_every_prefilled_sample(filled: tuple[Settings, Prefill]) -> None:
    settings, result = filled
    got = ceiling.measure(settings)
    assert (got["messages"], got["samples"]) == (result.messages, result.samples), (
        watermark_shortfall(settings, result)
    )
    assert got["samples_per_cpu_s"] > 0


def test_replay_runs_every_sample_through_the_full_pipeline(
    filled: tuple[Settings, Prefill],
) -> None:
    settings, result = filled
    got = replay_throughput.measure(settings)
    assert (got["messages"], got["samples"]) == (result.messages, result.samples), (
        watermark_shortfall(settings, result)
    )
    assert got["topology_records"] == result.topology_records
    assert got["windows_closed"] > 0
    assert got["verdicts"] > 0  # heartbeats at least, written to the topic and Redis


def test_faust_baseline_stops_after_the_requested_messages(
    filled: tuple[Settings, Prefill],
) -> None:
    settings, _ = filled
    args = ["--prefix", settings.topic_prefix, "--partitions", "2", "--messages", "150"]
    got = run_child("bench.baseline_faust", [*args, "--state", "dict"], core=None, timeout_s=120)
    assert got["messages"] == 150
    assert got["samples"] >= 150
    assert got["windows"] > 0
    assert got["samples_per_cpu_s"] > 0


def test_memory_counts_state_per_tracked_entity() -> None:
    got = memory.state_at_scale(1, seconds=1.5)
    # bench-large: 64 ranks + 64 GPUs + 64 east-west NIC ports (one per GPU; the 8 DPU
    # ports are not in the rank topology) + 8 nodes + 4 deployments
    assert got["tracked_entities"] == 64 + 64 + 64 + 8 + 4
    assert got["state_bytes"] > 0
    assert got["windows_closed"] > 0


def test_deep_size_counts_array_buffers_and_shared_objects_once() -> None:
    shared = np.zeros(1000)
    one = memory.deep_size_bytes([shared])
    assert one >= 8000
    assert memory.deep_size_bytes([shared, shared]) < 2 * one


def test_scaled_scenario_multiplies_replicas_and_client_rate() -> None:
    base, tenfold = scaled_scenario("bench-large", 1), scaled_scenario("bench-large", 10)
    assert len(tenfold.deployments) == 10 * len(base.deployments)
    assert len({d.name for d in tenfold.deployments}) == len(tenfold.deployments)
    assert tenfold.workload.rate_per_s == 10 * base.workload.rate_per_s


def test_live_run_measures_latency_and_lag(kafka_bootstrap: str, redis_url: str) -> None:
    import dataclasses

    from skewscope.config import load_settings

    base = dataclasses.replace(
        load_settings(), kafka_bootstrap=kafka_bootstrap, redis_url=redis_url
    )
    got = live.measure(base, seconds=3.0, rate_per_s=10_000, scale=1, warmup_s=2.0, partitions=2)
    assert got["samples"] > 0
    assert got["latency_probes"] > 0
    assert got["latency_p50_ms"] > 0
    assert got["lag_series"]


def test_sink_write_applies_every_record_and_ends_the_stale_verdicts(
    redis_url: str, tmp_path: Path
) -> None:
    """300 writes over 20 entities, half never refreshed, 200 ms TTLs over 1.5 s of event
    time: every write applies, and only the 10 refreshed entities are ranked at the end."""
    args = sink_write.parse_args(
        [
            "--writes",
            "300",
            "--entities",
            "20",
            "--stale-share",
            "0.5",
            "--ttl-ms",
            "200",
            "--out",
            str(tmp_path / "out.json"),
        ]
    )
    got = sink_write.measure(redis_url, args)
    assert got["applied"] == got["writes"] == 300
    assert got["ranked_at_end"] == 10
    assert got["writes_per_s"] > 0
