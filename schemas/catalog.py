"""The schema catalog: every ``.avsc`` in this folder (and its earlier versions in
``history/``), parsed, with its fingerprint.

A catalog maps a record's full name to its *reader* schema (the newest this process knows)
and every known *writer* schema by CRC-64-AVRO fingerprint, so data written with an older
version of a schema still decodes (Avro schema resolution fills defaulted fields).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from schemas.fingerprint import crc64_avro

SCHEMA_DIR = Path(__file__).resolve().parent
NAMESPACE = "io.skewscope.v1"
HISTORY_DIR = "history"  # earlier versions, kept so old data still decodes


@dataclass(frozen=True)
class KnownSchema:
    """One parsed schema and its identity."""

    full_name: str
    parsed: Any
    canonical: str
    fingerprint: int

    @property
    def short_name(self) -> str:
        return self.full_name.rsplit(".", 1)[-1]

    @property
    def fingerprint_bytes(self) -> bytes:
        return self.fingerprint.to_bytes(8, "little")


def parse(schema: dict[str, Any] | str) -> KnownSchema:
    """Parse an Avro schema (dict or JSON text) into a KnownSchema."""
    raw = json.loads(schema) if isinstance(schema, str) else schema
    parsed = fastavro.parse_schema(raw, _write_hint=False)
    canonical = to_parsing_canonical_form(parsed)
    return KnownSchema(
        full_name=parsed["name"] if isinstance(parsed, dict) else str(parsed),
        parsed=parsed,
        canonical=canonical,
        fingerprint=crc64_avro(canonical.encode()),
    )


@dataclass
class Catalog:
    """Reader schemas by name, writer schemas by fingerprint."""

    readers: dict[str, KnownSchema] = field(default_factory=dict)
    writers: dict[int, KnownSchema] = field(default_factory=dict)

    def add(self, schema: KnownSchema, *, reader: bool = True) -> KnownSchema:
        self.writers[schema.fingerprint] = schema
        if reader:
            self.readers[schema.full_name] = schema
        return schema

    def reader(self, name: str) -> KnownSchema:
        """Reader schema by full name or short name (``Verdict``)."""
        full = name if "." in name else f"{NAMESPACE}.{name}"
        try:
            return self.readers[full]
        except KeyError:
            raise KeyError(f"no schema named {name!r}; known: {sorted(self.readers)}") from None

    def names(self) -> list[str]:
        return sorted(s.short_name for s in self.readers.values())


def load_catalog(directory: Path = SCHEMA_DIR) -> Catalog:
    """Load every ``*.avsc`` under ``directory`` as a reader (and writer) schema, and every
    ``history/*.avsc`` (earlier versions of a schema) as a writer schema only: data written
    before a field was added still decodes, the new field taking its default."""
    catalog = Catalog()
    for path in sorted(directory.glob("*.avsc")):
        catalog.add(_parse_file(path))
    for path in sorted((directory / HISTORY_DIR).glob("*.avsc")):
        catalog.add(_parse_file(path), reader=False)
    return catalog


def _parse_file(path: Path) -> KnownSchema:
    try:
        return parse(path.read_text())
    except (ValueError, fastavro.schema.SchemaParseException) as exc:
        raise ValueError(f"schema file {path}: {exc}") from exc


_DEFAULT: Catalog | None = None


def default_catalog() -> Catalog:
    """The catalog of this package's schemas, loaded once."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_catalog()
    return _DEFAULT
