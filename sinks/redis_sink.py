"""RedisSink: consume the verdict topic with its own group, write Redis, then commit.

Order per batch: poll -> write the whole batch to Redis (retrying with backoff while Redis
is down) -> commit the consumed offsets. Offsets are committed only after Redis acknowledged,
so a Redis outage, or a sink crash, delays Redis and loses nothing: the next run resumes
from the committed offsets and the version check makes the re-applied tail harmless.

A Redis that comes back *empty* (no persistence, or a new server) would miss everything
before the committed offsets. So the consumer group is ``<group_id>.<epoch>``, where the epoch
is a key in Redis itself (``<p>sink_epoch``, SET NX): when the sink finds the key gone it
starts a new epoch, i.e. a new group that reads the compacted topic from the beginning and
rebuilds Redis. Sinks sharing one Redis agree on the epoch; an abandoned group's offsets
expire with the broker's ``offsets.retention.minutes``.

Redis errors that pass (unreachable, loading, READONLY after a failover, OOM at maxmemory,
NOSCRIPT) are retried with backoff; other errors stop the sink with their message.

Limits: while Redis is down the sink does not poll Kafka; past the consumer's
``max.poll.interval.ms`` (5 min by default) the broker moves its partitions away and the
commit after recovery fails, which is logged and harmless (those verdicts are read again).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence

import redis
from confluent_kafka import KafkaException

from infra.kafka_admin import admin_client, committed_offsets
from sinks.config import SinkConfig
from sinks.connection import redacted_url
from sinks.metrics import METRICS, SinkMetrics
from sinks.redis_layout import as_text
from sinks.redis_scripts import CAUGHT_UP, START_EPOCH
from sinks.redis_writer import InvalidVerdictError, LogPosition, RedisWriter, offsets_field
from skewscope.config import Settings
from skewscope.kafka.consumer import DecodingConsumer, Event

log = logging.getLogger(__name__)

# Redis cannot take the writes now but will: unreachable, loading its dataset, a replica
# after a failover (READONLY), at maxmemory (OOM), its script cache flushed (NOSCRIPT).
_RETRYABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.NoScriptError,
)


class RedisSink:
    """Fill Redis from the verdict topic; see the module docstring for the guarantees."""

    def __init__(
        self,
        settings: Settings,
        config: SinkConfig,
        client: redis.Redis,
        topic: str | None = None,
        metrics: SinkMetrics = METRICS,
        batch_size: int = 500,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        check_interval_s: float = 1.0,
        poll_timeout_s: float = 0.02,
    ) -> None:
        self.settings = settings
        self.topic = topic or settings.topics.verdicts
        self.config = config
        self.client = client
        self.writer = RedisWriter(client, config)
        self.metrics = metrics
        self.batch_size = batch_size
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.check_interval_s = check_interval_s
        # librdkafka's batch consume waits for a full batch or this timeout: it bounds the
        # latency the sink adds at low rates.
        self.poll_timeout_s = poll_timeout_s
        self.written = 0
        self.retries = 0
        self.commit_failures = 0
        self.epochs_started = 0
        self.epoch = ""
        self._url = redacted_url(settings.redis_url)
        self._consumer: DecodingConsumer | None = None
        self._rebuild_ends: dict[int, int] | None = None  # the topic's ends when it began
        self._reported_done: list[int] | None = None  # partitions last taken off as read
        # partition -> the offset after the newest record this sink knows Redis applied
        self._applied_next: dict[int, int] = {}
        self.reads_again = 0  # partitions read again because Redis lacked writes
        self._next_report = 0.0
        self._admin = admin_client(settings, quiet=True)  # partitions, committed offsets
        self._start_epoch = client.register_script(START_EPOCH)
        self._caught_up = client.register_script(CAUGHT_UP)
        self._dead_letters_seen = 0
        self._next_check = 0.0

    @property
    def group_id(self) -> str:
        """The consumer group of the current epoch."""
        return f"{self.config.group_id}.{self.epoch}"

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; returns after committing what Redis acknowledged."""
        log.info("redis sink: %s -> %s (group %s.*)", self.topic, self._url, self.config.group_id)
        try:
            while not stop.is_set():
                self.step(stop, self.poll_timeout_s)
        finally:
            self.close()

    def step(self, stop: threading.Event | None = None, poll_timeout_s: float = 0.02) -> int:
        """One poll-write-commit cycle; returns the number of verdicts written.

        Returns without committing when ``stop`` is set while Redis is still down.
        """
        stop = stop or threading.Event()
        if self._consumer is None or time.monotonic() >= self._next_check:
            if not self._retry(self._check_epoch, stop):
                return 0
            if not self._retry(self.writer.sweep_expired, stop):
                return 0
            lacking: dict[int, int] = {}
            if not self._retry(lambda: lacking.update(self._redis_lacks()), stop):
                return 0
            if lacking:
                self._read_again(lacking)
            self._next_check = time.monotonic() + self.check_interval_s
        assert self._consumer is not None
        events = self._consumer.poll_batch(self.batch_size, poll_timeout_s)
        self._count_dead_letters()
        if events:
            usable = self._usable(events)
            gaps: dict[int, int] = {}
            if usable and not self._retry(lambda: gaps.update(self._write(usable)), stop):
                return 0
            if gaps:
                self._read_again(gaps)  # and commit nothing: those offsets are not in Redis
            else:
                self._commit()
        if self._rebuild_ends is not None and not self._retry(self._finish_rebuild, stop):
            return 0
        return len(events)

    def _finish_rebuild(self) -> None:
        """Take the partitions this sink has read up to where they ended when the rebuild
        began off ``<p>rebuild_pending``; the sink that empties it clears ``<p>rebuilding``
        and tells the clients. With several sinks on one Redis the flag stays until every
        partition is in, whichever sink reads it (a partition that moves to another member
        is taken off by the one that reads it to its end)."""
        assert self._consumer is not None and self._rebuild_ends is not None
        done = self._consumer.caught_up_partitions(self._rebuild_ends)
        if done is None:
            return
        now = time.monotonic()
        if done == self._reported_done and now < self._next_report:
            return  # nothing new to take off; ask again at the next check
        self._reported_done, self._next_report = done, now + self.check_interval_s
        lay = self.writer.layout
        finished = self._caught_up(
            keys=[lay.rebuilding, lay.rebuild_pending],
            args=[self.epoch, lay.channel, *done],
        )
        if finished:
            log.info("redis sink: Redis refilled from %s (epoch %s)", self.topic, self.epoch)
        if finished or self._rebuilding_epoch() != self.epoch:
            self._rebuild_ends = None

    def _commit(self) -> None:
        """Commit the written batch. A refused commit (the group rebalanced, or our member
        was dropped after a long Redis outage) is logged: those verdicts are read again and
        re-applied, which the version check makes harmless."""
        assert self._consumer is not None
        try:
            self._consumer.commit()
        except KafkaException as exc:
            self.commit_failures += 1
            log.warning("redis sink: offset commit refused (%s); the batch will be read again", exc)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def _rebuilding_epoch(self) -> str:
        """The epoch ``<p>rebuilding`` names ("" when Redis is whole)."""
        return as_text(self.client.get(self.writer.layout.rebuilding) or b"")

    def _check_epoch(self) -> None:
        """Join the group of Redis's epoch; start a new epoch when Redis lost its content."""
        lay = self.writer.layout
        key = lay.sink_epoch
        found = self.client.get(key)
        if found is None:
            new = f"{int(time.time())}-{uuid.uuid4().hex[:8]}"
            # Until the topic's verdicts are back in, clients read every entity unknown:
            # the flag is set with the epoch, and with the partitions still to read.
            started = self._start_epoch(
                keys=[key, lay.rebuilding, lay.rebuild_pending],
                args=[new, *self._topic_partitions()],
            )
            found = self.client.get(key)
            if found is None:
                raise redis.ConnectionError("the sink epoch vanished as it was set")
            if started:
                self.client.publish(lay.channel, json.dumps({"kind": "rebuilding", "epoch": new}))
            if self.epoch:
                log.warning(
                    "redis sink: Redis at %s came back without its content; rebuilding it "
                    "from the start of %s",
                    self._url,
                    self.topic,
                )
        epoch = as_text(found)
        if epoch == self.epoch and self._consumer is not None:
            return
        self.close()
        self.epoch = epoch
        self.epochs_started += 1
        for deployment, count in self.config.capacity.items():
            self.writer.set_capacity(deployment, int(count))
        self._consumer = DecodingConsumer(
            self.settings, [self.topic], group_id=self.group_id, name="redis-sink"
        )
        self._rebuild_ends = None
        self._reported_done = None
        self._applied_next = {}
        if self._rebuilding_epoch() == epoch:  # (also a sink restarted midway)
            self._rebuild_ends = self._consumer.end_offsets(self.topic)
        self._dead_letters_seen = 0
        log.info("redis sink: consuming %s as group %s", self.topic, self.group_id)

    def _topic_partitions(self) -> list[int]:
        """The verdict topic's partitions, for a rebuild to wait for; [] when the broker
        does not say (then the first sink to catch up ends the rebuild, as before)."""
        try:
            meta = self._admin.list_topics(self.topic, timeout=10)
        except KafkaException as exc:
            log.warning("redis sink: partitions of %s unknown (%s)", self.topic, exc)
            return []
        found = meta.topics.get(self.topic)
        if found is None or found.error is not None:
            return []
        return sorted(found.partitions)

    def _usable(self, events: Sequence[Event]) -> list[Event]:
        """The verdicts Redis can take; the others go to the dead-letter topic once (before
        the retries of a write), with the reason."""
        items = []
        for event in events:
            try:
                self.writer.script_args(event.record, event.timestamp_ms)
            except InvalidVerdictError as exc:
                log.error(
                    "topic %s partition %d offset %d: %s; dead-lettered (fix the producer)",
                    event.topic,
                    event.partition,
                    event.offset,
                    exc,
                )
                self.metrics.sink_writes.labels(result="invalid").inc()
                assert self._consumer is not None
                self._consumer.dead_letter(event, exc)
                continue
            items.append(event)
        return items

    def _write(self, events: Sequence[Event]) -> dict[int, int]:
        """Write a batch; returns the partitions Redis holds less of than this sink wrote
        (restored from persistence, a replica after a failover), with the offset to read
        them again from (-1: their start). Nothing of those partitions was applied."""
        self._know_applied({e.partition for e in events})
        items = [(e.record, e.timestamp_ms) for e in events]
        positions = [
            LogPosition(e.topic, e.partition, e.offset, self._applied_next.get(e.partition))
            for e in events
        ]
        results = self.writer.write_many(items, positions)
        gaps = {
            e.partition: r.gap_at
            for e, r in zip(events, results, strict=True)
            if r.gap_at is not None
        }
        for event in events:
            if event.partition not in gaps:
                self._applied_next[event.partition] = event.offset + 1
        acked_s = time.time()
        applied = sum(r.applied for r in results)
        self.metrics.sink_writes.labels(result="applied").inc(applied)
        self.metrics.sink_writes.labels(result="ignored").inc(len(results) - applied)
        for _, timestamp_ms in items:
            if timestamp_ms > 0:
                self.metrics.sink_latency.observe(max(0.0, acked_s - timestamp_ms / 1000))
        if items[-1][1] > 0:
            self.metrics.sink_lag.set(max(0.0, acked_s - items[-1][1] / 1000))
        self.written += len(items) - sum(1 for e in events if e.partition in gaps)
        return gaps

    def _know_applied(self, partitions: set[int]) -> None:
        """What the sink can vouch Redis holds of each partition, where it does not know yet:
        the group's committed offset, as a commit follows Redis's acknowledgement."""
        assert self._consumer is not None
        unknown = sorted(p for p in partitions if p not in self._applied_next)
        if not unknown:
            return
        try:
            committed = committed_offsets(
                self._admin, self.group_id, [(self.topic, p) for p in unknown]
            )
        except (KafkaException, TimeoutError) as exc:  # no answer: vouch for nothing yet
            log.warning("redis sink: committed offsets of %s unknown (%s)", self.topic, exc)
            return
        self._applied_next.update({p: offset for (_, p), offset in committed.items()})

    def _redis_lacks(self) -> dict[int, int]:
        """The partitions Redis holds less of than this sink wrote to it, found without
        waiting for a write to them (a partition may stay quiet for long): where each one's
        content in Redis ends (-1: none of it)."""
        assert self._consumer is not None
        assigned = self._consumer.assigned(self.topic)
        for gone in [p for p in self._applied_next if p not in assigned]:
            del self._applied_next[gone]  # another member writes it now
        if not self._applied_next:
            return {}
        partitions = sorted(self._applied_next)
        fields = [offsets_field(self.topic, p) for p in partitions]
        found = self.client.hmget(self.writer.layout.sink_offsets, fields)
        lacking = {}
        for partition, value in zip(partitions, found, strict=True):
            held = int(value) if value is not None else -1
            if held < self._applied_next[partition]:
                lacking[partition] = held
        return lacking

    def _read_again(self, gaps: dict[int, int]) -> None:
        """Seek each partition Redis lost writes of back to where its content ends."""
        assert self._consumer is not None
        for partition, offset in sorted(gaps.items()):
            log.warning(
                "redis sink: Redis at %s holds %s of %s[%d], short of what this sink wrote "
                "(restored from persistence, or a replica after a failover?); reading it "
                "again from there",
                self._url,
                f"up to offset {offset}" if offset >= 0 else "nothing",
                self.topic,
                partition,
            )
            try:
                self._consumer.seek(self.topic, partition, offset)
            except KafkaException as exc:  # moved to another member meanwhile: its job now
                log.warning("redis sink: cannot seek %s[%d] (%s)", self.topic, partition, exc)
                self._applied_next.pop(partition, None)
                continue
            if offset >= 0:
                self._applied_next[partition] = offset
            else:
                self._applied_next.pop(partition, None)
        self.reads_again += len(gaps)

    def _retry(self, action: Callable[[], object], stop: threading.Event) -> bool:
        """Run ``action`` until Redis acknowledges; False when ``stop`` came first."""
        backoff_s = self.backoff_initial_s
        failed = False
        while True:
            try:
                if failed:
                    # Redis may have restarted empty while we waited: re-check before writing.
                    self._check_epoch()
                action()
            except _RETRYABLE as exc:
                failed = True
                self.retries += 1
                self.metrics.sink_retries.inc()
                self.metrics.redis_up.set(0)
                log.warning(
                    "redis sink: Redis at %s unavailable (%s: %s); retrying in %.2f s, "
                    "offsets stay uncommitted",
                    self._url,
                    type(exc).__name__,
                    exc,
                    backoff_s,
                )
                if stop.wait(backoff_s):
                    return False
                backoff_s = min(backoff_s * 2, self.backoff_max_s)
                continue
            self.metrics.redis_up.set(1)
            return True

    def _count_dead_letters(self) -> None:
        assert self._consumer is not None
        delta = self._consumer.dead_letters - self._dead_letters_seen
        if delta:
            self.metrics.dead_letters.labels(consumer="redis-sink").inc(delta)
            self._dead_letters_seen = self._consumer.dead_letters
