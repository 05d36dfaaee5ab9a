"""Typed codec errors. Each says what was wrong; consumers turn them into dead letters."""

from __future__ import annotations


class CodecError(ValueError):
    """A message could not be decoded or a record could not be encoded."""


class TruncatedMessageError(CodecError):
    """The bytes end before the header or the record does."""


class UnknownFormatError(CodecError):
    """The first bytes are neither Avro single-object (C3 01) nor Schema Registry (00) framing."""


class UnknownSchemaError(CodecError):
    """The fingerprint or registry id names no schema this process knows."""


class MalformedRecordError(CodecError):
    """The framing was right but the body is not a valid record of its schema."""


class FrameShapeError(CodecError):
    """A columnar frame's packed columns disagree with its declared row counts."""
