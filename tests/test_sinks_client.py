"""SchedulerClient against a real Redis: cache, watch, freshness, policy, reconnect resync."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sinks.client import Change, FailPolicy, Health, SchedulerClient
from sinks.config import SinkConfig
from sinks.connection import connect
from sinks.redis_writer import RedisWriter
from sinks.verdict_topic import heartbeat_record
from tests.test_sinks_support import (
    NS_PER_S,
    PrivateRedis,
    db14,
    private_redis,
    verdict,
    wait_until,
)


@pytest.fixture
def sink_config(redis_key_prefix: str) -> SinkConfig:
    return SinkConfig(key_prefix=redis_key_prefix, avoid_share_ratio=0.5)


@pytest.fixture
def url(redis_url: str) -> str:
    return db14(redis_url)


@pytest.fixture
def writer(url: str, sink_config: SinkConfig) -> Iterator[RedisWriter]:
    conn = connect(url, sink_config)
    yield RedisWriter(conn, sink_config)
    keys = list(conn.scan_iter(match=f"{sink_config.key_prefix}*"))
    if keys:
        conn.delete(*keys)
    conn.close()


@pytest.fixture
def client(url: str, sink_config: SinkConfig) -> Iterator[SchedulerClient]:
    with SchedulerClient(url, sink_config) as scheduler:
        yield scheduler


def test_watch_receives_changes_in_order(writer: RedisWriter, client: SchedulerClient) -> None:
    changes = client.watch(timeout_s=5)
    writer.write(verdict("dep0/rank1", 1))
    writer.write(verdict("dep0/rank1", 2, state="resolved"))
    writer.write(verdict("dep0/rank1", 2, state="resolved"))  # duplicate: no change
    writer.write(heartbeat_record("dep0", time.time_ns(), 1, 10 * NS_PER_S))
    got = [next(changes) for _ in range(3)]
    assert [(c.kind, c.entity, c.version) for c in got] == [
        ("verdict", "dep0/rank1", 1),
        ("verdict", "dep0/rank1", 2),
        ("heartbeat", "dep0/heartbeat", 1),
    ]
    assert got[1].verdict is not None and got[1].verdict["state"] == "resolved"


def test_lookups_follow_notifications(writer: RedisWriter, client: SchedulerClient) -> None:
    writer.set_capacity("dep0", 4)  # share 0.5 -> cap 2
    writer.write(heartbeat_record("dep0", time.time_ns(), 1, 10 * NS_PER_S))
    writer.write(verdict("dep0/rank1", 1, severity=0.4, confidence=1.0))
    writer.write(verdict("dep0/rank2", 1, severity=0.9, confidence=1.0))
    writer.write(verdict("dep0/rank3", 1, severity=0.6, confidence=1.0))
    wait_until(lambda: client.verdict("dep0/rank3") is not None, what="last write in cache")
    assert client.avoid_list("dep0") == [("dep0/rank2", 0.9), ("dep0/rank3", 0.6)]
    assert [v["entity"] for v in client.worst(2)] == ["dep0/rank2", "dep0/rank3"]
    assert client.health("dep0/rank1").health is Health.UNHEALTHY
    assert not client.should_avoid("dep0/rank1")  # unhealthy but past the cap
    assert client.should_avoid("dep0/rank2")
    assert client.health("dep0/rank5").health is Health.HEALTHY
    assert client.deployment_health("dep0").health is Health.UNHEALTHY
    writer.write(verdict("dep0/rank2", 2, state="resolved"))
    wait_until(lambda: client.health("dep0/rank2").health is Health.HEALTHY, what="resolution")
    assert client.avoid_list("dep0") == [("dep0/rank3", 0.6), ("dep0/rank1", 0.4)]


def test_an_entity_that_moves_deployment_leaves_the_old_avoid_list(
    writer: RedisWriter, client: SchedulerClient
) -> None:
    """A node reassigned to another replica: its next verdict names the new deployment, and
    the old replica's scheduler stops avoiding it at once (not when the old verdict's TTL
    runs out), told by a ``moved`` change."""
    for dep in ("dep0", "dep1"):
        writer.set_capacity(dep, 4)  # share 0.5 -> cap 2
    changes = client.watch(timeout_s=5)
    writer.write(verdict("node07", 1, deployment="dep0", severity=0.8, confidence=1.0))
    writer.write(verdict("dep0/rank1", 1, deployment="dep0", severity=0.4, confidence=1.0))
    writer.write(verdict("node07", 2, deployment="dep1", severity=0.7, confidence=1.0))
    # (a capacity change set just before may still arrive)
    got = list(itertools.islice((c for c in changes if c.kind != "capacity"), 4))
    assert [(c.kind, c.entity, c.deployment, c.version) for c in got] == [
        ("verdict", "node07", "dep0", 1),
        ("verdict", "dep0/rank1", "dep0", 1),
        ("moved", "node07", "dep0", 2),
        ("verdict", "node07", "dep1", 2),
    ]
    assert client.avoid_list("dep0") == [("dep0/rank1", 0.4)]
    assert client.avoid_list("dep1") == [("node07", 0.7)]
    lay = writer.layout
    assert writer.client.zrange(lay.ranked("dep0"), 0, -1) == [b"dep0/rank1"]
    assert writer.client.zrange(lay.ranked("dep1"), 0, -1) == [b"node07"]
    writer.write(verdict("node07", 3, deployment="dep1", state="resolved"))  # no move
    wait_until(lambda: client.avoid_list("dep1") == [], what="resolution in dep1")
    assert client.avoid_list("dep0") == [("dep0/rank1", 0.4)]


def test_a_watcher_that_stops_reading_is_bounded_and_told_it_lagged(
    writer: RedisWriter, client: SchedulerClient
) -> None:
    """A watcher that reads nothing while 10 changes arrive holds at most 3 (its backlog),
    a lag notice first; the lookups are current all along."""
    slow = client.watch(timeout_s=0.5, max_backlog=3)
    for version in range(1, 11):
        writer.write(verdict("dep0/rank1", version))
    wait_until(lambda: (client.verdict("dep0/rank1") or {}).get("version") == 10, what="v10")
    got = list(slow)
    assert 1 <= len(got) <= 3 and got[0].kind == "lagged"
    assert all(c.kind == "verdict" for c in got[1:])
    with pytest.raises(ValueError, match="max_backlog"):
        client.watch(max_backlog=0)


def test_client_started_after_the_writes_loads_them_by_resync(
    writer: RedisWriter, url: str, sink_config: SinkConfig
) -> None:
    writer.write(heartbeat_record("dep0", time.time_ns(), 1, 10 * NS_PER_S))
    writer.write(verdict("dep0/rank1", 4, severity=0.7))
    with SchedulerClient(url, sink_config) as late:
        assert late.connected
        found = late.verdict("dep0/rank1")
        assert found is not None and found["version"] == 4
        assert late.health("dep0/rank1").health is Health.UNHEALTHY


def test_no_data_reads_unknown_never_healthy(client: SchedulerClient) -> None:
    report = client.health("dep9/rank0")
    assert report.health is Health.UNKNOWN
    assert "unknown" in report.reason or "no data" in report.reason


def test_deployment_reads_unknown_once_its_freshness_bound_passes(
    writer: RedisWriter, url: str, sink_config: SinkConfig
) -> None:
    seen_ns = time.time_ns()
    bound_ns = 2 * NS_PER_S
    now = [seen_ns]
    with SchedulerClient(url, sink_config, clock_ns=lambda: now[0]) as scheduler:
        writer.write(heartbeat_record("dep0", seen_ns, 1, bound_ns))
        wait_until(lambda: scheduler.deployment_state("dep0") is not None, what="heartbeat")
        now[0] = seen_ns + bound_ns
        assert scheduler.health("dep0/rank0").health is Health.HEALTHY
        now[0] = seen_ns + bound_ns + 1
        report = scheduler.health("dep0/rank0")
        assert report.health is Health.UNKNOWN
        assert report.staleness_ns == bound_ns + 1


def test_silent_deployment_turns_unknown_in_real_time(
    writer: RedisWriter, client: SchedulerClient
) -> None:
    bound_ns = 300_000_000
    writer.write(heartbeat_record("dep0", time.time_ns(), 1, bound_ns))
    wait_until(lambda: client.health("dep0/rank0").health is Health.HEALTHY, what="healthy")
    wait_until(lambda: client.health("dep0/rank0").health is Health.UNKNOWN, what="unknown")
    staleness = client.health("dep0/rank0").staleness_ns
    assert staleness is not None and staleness > bound_ns


def test_expired_verdict_leaves_the_cache(writer: RedisWriter, client: SchedulerClient) -> None:
    writer.write(heartbeat_record("dep0", time.time_ns(), 1, 60 * NS_PER_S))
    writer.write(verdict("dep0/rank1", 1, ttl_ns=200_000_000))
    wait_until(lambda: client.verdict("dep0/rank1") is not None, what="verdict cached")
    wait_until(lambda: client.verdict("dep0/rank1") is None, what="local expiry")
    assert client.health("dep0/rank1").health is Health.HEALTHY


def test_a_verdict_past_its_event_time_expiry_leaves_the_cache_and_the_avoid_list(
    writer: RedisWriter, client: SchedulerClient
) -> None:
    """A sink catching up writes a verdict last seen 40 s ago (TTL 30 s), then the
    deployment's heartbeat of now: the scheduler must not keep avoiding the entity for
    another 30 s of wall time."""
    writer.set_capacity("dep0", 4)
    now_ns = time.time_ns()
    seen = now_ns - 40 * NS_PER_S
    writer.write(
        verdict("dep0/rank1", 1, first_seen_ns=seen, last_seen_ns=seen, ttl_ns=30 * NS_PER_S)
    )
    wait_until(lambda: client.verdict("dep0/rank1") is not None, what="verdict cached")
    assert client.avoid_list("dep0") == [("dep0/rank1", 0.45)]
    writer.write(heartbeat_record("dep0", now_ns, 1, 10 * NS_PER_S))
    wait_until(lambda: client.verdict("dep0/rank1") is None, what="event-time expiry")
    assert client.health("dep0/rank1").health is Health.HEALTHY
    assert not client.should_avoid("dep0/rank1") and client.avoid_list("dep0") == []


@pytest.mark.parametrize(("policy", "avoid"), [(FailPolicy.OPEN, False), (FailPolicy.CLOSED, True)])
def test_fail_policy_decides_whether_unknown_is_avoided(
    url: str, sink_config: SinkConfig, policy: FailPolicy, avoid: bool
) -> None:
    with SchedulerClient(url, sink_config, policy=policy) as scheduler:
        assert scheduler.health("dep9/rank0").health is Health.UNKNOWN
        assert scheduler.should_avoid("dep9/rank0") is avoid


def test_unreachable_redis_reads_unknown_and_reconnect_resyncs(tmp_path: Path) -> None:
    config = SinkConfig(key_prefix="skew:")
    with private_redis(tmp_path) as server:
        conn = connect(server.url, config)
        writer = RedisWriter(conn, config)
        writer.write(heartbeat_record("dep0", time.time_ns(), 1, 60 * NS_PER_S))
        writer.write(verdict("dep0/rank1", 1))
        scheduler = SchedulerClient(
            server.url, config, policy=FailPolicy.CLOSED, reconnect_backoff_max_s=0.1
        )
        with scheduler:
            changes = scheduler.watch(timeout_s=10)
            assert scheduler.health("dep0/rank1").health is Health.UNHEALTHY
            server.stop()
            assert next(changes) == Change("disconnected")
            report = scheduler.health("dep0/rank1")
            assert (report.health, report.reason) == (Health.UNKNOWN, "Redis unreachable")
            assert scheduler.should_avoid("dep0/rank7")
            server.start()  # same port, empty: the client must drop what it had
            fresh = RedisWriter(connect(server.url, config), config)
            fresh.write(heartbeat_record("dep0", time.time_ns(), 1, 60 * NS_PER_S))
            fresh.write(verdict("dep0/rank2", 1))
            wait_until(lambda: scheduler.verdict("dep0/rank2") is not None, what="resync")
            assert scheduler.verdict("dep0/rank1") is None
            assert scheduler.health("dep0/rank1").health is Health.HEALTHY
            assert scheduler.resyncs >= 2


def test_client_started_before_redis_reads_unknown_then_connects(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path)  # not started yet
    with SchedulerClient(server.url, SinkConfig(), reconnect_backoff_max_s=0.05) as scheduler:
        assert not scheduler.connected
        report = scheduler.health("dep0/rank0")
        assert (report.health, report.reason) == (Health.UNKNOWN, "Redis unreachable")
        server.start()
        try:
            wait_until(lambda: scheduler.connected, what="connect once Redis answers")
        finally:
            server.stop()


def test_every_entity_reads_unknown_while_a_sink_rebuilds_redis(
    writer: RedisWriter, client: SchedulerClient, sink_config: SinkConfig, url: str
) -> None:
    """A rebuilt Redis fills partition by partition: a deployment's heartbeat may be back
    before its firing verdicts. While ``<p>rebuilding`` is set every entity reads unknown;
    the flag seen at a resync counts as well as the notification."""
    layout = writer.layout
    writer.write(heartbeat_record("dep0", time.time_ns(), 1, 10 * NS_PER_S))
    wait_until(lambda: client.health("dep0/rank1").health is Health.HEALTHY, 10, "fresh dep0")
    conn = connect(url, sink_config)
    conn.set(layout.rebuilding, "epoch-2")
    conn.publish(layout.channel, json.dumps({"kind": "rebuilding", "epoch": "epoch-2"}))
    wait_until(lambda: client.health("dep0/rank1").health is Health.UNKNOWN, 10, "rebuilding")
    assert "refilled" in client.health("dep0/rank1").reason
    with SchedulerClient(url, sink_config) as late:  # started during the rebuild: resync
        assert late.health("dep0/rank1").health is Health.UNKNOWN
        conn.delete(layout.rebuilding)
        conn.publish(layout.channel, json.dumps({"kind": "rebuilt", "epoch": "epoch-2"}))
        wait_until(lambda: late.health("dep0/rank1").health is Health.HEALTHY, 10, "rebuilt")
    wait_until(lambda: client.health("dep0/rank1").health is Health.HEALTHY, 10, "rebuilt")
    conn.close()
