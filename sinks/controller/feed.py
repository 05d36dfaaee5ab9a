"""Verdicts into Redis as the sink writes them, then wait until the scheduler client has them.

The closed loop runs in event time in one process: after each control period the loop writes
that period's verdicts with :class:`sinks.redis_writer.RedisWriter` (the sink's own atomic
writer) and must not let the controller read before the client's cache caught up. The
client's cache is fed by a pub/sub thread, so :class:`VerdictFeed` registers a
``client.watch()`` before the first write and, after each batch, consumes change
notifications until every applied write ``(entity, version)`` has been seen. Every applied
write publishes exactly one notification, so the wait ends deterministically, and no sleep
is involved. A resync of the client (after a lost connection) loads a full snapshot taken
after the writes, which also counts as caught up.

Limits: a write that Redis ignores (an older or equal version) publishes nothing and is not
waited for; the wait gives up after ``timeout_s`` of wall time without a notification.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sinks.client import Change, SchedulerClient
from sinks.redis_writer import RedisWriter


class FeedTimeoutError(RuntimeError):
    """The scheduler client did not see the notifications of writes that Redis applied."""


class VerdictFeed:
    """Writes verdict batches and returns once ``client`` has applied them."""

    def __init__(self, writer: RedisWriter, client: SchedulerClient, timeout_s: float = 10.0):
        self.writer = writer
        self.client = client
        self.timeout_s = timeout_s
        self._changes: Iterator[Change] = client.watch(timeout_s=timeout_s)
        self.written = 0
        self.applied = 0

    def publish(self, records: Sequence[Mapping[str, Any]]) -> int:
        """Write ``records`` in order; return how many Redis applied, once the cache has them."""
        if not records:
            return 0
        results = self.writer.write_many([(r, 0) for r in records])
        pending = Counter((r.entity, r.version) for r in results if r.applied)
        applied = sum(pending.values())
        self.written += len(records)
        self.applied += applied
        while pending:
            change = next(self._changes, None)
            if change is None:
                missing = ", ".join(f"{e}@{v}" for e, v in list(pending)[:5])
                raise FeedTimeoutError(
                    f"scheduler client saw no change notification for {self.timeout_s:g} s while "
                    f"{sum(pending.values())} applied verdict writes were outstanding ({missing}); "
                    f"check that Redis pub/sub reaches the client (channel "
                    f"{self.client.layout.channel!r})"
                )
            if change.kind == "resync":
                pending.clear()
                break
            key = (change.entity, change.version or 0)
            if pending.get(key):
                pending[key] -= 1
                if not pending[key]:
                    del pending[key]
        return applied
