"""The simulator one frame period at a time, handing control back *between* periods.

``Simulation.frames(duration_s)`` is a generator that simulates a whole frame period
(``cluster.frame_interval_ms``, 200 ms by default) when its first frame is asked for, and
closes the run's labels when a call ends (so calling it once per period would cut every fault
label short). :class:`PeriodStepper` keeps one generator for the whole run and returns each
period's frames without asking for the next period's first frame, so a controller can act on
the world before the next period is simulated.

It relies on what docs/simulator.md states: every source emits one frame per period (empty
ones included), all frames of a period carry its end as ``event_time_ns`` and come before
any of the next. The frame count per period is learnt from the first period (the only one
whose end is found by reading one frame ahead: the first control step takes effect one
period later, long before any verdict exists) and checked on every period after.

Limits: a simulator that changed its frame count in mid-run would be reported, not followed;
a public one-period step in ``producers.sim.Simulation`` would replace the counting.
"""

from __future__ import annotations

from collections.abc import Iterator

from producers.sim import SimFrame, Simulation


class PeriodStepper:
    """``next_period()`` -> the frames of the next frame period, or None once the run is over.

    Call it until it returns None: only then has the simulator closed the run's labels.
    """

    def __init__(self, sim: Simulation, duration_s: float) -> None:
        self.sim = sim
        self._frames: Iterator[SimFrame] = sim.frames(duration_s=duration_s)
        self._per_period: int | None = None
        self._ahead: SimFrame | None = None
        self._done = False

    def next_period(self) -> list[SimFrame] | None:
        if self._done:
            return None
        if self._per_period is None:
            return self._first_period()
        period = [self._ahead] if self._ahead is not None else []
        self._ahead = None
        while len(period) < self._per_period:
            frame = next(self._frames, None)
            if frame is None:
                break
            period.append(frame)
        if not period:
            self._done = True
            return None
        ends = {f.event_time_ns for f in period}
        if len(period) != self._per_period or len(ends) != 1:
            raise RuntimeError(
                f"simulator period at {sorted(ends)} had {len(period)} frames over {len(ends)} "
                f"period ends; expected {self._per_period} frames of one period (every source "
                "emits one frame per period): the stepper cannot find period boundaries"
            )
        return period

    def _first_period(self) -> list[SimFrame] | None:
        first = next(self._frames, None)
        if first is None:
            self._done = True
            return None
        period = [first]
        for frame in self._frames:
            if frame.event_time_ns != first.event_time_ns:
                self._ahead = frame
                break
            period.append(frame)
        self._per_period = len(period)
        return period
