"""Drive the detector core over recorded messages and score what it says.

The same :class:`~streams.shards.ShardPool` as the live worker (``streams/app.py``) gets the
same bytes per partition in the same order, so a replay of the history the worker consumed
gives the verdicts the worker gave: detection runs on event time only. What differs is
bookkeeping a replay cannot know (wall-clock arrival), and the end: the live worker never
flushes, so a replay does not either unless ``flush=True`` (right for a capture, which ends
when the recording did; wrong for a time range cut out of a longer history).

Messages are told apart by their schema name when the source states it (captures) and else
by topic: the topology topic updates the shared topology, the labels topic gives labels,
telemetry goes to the shard of its partition, anything else (verdicts, features, dead letters)
is skipped and counted. Undecodable telemetry is skipped and counted, as the worker would
dead-letter it (a replay writes nothing to Kafka).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from models.detector import Output
from models.scoring import GRACE_NS, clean_summary, episodes, score
from schemas.codec import AvroCodec
from schemas.errors import CodecError
from skewscope.config import Topics
from streams.replay.config import Configuration
from streams.replay.message import RawMessage
from streams.replay.progress import Progress
from streams.shards import ShardPool

IGNORED_SCHEMAS = frozenset({"Verdict", "FeatureWindow", "DeadLetter"})
PROGRESS_EVERY = 256


@dataclass
class ReplayStats:
    """What a replay read and how fast."""

    messages: int = 0
    telemetry_messages: int = 0
    bad_messages: int = 0
    topology_records: int = 0
    label_records: int = 0
    ignored_messages: int = 0
    frames: int = 0
    samples: int = 0
    late_frames: int = 0
    windows_closed: int = 0
    wall_s: float = 0.0
    event_first_ns: int | None = None
    event_last_ns: int | None = None
    workers: int = 1  # processes the detectors ran in (streams/replay/parallel.py)

    def note_event_time(self, watermark_ns: int) -> None:
        """Widen the event-time span the replay covered to a shard's watermark (if set)."""
        if watermark_ns <= 0:
            return
        if self.event_first_ns is None or watermark_ns < self.event_first_ns:
            self.event_first_ns = watermark_ns
        if self.event_last_ns is None or watermark_ns > self.event_last_ns:
            self.event_last_ns = watermark_ns

    @property
    def event_span_ns(self) -> int:
        if self.event_first_ns is None or self.event_last_ns is None:
            return 0
        return self.event_last_ns - self.event_first_ns

    def speed(self) -> dict[str, float | None]:
        """Samples per second of wall time and the event-time span over the wall time."""
        wall = self.wall_s
        return {
            "wall_s": round(wall, 6),
            "event_span_s": round(self.event_span_ns / 1e9, 6),
            "samples_per_s": round(self.samples / wall, 1) if wall > 0 else None,
            "x_real_time": round(self.event_span_ns / 1e9 / wall, 3) if wall > 0 else None,
        }


@dataclass
class RunResult:
    """One configuration's replay: verdicts in emission order, features, labels seen."""

    config: Configuration
    verdicts: list[dict[str, Any]]
    features: dict[str, dict[str, list[tuple[int, float]]]]
    labels: list[dict[str, Any]]
    stats: ReplayStats
    nodes: list[str] = field(default_factory=list)


class Replayer:
    """Feeds messages to a fresh ShardPool built from one configuration."""

    def __init__(self, config: Configuration, topics: Topics, progress: Progress | None = None):
        self.config = config
        self.topics = topics
        self.telemetry_topics = frozenset(topics.telemetry())
        self.pool = ShardPool(config=config.detector, runbook=config.runbook)
        self.codec = AvroCodec()
        self.progress = progress
        self.stats = ReplayStats()
        self.verdicts: list[dict[str, Any]] = []
        self.labels: list[dict[str, Any]] = []
        self.features: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        self._evidence_features = {
            e.feature for c in config.runbook.conditions for e in c.evidence
        } | {"model.score"}

    def role(self, m: RawMessage) -> str:
        """topology, labels, telemetry or ignore."""
        if m.schema:
            if m.schema == "TopologyRecord":
                return "topology"
            if m.schema == "FaultLabel":
                return "labels"
            return "ignore" if m.schema in IGNORED_SCHEMAS else "telemetry"
        if m.topic == self.topics.topology:
            return "topology"
        if m.topic == self.topics.labels:
            return "labels"
        return "telemetry" if m.topic in self.telemetry_topics else "ignore"

    def run(
        self,
        messages: Iterable[RawMessage],
        flush: bool = False,
        fraction: Callable[[], float | None] = lambda: None,
    ) -> RunResult:
        stats = self.stats
        began = time.perf_counter()
        for m in messages:
            stats.messages += 1
            role = self.role(m)
            if role == "telemetry":
                stats.telemetry_messages += 1
                try:
                    outputs = self.pool.process_bytes(m.partition, m.value)
                except CodecError:
                    stats.bad_messages += 1
                    continue
                stats.note_event_time(self.pool.shards[m.partition].watermark_ns)
                if outputs:
                    self._collect(outputs)
            else:
                self._take_other(m, role)
            if self.progress is not None and stats.messages % PROGRESS_EVERY == 0:
                self._progress(fraction())
        if flush:
            self._collect(self.pool.flush())
        stats.wall_s = time.perf_counter() - began
        self._gather_detector_stats()
        if self.progress is not None:
            self._progress(1.0, force=True)
            self.progress.close()
        return self._result()

    def _result(self) -> RunResult:
        return RunResult(
            config=self.config,
            verdicts=self.verdicts,
            features={e: dict(f) for e, f in self.features.items()},
            labels=self.labels,
            stats=self.stats,
            nodes=self.pool.topology.nodes(),
        )

    def _take_other(self, m: RawMessage, role: str) -> dict[str, Any] | None:
        """A message that is not telemetry: a topology record (applied and returned), a label
        (kept) or one to skip (counted)."""
        stats = self.stats
        if role == "topology":
            record = self._decode(m)
            if record is not None:
                self.pool.update_topology(record)
                stats.topology_records += 1
            return record
        if role == "labels":
            record = self._decode(m)
            if record is not None:
                self.labels.append(record)
                stats.label_records += 1
        else:
            stats.ignored_messages += 1
        return None

    def _decode(self, m: RawMessage) -> dict[str, Any] | None:
        try:
            return self.codec.decode(m.value).record
        except CodecError:
            self.stats.bad_messages += 1
            return None

    def _collect(self, outputs: list[Output]) -> None:
        for out in outputs:
            if out.schema == "Verdict":
                # As a reader of skew.verdicts sees it: schema defaults filled, plain types.
                wire = self.codec.encode("Verdict", out.record)
                self.verdicts.append(self.codec.decode(wire).record)
            elif out.schema == "FeatureWindow":
                rec = out.record
                series = self.features[rec["entity"]]
                for name, value in rec["features"].items():
                    if name in self._evidence_features:
                        series[name].append((int(rec["window_end_ns"]), float(value)))

    def _gather_detector_stats(self) -> None:
        stats = self.stats
        dets = list(self.pool.shards.values())
        stats.frames = sum(d.stats.frames for d in dets)
        stats.samples = sum(d.stats.samples for d in dets)
        stats.late_frames = sum(d.stats.late_frames for d in dets)
        stats.windows_closed = sum(d.stats.windows_closed for d in dets)

    def _progress(self, fraction: float | None, force: bool = False) -> None:
        assert self.progress is not None
        samples = sum(d.stats.samples for d in self.pool.shards.values())
        span = self.stats.event_span_ns
        if force:
            self.progress.draw(fraction, self.stats.messages, samples, span)
        else:
            self.progress.update(fraction, self.stats.messages, samples, span)


def labels_in_span(
    labels: list[dict[str, Any]], first_ns: int | None, last_ns: int | None
) -> list[dict[str, Any]]:
    """Labels whose ``[onset, end]`` overlaps the replayed event-time span (labels topics hold
    every run's labels; a time range replays one)."""
    if first_ns is None or last_ns is None:
        return []
    return [
        x
        for x in labels
        if x["onset_ns"] <= last_ns and (x.get("end_ns") is None or x["end_ns"] >= first_ns)
    ]


def evaluate(
    run: RunResult, labels: list[dict[str, Any]], grace_ns: float = GRACE_NS
) -> dict[str, Any]:
    """One run's JSON section: configuration, stats, speed, scores, episodes, verdicts."""
    stats = run.stats
    node_hours = len(run.nodes) * stats.event_span_ns / 3.6e12
    counts = Counter((v["condition"], v["state"]) for v in run.verdicts)
    eps = episodes(run.verdicts)
    return {
        "config": run.config.describe(),
        "stats": {k: v for k, v in asdict(stats).items() if k != "wall_s"},
        "speed": stats.speed(),
        "evaluation": score(labels, run.verdicts, run.config.runbook, grace_ns),
        "clean": clean_summary(run.verdicts, node_hours, labels, grace_ns),
        "verdict_counts": {f"{c}/{s}": n for (c, s), n in sorted(counts.items())},
        "episodes": [asdict(e) for e in eps],
        "verdicts": run.verdicts,
    }
