"""Helpers for tests that run real processes against the real broker."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from infra.kafka_admin import delete_topics_under
from infra.topics import ensure_topics
from skewscope.config import Settings, Topics
from skewscope.kafka.consumer import DecodingConsumer, Event
from skewscope.process import stop_process

REPO = Path(__file__).resolve().parents[1]


# Topic-name prefixes this test session made (its topic prefixes and its workers' app ids,
# under which Faust names its changelog and assignor topics); conftest deletes the topics
# under them when the session ends, so repeated runs do not pile partitions up on a broker
# that outlives them (a local broker with thousands took over a minute to restart).
SESSION_NAMESPACES: set[str] = set()


def fresh_prefix() -> str:
    """A new ``t<hex>.`` topic prefix, swept at the end of the session."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    SESSION_NAMESPACES.add(prefix)
    return prefix


def fresh_app_id() -> str:
    """A new ``worker-<hex>`` Faust app id; its internal topics are swept with the session."""
    app_id = f"worker-{uuid.uuid4().hex[:8]}"
    SESSION_NAMESPACES.add(f"{app_id}-")
    return app_id


def sweep_session_topics(settings: Settings, namespaces: set[str] = SESSION_NAMESPACES) -> int:
    """Delete the topics under ``namespaces`` (this session's); returns how many were asked
    to go. Only names this process made are touched, so a broker shared with other sessions
    keeps theirs."""
    return delete_topics_under(settings, namespaces)


def isolated(settings: Settings, partitions: int = 2) -> Settings:
    """Settings whose topics carry a fresh prefix, created on the broker."""
    prefix = fresh_prefix()
    out = dataclasses.replace(
        settings,
        topic_prefix=prefix,
        topics=Topics().prefixed(prefix),
        telemetry_partitions=partitions,
    )
    ensure_topics(out, log=lambda *_: None)
    return out


def env_for(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "REDIS_URL": settings.redis_url,
            "SKEWSCOPE_TOPIC_PREFIX": settings.topic_prefix,
            "SKEWSCOPE_TELEMETRY_PARTITIONS": str(settings.telemetry_partitions),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@contextmanager
def worker(
    settings: Settings, web_port: int, app_id: str = "", runner: Sequence[str] = ("skewscope.cli",)
) -> Iterator[subprocess.Popen[str]]:
    """Run ``skewscope worker`` in a subprocess; stop it (SIGTERM, then SIGKILL) afterwards.
    ``runner``: the module (and its own arguments) run with ``python -m`` in front of
    ``worker …``; a test harness can wrap the CLI with a fault.

    Its output goes to a file, not a pipe nobody drains: a chatty worker (reconnecting after
    a broker restart) would otherwise fill the pipe and block. When the body fails, the tail
    of that file is printed (pytest shows it with the failure)."""
    app_id = app_id or fresh_app_id()
    cmd = [
        sys.executable,
        "-m",
        *runner,
        "worker",
        "--app-id",
        app_id,
        "--web-port",
        str(web_port),
        "--quiet",
        "--loglevel",
        "info",
    ]
    with tempfile.NamedTemporaryFile("w+", prefix="worker-", suffix=".log", delete=False) as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env_for(settings), stdout=log, stderr=subprocess.STDOUT, text=True
        )
    proc.log_path = log.name  # type: ignore[attr-defined]
    try:
        yield proc
    except BaseException:
        print(f"worker {app_id} log (tail):\n{Path(log.name).read_text()[-4000:]}")
        raise
    finally:
        stop_process(proc)


def consume_until(
    settings: Settings,
    topic: str,
    done: object,
    timeout_s: float = 90.0,
    proc: subprocess.Popen[str] | None = None,
) -> list[Event]:
    """Read ``topic`` from the beginning until ``done(events)`` is true, time runs out, or
    ``proc`` (the process that should produce them) died: then its output is raised."""
    consumer = DecodingConsumer(settings, [topic], group_id=f"reader-{uuid.uuid4().hex[:8]}")
    events: list[Event] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            events += consumer.poll_batch(500, timeout_s=0.5)
            if done(events):  # type: ignore[operator]
                break
            if proc is not None and proc.poll() is not None:
                log_path = getattr(proc, "log_path", "")
                output = Path(log_path).read_text() if log_path else ""
                raise AssertionError(f"process exited with {proc.returncode}:\n{output[-4000:]}")
    finally:
        consumer.close()
    return events
