"""Drive a Simulation into Kafka (EventProducer) or into a capture file.

Order on the wire: topology records (``skew.topology``, key ``<dep>/rank<r>``), then the
frames chunk by chunk, then the labels (``skew.labels``, key deployment) once the run is over
and every label has its end. Frames are Avro single-object encoded once and sent raw, so a
capture of the same run holds the same bytes Kafka got.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from producers.sim.capture import CaptureWriter
from producers.sim.simulation import Simulation
from producers.sim.telemetry import SimFrame
from schemas.codec import AvroCodec
from skewscope.config import Topics
from skewscope.kafka.producer import EventProducer

_COUNT_FIELDS = {
    "GpuSampleFrame": ("n_samples",),
    "NicCounterFrame": ("n_samples",),
    "CollectiveFrame": ("n_rows",),
    "EngineSampleFrame": ("n_samples",),
    "EngineRequestFrame": ("n_events",),
    "DpuFrame": ("n_flow_rows", "n_dev_rows"),
}


def samples_in(frame: SimFrame) -> int:
    """Samples of a frame: rows of its packed column groups (a NIC sample is all counters of
    one port at one time; a collective row is one rank's step summary; detail rows are not
    counted)."""
    return sum(int(frame.record[f]) for f in _COUNT_FIELDS.get(frame.schema, ()))


@dataclass
class PublishStats:
    """What a run published."""

    frames: int = 0
    samples: int = 0
    bytes: int = 0
    topology: int = 0
    labels: int = 0
    elapsed_s: float = 0.0

    def line(self) -> str:
        rate = self.samples / self.elapsed_s if self.elapsed_s else 0.0
        return (
            f"{self.frames} frames, {self.samples} samples, {self.bytes / 1e6:.1f} MB, "
            f"{self.topology} topology records, {self.labels} labels in "
            f"{self.elapsed_s:.1f} s ({rate:,.0f} samples/s)"
        )


def publish(
    sim: Simulation,
    duration_s: float,
    producer: EventProducer | None = None,
    capture: Path | None = None,
    topics: Topics | None = None,
) -> PublishStats:
    """Run sim for duration_s and send everything to a producer and/or a capture file."""
    if producer is None and capture is None:
        raise ValueError("publish needs a producer, a capture path, or both")
    topics = topics or Topics()
    codec = producer.codec if producer is not None else AvroCodec()
    writer = (
        CaptureWriter(capture, {"scenario": sim.scenario.name, "seed": str(sim.seed)})
        if capture
        else None
    )
    stats = PublishStats()
    began = time.perf_counter()

    def send(topic: str, key: str, schema: str, record: dict[str, Any], t_ns: int) -> int:
        value = codec.encode(schema, record, topic=topic)
        if producer is not None:
            producer.send_raw(topic, key, value)
        if writer is not None:
            writer.write(topic, key, schema, value, t_ns)
        return len(value)

    try:
        for rec in sim.topology:
            key = f"{rec['deployment']}/rank{rec['rank']}"
            stats.bytes += send(topics.topology, key, "TopologyRecord", rec, sim.start_ns)
            stats.topology += 1
        for frame in sim.frames(duration_s):
            stats.bytes += send(
                frame.topic, frame.key, frame.schema, frame.record, frame.event_time_ns
            )
            stats.frames += 1
            stats.samples += samples_in(frame)
        for label in sim.labels:
            stats.bytes += send(
                topics.labels, label["deployment"], "FaultLabel", label, label["onset_ns"]
            )
            stats.labels += 1
        if producer is not None:
            producer.flush()
    finally:
        if writer is not None:
            writer.close()
    stats.elapsed_s = time.perf_counter() - began
    return stats
