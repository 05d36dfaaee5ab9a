"""Exactly-once *state* for the worker's shards: which input message to apply, when to checkpoint.

Kafka redelivers, Faust seeks partitions to committed offsets after every rebalance, and a
restored shard needs the messages from its checkpoint on; none of those positions agree. So
the shard's own checkpoint decides. :class:`ShardRecovery` keeps, per input topic-partition,
the offset of the next message the shard's state expects, and answers for each message:

* ``PROCESS``: it is the expected one (or the partition has no checkpoint yet);
* ``SKIP``: it is already in the state (a redelivery);
* ``SEEK``: it is past the expected offset: the consumer must seek back to ``offset``; the
  message is skipped and comes again. Repeated for every such message until the expected
  one arrives (a message fetched before a seek can undo it in Faust's read-offset filter).

Checkpoints are due when a shard has closed ``interval_windows`` windows since its last one
(default 4 windows: 1 s of event time with 250 ms hops), never per frame. A checkpoint covers
exactly the messages applied so far, so restoring it and re-reading from its offsets repeats
at most one interval of outputs, and repeats them identically (same verdict versions).

Limits: identical repeats need the same message order per shard. Within one topic-partition
Kafka guarantees it; across the telemetry topics that feed one shard the interleaving on
re-read may differ from the first read, so a window whose input straddles the restart can
differ when frames arrive near the allowed lateness. Nothing here is Faust-specific; the app
does the seeking and the table writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum

from models.detector import Detector
from streams.checkpoint import CheckpointError, checkpoint_detector, read_checkpoint
from streams.shards import ShardPool

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]


MAX_RESUME_SEEKS = 20


class Admit(Enum):
    PROCESS = "process"
    SKIP = "skip"
    SEEK = "seek"


@dataclass
class ShardRecovery:
    """Offsets, seeks and checkpoint cadence for the shards of one :class:`ShardPool`."""

    pool: ShardPool
    interval_windows: int = 4
    _expected: dict[TopicPartition, int] = field(default_factory=dict)
    _seeking: dict[TopicPartition, int] = field(default_factory=dict)
    # topic-partitions restored from a checkpoint whose first message has not come yet, with
    # the seeks spent on it
    _resuming: dict[TopicPartition, int] = field(default_factory=dict)
    gaps: int = 0
    _last_checkpoint_windows: dict[int, int] = field(default_factory=dict)
    skipped: int = 0
    seeks: int = 0
    checkpoints: int = 0

    # -- assignment ---------------------------------------------------------------------
    def restore(self, partition: int, blob: bytes | None) -> str:
        """Make ``partition``'s shard the checkpointed one (or a fresh one); say what was done."""
        self.forget(partition)
        if blob is None:
            self.pool.shards[partition] = self._fresh()
            return f"partition {partition}: no checkpoint, fresh state from committed offsets"
        try:
            cp = read_checkpoint(blob)
            det = cp.restore(self.pool.config, self.pool.runbook, self.pool.topology)
        except CheckpointError as exc:
            self.pool.shards[partition] = self._fresh()
            log.error("partition %d: checkpoint refused (%s); starting it empty", partition, exc)
            return f"partition {partition}: checkpoint refused, fresh state"
        self.pool.shards[partition] = det
        for tp, offset in cp.offsets.items():
            if tp[1] == partition:
                self._expected[tp] = offset
                self._resuming[tp] = 0
        self._last_checkpoint_windows[partition] = cp.windows_closed
        return (
            f"partition {partition}: restored at watermark {cp.watermark_ns} after "
            f"{cp.windows_closed} windows, resuming at offsets "
            + ", ".join(f"{t}={o}" for (t, _), o in sorted(cp.offsets.items()))
        )

    def forget(self, partition: int) -> None:
        """Drop a partition's shard and positions (revoked, or about to be restored)."""
        self.pool.shards.pop(partition, None)
        for tp in [tp for tp in self._expected if tp[1] == partition]:
            del self._expected[tp]
        for tp in [tp for tp in self._seeking if tp[1] == partition]:
            del self._seeking[tp]
        for tp in [tp for tp in self._resuming if tp[1] == partition]:
            del self._resuming[tp]
        self._last_checkpoint_windows.pop(partition, None)

    # -- per message --------------------------------------------------------------------
    def admit(self, topic: str, partition: int, offset: int) -> tuple[Admit, int]:
        """Decide about one message; with ``SEEK`` the second value is the offset to seek to."""
        tp = (topic, partition)
        expected = self._expected.get(tp)
        if expected is None or offset == expected:
            self._seeking.pop(tp, None)
            self._resuming.pop(tp, None)
            return Admit.PROCESS, offset
        if offset < expected:
            self.skipped += 1
            return Admit.SKIP, offset
        attempts = self._resuming.get(tp)
        if attempts is None or attempts >= MAX_RESUME_SEEKS:
            # Outside a resume, a higher offset is a gap in the log (offsets need not be
            # contiguous): take it. Seeking back here would never find the missing offset
            # and would stall the partition.
            self._resuming.pop(tp, None)
            self.gaps += 1
            return Admit.PROCESS, offset
        # Resuming from a checkpoint, past the expected offset: a message fetched before the
        # seek can move Faust's read offset past the one we want, so the seek is repeated
        # (a bounded number of times) until the expected message arrives.
        self._resuming[tp] = attempts + 1
        self._seeking[tp] = expected
        self.seeks += 1
        self.skipped += 1
        return Admit.SEEK, expected

    def lost(self, topic: str, partition: int, first_available: int) -> None:
        """The expected records are gone (retention deleted them): continue from the first
        available one (the caller seeks there). The windows those records fed are
        incomplete; logged as an error."""
        tp = (topic, partition)
        log.error(
            "%s[%d]: records %s..%d were deleted before this shard applied them; its windows "
            "over that time are incomplete (raise telemetry retention above the recovery time)",
            topic,
            partition,
            self._expected.get(tp),
            first_available - 1,
        )
        self._expected[tp] = first_available
        self._seeking[tp] = first_available

    def applied(self, topic: str, partition: int, offset: int) -> None:
        """The message at ``offset`` is now in the shard's state."""
        self._expected[(topic, partition)] = offset + 1

    def expected(self, topic: str, partition: int) -> int | None:
        return self._expected.get((topic, partition))

    # -- checkpoints --------------------------------------------------------------------
    def due(self, partition: int) -> bool:
        det = self.pool.shards.get(partition)
        if det is None:
            return False
        last = self._last_checkpoint_windows.get(partition, 0)
        return det.stats.windows_closed - last >= self.interval_windows

    def checkpoint(self, partition: int) -> bytes:
        """The shard's checkpoint with the offsets it has applied up to (exclusive)."""
        det = self.pool.shard(partition)
        offsets = {tp: off for tp, off in self._expected.items() if tp[1] == partition}
        self._last_checkpoint_windows[partition] = det.stats.windows_closed
        self.checkpoints += 1
        return checkpoint_detector(det, offsets)

    def _fresh(self) -> Detector:
        return Detector(self.pool.runbook, self.pool.config, self.pool.topology)
