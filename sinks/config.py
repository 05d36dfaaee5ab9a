"""Typed settings of the verdict sinks: Redis credentials, TLS, layout and avoid-list policy.

Precedence (later wins): defaults < table ``[sinks]`` of the ``--config`` TOML file (the same
file whose ``[skewscope]`` table feeds :func:`skewscope.config.load_settings`) < environment.

Environment variables:

* ``SKEWSCOPE_REDIS_USERNAME``, ``SKEWSCOPE_REDIS_PASSWORD``: the Redis ACL user; they win
  over a user and password written in the Redis URL. ``Settings`` has no such fields, hence
  this module.
* ``SKEWSCOPE_REDIS_SSL_CA_CERTS``: CA bundle for ``rediss://`` (TLS) URLs.
* ``SKEWSCOPE_SINK_KEY_PREFIX``, ``SKEWSCOPE_SINK_GROUP_ID``, ``SKEWSCOPE_SINK_AVOID_SHARE_RATIO``,
  ``SKEWSCOPE_SINK_FRESHNESS_BOUND_MS``, ``SKEWSCOPE_SINK_HISTORY_MAXLEN``.

Per-deployment capacity (number of entities the avoid-list share applies to) comes from
``[sinks.capacity]`` in the file, e.g. ``llama70b-a = 16``; a topology consumer can set it at
run time with :meth:`sinks.redis_writer.RedisWriter.set_capacity`.

The password is kept out of ``repr`` so a logged config never shows it.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_FRESHNESS_BOUND_MS = 10_000


@dataclass(frozen=True)
class SinkConfig:
    """Settings of the Redis sink and the scheduler client (defaults documented inline)."""

    # Prefix of every key and of the notification channel; lets several pipelines share a db.
    key_prefix: str = "skew:"
    # Consumer group of the Redis sink; its committed offsets are the resume point.
    group_id: str = "skewscope-redis-sink"
    # Share of a deployment's entities the avoid-list may name at most (floor(share * n)).
    avoid_share_ratio: float = 0.25
    # Deployment -> number of entities (capacity); unknown capacity means an empty avoid-list.
    capacity: Mapping[str, int] = field(default_factory=dict)
    # Freshness bound used until a heartbeat states the deployment's own bound.
    freshness_bound_ms: int = DEFAULT_FRESHNESS_BOUND_MS
    # Approximate cap of the history stream (XADD MAXLEN ~).
    history_maxlen: int = 100_000
    # Redis ACL user and password; empty: take them from the URL (or none).
    redis_username: str = ""
    redis_password: str = field(default="", repr=False)
    # CA bundle for rediss:// URLs; empty: the system's trust store.
    redis_ssl_ca_certs: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.avoid_share_ratio <= 1.0:
            raise ValueError(
                f"avoid_share_ratio={self.avoid_share_ratio} is outside [0, 1]; it is the share "
                "of a deployment's entities the avoid-list may name (e.g. 0.25)"
            )
        if self.freshness_bound_ms <= 0:
            raise ValueError(f"freshness_bound_ms={self.freshness_bound_ms} must be positive")
        if self.history_maxlen <= 0:
            raise ValueError(f"history_maxlen={self.history_maxlen} must be positive")
        for dep, count in self.capacity.items():
            if int(count) < 0:
                raise ValueError(f"capacity of deployment {dep!r} is {count}; must be >= 0")


_ENV = {
    "redis_username": "SKEWSCOPE_REDIS_USERNAME",
    "redis_password": "SKEWSCOPE_REDIS_PASSWORD",
    "redis_ssl_ca_certs": "SKEWSCOPE_REDIS_SSL_CA_CERTS",
    "key_prefix": "SKEWSCOPE_SINK_KEY_PREFIX",
    "group_id": "SKEWSCOPE_SINK_GROUP_ID",
    "avoid_share_ratio": "SKEWSCOPE_SINK_AVOID_SHARE_RATIO",
    "freshness_bound_ms": "SKEWSCOPE_SINK_FRESHNESS_BOUND_MS",
    "history_maxlen": "SKEWSCOPE_SINK_HISTORY_MAXLEN",
}


def _coerce(name: str, raw: Any, current: Any) -> Any:
    try:
        if isinstance(current, float):
            return float(raw)
        if isinstance(current, int):
            return int(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"sink setting {name}: expected a {type(current).__name__}, got {raw!r}"
        ) from exc
    return str(raw)


def load_sink_config(
    config_file: Path | None = None, env: Mapping[str, str] | None = None
) -> SinkConfig:
    """Build a SinkConfig from defaults, the ``[sinks]`` table of a TOML file, the environment.

    Raises ValueError naming the offending setting for unknown keys or unparsable values.
    """
    env = os.environ if env is None else env
    base = SinkConfig()
    names = {f.name for f in dataclasses.fields(SinkConfig)}
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            doc = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"config file {config_file}: {exc}") from exc
        table = doc.get("sinks", {})
        unknown = sorted(set(table) - names)
        if unknown:
            raise ValueError(
                f"config file {config_file}: unknown [sinks] settings {unknown}; "
                f"known: {sorted(names)}"
            )
        for key, raw in table.items():
            if key == "capacity":
                values[key] = {str(dep): int(n) for dep, n in dict(raw).items()}
            else:
                values[key] = _coerce(key, raw, getattr(base, key))
    for key, var in _ENV.items():
        if env.get(var):
            values[key] = _coerce(key, env[var], getattr(base, key))
    return dataclasses.replace(base, **values)
