"""DecodingConsumer: poll batches, decode Avro, send what cannot be decoded to the DLQ."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from schemas.codec import AvroCodec
from schemas.errors import CodecError
from skewscope.config import Settings
from skewscope.kafka.client_config import base_config
from skewscope.kafka.dead_letters import send_dead_letter, send_dead_letter_of
from skewscope.kafka.producer import EventProducer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """One decoded message and where it came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    name: str
    record: dict[str, Any]
    timestamp_ms: int
    value: bytes | None = field(default=None, repr=False)  # the message as it came


class DecodingConsumer:
    """Consume and decode; never crash on bad bytes.

    A message that fails to decode becomes a ``DeadLetter`` on the dead-letter topic, with its
    original bytes, topic, partition, offset and the reason, and consumption goes on. With
    ``group_id=None`` the consumer joins no group and commits nothing (replay, backtests).
    """

    def __init__(
        self,
        settings: Settings,
        topics: Sequence[str],
        group_id: str | None,
        codec: AvroCodec | None = None,
        dlq: EventProducer | None = None,
        name: str = "worker",
        **overrides: Any,
    ) -> None:
        self.settings = settings
        self.codec = codec or AvroCodec(registry_url=settings.schema_registry_url)
        self.name = name
        self.dead_letters = 0
        self.dead_letters_unsent = 0  # bad messages whose dead letter could not be sent
        conf = base_config(settings)
        conf.update(
            {
                "group.id": group_id or f"skewscope-nogroup-{name}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
            }
        )
        conf.update(overrides)
        self._consumer = Consumer(conf)
        self._dlq = dlq or EventProducer(settings, codec=AvroCodec())
        self._topics = list(topics)
        self._grouped = group_id is not None
        if self._grouped:
            self._consumer.subscribe(self._topics)

    def assign(self, partitions: list[TopicPartition]) -> None:
        """Read exactly these partitions from their given offsets (no group)."""
        self._consumer.assign(partitions)

    def list_topic(self, topic: str, timeout_s: float = 10.0) -> list[int]:
        """Partition ids of ``topic`` (empty when it does not exist)."""
        meta = self._consumer.list_topics(topic, timeout=timeout_s)
        found = meta.topics.get(topic)
        if found is None or found.error is not None:
            return []
        return sorted(found.partitions)

    def end_offsets(self, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
        """High watermark of every partition of ``topic``."""
        out = {}
        for partition in self.list_topic(topic, timeout_s):
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout_s
            )
            out[partition] = high
        return out

    def reached(self, ends: dict[int, int]) -> bool:
        """True when every assigned partition's position is at or past ``ends``."""
        positions = self._consumer.position(self._consumer.assignment())
        by_partition = {tp.partition: tp.offset for tp in positions}
        return all(end <= 0 or by_partition.get(p, -1) >= end for p, end in ends.items())

    def caught_up_partitions(self, ends: dict[int, int]) -> list[int] | None:
        """The partitions of ``ends`` this consumer has nothing left to read in: the empty
        ones (end <= 0), and the assigned ones whose position is at or past their end; None
        while it has no assignment yet (a group member reads only its share)."""
        empty = [p for p, end in ends.items() if end <= 0]
        positions = self._consumer.position(self._consumer.assignment())
        if not positions:
            return empty if len(empty) == len(ends) else None
        read = [
            tp.partition
            for tp in positions
            if tp.partition in ends and ends[tp.partition] > 0 and tp.offset >= ends[tp.partition]
        ]
        return sorted(empty + read)

    def assigned(self, topic: str) -> set[int]:
        """The partitions of ``topic`` this consumer is assigned now."""
        return {tp.partition for tp in self._consumer.assignment() if tp.topic == topic}

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Read ``partition`` again from ``offset`` (-1: its beginning); it must be assigned."""
        start = offset if offset >= 0 else OFFSET_BEGINNING
        self._consumer.seek(TopicPartition(topic, partition, start))

    def lag(self) -> dict[tuple[str, int], int]:
        """Messages behind the high watermark, per assigned partition."""
        out = {}
        for tp in self._consumer.position(self._consumer.assignment()):
            _, high = self._consumer.get_watermark_offsets(tp, timeout=5)
            position = tp.offset if tp.offset >= 0 else 0
            out[(tp.topic, tp.partition)] = max(0, high - position)
        return out

    def poll_batch(self, max_messages: int = 500, timeout_s: float = 1.0) -> list[Event]:
        """Up to ``max_messages`` decoded events; bad ones go to the DLQ and are skipped."""
        messages = self._consumer.consume(max_messages, timeout_s)
        events: list[Event] = []
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error on %s: %s", msg.topic(), error.str())
                continue
            try:
                decoded = self.codec.decode(msg.value())
            except CodecError as exc:
                self._dead_letter(msg, exc)
                continue
            events.append(
                Event(
                    topic=msg.topic() or "",
                    partition=msg.partition() or 0,
                    offset=msg.offset() or 0,
                    key=msg.key(),
                    name=decoded.name,
                    record=decoded.record,
                    timestamp_ms=msg.timestamp()[1],
                    value=msg.value(),
                )
            )
        return events

    def dead_letter(self, event: Event, exc: Exception) -> None:
        """A message that decoded but its reader cannot use (``exc`` says why) to the
        dead-letter topic; :meth:`commit` flushes it before it commits the offset."""
        sent = send_dead_letter_of(
            self._dlq, self.settings.topics.dead_letter, event, exc, self.name
        )
        self.dead_letters += 1
        self.dead_letters_unsent += not sent

    def _dead_letter(self, msg: Message, exc: CodecError) -> None:
        sent = send_dead_letter(
            self._dlq,
            self.settings.topics.dead_letter,
            topic=msg.topic() or "",
            partition=msg.partition() or 0,
            offset=msg.offset() or 0,
            key=msg.key(),
            value=msg.value(),
            exc=exc,
            consumer=self.name,
        )
        self.dead_letters += 1
        self.dead_letters_unsent += not sent

    def commit(self) -> None:
        """Flush dead letters, then commit consumed offsets (at-least-once, nothing lost)."""
        self._dlq.flush()
        if self._grouped:
            try:
                self._consumer.commit(asynchronous=False)
            except Exception as exc:  # no offsets to commit yet is not an error
                if "NO_OFFSET" not in str(exc):
                    raise

    def close(self) -> None:
        self._dlq.flush()
        self._consumer.close()
