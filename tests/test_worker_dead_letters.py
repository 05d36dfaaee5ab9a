"""The worker's dead letters: an oversized bad message is cut to fit, and a letter that cannot
be sent is logged, never a crash of the worker."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from schemas.errors import MalformedRecordError
from skewscope.config import Settings
from skewscope.kafka.dead_letters import VALUE_MAX_BYTES
from streams.app import _dead_letter


class _Recording:
    def __init__(self, fail: Exception | None = None) -> None:
        self.sent: list[tuple[str, Any, str, dict[str, Any]]] = []
        self.fail = fail

    def send(self, topic: str, key: Any, schema: str, record: dict[str, Any]) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append((topic, key, schema, record))


def _message(size: int) -> SimpleNamespace:
    return SimpleNamespace(
        topic="telemetry.gpu", partition=3, offset=41, key=b"dep0", value=b"x" * size
    )


def test_a_bad_message_near_the_size_limit_is_dead_lettered_cut_to_fit() -> None:
    dlq = _Recording()
    _dead_letter(dlq, Settings(), _message(999_500), MalformedRecordError("not a frame"))  # type: ignore[arg-type]
    ((topic, key, schema, record),) = dlq.sent
    assert (topic, key, schema) == (Settings().topics.dead_letter, b"dep0", "DeadLetter")
    assert len(record["value"]) == VALUE_MAX_BYTES
    assert "cut to its first 900000 of 999500 bytes" in record["reason"]
    assert record["offset"] == 41 and record["error_type"] == "MalformedRecordError"


def test_a_small_bad_message_is_dead_lettered_whole() -> None:
    dlq = _Recording()
    _dead_letter(dlq, Settings(), _message(10), MalformedRecordError("not a frame"))  # type: ignore[arg-type]
    assert dlq.sent[0][3]["value"] == b"x" * 10
    assert dlq.sent[0][3]["reason"] == "not a frame"


def test_a_dead_letter_that_cannot_be_sent_is_logged_and_the_worker_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused = KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT))
    _dead_letter(_Recording(fail=refused), Settings(), _message(10), MalformedRecordError("bad"))  # type: ignore[arg-type]
    assert "could NOT be dead-lettered" in caplog.text
