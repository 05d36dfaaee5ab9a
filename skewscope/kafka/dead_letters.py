"""Send one bad message to the dead-letter topic with its reason, without ever raising.

Shared by the Faust worker and :class:`~skewscope.kafka.consumer.DecodingConsumer`. A letter
carries the bad message; past the producer's ``message.max.bytes`` (1 MB by default) only
its first ``VALUE_MAX_BYTES``, with the cut stated in the reason, so the letter still fits.
A letter that still cannot be sent is logged as an error: the bad message is lost, the
consumer goes on.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from skewscope.kafka.producer import EventProducer

log = logging.getLogger(__name__)

VALUE_MAX_BYTES = 900_000


def send_dead_letter_of(
    dlq: EventProducer, dead_letter_topic: str, message: Any, exc: Exception, consumer: str
) -> bool:
    """:func:`send_dead_letter` for a message with ``topic``, ``partition``, ``offset``,
    ``key`` and ``value`` attributes (a Faust message, a decoded Event)."""
    return send_dead_letter(
        dlq,
        dead_letter_topic,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        exc=exc,
        consumer=consumer,
    )


def send_dead_letter(
    dlq: EventProducer,
    dead_letter_topic: str,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    exc: Exception,
    consumer: str,
) -> bool:
    """Produce the DeadLetter; False (logged as an error) when the producer refused it."""
    reason = f"topic {topic}: message at offset {offset} (partition {partition}): {exc}"
    log.warning("%s; sent to %s", reason, dead_letter_topic)
    data = value
    detail = str(exc)
    if data is not None and len(data) > VALUE_MAX_BYTES:
        detail = f"{exc} (value cut to its first {VALUE_MAX_BYTES} of {len(data)} bytes)"
        data = data[:VALUE_MAX_BYTES]
    record = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": key,
        "value": data,
        "error_type": type(exc).__name__,
        "reason": detail,
        "consumer": consumer,
        "failed_at_ns": time.time_ns(),
    }
    try:
        dlq.send(dead_letter_topic, key, "DeadLetter", record)
    except Exception as err:  # the letter is lost, the consumer must not be
        log.error("%s; could NOT be dead-lettered (%s: %s)", reason, type(err).__name__, err)
        return False
    return True
