"""Fault labels for scoring: from a file (JSON lines or Avro OCF of FaultLabel records)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import fastavro

from schemas.codec import AvroCodec
from schemas.errors import CodecError
from streams.replay.message import RawMessage

_NEEDED = ("label_id", "entity", "condition", "onset_ns")
_AVRO_MAGIC = b"Obj\x01"


def read_labels(path: Path) -> list[dict[str, Any]]:
    """FaultLabel dicts from ``path``: an Avro object container file (by its magic bytes) or
    JSON lines (one object per line, blank lines skipped). Missing ``end_ns`` means ongoing,
    missing ``severity`` is 0."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
            handle.seek(0)
            if magic == _AVRO_MAGIC:
                records = [dict(r) for r in fastavro.reader(handle)]  # type: ignore[arg-type]
            else:
                records = _json_lines(path, handle.read().decode())
    except OSError as exc:
        raise ValueError(f"labels file {path}: {exc}") from exc
    for i, rec in enumerate(records):
        missing = [k for k in _NEEDED if k not in rec]
        if missing:
            raise ValueError(
                f"labels file {path}: label {i} lacks {missing}; a FaultLabel needs "
                f"{list(_NEEDED)} (schemas/fault_label.avsc)"
            )
        rec.setdefault("end_ns", None)
        rec.setdefault("severity", 0.0)
    return records


def _json_lines(path: Path, text: str) -> list[dict[str, Any]]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"labels file {path}: line {n} is not JSON ({exc.msg}); expected JSON lines "
                "or an Avro container file of FaultLabel"
            ) from exc
        if not isinstance(rec, dict):
            raise ValueError(f"labels file {path}: line {n} is not a JSON object")
        out.append(rec)
    return out


def decode_labels(messages: Iterable[RawMessage]) -> list[dict[str, Any]]:
    """FaultLabel records among ``messages`` (e.g. the labels topic); others are skipped."""
    codec = AvroCodec()
    out = []
    for m in messages:
        try:
            decoded = codec.decode(m.value)
        except CodecError:
            continue
        if decoded.name == "FaultLabel":
            out.append(decoded.record)
    return out
