"""The detector core: decoded frames in, feature windows and verdicts out. No Faust, no Kafka.

The live Faust agents, the replay/backtest tool and the benchmarks all drive this one class:

>>> det = Detector()
>>> outputs = det.process("TopologyRecord", record)     # doctest: +SKIP
>>> outputs = det.process("CollectiveFrame", frame)     # doctest: +SKIP
>>> outputs += det.flush()                              # end of a replay

Time is event time only: windows close when the watermark (derived from the frames' own
timestamps, with idle-source timeouts) passes their end, so replaying the same frames gives
the same outputs as live did, whatever the wall clock does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.anomaly import AnomalyScorer
from models.fusion import Fusion
from models.rules import RuleEngine
from models.runbook import Runbook, load_runbook
from schemas.columns import unpack
from sinks.heartbeat import heartbeat_record
from streams.clock_align import ClockAligner
from streams.clock_cadence import ClockCadence
from streams.collective_join import CollectiveExtractor
from streams.features.base import Extractor
from streams.features.dpu import DpuExtractor
from streams.features.engine import EngineExtractor
from streams.features.gpu import GpuExtractor
from streams.features.nic import NicExtractor
from streams.features.requests import RequestExtractor
from streams.hopping import HoppingSpec
from streams.last_arriver import LastArriverBaseline
from streams.topology import Topology
from streams.views import EntityView, WindowInputs, build_views
from streams.watermark import SilenceChange, WatermarkTracker


@dataclass(frozen=True)
class DetectorConfig:
    window: HoppingSpec = field(default_factory=HoppingSpec)
    allowed_lateness_ns: int = 100_000_000
    idle_timeout_ns: int = 1_000_000_000
    join_timeout_ns: int = 500_000_000
    clock_step_memory_ns: int = 10_000_000_000
    # how far apart (event time) a relative step and a step of one clock's own sample grid
    # may be and still be the same step (streams/clock_cadence.py)
    clock_step_attribution_ns: int = 3_000_000_000
    # Load-family shares are judged over this longer window (as a router would see them).
    share_window_ns: int = 10_000_000_000
    # When the watermark jumps over a stretch no source reported on (every source paused,
    # or one frame dated far ahead), the windows of this long after the last closed one are
    # closed (the last data leaves them, verdicts resolve) and the empty ones up to the
    # last before the watermark are skipped: a jump of a year is not 126 million closes.
    gap_drain_ns: int = 15_000_000_000
    # A frame dated more than this past the newest accepted event time waits (held, at most
    # ahead_hold_frames per stream) until another clock confirms the new time: one clock
    # running a year ahead must not carry the watermark off (streams/watermark.py). 0: off.
    ahead_hold_ns: int = 30_000_000_000
    ahead_hold_frames: int = 256
    # A replica the router sent no request in this long is out of rotation (drained, or at
    # weight 0): not a peer with room for the load family (streams/views.py).
    rotation_window_ns: int = 3_000_000_000
    # The TTFT SLO: load-family harm (``requests.ttft_p99_over_slo_ratio``) is the p99 TTFT
    # of this window and of the one before it, counting requests still waiting longer than
    # this at a window's end, over this
    slo_ttft_ns: int = 2_000_000_000
    emit_features: bool = False
    anomaly_model: bool = True
    heartbeat_every_ns: int = 1_000_000_000
    freshness_bound_ns: int = 10_000_000_000


@dataclass(frozen=True)
class Output:
    """Something to publish: a Verdict or FeatureWindow record, by schema name."""

    schema: str
    key: str
    record: dict[str, Any]


@dataclass
class DetectorStats:
    frames: int = 0
    samples: int = 0
    late_frames: int = 0
    windows_closed: int = 0
    windows_skipped: int = 0  # empty windows of a watermark jump, not closed (advance())
    frames_held: int = 0  # dated too far ahead to take until another clock confirmed
    frames_dropped_ahead: int = 0  # held and never confirmed (their clock came back, or cap)
    verdicts: int = 0
    ignored_frames: int = 0


class Detector:
    """One deployment partition's worth of detection state."""

    def __init__(
        self,
        runbook: Runbook | None = None,
        config: DetectorConfig | None = None,
        topology: Topology | None = None,
    ) -> None:
        self.config = config or DetectorConfig()
        self.runbook = runbook or load_runbook()
        self.topology = topology or Topology()
        spec = self.config.window
        self.aligner = ClockAligner()
        self.cadence = ClockCadence()
        self.collectives = CollectiveExtractor(
            spec,
            self.aligner,
            join_timeout_ns=self.config.join_timeout_ns,
            topology=self.topology,
        )
        self.requests = RequestExtractor(spec)
        self.extractors: dict[str, Extractor] = {
            "GpuSampleFrame": GpuExtractor(spec),
            "NicCounterFrame": NicExtractor(spec),
            "DpuFrame": DpuExtractor(spec),
            "EngineSampleFrame": EngineExtractor(spec),
            "EngineRequestFrame": self.requests,
            "CollectiveFrame": self.collectives,
        }
        self.watermarks = WatermarkTracker(
            self.config.allowed_lateness_ns,
            self.config.idle_timeout_ns,
            self.config.ahead_hold_ns,
        )
        self.rules = RuleEngine(self.runbook)
        self.fusion = Fusion(window_ns=self.config.window.size_ns, hop_ns=self.config.window.hop_ns)
        self.last_arrivers = LastArriverBaseline(hop_ns=self.config.window.hop_ns)
        self.anomaly = AnomalyScorer() if self.config.anomaly_model else None
        self.stats = DetectorStats()
        self._last_closed_pane: int | None = None
        self._silent: set[tuple[str, str, str]] = set()  # sources whose every feed is silent
        self._feed_count = 0
        self._late_events = 0
        self._last_heartbeat_ns = 0
        self._held_cache: tuple[dict[str, Any], frozenset[str], Topology] | None = None
        # frames dated too far ahead, per stream, in arrival order: (schema, record, reach)
        self._ahead: dict[tuple[str, str, str], deque[tuple[str, dict[str, Any], int]]] = {}

    # -- input ------------------------------------------------------------------------
    def process(self, schema: str, record: dict[str, Any]) -> list[Output]:
        """Ingest one decoded record and close whatever windows the watermark allows."""
        self.ingest(schema, record)
        return self.advance()

    def ingest(self, schema: str, record: dict[str, Any]) -> None:
        if schema == "TopologyRecord":
            self.topology.update(record)
            return
        extractor = self.extractors.get(schema)
        if extractor is None:
            self.stats.ignored_frames += 1
            return
        cols = unpack(schema, record)
        stream = (record["deployment"], extractor.SOURCE, record["node"])
        if self.config.ahead_hold_ns > 0:
            reach_ns = int(record.get("frame_end_ns") or 0) or _newest_row_ns(schema, cols)
            if reach_ns:
                if not self.watermarks.claim(record["clock_id"], reach_ns):
                    self._hold(stream, schema, record, reach_ns)
                    return
                if self._ahead:
                    self._release(stream)
        self._ingest(extractor, schema, record, cols, stream)

    def _hold(
        self, stream: tuple[str, str, str], schema: str, record: dict[str, Any], reach_ns: int
    ) -> None:
        """Keep a frame dated too far ahead until another clock confirms its time; the oldest
        held frame of the stream goes (counted) past ``ahead_hold_frames``."""
        held = self._ahead.get(stream)
        if held is None:
            held = self._ahead[stream] = deque()
        held.append((schema, record, reach_ns))
        self.stats.frames_held += 1
        if len(held) > self.config.ahead_hold_frames:
            held.popleft()
            self.stats.frames_dropped_ahead += 1

    def _release(self, accepted: tuple[str, str, str]) -> None:
        """Take the held frames whose time another clock now confirms, in arrival order per
        stream. Those of ``accepted`` (a stream whose frame was just taken) still too far
        ahead are dropped: its clock is back, they were dated by the error."""
        for stream in list(self._ahead):
            held = self._ahead[stream]
            while held:
                schema, record, reach_ns = held[0]
                if not self.watermarks.accepts(record["clock_id"], reach_ns):
                    break
                held.popleft()
                extractor = self.extractors[schema]
                self._ingest(extractor, schema, record, unpack(schema, record), stream)
            if held and stream == accepted:
                self.stats.frames_dropped_ahead += len(held)
                held.clear()
            if not held:
                del self._ahead[stream]

    def _ingest(
        self,
        extractor: Extractor,
        schema: str,
        record: dict[str, Any],
        cols: dict[str, Any],
        stream: tuple[str, str, str],
    ) -> None:
        first_ns, last_ns = extractor.ingest(record, cols)
        if schema == "GpuSampleFrame" and len(cols["gpu_index"]):
            first_gpu = cols["gpu_index"] == cols["gpu_index"].min()
            self.cadence.observe(record["clock_id"], "gpu", cols["ts_ns"][first_gpu])
        self.stats.frames += 1
        self.stats.samples += _rows(record)
        frame_end_ns = int(record.get("frame_end_ns") or 0)
        if last_ns == 0:
            if frame_end_ns == 0:
                return
            first_ns = last_ns = frame_end_ns  # an empty frame still proves the source alive
        last_ns = max(last_ns, frame_end_ns)
        feed = _feed(stream, schema, record)
        if not self.watermarks.observe(feed, first_ns):
            self.stats.late_frames += 1
            self._late_events += _rows(record)
        self.watermarks.observe(feed, last_ns)
        if frame_end_ns:
            self.watermarks.observe_frame(feed, first_ns, frame_end_ns)

    # -- windows ----------------------------------------------------------------------
    def advance(self) -> list[Output]:
        watermark_ns, changes = self.watermarks.advance()
        outputs = self._silence(changes)
        spec = self.config.window
        if self._last_closed_pane is None:
            if watermark_ns <= 0:
                return outputs
            # Start with the first full window after the earliest data.
            self._last_closed_pane = watermark_ns // spec.hop_ns - 1
            return outputs
        for last_pane in self._skipping_a_gap(
            spec.closable_panes(self._last_closed_pane, watermark_ns)
        ):
            outputs += self._close_window(last_pane)
            self._last_closed_pane = last_pane
        return outputs

    def _skipping_a_gap(self, panes: range) -> Sequence[int]:
        """The windows to close: all, unless the watermark jumped further than twice
        ``gap_drain_ns``. Then the first ``gap_drain_ns`` of them and the last window; the
        ones between are empty, as the watermark trails the newest source by at most its
        idle timeout (a lagging source turns silent), so everything ingested before the
        jump lies in the first few. Skipped windows emit nothing, heartbeats included."""
        drain = max(1, self.config.gap_drain_ns // self.config.window.hop_ns)
        if len(panes) <= 2 * drain:
            return panes
        self.stats.windows_skipped += len(panes) - drain - 1
        return [*panes[:drain], panes[-1]]

    def flush(self) -> list[Output]:
        """Close the windows the data reaches (end of a replay or capture): up to the one whose
        last pane holds the newest event. A window ending later would cover time no source
        reported on, read as if every source fell quiet (requests still waiting aged into it,
        rates and counts cut short), and a simulator's truth does not judge it either."""
        newest_ns = self.watermarks.newest_ns()
        oldest_ns = self.watermarks.oldest_latest_ns()
        if newest_ns is None or oldest_ns is None:
            return []
        spec = self.config.window
        end_ns = newest_ns + spec.hop_ns
        outputs = []
        start = self._last_closed_pane if self._last_closed_pane is not None else -1
        if start < 0:
            start = oldest_ns // spec.hop_ns
        for last_pane in spec.closable_panes(start, end_ns):
            outputs += self._close_window(last_pane)
            self._last_closed_pane = last_pane
        return outputs

    def _close_window(self, last_pane: int) -> list[Output]:
        spec = self.config.window
        end_ns = spec.window_end_ns(last_pane)
        self.collectives.close_until(end_ns)
        clock_steps = self._clock_steps()
        panes = spec.panes_of_window(last_pane)
        windows = {name: ex.window(panes) for name, ex in self.extractors.items()}
        share_panes = range(
            last_pane - self.config.share_window_ns // spec.hop_ns + 1, last_pane + 1
        )
        requests_long = self.requests.window(share_panes)
        recent_panes = range(
            last_pane - self.config.rotation_window_ns // spec.hop_ns + 1, last_pane + 1
        )
        requests_recent = self.requests.window(recent_panes)
        in_window = windows["EngineRequestFrame"]
        # A replica with no request event in this window still has its 10 s arrivals (the
        # fleet's shares need them: leaving an idle moment out read its peer as taking every
        # request) and its still-waiting requests (the harm of a stalled queue).
        for deployment in list(requests_long) + list(self.requests.open):
            if deployment not in in_window:
                in_window[deployment] = {"arrivals": 0.0}
        for deployment, values in in_window.items():
            long = requests_long.get(deployment, {})
            values["arrivals_long"] = long.get("arrivals", 0.0)
            values["arrivals_recent"] = requests_recent.get(deployment, {}).get("arrivals", 0.0)
            if "prompt_tokens_mean" in long:
                values["prompt_tokens_mean_long"] = long["prompt_tokens_mean"]
                values["prompt_tokens_max_long"] = long["prompt_tokens_max"]
            slo_ns = self.config.slo_ttft_ns
            values["ttft_p99_s"] = self.requests.ttft_p99_s(deployment, panes, slo_ns)
            values["waiting_mean"] = self.requests.waiting_mean(deployment, panes)
            need = self.requests.waiting_need_tokens_max(deployment, end_ns)
            if need:
                values["waiting_need_tokens_max"] = float(need)
            earlier = range(panes.start - len(panes), panes.start)
            # the SLO breached in this window and the one before it (a sustained breach, as
            # the SLO's harm is labelled): one slow request is in four hopping windows
            values["ttft_p99_over_slo_ratio"] = min(
                values["ttft_p99_s"], self.requests.ttft_p99_s(deployment, earlier, slo_ns)
            ) / (slo_ns / 1e9)
        nic = self.extractors["NicCounterFrame"]
        assert isinstance(nic, NicExtractor)
        inputs = WindowInputs(
            nccl=windows["CollectiveFrame"],
            gpu=windows["GpuSampleFrame"],
            nic=windows["NicCounterFrame"],
            dpu=windows["DpuFrame"],
            engine=windows["EngineSampleFrame"],
            requests=windows["EngineRequestFrame"],
            clock_step_abs_ns={
                node: abs(step)
                for node, (step, at) in clock_steps.items()
                if end_ns - at <= self.config.clock_step_memory_ns
            },
            silent=set(self._silent),
            port_plane=nic.port_plane,
            port_fabric=nic.port_fabric,
            window_s=spec.size_ns / 1e9,
            frontend_node=dict(self.requests.frontend_node),
        )
        views = build_views(inputs, self._held_topology())
        self.last_arrivers.annotate(views)
        findings = self.rules.evaluate(views, end_ns)
        if self.anomaly is not None:
            findings += self.anomaly.score(views, findings, end_ns)
        verdicts = self.fusion.update(findings, end_ns, frozenset(self.rules.held))
        for ex in self.extractors.values():
            ex.evict_before(share_panes.start if ex is self.requests else panes.start)
        # the next window's p99 reads first tokens from its previous window on
        self.requests.forget_first_tokens_before(panes.start + 1 - len(panes))
        self.stats.windows_closed += 1
        self.stats.verdicts += len(verdicts)
        outputs = [Output("Verdict", v["entity"], v) for v in verdicts]
        outputs += self._heartbeats(end_ns)
        if self.config.emit_features:
            outputs += [self._feature_window(v, end_ns) for v in views if v.features]
        return outputs

    def _held_topology(self) -> Topology:
        """The topology of the deployments this shard reads telemetry of. Every worker holds
        the whole fleet's topology, and building every rank's, node's and replica's view of
        it on every window (several scans of all ranks per node and per deployment) grew
        with the fleet on every shard; the views need this shard's deployments only.
        Rebuilt when the topology or the deployments change."""
        ranks = self.topology.ranks
        held = frozenset(self.deployments_seen())
        cached = self._held_cache
        if cached is not None and cached[0] is ranks and cached[1] == held:
            return cached[2]
        topo = Topology({k: p for k, p in ranks.items() if p.deployment in held})
        self._held_cache = (ranks, held, topo)
        return topo

    def _heartbeats(self, end_ns: int) -> list[Output]:
        """Per deployment of this shard: telemetry seen up to ``end_ns`` (freshness)."""
        if end_ns - self._last_heartbeat_ns < self.config.heartbeat_every_ns:
            return []
        self._last_heartbeat_ns = end_ns
        out = []
        for deployment in self.deployments_seen():
            record = heartbeat_record(deployment, end_ns, end_ns, self.config.freshness_bound_ns)
            out.append(Output("Verdict", record["entity"], record))
        return out

    def _clock_steps(self) -> dict[str, tuple[float, int]]:
        """Per node, the last clock step seen (size, local time), derived from the aligner.

        The aligner measures a step of a clock against its deployment's reference clock,
        which cannot tell which of the two moved; the one whose own sample grid jumped did
        (``ClockCadence``). Without that evidence, the measured clock is named, as before."""
        steps: dict[str, tuple[float, int]] = {}
        for clock in self.aligner.clocks():
            est = self.aligner.estimate(clock)
            if not est.last_step_ns:
                continue
            stepped = clock
            reference = self.aligner.reference_of(clock)
            # the step happened after the estimate it was measured against and before it
            # was found: seconds apart when the sampled collectives paused around it
            near_ns = self.config.clock_step_attribution_ns
            lo_ns = min(est.last_step_after_ns, est.last_step_at_ns) - near_ns
            hi_ns = est.last_step_at_ns + near_ns
            if (
                reference is not None
                and self.cadence.stepped_between(reference, lo_ns, hi_ns)
                and not self.cadence.stepped_between(clock, lo_ns, hi_ns)
            ):
                stepped = reference
            node = stepped.split("/", 1)[0]
            if node not in steps or est.last_step_at_ns > steps[node][1]:
                steps[node] = (est.last_step_ns, est.last_step_at_ns)
        return steps

    def _feature_window(self, view: EntityView, end_ns: int) -> Output:
        record = {
            "deployment": view.deployment or "*",
            "entity": view.entity,
            "entity_kind": view.kind,
            "window_start_ns": end_ns - self.config.window.size_ns,
            "window_end_ns": end_ns,
            "features": {k: float(v) for k, v in view.features.items()},
            "sources_present": sorted(view.sources_present),
            "sources_silent": sorted(view.sources_silent),
            "late_events": self._late_events,
        }
        return Output("FeatureWindow", view.entity, record)

    def _silence(self, changes: list[SilenceChange]) -> list[Output]:
        """Source-silent records from the feeds' silence changes. A source (a node's NIC,
        engine, collectives...) is silent when every feed of it is: one NIC port, or one
        of an engine's two topics, that stops leaves the source speaking, as it did before
        the watermark tracked feeds apart (it holds the watermark until its own timeout)."""
        touched: dict[tuple[str, str, str], SilenceChange] = {}
        for change in changes:
            touched[_source_of(change.stream)] = change
        feed_count = self.watermarks.stream_count()
        if not touched and (not self._silent or feed_count == self._feed_count):
            return []  # (a silent source speaks again through a feed's change or a new feed)
        self._feed_count = feed_count
        silent_feeds = self.watermarks.silent_streams
        feeds: dict[tuple[str, str, str], list[Hashable]] = {}
        for feed in self.watermarks.streams():
            feeds.setdefault(_source_of(feed), []).append(feed)
        outputs = []
        for key in sorted(set(touched) | self._silent):
            mine = feeds.get(key, [])
            now_silent = bool(mine) and all(f in silent_feeds for f in mine)
            if now_silent == (key in self._silent):
                continue
            if now_silent:
                self._silent.add(key)
            else:
                self._silent.discard(key)
            latest = max((self.watermarks.latest_ns(f) or 0) for f in mine) if mine else 0
            at_ns = touched[key].at_watermark_ns if key in touched else self.watermark_ns
            change = SilenceChange(key, now_silent, latest, at_ns)
            node, source = key[2], key[1]
            outputs.append(Output("Verdict", f"{node}#{source}", self._silence_record(change, key)))
        return outputs

    def silent_sources(self) -> frozenset[tuple[str, str, str]]:
        """(deployment, source, node) of the sources silent now: their entities are unknown."""
        return frozenset(self._silent)

    def _silence_record(self, change: SilenceChange, key: tuple[str, str, str]) -> dict[str, Any]:
        deployment, source, node = key
        entity = f"{node}#{source}"
        version = self.fusion._versions.get(entity, 0) + 1
        self.fusion._versions[entity] = version
        return {
            "entity": entity,
            "entity_kind": "node",
            "deployment": deployment,
            "condition": "source-silent",
            "state": "firing" if change.silent else "resolved",
            "severity": 0.5,
            "confidence": 1.0,
            "root_cause": f"no {source} telemetry from {node} since event time "
            f"{change.last_event_ns}: its entities are unknown, not healthy",
            "directive": "investigate-telemetry",
            "directive_text": f"Check the {source} agent on {node}; treat its entities as unknown",
            "evidence": [],
            "model_score": None,
            "sources_missing": [source],
            "impact": "entities of this node unknown",
            "first_seen_ns": change.last_event_ns,
            "last_seen_ns": max(change.at_watermark_ns, change.last_event_ns),
            "ttl_ns": self.fusion.ttl_ns,
            "version": version,
            "suppressed_by": None,
        }

    def deployments_seen(self) -> list[str]:
        """Deployments whose telemetry this shard has received."""
        return sorted({str(stream[0]) for stream in self.watermarks.streams()})  # type: ignore[index]

    @property
    def watermark_ns(self) -> int:
        return self.watermarks.watermark_ns


_ROW_COUNTS = ("n_rows", "n_samples", "n_events", "n_flow_rows", "n_dev_rows")


def _feed(stream: tuple[str, str, str], schema: str, record: dict[str, Any]) -> Hashable:
    """The sequence of frames one producer sends: a source's stream, per topic (an engine's
    samples and requests), NIC port and communicator. The watermark waits for each feed, so
    one port's frame read before another's of the same interval, or a node's requests read
    ahead of its engine samples, does not make the others late."""
    return (*stream, schema, record.get("port") or record.get("group_id") or "")


def _source_of(feed: Hashable) -> tuple[str, str, str]:
    key: tuple[str, str, str] = feed[:3]  # type: ignore[index]
    return key


def _rows(record: dict[str, Any]) -> int:
    """Samples in a frame: its row counts (a NIC sample is one port's counters at one time)."""
    return sum(int(record.get(name, 0)) for name in _ROW_COUNTS)


# The column of each frame kind whose newest value is how far a frame without
# ``frame_end_ns`` reaches (a collective's rows end microseconds to milliseconds after their
# first start: near enough to tell a frame dated far ahead).
_ROW_TIME_COLUMNS = {
    "GpuSampleFrame": ("ts_ns",),
    "NicCounterFrame": ("ts_ns",),
    "EngineSampleFrame": ("ts_ns",),
    "EngineRequestFrame": ("ts_ns",),
    "DpuFrame": ("flow_ts_ns", "dev_ts_ns"),
    "CollectiveFrame": ("first_start_ns",),
}


def _newest_row_ns(schema: str, cols: dict[str, Any]) -> int:
    """The newest row time of a frame that does not state its reach (0: no rows)."""
    newest = 0
    for name in _ROW_TIME_COLUMNS.get(schema, ()):
        column = cols.get(name)
        if column is not None and len(column):
            newest = max(newest, int(column.max()))
    return newest
