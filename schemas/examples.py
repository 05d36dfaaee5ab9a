"""A valid example record of every schema, built from the schema itself.

Used by the docs and by round-trip tests; packed columns get ``rows`` values each, so every
example is also a well-formed frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from schemas.catalog import default_catalog
from schemas.columns import column_specs, pack


def _value(avro_type: Any, name: str, rows: int) -> Any:
    if isinstance(avro_type, list):  # union: first non-null branch
        branches = [t for t in avro_type if t != "null"]
        return _value(branches[0], name, rows) if branches else None
    if isinstance(avro_type, dict):
        kind = avro_type["type"]
        if kind == "enum":
            return avro_type["symbols"][0]
        if kind == "array":
            return [_value(avro_type["items"], name, rows) for _ in range(2)]
        if kind == "map":
            return {"a_ns": 1.5, "b_ratio": 0.25}
        if kind == "record":
            return {f["name"]: _value(f["type"], f["name"], rows) for f in avro_type["fields"]}
        return _value(kind, name, rows)
    return {
        "string": f"ex-{name}",
        "int": rows if name.startswith("n_") else 3,
        "long": 1_790_000_000_000_000_000,
        "double": 0.5,
        "float": 0.5,
        "boolean": True,
        "bytes": b"\x01\x02",
        "null": None,
    }[avro_type]


def example(name: str, rows: int = 3) -> dict[str, Any]:
    """A valid record of schema ``name`` with ``rows`` rows in every packed column."""
    schema = default_catalog().reader(name).parsed
    record = {f["name"]: _value(f["type"], f["name"], rows) for f in schema["fields"]}
    specs = column_specs(name)
    columns = {}
    for spec in specs:
        length = 1
        for count in spec.count_fields:
            length *= record[count]
        columns[spec.name] = np.arange(length).astype(spec.dtype)
    scalars = {k: v for k, v in record.items() if k not in columns}
    return pack(name, columns, **scalars)
