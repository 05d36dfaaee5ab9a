"""The scrape loop: retries with backoff, failures counted not raised, and frames from a
capture served over HTTP landing in a real Kafka topic, decoded back equal."""

from __future__ import annotations

import argparse
import dataclasses
import http.server
import socket
import threading
import time
import urllib.error
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer

from producers.adapters.cli import add_adapter_commands
from producers.adapters.common import Frame, FrameContext
from producers.adapters.dcgm import dcgm_frames
from producers.adapters.scrape import (
    NicOptions,
    ProducerSink,
    Scraper,
    converter,
    fetch_url,
    make_fetch,
)
from producers.adapters.step_timer import StepTimer
from producers.adapters.tgi import tgi_frames
from producers.adapters.vllm import vllm_frames
from schemas.codec import AvroCodec
from schemas.columns import unpack
from skewscope.config import Settings, load_settings
from skewscope.kafka.producer import EventProducer

FORMATS_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "formats"
VLLM = FORMATS_DIR / "vllm" / "vllm-v0-metrics-opt125m.datadog-fixture.txt"
DCGM = FORMATS_DIR / "dcgm-exporter" / "datadog-dcgm-fixture-metrics.txt"
FIXED_TS_NS = 1_750_000_000_000_000_000


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, bytes]] = {}
    hits: dict[str, int] = {}

    def do_GET(self) -> None:
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        status, body = self.routes.get(self.path, (404, b"no such path"))
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_base() -> Iterator[str]:
    """A local HTTP server on 127.0.0.1, port 0, serving the captures."""
    _Handler.routes = {
        "/vllm/metrics": (200, VLLM.read_bytes()),
        "/dcgm/metrics": (200, DCGM.read_bytes()),
        "/broken": (500, b"internal error"),
    }
    _Handler.hits = {}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/metrics"


class _Recorder:
    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def __call__(self, frame: Frame) -> None:
        self.frames.append(frame)


def _scraper(
    fetch: Callable[[], str], fmt: str = "vllm", **kw: Any
) -> tuple[Scraper, _Recorder, list[float]]:
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return False

    sink = _Recorder()
    scraper = Scraper(
        fetch,
        converter(fmt),
        sink,
        FrameContext("dep-a", "node07"),
        wait=wait,
        clock_ns=lambda: FIXED_TS_NS,
        **kw,
    )
    return scraper, sink, waits


# -- without Kafka ----------------------------------------------------------------------------
def test_fetch_failures_are_retried_with_doubling_backoff_then_succeed() -> None:
    calls: Iterator[Exception | str] = iter(
        [OSError("refused"), TimeoutError("slow"), VLLM.read_text()]
    )

    def fetch() -> str:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    scraper, sink, waits = _scraper(fetch, retries=3, backoff_s=0.25)
    assert scraper.scrape_once() is True
    assert waits == [0.25, 0.5]
    assert scraper.stats.fetch_attempts_failed == 2
    assert (scraper.stats.scrapes_ok, scraper.stats.scrapes_failed) == (1, 0)
    assert len(sink.frames) == 1


def test_unreachable_endpoint_is_counted_as_failed_scrapes_and_never_raises() -> None:
    fetch = make_fetch(url=_closed_port_url(), timeout_s=1.0)
    scraper, sink, waits = _scraper(fetch, retries=2, backoff_s=0.1, max_backoff_s=0.15)
    stats = scraper.run(max_scrapes=3)
    assert (stats.scrapes_ok, stats.scrapes_failed) == (0, 3)
    assert stats.fetch_attempts_failed == 9
    assert waits.count(0.1) == 3 and waits.count(0.15) == 3  # capped backoff
    assert "URLError" in stats.last_error and sink.frames == []


def test_http_error_status_fails_the_scrape(http_base: str) -> None:
    with pytest.raises(urllib.error.HTTPError):
        fetch_url(f"{http_base}/broken", 1.0)
    scraper, _, _ = _scraper(make_fetch(url=f"{http_base}/broken"), retries=1, backoff_s=0)
    assert scraper.scrape_once() is False
    assert _Handler.hits["/broken"] == 3  # the direct call, then 1 + 1 retry
    assert "HTTP Error 500" in scraper.stats.last_error


def test_conversion_error_is_counted_and_the_loop_goes_on(tmp_path: Path) -> None:
    capture = tmp_path / "ethtool.txt"
    capture.write_text("NIC statistics:\n     rx_bytes: 5\n")
    scraper, sink, _ = _scraper(make_fetch(file=str(capture)), fmt="ethtool")
    stats = scraper.run(max_scrapes=2)  # no --port: every conversion fails
    assert (stats.scrapes_ok, stats.scrapes_failed) == (0, 2)
    assert "needs the port id" in stats.last_error
    scraper.nic = NicOptions(port="eth2")
    assert scraper.scrape_once() and sink.frames[0].record["port"] == "eth2"


def test_skipped_lines_of_a_scrape_are_counted(tmp_path: Path) -> None:
    capture = tmp_path / "metrics.prom"
    capture.write_text('vllm:num_requests_running 2\nvllm:num_requests_waiting{x="\n')
    scraper, sink, _ = _scraper(make_fetch(file=str(capture)))
    assert scraper.scrape_once()
    assert scraper.stats.skipped_lines == 1 and len(sink.frames) == 1


def test_command_source_reads_stdout_and_a_failing_command_is_a_failed_fetch() -> None:
    ok = make_fetch(command="printf 'NIC statistics:\\n     tx_bytes: 9\\n'", timeout_s=5)
    scraper, sink, _ = _scraper(ok, fmt="ethtool", nic=NicOptions(port="eth0"))
    assert scraper.scrape_once()
    assert sink.frames[0].record["counter_names"] == ["tx_bytes"]
    bad, _, _ = _scraper(make_fetch(command="false"), fmt="ethtool", retries=0)
    assert bad.scrape_once() is False and "exited 1" in bad.stats.last_error


def test_make_fetch_refuses_ambiguous_or_bad_sources() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        make_fetch(url="http://x", file="y")
    with pytest.raises(ValueError, match="http"):
        make_fetch(url="/tmp/metrics")


def test_stop_event_ends_the_loop_during_the_interval() -> None:
    stop = threading.Event()
    scraper = Scraper(
        lambda: VLLM.read_text(),
        converter("vllm"),
        _Recorder(),
        FrameContext("d", "n"),
        interval_s=3600,
        stop=stop,
    )
    worker = threading.Thread(target=scraper.run)
    worker.start()
    while scraper.stats.scrapes_ok == 0:
        time.sleep(0.005)
    stop.set()
    worker.join(timeout=10)
    assert not worker.is_alive() and scraper.stats.scrapes_ok == 1


# -- with Kafka -------------------------------------------------------------------------------
def _consume(settings: Settings, topic: str, n: int) -> list[tuple[bytes | None, bytes]]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"test-scrape-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got: list[tuple[bytes | None, bytes]] = []
    deadline = time.monotonic() + 30  # a guard against a hang, not a timing assertion
    try:
        while len(got) < n and time.monotonic() < deadline:
            for msg in consumer.consume(n - len(got), 0.5):
                if msg.error() is None:
                    got.append((msg.key(), msg.value() or b""))
    finally:
        consumer.close()
    return got


def test_scraped_frames_land_in_kafka_and_decode_equal(
    http_base: str, kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    base = dataclasses.replace(load_settings(), kafka_bootstrap=kafka_bootstrap)
    topics = dataclasses.replace(
        base.topics, engine_samples=unique_topic("test.engine"), gpu=unique_topic("test.gpu")
    )
    settings = dataclasses.replace(base, topics=topics)
    producer = EventProducer(settings)
    sink = ProducerSink(producer, topics)
    runs = {}
    for fmt, path in (("vllm", "/vllm/metrics"), ("dcgm", "/dcgm/metrics")):
        scraper = Scraper(
            make_fetch(url=f"{http_base}{path}", timeout_s=2),
            converter(fmt),
            sink,
            FrameContext("llama70b-a", "node07", replica="r0"),
            interval_s=0,
            clock_ns=lambda: FIXED_TS_NS,
        )
        runs[fmt] = scraper.run(max_scrapes=2)
    producer.flush()
    assert [(s.scrapes_ok, s.frames_sent) for s in runs.values()] == [(2, 2), (2, 2)]

    codec = AvroCodec()
    for fmt, topic, build, capture in (
        ("vllm", topics.engine_samples, vllm_frames, VLLM),
        ("dcgm", topics.gpu, dcgm_frames, DCGM),
    ):
        messages = _consume(settings, topic, 2)
        assert len(messages) == 2, f"{fmt}: expected 2 frames in {topic}"
        expected_ctx = FrameContext("llama70b-a", "node07", replica="r0")
        expected = [
            build(capture.read_text(), expected_ctx, FIXED_TS_NS).frames[0] for _ in range(2)
        ]
        for (key, value), want in zip(messages, expected, strict=True):
            assert key == b"llama70b-a"
            decoded = codec.decode(value)
            assert decoded.name == want.schema
            got_cols = unpack(decoded.name, decoded.record)
            want_cols = unpack(want.schema, want.record)
            for column, array in want_cols.items():
                assert got_cols[column].tobytes() == array.tobytes(), f"{fmt}.{column}"
            scalars = {k: v for k, v in want.record.items() if k not in want_cols}
            assert {k: decoded.record[k] for k in scalars} == scalars
    assert _Handler.hits == {"/vllm/metrics": 2, "/dcgm/metrics": 2}


def test_cli_registers_produce_scrape_and_reports_failure(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP", kafka_bootstrap)
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_adapter_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            "produce",
            "scrape",
            "--url",
            _closed_port_url(),
            "--format",
            "dcgm",
            "--deployment",
            "dep-a",
            "--node",
            "node07",
            "--count",
            "1",
            "--retries",
            "0",
            "--timeout-s",
            "1",
        ]
    )
    assert args.interval_s == 1.0 and args.format == "dcgm"
    assert args.func(args) == 1  # the only scrape failed; nothing was produced


# -- step duration from two scrapes -------------------------------------------------------------
def test_step_timer_means_the_durations_between_scrapes() -> None:
    timer = StepTimer()
    assert timer.step_ns("e", 1.0, 10) == -1  # first scrape: nothing to difference
    assert timer.step_ns("e", 1.5, 20) == 50_000_000  # 0.5 s over 10 observations
    assert timer.step_ns("e", 1.5, 20) == -1  # idle: no step in the interval
    assert timer.step_ns("e", 0.2, 4) == -1  # restarted server: values went down
    assert timer.step_ns("e", 0.5, 10) == 50_000_000  # and it goes on from the new values
    assert timer.step_ns("other", 0.5, 10) == -1  # per engine
    assert timer.step_ns("e", None, 12) == -1 and timer.step_ns("e", float("nan"), 12) == -1


def _with_histogram(text: str, name: str, total: float, count: float) -> str:
    """``text`` with the _sum and _count samples of ``name`` set (labels kept)."""
    lines = []
    for line in text.splitlines():
        for suffix, value in (("_sum", total), ("_count", count)):
            if line.startswith(f"{name}{suffix}{{") or line.startswith(f"{name}{suffix} "):
                line = f"{line.rsplit(' ', 1)[0]} {value}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_vllm_step_duration_is_the_inter_token_latency_between_two_scrapes() -> None:
    base = VLLM.read_text()
    itl = "vllm:time_per_output_token_seconds"
    bodies = iter([_with_histogram(base, itl, 0.19, 6), _with_histogram(base, itl, 0.69, 16)] * 2)
    scraper, sink, _ = _scraper(lambda: next(bodies))
    assert scraper.scrape_once() and scraper.scrape_once()
    steps = [int(unpack("EngineSampleFrame", f.record)["step_duration_ns"][0]) for f in sink.frames]
    assert steps == [-1, 50_000_000]  # (0.69 - 0.19) s over 10 tokens
    # a second scraper keeps its own state: its first scrape has nothing to difference
    other, other_sink, _ = _scraper(lambda: next(bodies))
    assert other.scrape_once()
    assert unpack("EngineSampleFrame", other_sink.frames[0].record)["step_duration_ns"][0] == -1


def test_vllm_prefers_the_v1_inter_token_latency_histogram() -> None:
    text = (
        "vllm:num_requests_running 3\n"
        "vllm:time_per_output_token_seconds_sum {s}\nvllm:time_per_output_token_seconds_count 2\n"
        "vllm:inter_token_latency_seconds_sum {s}\nvllm:inter_token_latency_seconds_count {n}\n"
    )
    timer = StepTimer()
    ctx = FrameContext("d", "n")
    vllm_frames(text.format(s=1.0, n=100), ctx, FIXED_TS_NS, timer)
    (frame,) = vllm_frames(text.format(s=3.0, n=200), ctx, FIXED_TS_NS, timer).frames
    assert unpack("EngineSampleFrame", frame.record)["step_duration_ns"][0] == 20_000_000


def test_tgi_step_duration_is_the_mean_decode_forward_pass_between_two_scrapes() -> None:
    base = (FORMATS_DIR / "tgi" / "tgi-metrics.datadog-fixture.txt").read_text()
    timer = StepTimer()
    ctx = FrameContext("d", "n")
    steps = []
    for total, count in ((89.03, 1509), (89.53, 1519)):
        text = base.replace(
            'tgi_batch_forward_duration_sum{method="decode"} 89.03133092599998',
            f'tgi_batch_forward_duration_sum{{method="decode"}} {total}',
        ).replace(
            'tgi_batch_forward_duration_count{method="decode"} 1509',
            f'tgi_batch_forward_duration_count{{method="decode"}} {count}',
        )
        (frame,) = tgi_frames(text, ctx, FIXED_TS_NS, timer).frames
        steps.append(int(unpack("EngineSampleFrame", frame.record)["step_duration_ns"][0]))
    assert steps == [-1, 50_000_000]  # 0.5 s over 10 decode passes
