"""All local services together: Kafka broker, Redis, topics. Backs ``skewscope infra``.

``up`` is idempotent (services already answering are left as they are); ``down`` stops only
what skewscope started (pid files); ``status`` never starts anything.
"""

from __future__ import annotations

from typing import Any

from infra import kafka_broker, redis_server
from infra.common import Say, say
from infra.topics import TopicsSummary, ensure_topics
from skewscope.config import Settings


def up(settings: Settings, log: Say = say, topics: bool = True) -> TopicsSummary | None:
    """Start (or find) Kafka and Redis, then create the topics unless topics=False.

    Returns the topic summary (None when topics=False). Raises InfraError with advice.
    """
    kafka_broker.up(settings, log)
    redis_server.up(settings, log)
    return ensure_topics(settings, log) if topics else None


def down(settings: Settings, log: Say = say) -> dict[str, bool]:
    """Stop the services skewscope started; {"kafka": stopped?, "redis": stopped?}."""
    return {"kafka": kafka_broker.down(settings, log), "redis": redis_server.down(settings, log)}


def status(settings: Settings) -> dict[str, Any]:
    """{"kafka": {...}, "redis": {...}}: versions, addresses, managed flags, pids, paths."""
    return {
        "kafka": kafka_broker.status(settings).as_dict(),
        "redis": redis_server.status(settings).as_dict(),
    }


def status_lines(report: dict[str, Any]) -> list[str]:
    """Human lines for a status dict, e.g. "kafka 4.1.0 at 127.0.0.1:9092 (managed, pid 123)"."""
    return [
        _line("kafka", report["kafka"], report["kafka"]["bootstrap"]),
        _line("redis", report["redis"], report["redis"]["url"]),
    ]


def _line(name: str, item: dict[str, Any], address: str) -> str:
    if not item["answering"]:
        return f"{name}: not running at {address}"
    version = item["version"] or "(version unknown)"
    if item["managed"]:
        how = f"managed, pid {item['pid']}"
    else:
        how = "external" + (f", pid {item['pid']}" if item["pid"] else "")
    return f"{name} {version} at {address} ({how})"
