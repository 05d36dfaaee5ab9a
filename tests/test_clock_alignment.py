"""Clock alignment accuracy under offsets, drift, jitter, path asymmetry and descheduled ranks.

The generator below plays sampled blocking collectives across four nodes whose clocks are
offset by up to 50 ms, drift by up to 20 ppm, read with 2 us jitter, see the collective's
completion up to 5 us late or early (path asymmetry), and 1 % of whose readings are 50-500 us
late (a descheduled rank). The error is the aligner's estimate minus the true offset at that
moment, over every observation after a 2 s warm-up. Target: < 50 us (docs/streams.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streams.clock_align import ClockAligner

T0_NS = 1_790_000_000_000_000_000


@dataclass(frozen=True)
class NodeClock:
    offset_ns: int
    drift_ppm: float
    asymmetry_ns: int

    def local_ns(self, true_ns: int, rng: np.random.Generator, jitter_ns: float) -> int:
        elapsed_ns = true_ns - T0_NS
        noise = rng.normal(0.0, jitter_ns)
        if rng.random() < 0.01:
            noise += rng.uniform(50_000, 500_000)
        return int(
            true_ns
            + self.offset_ns
            + self.drift_ppm * 1e-6 * elapsed_ns
            + self.asymmetry_ns
            + noise
        )

    def true_offset_ns(self, true_ns: int) -> float:
        return self.offset_ns + self.drift_ppm * 1e-6 * (true_ns - T0_NS)


def alignment_errors_ns(
    clocks: list[NodeClock],
    seconds: float = 20.0,
    sample_every_ns: int = 100_000_000,
    jitter_ns: float = 2_000.0,
    warmup_ns: int = 2_000_000_000,
    seed: int = 7,
) -> np.ndarray:
    """|estimate - truth| for every non-reference clock after every sampled collective."""
    rng = np.random.default_rng(seed)
    aligner = ClockAligner()
    ref = clocks[0]
    errors: list[float] = []
    t = T0_NS
    while t < T0_NS + int(seconds * 1e9):
        ends = {f"node{i}/host": c.local_ns(t, rng, jitter_ns) for i, c in enumerate(clocks)}
        aligner.observe("dep0", ends)
        if t - T0_NS >= warmup_ns:
            for i, c in enumerate(clocks[1:], start=1):
                truth = c.true_offset_ns(t) - ref.true_offset_ns(t)
                errors.append(aligner.offset_ns(f"node{i}/host") - truth)
        t += sample_every_ns
    return np.abs(np.array(errors))


HARSH = [
    NodeClock(0, 0.0, 0),
    NodeClock(50_000_000, 20.0, 3_000),
    NodeClock(-50_000_000, -20.0, -2_000),
    NodeClock(30_000_000, 10.0, 5_000),
]


def test_alignment_error_stays_under_50us_with_offsets_drift_jitter_and_asymmetry() -> None:
    errors = alignment_errors_ns(HARSH)
    print(
        f"clock alignment error: max {errors.max() / 1e3:.1f} us, "
        f"p99 {np.percentile(errors, 99) / 1e3:.1f} us, median {np.median(errors) / 1e3:.1f} us"
    )
    assert errors.max() < 50_000


def test_without_drift_the_error_is_jitter_and_asymmetry_only() -> None:
    still = [NodeClock(c.offset_ns, 0.0, c.asymmetry_ns) for c in HARSH]
    errors = alignment_errors_ns(still)
    # Asymmetry is a bias no end-time method can see: up to 5 us here, plus jitter.
    assert errors.max() < 8_000


def _steps_seen(
    pause_s: tuple[float, float], step_at_s: float, readings: dict[float, float] | None = None
) -> tuple[float, float]:
    """Two clocks sampled every 100 ms for 20 s, none in ``pause_s``; the second one steps by
    200 us at ``step_at_s``; ``readings`` adds lone late readings (time s -> late by ns).
    Returns the step found (ns) and when it is dated (s), (0, 0) for none."""
    aligner = ClockAligner()
    extra = readings or {}
    for i in range(200):
        t = i / 10
        if pause_s[0] <= t < pause_s[1] and t not in extra:
            continue
        true_ns = T0_NS + round(t * 1e9)
        late = extra.get(t, 0.0) + (200_000 if t >= step_at_s else 0)
        aligner.observe("dep0", {"node0/host": true_ns, "node1/host": true_ns + int(late)})
    est = aligner.estimate("node1/host")
    at_s = (est.last_step_at_ns - T0_NS) / 1e9 if est.last_step_ns else 0.0
    return round(est.last_step_ns, -3), round(at_s, 1)


def test_a_step_inside_a_pause_of_the_samples_is_found_after_it() -> None:
    """Sampled collectives pause for seconds at times; a step inside a pause longer than the
    aligner's window used to be lost (clock-desync-ref-001 of the suite: a 2.2 s pause)."""
    assert _steps_seen((0.0, 0.0), step_at_s=8.05) == (200_000, 9.1)  # no pause: ~1 s later
    # dated by the first reading after the pause
    assert _steps_seen((8.0, 11.0), step_at_s=9.0) == (200_000, 11.0)
    assert _steps_seen((8.0, 19.0), step_at_s=9.0) == (0, 0)  # a pause over 10 s: not compared


def test_a_lone_late_reading_after_a_pause_is_not_a_step() -> None:
    """After a pause the window holds only the newest readings; one late reading (a
    descheduled rank) among fewer than three is not taken for a step."""
    assert _steps_seen((8.0, 11.0), step_at_s=99.0, readings={11.0: 400_000}) == (0, 0)


def test_a_step_seen_by_sparse_samples_is_found_whole() -> None:
    """Sampled collectives come in pairs about a second apart (every 16th step of two
    groups). A 199 us step between two pairs moves the window's median by half at the next
    pair and the other half a second later, each under the 100 us threshold against the
    estimate one horizon before it (retransmit-storm-ref-026 of the suite); against the
    estimate a window before, it is whole."""
    aligner = ClockAligner()
    pairs = [7.23, 7.296, 8.23, 8.24, 9.23, 9.296, 10.235, 10.244, 11.355, 11.364, 11.946]
    for t in pairs:
        true_ns = T0_NS + round(t * 1e9)
        late = -4_000 - (199_000 if t >= 9.83 else 0)
        aligner.observe("dep0", {"node0/host": true_ns, "node1/host": true_ns + late})
    est = aligner.estimate("node1/host")
    assert round(est.last_step_ns, -3) == -199_000
    assert round((est.last_step_at_ns - T0_NS) / 1e9, 2) == 11.35  # found at the next pair
    assert round(est.offset_ns, -3) == -203_000


def test_the_halves_of_one_step_seen_a_pause_apart_are_one_step() -> None:
    """Pairs of sampled collectives move the median by half a 240 us step at the first pair
    after it, enough to find it; the other half shows only after a pause of two seconds.
    Measured against the half-moved estimate it is the rest of that step, not a second step
    dated after the pause (clock-desync-ref-018 of the seed-1 suite: the late date fell
    outside the clock cadence's reach and the verdict named the peer)."""
    aligner = ClockAligner()
    times = [8.2, 8.21, 9.2, 9.21, 10.2, 10.21, 11.2, 11.21, 12.28, 12.29, 14.48, 14.49, 14.5]
    for t in times:
        true_ns = T0_NS + round(t * 1e9)
        late = -4_000 - (240_000 if t >= 11.5 else 0)
        aligner.observe("dep0", {"node0/host": true_ns, "node1/host": true_ns + late})
    est = aligner.estimate("node1/host")
    assert round(est.last_step_ns, -3) == -240_000  # whole, not the second half alone
    assert round((est.last_step_at_ns - T0_NS) / 1e9, 2) == 12.29  # when the first half showed
    assert round((est.last_step_after_ns - T0_NS) / 1e9, 2) == 11.21  # the last reading before


def test_a_step_found_after_a_pause_may_have_happened_anywhere_in_it() -> None:
    """Dated by the first reading after the pause, a step is also known to have happened
    after the last reading before it; the detector looks for the stepped clock's own grid
    jump over that whole span."""
    aligner = ClockAligner()
    for i in range(200):
        t = i / 10
        if 8.0 <= t < 11.0:
            continue
        true_ns = T0_NS + round(t * 1e9)
        late = 200_000 if t >= 9.0 else 0
        aligner.observe("dep0", {"node0/host": true_ns, "node1/host": true_ns + late})
    est = aligner.estimate("node1/host")
    assert round((est.last_step_at_ns - T0_NS) / 1e9, 1) == 11.0
    assert round((est.last_step_after_ns - T0_NS) / 1e9, 1) == 7.9
