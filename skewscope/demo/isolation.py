"""One demo run's private namespace: topic prefix, consumer groups, Redis key prefix, logs.

Every run gets an id (``demo-HHMMSS-xxxx``). Its topics are the usual ones under the prefix
``<SKEWSCOPE_TOPIC_PREFIX><id>.`` (``Topics.prefixed``), the worker's app id and consumer
group are ``<prefix>worker`` (so Faust's own topics share the prefix), the Redis sink uses the
key prefix ``skew:<id>:`` and the group ``<id>-redis-sink``. Repeated or concurrent demos on
one broker and one Redis therefore never read each other's data. :func:`cleanup` deletes the
run's topics, Redis keys and Faust data directory afterwards (logs are kept, the newest
``KEEP_LOG_DIRS`` runs).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException

from infra.kafka_admin import delete_topics_under
from sinks.config import SinkConfig
from sinks.connection import connect
from skewscope.config import Settings, Topics

KEEP_LOG_DIRS = 5


@dataclass(frozen=True)
class DemoRun:
    """Settings and names of one isolated run."""

    run_id: str
    settings: Settings
    sink_config: SinkConfig
    app_id: str
    log_dir: Path

    @property
    def topic_prefix(self) -> str:
        return self.settings.topic_prefix

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a child process: the run's topics, Redis keys and groups."""
        env = dict(os.environ if base is None else base)
        env.update(
            {
                "KAFKA_BOOTSTRAP": self.settings.kafka_bootstrap,
                "REDIS_URL": self.settings.redis_url,
                "SKEWSCOPE_TOPIC_PREFIX": self.settings.topic_prefix,
                "SKEWSCOPE_TELEMETRY_PARTITIONS": str(self.settings.telemetry_partitions),
                "SKEWSCOPE_SINK_KEY_PREFIX": self.sink_config.key_prefix,
                "SKEWSCOPE_SINK_GROUP_ID": self.sink_config.group_id,
                "SKEWSCOPE_DEMO_RUN": self.run_id,
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env


def new_run(settings: Settings, sink_config: SinkConfig, var_dir: Path | None = None) -> DemoRun:
    """A fresh run id and the settings that confine the run to it."""
    run_id = f"demo-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:4]}"
    prefix = f"{settings.topic_prefix}{run_id}."
    run_settings = dataclasses.replace(
        settings, topic_prefix=prefix, topics=Topics().prefixed(prefix)
    )
    run_sink = dataclasses.replace(
        sink_config,
        key_prefix=f"{sink_config.key_prefix}{run_id}:",
        group_id=f"{run_id}-redis-sink",
    )
    logs = (var_dir or settings.var_dir) / "demo" / run_id
    return DemoRun(run_id, run_settings, run_sink, f"{prefix}worker", logs)


def cleanup(run: DemoRun, timeout_s: float = 30.0) -> list[str]:
    """Delete the run's topics, Redis keys and Faust data; one line per thing done."""
    lines = []
    try:
        deleted = delete_topics_under(run.settings, [run.topic_prefix], timeout_s)
        lines.append(f"deleted {deleted} topics {run.topic_prefix}*")
    except KafkaException as exc:
        lines.append(f"could not delete the topics {run.topic_prefix}*: {exc}")
    try:
        client = connect(run.settings.redis_url, run.sink_config)
        pattern = run.sink_config.key_prefix.replace("*", "\\*") + "*"
        keys = list(client.scan_iter(match=pattern, count=500))
        if keys:
            client.delete(*keys)
        client.close()
        lines.append(f"deleted {len(keys)} Redis keys {run.sink_config.key_prefix}*")
    except Exception as exc:  # any Redis failure: report it, the run is over anyway
        lines.append(f"could not delete the Redis keys {run.sink_config.key_prefix}*: {exc}")
    datadir = run.settings.var_dir / "faust" / run.app_id
    shutil.rmtree(datadir, ignore_errors=True)
    prune_logs(run.log_dir.parent)
    return lines


def prune_logs(root: Path, keep: int = KEEP_LOG_DIRS) -> None:
    """Keep the ``keep`` newest run log directories under ``root``."""
    if not root.is_dir():
        return
    dirs = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
    for old in dirs[:-keep] if keep else dirs:
        shutil.rmtree(old, ignore_errors=True)
