"""Phase inference (experimental): is a node's GPU time prefill- or decode-dominated, seen
from its DPU's PCIe DMA counters alone?

Where the topology puts GPUs behind the DPU's PCIe switch (TopologyRecord ``gpu_behind_dpu``),
the DPU's DMA counters include those GPUs' host copies. The DPU also knows its own flows, so
per DpuFrame row (10 ms): device -> host copies = DMA read bytes minus the flows' transmitted
bytes, host -> device copies = DMA write bytes minus the flows' received bytes. An engine copies
each step's inputs host -> device when the step starts and the sampled tokens device -> host
when a step that produced them ends, and a busy GPU keeps fetching launch work from host
memory. Per bucket (``bucket_ns`` of the DPU's event time, default 100 ms):

* idle: host -> device copies in fewer than half of the rows (no kernels, no steps);
* busy: ``cadence`` = share of the active rows holding a device -> host burst, i.e. sampled
  steps ending per unit of busy time. Decode-dominated time is short steps, each returning
  samples (a burst every step); prefill-dominated time is long steps (a 2,000-token chunk
  runs for ~150 ms) that return few samples, none while a prompt chunk that does not finish
  runs. With rows shorter than a decode step, a row holds at most one step end.
* ``feature="ratio"`` (the ablation) uses log10(device -> host / host -> device bytes) instead.

Nothing here knows bytes per token or per sequence (that would make the measurement
circular). The split is learned per node, self-calibrating: over the last ``memory_buckets``
busy buckets, the exact two-cluster split (1-D 2-means, Otsu) of the feature; decode is the
high cluster, the decision threshold the midpoint of the two means, and the prefill share
estimate the bucket's position between them (1 at the prefill mean, 0 at the decode mean,
clipped). A bucket is judged by the split of the buckets before it. North-south bytes in no
flow (health checks, scrapes) stay in the residuals: device -> host they are a per-node floor,
learned as the lowest per-row residual of the last ``memory_buckets`` buckets (rows without a
step end are common in every phase) and subtracted; host -> device they are small against a
busy GPU's copies and must stay below ``active_margin_bytes`` per row (an assumption: unflowed
traffic above ~100 kB/s would make idle rows look active).

Unknown, never a guess (``phase == "unknown"``, ``prefill_share is None``, ``reason`` says
why): a node with no GPU behind its DPU; a node whose GPUs behind the DPU run no sampling
stage (a non-last pipeline stage copies inputs but returns no samples); a bucket with fewer
than ``min_rows_ratio`` of its rows (sample loss); a node still calibrating (fewer than
``warmup_buckets`` busy buckets); or a node whose two clusters are not two phases (see
:meth:`Split.separated`: one phase only, so far). Plain Python and numpy, no Faust or Kafka:
fed DpuFrame records with their decoded columns, and a Topology.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streams.topology import Topology

IDLE, PREFILL, DECODE, UNKNOWN = "idle", "prefill", "decode", "unknown"
PHASES = (IDLE, PREFILL, DECODE, UNKNOWN)


CADENCE, RATIO = "cadence", "ratio"


@dataclass(frozen=True)
class PhaseConfig:
    bucket_ns: int = 100_000_000
    # cadence: share of active rows with a device -> host burst (sampled steps per busy
    # time); ratio: log10 of device -> host over host -> device bytes (the ablation).
    feature: str = CADENCE
    # A row shows copy activity when its host -> device residual exceeds this (a noise margin
    # for counter rounding and north-south traffic in no flow).
    active_margin_bytes: float = 1024.0
    # A row holds a device -> host burst when its residual exceeds the learned floor by this.
    burst_margin_bytes: float = 24.0
    busy_rows_ratio: float = 0.5  # a bucket is busy when this share of its rows is active
    min_rows_ratio: float = 0.5  # fewer rows than this share of the bucket: unknown
    memory_buckets: int = 600  # busy buckets the split is learned from (60 s at 100 ms)
    warmup_buckets: int = 30  # busy buckets seen before the first estimate
    # Two clusters count as two phases only when the decode cluster's signal is at least
    # min_decode_over_prefill times the prefill cluster's (cadence; a difference of its log10
    # for the ratio), the gap is min_separation_std pooled within-cluster standard deviations,
    # the smaller cluster holds min_cluster_ratio of the buckets, and (cadence) decode steps
    # end in at least min_decode_cadence of the active rows.
    min_decode_over_prefill: float = 2.0
    min_separation_std: float = 3.0
    min_cluster_ratio: float = 0.05
    min_decode_cadence: float = 0.2
    ratio_pseudo_bytes: float = 64.0  # added to both directions before the log ratio


@dataclass(frozen=True)
class PhaseEstimate:
    """The inferred phase of one node in one bucket (times in the DPU's clock)."""

    node: str
    bucket_start_ns: int
    phase: str  # idle | prefill | decode | unknown
    prefill_share: float | None  # estimated prefill share of GPU compute time; None: unknown
    reason: str = ""  # why unknown
    h2d_bytes: float = 0.0  # host -> device copy bytes seen in the bucket
    d2h_bytes: float = 0.0  # device -> host copy bytes seen in the bucket
    log_ratio: float | None = None  # log10 of D2H / H2D (busy buckets)
    active_rows: int = 0  # rows with host -> device copies
    burst_rows: int = 0  # active rows with a device -> host burst (a sampled step ended)


@dataclass
class _Bucket:
    rows: int = 0
    h2d: list[float] = field(default_factory=list)
    d2h: list[float] = field(default_factory=list)


@dataclass
class _Node:
    floor_d2h: deque[float]  # per-bucket minimum device -> host residuals
    history: deque[float]  # the feature of past busy buckets
    open: dict[int, _Bucket] = field(default_factory=dict)
    closed_through: int | None = None  # last bucket estimated
    late_rows: int = 0  # rows of buckets already estimated (not used)


@dataclass(frozen=True)
class Split:
    """A two-cluster split of a feature: the prefill (low) and decode (high) cluster means."""

    prefill_mean: float
    decode_mean: float
    pooled_std: float
    minority_ratio: float

    @property
    def threshold(self) -> float:
        return 0.5 * (self.prefill_mean + self.decode_mean)

    def separated(self, config: PhaseConfig) -> bool:
        gap = self.decode_mean - self.prefill_mean
        if config.feature == RATIO:
            apart = gap >= float(np.log10(config.min_decode_over_prefill))
        else:
            apart = (
                self.decode_mean >= config.min_decode_over_prefill * self.prefill_mean
                and self.decode_mean >= config.min_decode_cadence
            )
        return (
            apart
            and gap > config.min_separation_std * self.pooled_std
            and self.minority_ratio >= config.min_cluster_ratio
        )

    def prefill_share(self, x: float) -> float:
        """1 at the prefill mean, 0 at the decode mean, linear between (clipped)."""
        gap = self.decode_mean - self.prefill_mean
        return float(np.clip((self.decode_mean - x) / gap, 0.0, 1.0)) if gap > 0 else 0.5


def two_means(values: Iterable[float]) -> Split | None:
    """The exact 1-D 2-means split (Otsu: the cut maximising between-cluster variance)."""
    x = np.sort(np.asarray(list(values), dtype=np.float64))
    n = x.size
    if n < 2 or x[0] == x[-1]:
        return None
    csum = np.cumsum(x)
    csq = np.cumsum(x * x)
    k = np.arange(1, n)  # left cluster x[:k]
    m0 = csum[:-1] / k
    m1 = (csum[-1] - csum[:-1]) / (n - k)
    between = k * (n - k) * (m1 - m0) ** 2
    between[x[1:] == x[:-1]] = -1.0  # cut only between distinct values
    best = int(np.argmax(between))
    kb = best + 1
    sse = (csq[best] - kb * m0[best] ** 2) + (csq[-1] - csq[best] - (n - kb) * m1[best] ** 2)
    pooled = float(np.sqrt(max(sse, 0.0) / max(n - 2, 1)))
    return Split(float(m0[best]), float(m1[best]), pooled, min(kb, n - kb) / n)


class PhaseInference:
    """Per node and bucket: idle, prefill- or decode-dominated, or unknown."""

    def __init__(self, topology: Topology, config: PhaseConfig | None = None) -> None:
        self.topology = topology
        self.config = config or PhaseConfig()
        self._nodes: dict[str, _Node] = {}

    # -- visibility ------------------------------------------------------------------------
    def unobservable_reason(self, node: str) -> str:
        """Why this node's phase cannot be seen from its DPU ("" when it can)."""
        places = self.topology.ranks_on(node)
        if not places:
            return "node not in the topology"
        behind = [p for p in places if p.gpu_behind_dpu]
        if not behind:
            return "no GPU behind the DPU's PCIe switch: host copies invisible"
        deployments = {p.deployment for p in behind}
        last_stage = {d: max(p.pp_stage for p in self.topology.ranks_of(d)) for d in deployments}
        if not any(p.pp_stage == last_stage[p.deployment] for p in behind):
            return "GPUs behind the DPU run no sampling (last pipeline) stage: no samples to see"
        return ""

    # -- input -----------------------------------------------------------------------------
    def ingest(self, record: dict[str, Any], cols: dict[str, np.ndarray]) -> list[PhaseEstimate]:
        """Add one DpuFrame; return the estimates of the buckets it completes."""
        cfg = self.config
        node = record["node"]
        state = self._nodes.get(node)
        if state is None:
            memory = cfg.memory_buckets
            state = self._nodes[node] = _Node(deque(maxlen=memory), deque(maxlen=memory))
        interval = max(int(record.get("interval_ns") or 0), 1)
        dev_ts = np.asarray(cols["dev_ts_ns"], dtype=np.int64)
        if dev_ts.size:
            flow_ts = np.asarray(cols["flow_ts_ns"], dtype=np.int64)
            keys, inverse = np.unique(flow_ts, return_inverse=True)
            rx = tx = np.zeros(dev_ts.size)
            if keys.size:
                flow_rx = np.bincount(inverse, cols["flow_rx_bytes"].astype(np.float64))
                flow_tx = np.bincount(inverse, cols["flow_tx_bytes"].astype(np.float64))
                pos = np.clip(np.searchsorted(keys, dev_ts), 0, keys.size - 1)
                matched = keys[pos] == dev_ts
                rx = np.where(matched, flow_rx[pos], 0.0)
                tx = np.where(matched, flow_tx[pos], 0.0)
            else:
                matched = np.zeros(dev_ts.size, dtype=bool)
            # a row whose flow rows were lost cannot be split into copies and flows
            ok = matched if record.get("flow_ids") else np.ones(dev_ts.size, dtype=bool)
            h2d = cols["dev_pcie_write_bytes"].astype(np.float64) - rx
            d2h = cols["dev_pcie_read_bytes"].astype(np.float64) - tx
            # a row covers (ts - interval, ts]: bucket it by its midpoint (robust to offsets)
            bucket = (dev_ts - interval // 2) // cfg.bucket_ns
            for i in np.flatnonzero(ok):
                if state.closed_through is not None and bucket[i] <= state.closed_through:
                    state.late_rows += 1
                    continue
                b = state.open.setdefault(int(bucket[i]), _Bucket())
                b.rows += 1
                b.h2d.append(float(h2d[i]))
                b.d2h.append(float(d2h[i]))
        end = int(record.get("frame_end_ns") or 0) or (int(dev_ts.max()) if dev_ts.size else 0)
        done = sorted(k for k in state.open if (k + 1) * cfg.bucket_ns <= end + interval // 2)
        return [self._close(node, state, k, interval) for k in done]

    def flush(self) -> list[PhaseEstimate]:
        """Close every open bucket (end of a replay)."""
        out = []
        for node, state in self._nodes.items():
            for k in sorted(state.open):
                out.append(self._close(node, state, k, 0))
        return out

    # -- one bucket --------------------------------------------------------------------------
    def _close(self, node: str, state: _Node, k: int, interval: int) -> PhaseEstimate:
        cfg = self.config
        b = state.open.pop(k)
        state.closed_through = k if state.closed_through is None else max(k, state.closed_through)
        start = k * cfg.bucket_ns
        reason = self.unobservable_reason(node)
        if reason:
            return PhaseEstimate(node, start, UNKNOWN, None, reason)
        expected = cfg.bucket_ns // interval if interval else b.rows
        if b.rows < cfg.min_rows_ratio * expected or not b.rows:
            return PhaseEstimate(node, start, UNKNOWN, None, "too few DPU rows in the bucket")
        h2d_rows = np.maximum(np.array(b.h2d), 0.0)
        d2h_rows = np.array(b.d2h)
        state.floor_d2h.append(float(d2h_rows.min()))
        d2h_rows = np.maximum(d2h_rows - min(state.floor_d2h), 0.0)
        h2d, d2h = float(h2d_rows.sum()), float(d2h_rows.sum())
        is_active = h2d_rows > cfg.active_margin_bytes
        n_active = int(is_active.sum())
        n_burst = int((is_active & (d2h_rows > cfg.burst_margin_bytes)).sum())
        if n_active < cfg.busy_rows_ratio * b.rows:
            return PhaseEstimate(node, start, IDLE, 0.0, "", h2d, d2h, None, n_active, n_burst)
        ratio = float(np.log10((d2h + cfg.ratio_pseudo_bytes) / (h2d + cfg.ratio_pseudo_bytes)))
        x = ratio if cfg.feature == RATIO else n_burst / n_active
        history = list(state.history)  # judged by the buckets before it
        state.history.append(x)
        seen = (h2d, d2h, ratio, n_active, n_burst)
        if len(history) < cfg.warmup_buckets:
            return PhaseEstimate(node, start, UNKNOWN, None, "calibrating", *seen)
        split = two_means(history)
        if split is None or not split.separated(cfg):
            return PhaseEstimate(node, start, UNKNOWN, None, "one phase so far: no split", *seen)
        phase = DECODE if x > split.threshold else PREFILL
        return PhaseEstimate(node, start, phase, split.prefill_share(x), "", *seen)
