"""Redis security from configuration: ACL users, wrong passwords, TLS, no secret in logs."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sinks import cli
from sinks.client import Health, SchedulerClient
from sinks.config import SinkConfig, load_sink_config
from sinks.connection import (
    RedisAuthError,
    RedisTlsError,
    connect,
    connection_kwargs,
    redacted_url,
)
from sinks.metrics import SinkMetrics
from sinks.redis_sink import RedisSink
from sinks.redis_writer import RedisWriter
from sinks.verdict_topic import heartbeat_record
from skewscope.config import Settings
from tests.test_sinks_support import NS_PER_S, PrivateRedis, private_redis, verdict

PASSWORD = "Pw-7f3a9c-secret"
WRONG = "Wrong-91bd-secret"
USER = "scheduler"


@pytest.fixture
def acl_server(tmp_path: Path) -> Iterator[PrivateRedis]:
    with private_redis(tmp_path) as server:
        admin = connect(server.url, SinkConfig())
        admin.execute_command("ACL", "SETUSER", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all")
        admin.execute_command("ACL", "SETUSER", "default", "off")
        admin.close()
        yield server


def test_acl_user_with_its_password_reads_and_writes(acl_server: PrivateRedis) -> None:
    config = SinkConfig(redis_username=USER, redis_password=PASSWORD)
    writer = RedisWriter(connect(acl_server.url, config), config)
    writer.write(heartbeat_record("dep0", time.time_ns(), 1, 60 * NS_PER_S))
    assert writer.write(verdict("dep0/rank1", 1)).applied
    with SchedulerClient(acl_server.url, config) as scheduler:
        assert scheduler.health("dep0/rank1").health is Health.UNHEALTHY


def test_credentials_in_the_url_work_too(acl_server: PrivateRedis) -> None:
    url = acl_server.url.replace("redis://", f"redis://{USER}:{PASSWORD}@")
    assert connect(url, SinkConfig()).ping()


def test_wrong_password_fails_with_a_clear_error_without_the_secret(
    acl_server: PrivateRedis,
) -> None:
    config = SinkConfig(redis_username=USER, redis_password=WRONG)
    with pytest.raises(RedisAuthError) as caught:
        connect(acl_server.url, config)
    message = str(caught.value)
    assert f"refused user '{USER}'" in message
    assert "SKEWSCOPE_REDIS_PASSWORD" in message
    assert WRONG not in message and PASSWORD not in message
    with pytest.raises(RedisAuthError):
        SchedulerClient(acl_server.url, config).start()


def test_no_password_ever_appears_in_logs_or_output(
    acl_server: PrivateRedis,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = acl_server.url.replace("redis://", f"redis://{USER}:{PASSWORD}@")
    good = load_sink_config(env={"SKEWSCOPE_REDIS_PASSWORD": PASSWORD})
    logging.getLogger("test").info("config %r url %s", good, redacted_url(url))
    # A sink whose Redis goes away logs retries with the URL.
    test_settings = dataclasses.replace(settings, redis_url=url)
    sink = RedisSink(
        test_settings,
        good,
        connect(url, good),
        topic="unused-" + USER,
        metrics=SinkMetrics(CollectorRegistry()),
        backoff_max_s=0.05,
    )
    acl_server.stop()
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    sink.step(stop)
    sink.close()
    assert sink.retries > 0
    # The CLI with a wrong password from the environment.
    acl_server.start()
    monkeypatch.setenv("REDIS_URL", acl_server.url)
    monkeypatch.setenv("SKEWSCOPE_REDIS_USERNAME", USER)
    monkeypatch.setenv("SKEWSCOPE_REDIS_PASSWORD", WRONG)
    with pytest.raises(RedisAuthError) as caught:
        cli._show(argparse.Namespace(config=None, json=True))
    out, err = capsys.readouterr()
    text = "\n".join([caplog.text, out, err, str(caught.value)])
    assert "unavailable" in caplog.text and "***" in caplog.text  # the checks saw real lines
    for secret in (PASSWORD, WRONG):
        assert secret not in text


def test_environment_credentials_win_over_the_url() -> None:
    config = load_sink_config(
        env={"SKEWSCOPE_REDIS_USERNAME": "envuser", "SKEWSCOPE_REDIS_PASSWORD": "envpass"}
    )
    kwargs = connection_kwargs("redis://urluser:urlpass@10.0.0.1:6380/3", config)
    assert (kwargs["username"], kwargs["password"]) == ("envuser", "envpass")
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("10.0.0.1", 6380, 3)
    assert "envpass" not in repr(config)


def test_redacted_url_hides_only_the_password() -> None:
    assert redacted_url("rediss://u:p%40ss@h:6380/2") == "rediss://u:***@h:6380/2"
    assert redacted_url("redis://h:6379/0") == "redis://h:6379/0"


def test_unsupported_scheme_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="use redis://"):
        connection_kwargs("http://u:p@h:1/0", SinkConfig())


def test_tls_with_the_configured_ca_bundle(tmp_path: Path) -> None:
    with private_redis(tmp_path, tls=True) as server:
        config = SinkConfig(redis_ssl_ca_certs=server.ca_certs)
        writer = RedisWriter(connect(server.url, config), config)
        assert writer.write(verdict("dep0/rank1", 1)).applied
        with pytest.raises(RedisTlsError, match="SKEWSCOPE_REDIS_SSL_CA_CERTS"):
            connect(server.url, SinkConfig(), timeout_s=1.0)
