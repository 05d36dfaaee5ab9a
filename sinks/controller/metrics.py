"""What the closed loop changed, measured on the simulator's truth and its telemetry.

* **TTFT** per request: first token minus arrival (true state). A request still without a
  first token at the end is counted with its age then (a lower bound), so a hung replica
  shows.
* **Inter-token latency (ITL)**: each token a step produces took that step's duration (steps
  run back to back while sequences decode), so the ITL distribution is the step duration
  weighted by the tokens produced, per 10 ms EngineSampleFrame sample (its mean step duration
  and the growth of its generated-token counter). A step still running at the end (a hung
  engine, true state) counts with its age, weighted by the sequences it holds. Limits: the
  gap a preempted sequence spends waiting to be re-admitted is not an ITL sample here (it
  shows in TPOT and goodput).
* **Goodput**: output tokens per second of requests that met the SLO: finished within the
  run, TTFT <= ``slo.ttft_ms`` and TPOT ((finish - first token) / (tokens - 1)) <=
  ``slo.tpot_ms``. Finish and TPOT come from the engines' EngineRequestFrames (FIRST_TOKEN
  and FINISHED events; TPOT is a difference of two stamps of one host clock, so the clock's
  offset cancels; a finish is placed at the end of the frame period that reported it). Requests that
  arrive in the last ``slo.tail_s`` are not judged (they may not finish even when all is
  well); the rate is over the judged arrival span. Requests that admission control rejected
  (HTTP 429) never meet the SLO: they count in ``slo_met_ratio``'s denominator and in
  ``rejected_ratio``, and have no TTFT.
* **GPU idle**: 1 - ``gpu_util_ratio`` of the emitted GpuSampleFrames, averaged over GPUs and
  samples (sample loss drops a few samples; the mean does not need them).

Requests are judged by arrival time, so every mode of one episode judges the same arrivals
(the simulator's arrival stream does not depend on control actions).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from producers.sim import SimFrame, Simulation
from producers.sim.engine import FINISHED, FIRST_TOKEN
from schemas.columns import unpack

S = 1_000_000_000


@dataclass(frozen=True)
class SloSpec:
    ttft_ms: float = 2000.0
    tpot_ms: float = 100.0
    tail_s: float = 5.0


@dataclass(frozen=True)
class RequestTable:
    arrival_ns: np.ndarray
    first_token_ns: np.ndarray  # -1: none yet
    finish_ns: np.ndarray  # -1: not finished
    tpot_ns: np.ndarray  # -1: not finished
    output_tokens: np.ndarray
    replica: np.ndarray
    # arrival of requests admission control rejected (never reached an engine)
    rejected_arrival_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@dataclass(frozen=True)
class StepTable:
    end_ns: np.ndarray
    duration_ns: np.ndarray
    tokens: np.ndarray
    stalled: np.ndarray  # True: a step that never ended; duration is its age at the end


class RequestMeter:
    """First-token and finish stamps of requests, from EngineRequestFrames (host clock)."""

    def __init__(self) -> None:
        self.first_local_ns: dict[tuple[str, int], int] = {}
        self.finish_local_ns: dict[tuple[str, int], int] = {}
        self.finish_reported_ns: dict[tuple[str, int], int] = {}

    def observe(self, frame: SimFrame) -> None:
        if frame.schema != "EngineRequestFrame" or not frame.record["n_events"]:
            return
        cols = unpack(frame.schema, frame.record)
        ids = [_request_key(x) for x in frame.record["request_ids"]]
        for i, kind, ts in zip(
            cols["request_index"].tolist(),
            cols["kind"].tolist(),
            cols["ts_ns"].tolist(),
            strict=True,
        ):
            if kind == FIRST_TOKEN:
                self.first_local_ns.setdefault(ids[i], ts)
            elif kind == FINISHED:
                self.finish_local_ns[ids[i]] = ts
                self.finish_reported_ns[ids[i]] = frame.event_time_ns


def _request_key(request_id: str) -> tuple[str, int]:
    replica, _, index = request_id.rpartition("-")
    return replica, int(index)


def requests_of(sim: Simulation, meter: RequestMeter) -> RequestTable:
    """Every request the engines received: true arrival and first token, finish from telemetry.

    ``finish_ns`` is the end of the frame period whose frame reported the finish; ``tpot_ns`` the
    finish minus first-token stamps over tokens - 1 (-1 while unfinished).
    """
    cols: dict[str, list[np.ndarray]] = defaultdict(list)
    for r, e in enumerate(sim.world.engines):
        n = len(e.req_arrival)
        finish = np.full(n, -1, dtype=np.int64)
        tpot = np.full(n, -1.0)
        out = np.array(e.req_target, dtype=np.int64)
        for i in range(n):
            key = (e.name, i)
            if key in meter.finish_reported_ns:
                finish[i] = meter.finish_reported_ns[key]
                first = meter.first_local_ns.get(key, meter.finish_local_ns[key])
                tpot[i] = (meter.finish_local_ns[key] - first) / max(1, int(out[i]) - 1)
        cols["arrival"].append(np.array(e.req_arrival, dtype=np.int64))
        cols["first"].append(np.array(e.req_first_token, dtype=np.int64))
        cols["finish"].append(finish)
        cols["tpot"].append(tpot)
        cols["out"].append(out)
        cols["replica"].append(np.full(n, r, dtype=np.int64))
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
    rejected = [t for t, _ in sim.world.rejected]
    return RequestTable(
        cat["arrival"].astype(np.int64),
        cat["first"].astype(np.int64),
        cat["finish"].astype(np.int64),
        cat["tpot"],
        cat["out"].astype(np.int64),
        cat["replica"].astype(np.int64),
        np.concatenate(rejected).astype(np.int64) if rejected else np.zeros(0, np.int64),
    )


class StepMeter:
    """Tokens generated and step duration per 10 ms engine sample, from EngineSampleFrames.

    A sample's time is placed on event time as the frame's period end minus its distance (in
    its own clock) from the frame's last sample.
    """

    def __init__(self) -> None:
        self._last_gen: dict[str, int] = {}
        self._rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def observe(self, frame: SimFrame) -> None:
        if frame.schema != "EngineSampleFrame" or not frame.record["n_samples"]:
            return
        cols = unpack(frame.schema, frame.record)
        gen = cols["generation_tokens_total"].astype(np.int64)
        replica = str(frame.record["replica"])
        before = self._last_gen.get(replica, int(gen[0]))
        self._last_gen[replica] = int(gen[-1])
        ts = cols["ts_ns"].astype(np.int64)
        at = frame.event_time_ns - (ts[-1] - ts)
        tokens = np.diff(gen, prepend=before)
        self._rows.append((at, cols["step_duration_ns"].astype(np.int64), tokens))

    def table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self._rows:
            z = np.zeros(0, dtype=np.int64)
            return z, z, z
        at, dur, tok = (np.concatenate(c) for c in zip(*self._rows, strict=True))
        return at, dur, tok


def steps_of(sim: Simulation, meter: StepMeter) -> StepTable:
    """Engine samples with tokens (from telemetry), plus one row per engine whose step never
    ended (hung, true state), with its age at the simulation's current time as duration."""
    at, dur, tok = meter.table()
    ends, durs, toks, stalled = [at], [dur], [tok], [np.zeros(at.size, dtype=bool)]
    for e in sim.world.engines:
        running = int((e.slot_req >= 0).sum())
        if e.stalled and running:
            ends.append(np.array([sim.now_ns], dtype=np.int64))
            durs.append(np.array([sim.now_ns - e.t_ns], dtype=np.int64))
            toks.append(np.array([running], dtype=np.int64))
            stalled.append(np.array([True]))
    return StepTable(
        np.concatenate(ends),
        np.concatenate(durs),
        np.concatenate(toks),
        np.concatenate(stalled),
    )


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The q-quantile of values, each counted ``weight`` times (nan when empty)."""
    keep = weights > 0
    values, weights = values[keep], weights[keep]
    if not values.size:
        return float("nan")
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    idx = int(np.searchsorted(cum, q * cum[-1], side="left"))
    return float(values[order][min(idx, len(order) - 1)])


class GpuIdleMeter:
    """Mean GPU idle ratio from GpuSampleFrames, overall and per bin of event time."""

    def __init__(self, start_ns: int, bin_ns: int = S) -> None:
        self.start_ns = start_ns
        self.bin_ns = bin_ns
        self._idle: dict[int, float] = defaultdict(float)
        self._n: dict[int, int] = defaultdict(int)

    def observe(self, frame: SimFrame) -> None:
        if frame.schema != "GpuSampleFrame":
            return
        util = unpack(frame.schema, frame.record)["gpu_util_ratio"]
        b = (frame.event_time_ns - 1 - self.start_ns) // self.bin_ns
        self._idle[b] += float(np.sum(1.0 - util))
        self._n[b] += int(util.size)

    def idle_ratio(self) -> float:
        n = sum(self._n.values())
        return sum(self._idle.values()) / n if n else float("nan")

    def series(self, bins: int) -> list[float]:
        return [self._idle[b] / self._n[b] if self._n.get(b) else float("nan") for b in range(bins)]


@dataclass(frozen=True)
class EpisodeMetrics:
    requests_judged: int
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    goodput_tokens_per_s: float
    throughput_tokens_per_s: float
    slo_met_ratio: float
    gpu_idle_ratio: float
    rejected_ratio: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _slo_met(req: RequestTable, end_ns: int, slo: SloSpec) -> np.ndarray:
    done = (req.finish_ns >= 0) & (req.finish_ns <= end_ns) & (req.first_token_ns >= 0)
    ttft = req.first_token_ns - req.arrival_ns
    return done & (ttft <= slo.ttft_ms * 1e6) & (req.tpot_ns <= slo.tpot_ms * 1e6)


def _ttft_ns(req: RequestTable, at_ns: int) -> np.ndarray:
    """TTFT, or the age at ``at_ns`` of requests without a first token by then (censored)."""
    has = (req.first_token_ns >= 0) & (req.first_token_ns <= at_ns)
    return np.where(has, req.first_token_ns - req.arrival_ns, at_ns - req.arrival_ns)


def episode_metrics(
    req: RequestTable,
    steps: StepTable,
    gpu: GpuIdleMeter,
    start_ns: int,
    end_ns: int,
    slo: SloSpec,
) -> EpisodeMetrics:
    judged_until = end_ns - int(slo.tail_s * S)
    if judged_until <= start_ns:
        raise ValueError(
            f"episode of {(end_ns - start_ns) / S:g} s is not longer than the SLO tail "
            f"{slo.tail_s:g} s: nothing can be judged; run longer or lower tail_s"
        )
    judged = (req.arrival_ns >= start_ns) & (req.arrival_ns < judged_until)
    rej = req.rejected_arrival_ns
    rejected = int(((rej >= start_ns) & (rej < judged_until)).sum())
    offered = int(judged.sum()) + rejected
    ttft = _ttft_ns(req, end_ns)[judged]
    met = _slo_met(req, end_ns, slo) & judged
    span_s = (judged_until - start_ns) / S
    in_run = (steps.end_ns > start_ns) & (steps.end_ns <= end_ns)
    durs, toks = steps.duration_ns[in_run].astype(float), steps.tokens[in_run].astype(float)
    return EpisodeMetrics(
        requests_judged=int(judged.sum()),
        ttft_p50_ms=float(np.percentile(ttft, 50) / 1e6) if ttft.size else float("nan"),
        ttft_p99_ms=float(np.percentile(ttft, 99) / 1e6) if ttft.size else float("nan"),
        itl_p50_ms=weighted_quantile(durs, toks, 0.50) / 1e6,
        itl_p99_ms=weighted_quantile(durs, toks, 0.99) / 1e6,
        goodput_tokens_per_s=float(req.output_tokens[met].sum()) / span_s,
        throughput_tokens_per_s=float(toks.sum()) / ((end_ns - start_ns) / S),
        slo_met_ratio=float(met.sum() / offered) if offered else float("nan"),
        gpu_idle_ratio=gpu.idle_ratio(),
        rejected_ratio=rejected / offered if offered else 0.0,
    )


def time_series(
    req: RequestTable,
    steps: StepTable,
    gpu: GpuIdleMeter,
    start_ns: int,
    end_ns: int,
    slo: SloSpec,
    bin_ns: int = S,
) -> dict[str, list[float]]:
    """Per bin of event time: p99 TTFT (s), p99 ITL (ms), goodput (tokens/s), GPU idle ratio.

    TTFT of a bin: requests whose first token came in it, plus those still waiting at its end
    for longer than the TTFT SLO (counted with their age). ITL of a bin: steps that ended in
    it, plus a hung step's age at the bin's end once it began. Goodput of a bin: output tokens
    of SLO-meeting requests that finished in it.
    """
    bins = int(-(-(end_ns - start_ns) // bin_ns))
    met = _slo_met(req, end_ns, slo)
    slo_ns = slo.ttft_ms * 1e6
    out: dict[str, list[float]] = {
        "t_s": [],
        "ttft_p99_s": [],
        "itl_p99_ms": [],
        "goodput_tokens_per_s": [],
    }
    for b in range(bins):
        a, z = start_ns + b * bin_ns, min(end_ns, start_ns + (b + 1) * bin_ns)
        first = (req.first_token_ns >= a) & (req.first_token_ns < z)
        waiting = (req.arrival_ns < z) & ((req.first_token_ns < 0) | (req.first_token_ns >= z))
        late = waiting & (z - req.arrival_ns > slo_ns)
        ttft = np.concatenate(
            [(req.first_token_ns - req.arrival_ns)[first], (z - req.arrival_ns)[late]]
        )
        sel = (steps.end_ns > a) & (steps.end_ns <= z) & ~steps.stalled
        hung_since = (steps.end_ns - steps.duration_ns)[steps.stalled]
        hung = hung_since < z
        ages = (z - hung_since[hung]).astype(float)
        out["t_s"].append((z - start_ns) / S)
        out["ttft_p99_s"].append(float(np.percentile(ttft, 99) / S) if ttft.size else 0.0)
        itl = weighted_quantile(
            np.concatenate([steps.duration_ns[sel].astype(float), ages]),
            np.concatenate([steps.tokens[sel].astype(float), steps.tokens[steps.stalled][hung]]),
            0.99,
        )
        out["itl_p99_ms"].append(itl / 1e6)
        done = met & (req.finish_ns >= a) & (req.finish_ns < z)
        out["goodput_tokens_per_s"].append(float(req.output_tokens[done].sum()) / ((z - a) / S))
    out["gpu_idle_ratio"] = gpu.series(bins)
    return out
