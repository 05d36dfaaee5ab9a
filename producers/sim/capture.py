"""Capture files: an Avro object container file of Kafka messages, written or replayed.

Each record is a ``CaptureRecord`` (schema below): the topic, the key, the schema name and the
message value exactly as it travels on Kafka (Avro single-object encoding: ``C3 01`` +
fingerprint + body). A capture therefore replays byte-for-byte (``EventProducer.send_raw``)
and anyone can write one from their own telemetry with any Avro library: encode each event
with its schema from ``schemas/*.avsc`` in single-object encoding, wrap it in a
CaptureRecord, append to the container file. See docs/capture-format.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import fastavro
from fastavro.write import Writer

CAPTURE_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "CaptureRecord",
    "namespace": "io.skewscope.capture.v1",
    "doc": "One Kafka message of a skewscope capture file.",
    "fields": [
        {"name": "topic", "type": "string", "doc": "Topic the message belongs to."},
        {"name": "key", "type": ["null", "string"], "default": None, "doc": "Message key."},
        {
            "name": "schema",
            "type": "string",
            "doc": "Short schema name of the value, e.g. CollectiveFrame.",
        },
        {
            "name": "event_time_ns",
            "type": "long",
            "doc": "Event time of the message (end of its frame period), ns since epoch.",
        },
        {
            "name": "value",
            "type": "bytes",
            "doc": "The message value as on Kafka: Avro single-object encoding.",
        },
    ],
}
_PARSED = fastavro.parse_schema(CAPTURE_SCHEMA)


class CaptureWriter:
    """Append CaptureRecords to an Avro container file (deflate blocks of 1000 records)."""

    def __init__(self, path: Path, metadata: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self._handle: IO[bytes] = self.path.open("wb")
        self._writer = Writer(
            self._handle,
            _PARSED,
            codec="deflate",
            sync_interval=1000 * 64,
            metadata={"skewscope.capture": "1", **(metadata or {})},
        )
        self.records = 0

    def write(
        self, topic: str, key: str | None, schema: str, value: bytes, event_time_ns: int
    ) -> None:
        self._writer.write(
            {
                "topic": topic,
                "key": key,
                "schema": schema,
                "event_time_ns": event_time_ns,
                "value": value,
            }
        )
        self.records += 1

    def close(self) -> None:
        self._writer.flush()
        self._handle.close()

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_capture(path: Path) -> Iterator[dict[str, Any]]:
    """CaptureRecords of a capture file, in file order."""
    with Path(path).open("rb") as handle:
        yield from fastavro.reader(handle)  # type: ignore[misc]
