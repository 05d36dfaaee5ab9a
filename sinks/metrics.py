"""Prometheus metrics of verdicts and of the pipeline, on one registry.

The worker updates the pipeline gauges (consumer lag, watermark delay, late events, dead
letters); the verdict publisher counts verdicts; the Redis sink reports its own lag. Use
:data:`METRICS` (bound to :data:`REGISTRY`) in a process, or build a :class:`SinkMetrics` on a
fresh ``CollectorRegistry`` in tests. :func:`start_metrics_server` serves the registry.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class SinkMetrics:
    """The metric families; every name carries its unit."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.verdicts = Counter(
            "skewscope_verdicts",
            "Verdicts published to the verdict topic, by condition and state.",
            ["condition", "state"],
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "skewscope_consumer_lag_messages",
            "Messages between a consumer group's position and the partition's high watermark.",
            ["group", "topic", "partition"],
            registry=registry,
        )
        self.watermark_delay = Gauge(
            "skewscope_watermark_delay_seconds",
            "Wall clock minus the event-time watermark, per deployment.",
            ["deployment"],
            registry=registry,
        )
        self.late_events = Counter(
            "skewscope_late_events",
            "Events that arrived behind the watermark, past the allowed lateness.",
            ["topic"],
            registry=registry,
        )
        self.stalled_seeks = Counter(
            "skewscope_stalled_partition_seeks",
            "Quiet telemetry partitions behind their end sought back by the worker (a seek "
            "back that another seek overtook), by topic.",
            ["topic"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "skewscope_dead_letters",
            "Messages sent to the dead-letter topic, by consumer ('<consumer>-unsent': bad "
            "messages whose dead letter could not be sent, logged as errors).",
            ["consumer"],
            registry=registry,
        )
        self.sink_lag = Gauge(
            "skewscope_redis_sink_lag_seconds",
            "Redis acknowledgement time minus the Kafka timestamp of the newest verdict written.",
            registry=registry,
        )
        self.sink_latency = Histogram(
            "skewscope_redis_sink_latency_seconds",
            "Kafka timestamp to Redis acknowledgement, per verdict written.",
            buckets=_LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.sink_writes = Counter(
            "skewscope_redis_sink_writes",
            "Verdicts handed to Redis, by result (applied, ignored: not newer, invalid).",
            ["result"],
            registry=registry,
        )
        self.sink_retries = Counter(
            "skewscope_redis_sink_retries",
            "Batch writes retried because Redis did not answer.",
            registry=registry,
        )
        self.redis_up = Gauge(
            "skewscope_redis_up",
            "1 while the sink's last Redis call succeeded, 0 while it retries.",
            registry=registry,
        )


REGISTRY = CollectorRegistry()
METRICS = SinkMetrics(REGISTRY)


def start_metrics_server(
    port: int, addr: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY
) -> Any:
    """Serve ``registry`` on http://addr:port/metrics in a daemon thread; returns the server.

    Binds loopback by default: metrics name entities, so exposing them is a decision.
    """
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server
