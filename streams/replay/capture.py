"""Capture files: Avro object container files of Kafka messages, read for replay, written by
:func:`write_capture` (tests, ``skewscope backtest --save-capture``) and by the simulator.

Each record holds one message as it travelled on Kafka::

    {"topic": string, "key": bytes | string | null, "schema": string,
     "value": bytes,              # Avro single-object encoding, as on the wire
     "timestamp_ms": long}        # or "event_time_ns": long (the simulator's captures)

The reader accepts both the ``timestamp_ms`` layout written here and the simulator's
``event_time_ns`` one (producers/sim/capture.py, key as a string). Records are replayed in
file order; the partition of each comes from its key with Kafka's murmur2 partitioner, as
the producer would have placed it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import fastavro

from streams.replay.message import RawMessage, partition_for

CAPTURE_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "CapturedMessage",
    "namespace": "io.skewscope.capture.v1",
    "doc": "One Kafka message of a skewscope capture file.",
    "fields": [
        {"name": "topic", "type": "string", "doc": "Topic the message was on."},
        {"name": "key", "type": ["null", "bytes"], "default": None, "doc": "Message key."},
        {"name": "schema", "type": "string", "doc": "Schema name of the value."},
        {"name": "value", "type": "bytes", "doc": "Value as on the wire (single-object Avro)."},
        {"name": "timestamp_ms", "type": "long", "doc": "Broker or producer timestamp, ms."},
    ],
}
_PARSED = fastavro.parse_schema(CAPTURE_SCHEMA)
MAX_CACHED_KEYS = 4096  # partitions of keys remembered (a capture repeats a few keys)


class CaptureFormatError(ValueError):
    """The file is not a capture (not Avro OCF, or records without the needed fields)."""


def write_capture(
    path: Path, messages: Iterable[RawMessage], metadata: dict[str, str] | None = None
) -> int:
    """Write ``messages`` (file order = replay order) to ``path``; returns how many."""
    count = 0

    def records() -> Iterator[dict[str, Any]]:
        nonlocal count
        for m in messages:
            count += 1
            yield {
                "topic": m.topic,
                "key": m.key,
                "schema": m.schema,
                "value": m.value,
                "timestamp_ms": m.timestamp_ms,
            }

    with Path(path).open("wb") as handle:
        fastavro.writer(
            handle,
            _PARSED,
            records(),
            codec="deflate",
            metadata={"skewscope.capture": "1", **(metadata or {})},
        )
    return count


class CaptureReader:
    """Iterate a capture file's messages; :attr:`fraction_read` for progress bars."""

    def __init__(self, path: Path, partitions: int) -> None:
        self.path = Path(path)
        self.partitions = partitions
        try:
            self.size_bytes = self.path.stat().st_size
        except OSError as exc:
            raise CaptureFormatError(f"capture file {path}: {exc}") from exc
        self._handle: IO[bytes] | None = None
        self._partition_of: dict[bytes | None, int] = {}

    @property
    def fraction_read(self) -> float:
        if self._handle is None or self._handle.closed or not self.size_bytes:
            return 0.0
        return min(1.0, self._handle.tell() / self.size_bytes)

    def __iter__(self) -> Iterator[RawMessage]:
        with self.path.open("rb") as handle:
            self._handle = handle
            try:
                reader = fastavro.reader(handle)
            except (ValueError, EOFError) as exc:
                raise CaptureFormatError(
                    f"capture file {self.path}: not an Avro object container file ({exc}); "
                    "write captures with `skewscope produce sim --out` or write_capture()"
                ) from exc
            for i, rec in enumerate(reader):
                yield self._message(i, rec)  # type: ignore[arg-type]

    def _partition(self, key: bytes | None) -> int:
        """``partition_for(key)``, murmur2 hashing each distinct key once."""
        partition = self._partition_of.get(key)
        if partition is None:
            if len(self._partition_of) >= MAX_CACHED_KEYS:
                self._partition_of.clear()
            partition = self._partition_of[key] = partition_for(key, self.partitions)
        return partition

    def _message(self, index: int, rec: dict[str, Any]) -> RawMessage:
        try:
            key = rec.get("key")
            if isinstance(key, str):
                key = key.encode()
            if "timestamp_ms" in rec:
                ts_ms = int(rec["timestamp_ms"])
            else:
                ts_ms = int(rec["event_time_ns"]) // 1_000_000
            return RawMessage(
                topic=rec["topic"],
                partition=self._partition(key),
                offset=index,
                key=key,
                value=rec["value"],
                timestamp_ms=ts_ms,
                schema=rec.get("schema", ""),
            )
        except (KeyError, TypeError) as exc:
            raise CaptureFormatError(
                f"capture file {self.path}: record {index} lacks {exc}; a capture record needs "
                "topic, key, schema, value and timestamp_ms (or event_time_ns)"
            ) from exc
