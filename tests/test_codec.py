"""The Avro codec without a broker: framing, fingerprints, evolution, typed errors."""

from __future__ import annotations

import contextlib
import copy
import json
import struct

import numpy as np
import pytest
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro.schema import fingerprint as fastavro_fingerprint
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.catalog import SCHEMA_DIR, Catalog, default_catalog, parse
from schemas.codec import AvroCodec
from schemas.columns import column_specs, pack, unpack
from schemas.errors import (
    CodecError,
    FrameShapeError,
    MalformedRecordError,
    TruncatedMessageError,
    UnknownFormatError,
    UnknownSchemaError,
)
from schemas.examples import example
from tests.avro_strategies import records

ALL_SCHEMAS = default_catalog().names()
TELEMETRY = [
    "EngineRequestFrame",
    "EngineSampleFrame",
    "CollectiveFrame",
    "GpuSampleFrame",
    "NicCounterFrame",
    "DpuFrame",
]


def test_catalog_has_every_event_type_of_the_design() -> None:
    assert set(ALL_SCHEMAS) == {
        *TELEMETRY,
        "TopologyRecord",
        "FaultLabel",
        "FeatureWindow",
        "Verdict",
        "DeadLetter",
    }


@pytest.mark.parametrize("name", ALL_SCHEMAS)
def test_every_field_is_documented(name: str) -> None:
    raw = json.loads((SCHEMA_DIR / f"{_file_of(name)}").read_text())
    assert raw["namespace"] == "io.skewscope.v1" and raw.get("doc")
    for field in raw["fields"]:
        assert field.get("doc"), f"{name}.{field['name']} has no doc"
    assert raw["fields"][0]["name"] == "schema_version"


@pytest.mark.parametrize("name", TELEMETRY)
def test_every_telemetry_record_has_a_source_and_columns(name: str) -> None:
    fields = {f["name"]: f for f in default_catalog().reader(name).parsed["fields"]}
    assert fields["source"]["type"]["name"] == "io.skewscope.v1.Source"
    assert column_specs(name), f"{name} has no packed columns"


def _file_of(name: str) -> str:
    for path in SCHEMA_DIR.glob("*.avsc"):
        if json.loads(path.read_text())["name"] == name:
            return path.name
    raise AssertionError(name)


def test_fingerprint_matches_fastavro_and_the_spec_vector() -> None:
    assert parse('"int"').fingerprint_bytes.hex() == "8f5c393f1ad57572"
    for name in ALL_SCHEMAS:
        schema = default_catalog().reader(name)
        assert schema.fingerprint_bytes.hex() == fastavro_fingerprint(
            schema.canonical, "CRC-64-AVRO"
        )


@pytest.mark.parametrize("name", ALL_SCHEMAS)
def test_single_object_round_trip(name: str) -> None:
    codec = AvroCodec()
    record = example(name)
    data = codec.encode(name, record)
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == default_catalog().reader(name).fingerprint_bytes
    assert codec.decode(data).record == record


@pytest.mark.parametrize("name", ALL_SCHEMAS)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_any_valid_record_round_trips(name: str, data: st.DataObject) -> None:
    schema = default_catalog().reader(name).parsed
    record = data.draw(records(schema))
    codec = AvroCodec()
    assert codec.decode(codec.encode(name, record)).record == record


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(max_size=200))
def test_garbage_raises_a_codec_error_never_anything_else(garbage: bytes) -> None:
    with contextlib.suppress(CodecError):
        AvroCodec().decode(garbage)


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(min_value=0, max_value=10_000), name=st.sampled_from(ALL_SCHEMAS))
def test_truncated_messages_raise_typed_errors(cut: int, name: str) -> None:
    data = AvroCodec().encode(name, example(name))
    cut = cut % len(data)
    with pytest.raises(CodecError):
        AvroCodec().decode(data[:cut])


def test_errors_say_what_was_wrong() -> None:
    codec = AvroCodec()
    with pytest.raises(UnknownFormatError, match="first byte 0x7b"):
        codec.decode(b'{"json": true}')
    with pytest.raises(UnknownSchemaError, match="unknown schema fingerprint 0102030405060708"):
        codec.decode(b"\xc3\x01" + bytes(range(1, 9)) + b"\x00")
    with pytest.raises(TruncatedMessageError):
        codec.decode(b"\xc3\x01\x01")
    with pytest.raises(TruncatedMessageError, match="empty"):
        codec.decode(b"")
    good = codec.encode("DeadLetter", example("DeadLetter"))
    with pytest.raises(MalformedRecordError, match="trailing"):
        codec.decode(good + b"\x00\x00")
    with pytest.raises(UnknownSchemaError, match="no registry"):
        codec.decode(b"\x00\x00\x00\x00\x07" + b"\x02")


def test_newer_reader_with_defaulted_field_reads_old_data() -> None:
    """Schema evolution: a v1 producer's message is read with a v2 schema's default."""
    v1 = json.loads((SCHEMA_DIR / "fault_label.avsc").read_text())
    v2 = copy.deepcopy(v1)
    v2["fields"].append(
        {"name": "detector_hint", "type": "string", "default": "none", "doc": "Added in v2."}
    )
    old_bytes = AvroCodec().encode("FaultLabel", example("FaultLabel"))

    v2_reader = Catalog()
    v2_reader.add(parse(v1), reader=False)  # known writer
    v2_reader.add(parse(v2))  # current reader
    decoded = AvroCodec(catalog=v2_reader).decode(old_bytes)
    assert decoded.name == "FaultLabel"
    assert decoded.record["detector_hint"] == "none"
    assert decoded.record["label_id"] == example("FaultLabel")["label_id"]

    unaware = Catalog()
    unaware.add(parse(v2))  # v1 writer unknown: a clear error, not garbage
    with pytest.raises(UnknownSchemaError, match="unknown schema fingerprint"):
        AvroCodec(catalog=unaware).decode(old_bytes)


def test_registry_wire_format_interoperates_with_confluent_deserializer() -> None:
    codec = AvroCodec(registry_url="mock://codec-test")
    record = example("Verdict")
    data = codec.encode("Verdict", record, topic="skew.verdicts")
    assert data[0] == 0 and len(data) > 5
    assert codec.decode(data).record == record
    deserializer = AvroDeserializer(codec._registry)
    ctx = SerializationContext("skew.verdicts", MessageField.VALUE)
    assert deserializer(data, ctx) == record
    # a codec sharing the registry but starting cold fetches the writer schema by id
    (schema_id,) = struct.unpack(">I", data[1:5])
    cold = AvroCodec(registry_url="mock://codec-test")
    cold._registry = codec._registry
    assert cold.decode(data).record == record
    assert schema_id >= 1
    # single-object messages still decode in registry mode
    assert codec.decode(AvroCodec().encode("Verdict", record)).record == record


def test_packed_columns_round_trip_through_numpy() -> None:
    n = 5
    columns = {"ts_ns": np.arange(n) * 10_000_000, "counter_values": np.arange(2 * n)}
    record = pack(
        "NicCounterFrame",
        columns,
        source="nic",
        deployment="d",
        node="n",
        clock_id="n/host",
        frame_seq=1,
        port="mlx5_0/1",
        plane="east_west",
        fabric="roce",
        n_samples=n,
        n_counters=2,
        counter_names=["rx_pause", "tx_pause"],
    )
    codec = AvroCodec()
    decoded = codec.decode(codec.encode("NicCounterFrame", record)).record
    cols = unpack("NicCounterFrame", decoded)
    assert cols["counter_values"].reshape(2, n)[1].tolist() == [5, 6, 7, 8, 9]
    assert cols["ts_ns"].dtype == np.int64


def test_frame_whose_columns_disagree_with_counts_is_rejected() -> None:
    record = example("GpuSampleFrame", rows=4)
    record["n_samples"] = 5
    with pytest.raises(FrameShapeError, match=r"GpuSampleFrame\.ts_ns"):
        unpack("GpuSampleFrame", record)
    with pytest.raises(FrameShapeError):
        pack("GpuSampleFrame", {"ts_ns": [1, 2]}, n_samples=3)
    with pytest.raises(FrameShapeError, match="no packed columns"):
        pack("GpuSampleFrame", {"bogus": []}, n_samples=0)


def test_record_that_does_not_fit_its_schema_is_a_codec_error() -> None:
    record = example("DeadLetter")
    record["offset"] = "not a number"
    with pytest.raises(CodecError, match="DeadLetter"):
        AvroCodec().encode("DeadLetter", record)


def test_data_written_before_a_field_was_added_still_decodes() -> None:
    """schemas/history keeps earlier versions as writer schemas: an EngineSampleFrame from
    before kv_capacity_tokens decodes with the default catalog, the field at its default."""
    v1 = parse((SCHEMA_DIR / "history" / "engine_sample_frame.v1.avsc").read_text())
    old = Catalog()
    old.add(v1)
    record = example("EngineSampleFrame")
    record.pop("kv_capacity_tokens", None)
    old_bytes = AvroCodec(catalog=old).encode("EngineSampleFrame", record)
    decoded = AvroCodec().decode(old_bytes).record
    assert decoded["kv_capacity_tokens"] == 0
    assert decoded["num_running"] == record["num_running"]


def test_every_historical_schema_is_an_earlier_version_of_a_current_one() -> None:
    catalog = default_catalog()
    history = sorted((SCHEMA_DIR / "history").glob("*.avsc"))
    assert history
    for path in history:
        known = parse(path.read_text())
        assert known.full_name in catalog.readers, path
        assert known.fingerprint in catalog.writers, path
        assert known.fingerprint != catalog.readers[known.full_name].fingerprint, path
