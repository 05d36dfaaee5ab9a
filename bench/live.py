"""Live run at a fixed offered load: the real worker, consumer lag over time, system latency.

Processes and cores (2-core machine): the rate-limited producer and the latency watcher in
this process and the Redis sink (``skewscope sink redis``) on core 0; the real worker
(``skewscope worker``, Faust) alone on core 1. Kafka and Redis run wherever the OS puts them.

* Offered load: frames of the ``bench-large`` scenario scaled to ``--scale`` times its
  replicas, generated and Avro-encoded before the run (so generation does not limit the
  rate), then produced one frame period at a time (200 ms of event time by default) at
  ``--rate`` samples/s.
* Consumer lag: every second, the worker group's committed offsets against the high
  watermarks (messages), and the worker's ``/status`` watermarks against the event time
  produced so far (event-time delay). Bounded: the lag of the last third of the run is not
  above the middle third's by more than one worker batch.
* System latency, window close -> verdict visible in Redis: a window ending at event time E
  closes once every stream has shown E + allowed lateness, i.e. once the producer has sent
  the first period that ends at or after E + 100 ms; the wall clock when that period was sent is
  taken as the close time (the close cannot happen earlier, so the figure is an upper bound
  that also contains the Kafka hop into the worker and any queueing in it). Visible: the
  wall clock at which a ``SchedulerClient`` on the same Redis gets the change (pub/sub) for
  the heartbeat verdict of that window (every deployment, every 1 s of event time). p50/p99
  over all heartbeats after the warm-up.

    .venv/bin/python -m bench.live --seconds 40 --rate 100000

Limits: heartbeats are the latency probes (a clean scenario raises no fault verdicts);
Redis db 13 under a fresh prefix; topics under a fresh prefix, deleted afterwards.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from typing import Any

import numpy as np
from confluent_kafka import Consumer, TopicPartition

from bench.common import REPO, proc_cpu_seconds, samples_of, taskset_prefix
from bench.prefill import drop_topics, prefixed_settings, scaled_scenario
from bench.replay_throughput import bench_redis_url
from infra.topics import ensure_topics
from models.detector import DetectorConfig
from producers.sim import Simulation
from schemas.codec import AvroCodec
from sinks.client import SchedulerClient
from sinks.config import SinkConfig
from sinks.connection import connect
from skewscope.config import Settings, load_settings
from skewscope.kafka.client_config import base_config
from skewscope.kafka.producer import EventProducer
from skewscope.process import stop_process

WORKER_BATCH = 2000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(settings: Settings, redis_url: str, key_prefix: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "REDIS_URL": redis_url,
            "SKEWSCOPE_TOPIC_PREFIX": settings.topic_prefix,
            "SKEWSCOPE_TELEMETRY_PARTITIONS": str(settings.telemetry_partitions),
            "SKEWSCOPE_SINK_KEY_PREFIX": key_prefix,
            "SKEWSCOPE_SINK_GROUP_ID": f"{settings.topic_prefix}sink",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _spawn(
    args: list[str], core: int, env: dict[str, str], log_path: str
) -> subprocess.Popen[bytes]:
    cmd = [*taskset_prefix(core), sys.executable, "-m", "skewscope.cli", *args]
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    stop_process(proc)


def _status(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as reply:
            doc: dict[str, Any] = json.loads(reply.read())
            return doc
    except (OSError, ValueError):
        return None


def generate(
    settings: Settings, scale: int, sim_seconds: float, seed: int = 0
) -> tuple[Simulation, list[Any]]:
    """Frames of the scaled scenario for ``settings.topics``, encoded, grouped by frame period
    (every frame of a period carries its end as ``event_time_ns``):
    ``[(period_end_ns, samples, [(topic, key, value), ...]), ...]``."""
    sim = Simulation(scaled_scenario("bench-large", scale), seed=seed, topics=settings.topics)
    codec = AvroCodec()
    periods: list[Any] = []
    current_end, samples, frames = None, 0, []
    for frame in sim.frames(sim_seconds):
        end = frame.event_time_ns
        if current_end is not None and end != current_end:
            periods.append((current_end, samples, frames))
            samples, frames = 0, []
        current_end = end
        samples += samples_of(frame.record)
        frames.append((frame.topic, frame.key, codec.encode(frame.schema, frame.record)))
    if frames:
        periods.append((current_end, samples, frames))
    return sim, periods


class LagSampler(threading.Thread):
    """Once a second: committed-offset lag of the worker group and its event-time delay."""

    def __init__(self, settings: Settings, group: str, web_port: int, sent: dict[str, int]):
        super().__init__(daemon=True)
        self.settings, self.web_port, self.sent = settings, web_port, sent
        conf = base_config(settings)
        conf.update({"group.id": group, "enable.auto.commit": False})
        self.consumer = Consumer(conf)
        self.parts = [
            TopicPartition(t, p)
            for t in settings.topics.telemetry()
            for p in range(settings.telemetry_partitions)
        ]
        self.samples: list[dict[str, float]] = []
        self.stop = threading.Event()
        self.sending = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            with contextlib.suppress(Exception):
                committed = self.consumer.committed(self.parts, timeout=5)
                lag = 0
                for tp in committed:
                    _low, high = self.consumer.get_watermark_offsets(tp, timeout=5, cached=False)
                    lag += high - max(tp.offset, 0)
                status = _status(self.web_port) or {}
                marks = [s["watermark_ns"] for s in status.get("shards", {}).values()]
                delay_s = (
                    (self.sent["event_ns"] - min(marks)) / 1e9
                    if marks and self.sent["event_ns"]
                    else float("nan")
                )
                self.samples.append(
                    {
                        "t_s": round(time.monotonic() - self.t0, 2),
                        "lag_messages": lag,
                        "watermark_delay_s": round(delay_s, 3),
                        "sending": self.sending.is_set(),
                    }
                )
        self.consumer.close()


def _bounded(series: list[float]) -> bool:
    """Lag (sampled while sending) of the last third of the run not above the middle
    third's by more than one worker batch."""
    if len(series) < 6:
        return False
    third = len(series) // 3
    middle, last = series[third : 2 * third], series[2 * third :]
    return float(np.percentile(last, 90)) <= float(np.percentile(middle, 90)) + WORKER_BATCH


def measure(
    base: Settings,
    seconds: float = 40.0,
    rate_per_s: float = 100_000.0,
    scale: int = 4,
    warmup_s: float = 10.0,
    partitions: int = 4,
) -> dict[str, Any]:
    """One live run; see the module docstring."""
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    settings = prefixed_settings(base, prefix, partitions)
    ensure_topics(settings, log=lambda *_: None)
    redis_url = bench_redis_url(settings)
    key_prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    env = _env(settings, redis_url, key_prefix)
    sim, periods = generate(settings, scale, seconds + warmup_s)
    producer = EventProducer(settings)
    for rec in sim.topology:
        producer.send(settings.topics.topology, f"{rec['deployment']}/rank{rec['rank']}",
                      "TopologyRecord", rec)  # fmt: skip
    producer.flush(30)
    web_port = _free_port()
    app_id = f"{prefix}worker"
    logs = settings.var_dir / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    worker = _spawn(["worker", "--app-id", app_id, "--web-port", str(web_port), "--quiet"],
                    1, env, str(logs / "live-worker.log"))  # fmt: skip
    sink = _spawn(["sink", "redis"], 0, env, str(logs / "live-sink.log"))
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {0})
    config = SinkConfig(key_prefix=key_prefix)
    client = SchedulerClient(redis_url, config).start()
    seen: list[tuple[str, int, int]] = []
    changes = client.watch()

    def collect() -> None:
        for change in changes:
            if change.kind == "heartbeat" and change.version is not None:
                seen.append((change.deployment, change.version, time.time_ns()))

    threading.Thread(target=collect, daemon=True).start()
    sent = {"event_ns": 0}
    lag = LagSampler(settings, app_id, web_port, sent)
    try:
        deadline = time.monotonic() + 120
        while _status(web_port) is None:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not come up; see {logs / 'live-worker.log'}")
            time.sleep(0.5)
        if any(not topic.startswith(prefix) for _, _, frames in periods for topic, _, _ in frames):
            raise RuntimeError("generated frames outside the benchmark's topic prefix")
        period_ends: list[int] = []
        period_sent_ns: list[int] = []
        offered = 0
        lag.start()
        cpu0 = proc_cpu_seconds(worker.pid)
        began = time.perf_counter()
        lag.sending.set()
        for end_ns, samples, frames in periods:
            delay = began + offered / rate_per_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            for topic, key, value in frames:
                producer.send_raw(topic, key, value)
            offered += samples
            producer._producer.poll(0)
            period_ends.append(end_ns)
            period_sent_ns.append(time.time_ns())
            sent["event_ns"] = end_ns
        send_s = time.perf_counter() - began
        lag.sending.clear()
        worker_cpu_s = proc_cpu_seconds(worker.pid) - cpu0
        producer.flush(60)
        last_end = period_ends[-1] - DetectorConfig().allowed_lateness_ns - 1_000_000_000
        wait_until = time.monotonic() + 30
        while time.monotonic() < wait_until and not any(v >= last_end for _, v, _ in seen):
            time.sleep(0.2)
        lag.stop.set()
        lag.join(10)
        final_status = _status(web_port) or {}
    finally:
        client.close()
        _stop(worker)
        _stop(sink)
        with contextlib.suppress(Exception):
            redis = connect(redis_url, config)
            stale = list(redis.scan_iter(match=f"{key_prefix}*"))
            if stale:
                redis.delete(*stale)
        drop_topics(settings)
    lateness = DetectorConfig().allowed_lateness_ns
    start_ns = period_ends[0] + round(warmup_s * 1e9)
    latencies_ms = []
    per_deployment: dict[str, int] = defaultdict(int)
    for deployment, window_end_ns, visible_ns in seen:
        if window_end_ns < start_ns:
            continue
        i = bisect.bisect_left(period_ends, window_end_ns + lateness)
        if i >= len(period_ends):
            continue
        latencies_ms.append((visible_ns - period_sent_ns[i]) / 1e6)
        per_deployment[deployment] += 1
    lags = [s["lag_messages"] for s in lag.samples if s["sending"]]
    arr = np.asarray(latencies_ms) if latencies_ms else np.asarray([float("nan")])
    return {
        "benchmark": "live",
        "scenario": f"bench-large x{scale}",
        "gpus": sum(d.world_size for d in scaled_scenario("bench-large", scale).deployments),
        "offered_rate_per_s": rate_per_s,
        "achieved_rate_per_s": offered / send_s,
        "samples": offered,
        "send_s": send_s,
        "worker_cpu_s": worker_cpu_s,
        "worker_core_utilization": worker_cpu_s / send_s,
        "worker_cpu_us_per_sample": worker_cpu_s / offered * 1e6,
        "latency_probes": len(latencies_ms),
        "latency_p50_ms": float(np.percentile(arr, 50)),
        "latency_p99_ms": float(np.percentile(arr, 99)),
        "latency_max_ms": float(arr.max()),
        "lag_bounded": _bounded(lags),
        "lag_max_messages_while_sending": max(lags) if lags else None,
        "lag_end_of_sending_messages": lags[-1] if lags else None,
        "lag_series": lag.samples,
        "worker_final_status": {k: final_status.get(k) for k in ("stats", "recovery")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="measured event seconds")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=100_000.0, help="offered samples/s")
    parser.add_argument("--scale", type=int, default=4, help="bench-large replicas x this")
    args = parser.parse_args(argv)
    result = measure(load_settings(), args.seconds, args.rate, args.scale, args.warmup)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
