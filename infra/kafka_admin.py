"""confluent-kafka AdminClient construction from Settings, with librdkafka's logs silenced.

librdkafka logs every refused connection to stderr; while we probe a broker that is still
starting those lines are noise, so probes use a logger that drops them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from infra.net import first_bootstrap, port_open
from skewscope.config import Settings

_SILENT = logging.getLogger("skewscope.infra.librdkafka")
_SILENT.addHandler(logging.NullHandler())
_SILENT.propagate = False


def client_config(settings: Settings, bootstrap: str | None = None) -> dict[str, Any]:
    """librdkafka settings: bootstrap plus the security options that are set in settings."""
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap or settings.kafka_bootstrap,
        "security.protocol": settings.kafka_security_protocol,
    }
    optional = {
        "sasl.mechanism": settings.kafka_sasl_mechanism,
        "sasl.username": settings.kafka_sasl_username,
        "sasl.password": settings.kafka_sasl_password,
        "ssl.ca.location": settings.kafka_ssl_ca_location,
    }
    conf.update({key: value for key, value in optional.items() if value})
    return conf


def admin_client(
    settings: Settings, bootstrap: str | None = None, quiet: bool = False
) -> AdminClient:
    """An AdminClient for settings (or an explicit bootstrap); quiet=True drops librdkafka logs."""
    conf = client_config(settings, bootstrap)
    if quiet:
        conf["logger"] = _SILENT
        conf["error_cb"] = lambda _err: None
    return AdminClient(conf)


def delete_topics_under(
    settings: Settings, prefixes: Iterable[str], timeout_s: float = 30.0
) -> int:
    """Delete every topic whose name starts with one of ``prefixes``; returns how many were
    asked to go. One already gone (or still being deleted) is no error: nothing to undo.
    Listing the topics raises KafkaException when the broker does not answer."""
    wanted = tuple(prefixes)
    if not wanted:
        return 0
    admin = admin_client(settings, quiet=True)
    names = [t for t in admin.list_topics(timeout=timeout_s).topics if t.startswith(wanted)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=timeout_s).values():
            with contextlib.suppress(KafkaException):
                future.result(timeout=timeout_s)
    return len(names)


def broker_answers(
    settings: Settings, bootstrap: str | None = None, timeout_s: float = 3.0
) -> bool:
    """True when the broker returns cluster metadata with at least one broker within timeout_s.

    A cheap TCP check runs first, so a closed port answers False at once and quietly.
    """
    host, port = first_bootstrap(bootstrap or settings.kafka_bootstrap)
    if not port_open(host, port):
        return False
    try:
        meta = admin_client(settings, bootstrap, quiet=True).list_topics(timeout=timeout_s)
    except Exception:  # KafkaException on timeout; anything else also means "not usable"
        return False
    return bool(meta.brokers)


def committed_offsets(
    admin: AdminClient, group: str, partitions: list[tuple[str, int]], timeout_s: float = 10.0
) -> dict[tuple[str, int], int]:
    """The group's committed offsets of ``partitions`` (blocking); those with none are left
    out. Reading them does not join the group."""
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in partitions])
    (future,) = admin.list_consumer_group_offsets([request], request_timeout=timeout_s).values()
    result = future.result(timeout_s)
    return {
        (tp.topic, tp.partition): tp.offset
        for tp in result.topic_partitions
        if tp.error is None and tp.offset >= 0
    }
