"""PCIe links per GPU: trained generation/width, host traffic, replays, switch contention.

Host copies come out of the engine steps (vLLM-like input preparation and sampling): at
a step's start every rank copies the step's inputs host -> device (per scheduled token: input
id, position and KV slot; per scheduled sequence: its block-table row, lengths and sampling
parameters); at its end the last pipeline stage's ranks copy the sampled tokens device -> host
(per sequence that produced a token; a prefill chunk that does not finish its prompt produces
none). While kernels run, the GPU also fetches launch pushbuffers and doorbells from host
memory (a small host -> device trickle proportional to busy time). So prefill-heavy time moves
many input bytes in few, long steps and returns few samples; decode-heavy time returns a
sample per sequence every short step.

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
# Step inputs, host -> device, on every rank of the replica at step start.
INPUT_H2D_BYTES_PER_TOKEN = 20  # input id (int32), position (int64), KV slot (int64)
BLOCK_TABLE_H2D_BYTES_PER_SEQ = 4 * 1024  # block-table row: 1024 int32 block ids (16k ctx)
SEQ_META_H2D_BYTES_PER_SEQ = 32  # query start, sequence length, sampling parameters
# Step outputs, device -> host, on the last pipeline stage's ranks at step end.
SAMPLE_D2H_BYTES_PER_SEQ = 16  # sampled token id (int64) and its logprob (float32), padded
# Kernel launch pushbuffers and doorbell/semaphore reads while the GPU is busy.
LAUNCH_H2D_BYTES_PER_S_BUSY = 2e6
BASELINE_REPLAY_PER_S = 0.02
BASELINE_STALL_PER_S = 3.0


def link_bytes_per_s(gen: np.ndarray, width: np.ndarray) -> np.ndarray:
    return _LANE_TABLE[gen] * 1e9 * width * EFFICIENCY


def step_copy_bytes(tokens: int, n_seqs: int, n_sampled: int) -> tuple[int, int]:
    """Host copies of one engine step per rank: (H2D input bytes, D2H sample bytes)."""
    h2d = tokens * INPUT_H2D_BYTES_PER_TOKEN + n_seqs * (
        BLOCK_TABLE_H2D_BYTES_PER_SEQ + SEQ_META_H2D_BYTES_PER_SEQ
    )
    return int(h2d), int(n_sampled * SAMPLE_D2H_BYTES_PER_SEQ)


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
        # the same per-GPU products as offload_bytes_per_s() and cap_bytes_per_s(), for
        # these GPUs only (called every engine step)
        demand = self.offload_demand_bytes_per_s[gpus] * self.offload_throttle_ratio[gpus]
        cap = link_bytes_per_s(self.gen[gpus], self.width[gpus])
        return np.maximum(1.0, demand / cap)

    def tick_traffic(
        self,
        util: np.ndarray,
        dt_s: float,
        h2d_copy_bytes: np.ndarray | None = None,
        d2h_copy_bytes: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """True per-tick PCIe quantities for util[n_gpus, n_ticks] and the step copies
        (bytes per GPU and tick, same shape) that started or ended in each tick."""
        n, ticks = util.shape
        h2d_copy = np.zeros((n, ticks)) if h2d_copy_bytes is None else h2d_copy_bytes
        d2h_copy = np.zeros((n, ticks)) if d2h_copy_bytes is None else d2h_copy_bytes
        cap = self.cap_bytes_per_s()[:, None]
        offload = self.offload_bytes_per_s()[:, None] * (util > 0.05)
        wobble = 1.0 + self._rng.normal(0.0, 0.02, (n, ticks))
        # KV offload evicts blocks to host (D2H) and reloads most of them later (H2D)
        h2d = np.minimum(
            cap,
            (LAUNCH_H2D_BYTES_PER_S_BUSY * util + 0.6 * offload) * wobble + h2d_copy / dt_s,
        )
        d2h = np.minimum(cap, offload * wobble + d2h_copy / dt_s)
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
