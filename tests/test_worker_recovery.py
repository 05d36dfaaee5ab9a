"""The live worker's state survives crashes, broker restarts and rebalances (real broker).

The reference for every test is the detector core run in-process over the same frames, one
detector per partition as the worker shards them: the worker must publish every output of
that run (no loss), and whatever it publishes twice must be identical (same version, same
content) and come from at most one checkpoint interval.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer, TopicPartition

from infra import kafka_broker
from infra.kafka_admin import admin_client
from models.detector import Detector, DetectorConfig
from schemas.codec import AvroCodec
from skewscope.config import Settings
from skewscope.kafka.consumer import Event
from skewscope.kafka.producer import EventProducer
from streams.checkpoint import read_checkpoint
from streams.topology import Topology
from tests.live import consume_until, fresh_app_id, isolated, worker
from tests.synthetic import T0_NS, collective_frames, request_frame, topology

HOP_NS = DetectorConfig().window.hop_ns
INTERVAL_WINDOWS = 4  # the worker's default checkpoint interval
Frame = tuple[str, str, dict[str, Any]]  # (deployment key, schema, record)
VerdictId = tuple[str, int]  # (entity, version)


def _partition_of(key: str, partitions: int) -> int:
    """The partition Faust, aiokafka and our murmur2_random producer agree on for ``key``."""
    return int(DefaultPartitioner()(key.encode(), list(range(partitions)), list(range(partitions))))


def _deployments(count: int, partitions: int) -> list[str]:
    """``count`` deployment names that land on distinct partitions."""
    chosen: dict[int, str] = {}
    for i in range(200):
        name = f"dep{i}"
        chosen.setdefault(_partition_of(name, partitions), name)
        if len(chosen) == count:
            return [chosen[p] for p in sorted(chosen)]
    raise AssertionError(f"no {count} deployment names on distinct partitions")


def _frames(deployments: list[str], seconds: float, **kwargs: Any) -> list[Frame]:
    out: list[Frame] = []
    for i, dep in enumerate(deployments):
        factors = {5: 1.2} if i == 0 else {}
        out += [(dep, s, r) for s, r in collective_frames(factors, seconds, dep, seed=i, **kwargs)]
    return sorted(out, key=lambda f: (f[2]["frame_seq"], f[0]))


def _reference(
    frames: list[Frame], deployments: list[str], partitions: int
) -> dict[VerdictId, dict]:
    """Verdicts of the uninterrupted core, one detector per partition, as the wire has them."""
    return _reference_run(frames, deployments, partitions)[0]


def _reference_run(
    frames: list[Frame], deployments: list[str], partitions: int
) -> tuple[dict[VerdictId, dict], dict[str, tuple[int, ...]]]:
    """Reference verdicts and, per partition, the detector progress the worker must show."""
    topo = Topology.from_records(r for d in deployments for r in topology(d))
    shards: dict[int, Detector] = defaultdict(lambda: Detector(topology=topo))
    codec = AvroCodec()
    out: dict[VerdictId, dict] = {}
    for dep, schema, record in frames:
        for o in shards[_partition_of(dep, partitions)].process(schema, record):
            if o.schema == "Verdict":
                wire = codec.decode(codec.encode("Verdict", o.record)).record
                out[(wire["entity"], wire["version"])] = wire
    return out, {str(p): _progress_of(d) for p, d in shards.items()}


def _progress_of(det: Detector) -> tuple[int, ...]:
    s = det.stats
    return (s.frames, s.late_frames, s.windows_closed, det.watermark_ns)


def _progress(shard: dict[str, Any]) -> tuple[int, ...]:
    """The same from the worker's /status page: every frame applied exactly once."""
    keys = ("frames", "late_frames", "windows_closed", "watermark_ns")
    return tuple(int(shard[k]) for k in keys)


def _wait_progress(ports: list[int], proc: subprocess.Popen[str], want: dict[str, tuple]) -> None:
    def done(_: dict[str, Any]) -> bool:
        have = {}
        for port in ports:
            have.update({p: _progress(s) for p, s in _status(port)["shards"].items()})
        return all(have.get(p, (0,))[0] >= w[0] for p, w in want.items())

    _wait_status(ports[0], proc, done)
    have = {}
    for port in ports:
        have.update({p: _progress(s) for p, s in _status(port)["shards"].items()})
    assert {p: have.get(p) for p in want} == want, "(frames, late, windows, watermark) per shard"


def _produce(settings: Settings, frames: list[Frame], with_topology: Sequence[str] = ()) -> None:
    with EventProducer(settings) as producer:
        for dep in with_topology:
            for r in topology(dep):
                producer.send(
                    settings.topics.topology, f"{dep}/rank{r['rank']}", "TopologyRecord", r
                )
        for dep, schema, record in frames:
            producer.send(settings.topics.collectives, dep, schema, record)


def _by_id(events: list[Event]) -> dict[VerdictId, list[dict]]:
    seen: dict[VerdictId, list[dict]] = defaultdict(list)
    for e in events:
        if e.name == "Verdict":
            seen[(e.record["entity"], e.record["version"])].append(e.record)
    return seen


def _covers(expected: dict[VerdictId, dict]) -> Any:
    return lambda events: set(expected) <= set(_by_id(events))


def _assert_nothing_lost_and_repeats_identical(
    events: list[Event], expected: dict[VerdictId, dict]
) -> list[dict]:
    """Returns the repeated verdicts (second and later copies)."""
    seen = _by_id(events)
    missing = sorted(set(expected) - set(seen))
    assert not missing, f"window outputs lost: {missing[:10]}"
    repeats = []
    for vid, copies in seen.items():
        assert all(c == copies[0] for c in copies), f"{vid} re-emitted with other content"
        if vid in expected:
            assert copies[0] == expected[vid], f"{vid} differs from the uninterrupted run"
        repeats += copies[1:]
    return repeats


def _status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as resp:
        return json.loads(resp.read())


def _wait_status(port: int, proc: subprocess.Popen[str], done: Any, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode} (its log is printed)")
        try:
            last = _status(port)
            if done(last):
                return last
        except OSError:
            pass
        time.sleep(0.3)  # polling a web page; no broker-side wait exists for this
    raise AssertionError(f"worker status never satisfied the condition: {last}")


def _latest_checkpoints(settings: Settings, app_id: str) -> dict[int, Any]:
    """The last checkpoint record per partition on the table's changelog topic."""
    topic = f"{app_id}-checkpoints-changelog"
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"r-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    try:
        parts = range(settings.telemetry_partitions)
        lows_highs = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), 10) for p in parts
        }
        consumer.assign([TopicPartition(topic, p, lows_highs[p][0]) for p in parts])
        latest: dict[int, Any] = {}
        remaining = {p for p in parts if lows_highs[p][1] > lows_highs[p][0]}
        while remaining:
            msg = consumer.poll(10)
            assert msg is not None, f"changelog {topic} ended early"
            part, offset, value = msg.partition(), msg.offset(), msg.value()
            assert part is not None and offset is not None and value is not None
            latest[part] = read_checkpoint(value)
            if offset + 1 >= lows_highs[part][1]:
                remaining.discard(part)
        return latest
    finally:
        consumer.close()


def test_killed_worker_recovers_from_changelog_without_early_input(settings: Settings) -> None:
    settings = isolated(settings, partitions=2)
    deployments = _deployments(2, 2)
    frames = _frames(deployments, seconds=10)
    # Cut where no checkpoint falls: the kill loses state the restart must rebuild.
    split = int(len(frames) * 0.43)
    first, second = frames[:split], frames[split:]
    expected_first = _reference(first, deployments, 2)
    expected, progress = _reference_run(frames, deployments, 2)
    app_id = fresh_app_id()
    _produce(settings, first, with_topology=deployments)
    with worker(settings, 16071, app_id) as proc:
        consume_until(settings, settings.topics.verdicts, _covers(expected_first), 60, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    shutil.rmtree(settings.var_dir / "faust" / app_id)
    restore_points = _latest_checkpoints(settings, app_id)
    assert set(restore_points) == {0, 1}, "each partition has a checkpoint before the kill"
    produced: dict[int, int] = defaultdict(int)
    for dep, _, _ in first:
        produced[_partition_of(dep, 2)] += 1
    for part, cp in restore_points.items():
        resume_at = cp.offsets[(settings.topics.collectives, part)]
        assert resume_at < produced[part], "frames after the checkpoint must be re-read"
    # The input before the checkpointed offsets is gone: recovery must not need it.
    admin = admin_client(settings)
    cut = [
        TopicPartition(topic, part, offset)
        for cp in restore_points.values()
        for (topic, part), offset in cp.offsets.items()
    ]
    for fut in admin.delete_records(cut, operation_timeout=30).values():
        fut.result(30)
    _produce(settings, second)
    with worker(settings, 16072, app_id) as proc:
        events = consume_until(settings, settings.topics.verdicts, _covers(expected), 60, proc)
        _wait_progress([16072], proc, progress)
    repeats = _assert_nothing_lost_and_repeats_identical(events, expected)
    for r in repeats:
        watermark = restore_points[_partition_of(r["deployment"], 2)].watermark_ns
        assert watermark < r["last_seen_ns"] <= watermark + INTERVAL_WINDOWS * HOP_NS, (
            f"re-emitted {r['entity']} v{r['version']} is not from the last checkpoint interval"
        )


def _late_requests(deployment: str, first_seq: int, count: int) -> list[Frame]:
    """Engine request frames dated 0.5 s into the run: behind every checkpoint's watermark,
    so they are late in whatever order a re-read interleaves them with the collectives."""
    at_ns = T0_NS + 500_000_000
    return [
        (
            deployment,
            "EngineRequestFrame",
            request_frame(deployment, "node0", [(0, 0, at_ns)], [f"r{seq}"], seq, at_ns),
        )
        for seq in range(first_seq, first_seq + count)
    ]


def _committed(settings: Settings, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group})
    try:
        (tp,) = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return int(tp.offset)
    finally:
        consumer.close()


@pytest.mark.parametrize("restart", ["plain", "seeks-lost"])
def test_a_topic_first_read_after_a_checkpoint_is_read_again_after_a_crash(
    settings: Settings, restart: str
) -> None:
    """A telemetry topic whose first messages come after the shard's last checkpoint, and
    which the group commits past before the next one: the checkpoint carries where that
    topic started, so the restarted worker reads them again and nothing is lost.

    ``seeks-lost``: the restarted worker's seeks on that topic are lost for its first 8 s
    (as when Faust's seek to the committed offsets lands after the shard's, see
    tests/lost_seeks_worker.py): the consumer stays at the committed offset, the last
    messages arrive and nothing after them; the stalled-partition check seeks again."""
    settings = isolated(settings, partitions=1)
    (dep,) = _deployments(1, 1)
    collectives = [(dep, s, r) for s, r in collective_frames({5: 1.2}, 6, dep)]
    first, second = collectives[: len(collectives) // 2], collectives[len(collectives) // 2 :]
    requests, more_requests = _late_requests(dep, 0, 3), _late_requests(dep, 3, 2)
    _, progress = _reference_run(first + requests + second + more_requests, [dep], 1)
    app_id = fresh_app_id()
    topic = settings.topics.engine_requests
    _produce(settings, first, with_topology=[dep])
    with worker(settings, 16077, app_id) as proc:
        status = _wait_status(
            16077,
            proc,
            lambda st: (
                st["shards"].get("0", {}).get("frames") == len(first)
                and st["recovery"]["checkpoints"] > 0
            ),
        )
        checkpoints = status["recovery"]["checkpoints"]
        with EventProducer(settings) as producer:
            for key, schema, record in requests:
                producer.send(topic, key, schema, record)
        status = _wait_status(
            16077, proc, lambda st: st["shards"]["0"]["frames"] == len(first) + len(requests)
        )
        deadline = time.monotonic() + 30
        while _committed(settings, app_id, topic) < len(requests):
            assert time.monotonic() < deadline, "the group never committed the requests topic"
            time.sleep(0.5)  # Faust commits on its own interval; nothing to wait on
        status = _status(16077)
        assert status["recovery"]["checkpoints"] == checkpoints, (
            "a checkpoint covered the requests: the crash below would prove nothing"
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    shutil.rmtree(settings.var_dir / "faust" / app_id)
    (checkpoint,) = _latest_checkpoints(settings, app_id).values()
    assert checkpoint.offsets[(topic, 0)] == 0, "the checkpoint holds where requests start"
    with EventProducer(settings) as producer:
        for key, schema, record in second:
            producer.send(settings.topics.collectives, key, schema, record)
        for key, schema, record in more_requests:
            producer.send(topic, key, schema, record)
    runner = ("skewscope.cli",)
    if restart == "seeks-lost":
        runner = ("tests.lost_seeks_worker", "engine.requests", "8")
    with worker(settings, 16078, app_id, runner) as proc:
        _wait_progress([16078], proc, progress)
        if restart == "seeks-lost":
            log = Path(proc.log_path).read_text()  # type: ignore[attr-defined]
            assert "lost seek" in log, "no seek was lost: the test proved nothing"
            assert _status(16078)["recovery"]["quiet_seeks"] > 0


def test_worker_rides_out_a_broker_restart(settings: Settings) -> None:
    if not kafka_broker.status(settings).managed:
        pytest.skip("the broker is not the managed local one (infra/); not restarting it")
    settings = isolated(settings, partitions=2)
    deployments = _deployments(2, 2)
    frames = _frames(deployments, seconds=10)
    first, second = frames[: len(frames) // 2], frames[len(frames) // 2 :]
    expected, progress = _reference_run(frames, deployments, 2)
    _produce(settings, first, with_topology=deployments)
    with worker(settings, 16073, fresh_app_id()) as proc:
        consume_until(
            settings, settings.topics.verdicts, _covers(_reference(first, deployments, 2)), 60, proc
        )
        kafka_broker.down(settings, log=lambda *_: None)
        kafka_broker.up(settings, log=lambda *_: None)
        _produce(settings, second)
        events = consume_until(settings, settings.topics.verdicts, _covers(expected), 90, proc)
        _wait_progress([16073], proc, progress)
    _assert_nothing_lost_and_repeats_identical(events, expected)


def test_two_workers_split_partitions_and_agree_with_one(settings: Settings) -> None:
    settings = isolated(settings, partitions=4)
    deployments = _deployments(4, 4)
    frames = _frames(deployments, seconds=6)
    expected, progress = _reference_run(frames, deployments, 4)
    app_id = fresh_app_id()
    _produce(settings, [], with_topology=deployments)
    with worker(settings, 16074, app_id) as one, worker(settings, 16075, app_id) as two:

        def split(_: dict[str, Any]) -> bool:
            a, b = set(_status(16074)["shards"]), set(_status(16075)["shards"])
            return bool(a) and bool(b) and not a & b and a | b == {"0", "1", "2", "3"}

        _wait_status(16074, one, split)
        _produce(settings, frames)
        events = consume_until(settings, settings.topics.verdicts, _covers(expected), 60, two)
        _wait_progress([16074, 16075], one, progress)
        shares = [_status(port)["shards"] for port in (16074, 16075)]
    _assert_nothing_lost_and_repeats_identical(events, expected)
    for share in shares:
        assert sum(s["frames"] for s in share.values()) > 0, f"a worker did no work: {shares}"


def test_silent_rank_advances_the_watermark_and_yields_rank_hang(settings: Settings) -> None:
    settings = isolated(settings, partitions=2)
    hang_after_s = 3.0
    frames = [
        ("dep0", s, r) for s, r in collective_frames({}, 8, hung_rank=3, hang_after_s=hang_after_s)
    ]
    _produce(settings, frames, with_topology=["dep0"])

    def hang(events: list[Event]) -> bool:
        return any(
            e.record["entity"] == "dep0/rank3" and e.record["condition"] == "rank-hang"
            for e in events
            if e.name == "Verdict"
        )

    with worker(settings, 16076, "") as proc:
        events = consume_until(settings, settings.topics.verdicts, hang, 60, proc)
        shard = _status(16076)["shards"][str(_partition_of("dep0", 2))]
    verdict = next(
        e.record for e in events if e.name == "Verdict" and e.record["entity"] == "dep0/rank3"
    )
    assert verdict["state"] == "firing"
    hang_ns = T0_NS + int(hang_after_s * 1e9)
    assert shard["watermark_ns"] > hang_ns + 2 * 10**9, "the watermark kept moving past the hang"
