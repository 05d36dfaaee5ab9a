"""PCIe links per GPU: trained generation/width, host traffic, replays, switch contention.

Cause knobs: ``gen``/``width`` (a link trained down, e.g. x16 -> x8), ``replay_per_s``
(link errors of a bad riser: each replays a TLP), ``offload_demand_bytes_per_s`` (KV offload
or weight paging a GPU wants to move to/from host memory), ``offload_throttle_ratio`` (the
control surface's throttle). Mechanics: bandwidth cap = lane rate(gen) x width x 0.92
protocol efficiency; achieved = min(demand, cap); a GPU whose offload demand exceeds its cap
must wait for the copy, so its compute stretches by demand/cap; GPU i and NIC port i share a
PCIe switch whose uplink is the expected link, so a busy switch stalls the NIC's outbound
reads/writes (``outbound_pci_stalled_*``).
"""

from __future__ import annotations

import numpy as np

from producers.sim.scenario import ClusterSpec

LANE_GBYTES_PER_S = {3: 0.985, 4: 1.969, 5: 3.938, 6: 7.563}
_LANE_TABLE = np.array([LANE_GBYTES_PER_S.get(g, 0.0) for g in range(7)])
EFFICIENCY = 0.92
BASE_H2D_BYTES_PER_S = 40e6  # token ids, sampling params, when busy
BASE_D2H_BYTES_PER_S = 25e6  # sampled tokens, logprobs
BASELINE_REPLAY_PER_S = 0.02
BASELINE_STALL_PER_S = 3.0


def link_bytes_per_s(gen: np.ndarray, width: np.ndarray) -> np.ndarray:
    return _LANE_TABLE[gen] * 1e9 * width * EFFICIENCY


class PcieState:
    """Per-GPU PCIe causes and their consequences."""

    def __init__(self, n_gpus: int, spec: ClusterSpec, rng: np.random.Generator) -> None:
        self.gen = np.full(n_gpus, spec.pcie_gen, dtype=np.int64)
        self.width = np.full(n_gpus, spec.pcie_width, dtype=np.int64)
        self.replay_per_s = np.full(n_gpus, BASELINE_REPLAY_PER_S)
        self.offload_demand_bytes_per_s = np.zeros(n_gpus)
        self.offload_throttle_ratio = np.ones(n_gpus)
        self.uplink_bytes_per_s = float(
            link_bytes_per_s(np.array([spec.pcie_gen]), np.array([spec.pcie_width]))[0]
        )
        self.nic_shares_switch = spec.nic_shares_pcie_switch
        self._rng = rng

    def cap_bytes_per_s(self) -> np.ndarray:
        return link_bytes_per_s(self.gen, self.width)

    def offload_bytes_per_s(self) -> np.ndarray:
        return self.offload_demand_bytes_per_s * self.offload_throttle_ratio

    def compute_stretch(self, gpus: np.ndarray) -> np.ndarray:
        """Factor (>= 1) by which offload waits stretch these GPUs' compute."""
        demand = self.offload_bytes_per_s()[gpus]
        cap = self.cap_bytes_per_s()[gpus]
        return np.maximum(1.0, demand / cap)

    def tick_traffic(self, util: np.ndarray, dt_s: float) -> dict[str, np.ndarray]:
        """True per-tick PCIe quantities for util[n_gpus, n_ticks]."""
        n, ticks = util.shape
        cap = self.cap_bytes_per_s()[:, None]
        offload = self.offload_bytes_per_s()[:, None] * (util > 0.05)
        wobble = 1.0 + self._rng.normal(0.0, 0.02, (n, ticks))
        # KV offload evicts blocks to host (D2H) and reloads most of them later (H2D)
        h2d = np.minimum(cap, (BASE_H2D_BYTES_PER_S * util + 0.6 * offload) * wobble)
        d2h = np.minimum(cap, (BASE_D2H_BYTES_PER_S * util + offload) * wobble)
        replays = self._rng.poisson(self.replay_per_s[:, None] * dt_s, (n, ticks))
        switch_util = (h2d + d2h) / self.uplink_bytes_per_s
        return {
            "pcie_rx_bytes_per_s": h2d,
            "pcie_tx_bytes_per_s": d2h,
            "replays": replays,
            "switch_util": switch_util,
        }

    def nic_stalls(
        self, switch_util: np.ndarray, nic_tx_packets: np.ndarray, dt_s: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Outbound PCIe stall events (read, write) of each east-west NIC port per tick."""
        pressure = np.clip((switch_util - 0.7) / 0.3, 0.0, 1.0) if self.nic_shares_switch else 0.0
        base = BASELINE_STALL_PER_S * dt_s
        shape = nic_tx_packets.shape
        rd = self._rng.poisson(
            base + 0.25 * pressure * nic_tx_packets + 2e4 * dt_s * pressure, shape
        )
        wr = self._rng.poisson(
            base + 0.4 * pressure * nic_tx_packets + 3e4 * dt_s * pressure, shape
        )
        return rd, wr
