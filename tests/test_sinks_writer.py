"""RedisWriter against a real Redis: idempotence, versions, expiry, avoid-list, history."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from sinks.config import SinkConfig
from sinks.connection import connect
from sinks.redis_layout import RedisLayout
from sinks.redis_writer import InvalidVerdictError, LogPosition, RedisWriter
from sinks.verdict_topic import heartbeat_record
from tests.test_sinks_support import NS_PER_S, db14, verdict, wait_until


@pytest.fixture
def sink_config(redis_key_prefix: str) -> SinkConfig:
    return SinkConfig(key_prefix=redis_key_prefix, avoid_share_ratio=0.3)


@pytest.fixture
def client(redis_url: str, sink_config: SinkConfig) -> Iterator[redis.Redis]:
    conn = connect(db14(redis_url), sink_config)
    yield conn
    keys = list(conn.scan_iter(match=f"{sink_config.key_prefix}*"))
    if keys:
        conn.delete(*keys)
    conn.close()


@pytest.fixture
def writer(client: redis.Redis, sink_config: SinkConfig) -> RedisWriter:
    return RedisWriter(client, sink_config)


def dump(client: redis.Redis, prefix: str) -> dict[bytes, Any]:
    """Every key under prefix with its full content (streams with entry ids)."""
    out: dict[bytes, Any] = {}
    for key in sorted(client.scan_iter(match=f"{prefix}*")):
        kind = client.type(key)
        if kind == b"string":
            out[key] = client.get(key)
        elif kind == b"hash":
            out[key] = client.hgetall(key)
        elif kind == b"zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"set":
            out[key] = sorted(client.smembers(key))
        elif kind == b"stream":
            out[key] = client.xrange(key)
        else:
            raise AssertionError(f"unexpected key type {kind!r} of {key!r}")
    return out


def test_same_verdicts_twice_leave_the_same_state(
    writer: RedisWriter, client: redis.Redis, sink_config: SinkConfig
) -> None:
    writer.set_capacity("dep0", 10)
    batch = [
        (verdict("dep0/rank1", 3), 1000),
        (verdict("dep0/rank2", 7, severity=0.8), 1001),
        (verdict("dep0/rank3", 2, state="resolved"), 1002),
        (heartbeat_record("dep0", time.time_ns(), 5, 10 * NS_PER_S), 1003),
    ]
    first = writer.write_many(batch)
    before = dump(client, sink_config.key_prefix)
    second = writer.write_many(batch)
    after = dump(client, sink_config.key_prefix)
    assert [r.applied for r in first] == [True] * 4
    assert [r.applied for r in second] == [False] * 4
    assert after == before


def test_older_version_never_overwrites_a_newer_one(
    writer: RedisWriter, client: redis.Redis
) -> None:
    writer.set_capacity("dep0", 10)
    layout = writer.layout
    assert writer.write(verdict("dep0/rank1", 10, severity=0.9)).applied
    stale = writer.write(verdict("dep0/rank1", 9, severity=0.1, state="resolved"))
    assert not stale.applied and stale.stored_version == 10
    stored = client.get(layout.verdict("dep0/rank1"))
    assert stored is not None and b'"version":10' in stored and b'"firing"' in stored
    assert client.zscore(layout.avoid("dep0"), "dep0/rank1") == pytest.approx(0.9 * 0.9)


def test_versions_beyond_float_precision_compare_exactly(writer: RedisWriter) -> None:
    big = 2**62  # 2**62 + 1 and 2**62 are the same double; the script compares strings
    assert writer.write(verdict("dep0/rank1", big + 1)).applied
    assert not writer.write(verdict("dep0/rank1", big)).applied
    assert writer.write(verdict("dep0/rank1", big + 2)).applied


def test_older_version_stays_ignored_after_the_newer_verdict_expired(
    writer: RedisWriter, client: redis.Redis
) -> None:
    writer.write(verdict("dep0/rank1", 10, ttl_ns=50_000_000))
    wait_until(lambda: not client.exists(writer.layout.verdict("dep0/rank1")), what="expiry")
    assert not writer.write(verdict("dep0/rank1", 9)).applied
    assert not client.exists(writer.layout.verdict("dep0/rank1"))


def test_verdict_expires_after_its_ttl_and_leaves_the_avoid_list(
    writer: RedisWriter, client: redis.Redis
) -> None:
    writer.set_capacity("dep0", 10)
    layout = writer.layout
    writer.write(verdict("dep0/rank1", 1, ttl_ns=300_000_000))
    writer.write(verdict("dep0/rank2", 1, ttl_ns=60 * NS_PER_S))
    pttl = client.pttl(layout.verdict("dep0/rank1"))
    assert 0 < pttl <= 300
    assert client.zcard(layout.avoid("dep0")) == 2
    wait_until(lambda: not client.exists(layout.verdict("dep0/rank1")), what="PEXPIRE")
    assert writer.sweep_expired() == 1
    assert client.zrange(layout.avoid("dep0"), 0, -1) == [b"dep0/rank2"]
    assert client.zrange(layout.worst, 0, -1) == [b"dep0/rank2"]
    assert writer.sweep_expired() == 0


def test_a_rebuild_keeps_a_verdict_only_until_its_event_time_expiry(
    writer: RedisWriter, client: redis.Redis
) -> None:
    """Refilling an empty Redis from the topic, a firing verdict the detector stopped
    refreshing two minutes ago (60 s TTL) must not come back as current for another 60 s:
    it is kept off the rankings and gone at once; one seen 50 s ago lives its last 10 s. Its
    version still counts. Outside a rebuild the TTL counts from the write where nothing says
    the verdict's event time is over (its deployment reported nothing later)."""
    writer.set_capacity("dep0", 10)
    layout = writer.layout
    now_ns = time.time_ns()
    client.set(layout.rebuilding, "epoch-under-test")
    for entity, age_s in (("dep0/rank1", 120), ("dep0/rank2", 50)):
        seen_ns = now_ns - age_s * NS_PER_S
        old = verdict(entity, 1, first_seen_ns=seen_ns, last_seen_ns=seen_ns)
        assert writer.write(old).applied
    wait_until(lambda: not client.exists(layout.verdict("dep0/rank1")), 2, "the stale one gone")
    assert 8_000 < client.pttl(layout.verdict("dep0/rank2")) <= 10_000
    assert client.zrange(layout.ranked("dep0"), 0, -1) == [b"dep0/rank2"]
    assert client.zrange(layout.avoid("dep0"), 0, -1) == [b"dep0/rank2"]
    assert client.zrange(layout.worst, 0, -1) == [b"dep0/rank2"]
    assert not writer.write(verdict("dep0/rank1", 1)).applied  # its version counted
    client.delete(layout.rebuilding)
    seen_ns = now_ns - 120 * NS_PER_S
    old = verdict("dep1/rank3", 1, deployment="dep1", first_seen_ns=seen_ns, last_seen_ns=seen_ns)
    assert writer.write(old).applied
    assert client.pttl(layout.verdict("dep1/rank3")) > 59_000


def _expired_messages(pubsub: redis.client.PubSub) -> list[dict[str, Any]]:
    out = []
    while (msg := pubsub.get_message(timeout=0.2)) is not None:
        body = json.loads(msg["data"])
        if body["kind"] == "expired":
            out.append(body)
    return out


def test_a_verdict_ends_when_its_deployment_event_time_passes_last_seen_plus_ttl(
    writer: RedisWriter, client: redis.Redis
) -> None:
    """A sink that catches up after a stop applies, in event-time order, a verdict the
    detector stopped refreshing and the deployment's later heartbeats: the verdict must end
    when the heartbeats pass its last_seen + ttl, not live a TTL from the write (all of it
    written within a second of wall time here)."""
    writer.set_capacity("dep0", 10)
    layout = writer.layout
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(layout.channel)
    wait_until(lambda: pubsub.get_message(timeout=0.01) is None and pubsub.subscribed)
    t0 = 1_790_000_000 * NS_PER_S  # event time far from the wall clock: no clock is read
    ttl = 30 * NS_PER_S
    writer.write(verdict("dep0/rank1", 1, first_seen_ns=t0, last_seen_ns=t0, ttl_ns=ttl))
    seen2 = t0 + 25 * NS_PER_S
    writer.write(verdict("dep0/rank2", 1, first_seen_ns=seen2, last_seen_ns=seen2, ttl_ns=ttl))
    writer.write(heartbeat_record("dep0", t0 + 29 * NS_PER_S, 1, 10 * NS_PER_S))
    assert client.zrange(layout.avoid("dep0"), 0, -1) == [b"dep0/rank1", b"dep0/rank2"]
    assert _expired_messages(pubsub) == []

    writer.write(heartbeat_record("dep0", t0 + 30 * NS_PER_S, 2, 10 * NS_PER_S))
    assert not client.exists(layout.verdict("dep0/rank1"))
    assert client.exists(layout.verdict("dep0/rank2"))
    for key in (layout.ranked("dep0"), layout.avoid("dep0"), layout.worst):
        assert client.zrange(key, 0, -1) == [b"dep0/rank2"]
    assert client.zrange(layout.event_expiry("dep0"), 0, -1) == [b"dep0/rank2"]
    assert client.zscore(layout.expiry, "dep0/rank1") is None
    (gone,) = _expired_messages(pubsub)
    assert (gone["entity"], gone["version"], gone["deployment"]) == ("dep0/rank1", "1", "dep0")
    assert gone["avoid"][0] == "dep0/rank2" and float(gone["avoid"][1]) == pytest.approx(0.45)

    writer.write(heartbeat_record("dep0", t0 + 56 * NS_PER_S, 3, 10 * NS_PER_S))
    assert not client.exists(layout.verdict("dep0/rank2"))
    assert client.zcard(layout.ranked("dep0")) == 0 and client.zcard(layout.worst) == 0
    assert [m["entity"] for m in _expired_messages(pubsub)] == ["dep0/rank2"]
    assert not writer.write(verdict("dep0/rank1", 1)).applied  # its version still counts
    assert writer.sweep_expired() == 0  # nothing left for the wall-clock sweep
    pubsub.close()


def test_a_verdict_read_after_later_events_of_its_deployment_is_stored_as_expired(
    writer: RedisWriter, client: redis.Redis
) -> None:
    """Catching up, the sink may read a deployment's heartbeat (one partition) before an
    older verdict of it (another partition): the verdict, already past last_seen + ttl by
    then, is kept 1 ms and off the rankings; a newer one of the same read is current."""
    writer.set_capacity("dep0", 10)
    layout = writer.layout
    t0 = 1_790_000_000 * NS_PER_S
    writer.write(heartbeat_record("dep0", t0 + 120 * NS_PER_S, 1, 10 * NS_PER_S))
    ttl = 30 * NS_PER_S
    assert writer.write(verdict("dep0/rank1", 1, first_seen_ns=t0, last_seen_ns=t0)).applied
    seen = t0 + 100 * NS_PER_S
    fresh = verdict("dep0/rank2", 1, first_seen_ns=seen, last_seen_ns=seen, ttl_ns=ttl)
    assert writer.write(fresh).applied
    wait_until(lambda: not client.exists(layout.verdict("dep0/rank1")), 2, "the stale one gone")
    assert client.zrange(layout.ranked("dep0"), 0, -1) == [b"dep0/rank2"]
    assert client.zrange(layout.event_expiry("dep0"), 0, -1) == [b"dep0/rank2"]
    assert not writer.write(verdict("dep0/rank1", 1)).applied


def test_an_entity_that_moved_deployment_is_not_expired_by_its_old_deployment(
    writer: RedisWriter, client: redis.Redis
) -> None:
    """A rank given to another replica: the old deployment's event time must not end the
    verdict the new deployment now holds for it."""
    layout = writer.layout
    t0 = 1_790_000_000 * NS_PER_S
    writer.write(verdict("node07", 1, first_seen_ns=t0, last_seen_ns=t0))
    later = t0 + 10 * NS_PER_S
    writer.write(verdict("node07", 2, deployment="dep1", first_seen_ns=later, last_seen_ns=later))
    assert client.zcard(layout.event_expiry("dep0")) == 0
    writer.write(heartbeat_record("dep0", t0 + 3600 * NS_PER_S, 1, 10 * NS_PER_S))
    assert json.loads(client.get(layout.verdict("node07")))["version"] == 2
    assert client.zrange(layout.ranked("dep1"), 0, -1) == [b"node07"]


def test_redis_keeps_how_far_it_applied_each_partition_and_refuses_a_gap(
    writer: RedisWriter, client: redis.Redis
) -> None:
    """Each write records the offset after its record, in the same script; a write whose
    sink expects more of the partition than Redis holds (Redis lost writes) applies nothing
    and answers where Redis's content of the partition ends."""
    layout = writer.layout
    at = [LogPosition("verdicts", 0, offset) for offset in (7, 8)]
    writer.write_many([(verdict("dep0/rank1", 1), 0), (verdict("dep0/rank2", 1), 0)], at)
    assert client.hget(layout.sink_offsets, "verdicts:0") == b"9"
    older = LogPosition("verdicts", 0, 3, expected_next=9)  # an older record read again
    assert writer.write_many([(verdict("dep0/rank1", 1), 0)], [older])[0].gap_at is None
    assert client.hget(layout.sink_offsets, "verdicts:0") == b"9"  # never moves back
    client.hset(layout.sink_offsets, "verdicts:0", 8)  # as a restore from a snapshot would
    client.delete(layout.verdict("dep0/rank2"))
    ahead = LogPosition("verdicts", 0, 9, expected_next=9)
    (result,) = writer.write_many([(verdict("dep0/rank3", 1), 0)], [ahead])
    assert result.gap_at == 8 and not result.applied
    assert not client.exists(layout.verdict("dep0/rank3"))
    client.delete(layout.sink_offsets)
    (result,) = writer.write_many([(verdict("dep0/rank3", 1), 0)], [ahead])
    assert result.gap_at == -1  # none of the partition: read it from its start


def test_avoid_list_is_ranked_by_severity_times_confidence_and_capped(
    writer: RedisWriter, client: redis.Redis
) -> None:
    writer.set_capacity("dep0", 10)  # share 0.3 -> cap 3
    scores = {
        "dep0/rank1": (0.2, 1.0),
        "dep0/rank2": (0.9, 0.5),
        "dep0/rank3": (0.6, 0.9),
        "dep0/rank4": (0.8, 0.8),
        "dep0/rank5": (0.1, 0.5),
    }
    for i, (entity, (sev, conf)) in enumerate(scores.items()):
        writer.write(verdict(entity, i + 1, severity=sev, confidence=conf))
    writer.write(verdict("dep0/rank6", 1, severity=1.0, confidence=1.0, suppressed_by="fabric:x"))
    writer.write(verdict("dep0/rank7", 1, severity=1.0, confidence=1.0, state="resolved"))
    layout = writer.layout
    avoid: list[Any] = list(client.zrange(layout.avoid("dep0"), 0, -1, desc=True, withscores=True))
    assert [e for e, _ in avoid] == [b"dep0/rank4", b"dep0/rank3", b"dep0/rank2"]
    assert [s for _, s in avoid] == pytest.approx([0.64, 0.54, 0.45])
    assert client.zcard(layout.ranked("dep0")) == 5
    writer.set_capacity("dep0", 20)  # cap 6: every firing, unsuppressed entity
    assert client.zcard(layout.avoid("dep0")) == 5
    assert client.hget(layout.deployment("dep0"), "avoid_cap") == b"6"


def test_avoid_list_is_empty_when_capacity_is_unknown(
    writer: RedisWriter, client: redis.Redis
) -> None:
    writer.write(verdict("depX/rank1", 1, deployment="depX"))
    assert client.zcard(writer.layout.ranked("depX")) == 1
    assert client.zcard(writer.layout.avoid("depX")) == 0


def test_resolution_removes_the_entity_from_the_avoid_list(
    writer: RedisWriter, client: redis.Redis
) -> None:
    writer.set_capacity("dep0", 10)
    writer.write(verdict("dep0/rank1", 1))
    writer.write(verdict("dep0/rank1", 2, state="resolved"))
    assert client.zcard(writer.layout.avoid("dep0")) == 0
    stored = client.get(writer.layout.verdict("dep0/rank1"))
    assert stored is not None and b'"state":"resolved"' in stored


def test_history_stream_is_bounded(client: redis.Redis, sink_config: SinkConfig) -> None:
    writer = RedisWriter(client, dataclasses.replace(sink_config, history_maxlen=50))
    writer.write_many([(verdict(f"dep0/rank{i % 7}", i), 0) for i in range(1, 801)])
    length = client.xlen(writer.layout.history)
    # MAXLEN ~ trims whole macro nodes (stream-node-max-entries each, 100 by default), so at
    # least 50 and at most a node more stay of the 800
    node_entries = int(client.config_get("stream-node-max-entries")["stream-node-max-entries"])
    assert 50 <= length <= 50 + node_entries < 800


def test_freshness_moves_forward_only_and_heartbeat_sets_the_bound(
    writer: RedisWriter, client: redis.Redis
) -> None:
    layout = writer.layout
    writer.write(heartbeat_record("dep0", 5_000, 2, 3 * NS_PER_S))
    writer.write(verdict("dep0/rank1", 1, last_seen_ns=4_000))
    writer.write(heartbeat_record("dep0", 9_000, 1, NS_PER_S))  # older heartbeat version
    state = client.hgetall(layout.deployment("dep0"))
    assert state[b"last_event_ns"] == b"5000"
    assert state[b"freshness_bound_ns"] == str(3 * NS_PER_S).encode()


def test_verdict_without_positive_ttl_is_rejected_with_the_reason(writer: RedisWriter) -> None:
    with pytest.raises(InvalidVerdictError, match="ttl_ns=0 must be positive"):
        writer.write(verdict("dep0/rank1", 1, ttl_ns=0))


def test_applied_change_is_published_on_the_channel(
    writer: RedisWriter, client: redis.Redis
) -> None:
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(RedisLayout(writer.config.key_prefix).channel)
    wait_until(lambda: pubsub.get_message(timeout=0.01) is None and pubsub.subscribed)
    writer.write(verdict("dep0/rank1", 1))
    writer.write(verdict("dep0/rank1", 1))  # duplicate: not announced
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(messages) < 2:
        msg = pubsub.get_message(timeout=0.2)
        if msg is None and messages:
            break
        if msg is not None:
            messages.append(msg)
    pubsub.close()
    assert len(messages) == 1 and b'"entity":"dep0\\/rank1"' in messages[0]["data"]
