"""Replay and backtest: captures, labels files, time ranges on the real broker, and the
promise that a backtest of a recorded live run gives exactly the verdicts live gave."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka import Producer
from confluent_kafka.cimpl import murmur2 as librdkafka_murmur2

from producers.sim.capture import CaptureWriter
from schemas.codec import AvroCodec
from skewscope.config import Settings, Topics
from skewscope.kafka.client_config import producer_config
from skewscope.kafka.producer import EventProducer
from streams.replay.capture import CaptureFormatError, CaptureReader, write_capture
from streams.replay.cli import main
from streams.replay.config import load_configuration
from streams.replay.history import HistoryReader, parse_time_ms
from streams.replay.labels import read_labels
from streams.replay.message import RawMessage, partition_for
from tests.live import consume_until, isolated, worker
from tests.synthetic import T0_NS, collective_frames, topology

CODEC = AvroCodec()


def straggler_label(end_s: float = 8.0) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "label_id": "s1",
        "scenario": "synthetic",
        "deployment": "dep0",
        "entity": "dep0/rank5",
        "condition": "tp-straggler",
        "onset_ns": T0_NS,
        "end_ns": T0_NS + int(end_s * 1e9),
        "severity": 0.2,
        "severity_unit": "slowdown_ratio",
        "cause": "rank 5 computes 20% longer",
    }


def synthetic_messages(topics: Topics, garbage: bool = False) -> list[RawMessage]:
    out = [
        RawMessage(
            topics.topology,
            0,
            i,
            f"dep0/rank{r['rank']}".encode(),
            CODEC.encode("TopologyRecord", r),
            0,
            "TopologyRecord",
        )
        for i, r in enumerate(topology())
    ]
    if garbage:
        out.append(
            RawMessage(topics.collectives, 0, 0, b"dep0", b"\x00not avro", 0, "CollectiveFrame")
        )
    for i, (schema, rec) in enumerate(collective_frames({5: 1.2}, seconds=8)):
        out.append(
            RawMessage(
                topics.collectives,
                0,
                i,
                b"dep0",
                CODEC.encode(schema, rec),
                T0_NS // 1_000_000 + i,
                schema,
            )
        )
    return out


def test_partition_of_a_key_is_where_murmur2_random_puts_it() -> None:
    for key in (b"dep0", b"llama70b-a", b"llama70b-b", b"x" * 33):
        for n in (1, 2, 4, 7):
            assert partition_for(key, n) == librdkafka_murmur2(key, n)


def test_capture_round_trip_keeps_bytes_and_order(tmp_path: Path) -> None:
    messages = synthetic_messages(Topics())
    path = tmp_path / "run.avro"
    assert write_capture(path, messages) == len(messages)
    back = list(CaptureReader(path, partitions=4))
    assert [(m.topic, m.key, m.value, m.schema, m.timestamp_ms) for m in back] == [
        (m.topic, m.key, m.value, m.schema, m.timestamp_ms) for m in messages
    ]
    assert {m.partition for m in back if m.key == b"dep0"} == {partition_for(b"dep0", 4)}


def test_simulator_capture_layout_is_read_too(tmp_path: Path) -> None:
    path = tmp_path / "sim.avro"
    with CaptureWriter(path) as writer:
        writer.write("telemetry.gpu", "llama70b-a", "GpuSampleFrame", b"\xc3\x01abc", 5_000_000)
    (m,) = CaptureReader(path, partitions=4)
    assert (m.key, m.timestamp_ms, m.schema) == (b"llama70b-a", 5, "GpuSampleFrame")


def test_a_file_that_is_no_capture_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_text("{}\n")
    with pytest.raises(CaptureFormatError, match="not an Avro object container"):
        list(CaptureReader(path, 4))


def test_labels_file_may_be_json_lines_or_avro(tmp_path: Path) -> None:
    label = straggler_label()
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_text(json.dumps(label) + "\n\n")
    avro = tmp_path / "labels.avro"
    schema = json.loads(Path("schemas/fault_label.avsc").read_text())
    with avro.open("wb") as handle:
        fastavro.writer(handle, fastavro.parse_schema(schema), [label])
    assert read_labels(jsonl) == [label] == read_labels(avro)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"entity": "x"}\n')
    with pytest.raises(ValueError, match="lacks"):
        read_labels(bad)


def test_times_are_iso_8601_or_epoch_ms() -> None:
    assert parse_time_ms("1790000000000") == 1_790_000_000_000
    assert parse_time_ms("2026-09-21T14:13:20Z") == 1_790_000_000_000
    assert parse_time_ms("2026-09-21T16:13:20+02:00") == 1_790_000_000_000
    assert parse_time_ms("2026-09-21T14:13:20") == 1_790_000_000_000  # naive is UTC
    with pytest.raises(ValueError, match="neither epoch milliseconds nor ISO-8601"):
        parse_time_ms("yesterday")


class _QueuedConsumer:
    """A consumer whose fetch queue holds ``queued`` messages, and ``arriving`` ones once a
    call blocks; records each call's timeout."""

    def __init__(self, queued: list[str], arriving: list[str]) -> None:
        self.queued, self.arriving = list(queued), list(arriving)
        self.calls: list[tuple[str, float]] = []

    def consume(self, count: int, timeout: float) -> list[str]:
        self.calls.append(("consume", timeout))
        out, self.queued = self.queued[:count], self.queued[count:]
        return out

    def poll(self, timeout: float) -> str | None:
        self.calls.append(("poll", timeout))
        self.queued += self.arriving
        self.arriving = []
        return self.queued.pop(0) if self.queued else None


def test_history_reads_what_is_fetched_without_waiting_for_a_full_batch() -> None:
    # consume(1000, 0.2) would sit out its 0.2 s on the first fetch and the tail of a range
    reader = HistoryReader.__new__(HistoryReader)
    fake = _QueuedConsumer(["a", "b", "c"], ["d", "e"])
    reader._consumer = fake  # type: ignore[assignment]
    taken: list[object] = list(reader._take(1000, 0.2))
    assert taken == ["a", "b", "c"] and fake.calls == [("consume", 0)]
    fake.calls.clear()
    taken = list(reader._take(1000, 0.2))  # nothing queued: block until one arrives
    assert taken == ["d", "e"]
    assert fake.calls == [("consume", 0), ("poll", 0.2), ("consume", 0)]
    fake.calls.clear()
    assert reader._take(1000, 0.2) == [] and fake.calls == [("consume", 0), ("poll", 0.2)]


def test_detector_table_is_applied_and_unknown_keys_are_named(tmp_path: Path) -> None:
    good = tmp_path / "det.toml"
    good.write_text("[detector]\nwindow_size_ns = 2_000_000_000\nanomaly_model = false\n")
    config = load_configuration("B", None, good)
    assert config.detector.window.size_ns == 2_000_000_000
    assert config.detector.anomaly_model is False
    bad = tmp_path / "bad.toml"
    bad.write_text("[detector]\nwindow_sise_ns = 1\n")
    with pytest.raises(ValueError, match="unknown \\[detector\\] settings \\['window_sise_ns'\\]"):
        load_configuration("B", None, bad)


def test_capture_backtest_names_the_straggler_and_compares_configs(tmp_path: Path) -> None:
    capture, labels = tmp_path / "run.avro", tmp_path / "labels.jsonl"
    write_capture(capture, synthetic_messages(Topics(), garbage=True))
    labels.write_text(json.dumps(straggler_label()) + "\n")
    slow = tmp_path / "slow.toml"  # configuration B: same runbook, 2 s windows
    slow.write_text(
        Path("models/runbook.toml").read_text() + "\n[detector]\nwindow_size_ns = 2_000_000_000\n"
    )
    out = tmp_path / "bt.json"
    rc = main(
        [
            "backtest",
            "--file",
            str(capture),
            "--labels",
            str(labels),
            "--json",
            str(out),
            "--compare",
            str(slow),
        ]
    )
    assert rc == 0
    doc = json.loads(out.read_text())
    a, b = doc["runs"]
    assert a["stats"]["bad_messages"] == 1 and a["stats"]["topology_records"] == 8
    assert a["stats"]["samples"] == b["stats"]["samples"] > 0
    firing = {
        v["entity"]
        for v in a["verdicts"]
        if v["state"] == "firing" and v["condition"] == "tp-straggler"
    }
    assert firing == {"dep0/rank5"}
    straggler = a["evaluation"]["conditions"]["tp-straggler"]
    assert straggler["recall"] == 1.0 and straggler["attribution"] == 1.0
    assert 0 < straggler["latency_p50_s"] < 3
    assert b["config"]["detector"]["window_size_ns"] == 2_000_000_000
    assert a["speed"]["samples_per_s"] > 0 and a["speed"]["x_real_time"] > 0


def test_capture_replay_is_deterministic(tmp_path: Path) -> None:
    capture = tmp_path / "run.avro"
    write_capture(capture, synthetic_messages(Topics()))
    out = tmp_path / "bt.json"
    assert (
        main(
            [
                "backtest",
                "--file",
                str(capture),
                "--json",
                str(out),
                "--compare",
                "models/runbook.toml",
            ]
        )
        == 0
    )
    a, b = json.loads(out.read_text())["runs"]
    assert a["verdicts"] and a["verdicts"] == b["verdicts"]


# -- against the real broker ---------------------------------------------------------------
def test_history_reads_exactly_the_time_range_merged_by_timestamp(
    settings: Settings, unique_topic: Any
) -> None:
    first, second = unique_topic("replay.a", partitions=2), unique_topic("replay.b", partitions=2)
    producer = Producer(producer_config(settings))
    base = 1_700_000_000_000
    for i in range(30):  # alternate topics; timestamps 10 ms apart
        topic = first if i % 2 == 0 else second
        producer.produce(topic, value=f"m{i}".encode(), key=b"dep0", timestamp=base + 10 * i)
    producer.produce(first, value=b"other", key=b"dep1", timestamp=base + 100)
    assert producer.flush(30) == 0
    reader = HistoryReader(settings, [first, second], base + 50, base + 200)
    assert reader.total == 16  # m5..m19 and "other"
    got = list(reader)
    dep0 = [m for m in got if m.key == b"dep0"]
    assert [m.value for m in dep0] == [f"m{i}".encode() for i in range(5, 20)]
    assert all(m.partition == partition_for(b"dep0", 2) for m in dep0)
    assert [m.value for m in got if m.key == b"dep1"] == [b"other"]


def _status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as response:
        return json.loads(response.read())


def test_backtest_of_a_live_run_gives_exactly_the_live_verdicts(
    settings: Settings, tmp_path: Path
) -> None:
    settings = isolated(settings)
    topics = settings.topics
    from_ms = time.time_ns() // 1_000_000 - 1
    frames = collective_frames({5: 1.2}, seconds=8)
    with EventProducer(settings) as producer:
        for record in topology():
            producer.send(topics.topology, f"dep0/rank{record['rank']}", "TopologyRecord", record)
        producer.send_raw(topics.collectives, "dep0", b"\x00garbage that is no avro")
        for schema, record in frames:
            producer.send(topics.collectives, "dep0", schema, record)
    to_ms = time.time_ns() // 1_000_000 + 1
    # The backtest runs first, on the recorded topics alone; the live worker then consumes
    # the same topics, and must publish exactly what the backtest said.
    out = tmp_path / "bt.json"
    config = tmp_path / "settings.toml"
    config.write_text(
        f'[skewscope]\nkafka_bootstrap = "{settings.kafka_bootstrap}"\n'
        f'topic_prefix = "{settings.topic_prefix}"\n'
        f"telemetry_partitions = {settings.telemetry_partitions}\n"
    )
    assert (
        main(
            [
                "--config",
                str(config),
                "backtest",
                "--from",
                str(from_ms),
                "--to",
                str(to_ms),
                "--json",
                str(out),
                "--workers",  # the forked path (the result is the same for 1: parallel tests)
                "2",
            ]
        )
        == 0
    )
    (run,) = json.loads(out.read_text())["runs"]
    assert run["stats"]["bad_messages"] == 1
    expected = run["verdicts"]
    assert any(v["condition"] == "tp-straggler" and v["entity"] == "dep0/rank5" for v in expected)
    assert any(v["condition"] == "heartbeat" for v in expected)
    port = 16166
    with worker(settings, web_port=port) as proc:
        live = consume_until(
            settings, topics.verdicts, lambda ev: len(ev) >= len(expected), 120, proc
        )
        deadline = time.monotonic() + 60
        while _status(port)["stats"]["frames"] < len(frames) + 1:
            assert time.monotonic() < deadline, "the worker did not consume every frame"
            time.sleep(0.2)  # polling a web page: no event to wait on
        published = _status(port)["stats"]["verdicts"]
    assert published == len(live), "the live worker published verdicts the backtest did not"

    def ordered(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(records, key=lambda r: (r["entity"], r["version"]))

    assert ordered([e.record for e in live]) == ordered(expected)


def test_history_replay_leaves_no_consumer_group_behind(
    settings: Settings, unique_topic: Any
) -> None:
    from confluent_kafka.admin import AdminClient

    topic = unique_topic("replay.groups")
    producer = Producer(producer_config(settings))
    producer.produce(topic, value=b"x", key=b"k", timestamp=1_700_000_000_000)
    assert producer.flush(30) == 0
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    before = {g.group_id for g in admin.list_consumer_groups().result(timeout=30).valid}
    assert [m.value for m in HistoryReader(settings, [topic], 0, None)] == [b"x"]
    after = {g.group_id for g in admin.list_consumer_groups().result(timeout=30).valid}
    assert {g for g in after - before if g.startswith("skewscope-replay")} == set()
