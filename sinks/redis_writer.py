"""Atomic, idempotent verdict writes to Redis (one Lua script per change).

Each verdict is applied by one script run: compare its ``version`` with the newest version
stored for the entity and apply it only when strictly newer, so replaying the same verdicts
leaves the same state and an older write never overwrites a newer one, even after the newer
verdict's key expired (``<p>versions`` does not expire). An applied change updates the
verdict key (PEXPIRE from ``ttl_ns``, wall clock from the write), the deployment's freshness,
the rankings, the history stream, and PUBLISHes one message on ``<p>changes``.

Heartbeats (``condition == "heartbeat"``, entity ``<dep>/heartbeat``, see
:func:`sinks.verdict_topic.heartbeat_record`) only refresh the deployment's freshness:
``last_seen_ns`` is the event time the detector has seen telemetry up to, ``ttl_ns`` the
deployment's freshness bound.

Limits: a standalone Redis (see :mod:`sinks.redis_layout`); versions must be non-negative.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from sinks.config import SinkConfig
from sinks.redis_layout import HEARTBEAT_CONDITION, RedisLayout, as_text
from sinks.redis_scripts import EXPIRE, SET_CAPACITY, WRITE

log = logging.getLogger(__name__)

NS_PER_MS = 1_000_000


class InvalidVerdictError(ValueError):
    """A verdict record the sink cannot store (the message says which field and why)."""


@dataclass(frozen=True)
class WriteResult:
    """Outcome of one write: ``applied`` False means an equal or newer version was stored."""

    entity: str
    version: int
    applied: bool
    stored_version: int
    # Redis holds less of the record's partition than the sink wrote: the offset after the
    # newest record it applied from it (-1: none), where reading must start again. Nothing
    # was applied.
    gap_at: int | None = None


@dataclass(frozen=True)
class LogPosition:
    """Where a record came from, so Redis keeps how far it applied each partition and a sink
    can tell when Redis lost writes: ``expected_next`` is the offset after the newest record
    the sink knows Redis applied from the partition (None: not known)."""

    topic: str
    partition: int
    offset: int
    expected_next: int | None = None

    @property
    def field(self) -> str:
        return offsets_field(self.topic, self.partition)


def offsets_field(topic: str, partition: int) -> str:
    """The field of ``<p>sink_offsets`` that holds how far Redis applied a partition."""
    return f"{topic}:{partition}"


def avoid_score(record: Mapping[str, Any]) -> float:
    """Rank of a verdict in the avoid-list: severity * confidence."""
    return float(record["severity"]) * float(record["confidence"])


def is_avoidable(record: Mapping[str, Any]) -> bool:
    """Firing and not muted by another verdict (a suppressed symptom is not the culprit)."""
    return record["state"] == "firing" and not record.get("suppressed_by")


GAP = 2  # the write script's answer when Redis holds less of a partition than expected


def _position_args(position: LogPosition | None) -> list[Any]:
    """ARGV 23-25 of the write script."""
    if position is None:
        return ["", "", ""]
    expected = "" if position.expected_next is None else str(position.expected_next)
    return [position.field, str(position.offset), expected]


def ttl_ms(ttl_ns: int) -> int:
    """PEXPIRE milliseconds for ``ttl_ns``, rounded up so a verdict never expires early."""
    return -(-int(ttl_ns) // NS_PER_MS)


class RedisWriter:
    """Applies verdicts to the layout of :class:`RedisLayout` through Lua scripts."""

    def __init__(
        self, client: redis.Redis, config: SinkConfig, layout: RedisLayout | None = None
    ) -> None:
        self.client = client
        self.config = config
        self.layout = layout or RedisLayout(config.key_prefix)
        self._write = client.register_script(WRITE)
        self._expire = client.register_script(EXPIRE)
        self._set_capacity = client.register_script(SET_CAPACITY)

    def write(self, record: Mapping[str, Any], kafka_timestamp_ms: int = 0) -> WriteResult:
        """Apply one verdict; see :meth:`write_many`."""
        return self.write_many([(record, kafka_timestamp_ms)])[0]

    def write_many(
        self,
        items: Sequence[tuple[Mapping[str, Any], int]],
        positions: Sequence[LogPosition | None] | None = None,
    ) -> list[WriteResult]:
        """Apply verdicts in order, in one round trip (a pipeline of script runs).

        Each item is ``(record, kafka_timestamp_ms)``; the timestamp (0: unknown) gives the
        deployment's ``pipeline_lag_ms``. ``positions`` (one per item, or None) say where
        each record came from (``WriteResult.gap_at``). Each script run is atomic; the batch
        is not a transaction, and need not be: re-applying it is harmless. Raises
        :class:`InvalidVerdictError` before writing anything when a record is unusable, and
        redis-py's ConnectionError/TimeoutError when Redis is unreachable.
        """
        where = positions or [None] * len(items)
        prepared = [
            (self._keys(rec), self.script_args(rec, ts) + _position_args(pos))
            for (rec, ts), pos in zip(items, where, strict=True)
        ]
        pipe = self.client.pipeline(transaction=False)
        for keys, args in prepared:
            self._write(keys=keys, args=args, client=pipe)
        replies = pipe.execute()
        results = []
        for (rec, _), reply in zip(items, replies, strict=True):
            if int(reply[0]) == GAP:
                gap_at = int(reply[1])
                results.append(
                    WriteResult(str(rec["entity"]), int(rec["version"]), False, -1, gap_at)
                )
                continue
            applied, stored = int(reply[0]), int(reply[1])
            results.append(
                WriteResult(str(rec["entity"]), int(rec["version"]), bool(applied), stored)
            )
        return results

    def set_capacity(self, deployment: str, entity_count: int) -> None:
        """Set a deployment's capacity (entities the avoid-share applies to); re-caps its list."""
        if entity_count < 0:
            raise ValueError(f"capacity of {deployment!r} is {entity_count}; must be >= 0")
        lay = self.layout
        self._set_capacity(
            keys=[
                lay.capacity,
                lay.ranked(deployment),
                lay.avoid(deployment),
                lay.deployment(deployment),
                lay.deployments,
            ],
            args=[deployment, entity_count, repr(self.config.avoid_share_ratio), lay.channel],
        )

    def sweep_expired(self, limit: int = 1000) -> int:
        """Drop entities whose verdict key expired from the rankings; returns how many.

        Redis expires the verdict keys by itself; the sorted sets need this sweep (the sink
        runs it about once a second). Clients also check expiry locally, so a late sweep
        never shows an expired verdict as current.
        """
        seconds, micros = self.client.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        due = self.client.zrangebyscore(self.layout.expiry, "-inf", now_ms, start=0, num=limit)
        if not due:
            return 0
        entities = [as_text(e) for e in due]
        deployments = self.client.hmget(self.layout.entity_deployment, entities)
        pipe = self.client.pipeline(transaction=False)
        for entity, dep in zip(entities, deployments, strict=True):
            deployment = as_text(dep) if dep else ""
            self._expire(
                keys=self.layout.change_keys(entity, deployment),
                args=[entity, deployment, repr(self.config.avoid_share_ratio), self.layout.channel],
                client=pipe,
            )
        return sum(int(n) for n in pipe.execute())

    def _keys(self, record: Mapping[str, Any]) -> list[str]:
        return self.layout.change_keys(str(record["entity"]), str(record["deployment"]))

    def script_args(self, record: Mapping[str, Any], kafka_timestamp_ms: int = 0) -> list[Any]:
        """ARGV of the write script; raises InvalidVerdictError for an unusable record."""
        entity = str(record.get("entity", ""))
        try:
            version = int(record["version"])
            ttl = int(record["ttl_ns"])
            last_seen = int(record["last_seen_ns"])
            score = avoid_score(record)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidVerdictError(f"verdict for {entity!r} is incomplete: {exc}") from exc
        if not entity:
            raise InvalidVerdictError("verdict has an empty entity id; it is the topic key")
        if version < 0 or last_seen < 0:
            raise InvalidVerdictError(
                f"verdict for {entity!r}: version {version} and last_seen_ns {last_seen} must "
                "be non-negative"
            )
        if ttl <= 0:
            raise InvalidVerdictError(
                f"verdict for {entity!r} version {version}: ttl_ns={ttl} must be positive"
            )
        if not math.isfinite(score):
            raise InvalidVerdictError(f"verdict for {entity!r}: severity*confidence is {score}")
        heartbeat = record.get("condition") == HEARTBEAT_CONDITION
        return [
            entity,
            str(record["deployment"]),
            str(version),
            "heartbeat" if heartbeat else "verdict",
            str(record["state"]),
            repr(score),
            "1" if is_avoidable(record) else "0",
            ttl_ms(ttl),
            "" if heartbeat else json.dumps(record, separators=(",", ":")),
            str(last_seen),
            int(kafka_timestamp_ms),
            repr(self.config.avoid_share_ratio),
            self.config.history_maxlen,
            self.layout.channel,
            str(ttl),
            str(record.get("condition", "")),
            self.layout.ranked(""),
            self.layout.avoid(""),
            self.layout.deployment(""),
            # the event-time expiry, exact in ms (a Lua number cannot hold int64 ns)
            str(last_seen // NS_PER_MS + ttl_ms(ttl)),
            self.layout.event_expiry(""),
            self.layout.verdict(""),
        ]
