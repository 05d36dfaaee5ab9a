"""Hypothesis strategies that draw arbitrary valid records of an Avro schema."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


def records(avro_type: Any) -> st.SearchStrategy[Any]:
    """A strategy for values of a parsed Avro type (NaN excluded: it never equals itself)."""
    if isinstance(avro_type, list):
        return st.one_of([records(t) for t in avro_type])
    if isinstance(avro_type, dict):
        kind = avro_type["type"]
        if kind == "record":
            return st.fixed_dictionaries(
                {f["name"]: records(f["type"]) for f in avro_type["fields"]}
            )
        if kind == "enum":
            return st.sampled_from(avro_type["symbols"])
        if kind == "array":
            return st.lists(records(avro_type["items"]), max_size=5)
        if kind == "map":
            return st.dictionaries(st.text(max_size=8), records(avro_type["values"]), max_size=5)
        return records(kind)
    simple: dict[str, st.SearchStrategy[Any]] = {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(*_INT32),
        "long": st.integers(*_INT64),
        "float": st.floats(allow_nan=False, width=32),
        "double": st.floats(allow_nan=False),
        "string": st.text(max_size=20),
        "bytes": st.binary(max_size=40),
    }
    return simple[avro_type]
