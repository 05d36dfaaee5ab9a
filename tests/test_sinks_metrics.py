"""Prometheus metrics, sink configuration, and the verdict topic's keys."""

from __future__ import annotations

import dataclasses
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry

from sinks.config import SinkConfig, load_sink_config
from sinks.connection import connect
from sinks.metrics import SinkMetrics, start_metrics_server
from sinks.redis_sink import RedisSink
from sinks.verdict_topic import VERDICT_TOPIC_CONFIG, VerdictPublisher, heartbeat_record
from skewscope.config import Settings
from skewscope.kafka.consumer import DecodingConsumer, Event
from tests.test_sinks_support import NS_PER_S, db14, free_port, verdict, wait_until


def test_metrics_server_exposes_every_family() -> None:
    registry = CollectorRegistry()
    metrics = SinkMetrics(registry)
    metrics.verdicts.labels(condition="tp-straggler", state="firing").inc()
    metrics.consumer_lag.labels(group="g", topic="t", partition="0").set(7)
    metrics.watermark_delay.labels(deployment="dep0").set(0.25)
    metrics.late_events.labels(topic="telemetry.nic").inc(3)
    metrics.dead_letters.labels(consumer="worker").inc()
    metrics.stalled_seeks.labels(topic="telemetry.engine.requests").inc()
    port = free_port()
    server = start_metrics_server(port, registry=registry)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        server.shutdown()
    text = body.decode()
    for line in (
        'skewscope_verdicts_total{condition="tp-straggler",state="firing"} 1.0',
        'skewscope_consumer_lag_messages{group="g",partition="0",topic="t"} 7.0',
        'skewscope_watermark_delay_seconds{deployment="dep0"} 0.25',
        'skewscope_late_events_total{topic="telemetry.nic"} 3.0',
        'skewscope_dead_letters_total{consumer="worker"} 1.0',
        'skewscope_stalled_partition_seeks_total{topic="telemetry.engine.requests"} 1.0',
        "skewscope_redis_sink_lag_seconds",
    ):
        assert line in text


def test_publisher_keys_by_entity_and_sink_reports_its_lag(
    settings: Settings,
    unique_topic: Callable[..., str],
    redis_url: str,
    redis_key_prefix: str,
) -> None:
    topic = unique_topic("verdicts", partitions=2, config=VERDICT_TOPIC_CONFIG)
    registry = CollectorRegistry()
    metrics = SinkMetrics(registry)
    publisher = VerdictPublisher(settings, topic=topic, metrics=metrics)
    publisher.publish(verdict("dep0/rank1", 1))
    publisher.publish(verdict("dep0/rank1", 2, state="resolved"))
    publisher.publish(heartbeat_record("dep0", 1, 1, NS_PER_S))
    publisher.flush()
    reader = DecodingConsumer(settings, [topic], group_id=None, name="test-reader")
    reader.assign([TopicPartition(topic, p, 0) for p in range(2)])
    events: list[Event] = []

    def three_read() -> bool:
        events.extend(reader.poll_batch(10, 0.2))
        return len(events) == 3

    wait_until(three_read, 30, "3 records on the verdict topic")
    reader.close()
    assert sorted((e.key, e.record["version"]) for e in events) == [
        (b"dep0/heartbeat", 1),
        (b"dep0/rank1", 1),
        (b"dep0/rank1", 2),
    ]
    value = registry.get_sample_value
    resolved = {"condition": "tp-straggler", "state": "resolved"}
    assert value("skewscope_verdicts_total", resolved) == 1
    heartbeats = {"condition": "heartbeat", "state": "resolved"}
    assert value("skewscope_verdicts_total", heartbeats) is None  # not verdicts

    config = SinkConfig(key_prefix=redis_key_prefix, group_id=f"test-{redis_key_prefix}")
    test_settings = dataclasses.replace(settings, redis_url=db14(redis_url))
    conn = connect(test_settings.redis_url, config)
    sink = RedisSink(test_settings, config, conn, topic=topic, metrics=metrics)
    stop = threading.Event()
    wait_until(lambda: sink.step(stop) >= 0 and sink.written == 3, 30, "sink writes")
    sink.close()
    conn.delete(*conn.scan_iter(match=f"{redis_key_prefix}*"))
    assert value("skewscope_redis_sink_writes_total", {"result": "applied"}) == 3
    assert value("skewscope_redis_up") == 1
    lag = value("skewscope_redis_sink_lag_seconds")
    assert lag is not None and lag > 0
    assert value("skewscope_redis_sink_latency_seconds_count") == 3


def test_sink_config_reads_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "skewscope.toml"
    path.write_text(
        "[skewscope]\nkafka_bootstrap = 'x:1'\n"
        "[sinks]\navoid_share_ratio = 0.1\nhistory_maxlen = 99\n"
        "[sinks.capacity]\nllama70b-a = 16\n"
    )
    config = load_sink_config(path, env={"SKEWSCOPE_SINK_HISTORY_MAXLEN": "7"})
    assert config.avoid_share_ratio == 0.1
    assert config.history_maxlen == 7
    assert config.capacity == {"llama70b-a": 16}


def test_sink_config_rejects_unknown_keys_and_bad_shares(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[sinks]\navoid_share = 0.1\n")
    with pytest.raises(ValueError, match=r"unknown \[sinks\] settings \['avoid_share'\]"):
        load_sink_config(path, env={})
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        load_sink_config(env={"SKEWSCOPE_SINK_AVOID_SHARE_RATIO": "1.5"})
