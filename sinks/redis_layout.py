"""Redis key names of the verdict sink; docs/redis-layout.md is the human description.

Every key and the notification channel start with a configurable prefix (default ``skew:``).

======================================  ======  ===============================================
key                                     type    content
======================================  ======  ===============================================
``<p>verdict:<entity>``                 string  current verdict of the entity, JSON; PEXPIRE
                                                ttl_ns (wall clock, from the write), and
                                                gone once its deployment's event time passes
                                                last_seen_ns + ttl_ns
``<p>versions``                         hash    entity -> newest version applied (no expiry)
``<p>entity_deployment``                hash    entity -> deployment (resync, expiry sweep)
``<p>expiry``                           zset    entity -> wall-clock expiry, ms since epoch
``<p>event_expiry:<dep>``               zset    entity -> event-time expiry, ms since epoch
                                                (last_seen_ns + ttl_ns)
``<p>deployments``                      set     deployments seen
``<p>deployment:<dep>``                 hash    freshness and health: last_event_ns,
                                                updated_wall_ms, pipeline_lag_ms,
                                                freshness_bound_ns, seq
``<p>ranked:<dep>``                     zset    firing, unsuppressed entities, score =
                                                severity * confidence (uncapped)
``<p>avoid:<dep>``                      zset    top floor(share * capacity) of ranked
``<p>worst``                            zset    firing, unsuppressed entities of every
                                                deployment, same score
``<p>capacity``                         hash    deployment -> number of entities
``<p>history``                          stream  every applied change, XADD MAXLEN ~ N
``<p>changes``                          pubsub  one JSON message per applied change
``<p>sink_epoch``                       string  id of this Redis's content; the sink's
                                                consumer group is ``<group>.<epoch>``
``<p>rebuilding``                       string  set while a sink refills an empty Redis
                                                from the verdict topic (the epoch); the
                                                client reads every entity unknown then
``<p>sink_offsets``                     hash    "<topic>:<partition>" -> the offset after the
                                                newest record applied from it (written by
                                                the same script as the record)
``<p>rebuild_pending``                  set     the verdict topic's partitions whose
                                                verdicts (as of the rebuild's start) are not
                                                in yet; the last sink to catch up clears
                                                ``<p>rebuilding``
======================================  ======  ===============================================

Limits: a standalone Redis (or one cluster hash slot): scripts touch per-deployment and
global keys together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HEARTBEAT_CONDITION = "heartbeat"
HEARTBEAT_SUFFIX = "/heartbeat"


@dataclass(frozen=True)
class RedisLayout:
    """Key names under one prefix."""

    prefix: str = "skew:"

    def verdict(self, entity: str) -> str:
        return f"{self.prefix}verdict:{entity}"

    def deployment(self, deployment: str) -> str:
        return f"{self.prefix}deployment:{deployment}"

    def ranked(self, deployment: str) -> str:
        return f"{self.prefix}ranked:{deployment}"

    def avoid(self, deployment: str) -> str:
        return f"{self.prefix}avoid:{deployment}"

    def event_expiry(self, deployment: str) -> str:
        return f"{self.prefix}event_expiry:{deployment}"

    @property
    def versions(self) -> str:
        return f"{self.prefix}versions"

    @property
    def entity_deployment(self) -> str:
        return f"{self.prefix}entity_deployment"

    @property
    def expiry(self) -> str:
        return f"{self.prefix}expiry"

    @property
    def deployments(self) -> str:
        return f"{self.prefix}deployments"

    @property
    def worst(self) -> str:
        return f"{self.prefix}worst"

    @property
    def capacity(self) -> str:
        return f"{self.prefix}capacity"

    @property
    def history(self) -> str:
        return f"{self.prefix}history"

    @property
    def sink_epoch(self) -> str:
        return f"{self.prefix}sink_epoch"

    @property
    def rebuilding(self) -> str:
        return f"{self.prefix}rebuilding"

    @property
    def rebuild_pending(self) -> str:
        return f"{self.prefix}rebuild_pending"

    @property
    def sink_offsets(self) -> str:
        return f"{self.prefix}sink_offsets"

    @property
    def channel(self) -> str:
        return f"{self.prefix}changes"

    def change_keys(self, entity: str, deployment: str) -> list[str]:
        """KEYS of the write and expire scripts, in the order the scripts read them."""
        return [
            self.verdict(entity),
            self.versions,
            self.entity_deployment,
            self.expiry,
            self.deployments,
            self.deployment(deployment),
            self.ranked(deployment),
            self.avoid(deployment),
            self.worst,
            self.capacity,
            self.history,
            self.rebuilding,
            self.sink_offsets,
            self.event_expiry(deployment),
        ]


def heartbeat_entity(deployment: str) -> str:
    """Entity id of a deployment's heartbeat records (never a real entity id)."""
    return f"{deployment}{HEARTBEAT_SUFFIX}"


def as_text(value: Any) -> str:
    """A Redis reply item as str (replies are bytes unless decode_responses is on)."""
    return value.decode() if isinstance(value, bytes) else str(value)
