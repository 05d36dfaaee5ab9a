"""The event contracts through the real broker: round trips, dead letters, partitioning."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from aiokafka.partitioner import DefaultPartitioner

from schemas.catalog import default_catalog
from schemas.codec import AvroCodec
from schemas.examples import example
from skewscope.config import Settings, Topics
from skewscope.kafka.consumer import DecodingConsumer, Event
from skewscope.kafka.producer import EventProducer

ALL = default_catalog().names()


def _drain(consumer: DecodingConsumer, want: int, max_polls: int = 60) -> list[Event]:
    events: list[Event] = []
    for _ in range(max_polls):
        events += consumer.poll_batch(500, timeout_s=0.5)
        if len(events) >= want:
            break
    return events


def _with_topics(settings: Settings, **names: str) -> Settings:
    return dataclasses.replace(settings, topics=dataclasses.replace(Topics(), **names))


def test_every_schema_round_trips_through_the_broker(
    settings: Settings, unique_topic: Callable[..., str]
) -> None:
    topic = unique_topic("roundtrip", partitions=2)
    dlq = unique_topic("dlq")
    settings = _with_topics(settings, dead_letter=dlq)
    records = {name: example(name) for name in ALL}
    with EventProducer(settings) as producer:
        for name, record in records.items():
            producer.send(topic, "dep0", name, record)
    consumer = DecodingConsumer(settings, [topic], group_id=f"g-{topic}")
    events = _drain(consumer, len(ALL))
    consumer.close()
    assert sorted(e.name for e in events) == sorted(ALL)
    for event in events:
        assert event.record == records[event.name], event.name
        assert event.key == b"dep0"


def test_garbage_and_truncated_messages_land_in_the_dlq_and_consumption_goes_on(
    settings: Settings, unique_topic: Callable[..., str]
) -> None:
    topic = unique_topic("mixed")
    dlq = unique_topic("dlq")
    settings = _with_topics(settings, dead_letter=dlq)
    good = AvroCodec().encode("FaultLabel", example("FaultLabel"))
    bad = {
        b"not avro at all": "UnknownFormatError",
        good[:7]: "TruncatedMessageError",
        good[:-3]: "TruncatedMessageError",
        b"\xc3\x01" + b"\xff" * 8 + b"\x00": "UnknownSchemaError",
    }
    with EventProducer(settings) as producer:
        producer.send_raw(topic, "k", good)
        for value in bad:
            producer.send_raw(topic, "k", value)
        producer.send_raw(topic, "k", good)
    consumer = DecodingConsumer(settings, [topic], group_id=f"g-{topic}", name="test-worker")
    events = _drain(consumer, 2)
    consumer.commit()
    consumer.close()
    assert [e.name for e in events] == ["FaultLabel", "FaultLabel"]
    assert consumer.dead_letters == len(bad)

    reader = DecodingConsumer(settings, [dlq], group_id=f"g-{dlq}")
    letters = _drain(reader, len(bad))
    reader.close()
    assert len(letters) == len(bad)
    for letter in letters:
        record = letter.record
        assert letter.name == "DeadLetter"
        assert record["topic"] == topic and record["consumer"] == "test-worker"
        assert record["error_type"] == bad[record["value"]]
        assert record["reason"] and record["offset"] in range(1, 1 + len(bad))


@pytest.mark.parametrize("partitions", [4, 7])
def test_confluent_key_lands_on_the_partition_faust_computes(
    settings: Settings, unique_topic: Callable[..., str], partitions: int
) -> None:
    topic = unique_topic("partitioning", partitions=partitions)
    keys = [f"deployment-{i}".encode() for i in range(64)] + [b"dep0", b"llama70b-a"]
    producer = EventProducer(settings, record_partitions=True)
    for key in keys:
        producer.send(topic, key, "DeadLetter", example("DeadLetter"))
    producer.flush()
    faust_partitioner = DefaultPartitioner()  # what Faust (aiokafka) uses for keyed sends
    all_partitions = list(range(partitions))
    landed = {key: producer.stats.partitions[(topic, key)] for key in keys}
    expected = {key: faust_partitioner(key, all_partitions, all_partitions) for key in keys}
    assert landed == expected
    assert len(set(landed.values())) > 1  # the keys really spread


def test_registry_wire_format_round_trips_through_the_broker(
    settings: Settings, unique_topic: Callable[..., str]
) -> None:
    """With a schema registry configured, producers write the registry's wire format (magic
    0, schema id) and consumers decode it by id: every schema through the real broker."""
    topic = unique_topic("registry", partitions=2)
    settings = dataclasses.replace(settings, schema_registry_url="mock://kafka-registry-test")
    writer = AvroCodec(registry_url=settings.schema_registry_url)
    reader = AvroCodec(registry_url=settings.schema_registry_url)
    reader._registry = writer._registry  # one registry (the mock keeps a store per client)
    records = {name: example(name) for name in ALL}
    with EventProducer(settings, codec=writer) as producer:
        for name, record in records.items():
            producer.send(topic, "dep0", name, record)
    consumer = DecodingConsumer(settings, [topic], group_id=f"g-{topic}", codec=reader)
    events = _drain(consumer, len(ALL))
    consumer.close()
    assert consumer.dead_letters == 0
    assert sorted(e.name for e in events) == sorted(ALL)
    for event in events:
        assert event.record == records[event.name], event.name
    assert writer._registry.get_subjects() == [f"{topic}-value"]
    assert writer.encode("Verdict", records["Verdict"], topic=topic)[0] == 0  # registry magic
