"""Read topic history between two broker timestamps, for replay.

No consumer group is joined and nothing is committed (partitions are *assigned*, the group id
is a throw-away one librdkafka requires), so live consumers and their lag are undisturbed.
The range is resolved per partition with ``offsets_for_times``: from the first message whose
timestamp is >= ``from_ms`` to the first one >= ``to_ms`` (exclusive), capped at the high
watermark seen when reading starts, so a replay of a live topic ends.

Messages of the several topics that share one partition number (one detector shard) are merged
in (timestamp, topic order, offset) order, streaming, with bounded buffers: a partition whose
buffer is full is paused until the merge drains it. Limits: timestamps are the broker's
(CreateTime unless the topic uses LogAppendTime), not event time; a producer that stamps out
of order within one partition is replayed in offset order for that partition.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from skewscope.config import Settings
from skewscope.kafka.client_config import base_config
from streams.replay.message import RawMessage

_EPOCH_MS = re.compile(r"^-?\d+$")


def parse_time_ms(text: str) -> int:
    """Epoch milliseconds from ``text``: an integer (epoch ms) or ISO-8601 (``Z`` or an
    offset; a time without one is taken as UTC)."""
    text = text.strip()
    if _EPOCH_MS.match(text):
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(
            f"time {text!r} is neither epoch milliseconds nor ISO-8601 "
            "(e.g. 2026-09-21T10:00:00Z or 1790000000000)"
        ) from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


class TopicMissingError(ValueError):
    """A topic to replay does not exist on the broker."""


@dataclass(frozen=True)
class PartitionRange:
    """Offsets ``[start, end)`` of one topic partition to replay."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def count(self) -> int:
        return max(0, self.end - self.start)


def _consumer(settings: Settings) -> Consumer:
    conf = base_config(settings)
    conf.update(
        {
            "group.id": f"skewscope-replay-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
        }
    )
    return Consumer(conf)


class HistoryReader:
    """Iterate the messages of ``topics`` with broker timestamps in ``[from_ms, to_ms)``.

    ``to_ms=None`` reads up to the high watermark at start. Iterate once; :attr:`read` and
    :attr:`total` count messages (progress bars).
    """

    def __init__(
        self,
        settings: Settings,
        topics: Sequence[str],
        from_ms: int | None,
        to_ms: int | None,
        max_buffered: int = 5000,
        stall_timeout_s: float = 30.0,
        timeout_s: float = 10.0,
    ) -> None:
        if from_ms is not None and to_ms is not None and to_ms <= from_ms:
            raise ValueError(f"empty time range: --to {to_ms} is not after --from {from_ms}")
        self.settings = settings
        self.topics = list(topics)
        self.from_ms = from_ms
        self.to_ms = to_ms
        self.max_buffered = max_buffered
        self.stall_timeout_s = stall_timeout_s
        self.timeout_s = timeout_s
        self._consumer = _consumer(settings)
        self._closed = False
        try:
            self.ranges = self._plan()
        except BaseException:
            self.close()
            raise
        self.total = sum(r.count for r in self.ranges)
        self.read = 0

    def _partitions(self, topic: str) -> list[int]:
        meta = self._consumer.list_topics(topic, timeout=self.timeout_s)
        found = meta.topics.get(topic)
        if found is None or found.error is not None:
            raise TopicMissingError(
                f"topic {topic} does not exist on {self.settings.kafka_bootstrap}; "
                "check --topics and the topic prefix of --config"
            )
        return sorted(found.partitions)

    def _offsets_at(self, tps: list[TopicPartition], at_ms: int | None) -> list[int]:
        if at_ms is None:
            return [-1] * len(tps)
        query = [TopicPartition(tp.topic, tp.partition, at_ms) for tp in tps]
        found = self._consumer.offsets_for_times(query, timeout=self.timeout_s)
        return [tp.offset for tp in found]

    def _plan(self) -> list[PartitionRange]:
        tps = [TopicPartition(t, p) for t in self.topics for p in self._partitions(t)]
        starts = self._offsets_at(tps, self.from_ms)
        ends = self._offsets_at(tps, self.to_ms)
        ranges = []
        for tp, start, end in zip(tps, starts, ends, strict=True):
            low, high = self._consumer.get_watermark_offsets(tp, timeout=self.timeout_s)
            if self.from_ms is None:
                start = low
            if start < 0:  # no message at or after from_ms
                continue
            end = high if end < 0 else min(end, high)
            if end > start:
                ranges.append(PartitionRange(tp.topic, tp.partition, max(start, low), end))
        return ranges

    def __iter__(self) -> Iterator[RawMessage]:
        try:
            yield from self._merge()
        finally:
            self.close()

    def _merge(self) -> Iterator[RawMessage]:
        if not self.ranges:
            return
        ends = {(r.topic, r.partition): r.end for r in self.ranges}
        order = {t: i for i, t in enumerate(self.topics)}
        buffers: dict[tuple[str, int], deque[RawMessage]] = {k: deque() for k in ends}
        groups: dict[int, list[tuple[str, int]]] = {}
        for key in ends:
            groups.setdefault(key[1], []).append(key)
        done: set[tuple[str, int]] = set()
        paused: set[tuple[str, int]] = set()
        self._consumer.assign([TopicPartition(r.topic, r.partition, r.start) for r in self.ranges])
        last_progress = time.monotonic()
        while groups:
            for number in list(groups):
                members = groups[number]
                while all(k in done or buffers[k] for k in members):
                    ready = [k for k in members if buffers[k]]
                    if not ready:
                        del groups[number]
                        break
                    k = min(ready, key=lambda k: _merge_key(buffers[k][0], order))
                    self.read += 1
                    yield buffers[k].popleft()
                    if k in paused and len(buffers[k]) < self.max_buffered // 2:
                        self._consumer.resume([TopicPartition(*k)])
                        paused.discard(k)
            if not groups:
                break
            got = self._poll(buffers, ends, done, paused)
            if got:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > self.stall_timeout_s:
                pending = sorted(f"{t}[{p}]" for t, p in ends if (t, p) not in done)
                raise RuntimeError(
                    f"history read stalled for {self.stall_timeout_s:.0f} s before reaching the "
                    f"planned end of {pending}; is the broker {self.settings.kafka_bootstrap} "
                    "up and the retention long enough?"
                )

    def _poll(
        self,
        buffers: dict[tuple[str, int], deque[RawMessage]],
        ends: dict[tuple[str, int], int],
        done: set[tuple[str, int]],
        paused: set[tuple[str, int]],
    ) -> int:
        got = 0
        for msg in self._take(1000, 0.2):
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"reading {msg.topic()}: {error.str()}")
                continue
            key = (msg.topic() or "", msg.partition() or 0)
            offset = msg.offset() or 0
            if key in done or offset >= ends[key]:
                self._finish(key, done, paused)
                continue
            buffers[key].append(
                RawMessage(
                    key[0], key[1], offset, msg.key(), msg.value() or b"", msg.timestamp()[1]
                )
            )
            got += 1
            if offset + 1 >= ends[key]:
                self._finish(key, done, paused)
            elif len(buffers[key]) >= self.max_buffered and key not in paused:
                self._consumer.pause([TopicPartition(*key)])
                paused.add(key)
        # Compaction and transaction markers leave offset gaps: trust the position too.
        waiting = [TopicPartition(*k) for k in ends if k not in done and k not in paused]
        if waiting and not got:
            for tp in self._consumer.position(waiting):
                if tp.offset >= ends[(tp.topic, tp.partition)]:
                    self._finish((tp.topic, tp.partition), done, paused)
        return got

    def _take(self, count: int, timeout_s: float) -> list[Message]:
        """Up to ``count`` messages, returning as soon as there are any. ``consume(count, t)``
        waits out its whole timeout unless ``count`` arrive, which the first fetch and the tail
        of a range never fill: 0.6 s of a 4 s replay went there (three waits of 0.2 s)."""
        batch: list[Message] = self._consumer.consume(count, 0)
        if batch:
            return batch
        first = self._consumer.poll(timeout_s)
        if first is None:
            return []
        return [first, *self._consumer.consume(count - 1, 0)]

    def _finish(
        self, key: tuple[str, int], done: set[tuple[str, int]], paused: set[tuple[str, int]]
    ) -> None:
        if key not in done:
            done.add(key)
            if key not in paused:
                self._consumer.pause([TopicPartition(*key)])
                paused.add(key)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._consumer.close()


def _merge_key(m: RawMessage, order: dict[str, int]) -> tuple[int, int, int]:
    return (m.timestamp_ms, order.get(m.topic, 0), m.offset)


def read_topic(
    settings: Settings, topic: str, to_ms: int | None = None, timeout_s: float = 10.0
) -> list[RawMessage]:
    """Every message of ``topic`` from its beginning up to ``to_ms`` (exclusive; ``None``: the
    current end), all partitions, in partition then offset order. For small topics: topology
    and labels. A missing topic reads as empty."""
    try:
        reader = HistoryReader(settings, [topic], None, to_ms, timeout_s=timeout_s)
    except TopicMissingError:
        return []
    out = list(reader)
    out.sort(key=lambda m: (m.partition, m.offset))
    return out


__all__ = ["HistoryReader", "PartitionRange", "TopicMissingError", "parse_time_ms", "read_topic"]
