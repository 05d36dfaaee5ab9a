"""Clock alignment from blocking collectives, whose end times line up on every rank.

For a sampled collective seen on several ranks, each rank's local end time (start +
duration, in its node's clock) marks the *same* true instant. The difference between a
clock's end time and the reference clock's end time for the same collective is therefore a
direct sample of that clock's offset: no network message is involved, so path asymmetry does
not bias it. The estimate is the median of recent samples (robust to jitter and to the odd
rank that was descheduled); recent means a sliding window of event time, which follows drift.
A sample far from the current estimate that persists is a clock *step*: reported, and the
estimate re-converges to it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ClockEstimate:
    offset_ns: float
    samples: int
    last_step_ns: float  # size of the last detected step (0: none)
    last_step_at_ns: int
    # the time of the estimate that step was measured against: it happened after this (a
    # step found after a pause in the samples happened anywhere in the pause)
    last_step_after_ns: int = 0


@dataclass
class ClockAligner:
    """Offsets of every clock relative to a reference clock (the first one seen per group)."""

    window_ns: int = 2_000_000_000
    max_samples: int = 512
    step_threshold_ns: int = 100_000
    step_horizon_ns: int = 1_000_000_000
    # across a pause in the samples longer than two horizons: drift allowed per second of it
    # beyond them, and the longest pause compared across at all
    drift_allowance_ppm: float = 50.0
    max_gap_ns: int = 10_000_000_000
    _samples: dict[str, deque[tuple[int, float]]] = field(default_factory=dict)
    _reference: dict[str, str] = field(default_factory=dict)  # deployment -> reference clock
    _steps: dict[str, tuple[float, int]] = field(default_factory=dict)
    _offset_cache: dict[str, float] = field(default_factory=dict)
    _estimates: dict[str, deque[tuple[int, float]]] = field(default_factory=dict)
    _deployment_of: dict[str, str] = field(default_factory=dict)  # clock -> its deployment
    _found_ns: dict[str, int] = field(default_factory=dict)  # clock -> last step found at
    _step_after_ns: dict[str, int] = field(default_factory=dict)  # see ClockEstimate

    def reference(self, deployment: str) -> str | None:
        return self._reference.get(deployment)

    def reference_of(self, clock: str) -> str | None:
        """The reference clock ``clock`` is measured against (None before it is)."""
        deployment = self._deployment_of.get(clock)
        return None if deployment is None else self._reference.get(deployment)

    def observe(self, deployment: str, ends_ns: dict[str, int]) -> None:
        """One collective: local end time per clock id (at least two clocks to be useful)."""
        if len(ends_ns) < 2:
            return
        ref = self._reference.setdefault(deployment, min(ends_ns))
        if ref not in ends_ns:
            # Chain through a clock already aligned to the reference.
            aligned = [c for c in ends_ns if c in self._offset_cache or c == ref]
            if not aligned:
                return
            anchor = aligned[0]
            ref_end = ends_ns[anchor] - self.offset_ns(anchor)
        else:
            ref_end = float(ends_ns[ref])
        for clock, end_ns in ends_ns.items():
            if clock == ref:
                continue
            self._deployment_of[clock] = deployment
            self._add(clock, end_ns, end_ns - ref_end)

    def _add(self, clock: str, at_ns: int, sample_ns: float) -> None:
        window = self._samples.setdefault(clock, deque(maxlen=self.max_samples))
        window.append((at_ns, sample_ns))
        while window and window[0][0] < at_ns - self.window_ns:
            window.popleft()
        estimate = float(np.median([s for _, s in window]))
        self._offset_cache[clock] = estimate
        # A step is a fast change: the estimate now against the estimate one horizon ago.
        # Drift (tens of ppm) moves the estimate far less than the threshold in that time.
        # The estimates of the last window are kept too (below).
        history = self._estimates.setdefault(clock, deque())
        history.append((at_ns, estimate))
        while len(history) > 1 and history[1][0] <= at_ns - self.window_ns:
            history.popleft()
        then_ns, then_estimate = _last_before(history, at_ns - self.step_horizon_ns)
        base_ns = then_ns  # the time of the estimate the change is measured against
        last_step_at = self._steps.get(clock, (0.0, -(2**62)))[1]
        gap_ns = at_ns - then_ns
        threshold_ns = float(self.step_threshold_ns)
        step_at_ns = at_ns
        if gap_ns > 2 * self.step_horizon_ns:
            # Sampled collectives pause now and then (2.2 s in clock-desync-ref-001, the
            # step inside the pause): compare across the pause, with room for the drift
            # over it, once three samples in the window agree on the new offset (a single
            # descheduled rank's reading is not a step). Dated by the first of them.
            if gap_ns > self.max_gap_ns:
                return
            if len(window) < 3:
                history.pop()  # keep comparing with the estimate from before the pause
                return
            threshold_ns += self.drift_allowance_ppm * 1e-6 * (gap_ns - 2 * self.step_horizon_ns)
            step_at_ns = window[0][0]
        change = estimate - then_estimate
        if (
            step_at_ns == at_ns
            and abs(change) <= threshold_ns
            and at_ns - self._found_ns.get(clock, -(2**62)) > self.window_ns
        ):
            # The median takes a window to move from the old offset to the new one. With
            # sparse samples (a sampled collective every 16th step) a step can move it by
            # halves a horizon apart, each under the threshold (200 us seen as 99.8 us, then
            # 99.8 us): against the estimate a window ago it is whole. (Not within a window
            # of finding the last step, while the median still moves to it.)
            base_ns, change = history[0][0], estimate - history[0][1]
        if abs(change) > threshold_ns and at_ns - last_step_at > self.step_horizon_ns:
            previous, previous_at = self._steps.get(clock, (0.0, 0))
            if previous * change > 0 and base_ns < self._found_ns[clock] + self.window_ns:
                # Measured against an estimate from before the median settled on the step
                # found last: the rest of that step, not a new one. Sparse samples move the
                # median by halves, and the second half can come more than a window later
                # (clock-desync-ref-018 of seed 1: 100 us at 12.3 s, the other 100 us at
                # 14.5 s, which dated past the clock's own step was blamed on its peer).
                self._steps[clock] = (previous + change, previous_at)
            else:
                self._steps[clock] = (change, step_at_ns)
                self._step_after_ns[clock] = base_ns
            self._found_ns[clock] = at_ns
            # later estimates are compared with the offset the step led to
            history.clear()
            history.append((at_ns, estimate))

    def offset_ns(self, clock: str) -> float:
        """Current offset of ``clock`` (local minus reference); 0 for unknown or reference."""
        return self._offset_cache.get(clock, 0.0)

    def estimate(self, clock: str) -> ClockEstimate:
        step, at = self._steps.get(clock, (0.0, 0))
        return ClockEstimate(
            offset_ns=self.offset_ns(clock),
            samples=len(self._samples.get(clock, ())),
            last_step_ns=step,
            last_step_at_ns=at,
            last_step_after_ns=self._step_after_ns.get(clock, at),
        )

    def clocks(self) -> list[str]:
        return sorted(self._offset_cache)


def _last_before(history: deque[tuple[int, float]], at_ns: int) -> tuple[int, float]:
    """The newest (time, estimate) of ``history`` at or before ``at_ns``; its oldest if none."""
    found = history[0]
    for entry in history:
        if entry[0] > at_ns:
            break
        found = entry
    return found
