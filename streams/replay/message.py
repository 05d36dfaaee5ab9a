"""The unit of replay: one Kafka message as it was on the wire, wherever it was read from."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka.partitioner import murmur2


@dataclass(frozen=True)
class RawMessage:
    """One message: topic, partition, key and value bytes exactly as produced.

    ``timestamp_ms`` is the broker timestamp (CreateTime unless the topic says LogAppendTime)
    for history, and the capture's stored time for capture files. ``schema`` is the value's
    schema name when the source states it (captures), else empty (decode to learn it).
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int
    schema: str = ""


def partition_for(key: bytes | None, partitions: int) -> int:
    """The partition Kafka's murmur2 partitioner (Java clients, aiokafka/Faust, and
    confluent-kafka's ``murmur2_random``) gives ``key``; keyless messages go to partition 0
    (a real producer would pick one at random: co-partitioning needs keys)."""
    if partitions <= 0:
        raise ValueError(f"partition count must be positive, got {partitions}")
    if key is None:
        return 0
    return (murmur2(key) & 0x7FFFFFFF) % partitions
