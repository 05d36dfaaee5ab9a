"""One Detector per input partition: the unit of state, checkpoint and ownership.

Every keyed topic has the same partition count and keys are deployments, so partition *p* of
every telemetry topic carries the same deployments: a detector per partition sees everything a
join needs. All shards share the topology registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models.detector import Detector, DetectorConfig, Output
from models.runbook import Runbook, load_runbook
from schemas.codec import AvroCodec
from schemas.errors import CodecError
from streams.topology import Topology


@dataclass
class ShardPool:
    config: DetectorConfig = field(default_factory=DetectorConfig)
    runbook: Runbook = field(default_factory=load_runbook)
    topology: Topology = field(default_factory=Topology)
    codec: AvroCodec = field(default_factory=AvroCodec)
    shards: dict[int, Detector] = field(default_factory=dict)

    def shard(self, partition: int) -> Detector:
        det = self.shards.get(partition)
        if det is None:
            det = Detector(self.runbook, self.config, self.topology)
            self.shards[partition] = det
        return det

    def process_bytes(self, partition: int, value: bytes) -> list[Output]:
        """Decode and process one message; raises CodecError (or FrameShapeError) on bad input."""
        decoded = self.codec.decode(value)
        return self.shard(partition).process(decoded.name, decoded.record)

    def process(self, partition: int, schema: str, record: dict[str, Any]) -> list[Output]:
        return self.shard(partition).process(schema, record)

    def update_topology(self, record: dict[str, Any]) -> None:
        self.topology.update(record)

    def flush(self) -> list[Output]:
        out: list[Output] = []
        for det in self.shards.values():
            out += det.flush()
        return out


__all__ = ["CodecError", "ShardPool"]
