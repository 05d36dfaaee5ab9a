"""librdkafka configuration from Settings, security included, secrets never logged."""

from __future__ import annotations

from typing import Any

from skewscope.config import Settings

_SECRET_KEYS = {"sasl.password", "ssl.key.password"}


def base_config(settings: Settings) -> dict[str, Any]:
    """Bootstrap and security settings shared by producers, consumers and admin clients."""
    conf: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap}
    if settings.kafka_security_protocol != "PLAINTEXT":
        conf["security.protocol"] = settings.kafka_security_protocol
    if settings.kafka_sasl_mechanism:
        conf["sasl.mechanism"] = settings.kafka_sasl_mechanism
        conf["sasl.username"] = settings.kafka_sasl_username
        conf["sasl.password"] = settings.kafka_sasl_password
    if settings.kafka_ssl_ca_location:
        conf["ssl.ca.location"] = settings.kafka_ssl_ca_location
    return conf


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Producer settings: murmur2_random so keys land where Faust/aiokafka/Java put them."""
    conf = base_config(settings)
    conf.update(
        {
            # librdkafka's default (consistent_random, CRC32) disagrees with the Java client
            # and aiokafka, which Faust uses; murmur2_random matches them.
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "enable.idempotence": True,
            "acks": "all",
            "queue.buffering.max.kbytes": 256 * 1024,
        }
    )
    conf.update(overrides)
    return conf


def redacted(conf: dict[str, Any]) -> dict[str, Any]:
    """A copy safe to log: secrets replaced by '***'."""
    return {k: ("***" if k in _SECRET_KEYS else v) for k, v in conf.items()}
