"""Replay on several cores: the shards of a replay are independent, so worker processes each
run the detectors of some partitions and the parent merges what they said, in the order one
process would have said it.

Why this is exact: a :class:`~streams.shards.ShardPool` keeps one Detector per partition, and
a detector's state depends only on its partition's messages and on the shared topology, in the
order they were read. The parent reads every message once, sends each telemetry message to the
worker that owns its partition and every topology record to all workers, all in read order, so
each detector sees what it would see in one process. Every output is tagged with the index of
the message that caused it (a flush's with the order the shards were created in) and the
workers' outputs are merged on that tag: verdicts and feature series come out in the
sequential order, and the backtest document is the same as ``--workers 1`` gives
(``tests/test_parallel_replay.py``).

Workers are forked (Linux, macOS with the fork method available), before the source opens, so
no Kafka client thread is forked. Where fork is missing the replay runs in one process.
"""

from __future__ import annotations

import contextlib
import heapq
import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from typing import Any

from models.detector import Output
from schemas.errors import CodecError
from skewscope.config import Topics
from streams.replay.backtest import PROGRESS_EVERY, Replayer, ReplayStats, RunResult
from streams.replay.config import Configuration
from streams.replay.message import RawMessage
from streams.replay.progress import Progress
from streams.shards import ShardPool

BATCH_MESSAGES = 512  # messages per pipe send: amortizes pickling and the syscall
_SHARED_SLOTS = 3  # per worker: samples, first and last event time (ns)
_FLUSH_INDEX = sys.maxsize  # a flush's outputs come after every message's
_TOPOLOGY = -1  # the partition field of a topology record sent to the workers

Tag = tuple[int, int, int]  # (message index, shard creation index, output sequence)


def fork_available() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_workers(partitions: int) -> int:
    """One worker per usable core, at most one per partition (a partition is one detector)."""
    return max(1, min(usable_cores(), partitions))


def make_replayer(
    config: Configuration, topics: Topics, workers: int, progress: Progress | None = None
) -> Replayer:
    """A parallel replayer with its workers started, or a plain one for a single worker (or
    where fork is missing)."""
    if workers < 1:
        raise ValueError(f"--workers must be 1 or more, got {workers}")
    if workers == 1 or not fork_available():
        return Replayer(config, topics, progress)
    replayer = ParallelReplayer(config, topics, workers, progress)
    replayer.start()
    return replayer


class ReplayWorkerError(RuntimeError):
    """A worker process failed; the message carries its traceback or exit code."""


class ParallelReplayer(Replayer):
    """A :class:`Replayer` whose detectors run in ``workers`` forked processes."""

    def __init__(
        self,
        config: Configuration,
        topics: Topics,
        workers: int,
        progress: Progress | None = None,
    ) -> None:
        if workers < 2:
            raise ValueError(f"a parallel replay needs 2 or more workers, got {workers}")
        if not fork_available():
            raise ValueError("a parallel replay needs the fork start method")
        super().__init__(config, topics, progress)
        self.workers = workers
        self.stats.workers = workers
        self._ctx = multiprocessing.get_context("fork")
        self._procs: list[Any] = []
        self._conns: list[Connection] = []
        self._shared: Any = None
        self._owner: dict[int, int] = {}

    # -- processes --------------------------------------------------------------------
    def start(self) -> None:
        """Fork the workers (idempotent). Call before opening a Kafka source."""
        if self._procs:
            return
        self._shared = self._ctx.Array("q", _SHARED_SLOTS * self.workers, lock=False)
        for slot in range(self.workers):
            mine, theirs = self._ctx.Pipe(duplex=True)
            proc = self._ctx.Process(
                target=_work,
                args=(theirs, self.pool, self._evidence_features, self._shared, slot),
                name=f"skewscope-replay-{slot}",
                daemon=True,
            )
            proc.start()
            theirs.close()
            self._procs.append(proc)
            self._conns.append(mine)

    def stop(self) -> None:
        for conn in self._conns:
            conn.close()
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        self._procs, self._conns = [], []

    # -- the run ----------------------------------------------------------------------
    def run(
        self,
        messages: Iterable[RawMessage],
        flush: bool = False,
        fraction: Callable[[], float | None] = lambda: None,
    ) -> RunResult:
        began = time.perf_counter()
        self.start()
        try:
            results = self._dispatch(messages, flush, fraction)
        finally:
            self.stop()
        self._merge(results)
        self.stats.wall_s = time.perf_counter() - began
        if self.progress is not None:
            self._progress(1.0, force=True)
            self.progress.close()
        return self._result()

    def _dispatch(
        self,
        messages: Iterable[RawMessage],
        flush: bool,
        fraction: Callable[[], float | None],
    ) -> list[dict[str, Any]]:
        stats = self.stats
        batches: list[list[tuple[int, int, Any]]] = [[] for _ in range(self.workers)]
        for m in messages:
            index = stats.messages
            stats.messages += 1
            role = self.role(m)
            if role == "telemetry":
                stats.telemetry_messages += 1
                slot = self._owner.get(m.partition)
                if slot is None:
                    slot = self._owner[m.partition] = len(self._owner) % self.workers
                batch = batches[slot]
                batch.append((index, m.partition, m.value))
                if len(batch) >= BATCH_MESSAGES:
                    self._send(slot, batch)
                    batches[slot] = []
            else:
                topology = self._take_other(m, role)
                if topology is not None:  # every worker's detectors read the topology
                    for batch in batches:
                        batch.append((index, _TOPOLOGY, topology))
            if self.progress is not None and stats.messages % PROGRESS_EVERY == 0:
                self._progress(fraction())
        for slot, batch in enumerate(batches):
            if batch:
                self._send(slot, batch)
            self._send(slot, ("end", flush))
        return [self._receive(slot) for slot in range(self.workers)]

    def _send(self, slot: int, payload: Any) -> None:
        try:
            self._conns[slot].send(payload)
        except OSError:  # the worker is gone: report why
            raise self._failure(slot) from None

    def _receive(self, slot: int) -> dict[str, Any]:
        try:
            status, payload = self._conns[slot].recv()
        except (EOFError, OSError):
            raise self._failure(slot) from None
        if status != "ok":
            raise ReplayWorkerError(f"replay worker {slot} failed:\n{payload}")
        return payload

    def _failure(self, slot: int) -> ReplayWorkerError:
        conn = self._conns[slot]
        try:
            if conn.poll(1.0):
                status, payload = conn.recv()
                if status == "error":
                    return ReplayWorkerError(f"replay worker {slot} failed:\n{payload}")
        except (EOFError, OSError):
            pass
        proc = self._procs[slot]
        proc.join(timeout=1.0)
        return ReplayWorkerError(f"replay worker {slot} exited (exit code {proc.exitcode})")

    def _merge(self, results: list[dict[str, Any]]) -> None:
        """Collect the workers' outputs in the sequential order; add up their statistics."""
        for _tag, out in heapq.merge(*(r["outputs"] for r in results), key=lambda t: t[0]):
            self._collect([out])
        stats = self.stats
        for r in results:
            stats.bad_messages += r["bad_messages"]
            stats.frames += r["frames"]
            stats.samples += r["samples"]
            stats.late_frames += r["late_frames"]
            stats.windows_closed += r["windows_closed"]
            for watermark_ns in (r["event_first_ns"], r["event_last_ns"]):
                if watermark_ns is not None:
                    stats.note_event_time(watermark_ns)

    def _gather_detector_stats(self) -> None:
        """The workers' detectors are not here; :meth:`_merge` adds up what they reported."""

    def _progress(self, fraction: float | None, force: bool = False) -> None:
        assert self.progress is not None
        shared = self._shared
        samples, first, last = 0, None, None
        if shared is not None:
            for slot in range(self.workers):
                base = _SHARED_SLOTS * slot
                samples += shared[base]
                if shared[base + 1] > 0:
                    first = min(first or shared[base + 1], shared[base + 1])
                    last = max(last or 0, shared[base + 2])
        span = (last - first) if first is not None and last is not None else 0
        if force:
            span = self.stats.event_span_ns
            samples = self.stats.samples
            self.progress.draw(fraction, self.stats.messages, samples, span)
        else:
            self.progress.update(fraction, self.stats.messages, samples, span)


# -- the worker side ---------------------------------------------------------------------
class _Worker:
    """One process's shards: processes its messages, tags what they output."""

    def __init__(self, pool: ShardPool, evidence: set[str], shared: Any, slot: int) -> None:
        self.pool = pool
        self.evidence = evidence
        self.shared = shared
        self.base = _SHARED_SLOTS * slot
        self.outputs: list[tuple[Tag, Output]] = []
        self.created: dict[int, int] = {}
        self.bad_messages = 0
        self.span = ReplayStats()  # the event-time span of this worker's shards

    def serve(self, conn: Connection) -> dict[str, Any]:
        while True:
            payload = conn.recv()
            if isinstance(payload, tuple):  # ("end", flush)
                return self._end(bool(payload[1]))
            for index, partition, value in payload:
                if partition == _TOPOLOGY:
                    self.pool.update_topology(value)
                else:
                    self._telemetry(index, partition, value)
            self._publish_progress()

    def _telemetry(self, index: int, partition: int, value: bytes) -> None:
        pool = self.pool
        new = partition not in pool.shards
        try:
            outputs = pool.process_bytes(partition, value)
        except CodecError:
            self.bad_messages += 1
            if new and partition in pool.shards:  # the frame's shape failed after decoding
                self.created[partition] = index
            return
        if new:
            self.created[partition] = index
        self.span.note_event_time(pool.shards[partition].watermark_ns)
        for seq, out in enumerate(outputs):
            self.outputs.append(((index, 0, seq), self._reduce(out)))

    def _reduce(self, out: Output) -> Output:
        """What the parent needs of an output, as it is now: a verdict as its reader sees it
        (through the wire format, as one process takes it at once: fusion updates the dict
        of the verdict it last emitted later on), a feature window cut to the features the
        report plots."""
        rec = out.record
        if out.schema == "Verdict":
            codec = self.pool.codec
            return Output(out.schema, out.key, codec.decode(codec.encode("Verdict", rec)).record)
        if out.schema != "FeatureWindow":
            return out
        kept = {n: v for n, v in rec["features"].items() if n in self.evidence}
        record = {
            "entity": rec["entity"],
            "window_end_ns": rec["window_end_ns"],
            "features": kept,
        }
        return Output(out.schema, out.key, record)

    def _end(self, flush: bool) -> dict[str, Any]:
        pool = self.pool
        if flush:
            for partition, det in pool.shards.items():
                for seq, out in enumerate(det.flush()):
                    tag = (_FLUSH_INDEX, self.created[partition], seq)
                    self.outputs.append((tag, self._reduce(out)))
        dets = list(pool.shards.values())
        return {
            "outputs": self.outputs,
            "bad_messages": self.bad_messages,
            "frames": sum(d.stats.frames for d in dets),
            "samples": sum(d.stats.samples for d in dets),
            "late_frames": sum(d.stats.late_frames for d in dets),
            "windows_closed": sum(d.stats.windows_closed for d in dets),
            "event_first_ns": self.span.event_first_ns,
            "event_last_ns": self.span.event_last_ns,
        }

    def _publish_progress(self) -> None:
        shared, base = self.shared, self.base
        shared[base] = sum(d.stats.samples for d in self.pool.shards.values())
        shared[base + 1] = self.span.event_first_ns or 0
        shared[base + 2] = self.span.event_last_ns or 0


def _work(conn: Connection, pool: ShardPool, evidence: set[str], shared: Any, slot: int) -> None:
    """A worker process's body: serve until the end message, send the result or the error."""
    try:
        result = _Worker(pool, evidence, shared, slot).serve(conn)
        conn.send(("ok", result))
    except BaseException:  # report anything, then exit: the parent raises it
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()
