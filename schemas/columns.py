"""Packed columns of telemetry frames: numpy arrays in Avro ``bytes`` fields.

High-rate frames carry one ``bytes`` field per column holding a packed little-endian array.
The schema is the single source of truth for each column's type and length: its ``doc``
starts with ``<dtype>[<count field>]`` (or ``<dtype>[<a> * <b>]`` for row-major matrices),
e.g. ``int64[n_rows] ...``. Decoding is ``np.frombuffer`` (no per-sample Python object);
lengths are checked against the count fields and a mismatch raises
:class:`~schemas.errors.FrameShapeError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.catalog import Catalog, default_catalog
from schemas.errors import FrameShapeError

_DOC_SHAPE = re.compile(r"^(int8|int32|int64|float32|float64)\[(\w+)(?: \* (\w+))?\]")
_DTYPES: dict[str, np.dtype[Any]] = {
    "int8": np.dtype("<i1"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
}


@dataclass(frozen=True)
class ColumnSpec:
    """One packed column: its dtype and the count fields whose product is its length."""

    name: str
    dtype: np.dtype[Any]
    count_fields: tuple[str, ...]


_SPECS: dict[tuple[int, str], tuple[ColumnSpec, ...]] = {}
# names of the packed columns of each record, same keys as _SPECS (for pack's unknown check)
_NAMES: dict[tuple[int, str], frozenset[str]] = {}


def _parse_specs(schema: dict[str, Any]) -> tuple[ColumnSpec, ...]:
    specs = []
    for fld in schema["fields"]:
        if fld["type"] != "bytes":
            continue
        match = _DOC_SHAPE.match(fld.get("doc", ""))
        if match:
            counts = tuple(c for c in match.group(2, 3) if c)
            specs.append(ColumnSpec(fld["name"], _DTYPES[match.group(1)], counts))
    return tuple(specs)


def column_specs(name: str, catalog: Catalog | None = None) -> tuple[ColumnSpec, ...]:
    """The packed columns of record ``name``, in schema order (parsed once per catalog)."""
    catalog = catalog or default_catalog()
    key = (id(catalog), name)
    specs = _SPECS.get(key)
    if specs is None:
        specs = _SPECS[key] = _parse_specs(catalog.reader(name).parsed)
        _NAMES[key] = frozenset(s.name for s in specs)
    return specs


def _layout(name: str) -> tuple[tuple[ColumnSpec, ...], frozenset[str]]:
    """The packed columns of record ``name`` in the default catalog, and their names."""
    specs = column_specs(name)
    return specs, _NAMES[(id(default_catalog()), name)]


def _expected_len(spec: ColumnSpec, record: dict[str, Any]) -> int:
    length = 1
    for count in spec.count_fields:
        value = record.get(count)
        if not isinstance(value, int) or value < 0:
            raise FrameShapeError(f"count field {count}={value!r} is not a non-negative int")
        length *= value
    return length


def unpack(name: str, record: dict[str, Any]) -> dict[str, np.ndarray]:
    """Return every packed column of ``record`` as a read-only numpy array, lengths checked."""
    out: dict[str, np.ndarray] = {}
    # columns of a record share a few count-field tuples: check each tuple's fields once
    lengths: dict[tuple[str, ...], int] = {}
    for spec in column_specs(name):
        raw = record.get(spec.name, b"")
        expected = lengths.get(spec.count_fields)
        if expected is None:
            expected = lengths[spec.count_fields] = _expected_len(spec, record)
        if len(raw) != expected * spec.dtype.itemsize:
            raise FrameShapeError(
                f"{name}.{spec.name}: {len(raw)} bytes, expected {expected} x "
                f"{spec.dtype.itemsize} ({'*'.join(spec.count_fields)}={expected})"
            )
        out[spec.name] = np.frombuffer(raw, dtype=spec.dtype)
    return out


def pack(name: str, columns: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """Build a record of ``name`` from scalar ``fields`` and array ``columns``.

    Count fields must be given in ``fields``; each column is cast to its dtype and checked.
    Columns absent from ``columns`` are written empty, which is valid only when their count
    is zero (optional column groups such as sampled detail).
    """
    record = dict(fields)
    # columns of a record share a few count-field tuples: check each tuple's fields once
    lengths: dict[tuple[str, ...], int] = {}
    specs, known = _layout(name)
    for spec in specs:
        array = np.ascontiguousarray(columns.get(spec.name, ()), dtype=spec.dtype)
        expected = lengths.get(spec.count_fields)
        if expected is None:
            expected = lengths[spec.count_fields] = _expected_len(spec, record)
        if array.size != expected:
            raise FrameShapeError(
                f"{name}.{spec.name}: {array.size} values, expected {expected} "
                f"({'*'.join(spec.count_fields)})"
            )
        record[spec.name] = array.tobytes()
    if not known.issuperset(columns):
        unknown = set(columns) - known
        raise FrameShapeError(f"{name}: no packed columns named {sorted(unknown)}")
    return record
