"""GPU devices: the causes that set their speed, and what their sensors read per tick.

Cause knobs (faults change these and nothing else): ``clock_factor`` (SM clock / max clock;
compute time scales with 1/clock_factor), ``throttle_bits`` (why the clock is capped, NVML
clocks-event reasons), ``host_delay_ns`` (CPU launch delay per kernel segment: host jitter,
GPU clocks normal), ``hung`` (the rank's process wedged), ``xid``. ``efficiency`` is the
lasting per-GPU spread of a few percent real fleets have: it changes compute time but not
clocks, and is not a fault.
"""

from __future__ import annotations

import numpy as np

from producers.sim.scenario import ClusterSpec

THROTTLE_GPU_IDLE = 0x1
THROTTLE_SW_POWER_CAP = 0x4
THROTTLE_HW_SLOWDOWN = 0x8
THROTTLE_SW_THERMAL = 0x20
THROTTLE_HW_THERMAL = 0x40
THROTTLE_HW_POWER_BRAKE = 0x80

IDLE_POWER_W = 85.0
MAX_POWER_W = 700.0


class GpuState:
    """Per-GPU causes, arrays indexed by global GPU index."""

    def __init__(self, n_gpus: int, spec: ClusterSpec, rng: np.random.Generator) -> None:
        self.max_clock_mhz = float(spec.gpu_max_clock_mhz)
        self.clock_factor = np.ones(n_gpus)
        self.throttle_bits = np.zeros(n_gpus, dtype=np.int64)
        self.host_delay_ns = np.zeros(n_gpus)
        self.hung = np.zeros(n_gpus, dtype=bool)
        self.xid = np.zeros(n_gpus, dtype=np.int64)
        spread = rng.normal(0.0, spec.gpu_spread_ratio, n_gpus)
        self.efficiency = 1.0 + np.clip(
            spread, -3 * spec.gpu_spread_ratio, 3 * spec.gpu_spread_ratio
        )
        self._rng = rng

    def compute_scale(self, gpus: np.ndarray) -> np.ndarray:
        """Multiplier of nominal compute time for these GPUs (>1 is slower)."""
        return 1.0 / (self.clock_factor[gpus] * self.efficiency[gpus])

    def readings(
        self,
        util: np.ndarray,
        clock_factor: np.ndarray,
        throttle_bits: np.ndarray,
        xid: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """What DCGM reads for util, clock_factor, throttle_bits, xid [n_gpus, n_ticks] (the
        causes as they were in each tick): clocks, reasons, power, utilisation, XID."""
        n, ticks = util.shape
        noise = self._rng.normal(0.0, 0.003, (n, ticks))
        clock = self.max_clock_mhz * clock_factor * (1.0 + noise)
        idle = util < 0.05
        clock = np.where(idle, np.minimum(clock, 345.0 * (1.0 + noise)), clock)
        bits = throttle_bits.copy()
        bits[idle] |= THROTTLE_GPU_IDLE
        power = IDLE_POWER_W + (MAX_POWER_W - IDLE_POWER_W) * util * clock_factor**2
        power = power * (1.0 + self._rng.normal(0.0, 0.01, (n, ticks)))
        return {
            "sm_clock_mhz": clock,
            "throttle_reasons": bits,
            "power_w": power,
            "gpu_util_ratio": util,
            "xid_last": xid,
        }
