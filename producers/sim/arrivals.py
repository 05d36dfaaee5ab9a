"""Client request arrivals: Poisson, bursty (on/off MMPP), microbursts, Azure trace replay.

Every source yields, for a time range, arrays of arrival time, prompt and output lengths and a
pin (the replica a sticky session sends it to, -1: the router decides). Sources are causes:
the ingress-microburst injector adds a :class:`MicroburstSource`, the request-length-skew
injector a pinned long-prompt :class:`PoissonSource`, and so on; nothing here knows telemetry.

Azure replay (:class:`TraceSource`): the rows of ``AzureLLMInferenceTrace_{code,conv}.csv``
(``TIMESTAMP,ContextTokens,GeneratedTokens``) are replayed in order; the gap between two rows
is divided by ``time_compression`` and the lengths are kept (prompts above
``max_prompt_tokens`` are clipped). The trace loops when the run outlasts it. The folder is
``workload.trace_dir``, else ``$SKEWSCOPE_AZURE_TRACE_DIR``, else
``<repo>/../shared/data/azure-llm-2023``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from producers.sim.scenario import ScenarioError, WorkloadSpec
from skewscope.config import REPO_ROOT

NS = 1_000_000_000


@dataclass
class Arrivals:
    """A batch of arrivals, sorted by time."""

    t_ns: np.ndarray  # int64
    prompt_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64
    pin: np.ndarray  # int64, replica index or -1

    @staticmethod
    def empty() -> Arrivals:
        z = np.zeros(0, dtype=np.int64)
        return Arrivals(z, z, z, z)

    @staticmethod
    def concat(parts: list[Arrivals]) -> Arrivals:
        parts = [p for p in parts if p.t_ns.size]
        if not parts:
            return Arrivals.empty()
        t = np.concatenate([p.t_ns for p in parts])
        order = np.argsort(t, kind="stable")
        return Arrivals(
            t[order],
            np.concatenate([p.prompt_tokens for p in parts])[order],
            np.concatenate([p.output_tokens for p in parts])[order],
            np.concatenate([p.pin for p in parts])[order],
        )


@dataclass(frozen=True)
class Lengths:
    """Lognormal prompt/output lengths (median, sigma), clipped to [1, max]."""

    prompt_median: float
    prompt_sigma: float
    output_median: float
    output_sigma: float
    max_prompt: int
    max_output: int

    @staticmethod
    def of(w: WorkloadSpec) -> Lengths:
        return Lengths(
            w.prompt_tokens_median,
            w.prompt_tokens_sigma,
            w.output_tokens_median,
            w.output_tokens_sigma,
            w.max_prompt_tokens,
            w.max_output_tokens,
        )

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        p = rng.lognormal(np.log(self.prompt_median), self.prompt_sigma, n)
        o = rng.lognormal(np.log(self.output_median), self.output_sigma, n)
        return (
            np.clip(np.rint(p), 1, self.max_prompt).astype(np.int64),
            np.clip(np.rint(o), 1, self.max_output).astype(np.int64),
        )


class ArrivalSource:
    """Base: a source active in [start_ns, end_ns) that draws arrivals for a time range."""

    start_ns: int = 0
    end_ns: int = 2**62

    def draw(self, t0: int, t1: int, rng: np.random.Generator) -> Arrivals:
        lo, hi = max(t0, self.start_ns), min(t1, self.end_ns)
        if hi <= lo:
            return Arrivals.empty()
        return self._draw(lo, hi, rng)

    def _draw(self, t0: int, t1: int, rng: np.random.Generator) -> Arrivals:
        raise NotImplementedError


class PoissonSource(ArrivalSource):
    """Poisson arrivals at rate_per_s, optionally pinned to one replica."""

    def __init__(self, rate_per_s: float, lengths: Lengths, pin: int = -1) -> None:
        self.rate_per_s = rate_per_s
        self.lengths = lengths
        self.pin = pin

    def _draw(self, t0: int, t1: int, rng: np.random.Generator) -> Arrivals:
        n = int(rng.poisson(self.rate_per_s * (t1 - t0) / NS))
        t = np.sort(rng.integers(t0, t1, n))
        p, o = self.lengths.draw(n, rng)
        return Arrivals(t, p, o, np.full(n, self.pin, dtype=np.int64))


class OnOffSource(ArrivalSource):
    """Two-state MMPP: exponential on/off periods, rate * multiplier while on.

    The mean rate over time equals ``rate_per_s``.
    """

    def __init__(
        self, rate_per_s: float, lengths: Lengths, on_s: float, off_s: float, multiplier: float
    ) -> None:
        share_on = on_s / (on_s + off_s)
        self.low = rate_per_s / (share_on * multiplier + (1 - share_on))
        self.high = self.low * multiplier
        self.on_ns, self.off_ns = on_s * NS, off_s * NS
        self.lengths = lengths
        self._on = False
        self._switch_at = 0

    def _draw(self, t0: int, t1: int, rng: np.random.Generator) -> Arrivals:
        parts = []
        t = t0
        while t < t1:
            if self._switch_at <= t:
                self._on = not self._on
                mean = self.on_ns if self._on else self.off_ns
                self._switch_at = t + int(rng.exponential(mean)) + 1
            end = min(t1, self._switch_at)
            rate = self.high if self._on else self.low
            parts.append(PoissonSource(rate, self.lengths)._draw(t, end, rng))
            t = end
        return Arrivals.concat(parts)


class MicroburstSource(ArrivalSource):
    """Bursty clients: every ~period_s, burst_requests requests land within burst_span_us."""

    def __init__(
        self,
        period_s: float,
        burst_requests: int,
        burst_span_us: float,
        lengths: Lengths,
        pin: int = -1,
    ) -> None:
        self.pin = pin
        self.period_ns = period_s * NS
        self.burst_requests = burst_requests
        self.span_ns = int(burst_span_us * 1000)
        self.lengths = lengths
        self._next = -1

    def _draw(self, t0: int, t1: int, rng: np.random.Generator) -> Arrivals:
        if self._next < 0:
            self._next = t0 + int(rng.uniform(0.1, 1.0) * self.period_ns)
        parts = []
        while self._next < t1:
            n = self.burst_requests
            t = np.sort(self._next + rng.integers(0, self.span_ns, n))
            p, o = self.lengths.draw(n, rng)
            parts.append(Arrivals(t, p, o, np.full(n, self.pin, dtype=np.int64)))
            self._next += int(rng.uniform(0.6, 1.4) * self.period_ns)
        return Arrivals.concat(parts)


def trace_dir(w: WorkloadSpec) -> Path:
    if w.trace_dir:
        return Path(w.trace_dir).expanduser()
    env = os.environ.get("SKEWSCOPE_AZURE_TRACE_DIR")
    if env:
        return Path(env).expanduser()
    return REPO_ROOT.parent / "shared" / "data" / "azure-llm-2023"


@lru_cache(maxsize=4)
def read_trace(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offset_ns from the first row, context tokens, generated tokens) of an Azure CSV."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ScenarioError(
            f"Azure trace {path}: {exc}; set workload.trace_dir or SKEWSCOPE_AZURE_TRACE_DIR "
            "to the folder holding AzureLLMInferenceTrace_{code,conv}.csv"
        ) from exc
    if not lines or lines[0].strip() != "TIMESTAMP,ContextTokens,GeneratedTokens":
        raise ScenarioError(
            f"Azure trace {path}: header must be 'TIMESTAMP,ContextTokens,GeneratedTokens'"
        )
    rows = [ln.split(",") for ln in lines[1:] if ln.strip()]
    stamps = np.array([r[0] for r in rows], dtype="datetime64[ns]").astype(np.int64)
    order = np.argsort(stamps, kind="stable")
    context = np.array([int(r[1]) for r in rows], dtype=np.int64)[order]
    generated = np.array([int(r[2]) for r in rows], dtype=np.int64)[order]
    stamps = stamps[order]
    return stamps - stamps[0], context, generated


def trace_path(w: WorkloadSpec) -> Path:
    return trace_dir(w) / f"AzureLLMInferenceTrace_{w.trace}.csv"


class TraceSource(ArrivalSource):
    """Replay of an Azure LLM trace with time compression, looping."""

    def __init__(self, w: WorkloadSpec, sim_start_ns: int) -> None:
        offsets, context, generated = read_trace(trace_path(w))
        start = int(w.trace_offset_s * NS)
        self.rel_ns = (offsets - start) / w.time_compression  # float ns, may be negative
        keep = self.rel_ns >= 0
        self.rel_ns = np.rint(self.rel_ns[keep]).astype(np.int64)
        self.prompt = np.clip(context[keep], 1, w.max_prompt_tokens)
        self.output = np.clip(generated[keep], 1, w.max_output_tokens)
        if not self.rel_ns.size:
            raise ScenarioError(f"Azure trace {w.trace}: trace_offset_s beyond the trace")
        gap = int(np.median(np.diff(self.rel_ns))) if self.rel_ns.size > 1 else NS
        self.period_ns = int(self.rel_ns[-1]) + gap
        self.sim_start_ns = sim_start_ns

    def _draw(self, t0: int, t1: int, rng: np.random.Generator) -> Arrivals:
        parts = []
        lap = (t0 - self.sim_start_ns) // self.period_ns
        while True:
            base = self.sim_start_ns + lap * self.period_ns
            if base >= t1:
                break
            lo = np.searchsorted(self.rel_ns, t0 - base, "left")
            hi = np.searchsorted(self.rel_ns, t1 - base, "left")
            n = hi - lo
            parts.append(
                Arrivals(
                    base + self.rel_ns[lo:hi],
                    self.prompt[lo:hi],
                    self.output[lo:hi],
                    np.full(n, -1, dtype=np.int64),
                )
            )
            lap += 1
        return Arrivals.concat(parts)


class ArrivalProcess:
    """The workload's base source plus any sources faults add (bursty clients, tenants)."""

    def __init__(self, w: WorkloadSpec, sim_start_ns: int, rng: np.random.Generator) -> None:
        lengths = Lengths.of(w)
        self.lengths = lengths
        self.base: ArrivalSource
        if w.arrivals == "azure":
            self.base = TraceSource(w, sim_start_ns)
        elif w.arrivals == "bursty":
            self.base = OnOffSource(
                w.rate_per_s, lengths, w.burst_on_s, w.burst_off_s, w.burst_rate_multiplier
            )
        else:
            self.base = PoissonSource(w.rate_per_s, lengths)
        self.rate_scale = 1.0
        self.extra: list[ArrivalSource] = []
        self._rng = rng

    def draw(self, t0: int, t1: int) -> Arrivals:
        base = self.base.draw(t0, t1, self._rng)
        if self.rate_scale != 1.0 and base.t_ns.size:
            base = thin_or_copy(base, self.rate_scale, self._rng)
        return Arrivals.concat([base] + [s.draw(t0, t1, self._rng) for s in self.extra])


def thin_or_copy(a: Arrivals, scale: float, rng: np.random.Generator) -> Arrivals:
    """Scale an arrival batch's rate: keep each with prob scale (<1) or add jittered copies."""
    whole, frac = int(scale), scale - int(scale)
    parts = []
    for copy in range(whole + 1):
        keep = np.ones(a.t_ns.size, bool) if copy < whole else rng.random(a.t_ns.size) < frac
        shift = np.zeros(a.t_ns.size, dtype=np.int64)
        if copy:  # copies land up to 50 ms after the original
            shift = rng.integers(0, 50_000_000, a.t_ns.size)
        parts.append(
            Arrivals(
                a.t_ns[keep] + shift[keep],
                a.prompt_tokens[keep],
                a.output_tokens[keep],
                a.pin[keep],
            )
        )
    return Arrivals.concat(parts)
