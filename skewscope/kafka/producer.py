"""EventProducer: Avro-encode events and produce them, with back-pressure and delivery checks."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from schemas.codec import AvroCodec
from skewscope.config import Settings
from skewscope.kafka.client_config import producer_config

log = logging.getLogger(__name__)


@dataclass
class DeliveryStats:
    """Counts of what the broker acknowledged and refused."""

    delivered: int = 0
    failed: int = 0
    bytes_delivered: int = 0
    last_error: str = ""
    partitions: dict[tuple[str, bytes | None], int] = field(default_factory=dict)
    # With record_partitions: per (topic, partition), messages acknowledged and the offset
    # after the highest acknowledged one, to set against the broker's watermarks.
    delivered_by_partition: dict[tuple[str, int], int] = field(default_factory=dict)
    end_offsets: dict[tuple[str, int], int] = field(default_factory=dict)


class DeliveryError(RuntimeError):
    """Messages were refused by the broker (see DeliveryStats.last_error)."""


class EventProducer:
    """Produce Avro events keyed by deployment.

    Back-pressure: when librdkafka's local queue is full, ``send`` polls (serving delivery
    reports) until there is room, rather than dropping or raising. ``flush`` raises
    :class:`DeliveryError` if any message failed, so nothing is lost silently.
    """

    def __init__(
        self,
        settings: Settings,
        codec: AvroCodec | None = None,
        record_partitions: bool = False,
        **overrides: Any,
    ) -> None:
        self.settings = settings
        self.codec = codec or AvroCodec(registry_url=settings.schema_registry_url)
        self.stats = DeliveryStats()
        self._record_partitions = record_partitions
        self._producer = Producer(producer_config(settings, **overrides))

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.stats.failed += 1
            self.stats.last_error = f"{msg.topic()}: {err.str()}"
            log.error("delivery failed: %s", self.stats.last_error)
            return
        self.stats.delivered += 1
        self.stats.bytes_delivered += len(msg.value() or b"")
        if self._record_partitions:
            topic, partition, offset = msg.topic() or "", msg.partition(), msg.offset()
            assert partition is not None and offset is not None
            self.stats.partitions[(topic, msg.key())] = partition
            where = (topic, partition)
            self.stats.delivered_by_partition[where] = (
                self.stats.delivered_by_partition.get(where, 0) + 1
            )
            self.stats.end_offsets[where] = max(self.stats.end_offsets.get(where, 0), offset + 1)

    def send(
        self, topic: str, key: str | bytes | None, schema: str, record: dict[str, Any]
    ) -> None:
        """Encode ``record`` with ``schema`` and produce it to ``topic``."""
        self.send_raw(topic, key, self.codec.encode(schema, record, topic=topic))

    def send_raw(self, topic: str, key: str | bytes | None, value: bytes) -> None:
        """Produce already-encoded bytes (used by replay and fault-injection tests)."""
        key_bytes = key.encode() if isinstance(key, str) else key
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key_bytes, on_delivery=self._on_delivery
                )
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def flush(self, timeout_s: float = 30.0) -> DeliveryStats:
        """Wait for every message; raise DeliveryError when any failed or some are left."""
        remaining = self._producer.flush(timeout_s)
        if remaining:
            raise DeliveryError(f"{remaining} messages still undelivered after {timeout_s} s")
        if self.stats.failed:
            raise DeliveryError(
                f"{self.stats.failed} messages failed; last: {self.stats.last_error}"
            )
        return self.stats

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
