"""Pre-fill fresh topics once with N seconds of simulated telemetry, at the simulator's frames.

The frame format is the one documented in ``schemas/*.avsc`` and produced by ``producers.sim``
(and by the adapters): Avro single-object encoding, packed little-endian numpy columns, one
frame per source, node (port, communicator) and frame period (200 ms of event time by default,
``cluster.frame_interval_ms``), lz4-compressed batches
on the wire. :func:`prefill` returns, per schema, frames, samples per frame and bytes per
frame, so every throughput figure can name the format it was measured at.

Topics get a fresh ``bench<uuid>.`` prefix (all topics of the event model, created with
``infra.topics``) and are deleted by :func:`drop_topics`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from bench.common import samples_of
from infra.kafka_admin import admin_client
from infra.topics import ensure_topics
from producers.sim import Simulation, load_scenario
from producers.sim.scenario import Scenario
from schemas.codec import AvroCodec
from skewscope.config import Settings, Topics, load_settings
from skewscope.kafka.client_config import base_config
from skewscope.kafka.producer import EventProducer


@dataclass
class Prefill:
    """What one pre-fill wrote: where, how much, and in which frame format."""

    prefix: str
    partitions: int
    scenario: str
    sim_seconds: float
    messages: int = 0
    samples: int = 0
    bytes: int = 0
    topology_records: int = 0
    by_schema: dict[str, dict[str, float]] = field(default_factory=dict)
    produce_s: float = 0.0
    # Acknowledged messages and end offsets per "topic[partition]", from delivery reports:
    # what a reader's watermarks should show.
    delivered: dict[str, dict[str, int]] = field(default_factory=dict)

    def settings(self, base: Settings | None = None) -> Settings:
        """Settings pointing at the pre-filled topics."""
        return prefixed_settings(base or load_settings(), self.prefix, self.partitions)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def prefixed_settings(base: Settings, prefix: str, partitions: int) -> Settings:
    """``base`` with every topic under ``prefix`` and ``partitions`` telemetry partitions."""
    return dataclasses.replace(
        base,
        topic_prefix=prefix,
        topics=Topics().prefixed(prefix),
        telemetry_partitions=partitions,
    )


def scaled_scenario(name: str, scale: int) -> Scenario:
    """The bundled scenario ``name`` with ``scale`` times its replicas (and nodes, since
    replicas get nodes of their own) and ``scale`` times its client rate, so the load per
    replica stays the same. Copies are named ``<replica>.<k>``."""
    scenario = load_scenario(name)
    if scale == 1:
        return scenario
    deployments = tuple(
        dataclasses.replace(d, name=f"{d.name}.{k}") if k else d
        for k in range(scale)
        for d in scenario.deployments
    )
    workload = dataclasses.replace(
        scenario.workload, rate_per_s=scenario.workload.rate_per_s * scale
    )
    return dataclasses.replace(
        scenario, deployments=deployments, workload=workload, name=f"{name}x{scale}"
    )


def prefill(
    base: Settings,
    scenario: str = "bench-large",
    sim_seconds: float = 20.0,
    partitions: int = 4,
    seed: int = 0,
    scale: int = 1,
) -> Prefill:
    """Create fresh topics and fill them with ``sim_seconds`` of ``scenario`` (times ``scale``
    replicas, see :func:`scaled_scenario`), topology first."""
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    settings = prefixed_settings(base, prefix, partitions)
    ensure_topics(settings, log=lambda *_: None)
    result = Prefill(prefix, partitions, scenario, sim_seconds)
    sim = Simulation(scaled_scenario(scenario, scale), seed=seed, topics=settings.topics)
    codec = AvroCodec()
    producer = EventProducer(settings, codec=codec, record_partitions=True)
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    began = time.perf_counter()
    for rec in sim.topology:
        key = f"{rec['deployment']}/rank{rec['rank']}"
        producer.send(settings.topics.topology, key, "TopologyRecord", rec)
        result.topology_records += 1
    for frame in sim.frames(sim_seconds):
        value = codec.encode(frame.schema, frame.record)
        producer.send_raw(frame.topic, frame.key, value)
        samples = samples_of(frame.record)
        row = sums[frame.schema]
        row["frames"] += 1
        row["samples"] += samples
        row["bytes"] += len(value)
        result.messages += 1
        result.samples += samples
        result.bytes += len(value)
    stats = producer.flush(120)
    result.produce_s = time.perf_counter() - began
    result.delivered = {
        f"{topic}[{partition}]": {
            "messages": stats.delivered_by_partition[(topic, partition)],
            "end_offset": end,
        }
        for (topic, partition), end in sorted(stats.end_offsets.items())
    }
    result.by_schema = {
        schema: {
            "frames": row["frames"],
            "samples_per_frame": row["samples"] / row["frames"],
            "bytes_per_frame": row["bytes"] / row["frames"],
            "bytes_per_sample": row["bytes"] / max(row["samples"], 1),
        }
        for schema, row in sorted(sums.items())
    }
    return result


def watermark_shortfall(settings: Settings, result: Prefill) -> list[str]:
    """Partitions whose watermarks (high minus low) disagree with what the pre-fill's
    delivery reports acknowledged there, one line each; empty when they all agree."""
    consumer = Consumer(
        {**base_config(settings), "group.id": f"bench-watermarks-{uuid.uuid4().hex[:8]}"}
    )
    lines = []
    try:
        for name, topic in consumer.list_topics(timeout=30).topics.items():
            if not name.startswith(settings.topic_prefix):
                continue
            for p in topic.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=30)
                acked = result.delivered.get(f"{name}[{p}]", {"messages": 0, "end_offset": 0})
                if high - low != acked["messages"]:
                    lines.append(
                        f"{name}[{p}]: watermarks {low}..{high}, acknowledged "
                        f"{acked['messages']} ending at offset {acked['end_offset']}"
                    )
    finally:
        consumer.close()
    return lines


def drop_topics(settings: Settings) -> None:
    """Delete every topic under ``settings.topic_prefix`` (the benchmark's own topics only)."""
    if not settings.topic_prefix.startswith("bench"):
        raise ValueError(f"refusing to delete topics of prefix {settings.topic_prefix!r}")
    admin = admin_client(settings, quiet=True)
    names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(settings.topic_prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            # Already gone, or deletion still pending: nothing to undo either way.
            with contextlib.suppress(Exception):
                future.result(timeout=30)
