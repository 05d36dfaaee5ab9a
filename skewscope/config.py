"""Typed configuration: one place, read from defaults, an optional TOML file, then the environment.

Precedence (later wins): built-in defaults < ``--config FILE`` (TOML, table ``[skewscope]``)
< environment variables ``SKEWSCOPE_<FIELD>`` (plus the conventional ``KAFKA_BOOTSTRAP`` and
``REDIS_URL``). Every field and its default is listed in the README.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Topics:
    """Kafka topic names of the event model (DESIGN.md section 3)."""

    engine_requests: str = "telemetry.engine.requests"
    engine_samples: str = "telemetry.engine.samples"
    collectives: str = "telemetry.nccl.collectives"
    gpu: str = "telemetry.gpu"
    nic: str = "telemetry.nic"
    dpu: str = "telemetry.dpu"
    topology: str = "skew.topology"
    labels: str = "skew.labels"
    features: str = "skew.features"
    verdicts: str = "skew.verdicts"
    dead_letter: str = "skew.dlq"

    def prefixed(self, prefix: str) -> Topics:
        """The same topics under ``prefix`` (isolates tests, demos and tenants on one broker)."""
        return Topics(**{f.name: prefix + getattr(self, f.name) for f in dataclasses.fields(self)})

    def telemetry(self) -> tuple[str, ...]:
        return (
            self.engine_requests,
            self.engine_samples,
            self.collectives,
            self.gpu,
            self.nic,
            self.dpu,
        )


@dataclass(frozen=True)
class Settings:
    """Runtime settings. Field names map to ``SKEWSCOPE_<NAME>`` environment variables."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Empty: Avro single-object encoding. Set (e.g. http://host:8081 or mock://x): the
    # Schema Registry wire format through confluent-kafka's client.
    schema_registry_url: str = ""
    var_dir: Path = REPO_ROOT / "var"
    kafka_version: str = "4.1.0"
    kafka_cache_dir: Path = Path.home() / ".cache" / "skewscope"
    telemetry_partitions: int = 4
    telemetry_retention_ms: int = 24 * 3600 * 1000
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = field(default="", repr=False)
    kafka_ssl_ca_location: str = ""
    topic_prefix: str = ""
    topics: Topics = field(default_factory=Topics)

    @property
    def kafka_dir(self) -> Path:
        return self.var_dir / "kafka"

    @property
    def redis_dir(self) -> Path:
        return self.var_dir / "redis"


_ENV_ALIASES = {"kafka_bootstrap": "KAFKA_BOOTSTRAP", "redis_url": "REDIS_URL"}


def _coerce(name: str, raw: Any, current: Any) -> Any:
    if isinstance(current, Path):
        return Path(str(raw)).expanduser()
    if isinstance(current, bool):
        return str(raw).lower() in {"1", "true", "yes", "on"}
    if isinstance(current, int):
        try:
            return int(raw)
        except ValueError as exc:
            raise ValueError(f"setting {name}: expected an integer, got {raw!r}") from exc
    return str(raw)


def load_settings(config_file: Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Build Settings from defaults, an optional TOML file and the environment."""
    env = dict(os.environ) if env is None else env
    base = Settings()
    values: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(Settings) if f.name != "topics"}
    if config_file is not None:
        try:
            doc = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"config file {config_file}: {exc}") from exc
        table = doc.get("skewscope", {})
        unknown = sorted(set(table) - names)
        if unknown:
            raise ValueError(
                f"config file {config_file}: unknown settings {unknown}; known: {sorted(names)}"
            )
        for key, raw in table.items():
            values[key] = _coerce(key, raw, getattr(base, key))
    for key in names:
        for var in (_ENV_ALIASES.get(key, ""), f"SKEWSCOPE_{key.upper()}"):
            if var and env.get(var):
                values[key] = _coerce(key, env[var], getattr(base, key))
    settings = dataclasses.replace(base, **values)
    if settings.topic_prefix:
        settings = dataclasses.replace(settings, topics=Topics().prefixed(settings.topic_prefix))
    return settings
