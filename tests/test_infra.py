"""infra/: the local Kafka 4.x broker, Redis, topics and the CLI, against real services."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import ConfigResource, ResourceType

from infra import kafka_broker, redis_server, services
from infra.cli import add_infra_commands, main
from infra.common import InfraError
from infra.java import JAVA_HINT, find_java, java_major, require_java
from infra.kafka_admin import admin_client
from infra.kafka_props import listen_addresses, new_cluster_id, render_server_properties
from infra.net import first_bootstrap, free_port, parse_hostport
from infra.topics import DLQ_RETENTION_MS, TopicSpec, ensure_topics, topic_specs
from skewscope.config import Settings, Topics, load_settings

# --- pure helpers -------------------------------------------------------------------------


def test_parse_hostport_forms() -> None:
    assert parse_hostport("127.0.0.1:9092", 1) == ("127.0.0.1", 9092)
    assert parse_hostport("[::1]:9093", 1) == ("::1", 9093)
    assert parse_hostport("kafka", 9092) == ("kafka", 9092)
    assert first_bootstrap("PLAINTEXT://a:1,b:2") == ("a", 1)
    with pytest.raises(ValueError, match="bad port"):
        parse_hostport("host:http", 1)


def test_server_properties_derive_ports_from_bootstrap(tmp_path: Path) -> None:
    settings = dataclasses.replace(load_settings(env={}), kafka_bootstrap="127.0.0.1:19092")
    props = dict(
        line.split("=", 1)
        for line in render_server_properties(settings, tmp_path).splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert props["process.roles"] == "broker,controller"
    assert props["log.dirs"] == str(tmp_path)
    assert props["offsets.topic.replication.factor"] == "1"
    assert "auto.create.topics.enable" not in props  # Faust creates its internal topics


def test_local_broker_refuses_remote_bootstrap() -> None:
    settings = dataclasses.replace(load_settings(env={}), kafka_bootstrap="kafka.example:9092")
    with pytest.raises(InfraError, match="not a local address"):
        listen_addresses(settings)


def test_cluster_id_shape() -> None:
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_missing_java_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(InfraError) as err:
        require_java()
    assert str(err.value) == JAVA_HINT
    assert "apt-get install openjdk-17-jre-headless" in JAVA_HINT


def test_topic_specs_policies() -> None:
    settings = load_settings(env={})
    specs = {spec.name: spec for spec in topic_specs(settings)}
    topics = settings.topics
    assert len(specs) == len(dataclasses.fields(Topics))
    assert {spec.partitions for spec in specs.values()} == {settings.telemetry_partitions}
    assert specs[topics.verdicts].config["cleanup.policy"] == "compact"
    assert specs[topics.topology].config["cleanup.policy"] == "compact"
    assert specs[topics.gpu].config["retention.ms"] == str(settings.telemetry_retention_ms)
    assert specs[topics.dead_letter].config["retention.ms"] == str(DLQ_RETENTION_MS)
    assert specs[topics.labels].config["cleanup.policy"] == "delete"


# --- against the session's broker and Redis -----------------------------------------------


def test_kafka_status_reports_version_4(settings: Settings) -> None:
    status = kafka_broker.status(settings)
    assert status.answering
    if status.version is None:
        pytest.skip(f"broker at {settings.kafka_bootstrap} is not a local process; version unknown")
    assert status.version.split(".")[0] == "4", status


def test_redis_status_has_version(settings: Settings) -> None:
    status = redis_server.status(settings)
    assert status.answering
    assert status.version and status.version[0].isdigit()


def test_services_status_dict_and_lines(settings: Settings) -> None:
    report = services.status(settings)
    assert set(report) == {"kafka", "redis"}
    assert report["kafka"]["bootstrap"] == settings.kafka_bootstrap
    assert report["redis"]["url"] == settings.redis_url
    kafka_line, redis_line = services.status_lines(report)
    assert kafka_line.startswith("kafka ") and f"at {settings.kafka_bootstrap} (" in kafka_line
    assert redis_line.startswith(f"redis {report['redis']['version']} at {settings.redis_url}")


@pytest.fixture
def private_topics(settings: Settings) -> Iterator[Settings]:
    """settings whose topic names carry a uuid suffix; the topics are deleted afterwards."""
    suffix = uuid.uuid4().hex[:10]
    base = settings.topics
    names = {f.name: f"{getattr(base, f.name)}.{suffix}" for f in dataclasses.fields(Topics)}
    private = dataclasses.replace(settings, topics=Topics(**names))
    yield private
    admin = admin_client(private)
    for future in admin.delete_topics(list(names.values()), operation_timeout=30).values():
        future.result(timeout=30)


def test_ensure_topics_is_idempotent_and_sets_policies(private_topics: Settings) -> None:
    settings, topics = private_topics, private_topics.topics
    expected = [spec.name for spec in topic_specs(settings)]

    first = ensure_topics(settings, log=lambda _: None)
    assert sorted(first.created) == sorted(expected)
    assert first.warnings == []
    # created and led: a producer that starts now finds every partition
    led = admin_client(settings).list_topics(timeout=10).topics
    for name in expected:
        assert all(p.leader >= 0 for p in led[name].partitions.values()), name
    second = ensure_topics(settings, log=lambda _: None)
    assert second.created == []
    assert sorted(second.existing) == sorted(expected)
    assert second.warnings == []

    admin = admin_client(settings)
    meta = admin.list_topics(timeout=10)
    for name in expected:
        assert len(meta.topics[name].partitions) == settings.telemetry_partitions, name
    wanted = {
        topics.verdicts: ("cleanup.policy", "compact"),
        topics.topology: ("cleanup.policy", "compact"),
        topics.features: ("cleanup.policy", "delete"),
        topics.nic: ("retention.ms", str(settings.telemetry_retention_ms)),
        topics.dead_letter: ("retention.ms", str(DLQ_RETENTION_MS)),
    }
    resources = {name: ConfigResource(ResourceType.TOPIC, name) for name in wanted}
    futures = admin.describe_configs(list(resources.values()), request_timeout=30)
    for name, (key, value) in wanted.items():
        assert futures[resources[name]].result(timeout=30)[key].value == value, (name, key)


def test_waiting_for_leaders_names_the_topics_still_without_one() -> None:
    from types import SimpleNamespace

    from infra.topics import _await_leaders

    led = SimpleNamespace(error=None, partitions={0: SimpleNamespace(leader=1)})
    unled = SimpleNamespace(error=None, partitions={0: SimpleNamespace(leader=-1)})

    class Admin:
        def list_topics(self, timeout: float) -> SimpleNamespace:
            return SimpleNamespace(topics={"a": led, "b": unled})

    _await_leaders(Admin(), {"a": 1}, timeout_s=0.2)  # type: ignore[arg-type]
    with pytest.raises(InfraError, match=r"partition after 0.2 s: b, c$"):
        _await_leaders(Admin(), {"a": 1, "b": 1, "c": 1}, timeout_s=0.2)  # type: ignore[arg-type]
    with pytest.raises(InfraError, match=r": a$"):
        _await_leaders(Admin(), {"a": 2}, timeout_s=0.2)  # type: ignore[arg-type]


def test_ensure_topics_warns_about_wrong_partition_count(
    settings: Settings, unique_topic: Callable[..., str]
) -> None:
    name = unique_topic(prefix="skew.partitions", partitions=1)
    spec = TopicSpec(name, 4, {"cleanup.policy": "compact"})
    summary = ensure_topics(settings, log=lambda _: None, specs=[spec])
    assert summary.existing == [name] and summary.created == []
    assert any(f"{name} has 1 partitions, expected 4" in w for w in summary.warnings), summary
    assert any(f"{name} has cleanup.policy=delete, expected compact" in w for w in summary.warnings)


def test_up_on_running_services_is_a_noop(settings: Settings) -> None:
    before = services.status(settings)
    lines: list[str] = []
    summary = services.up(settings, log=lines.append)
    after = services.status(settings)
    assert [before["kafka"]["pid"], before["redis"]["pid"]] == [
        after["kafka"]["pid"],
        after["redis"]["pid"],
    ]
    assert sum("nothing to do" in line for line in lines) == 2, lines
    again = services.up(settings, log=lines.append)
    assert summary is not None and again is not None
    assert again.created == [] and not again.warnings


def test_cli_status_json(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    assert main(["status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kafka"]["answering"] and report["redis"]["answering"]


def test_add_infra_commands_registers_subcommands() -> None:
    parser = argparse.ArgumentParser(prog="skewscope")
    parser.add_argument("--config")
    add_infra_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["--config", "x.toml", "infra", "status", "--json"])
    assert args.config == "x.toml" and args.json and callable(args.func)
    assert parser.parse_args(["infra", "up", "--no-topics"]).no_topics


# --- full lifecycle of private services on free ports ------------------------------------


def _free_pair() -> int:
    """A port p with p + 1 also free (broker, controller)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two adjacent free ports")


def test_broker_lifecycle_from_scratch(tmp_path: Path) -> None:
    """Format, start, find, stop a private broker (shared jar cache, fresh data dir)."""
    java = find_java()
    if java is None or (java_major(java) or 0) < 17:
        pytest.skip("Java 17+ not installed")
    settings = dataclasses.replace(
        load_settings(env={}), kafka_bootstrap=f"127.0.0.1:{_free_pair()}", var_dir=tmp_path
    )
    lines: list[str] = []
    started = kafka_broker.up(settings, log=lines.append)
    try:
        assert started.started and started.pid and started.version == settings.kafka_version
        assert (tmp_path / "kafka" / "data" / "meta.properties").is_file()
        status = kafka_broker.status(settings)
        assert status.source == "managed" and status.pid == started.pid
        assert status.version and status.version.startswith("4.")
        assert (tmp_path / "kafka" / "logs" / "server.log").stat().st_size > 0
        again = kafka_broker.up(settings, log=lines.append)
        assert not again.started and again.pid == started.pid
    finally:
        stopped = kafka_broker.down(settings, log=lines.append)
    assert stopped
    assert kafka_broker.status(settings).source == "down"
    assert not (tmp_path / "kafka" / "kafka.pid").exists()
    assert kafka_broker.down(settings, log=lines.append) is False


def test_redis_lifecycle_from_scratch(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    settings = dataclasses.replace(
        load_settings(env={}), redis_url=f"redis://127.0.0.1:{free_port()}/0", var_dir=tmp_path
    )
    lines: list[str] = []
    found = redis_server.up(settings, log=lines.append)
    try:
        assert found.source == "managed" and found.version
    finally:
        assert redis_server.down(settings, log=lines.append)
    assert redis_server.status(settings).source == "down"


def test_session_sweep_deletes_only_topics_under_its_namespaces(settings: Settings) -> None:
    from tests.live import isolated, sweep_session_topics

    mine = isolated(settings, partitions=1)
    other = isolated(settings, partitions=1)
    admin = admin_client(settings)
    deleted = sweep_session_topics(settings, {mine.topic_prefix})
    assert deleted == len(topic_specs(mine))
    left = set(admin.list_topics(timeout=10).topics)
    assert not {t for t in left if t.startswith(mine.topic_prefix)}
    assert {spec.name for spec in topic_specs(other)} <= left
    assert sweep_session_topics(settings, set()) == 0
