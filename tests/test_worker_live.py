"""The Faust worker against the real broker: frames in, verdicts out, bad bytes to the DLQ."""

from __future__ import annotations

import time

from skewscope.config import Settings
from skewscope.kafka.consumer import Event
from skewscope.kafka.producer import EventProducer
from tests.live import consume_until, isolated, worker
from tests.synthetic import collective_frames, topology


def _firing(events: list[Event]) -> dict[str, str]:
    return {
        e.record["entity"]: e.record["condition"]
        for e in events
        if e.name == "Verdict" and e.record["state"] == "firing"
    }


def test_worker_names_the_straggler_and_dead_letters_garbage(settings: Settings) -> None:
    settings = isolated(settings)
    topics = settings.topics
    with EventProducer(settings) as producer:
        for record in topology():
            producer.send(topics.topology, f"dep0/rank{record['rank']}", "TopologyRecord", record)
        producer.send_raw(topics.collectives, "dep0", b"\x00garbage that is no avro")
        for schema, record in collective_frames({5: 1.2}, seconds=8):
            producer.send(topics.collectives, "dep0", schema, record)
    with worker(settings, web_port=16066) as proc:
        verdicts = consume_until(
            settings, topics.verdicts, lambda ev: "dep0/rank5" in _firing(ev), 120, proc
        )
        letters = consume_until(settings, topics.dead_letter, lambda ev: len(ev) >= 1, 30)
        assert proc.poll() is None, "the worker must survive bad input"
    assert _firing(verdicts).get("dep0/rank5") == "tp-straggler"
    assert set(_firing(verdicts)) == {"dep0/rank5"}
    assert letters and letters[0].record["topic"] == topics.collectives
    assert letters[0].record["error_type"] in {"UnknownSchemaError", "TruncatedMessageError"}


def test_worker_exposes_pipeline_metrics(settings: Settings) -> None:
    import urllib.request

    settings = isolated(settings)
    topics = settings.topics
    with EventProducer(settings) as producer:
        for record in topology():
            producer.send(topics.topology, f"dep0/rank{record['rank']}", "TopologyRecord", record)
        producer.send_raw(topics.collectives, "dep0", b"\x00not avro")
        for schema, record in collective_frames({5: 1.2}, seconds=6):
            producer.send(topics.collectives, "dep0", schema, record)
    with worker(settings, web_port=16068) as proc:
        consume_until(settings, topics.verdicts, lambda ev: "dep0/rank5" in _firing(ev), 120, proc)
        text = ""
        for _ in range(20):
            text = urllib.request.urlopen("http://127.0.0.1:16068/metrics").read().decode()
            if "skewscope_watermark_delay_seconds{" in text:
                break
            time.sleep(0.5)
    assert 'skewscope_verdicts_total{condition="tp-straggler",state="firing"}' in text
    assert 'skewscope_dead_letters_total{consumer="worker"} 1.0' in text
    assert 'skewscope_watermark_delay_seconds{deployment="dep0"}' in text
    assert "skewscope_consumer_lag_messages{" in text
