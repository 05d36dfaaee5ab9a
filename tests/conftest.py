"""Shared fixtures: a real Kafka 4.x broker and a real Redis for the tests, never mocks.

Each service is chosen once per session, on first use, in this order:

1. ``KAFKA_BOOTSTRAP`` / ``REDIS_URL`` from the environment, used as they are;
2. testcontainers (``apache/kafka:4.1.0``, ``redis:7``) when a Docker engine answers; the
   containers stop at the end of the session;
3. the local services of ``infra/`` (Kafka from Maven jars, needs Java 17+; apt's
   redis-server), started when not running and left running afterwards (stop them with
   ``skewscope infra down``).

The plan is printed in the pytest header, the services actually used in a "services" section
of the summary. Tests that use the Kafka or Redis fixtures are marked ``kafka`` / ``redis``
automatically, so ``-m "not kafka"`` deselects them. Redis tests get db 15, flushed before
each test: do not point REDIS_URL at a server whose db 15 matters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from infra import containers, kafka_broker, redis_server
from infra.common import InfraError
from infra.kafka_admin import admin_client, broker_answers
from skewscope.config import Settings, load_settings
from tests.live import sweep_session_topics

KAFKA_FIXTURES = frozenset({"kafka_bootstrap", "settings", "unique_topic"})
REDIS_FIXTURES = frozenset({"redis_url", "redis_test_url", "redis_client", "settings"})
TEST_REDIS_DB = 15


@dataclass
class ServiceChoice:
    """One resolved service: its address and a line saying where it came from."""

    name: str
    address: str
    description: str

    def line(self) -> str:
        return f"{self.name}: {self.description}"


class Services:
    """Resolves Kafka and Redis lazily, once per session; owns any containers it starts."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.base = load_settings()
        self.chosen: dict[str, ServiceChoice] = {}
        self.swept: str = ""
        self._docker: bool | None = None
        self._stack = contextlib.ExitStack()

    def docker(self) -> bool:
        if self._docker is None:
            self._docker = containers.docker_answers()
        return self._docker

    def mode(self, env_var: str) -> str:
        if os.environ.get(env_var):
            return "env"
        return "docker" if self.docker() else "local"

    def plan_lines(self) -> list[str]:
        """Header lines: the source each service will come from (nothing is started here)."""
        lines = []
        for name, env_var, image in (
            ("kafka", "KAFKA_BOOTSTRAP", containers.KAFKA_IMAGE),
            ("redis", "REDIS_URL", containers.REDIS_IMAGE),
        ):
            mode = self.mode(env_var)
            if mode == "env":
                lines.append(f"{name}: {env_var}={os.environ[env_var]} (from the environment)")
            elif mode == "docker":
                lines.append(f"{name}: testcontainers {image} (started on first use)")
            else:
                lines.append(self._local_plan(name))
        return lines

    def _local_plan(self, name: str) -> str:
        if name == "kafka":
            ks = kafka_broker.status(self.base)
            version = ks.version or self.base.kafka_version
            what = f"local broker (infra/) {ks.bootstrap}, Kafka {version}"
            answering, managed, pid = ks.answering, ks.managed, ks.pid
        else:
            rs = redis_server.status(self.base)
            what = f"local redis-server (infra/) {rs.url}"
            what += f", Redis {rs.version}" if rs.version else ""
            answering, managed, pid = rs.answering, rs.managed, rs.pid
        if not answering:
            return f"{name}: {what} (not running; started on first use)"
        owner = f"managed, pid {pid}" if managed else f"external{f', pid {pid}' if pid else ''}"
        return f"{name}: {what} (already running, {owner})"

    def kafka(self) -> str:
        if "kafka" not in self.chosen:
            self.chosen["kafka"] = self._resolve_kafka()
        return self.chosen["kafka"].address

    def redis(self) -> str:
        if "redis" not in self.chosen:
            self.chosen["redis"] = self._resolve_redis()
        return self.chosen["redis"].address

    def _resolve_kafka(self) -> ServiceChoice:
        mode = self.mode("KAFKA_BOOTSTRAP")
        address = self.base.kafka_bootstrap
        if mode == "env":
            return ServiceChoice("kafka", address, f"KAFKA_BOOTSTRAP={address} (environment)")
        began = time.monotonic()
        if mode == "docker":
            address = containers.start_kafka(self._stack)
            return ServiceChoice(
                "kafka",
                address,
                f"testcontainers {containers.KAFKA_IMAGE} "
                f"{address} (started in {time.monotonic() - began:.1f} s)",
            )
        with self._visible():
            result = kafka_broker.up(self.base)
        state = f"started in {result.elapsed_s:.1f} s" if result.started else "already running"
        return ServiceChoice(
            "kafka",
            address,
            f"local broker (infra/) {address}, "
            f"Kafka {result.version or '(version unknown)'} ({state})",
        )

    def _resolve_redis(self) -> ServiceChoice:
        mode = self.mode("REDIS_URL")
        url = self.base.redis_url
        if mode == "env":
            return ServiceChoice("redis", url, f"REDIS_URL={url} (environment)")
        if mode == "docker":
            url = containers.start_redis(self._stack)
            return ServiceChoice("redis", url, f"testcontainers {containers.REDIS_IMAGE} {url}")
        running = redis_server.answers(url)
        with self._visible():
            found = redis_server.up(self.base)
        state = "already running" if running else "started"
        return ServiceChoice(
            "redis", url, f"local redis-server (infra/) {url}, Redis {found.version} ({state})"
        )

    @contextlib.contextmanager
    def _visible(self) -> Iterator[None]:
        """Show start-up progress live instead of capturing it (Kafka takes seconds)."""
        capman = self.config.pluginmanager.getplugin("capturemanager")
        ctx = capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()
        with ctx:
            print()
            yield

    def sweep(self) -> None:
        """Delete the topics this session's tests made under their own prefixes and app ids
        (tests/live.py). A container is discarded whole; a broker from the environment or
        infra/ outlives the session, and its topics would pile up run after run."""
        if "kafka" not in self.chosen or self.mode("KAFKA_BOOTSTRAP") == "docker":
            return
        settings = dataclasses.replace(self.base, kafka_bootstrap=self.chosen["kafka"].address)
        if not broker_answers(settings):
            self.swept = "test topics not deleted: the broker does not answer"
            return
        try:
            n = sweep_session_topics(settings)
        except KafkaException as exc:
            self.swept = f"test topics not deleted: {exc}"
        else:
            self.swept = f"deleted {n} topics the tests made under their own prefixes"

    def close(self) -> None:
        self._stack.close()


_SERVICES = pytest.StashKey[Services]()


def _services(config: pytest.Config) -> Services:
    if _SERVICES not in config.stash:
        config.stash[_SERVICES] = Services(config)
    return config.stash[_SERVICES]


def pytest_report_header(config: pytest.Config) -> list[str]:
    return _services(config).plan_lines()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & KAFKA_FIXTURES:
            item.add_marker(pytest.mark.kafka)
        if names & REDIS_FIXTURES:
            item.add_marker(pytest.mark.redis)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    _services(session.config).sweep()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    services = _services(config)
    if services.chosen:
        terminalreporter.write_sep("=", "services")
        for choice in services.chosen.values():
            terminalreporter.write_line(choice.line())
        if services.swept:
            terminalreporter.write_line(f"kafka: {services.swept}")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SERVICES in config.stash:
        config.stash[_SERVICES].close()


@pytest.fixture(scope="session")
def kafka_bootstrap(pytestconfig: pytest.Config) -> str:
    """Bootstrap address of a real Kafka 4.x broker (see the module docstring for the source)."""
    try:
        return _services(pytestconfig).kafka()
    except InfraError as exc:
        pytest.fail(f"no Kafka broker for the tests: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def redis_url(pytestconfig: pytest.Config) -> str:
    """URL of a real Redis server (db 0 as configured; tests should use redis_test_url)."""
    try:
        return _services(pytestconfig).redis()
    except InfraError as exc:
        pytest.fail(f"no Redis server for the tests: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def settings(kafka_bootstrap: str, redis_url: str) -> Settings:
    """load_settings() pointed at the test broker and Redis."""
    base = load_settings()
    return dataclasses.replace(base, kafka_bootstrap=kafka_bootstrap, redis_url=redis_url)


@pytest.fixture
def unique_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Factory: ``unique_topic(prefix="test", partitions=1, config=None) -> name``.

    Creates a fresh topic (uuid suffix), waits until metadata shows it, deletes it after the
    test.
    """
    conf = dataclasses.replace(load_settings(), kafka_bootstrap=kafka_bootstrap)
    admin = admin_client(conf)
    made: list[str] = []

    def make(
        prefix: str = "test", partitions: int = 1, config: Mapping[str, str] | None = None
    ) -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:12]}"
        new = NewTopic(
            name, num_partitions=partitions, replication_factor=-1, config=dict(config or {})
        )
        admin.create_topics([new], operation_timeout=30)[name].result(timeout=30)
        made.append(name)
        deadline = time.monotonic() + 10
        while not _topic_ready(admin, name, partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name} created but not in metadata after 10 s")
            time.sleep(0.1)
        return name

    yield make
    if made:
        for future in admin.delete_topics(made, operation_timeout=30).values():
            with contextlib.suppress(KafkaException):
                future.result(timeout=30)


def _topic_ready(admin: AdminClient, name: str, partitions: int) -> bool:
    """True when metadata lists name with all its partitions led by a broker."""
    topic = admin.list_topics(topic=name, timeout=10).topics.get(name)
    if topic is None or topic.error is not None or len(topic.partitions) != partitions:
        return False
    return all(part.leader >= 0 for part in topic.partitions.values())


@pytest.fixture(scope="session")
def redis_test_url(redis_url: str) -> str:
    """redis_url with the database switched to 15, the tests' database."""
    parts = urlsplit(redis_url)
    return urlunsplit(parts._replace(path=f"/{TEST_REDIS_DB}"))


@pytest.fixture
def redis_client(redis_test_url: str) -> Iterator[redis.Redis]:
    """Client on db 15, flushed before the test so every test starts empty."""
    client = redis.Redis.from_url(redis_test_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def redis_key_prefix() -> str:
    """A fresh ``test:<uuid>:`` key prefix, for tests that share a database."""
    return f"test:{uuid.uuid4().hex[:12]}:"
