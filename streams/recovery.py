"""Exactly-once *state* for the worker's shards: which input message to apply, when to checkpoint.

Kafka redelivers, Faust seeks partitions to committed offsets after every rebalance, and a
restored shard needs the messages from its checkpoint on; none of those positions agree. So
the shard's own checkpoint decides. :class:`ShardRecovery` keeps, per input topic-partition,
the offset of the next message the shard's state expects, and answers for each message:

* ``PROCESS``: it is the expected one (or the partition has no checkpoint yet);
* ``SKIP``: it is already in the state (a redelivery);
* ``SEEK``: it is past the expected offset, so messages are missing (a restored partition,
  a rebalance whose seek did not happen, a fetch that raced a seek): the consumer must seek
  back to ``offset``; the message is skipped. Messages fetched before the seek arrive next,
  still past it and increasing: skipped (the seek is repeated every ``RESEEK_AFTER``). When
  the offsets go back down a re-read has begun: if it starts above the expected offset, the
  seek is made again (another seek, Faust's to the committed offsets, may have landed after
  ours); when a re-read starts at that same offset twice, the expected offset does not exist
  (a gap: offsets need not be contiguous) and is passed over.
  (The app turns off Faust's read-offset filter for these topics: it would drop the re-read
  messages behind the stale ones.)

A seek can still be lost with no message left to notice it: another seek (Faust's to the
committed offsets) lands after the shard's on a topic that has gone quiet, and nothing after
it arrives. So the worker asks :meth:`ShardRecovery.stalled` every 2 s: a topic-partition
whose end is past its expected offset, with no message on its way (:meth:`handed` to the
streams and not yet admitted) and that delivered nothing for ``QUIET_TICKS`` calls in a row
is sought back again, at most ``MAX_QUIET_SEEKS`` times while its expected offset and end
stay the same.

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from models.detector import Detector
from streams.checkpoint import CheckpointError, checkpoint_detector, read_checkpoint
from streams.shards import ShardPool

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]


RESEEK_AFTER = 5000  # skipped messages of a resume before its seek is repeated
QUIET_TICKS = 2  # calls of stalled() without a message before a partition counts as stalled
MAX_QUIET_SEEKS = 5  # seeks of a stalled partition while its expected offset and end stay put


@dataclass
class _Chase:
    """A topic-partition seeking back to its expected offset: the highest offset skipped
    since the seek, and how many were skipped."""

    max_seen: int
    skipped: int = 0
    restart_at: int | None = None  # where a re-read began above the expected offset


@dataclass
class _Quiet:
    """A topic-partition behind its end that delivered nothing: since which (expected, end),
    for how many calls of stalled(), and how many seeks it has had."""

    at: tuple[int, int]
    ticks: int = 0
    seeks: int = 0


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
    _seeking: dict[TopicPartition, _Chase] = field(default_factory=dict)
    _heard: set[TopicPartition] = field(default_factory=set)  # delivered since stalled()
    _handed: dict[TopicPartition, int] = field(default_factory=dict)  # last given to streams
    _admitted: dict[TopicPartition, int] = field(default_factory=dict)  # last seen by admit()
    _quiet: dict[TopicPartition, _Quiet] = field(default_factory=dict)
    gaps: int = 0
    _last_checkpoint_windows: dict[int, int] = field(default_factory=dict)
    skipped: int = 0
    seeks: int = 0
    quiet_seeks: int = 0
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
        for marks in (self._quiet, self._handed, self._admitted):
            for tp in [tp for tp in marks if tp[1] == partition]:
                del marks[tp]
        self._heard = {tp for tp in self._heard if tp[1] != partition}
        self._last_checkpoint_windows.pop(partition, None)

    def rebalanced(self) -> None:
        """A rebalance emptied the streams' queues: nothing handed to them is on its way."""
        self._handed.clear()
        self._admitted.clear()

    # -- per message --------------------------------------------------------------------
    def admit(self, topic: str, partition: int, offset: int) -> tuple[Admit, int]:
        """Decide about one message; with ``SEEK`` the second value is the offset to seek to."""
        tp = (topic, partition)
        self._heard.add(tp)
        self._admitted[tp] = offset
        expected = self._expected.get(tp)
        if expected is None or offset == expected:
            self._seeking.pop(tp, None)
            return Admit.PROCESS, offset
        if offset < expected:
            self.skipped += 1
            return Admit.SKIP, offset
        chase = self._seeking.get(tp)
        if chase is None:
            # Past the expected offset: messages are missing (a restore, a rebalance whose
            # seek did not happen, a fetch that raced a seek). Seek back to them.
            self._seeking[tp] = _Chase(max_seen=offset)
            self.seeks += 1
            self.skipped += 1
            return Admit.SEEK, expected
        if offset <= chase.max_seen and offset != chase.restart_at:
            # The offsets went back: a re-read has begun, above the expected offset. Either
            # those offsets do not exist, or another seek landed after ours (Faust's own, to
            # the committed offsets, can come after a rebalance's first messages). Seek again;
            # a re-read that begins at the same offset twice shows a gap.
            chase.restart_at = chase.max_seen = offset
            chase.skipped += 1
            self.skipped += 1
            self.seeks += 1
            return Admit.SEEK, expected
        if offset <= chase.max_seen:
            # The re-read began above the expected offset twice: that offset does not exist
            # (offsets need not be contiguous; deleted records are found at the seek, see
            # lost()). Take the gap.
            del self._seeking[tp]
            self.gaps += 1
            log.warning(
                "%s[%d]: offsets %d..%d do not exist; continuing at %d",
                topic,
                partition,
                expected,
                offset - 1,
                offset,
            )
            return Admit.PROCESS, offset
        # Fetched before the seek, still ahead of the re-read ones: skip (taking it as a gap
        # would lose the re-read messages). The seek is repeated every RESEEK_AFTER of them.
        chase.max_seen = offset
        chase.skipped += 1
        self.skipped += 1
        if chase.skipped % RESEEK_AFTER:
            return Admit.SKIP, offset
        self.seeks += 1
        return Admit.SEEK, expected

    def handed(self, topic: str, partition: int, offset: int) -> None:
        """The consumer put the message at ``offset`` into the streams' queues (it reaches
        admit() after the ones queued before it)."""
        self._handed[(topic, partition)] = offset

    def stalled(self, ends: Mapping[TopicPartition, int | None]) -> list[tuple[str, int, int]]:
        """Topic-partitions to seek back to their expected offset, as (topic, partition,
        offset): ``ends`` holds each assigned one's end offset (one past its last message;
        None while unknown). One whose expected offset is below its end, that has no message
        on its way (the last one handed to the streams reached admit()) and that delivered
        no message through ``QUIET_TICKS`` calls in a row is stalled: a seek back was lost
        (another seek landed after it) and nothing later arrives to make :meth:`admit` seek
        again. Called on a timer. A seek where nothing was lost (a paused partition) costs a
        redelivery, skipped here. After ``MAX_QUIET_SEEKS`` unanswered seeks at the same
        expected offset and end it stops asking (logged) until either moves: those offsets
        hold nothing to deliver (transaction markers)."""
        out = []
        for tp, end in ends.items():
            expected = self._expected.get(tp)
            handed = self._handed.get(tp)
            on_its_way = handed is not None and handed != self._admitted.get(tp)
            if expected is None or end is None or expected >= end:
                self._quiet.pop(tp, None)  # not behind
                continue
            if tp in self._heard or on_its_way:
                self._quiet.pop(tp, None)
                continue
            quiet = self._quiet.get(tp)
            if quiet is None or quiet.at != (expected, end):
                quiet = self._quiet[tp] = _Quiet(at=(expected, end))
            quiet.ticks += 1
            if quiet.ticks % QUIET_TICKS or quiet.seeks >= MAX_QUIET_SEEKS:
                continue
            quiet.seeks += 1
            self.quiet_seeks += 1
            if quiet.seeks == MAX_QUIET_SEEKS:
                log.warning(
                    "%s[%d]: offsets %d..%d never arrived after %d seeks; not seeking again "
                    "until the partition moves",
                    *tp,
                    expected,
                    end - 1,
                    quiet.seeks,
                )
            out.append((tp[0], tp[1], expected))
        self._heard.clear()
        return out

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

    def start_at(self, topic: str, partition: int, offset: int) -> None:
        """Where the consumer starts on a topic-partition the shard has no position on yet
        (the app asks the group's committed offset before a checkpoint). It enters the next
        checkpoint, so a restore seeks that topic back there even when the group committed
        past the topic's first messages before a checkpoint covered them."""
        self._expected.setdefault((topic, partition), offset)

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
