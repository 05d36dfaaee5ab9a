"""Which clock stepped, from each clock's own periodic sample timestamps."""

from __future__ import annotations

import numpy as np

from streams.clock_cadence import ClockCadence

TICK_NS = 10_000_000
T0_NS = 1_700_000_000_000_000_000


def _grid(n: int, start: int = 0, jitter_ns: float = 150.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ticks = T0_NS + (start + np.arange(n)) * TICK_NS
    return ticks + np.rint(rng.normal(0.0, jitter_ns, n)).astype(np.int64)


def _feed(cadence: ClockCadence, clock: str, ts: np.ndarray, per_frame: int = 10) -> None:
    for i in range(0, len(ts), per_frame):
        cadence.observe(clock, "gpu", ts[i : i + per_frame])


def _near(cadence: ClockCadence, clock: str, at_ns: int, within_ns: int) -> bool:
    return cadence.stepped_between(clock, at_ns - within_ns, at_ns + within_ns)


def test_a_step_of_the_clock_is_seen_on_that_clock_only() -> None:
    cadence = ClockCadence()
    stepped = _grid(300, seed=1)
    stepped[150:] += 200_000  # the clock steps 200 us at sample 150
    _feed(cadence, "node01/host", stepped)
    _feed(cadence, "node00/host", _grid(300, seed=2))
    at = int(stepped[150])
    assert _near(cadence, "node01/host", at, 50_000_000)
    assert not _near(cadence, "node00/host", at, 50_000_000)
    assert cadence.watched("node00/host") and cadence.watched("node01/host")


def test_a_late_sample_is_not_a_step() -> None:
    cadence = ClockCadence()
    ts = _grid(300)
    ts[150] += 300_000  # descheduled once: the grid did not move
    _feed(cadence, "node01/host", ts)
    assert cadence.watched("node01/host")  # trusted: a step would have shown
    assert not _near(cadence, "node01/host", int(ts[150]), 10**12)


def test_lost_samples_are_not_steps() -> None:
    cadence = ClockCadence()
    ts = np.delete(_grid(400), [50, 51, 120, 260])
    _feed(cadence, "node01/host", ts)
    assert cadence.watched("node01/host")
    assert not _near(cadence, "node01/host", int(ts[0]), 10**12)


def test_a_sampler_without_a_steady_grid_is_not_trusted() -> None:
    cadence = ClockCadence()
    ts = np.sort(_grid(300, jitter_ns=100_000.0))
    ts[150:] += 200_000
    _feed(cadence, "node01/host", ts)
    assert not cadence.watched("node01/host")
    assert not _near(cadence, "node01/host", int(ts[150]), 10**12)


def test_a_long_silence_re_anchors_instead_of_reading_as_a_step() -> None:
    cadence = ClockCadence()
    before = _grid(100)
    after = _grid(100, start=5_000) + 3_333_333  # restarted sampler, another phase
    _feed(cadence, "node01/host", np.concatenate([before, after]))
    assert cadence.watched("node01/host")
    assert not _near(cadence, "node01/host", int(after[0]), 10**12)
