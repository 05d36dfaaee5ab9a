"""The verdict topic as source of truth: Redis outages and sink restarts lose no verdict.

Real broker (conftest ``settings``/``unique_topic``) and a private redis-server that the
test kills and restarts on the same port.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import CollectorRegistry

from sinks.config import SinkConfig
from sinks.connection import connect
from sinks.metrics import SinkMetrics
from sinks.redis_layout import RedisLayout, as_text
from sinks.redis_sink import RedisSink
from sinks.verdict_topic import VERDICT_TOPIC_CONFIG, VerdictPublisher, heartbeat_record
from skewscope.config import Settings
from skewscope.kafka.consumer import DecodingConsumer, Event
from skewscope.kafka.producer import EventProducer
from tests.test_sinks_support import NS_PER_S, PrivateRedis, private_redis, verdict, wait_until


@pytest.fixture
def topic(unique_topic: Callable[..., str]) -> str:
    return unique_topic("verdicts", partitions=2, config=VERDICT_TOPIC_CONFIG)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    with private_redis(tmp_path) as running:
        yield running


def sink_config() -> SinkConfig:
    return SinkConfig(group_id=f"test-sink-{uuid.uuid4().hex[:8]}", capacity={"dep0": 100})


def stored_versions(url: str, config: SinkConfig) -> dict[str, int]:
    """entity -> version of the verdict key currently in Redis (empty when Redis is down)."""
    conn = redis.Redis.from_url(url, socket_connect_timeout=0.2)
    layout = RedisLayout(config.key_prefix)
    try:
        entities = [as_text(e) for e in conn.hkeys(layout.entity_deployment)]
        values = conn.mget([layout.verdict(e) for e in entities]) if entities else []
    except redis.ConnectionError:
        return {}
    finally:
        conn.close()
    return {e: json.loads(v)["version"] for e, v in zip(entities, values, strict=True) if v}


def _published(settings: Settings, topic: str, ranks: range) -> VerdictPublisher:
    """Version-1 verdicts of ``dep0/rank<i>`` for ``ranks`` on the topic, flushed."""
    publisher = VerdictPublisher(settings, topic=topic)
    for i in ranks:
        publisher.publish(verdict(f"dep0/rank{i}", 1))
    publisher.flush()
    return publisher


class Published:
    """Verdicts of ``dep0/rank<i>`` published in batches, and the version each should end at."""

    def __init__(self, publisher: VerdictPublisher) -> None:
        self.publisher = publisher
        self.expected: dict[str, int] = {}

    def publish(self, entities: range, version: int) -> None:
        for i in entities:
            record = verdict(f"dep0/rank{i}", version, severity=0.01 * (i % 90 + 1))
            self.publisher.publish(record)
            self.expected[record["entity"]] = version
        self.publisher.flush()


class SinkThread:
    """A RedisSink running in a thread until stopped."""

    def __init__(self, settings: Settings, config: SinkConfig, topic: str) -> None:
        self.stop = threading.Event()
        self.sink = RedisSink(
            settings,
            config,
            connect(settings.redis_url, config),
            topic=topic,
            metrics=SinkMetrics(CollectorRegistry()),
            backoff_max_s=0.2,
            check_interval_s=0.2,
        )
        self.thread = threading.Thread(target=self.sink.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "sink did not stop within 30 s"


def test_redis_killed_and_restarted_empty_mid_stream_loses_no_verdict(
    settings: Settings, topic: str, server: PrivateRedis
) -> None:
    test_settings = dataclasses.replace(settings, redis_url=server.url)
    config = sink_config()
    published = Published(VerdictPublisher(test_settings, topic=topic))
    publish, expected = published.publish, published.expected
    runner = SinkThread(test_settings, config, topic)
    try:
        publish(range(0, 100), 1)
        wait_until(lambda: stored_versions(server.url, config) == expected, 60, "first 100")
        server.stop()
        publish(range(50, 150), 2)  # 50 updates and 50 new entities while Redis is down
        wait_until(lambda: runner.sink.retries > 0, 30, "the sink to notice the outage")
        server.start()  # same port, no persistence: Redis comes back empty
        wait_until(lambda: stored_versions(server.url, config) == expected, 60, "all 150")
    finally:
        runner.close()
    assert runner.sink.epochs_started == 2  # it noticed the empty Redis and rebuilt it
    assert len(expected) == 150


def test_redis_restored_from_an_older_snapshot_gets_the_writes_it_lacks_again(
    settings: Settings, topic: str, server: PrivateRedis
) -> None:
    """Redis saved a snapshot, took more writes (which the sink committed), then restarted
    from the snapshot: its epoch is there, the later writes are not. The sink finds Redis
    short of what it wrote to each partition and reads them again from where Redis's
    content ends; before, it went on from its committed offsets and they stayed lost."""
    test_settings = dataclasses.replace(settings, redis_url=server.url)
    config = sink_config()
    published = Published(VerdictPublisher(test_settings, topic=topic))
    publish, expected = published.publish, published.expected
    admin = redis.Redis.from_url(server.url)
    runner = SinkThread(test_settings, config, topic)
    try:
        publish(range(0, 40), 1)
        wait_until(lambda: stored_versions(server.url, config) == expected, 60, "first 40")
        admin.save()  # the snapshot the restart comes back from
        publish(range(20, 80), 2)
        wait_until(lambda: stored_versions(server.url, config) == expected, 60, "all 80")
        applied = admin.hgetall(RedisLayout().sink_offsets)
        server.stop()
        server.start()  # loads the snapshot: the epoch, the first 40 at version 1
        assert len(stored_versions(server.url, config)) == 40
        restored = admin.hgetall(RedisLayout().sink_offsets)
        assert all(int(restored[f]) < int(n) for f, n in applied.items())  # it lacks some
        publish(range(80, 81), 1)  # one more verdict shows the lack to the sink
        wait_until(lambda: stored_versions(server.url, config) == expected, 60, "all 81")
    finally:
        runner.close()
        admin.close()
    assert runner.sink.epochs_started == 1  # no rebuild: the epoch was in the snapshot
    assert runner.sink.reads_again >= 1


def test_restarted_sink_resumes_from_committed_offsets(
    settings: Settings, topic: str, server: PrivateRedis
) -> None:
    test_settings = dataclasses.replace(settings, redis_url=server.url)
    config = sink_config()
    publisher = _published(test_settings, topic, range(40))
    first = SinkThread(test_settings, config, topic)
    wait_until(lambda: len(stored_versions(server.url, config)) == 40, 60, "first sink")
    first.close()
    for i in range(40, 60):
        publisher.publish(verdict(f"dep0/rank{i}", 1))
    publisher.flush()
    second = SinkThread(test_settings, config, topic)
    try:
        wait_until(lambda: len(stored_versions(server.url, config)) == 60, 60, "second sink")
    finally:
        second.close()
    assert first.sink.written == 40
    assert second.sink.written == 20  # only what the first sink had not committed


def test_a_sink_that_catches_up_ends_the_verdicts_its_deployment_outlived(
    settings: Settings, topic: str, server: PrivateRedis
) -> None:
    """While the sink was stopped the detector stopped refreshing rank1 (TTL 30 s) and went
    on 40 s of event time: caught up, Redis must not hold rank1 for what is left of a TTL
    counted from the write, and must hold what is current (rank2). (Event time runs ahead
    of the wall clock here so that the first sink, which starts a rebuild of the empty
    Redis and reads expiry against Redis's clock then, keeps rank1.)"""
    test_settings = dataclasses.replace(settings, redis_url=server.url)
    config = sink_config()
    layout = RedisLayout(config.key_prefix)
    start_ns = time.time_ns() - 5 * NS_PER_S
    ttl_ns = 30 * NS_PER_S
    publisher = VerdictPublisher(test_settings, topic=topic)
    publisher.publish(
        verdict("dep0/rank1", 1, first_seen_ns=start_ns, last_seen_ns=start_ns, ttl_ns=ttl_ns)
    )
    publisher.flush()
    first = SinkThread(test_settings, config, topic)
    wait_until(lambda: "dep0/rank1" in stored_versions(server.url, config), 60, "first sink")
    first.close()
    later_ns = start_ns + 40 * NS_PER_S
    rank2 = verdict("dep0/rank2", 1, first_seen_ns=later_ns, last_seen_ns=later_ns, ttl_ns=ttl_ns)
    publisher.publish(rank2)
    for i, at_ns in enumerate(range(start_ns + NS_PER_S, later_ns + 1, 10 * NS_PER_S)):
        publisher.publish(heartbeat_record("dep0", at_ns, i + 1, 10 * NS_PER_S))
    publisher.flush()
    second = SinkThread(test_settings, config, topic)
    conn = redis.Redis.from_url(server.url)
    try:
        wait_until(
            lambda: conn.hget(layout.deployment("dep0"), "last_event_ns") == str(later_ns).encode(),
            60,
            "the last heartbeat applied",
        )
        wait_until(lambda: "dep0/rank2" in stored_versions(server.url, config), 60, "rank2")
    finally:
        second.close()
    assert stored_versions(server.url, config) == {"dep0/rank2": 1}
    assert conn.zrange(layout.ranked("dep0"), 0, -1) == [b"dep0/rank2"]
    conn.close()


def test_a_failover_that_leaves_redis_read_only_is_waited_out(
    settings: Settings, topic: str, server: PrivateRedis
) -> None:
    """The server turns into a replica of a master that is not there (writes answer
    READONLY, as after a failover the sink's address now points at a replica) and back: the
    sink backs off instead of dying, and writes what came meanwhile once it can."""
    test_settings = dataclasses.replace(settings, redis_url=server.url)
    config = sink_config()
    publisher = VerdictPublisher(test_settings, topic=topic)
    admin = redis.Redis.from_url(server.url)
    runner = SinkThread(test_settings, config, topic)
    try:
        for i in range(10):
            publisher.publish(verdict(f"dep0/rank{i}", 1))
        publisher.flush()
        wait_until(lambda: len(stored_versions(server.url, config)) == 10, 60, "first 10")
        admin.replicaof("127.0.0.1", str(server.port + 1))  # nobody listens there
        for i in range(10, 20):
            publisher.publish(verdict(f"dep0/rank{i}", 1))
        publisher.flush()
        wait_until(lambda: runner.sink.retries > 0, 30, "the sink to meet READONLY")
        assert runner.thread.is_alive()
        admin.replicaof("NO", "ONE")
        wait_until(lambda: len(stored_versions(server.url, config)) == 20, 60, "all 20")
    finally:
        runner.close()
        admin.close()
    assert runner.sink.epochs_started == 1  # the data stayed: no rebuild


def test_a_refused_offset_commit_is_logged_and_the_sink_goes_on() -> None:
    """A commit the group refuses (a rebalance, or a member dropped after a long Redis
    outage) must not stop the sink: the batch is read again and re-applied harmlessly."""
    sink = RedisSink(
        Settings(), sink_config(), redis.Redis(port=1), metrics=SinkMetrics(CollectorRegistry())
    )

    class RefusingConsumer:
        def commit(self) -> None:
            raise KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS))

    sink._consumer = RefusingConsumer()  # type: ignore[assignment]
    sink._commit()
    assert sink.commit_failures == 1


def test_a_verdict_redis_cannot_take_goes_to_the_dead_letter_topic_with_its_reason(
    settings: Settings, topic: str, server: PrivateRedis, unique_topic: Callable[..., str]
) -> None:
    dlq = unique_topic("dlq")
    test_settings = dataclasses.replace(
        settings,
        redis_url=server.url,
        topics=dataclasses.replace(settings.topics, dead_letter=dlq),
    )
    config = sink_config()
    with EventProducer(test_settings) as producer:
        producer.send(topic, "dep0/rank1", "Verdict", verdict("dep0/rank1", 1, ttl_ns=0))
        for i in range(2, 6):
            producer.send(topic, f"dep0/rank{i}", "Verdict", verdict(f"dep0/rank{i}", 1))
    runner = SinkThread(test_settings, config, topic)
    try:
        wait_until(lambda: len(stored_versions(server.url, config)) == 4, 60, "the valid 4")
    finally:
        runner.close()
    reader = DecodingConsumer(test_settings, [dlq], group_id=f"g-{dlq}")
    letters: list[Event] = []
    for _ in range(40):
        letters += reader.poll_batch(10, timeout_s=0.5)
        if letters:
            break
    reader.close()
    (letter,) = letters
    assert letter.record["error_type"] == "InvalidVerdictError"
    assert "ttl_ns=0" in letter.record["reason"] and letter.record["consumer"] == "redis-sink"
    assert letter.record["topic"] == topic and letter.record["key"] == b"dep0/rank1"


def test_a_rebuild_is_flagged_until_the_topics_verdicts_are_back_in_redis(
    settings: Settings, topic: str, server: PrivateRedis
) -> None:
    """An empty Redis: the sink starts an epoch, sets ``<p>rebuilding`` and announces it,
    and clears it (announcing that too) once the verdicts the topic held are written."""
    test_settings = dataclasses.replace(settings, redis_url=server.url)
    config = sink_config()
    _published(test_settings, topic, range(30))
    layout = RedisLayout(config.key_prefix)
    watcher = redis.Redis.from_url(server.url)
    pubsub = watcher.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(layout.channel)
    sink = RedisSink(
        test_settings,
        config,
        connect(server.url, config),
        topic=topic,
        metrics=SinkMetrics(CollectorRegistry()),
    )
    kinds: list[str] = []
    try:
        for _ in range(600):
            sink.step()
            while (message := pubsub.get_message(timeout=0.01)) is not None:
                kind = json.loads(message["data"]).get("kind")
                if kind in ("rebuilding", "rebuilt"):
                    kinds.append(kind)
            if "rebuilt" in kinds:
                break
    finally:
        sink.close()
        pubsub.close()
    assert kinds == ["rebuilding", "rebuilt"]
    assert watcher.get(layout.rebuilding) is None
    assert len(stored_versions(server.url, config)) == 30  # all in before the flag went
    watcher.close()


def test_with_two_sinks_a_rebuild_is_flagged_until_both_have_read_their_partitions(
    settings: Settings, topic: str, server: PrivateRedis
) -> None:
    """Two sinks of one group refill an empty Redis, a partition each. The one that is done
    first must not end the rebuild: clients would read the other partition's entities as
    healthy (no verdict) while their firing verdicts are still on their way."""
    test_settings = dataclasses.replace(settings, redis_url=server.url)
    config = sink_config()
    _published(test_settings, topic, range(VERDICTS))
    layout = RedisLayout(config.key_prefix)
    watcher = redis.Redis.from_url(server.url)
    pubsub = watcher.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(layout.channel)
    wait_until(lambda: pubsub.get_message(timeout=0.01) is None and pubsub.subscribed)
    sinks = [
        RedisSink(
            test_settings,
            config,
            connect(server.url, config),
            topic=topic,
            metrics=SinkMetrics(CollectorRegistry()),
            batch_size=1,  # a verdict a step: the group settles before either is done
            poll_timeout_s=0.005,
            check_interval_s=0.05,
        )
        for _ in range(2)
    ]

    def assigned(sink: RedisSink) -> set[int]:
        assert sink._consumer is not None
        return {tp.partition for tp in sink._consumer._consumer.assignment()}

    kinds: list[str] = []

    def announced() -> None:
        while (message := pubsub.get_message(timeout=0.01)) is not None:
            kind = json.loads(message["data"]).get("kind")
            if kind in ("rebuilding", "rebuilt"):
                kinds.append(kind)

    first, second = sinks
    try:
        for _ in range(600):  # both join the group and get a partition each
            first.step()
            second.step()
            if len(assigned(first)) == 1 and len(assigned(second)) == 1:
                break
        (mine,), (theirs,) = assigned(first), assigned(second)
        for _ in range(3 * VERDICTS):  # only the first reads on, to its partition's end
            first.step()
            if watcher.smembers(layout.rebuild_pending) == {str(theirs).encode()}:
                break
        announced()
        assert watcher.get(layout.rebuilding) is not None, "ended with a partition unread"
        assert kinds == ["rebuilding"]
        for _ in range(3 * VERDICTS):
            second.step()
            announced()
            if "rebuilt" in kinds:
                break
    finally:
        for sink in sinks:
            sink.close()
        pubsub.close()
    assert mine != theirs and kinds == ["rebuilding", "rebuilt"]
    assert watcher.get(layout.rebuilding) is None
    assert len(stored_versions(server.url, config)) == VERDICTS  # all in before the flag went
    watcher.close()


VERDICTS = 400  # more than one sink reads in the seconds the second one takes to join
