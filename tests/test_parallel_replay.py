"""A replay over several worker processes says exactly what one process says."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from producers.sim.publish import publish
from producers.sim.scenario import load_scenario
from producers.sim.simulation import Simulation
from skewscope.config import Topics
from streams.replay.capture import CaptureReader, write_capture
from streams.replay.cli import main
from streams.replay.config import load_configuration
from streams.replay.message import RawMessage, partition_for
from streams.replay.parallel import (
    ParallelReplayer,
    ReplayWorkerError,
    default_workers,
    fork_available,
    make_replayer,
)
from streams.shards import ShardPool

pytestmark = pytest.mark.skipif(not fork_available(), reason="parallel replay forks")

DEPLOYMENTS = (b"llama70b-a", b"llama70b-b")


def _spreading_partitions() -> int:
    """The smallest partition count that puts the mixed scenario's two deployments apart."""
    for count in range(2, 16):
        if len({partition_for(d, count) for d in DEPLOYMENTS}) == 2:
            return count
    raise AssertionError("no partition count separates the deployments")


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s of the demo scenario (a throttled GPU among them) and one undecodable frame."""
    folder = tmp_path_factory.mktemp("parallel")
    clean = folder / "clean.avro"
    publish(Simulation(load_scenario("mixed"), seed=3), 20.0, capture=clean)
    messages = list(CaptureReader(clean, partitions=1))
    garbage = RawMessage(Topics().collectives, 0, 0, DEPLOYMENTS[1], b"\x00no avro", 0, "")
    messages.insert(len(messages) // 2, garbage)
    path = folder / "mixed20.avro"
    write_capture(path, messages)
    return path


def _backtest(capture: Path, out: Path, workers: int, *extra: str) -> dict[str, Any]:
    argv = ["backtest", "--file", str(capture), "--json", str(out), "--workers", str(workers)]
    assert main([*argv, "--partitions", str(_spreading_partitions()), *extra]) == 0
    document: dict[str, Any] = json.loads(out.read_text())
    return document


def _without_speed(document: dict[str, Any]) -> dict[str, Any]:
    for run in document["runs"]:
        run.pop("speed")
        assert run["stats"].pop("workers") >= 1
    return document


def test_two_and_three_workers_give_the_one_process_document(capture: Path, tmp_path: Path) -> None:
    one = _backtest(capture, tmp_path / "1.json", 1, "--features", "--html", "/dev/null")
    (run,) = one["runs"]
    assert run["stats"]["bad_messages"] == 1
    assert any(
        v["entity"] == "llama70b-a/rank5" and v["state"] == "firing" for v in run["verdicts"]
    ), "the throttled GPU's rank was not found: the comparison would prove little"
    entities = {v["entity"].split("/")[0] for v in run["verdicts"]}
    assert set(DEPLOYMENTS) <= {e.encode() for e in entities}, "one shard said nothing"
    for workers in (2, 3):  # 3: one worker owns no partition
        many = _backtest(capture, tmp_path / f"{workers}.json", workers, "--features")
        assert many["runs"][0]["stats"]["workers"] == workers
        assert _without_speed(many) == _without_speed(json.loads(json.dumps(one)))


def test_feature_series_come_back_in_the_one_process_order(capture: Path) -> None:
    config = load_configuration("A", None, None, True)
    topics = Topics()
    partitions = _spreading_partitions()
    runs = []
    for workers in (1, 2):
        replayer = make_replayer(config, topics, workers)
        assert isinstance(replayer, ParallelReplayer) == (workers == 2)
        runs.append(replayer.run(CaptureReader(capture, partitions), flush=True))
    one, two = runs
    assert one.features and one.features == two.features
    assert list(one.features) == list(two.features)  # entities in first-seen order too
    assert one.verdicts == two.verdicts
    assert one.stats.samples == two.stats.samples > 0


def test_a_failing_worker_is_reported_with_its_traceback(
    capture: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: ShardPool, partition: int, value: bytes) -> list[Any]:
        raise ZeroDivisionError("detector bug")

    monkeypatch.setattr(ShardPool, "process_bytes", broken)  # the fork inherits it
    replayer = make_replayer(load_configuration("A", None, None, False), Topics(), 2)
    with pytest.raises(ReplayWorkerError, match="ZeroDivisionError: detector bug"):
        replayer.run(CaptureReader(capture, _spreading_partitions()), flush=True)


def test_a_worker_that_dies_is_reported_with_its_exit_code(
    capture: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def dies(self: ShardPool, partition: int, value: bytes) -> list[Any]:
        os._exit(7)

    monkeypatch.setattr(ShardPool, "process_bytes", dies)
    replayer = make_replayer(load_configuration("A", None, None, False), Topics(), 2)
    with pytest.raises(ReplayWorkerError, match="exit code 7"):
        replayer.run(CaptureReader(capture, _spreading_partitions()), flush=True)


def test_worker_count_defaults_to_cores_and_partitions() -> None:
    assert default_workers(1) == 1
    assert 1 <= default_workers(64) <= (os.cpu_count() or 1)
    with pytest.raises(ValueError, match="1 or more"):
        make_replayer(load_configuration("A", None, None, False), Topics(), 0)
