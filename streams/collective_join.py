"""Collective join by (deployment, communicator, step): who arrived late, who waited.

In a blocking collective the *end* times line up, so the rank that arrives last has the
*shortest* duration and waits least, while its peers wait for it. The join therefore names the
late arriver from durations alone (no clock needed) and cross-checks it with start times
corrected by :class:`~streams.clock_align.ClockAligner`; disagreement between the two is the
signature of a clock fault, not of a straggler.

Per completed step and rank it emits:

* ``last_arrival``: 1 when this rank had the shortest duration (the late arriver), else 0;
* ``caused_wait_ratio``: (group median duration - own duration) / step period: how much of
  each step the group spends waiting because of this rank (positive for the late rank);
* ``wait_ratio``: (own duration - shortest duration) / step period (victims wait);
* ``coll_duration_ratio``: own duration / group median;
* ``lateness_ns``: clock-corrected start minus the group's median corrected start;
* ``start_duration_disagree``: 1 when the latest corrected start is not the shortest duration.

A step is judged on event time only: it closes once every rank reported it and the watermark
has passed its end, and each rank's step period is the one it had at that watermark (its
last step start before it), so its features do not depend on how far each node's frames had
been read when it closed (tests/test_arrival_order.py).

A step whose ranks do not all report before the watermark passes its start by
``join_timeout_ns`` is closed with the absent ranks counted in ``missing_steps``; peers that
report the step as still in flight (``collective_count`` 0) while a rank is absent give
``blocked_s`` to the absent rank: the rank-hang signature.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streams.clock_align import ClockAligner
from streams.features.base import Extractor, span
from streams.hopping import HoppingSpec
from streams.topology import Topology

_GROUP = re.compile(r"^(tp|pp|ep)(\d+)?(?:-(\d+))?$")


@dataclass
class _Arrival:
    clock: str
    start_ns: int
    duration_ns: int


@dataclass
class _OpenStep:
    group_size: int
    first_seen_ns: int  # the earliest start of the rows seen so far
    ranks: dict[int, _Arrival] = field(default_factory=dict)
    end_ns: int = 0  # the latest end (start + duration) of the completed rows
    inflight: dict[int, tuple[int, int]] = field(default_factory=dict)  # rank -> (start, blocked)


class CollectiveExtractor(Extractor):
    SCHEMA = "CollectiveFrame"
    SOURCE = "nccl"
    ENTITY_KIND = "rank"
    FEATURES = {
        "last_arrival": "mean",
        "caused_wait_ratio": "mean",
        "wait_ratio": "mean",
        "coll_duration_ratio": "mean",
        "lateness_ns": "mean",
        "start_duration_disagree": "mean",
        "step_period_ns": "mean",
        "steps": "sum",
        "missing_steps": "sum",
        "blocked_s": "max",
        "downstream_wait_ns": "mean",
    }

    def __init__(
        self,
        spec: HoppingSpec,
        aligner: ClockAligner | None = None,
        join_timeout_ns: int = 500_000_000,
        max_open_steps: int = 20_000,
        stale_step_ns: int = 60_000_000_000,
        topology: Topology | None = None,
    ) -> None:
        super().__init__(spec)
        self.topology = topology or Topology()
        self._rank_index: dict[tuple[str, int, int], int] = {}
        self._rank_index_of: object = None
        self.aligner = aligner or ClockAligner()
        self.join_timeout_ns = join_timeout_ns
        self.max_open_steps = max_open_steps
        self.stale_step_ns = stale_step_ns
        self.open: dict[tuple[str, str, int], _OpenStep] = {}
        self._last_start: dict[tuple[str, str, int], tuple[int, int]] = {}
        # per rank, (step start, step period after it) from the last start before the
        # watermark on (the newest is the rank's period now): a step is judged with the
        # period as of the window end that closes it, whatever later rows were already read
        self._period_by_start: dict[tuple[str, str, int], deque[tuple[int, float]]] = {}
        self.rank_node: dict[str, str] = {}
        self.evicted_steps = 0
        self._detail_pending: dict[tuple[str, str, int, int], dict[str, int]] = {}
        self._feature_index = {name: i for i, name in enumerate(self.FEATURES)}
        self._pending_rows: list[tuple[int, str, list[float]]] = []

    # -- input ------------------------------------------------------------------------
    def ingest(self, record: dict[str, Any], cols: dict[str, np.ndarray]) -> tuple[int, int]:
        deployment, group = record["deployment"], record["group_id"]
        clock, size = record["clock_id"], record["group_size"]
        steps = cols["step"].tolist()
        ranks = cols["rank"].tolist()
        counts = cols["collective_count"].tolist()
        starts = cols["first_start_ns"].tolist()
        durations = cols["duration_sum_ns"].tolist()
        for step, rank, count, start, duration in zip(
            steps, ranks, counts, starts, durations, strict=True
        ):
            key = (deployment, group, step)
            entry = self.open.get(key)
            if entry is None:
                entry = _OpenStep(size, start)
                self.open[key] = entry
            elif start < entry.first_seen_ns:
                entry.first_seen_ns = start
            if count == 0:
                entry.inflight[rank] = (start, duration)
                continue
            entry.inflight.pop(rank, None)
            self._note_period(deployment, group, rank, step, start)
            entry.ranks[rank] = _Arrival(clock, start, duration)
            entry.end_ns = max(entry.end_ns, start + duration)
        self._observe_detail(deployment, group, clock, cols)
        if len(self.open) > self.max_open_steps:
            self._evict_oldest()
        # Progress is the rows' end times: an in-flight row's start + time blocked so far is
        # the frame's own time, so a blocked group still advances the watermark.
        return span(cols["first_start_ns"] + cols["duration_sum_ns"])

    def _note_period(self, deployment: str, group: str, rank: int, step: int, start: int) -> None:
        """Fold this step's start into the rank's step period (an EWMA), kept by start time."""
        key = (deployment, group, rank)
        prev = self._last_start.get(key)
        self._last_start[key] = (step, start)
        if prev is not None and step > prev[0] and start > prev[1]:
            period = (start - prev[1]) / (step - prev[0])
            history = self._period_by_start.get(key)
            if history is None:
                history = self._period_by_start[key] = deque()
            if history:
                period = 0.8 * history[-1][1] + 0.2 * period
            history.append((start, period))

    def _period_at(self, key: tuple[str, str, int], at_ns: int) -> float | None:
        """The rank's step period as of event time ``at_ns`` (its last start before it)."""
        history = self._period_by_start.get(key)
        if not history:
            return None
        for start, period in reversed(history):
            if start < at_ns:
                return period
        return history[0][1]  # every start read is later (kept from the last prune on)

    def _prune_periods(self, watermark_ns: int) -> None:
        """Keep, per rank, the last period before ``watermark_ns`` and the later ones."""
        for history in self._period_by_start.values():
            while len(history) > 1 and history[1][0] < watermark_ns:
                history.popleft()

    def _observe_detail(
        self, deployment: str, group: str, clock: str, cols: dict[str, np.ndarray]
    ) -> None:
        n = len(cols["detail_step"])
        if n == 0:
            return
        ends = cols["detail_start_ns"] + cols["detail_duration_ns"]
        pending = self._detail_pending
        for step, seq, end in zip(
            cols["detail_step"].tolist(), cols["detail_seq"].tolist(), ends.tolist(), strict=True
        ):
            clocks = pending.setdefault((deployment, group, step, seq), {})
            clocks.setdefault(clock, end)

    # -- closing ----------------------------------------------------------------------
    def close_until(self, watermark_ns: int) -> list[str]:
        """Close steps complete or timed out by ``watermark_ns``; return hang suspects.

        A step some ranks report as in flight while others never arrived stays open: every
        call then adds ``blocked_s`` (how long the peers have waited) and ``missing_steps`` to
        the absent ranks in the pane just before ``watermark_ns``, so the evidence persists for
        as long as the hang does. Without in-flight peers an incomplete step is closed after
        ``join_timeout_ns`` with the absent ranks counted in ``missing_steps`` only.
        """
        self._flush_detail(watermark_ns)
        self._prune_periods(watermark_ns)
        suspects: list[str] = []
        done = []
        pane_now = (watermark_ns - 1) // self.spec.hop_ns
        for key, entry in self.open.items():
            age_ns = watermark_ns - entry.first_seen_ns
            if len(entry.ranks) >= entry.group_size:
                # Closed once the watermark has passed its end, not as soon as its last row
                # is read: then the clock offsets it is judged with are the ones at that
                # event time, whatever order the sources' frames arrived in.
                if entry.end_ns < watermark_ns:
                    self._close(key, entry, watermark_ns)
                    done.append(key)
            elif age_ns > self.join_timeout_ns and entry.inflight:
                deployment, group = key[0], key[1]
                for rank in range(entry.group_size):
                    if rank in entry.ranks or rank in entry.inflight:
                        continue
                    global_rank = self.global_rank(deployment, group, rank, entry.group_size)
                    if global_rank is None:
                        continue
                    entity = f"{deployment}/rank{global_rank}"
                    values = {"missing_steps": 1.0, "blocked_s": age_ns / 1e9}
                    self._buffer(pane_now, entity, values)
                    suspects.append(entity)
                if age_ns > self.stale_step_ns:
                    done.append(key)
            elif age_ns > self.join_timeout_ns:
                for rank in range(entry.group_size):
                    global_rank = self.global_rank(key[0], key[1], rank, entry.group_size)
                    if rank not in entry.ranks and global_rank is not None:
                        entity = f"{key[0]}/rank{global_rank}"
                        self._buffer(pane_now, entity, {"missing_steps": 1.0})
                self._close(key, entry, watermark_ns)
                done.append(key)
        for key in done:
            del self.open[key]
        self._flush_rows()
        return suspects

    def _flush_detail(self, watermark_ns: int) -> None:
        pending = self._detail_pending
        for key in list(pending):
            clocks = pending[key]
            if len(clocks) >= 2 and max(clocks.values()) < watermark_ns:
                self.aligner.observe(key[0], clocks)
                del pending[key]
            elif max(clocks.values()) < watermark_ns - self.join_timeout_ns:
                del pending[key]

    def _close(self, key: tuple[str, str, int], entry: _OpenStep, watermark_ns: int) -> None:
        deployment, group, _step = key
        present = sorted(entry.ranks)
        if len(present) < 2:
            return
        if group.startswith("pp"):
            self._close_pipeline(key, entry)
            return
        # Plain Python on a handful of ranks: numpy's per-call overhead dominated here.
        arrivals = [entry.ranks[r] for r in present]
        durations = [float(a.duration_ns) for a in arrivals]
        starts = [a.start_ns - self.aligner.offset_ns(a.clock) for a in arrivals]
        median_duration = _median(durations)
        shortest = durations.index(min(durations))
        latest_start = starts.index(max(starts))
        median_start = _median(starts)
        for i, rank in enumerate(present):
            global_rank = self.global_rank(deployment, group, rank, entry.group_size)
            if global_rank is None:
                continue
            period = self._period_at((deployment, group, rank), watermark_ns)
            values = {
                "steps": 1.0,
                "last_arrival": 1.0 if i == shortest else 0.0,
                "coll_duration_ratio": durations[i] / median_duration if median_duration else 1.0,
                "lateness_ns": starts[i] - median_start,
                "start_duration_disagree": 1.0 if (i == shortest) != (i == latest_start) else 0.0,
            }
            if period:
                values["step_period_ns"] = period
                values["caused_wait_ratio"] = (median_duration - durations[i]) / period
                values["wait_ratio"] = (durations[i] - durations[shortest]) / period
            pane = arrivals[i].start_ns // self.spec.hop_ns
            self._buffer(pane, f"{deployment}/rank{global_rank}", values)

    def _close_pipeline(self, key: tuple[str, str, int], entry: _OpenStep) -> None:
        """Send/recv between stages: the receivers' blocking time is the time the sending
        stage made them wait. Features land on ``<dep>#stage<a>`` of the sending stage."""
        deployment, group, _step = key
        match = _GROUP.match(group)
        if match is None or match.group(3) is None:
            return
        sender_stage = int(match.group(2) or 0)
        half = entry.group_size // 2
        receivers = [a for r, a in entry.ranks.items() if r >= half]
        if not receivers:
            return
        wait_ns = _median([float(a.duration_ns) for a in receivers])
        pane = min(a.start_ns for a in receivers) // self.spec.hop_ns
        self._buffer(pane, f"{deployment}#stage{sender_stage}", {"downstream_wait_ns": wait_ns})

    def _buffer(self, pane: int, entity: str, values: dict[str, float]) -> None:
        row = [float("nan")] * len(self._feature_index)
        for name, value in values.items():
            row[self._feature_index[name]] = value
        self._pending_rows.append((pane, entity, row))

    def _flush_rows(self) -> None:
        """Hand the rows of every step closed by one call to the pane store in one batch."""
        if not self._pending_rows:
            return
        panes = np.array([r[0] for r in self._pending_rows], dtype=np.int64)
        entities = [r[1] for r in self._pending_rows]
        matrix = np.array([r[2] for r in self._pending_rows], dtype=np.float64)
        self._pending_rows = []
        self.store.add_rows(panes, entities, matrix)

    def global_rank(self, deployment: str, group: str, rank: int, group_size: int) -> int | None:
        """Deployment rank of communicator rank ``rank`` of ``group``.

        ``tp<p>``: TP rank of stage p; ``pp<a>-<b>``: senders (stage a) then receivers
        (stage b); ``ep``: TP ranks of stage 0 (docs/event-model.md). Looked up in the
        topology, else assumed laid out stage-major (rank = stage * tp + tp_rank).
        """
        match = _GROUP.match(group)
        if match is None:
            return rank
        kind, first = match.group(1), int(match.group(2) or 0)
        if kind == "pp":
            half = group_size // 2
            stage = first if rank < half else int(match.group(3) or 0)
            tp_rank, tp_size = rank % half if half else rank, half
        else:
            stage, tp_rank, tp_size = (first if kind == "tp" else 0), rank, group_size
        index = self._index()
        found = index.get((deployment, stage, tp_rank))
        return found if found is not None else stage * tp_size + tp_rank

    def _index(self) -> dict[tuple[str, int, int], int]:
        if self._rank_index_of is not self.topology.ranks:
            self._rank_index = {
                (p.deployment, p.pp_stage, p.tp_rank): p.rank for p in self.topology.ranks.values()
            }
            self._rank_index_of = self.topology.ranks
        return self._rank_index

    def _evict_oldest(self) -> None:
        oldest = sorted(self.open, key=lambda k: self.open[k].first_seen_ns)
        for key in oldest[: len(self.open) - self.max_open_steps]:
            del self.open[key]
            self.evicted_steps += 1


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
