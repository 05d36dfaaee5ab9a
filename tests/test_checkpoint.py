"""Detector checkpoints: restore anywhere in a stream and the outputs are the uninterrupted ones."""

from __future__ import annotations

import copy
import pickle
import struct
from typing import Any

import pytest

from models.detector import Detector, DetectorConfig, Output
from producers.sim.scenario import load_scenario
from producers.sim.simulation import Simulation
from streams.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    checkpoint_detector,
    read_checkpoint,
)
from streams.hopping import HoppingSpec
from streams.topology import Topology
from tests.synthetic import collective_frames, topology

Frames = list[tuple[str, dict[str, Any]]]
Emitted = list[tuple[str, str, dict[str, Any]]]


def _emitted(outputs: list[Output]) -> Emitted:
    # Copied at emission, as the live worker encodes them at once: fusion keeps (and later
    # updates) the dict of the verdict it last emitted.
    return [(o.schema, o.key, copy.deepcopy(o.record)) for o in outputs]


def _fresh(topo: list[dict[str, Any]]) -> Detector:
    det = Detector(topology=Topology.from_records(topo))
    return det


def _uninterrupted(frames: Frames, topo: list[dict[str, Any]]) -> Emitted:
    det = _fresh(topo)
    out: Emitted = []
    for schema, record in frames:
        out += _emitted(det.process(schema, record))
    return out + _emitted(det.flush())


def _with_restarts(frames: Frames, topo: list[dict[str, Any]], cuts: list[int]) -> Emitted:
    """Run, checkpointing and restoring into a brand-new detector at every cut."""
    det = _fresh(topo)
    out: Emitted = []
    position = 0
    for cut in [*cuts, len(frames)]:
        for schema, record in frames[position:cut]:
            out += _emitted(det.process(schema, record))
        position = cut
        if cut < len(frames):
            blob = checkpoint_detector(det, {("telemetry.nccl.collectives", 0): cut})
            det = read_checkpoint(blob).restore(topology=Topology.from_records(topo))
    return out + _emitted(det.flush())


def _straggler_then_hang() -> Frames:
    straggler = collective_frames(
        {5: 1.2}, seconds=8, clock_offset_ns={"node0": 50_000_000, "node1": -30_000_000}
    )
    return straggler + collective_frames(
        {}, seconds=6, hung_rank=3, hang_after_s=3.0, deployment="dep1", seed=1
    )


def test_restore_at_several_points_gives_identical_outputs_on_collectives() -> None:
    frames = sorted(_straggler_then_hang(), key=lambda f: f[1]["frame_seq"])
    topo = topology() + topology("dep1")
    expected = _uninterrupted(frames, topo)
    assert any(r["condition"] == "tp-straggler" for _, _, r in expected)
    n = len(frames)
    for cuts in ([n // 5], [n // 3, n // 2], [7, n // 4, n // 2, 3 * n // 4, n - 3]):
        assert _with_restarts(frames, topo, cuts) == expected, f"cuts {cuts}"


def test_restore_gives_identical_outputs_on_every_telemetry_source() -> None:
    sim = Simulation(load_scenario("tp-straggler"), seed=3)
    frames = [(f.schema, f.record) for f in sim.frames(duration_s=10.0)]
    assert {s for s, _ in frames} >= {"CollectiveFrame", "GpuSampleFrame", "NicCounterFrame"}
    expected = _uninterrupted(frames, sim.topology)
    assert any(r["condition"] != "heartbeat" for _, _, r in expected)
    n = len(frames)
    assert _with_restarts(frames, sim.topology, [n // 3, 2 * n // 3]) == expected


def test_checkpoint_header_carries_offsets_and_progress() -> None:
    det = _fresh(topology())
    for schema, record in collective_frames({}, seconds=3):
        det.process(schema, record)
    offsets = {("telemetry.nccl.collectives", 1): 31, ("telemetry.gpu", 1): 7}
    cp = read_checkpoint(checkpoint_detector(det, offsets))
    assert cp.offsets == offsets
    assert cp.watermark_ns == det.watermark_ns > 0
    assert cp.windows_closed == det.stats.windows_closed > 0


def test_restored_detector_shares_the_pool_topology_not_a_copy() -> None:
    det = _fresh(topology())
    for schema, record in collective_frames({}, seconds=2):
        det.process(schema, record)
    shared = Topology.from_records(topology())
    restored = read_checkpoint(checkpoint_detector(det, {})).restore(topology=shared)
    assert restored.topology is shared
    assert restored.collectives.topology is shared
    assert restored.collectives.aligner is restored.aligner


def test_checkpoint_of_another_window_geometry_is_refused() -> None:
    det = _fresh(topology())
    blob = checkpoint_detector(det, {})
    other = DetectorConfig(window=HoppingSpec(size_ns=2_000_000_000, hop_ns=500_000_000))
    with pytest.raises(CheckpointError, match="windows of 1000000000 ns"):
        read_checkpoint(blob).restore(config=other)


def test_damaged_or_foreign_bytes_are_refused_with_a_reason() -> None:
    blob = checkpoint_detector(_fresh(topology()), {})
    with pytest.raises(CheckpointError, match="not a skewscope checkpoint"):
        read_checkpoint(b"garbage")
    damaged = blob[:-10] + bytes(10)
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint(damaged)
    newer = blob[:4] + struct.pack("<H", FORMAT_VERSION + 1) + blob[6:]
    with pytest.raises(CheckpointError, match="format version"):
        read_checkpoint(newer)


class _RunsCode:
    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.getpid, ())


def test_checkpoint_body_cannot_run_arbitrary_code() -> None:
    blob = checkpoint_detector(_fresh(topology()), {})
    cp = read_checkpoint(blob)
    body = pickle.dumps({"window": (1, 1), "x": _RunsCode()})
    evil = type(cp)(offsets={}, watermark_ns=0, windows_closed=0, body=body)
    with pytest.raises(CheckpointError, match=r"(posix|os)\.getpid"):
        evil.restore()


def test_a_gap_in_the_log_is_taken_once_the_re_read_shows_it() -> None:
    """Offsets need not be contiguous: a higher offset first seeks back; when the re-read
    starts again above the expected offset (the offsets went back down), it seeks once more
    (another seek may have landed after its own); a second re-read that starts there too
    shows the missing offsets do not exist, and the partition carries on (chasing them
    would stall it)."""
    from streams.recovery import Admit, ShardRecovery
    from streams.shards import ShardPool

    recovery = ShardRecovery(ShardPool())
    recovery.applied("t", 0, 10)
    assert recovery.admit("t", 0, 11) == (Admit.PROCESS, 11)
    recovery.applied("t", 0, 11)
    assert recovery.admit("t", 0, 15) == (Admit.SEEK, 12)
    assert recovery.admit("t", 0, 16)[0] is Admit.SKIP  # fetched before the seek
    assert recovery.admit("t", 0, 15) == (Admit.SEEK, 12)  # a re-read begins at 15: again
    assert recovery.admit("t", 0, 16)[0] is Admit.SKIP
    assert recovery.gaps == 0
    assert recovery.admit("t", 0, 15) == (Admit.PROCESS, 15)  # and again at 15: a gap
    assert recovery.gaps == 1
    recovery.applied("t", 0, 15)
    assert recovery.admit("t", 0, 3)[0] is Admit.SKIP


def test_missing_messages_are_re_read_and_stale_ones_never_taken_as_a_gap() -> None:
    """Past the expected offset (a restore, a rebalance that skipped its seek, a fetch that
    raced one): seek back once; the messages fetched before the seek come next and are
    skipped (a repeated seek every RESEEK_AFTER of them); the re-read delivers the expected
    message and everything after it."""
    from streams.recovery import RESEEK_AFTER, Admit, ShardRecovery
    from streams.shards import ShardPool

    recovery = ShardRecovery(ShardPool())
    recovery.applied("t", 0, 156)
    stale = [recovery.admit("t", 0, 177 + i) for i in range(RESEEK_AFTER + 1)]
    assert stale[0] == (Admit.SEEK, 157)
    assert [d for d, _ in stale[1:-1]] == [Admit.SKIP] * (RESEEK_AFTER - 1)
    assert stale[-1] == (Admit.SEEK, 157)
    assert recovery.gaps == 0 and recovery.seeks == 2
    assert recovery.admit("t", 0, 150)[0] is Admit.SKIP  # redelivery of applied ones
    for offset in range(157, 200):
        assert recovery.admit("t", 0, offset) == (Admit.PROCESS, offset)
        recovery.applied("t", 0, offset)
    assert recovery.gaps == 0


def test_a_re_read_moved_by_another_seek_is_sought_back_not_taken_as_a_gap() -> None:
    """Faust's own seek to the committed offsets can land after the shard's seek back: the
    re-read then starts at the committed offset, above the expected one. That is sought back
    again, and the messages from the expected offset on are all applied."""
    from streams.recovery import Admit, ShardRecovery
    from streams.shards import ShardPool

    recovery = ShardRecovery(ShardPool())
    recovery.start_at("t", 0, 0)
    assert recovery.admit("t", 0, 3) == (Admit.SEEK, 0)  # resumed at the committed offset
    assert recovery.admit("t", 0, 4)[0] is Admit.SKIP
    assert recovery.admit("t", 0, 3) == (Admit.SEEK, 0)  # Faust's late seek to 3
    for offset in range(0, 6):
        assert recovery.admit("t", 0, offset) == (Admit.PROCESS, offset)
        recovery.applied("t", 0, offset)
    assert recovery.gaps == 0


def test_a_quiet_partition_behind_its_end_is_sought_back_until_it_answers() -> None:
    """A seek back can be overtaken with no later message to show it (a quiet topic): a
    partition whose expected offset is below its end and that delivers nothing through
    QUIET_TICKS checks is sought back, again every QUIET_TICKS checks, at most
    MAX_QUIET_SEEKS times at the same offsets; a message, or an end caught up with, ends it."""
    from streams.recovery import MAX_QUIET_SEEKS, QUIET_TICKS, Admit, ShardRecovery
    from streams.shards import ShardPool

    recovery = ShardRecovery(ShardPool())
    recovery.start_at("quiet", 0, 0)
    recovery.start_at("busy", 0, 7)
    recovery.start_at("done", 0, 4)
    ends = {("quiet", 0): 5, ("busy", 0): 20, ("done", 0): 4, ("other", 0): 9}

    def check() -> list[tuple[str, int, int]]:
        recovery.admit("busy", 0, 7)  # delivering: never stalled, however far behind
        return recovery.stalled(ends)

    calls = [check() for _ in range(QUIET_TICKS * (MAX_QUIET_SEEKS + 2))]
    sought = [i for i, out in enumerate(calls) if out]
    assert all(out in ([], [("quiet", 0, 0)]) for out in calls)
    assert sought == [QUIET_TICKS * k - 1 for k in range(1, MAX_QUIET_SEEKS + 1)]
    assert recovery.quiet_seeks == MAX_QUIET_SEEKS
    ends[("quiet", 0)] = 6  # the partition moved: watched afresh
    assert [check() for _ in range(QUIET_TICKS)][-1] == [("quiet", 0, 0)]
    assert recovery.admit("quiet", 0, 3) == (Admit.SEEK, 0)  # a message: not quiet any more
    assert recovery.stalled(ends) == []
    assert [recovery.stalled(ends) for _ in range(QUIET_TICKS)][-1] == [("quiet", 0, 0)]
    for offset in range(6):
        assert recovery.admit("quiet", 0, offset)[0] is Admit.PROCESS
        recovery.applied("quiet", 0, offset)
    assert [check() for _ in range(2 * QUIET_TICKS)] == [[]] * (2 * QUIET_TICKS)
    recovery.forget(0)
    assert recovery.stalled(ends) == []


def test_a_partition_with_messages_on_their_way_is_not_stalled() -> None:
    """A message handed to the streams and not yet admitted (a busy agent with a backlog
    on other partitions) is on its way: no seek, however long the wait. Once it is admitted
    and nothing follows, the partition can stall; a rebalance clears what was on its way."""
    from streams.recovery import QUIET_TICKS, ShardRecovery
    from streams.shards import ShardPool

    recovery = ShardRecovery(ShardPool())
    recovery.start_at("t", 0, 0)
    ends = {("t", 0): 10}
    recovery.handed("t", 0, 0)
    assert [recovery.stalled(ends) for _ in range(3 * QUIET_TICKS)] == [[]] * (3 * QUIET_TICKS)
    recovery.rebalanced()  # its queues emptied: the handed message will not come
    assert [recovery.stalled(ends) for _ in range(QUIET_TICKS)][-1] == [("t", 0, 0)]
    recovery.handed("t", 0, 0)
    recovery.admit("t", 0, 0)
    recovery.applied("t", 0, 0)
    assert [recovery.stalled(ends) for _ in range(QUIET_TICKS + 1)][-1] == [("t", 0, 1)]
