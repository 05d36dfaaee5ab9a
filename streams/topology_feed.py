"""Follow the compacted topology topic from the beginning, into the shared registry.

Every worker needs the whole topology (not only its partitions), so this reads all partitions
with no consumer group, in a thread (confluent-kafka is blocking), until stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from skewscope.config import Settings
from skewscope.kafka.consumer import DecodingConsumer, Event

if TYPE_CHECKING:
    from streams.shards import ShardPool

log = logging.getLogger(__name__)


class TopologyFeed:
    def __init__(self, settings: Settings, pool: ShardPool) -> None:
        self.settings = settings
        self.pool = pool
        self._stop = threading.Event()
        self.records = 0

        self._consumer: DecodingConsumer | None = None

    def _open(self) -> DecodingConsumer:
        if self._consumer is None:
            topic = self.settings.topics.topology
            consumer = DecodingConsumer(self.settings, [topic], group_id=None, name="topology")
            meta = consumer.list_topic(topic)
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta])
            self._consumer = consumer
        return self._consumer

    def catch_up(self, timeout_s: float = 30.0) -> int:
        """Read the topic up to its current end (blocking) so detection starts with the
        topology it needs; returns the records read."""
        consumer = self._open()
        ends = consumer.end_offsets(self.settings.topics.topology)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not consumer.reached(ends):
            self._apply(consumer.poll_batch(500, timeout_s=0.2))
        return self.records

    def run(self) -> None:
        """Follow new topology records until stopped."""
        consumer = self._open()
        try:
            while not self._stop.is_set():
                self._apply(consumer.poll_batch(500, timeout_s=0.5))
        finally:
            consumer.close()

    def _apply(self, events: list[Event]) -> None:
        for event in events:
            if event.name == "TopologyRecord":
                self.pool.update_topology(event.record)
                self.records += 1

    def stop(self) -> None:
        self._stop.set()
