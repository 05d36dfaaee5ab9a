"""Host and DPU clocks of every node: offset, drift, jitter, path asymmetry, steps.

True time is the simulator's event time. A clock reads
``local = true + offset + drift_ppb * 1e-9 * (true - epoch) + step + jitter``.
The residual offset of a PTP-disciplined clock is a small random constant plus half its path
asymmetry (PTP cannot see asymmetry); jitter is drawn per timestamp. A clock step (the
clock-desync cause) adds a constant from its onset on (:meth:`Clocks.set_step`); timestamps
of earlier events, stamped after it (a frame is stamped at its end), read the clock as it
was then. Telemetry emitters stamp every
timestamp through :meth:`Clocks.to_local` of the clock named in the frame's ``clock_id``.

Clock indices: ``2 * node`` is the node's host clock, ``2 * node + 1`` its DPU clock.
"""

from __future__ import annotations

import numpy as np

from producers.sim.scenario import ClusterSpec


class Clocks:
    """All clocks of the cluster; ``step_ns`` is the cause knob of a clock step."""

    def __init__(
        self, node_names: list[str], spec: ClusterSpec, epoch_ns: int, rng: np.random.Generator
    ) -> None:
        n = 2 * len(node_names)
        self.ids = [f"{name}/{kind}" for name in node_names for kind in ("host", "dpu")]
        self.epoch_ns = epoch_ns
        asymmetry = rng.normal(0.0, spec.path_asymmetry_ns, n)
        self.offset_ns = rng.normal(0.0, spec.clock_offset_ns, n) + asymmetry / 2.0
        self.drift_ppb = rng.normal(0.0, spec.clock_drift_ppb, n)
        self.jitter_ns = float(spec.clock_jitter_ns)
        self.step_ns = np.zeros(n)
        # (true time, clock, step before it) of every change of step_ns: a frame stamps its
        # timestamps after its whole period was simulated, and those from before a change
        # must read the clock as it was then
        self._step_changes: list[tuple[int, int, float]] = []
        self._rng = rng

    @staticmethod
    def host(node: int) -> int:
        return 2 * node

    @staticmethod
    def dpu(node: int) -> int:
        return 2 * node + 1

    def to_local(self, clock: int, true_ns: np.ndarray) -> np.ndarray:
        """Timestamps ``true_ns`` (int64 array) as clock ``clock`` would write them."""
        t = np.asarray(true_ns, dtype=np.int64)
        return self._stamp(t, self._error(clock, t))

    def to_local_each(self, clock: np.ndarray, true_ns: np.ndarray) -> np.ndarray:
        """Timestamps ``true_ns`` (int64 array) as the clocks ``clock`` (same shape: one clock
        index per timestamp) would write them: the same values, jitter draws included, as
        calling :meth:`to_local` run by run in row-major order, in one pass."""
        t = np.asarray(true_ns, dtype=np.int64)
        return self._stamp(t, self._error(np.asarray(clock, dtype=np.int64), t))

    def to_local_exact(self, clock: int, true_ns: int) -> int:
        """The time ``true_ns`` as clock ``clock`` reads it, less its jitter (and without
        drawing one): for a bound the source states, not a sample it stamps."""
        t = np.asarray([true_ns], dtype=np.int64)
        return int(t[0] + np.rint(self._error(clock, t)).astype(np.int64)[0])

    def set_step(self, clock: int, step_ns: float, at_ns: int) -> None:
        """The clock steps to ``step_ns`` (from zero) at true time ``at_ns``: timestamps from
        ``at_ns`` on carry it, earlier ones (stamped later) the step it had before."""
        self._step_changes.append((at_ns, clock, float(self.step_ns[clock])))
        self.step_ns[clock] = step_ns

    def _error(self, clock: int | np.ndarray, t: np.ndarray) -> np.ndarray:
        """Offset, step and drift of the clock(s) at true times t, ns (before jitter)."""
        return (
            self.offset_ns[clock]
            + self._step_at(clock, t)
            + self.drift_ppb[clock] * 1e-9 * (t - self.epoch_ns).astype(np.float64)
        )

    def _step_at(self, clock: int | np.ndarray, t: np.ndarray) -> np.ndarray | float:
        """The step of the clock(s) at true times t: the current one, undone back through
        the changes after each time (newest first)."""
        step: np.ndarray | float = self.step_ns[clock]
        for at_ns, changed, before in reversed(self._step_changes):
            earlier = (t < at_ns) & (np.asarray(clock) == changed)
            if earlier.any():
                step = np.where(earlier, before, step)
        return step

    def _stamp(self, t: np.ndarray, error: np.ndarray) -> np.ndarray:
        """t plus its clock error and a jitter draw per timestamp, rounded to whole ns."""
        if self.jitter_ns > 0 and t.size:
            error = error + self._rng.normal(0.0, self.jitter_ns, t.shape)
        return t + np.rint(error).astype(np.int64)
