"""Which clock stepped: a step shows in that clock's own periodic timestamps.

The clock aligner (:mod:`streams.clock_align`) sees a step as a jump of one clock's offset
*relative to a reference clock*; with two clocks in a deployment it cannot tell which of the
two moved. A periodic sampler (a GPU sampled every 10 ms, a NIC port's counters) runs on a
fixed grid of its own timer and stamps each sample with its node's clock. When that clock
steps by D, every sample from then on is stamped D later: one interval is off the grid by D
and the following ones are on it again. A late sample (the sampler descheduled) is different:
one interval is long by d and the next short by d, because the grid did not move.

:class:`ClockCadence` follows each series' grid and records a step when one interval is off
by at least ``step_threshold_ns`` and the next ``confirm_intervals`` are back on the grid.
A series whose intervals scatter more than ``max_noise_ns`` (a sampler without a steady
grid) is never trusted; :meth:`stepped_between` is then False and the caller keeps its default.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

STEP_THRESHOLD_NS = 50_000
CONFIRM_INTERVALS = 4
NOISE_EWMA_WEIGHT = 0.05
CADENCE_EWMA_WEIGHT = 0.01
STEPS_KEPT = 8
MAX_PERIODS = 20  # a longer gap (a source restarted) re-anchors the grid instead


@dataclass
class _Series:
    last_ns: int
    cadence_ns: float = 0.0
    # running mean of |residual|, clipped at the step threshold; starts untrusted
    noise_ns: float = float(STEP_THRESHOLD_NS)
    intervals: int = 0
    pending: deque[tuple[int, float]] = field(default_factory=deque)  # (at_ns, residual_ns)


@dataclass
class ClockCadence:
    """Per-clock record of steps seen in the clock's own periodic sample timestamps."""

    step_threshold_ns: int = STEP_THRESHOLD_NS
    confirm_intervals: int = CONFIRM_INTERVALS
    max_noise_ns: float = STEP_THRESHOLD_NS / 4
    warmup_intervals: int = 8
    _series: dict[tuple[str, str], _Series] = field(default_factory=dict)
    _steps: dict[str, deque[tuple[int, float]]] = field(default_factory=dict)

    def observe(self, clock_id: str, series: str, ts_ns: np.ndarray) -> None:
        """Sample times of one periodic series (one GPU, one port) stamped by ``clock_id``."""
        if len(ts_ns) == 0:
            return
        times = np.sort(np.asarray(ts_ns, dtype=np.int64))
        key = (clock_id, series)
        state = self._series.get(key)
        if state is None:
            state = self._series[key] = _Series(last_ns=int(times[0]))
            times = times[1:]
        for t in times.tolist():
            self._interval(clock_id, state, t)

    def _interval(self, clock_id: str, s: _Series, t_ns: int) -> None:
        gap_ns = t_ns - s.last_ns
        if gap_ns <= 0:
            return  # a duplicate or out-of-order sample says nothing about the grid
        s.last_ns = t_ns
        if s.intervals < self.warmup_intervals:
            # Learn the cadence from the smallest gaps (a lost sample doubles one).
            s.cadence_ns = gap_ns if s.cadence_ns == 0 else min(s.cadence_ns, gap_ns)
            s.intervals += 1
            return
        periods = max(1, round(gap_ns / s.cadence_ns))
        if periods > MAX_PERIODS:
            s.pending.clear()  # after a long silence the cadence error adds up: re-anchor
            return
        residual_ns = gap_ns - periods * s.cadence_ns
        s.intervals += 1
        on_grid = abs(residual_ns) < self.step_threshold_ns / 2
        # Every interval counts towards the noise, clipped so one step barely moves it.
        clipped_ns = min(abs(residual_ns), float(self.step_threshold_ns))
        s.noise_ns += NOISE_EWMA_WEIGHT * (clipped_ns - s.noise_ns)
        if on_grid:
            s.cadence_ns += CADENCE_EWMA_WEIGHT * residual_ns / periods
        if s.pending:
            if not on_grid:
                s.pending.clear()  # the grid came back (a late sample) or kept moving
            else:
                s.pending.append((t_ns, residual_ns))
                if len(s.pending) > self.confirm_intervals:
                    at_ns, step_ns = s.pending[0]
                    s.pending.clear()
                    if self._trusted(s):
                        steps = self._steps.setdefault(clock_id, deque(maxlen=STEPS_KEPT))
                        steps.append((at_ns, step_ns))
            return
        if abs(residual_ns) >= self.step_threshold_ns:
            s.pending.append((t_ns, residual_ns))

    def stepped_between(self, clock_id: str, from_ns: int, to_ns: int) -> bool:
        """True when a trusted series of ``clock_id`` stepped at a time in ``[from_ns,
        to_ns]`` (that clock's time)."""
        return any(from_ns <= t <= to_ns for t, _ in self._steps.get(clock_id, ()))

    def watched(self, clock_id: str) -> bool:
        """True when at least one series of ``clock_id`` is past warm-up and steady enough
        to have shown a step."""
        return any(c == clock_id and self._trusted(s) for (c, _), s in self._series.items())

    def _trusted(self, s: _Series) -> bool:
        return s.intervals > self.warmup_intervals and s.noise_ns <= self.max_noise_ns
