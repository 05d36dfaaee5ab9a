"""The verdict topic, ``skew.verdicts``: the source of truth, compacted, keyed by entity.

The detector publishes every verdict here, resolutions included (``state="resolved"``), and
per deployment a periodic heartbeat (:func:`heartbeat_record`) that carries how far its
telemetry has been seen; without heartbeats a healthy deployment would look silent and read
``unknown``. Redis is filled from this topic by :mod:`sinks.redis_sink`, so a Redis outage
delays Redis and never detection.

Limits: no tombstones (a ``None`` value would be a dead letter for the decoding consumer);
compaction keeps the newest record per entity, so the topic holds one verdict per entity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sinks.heartbeat import heartbeat_record
from sinks.metrics import SinkMetrics
from sinks.redis_layout import HEARTBEAT_CONDITION
from skewscope.config import Settings
from skewscope.kafka.producer import DeliveryStats, EventProducer

VERDICT_SCHEMA = "Verdict"
VERDICT_TOPIC_CONFIG = {"cleanup.policy": "compact"}


class VerdictPublisher:
    """Produce Verdict records keyed by entity to the verdict topic.

    Uses :class:`EventProducer` (murmur2_random, idempotent, ``acks=all``); ``flush`` raises
    when the broker refused anything, so a verdict is never dropped silently.
    """

    def __init__(
        self,
        settings: Settings,
        topic: str | None = None,
        producer: EventProducer | None = None,
        metrics: SinkMetrics | None = None,
        **producer_overrides: Any,
    ) -> None:
        self.topic = topic or settings.topics.verdicts
        self.metrics = metrics
        self._producer = producer or EventProducer(settings, **producer_overrides)

    def publish(self, record: Mapping[str, Any]) -> None:
        """Queue one verdict (or heartbeat); the key is its entity."""
        entity = str(record.get("entity", ""))
        if not entity:
            raise ValueError("verdict has no entity; the entity id is the topic key")
        self._producer.send(self.topic, entity, VERDICT_SCHEMA, dict(record))
        if self.metrics is not None and record.get("condition") != HEARTBEAT_CONDITION:
            self.metrics.verdicts.labels(
                condition=str(record["condition"]), state=str(record["state"])
            ).inc()

    def flush(self, timeout_s: float = 30.0) -> DeliveryStats:
        """Wait until the broker acknowledged everything queued; raises DeliveryError if not."""
        return self._producer.flush(timeout_s)


__all__ = ["VerdictPublisher", "heartbeat_record"]
