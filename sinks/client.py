"""Scheduler client: health, verdicts and avoid-lists from a local cache kept fresh by Redis.

A background thread subscribes to ``<p>changes``, then loads a full snapshot (one MULTI), and
applies every change message after it; lookups (``health``, ``verdict``, ``avoid_list``,
``worst``) are memory reads. When the connection drops the client marks itself disconnected,
reconnects with backoff and resyncs in full, so a message lost during the outage cannot leave
the cache wrong.

No data is never health: ``health()`` answers ``unknown`` while Redis is unreachable or the
cache has not synced, while a sink refills an empty Redis (``<p>rebuilding``), when the
entity's deployment has no freshness record, and when the deployment's newest event time is
older than its freshness bound. ``FailPolicy`` decides what
``should_avoid()`` makes of ``unknown``: ``OPEN`` (default) keeps using the entity, ``CLOSED``
avoids it.

Limits: expiry and staleness compare this host's wall clock with the Redis server's and the
producers' (keep them NTP/PTP-synced); a watcher that stops reading grows its queue.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis

from sinks.config import SinkConfig
from sinks.connection import (
    RedisAuthError,
    RedisUnavailableError,
    connect,
    ping,
    redacted_url,
)
from sinks.redis_layout import RedisLayout, as_text
from sinks.redis_writer import avoid_score, is_avoidable

log = logging.getLogger(__name__)

_RESYNC_CHUNK = 500
WATCH_BACKLOG = 10_000  # changes a watcher may fall behind before it is told it lagged


class Health(StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"


class FailPolicy(StrEnum):
    """What an avoid decision makes of ``unknown`` health."""

    OPEN = "open"  # unknown: keep scheduling on it
    CLOSED = "closed"  # unknown: avoid it


@dataclass(frozen=True)
class HealthReport:
    """Health of one entity; ``staleness_ns`` is now minus the deployment's newest event time."""

    entity: str
    health: Health
    reason: str
    deployment: str | None = None
    staleness_ns: int | None = None
    verdict: dict[str, Any] | None = None


@dataclass(frozen=True)
class DeploymentState:
    """Freshness and avoid-list bookkeeping of one deployment, as Redis holds it."""

    last_event_ns: int | None = None
    updated_wall_ms: int | None = None
    pipeline_lag_ms: int | None = None
    freshness_bound_ns: int | None = None
    capacity: int | None = None
    avoid_cap: int | None = None
    seq: int = 0

    @classmethod
    def from_flat(cls, flat: list[Any] | Mapping[Any, Any]) -> DeploymentState:
        items = list(flat.items()) if isinstance(flat, Mapping) else _pairs(list(flat))
        values = {as_text(k): _int(as_text(v)) for k, v in items}
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass(frozen=True)
class Change:
    """One applied change: kind is verdict, heartbeat, expired, capacity, resync,
    disconnected, rebuilding / rebuilt (a sink refilling an empty Redis, then done), or
    moved (the entity's verdict now belongs to another deployment: ``deployment`` is the one
    it left, whose avoid-list no longer holds it), or lagged (the watcher fell behind and
    its backlog was dropped: read the state again from the lookups)."""

    kind: str
    entity: str = ""
    deployment: str = ""
    version: int | None = None
    verdict: dict[str, Any] | None = None


@dataclass
class _Cached:
    record: dict[str, Any]
    version: int
    expires_at_ms: int


@dataclass
class _Snapshot:
    verdicts: dict[str, _Cached] = field(default_factory=dict)
    deployments: dict[str, DeploymentState] = field(default_factory=dict)
    avoid: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    rebuilding: str = ""  # the epoch a sink is refilling Redis for ("": Redis is whole)


class SchedulerClient:
    """Read verdicts for scheduling decisions; see the module docstring.

    ``url`` is a Redis URL (credentials and TLS as in :mod:`sinks.connection`); ``config``
    gives the key prefix, credentials from the environment and the default freshness bound;
    ``entity_deployments`` maps entities that have no verdict (e.g. nodes) to a deployment;
    ``clock_ns`` is the wall clock (tests replace it).
    """

    def __init__(
        self,
        url: str,
        config: SinkConfig | None = None,
        policy: FailPolicy = FailPolicy.OPEN,
        entity_deployments: Mapping[str, str] | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        reconnect_backoff_max_s: float = 2.0,
    ) -> None:
        self.url = url
        self.config = config or SinkConfig()
        self.policy = policy
        self.layout = RedisLayout(self.config.key_prefix)
        self.default_freshness_bound_ns = self.config.freshness_bound_ms * 1_000_000
        self.clock_ns = clock_ns
        self.reconnect_backoff_max_s = reconnect_backoff_max_s
        self._entity_deployments = dict(entity_deployments or {})
        self._lock = threading.Lock()
        self._cache = _Snapshot()
        self._connected = False
        self._disconnected_since_ns: int | None = None
        self._first_attempt = threading.Event()
        self._closed = threading.Event()
        self._watchers: list[queue.Queue[Change | None]] = []
        self._thread: threading.Thread | None = None
        self._fatal: Exception | None = None
        self.resyncs = 0

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, wait_s: float = 5.0) -> SchedulerClient:
        """Start the listener; wait up to ``wait_s`` for the first sync.

        Raises :class:`RedisAuthError` when the credentials are refused. When the first
        attempt fails it returns at once: lookups read ``unknown`` until the client connects.
        """
        self._thread = threading.Thread(target=self._listen, name="skewscope-client", daemon=True)
        self._thread.start()
        self._first_attempt.wait(wait_s)
        if self._fatal is not None:
            raise self._fatal
        return self

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for watcher in self._watchers:
                _offer(watcher, None)

    def __enter__(self) -> SchedulerClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        """True while the cache follows Redis (subscribed and synced)."""
        return self._connected

    # -- lookups (memory reads) ---------------------------------------------------------
    def health(self, entity: str, deployment: str | None = None) -> HealthReport:
        """healthy / unhealthy / unknown for ``entity``, with staleness and the reason."""
        now_ns = self.clock_ns()
        with self._lock:
            if not self._connected:
                since = self._disconnected_since_ns
                why = "not synced yet" if since is None else "Redis unreachable"
                return HealthReport(entity, Health.UNKNOWN, why)
            if self._cache.rebuilding:
                return HealthReport(
                    entity,
                    Health.UNKNOWN,
                    "Redis is being refilled from the verdict topic (a sink is rebuilding it)",
                )
            cached = self._live(entity, now_ns)
            dep = deployment or self._deployment_of(entity, cached)
            if dep is None:
                return HealthReport(
                    entity,
                    Health.UNKNOWN,
                    "deployment of the entity unknown (no verdict; pass deployment= or "
                    "entity_deployments=)",
                )
            state = self._cache.deployments.get(dep)
        verdict = cached.record if cached else None
        if state is None or state.last_event_ns is None:
            return HealthReport(
                entity, Health.UNKNOWN, "no data for the deployment", dep, verdict=verdict
            )
        staleness_ns = now_ns - state.last_event_ns
        bound_ns = state.freshness_bound_ns or self.default_freshness_bound_ns
        if staleness_ns > bound_ns:
            return HealthReport(
                entity,
                Health.UNKNOWN,
                f"deployment data is {staleness_ns / 1e9:.3f} s old, bound {bound_ns / 1e9:.3f} s",
                dep,
                staleness_ns,
                verdict,
            )
        if verdict is not None and verdict["state"] == "firing":
            return HealthReport(
                entity, Health.UNHEALTHY, str(verdict["condition"]), dep, staleness_ns, verdict
            )
        return HealthReport(
            entity, Health.HEALTHY, "fresh data, no firing verdict", dep, staleness_ns, verdict
        )

    def deployment_health(self, deployment: str) -> HealthReport:
        """The deployment as a whole: unknown when stale, unhealthy while any entity fires."""
        report = self.health(deployment, deployment=deployment)
        if report.health is not Health.HEALTHY:
            return report
        now_ns = self.clock_ns()
        with self._lock:
            live = [self._live(e, now_ns) for e in self._cache.verdicts]
        firing = sorted(
            c.record["entity"]
            for c in live
            if c is not None
            and c.record["deployment"] == deployment
            and c.record["state"] == "firing"
        )
        if not firing:
            return report
        return dataclasses.replace(
            report, health=Health.UNHEALTHY, reason=f"firing: {', '.join(firing[:5])}"
        )

    def should_avoid(self, entity: str, deployment: str | None = None) -> bool:
        """True when the entity is on its deployment's avoid-list, or unknown under CLOSED."""
        report = self.health(entity, deployment)
        if report.health is Health.UNKNOWN:
            return self.policy is FailPolicy.CLOSED
        if report.deployment is None:
            return False
        return any(e == entity for e, _ in self.avoid_list(report.deployment))

    def verdict(self, entity: str) -> dict[str, Any] | None:
        """The entity's current (unexpired) verdict record, firing or resolved, or None."""
        with self._lock:
            cached = self._live(entity, self.clock_ns())
        return cached.record if cached else None

    def avoid_list(self, deployment: str) -> list[tuple[str, float]]:
        """``(entity, severity*confidence)``, worst first, capped at the configured share."""
        now_ns = self.clock_ns()
        with self._lock:
            listed = self._cache.avoid.get(deployment, [])
            return [(e, s) for e, s in listed if self._live(e, now_ns) is not None]

    def worst(self, k: int) -> list[dict[str, Any]]:
        """The ``k`` firing, unsuppressed verdicts of highest severity*confidence, fleet-wide."""
        now_ns = self.clock_ns()
        with self._lock:
            live = [self._live(e, now_ns) for e in self._cache.verdicts]
        firing = [c.record for c in live if c is not None and is_avoidable(c.record)]
        firing.sort(key=lambda r: (-avoid_score(r), r["entity"]))
        return firing[:k]

    def deployments(self) -> list[str]:
        """Deployments the cache knows, sorted."""
        with self._lock:
            return sorted(self._cache.deployments)

    def entities(self) -> list[str]:
        """Entities with an unexpired verdict in the cache, sorted."""
        now_ns = self.clock_ns()
        with self._lock:
            return sorted(e for e in self._cache.verdicts if self._live(e, now_ns) is not None)

    def deployment_state(self, deployment: str) -> DeploymentState | None:
        with self._lock:
            return self._cache.deployments.get(deployment)

    def watch(
        self, timeout_s: float | None = None, max_backlog: int = WATCH_BACKLOG
    ) -> Iterator[Change]:
        """Changes applied from now on (registered at the call, not at the first ``next``).

        The iterator ends on ``close()``, or after ``timeout_s`` without a change. A watcher
        that falls ``max_backlog`` changes behind (or stops reading) loses its backlog and
        gets one ``Change("lagged")`` in its place: the lookups stay current, so it should
        read the state it needs from them again. Memory per watcher stays bounded.
        """
        if max_backlog < 1:
            raise ValueError(f"max_backlog is {max_backlog}; it must be at least 1")
        inbox: queue.Queue[Change | None] = queue.Queue(maxsize=max_backlog)
        with self._lock:
            self._watchers.append(inbox)
        return self._drain(inbox, timeout_s)

    def _drain(
        self, inbox: queue.Queue[Change | None], timeout_s: float | None
    ) -> Iterator[Change]:
        try:
            while not self._closed.is_set():
                try:
                    change = inbox.get(timeout=timeout_s)
                except queue.Empty:
                    return
                if change is None:
                    return
                yield change
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._watchers.remove(inbox)

    # -- cache helpers (call with the lock held) ----------------------------------------
    def _live(self, entity: str, now_ns: int) -> _Cached | None:
        cached = self._cache.verdicts.get(entity)
        if cached is None or cached.expires_at_ms * 1_000_000 <= now_ns:
            return None
        return cached

    def _deployment_of(self, entity: str, cached: _Cached | None) -> str | None:
        if entity in self._entity_deployments:
            return self._entity_deployments[entity]
        if cached is not None:
            return str(cached.record["deployment"])
        known = self._cache.deployments
        if entity in known:
            return entity
        head = entity.split("/", 1)[0]
        return head if head in known else None

    def _notify(self, change: Change) -> None:
        for watcher in self._watchers:
            _offer(watcher, change)

    # -- listener thread ----------------------------------------------------------------
    def _listen(self) -> None:
        backoff_s = 0.05
        while not self._closed.is_set():
            pubsub = None
            try:
                client = connect(self.url, self.config, check=False)
                ping(client, self.url)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.layout.channel)
                self._resync(client)
                backoff_s = 0.05
                while not self._closed.is_set():
                    message = pubsub.get_message(timeout=0.1)
                    if message is not None and message.get("type") == "message":
                        self._apply(json.loads(message["data"]))
            except RedisAuthError as exc:
                self._fatal = exc
                self._first_attempt.set()
                log.error("scheduler client: %s", exc)
                return
            except (redis.RedisError, RedisUnavailableError, OSError) as exc:
                self._mark_disconnected(exc)
                self._first_attempt.set()
                self._closed.wait(backoff_s)
                backoff_s = min(backoff_s * 2, self.reconnect_backoff_max_s)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(redis.RedisError, OSError):
                        pubsub.close()

    def _mark_disconnected(self, exc: BaseException) -> None:
        with self._lock:
            was = self._connected
            self._connected = False
            if self._disconnected_since_ns is None or was:
                self._disconnected_since_ns = self.clock_ns()
            if was:
                self._notify(Change("disconnected"))
        if was:
            log.warning(
                "scheduler client: lost Redis at %s (%s); health reads unknown until it is back",
                redacted_url(self.url),
                type(exc).__name__,
            )

    def _resync(self, client: redis.Redis) -> None:
        """Load the whole state in one MULTI; messages queued meanwhile apply on top."""
        lay = self.layout
        names = client.pipeline(transaction=True)
        names.hkeys(lay.entity_deployment)
        names.smembers(lay.deployments)
        entity_keys, dep_keys = names.execute()
        entities = sorted(as_text(e) for e in entity_keys)
        deployments = sorted(as_text(d) for d in dep_keys)
        snap = client.pipeline(transaction=True)
        snap.time()
        snap.get(lay.rebuilding)
        for dep in deployments:
            snap.hgetall(lay.deployment(dep))
            snap.zrange(lay.avoid(dep), 0, -1, desc=True, withscores=True)
        for i in range(0, len(entities), _RESYNC_CHUNK):
            chunk = entities[i : i + _RESYNC_CHUNK]
            snap.mget([lay.verdict(e) for e in chunk])
            for e in chunk:
                snap.pttl(lay.verdict(e))
        replies = snap.execute()
        seconds, micros = replies[0]
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        fresh = _Snapshot(rebuilding=as_text(replies[1] or b""))
        pos = 2
        for dep in deployments:
            fresh.deployments[dep] = DeploymentState.from_flat(replies[pos])
            fresh.avoid[dep] = [(as_text(e), float(s)) for e, s in replies[pos + 1]]
            pos += 2
        for i in range(0, len(entities), _RESYNC_CHUNK):
            chunk = entities[i : i + _RESYNC_CHUNK]
            values = replies[pos]
            ttls = replies[pos + 1 : pos + 1 + len(chunk)]
            pos += 1 + len(chunk)
            for value, ttl_ms in zip(values, ttls, strict=True):
                if value is None or int(ttl_ms) < 0:
                    continue
                record = json.loads(value)
                fresh.verdicts[record["entity"]] = _Cached(
                    record, int(record["version"]), now_ms + int(ttl_ms)
                )
        with self._lock:
            self._cache = fresh
            self._connected = True
            self._disconnected_since_ns = None
            self.resyncs += 1
            self._notify(Change("resync"))
        self._first_attempt.set()

    def _apply(self, message: dict[str, Any]) -> None:
        kind = str(message.get("kind", ""))
        if kind in ("rebuilding", "rebuilt"):
            with self._lock:
                epoch = str(message.get("epoch", ""))
                self._cache.rebuilding = epoch if kind == "rebuilding" else ""
                self._notify(Change(kind))
            return
        entity = str(message.get("entity", ""))
        dep = str(message.get("deployment", ""))
        version = int(message["version"]) if message.get("version") else None
        record: dict[str, Any] | None = None
        with self._lock:
            cached = self._cache.verdicts.get(entity)
            if kind == "verdict" and version is not None:
                if cached is None or version > cached.version:
                    record = json.loads(message["verdict"])
                    expires = _int(str(message["expires_at_ms"]))
                    self._cache.verdicts[entity] = _Cached(record, version, expires)
            elif (
                kind == "expired"
                and cached is not None
                and (version is None or cached.version <= version)
            ):
                del self._cache.verdicts[entity]
            state = DeploymentState.from_flat(message.get("deployment_state") or [])
            known = self._cache.deployments.get(dep)
            if known is None or state.seq > known.seq:
                self._cache.deployments[dep] = state
                flat = message.get("avoid") or []
                flat = flat if isinstance(flat, list) else []
                self._cache.avoid[dep] = [(str(e), float(s)) for e, s in _pairs(flat)]
            self._notify(Change(kind, entity, dep, version, record))


def _offer(inbox: queue.Queue[Change | None], item: Change | None) -> None:
    """Queue ``item`` for a watcher without ever blocking the listener thread. A full inbox
    (a watcher that fell behind, or stopped reading) is emptied and gets one lag notice in
    place of its backlog and this change; the end marker (None) always gets through."""
    try:
        inbox.put_nowait(item)
        return
    except queue.Full:
        pass
    with contextlib.suppress(queue.Empty):
        while True:
            inbox.get_nowait()
    inbox.put_nowait(None if item is None else Change("lagged"))


def _pairs(flat: list[Any]) -> list[tuple[Any, Any]]:
    """[k1, v1, k2, v2] -> [(k1, v1), (k2, v2)] (Redis flat replies)."""
    return list(zip(flat[::2], flat[1::2], strict=True))


def _int(text: str) -> int:
    """Exact for int64 ns (a float would round them); tolerates '12.0' from Lua."""
    try:
        return int(text)
    except ValueError:
        return int(float(text))
